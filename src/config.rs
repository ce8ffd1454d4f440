//! The config file: `key = value` lines that fill in `SQUILLA_*` variables not already set.
//!
//! Precedence, highest first: flags, environment, the file, built-in defaults. The file is
//! named by `--config FILE` or `SQUILLA_CONFIG`. Lines are `key = value` (a TOML subset:
//! `#` comments, values optionally in double quotes); `key` is the variable's name without
//! `SQUILLA_`, in any case, with `-` or `_` (`data-dir = "/var/lib/squilla"` sets
//! `SQUILLA_DATA_DIR`). An unreadable file or a malformed line is an error naming the line.

use anyhow::{Context, bail};

/// Loads the config file named on the command line or in `SQUILLA_CONFIG`, if any.
pub fn load_from_args() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let from_flag = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--config=")
            .map(str::to_owned)
            .or_else(|| (a == "--config").then(|| args.get(i + 1).cloned()).flatten())
    });
    let Some(path) = from_flag.or_else(|| std::env::var("SQUILLA_CONFIG").ok()) else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {path}"))?;
    for (key, value) in parse(&text).with_context(|| format!("config file {path}"))? {
        if std::env::var_os(&key).is_none() {
            // SAFETY: called at start-up, before any other thread exists.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Ok(())
}

/// The `(SQUILLA_KEY, value)` pairs of a config file.
pub fn parse(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { bail!("line {}: expected `key = value`", i + 1) };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            bail!("line {}: `{key}` is not a key", i + 1);
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"').with_context(|| format!("line {}: unclosed quote", i + 1))?,
            None => value.split('#').next().unwrap_or("").trim(),
        };
        out.push((format!("SQUILLA_{}", key.to_ascii_uppercase().replace('-', "_")), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_lines_become_variables() {
        let pairs = super::parse("# master\nlisten = \"127.0.0.1:9000\"\ndata-dir = /tmp/x # here\n\n").unwrap();
        assert_eq!(
            pairs,
            [("SQUILLA_LISTEN".into(), "127.0.0.1:9000".into()), ("SQUILLA_DATA_DIR".into(), "/tmp/x".into())]
        );
        assert!(super::parse("listen").unwrap_err().to_string().contains("line 1"));
        assert!(super::parse("a b = c").unwrap_err().to_string().contains("not a key"));
    }
}

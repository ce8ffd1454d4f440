//! Typed access to a job's parameters.

use std::str::FromStr;

use crate::StageError;

/// The job's parameters, as the platform passes them to [`crate::Stage::init`]: names and
/// values as text, parsed on access into the type the stage asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parameters from `(name, value)` pairs (later pairs do not override earlier ones).
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Params { pairs }
    }

    /// The raw text of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Parameter `name` parsed as `T`, or an error naming the parameter if it is missing or
    /// does not parse.
    pub fn require<T: FromStr>(&self, name: &str) -> Result<T, StageError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Err(StageError::new(format!("missing required parameter `{name}`"))),
            Some(raw) => parse(name, raw),
        }
    }

    /// Parameter `name` parsed as `T`, or `default` if it is not given; an error names the
    /// parameter if it is given but does not parse.
    pub fn get_or<T: FromStr>(&self, name: &str, default: T) -> Result<T, StageError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name).map_or(Ok(default), |raw| parse(name, raw))
    }

    /// Parameter `name` as a comma-separated list, each item trimmed; empty if not given.
    pub fn list(&self, name: &str) -> Vec<&str> {
        self.get(name).map(|raw| raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }

    /// All `(name, value)` pairs, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

fn parse<T: FromStr>(name: &str, raw: &str) -> Result<T, StageError>
where
    T::Err: std::fmt::Display,
{
    raw.trim().parse().map_err(|e| {
        StageError::new(format!("parameter `{name}` = {raw:?} is not a valid {}: {e}", std::any::type_name::<T>()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::new(vec![("n".into(), " 5".into()), ("words".into(), "a, b,,c".into()), ("bad".into(), "x".into())])
    }

    #[test]
    fn typed_access_parses_and_names_the_parameter_on_error() {
        let p = params();
        assert_eq!(p.require::<u32>("n"), Ok(5));
        assert_eq!(p.get_or("missing", 2.5), Ok(2.5));
        assert_eq!(p.list("words"), ["a", "b", "c"]);
        assert_eq!(p.require::<u32>("missing").unwrap_err().message, "missing required parameter `missing`");
        let err = p.require::<u32>("bad").unwrap_err().message;
        assert!(err.starts_with("parameter `bad` = \"x\" is not a valid u32"), "{err}");
    }
}

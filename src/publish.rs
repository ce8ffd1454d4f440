//! `squilla publish <app>/<stream>`: publishes JSON lines from standard input to an
//! application stream through [`squilla_publish`], as an application would: only the events
//! some subscription wants leave the process. A line that is not a JSON object is skipped,
//! named on standard error and counted (`invalid-lines`). At the end it waits for what was
//! matched to be sent, and prints its counts (JSON) on standard error. A gateway that refuses
//! (a wrong token, a limit) is an error before anything is read.

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value as Json;
use squilla_publish::{Config, Publisher, ValueRef};

/// Arguments of `squilla publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// The stream: `<app>/<stream>`.
    pub stream: String,
    /// The gateway's URL, or several, comma-separated: the publisher connects to every one,
    /// so that subscribers at any of them see its events.
    #[arg(long, env = "SQUILLA_GATEWAY", default_value = "http://127.0.0.1:7070")]
    pub gateway: String,
    /// How long to wait for the gateway to say what is subscribed before reading input, s.
    #[arg(long, default_value_t = 10)]
    pub wait: u64,
    #[command(flatten)]
    pub connection: crate::client::Connection,
}

/// Runs `squilla publish`.
pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let token = args.connection.token()?;
    let mut gateways = args.gateway.split(',').map(str::trim).filter(|g| !g.is_empty());
    let first = gateways.next().context("--gateway names no gateway")?;
    let config = gateways.fold(Config::new(first, &args.stream), Config::gateway);
    let publisher = Publisher::start(config.token(token))?;
    // Until every gateway has answered, one refuses, or `--wait` has passed.
    let until = std::time::Instant::now() + Duration::from_secs(args.wait);
    while !publisher.wait_connected(Duration::from_millis(50))
        && !publisher.stats().refused
        && std::time::Instant::now() < until
    {}
    if !publisher.wait_connected(Duration::ZERO) {
        let stats = publisher.stats();
        match stats.last_error {
            Some(why) if stats.refused => anyhow::bail!("{why}"),
            why => eprintln!(
                "squilla publish: a gateway has not answered yet ({}); publishing anyway (nothing leaves for it until it does)",
                why.as_deref().unwrap_or("no answer")
            ),
        }
    }
    let mut fields: Vec<(String, Json)> = Vec::new();
    let mut invalid = 0u64;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let object: serde_json::Map<String, Json> = match serde_json::from_str(&line) {
            Ok(object) => object,
            Err(e) => {
                invalid += 1;
                if invalid <= 10 {
                    eprintln!("squilla publish: standard input, line {}: not a JSON object ({e}); skipped", n + 1);
                }
                continue;
            }
        };
        fields.clear();
        flatten("", object, &mut fields);
        let texts: Vec<String> =
            fields.iter().map(|(_, v)| if v.is_array() { v.to_string() } else { String::new() }).collect();
        let borrowed: Vec<(&str, ValueRef<'_>)> =
            fields.iter().zip(&texts).map(|((name, value), text)| (name.as_str(), value_ref(value, text))).collect();
        publisher.publish(&borrowed);
    }
    publisher.flush(Duration::from_secs(10));
    let mut stats = serde_json::to_value(publisher.stats())?;
    stats["invalid-lines"] = invalid.into();
    eprintln!("{stats}");
    Ok(())
}

/// `object`'s fields, nested objects as dotted names.
fn flatten(prefix: &str, object: serde_json::Map<String, Json>, out: &mut Vec<(String, Json)>) {
    for (name, value) in object {
        let name = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
        match value {
            Json::Object(inner) => flatten(&name, inner, out),
            value => out.push((name, value)),
        }
    }
}

/// A JSON value as a field value (`text` holds an array's JSON text).
fn value_ref<'a>(value: &'a Json, text: &'a str) -> ValueRef<'a> {
    match value {
        Json::Null | Json::Object(_) => ValueRef::Null,
        Json::Bool(b) => ValueRef::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => ValueRef::Int(i),
            None => ValueRef::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => ValueRef::Text(s),
        Json::Array(_) => ValueRef::Text(text),
    }
}

//! `squilla publish <app>/<stream>`: publishes JSON lines from standard input to an
//! application stream through [`squilla_publish`], as an application would: only the events
//! some subscription wants leave the process. At the end it waits for what was matched to be
//! sent, and prints its counts (JSON) on standard error.

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
    if !publisher.wait_connected(Duration::from_secs(args.wait)) {
        eprintln!(
            "squilla publish: the gateway has not answered yet; publishing anyway (nothing leaves until it does)"
        );
    }
    let mut fields: Vec<(String, Json)> = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let object: serde_json::Map<String, Json> = serde_json::from_str(&line)
            .with_context(|| format!("standard input, line {}: not a JSON object", n + 1))?;
        fields.clear();
        flatten("", object, &mut fields);
        let texts: Vec<String> =
            fields.iter().map(|(_, v)| if v.is_array() { v.to_string() } else { String::new() }).collect();
        let borrowed: Vec<(&str, ValueRef<'_>)> =
            fields.iter().zip(&texts).map(|((name, value), text)| (name.as_str(), value_ref(value, text))).collect();
        publisher.publish(&borrowed);
    }
    publisher.flush(Duration::from_secs(10));
    eprintln!("{}", serde_json::to_string(&publisher.stats())?);
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

//! A small client of etcd's v3 API through its JSON gateway (`POST /v3/kv/range`, `/txn`,
//! `/lease/…`), which every etcd since 3.4 serves on its client port. It needs no gRPC stack
//! nor a protobuf compiler on the build machine; keys and values travel base64-encoded.
//!
//! The client knows every endpoint of the cluster and sticks to one that answers; a request
//! that cannot be sent, times out, or meets a member without quorum is tried at the next
//! endpoint, each once. Every call is bounded ([`REQUEST_TIMEOUT`] per endpoint).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::kv::StoreError;

/// How long one request to one endpoint may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one call may take over all its attempts: long enough to ride out an etcd
/// leader election (about one election timeout, 1 s by default), short enough that a
/// control path never waits without bound.
pub const CALL_BUDGET: Duration = Duration::from_secs(5);

/// How to reach an etcd cluster.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://h1:2379`, or `https://` with TLS).
    pub endpoints: Vec<String>,
    /// PEM CA certificates to trust for `https` endpoints (else the system's roots).
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM, leaf first) and its key, for members that require one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Every key of this master fleet starts with this (default `squilla/`): several fleets
    /// may share one etcd.
    pub prefix: String,
}

impl EtcdConfig {
    /// The config of a store URL, `etcd://h1:2379,h2:2379` (or `etcds://…` for TLS).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
            ("http", rest)
        } else if let Some(rest) = url.strip_prefix("etcds://") {
            ("https", rest)
        } else {
            return Err(StoreError::Etcd(format!("`{url}` is not an etcd:// or etcds:// URL")));
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) if !prefix.is_empty() => (hosts, format!("{}/", prefix.trim_end_matches('/'))),
            Some((hosts, _)) => (hosts, "squilla/".to_owned()),
            None => (rest, "squilla/".to_owned()),
        };
        let endpoints: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{h}")).collect();
        if endpoints.is_empty() {
            return Err(StoreError::Etcd(format!("`{url}` names no endpoint")));
        }
        Ok(EtcdConfig { endpoints, prefix, ..EtcdConfig::default() })
    }
}

/// base64 of `bytes` (how the gateway carries keys and values).
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

/// The bytes of a base64 field of an answer (absent: empty, as proto3 JSON omits it).
pub fn unb64(value: &Value) -> Result<Vec<u8>, StoreError> {
    match value.as_str() {
        None => Ok(Vec::new()),
        Some(text) => STANDARD.decode(text).map_err(|e| StoreError::Etcd(format!("bad base64 in an answer: {e}"))),
    }
}

/// An integer field of an answer (proto3 JSON writes 64-bit integers as strings, and omits
/// zeroes).
pub fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The HTTP side of the client: endpoints, the one in use, and an HTTP client.
pub struct Client {
    endpoints: Vec<String>,
    current: AtomicUsize,
    http: reqwest::Client,
    /// For watches: streams without an overall timeout (their liveness is checked by the
    /// watcher, see [`super::watch`]).
    streams: reqwest::Client,
}

impl Client {
    /// A client of `config`'s endpoints.
    pub fn new(config: &EtcdConfig) -> Result<Self, StoreError> {
        let http =
            Self::builder(config)?.timeout(REQUEST_TIMEOUT).build().map_err(|e| StoreError::Etcd(e.to_string()))?;
        let streams = Self::builder(config)?
            .tcp_keepalive(Duration::from_secs(5))
            .build()
            .map_err(|e| StoreError::Etcd(e.to_string()))?;
        Ok(Client {
            endpoints: config.endpoints.iter().map(|e| e.trim_end_matches('/').to_owned()).collect(),
            current: AtomicUsize::new(0),
            http,
            streams,
        })
    }

    fn builder(config: &EtcdConfig) -> Result<reqwest::ClientBuilder, StoreError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| StoreError::Etcd(format!("{}: {e}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| StoreError::Etcd(e.to_string()))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &config.identity {
            let mut pem = std::fs::read(cert).map_err(|e| StoreError::Etcd(format!("{}: {e}", cert.display())))?;
            pem.extend(std::fs::read(key).map_err(|e| StoreError::Etcd(format!("{}: {e}", key.display())))?);
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(|e| StoreError::Etcd(e.to_string()))?);
        }
        Ok(builder)
    }

    /// Opens a streaming `POST {endpoint}{path}` (a watch) at the endpoint in use, moving on
    /// to the next one for the next attempt if it fails.
    pub async fn stream(&self, path: &str, body: &Value) -> Result<reqwest::Response, StoreError> {
        let at = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let url = format!("{}{path}", self.endpoints[at]);
        let sent = self.streams.post(&url).header("content-type", "application/json").body(body.to_string()).send();
        match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
            Ok(Ok(response)) if response.status().is_success() => Ok(response),
            failed => {
                self.current.store((at + 1) % self.endpoints.len(), Ordering::Relaxed);
                Err(StoreError::Etcd(match failed {
                    Ok(Ok(response)) => format!("{url}: {}", response.status()),
                    Ok(Err(e)) => format!("{url}: {e}"),
                    Err(_) => format!("{url}: no answer in {REQUEST_TIMEOUT:?}"),
                }))
            }
        }
    }

    /// `POST {endpoint}{path}` with `body`, at the endpoint in use and then at the others,
    /// in rounds, until one answers or [`CALL_BUDGET`] is spent; the answer's JSON. (Every
    /// request the store sends may be repeated: puts of the same values, fenced
    /// transactions, reads, leases.)
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        let deadline = tokio::time::Instant::now() + CALL_BUDGET;
        loop {
            match self.round(path, body, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(Ok(fatal)) => return Err(fatal),
                Err(Err(last)) if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline => {
                    return Err(StoreError::Etcd(format!("no member answered in {CALL_BUDGET:?}; last: {last}")));
                }
                Err(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// One attempt at each endpoint: the answer, a refusal (`Err(Ok)`), or none answered
    /// (`Err(Err)`, with the last failure).
    async fn round(
        &self,
        path: &str,
        body: &Value,
        deadline: tokio::time::Instant,
    ) -> Result<Value, Result<StoreError, String>> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no endpoint");
        for i in 0..n {
            let at = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[at]);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let request = self
                .http
                .post(&url)
                .timeout(left.min(REQUEST_TIMEOUT))
                .header("content-type", "application/json")
                .body(body.to_string());
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let answer: Value = match response.bytes().await.map(|b| serde_json::from_slice(&b)) {
                        Ok(Ok(answer)) => answer,
                        Ok(Err(e)) => {
                            last = format!("{url}: {e}");
                            continue;
                        }
                        Err(e) => {
                            last = format!("{url}: {e}");
                            continue;
                        }
                    };
                    if status.is_success() {
                        self.current.store(at, Ordering::Relaxed);
                        return Ok(answer);
                    }
                    // gRPC codes 14 (unavailable) and 4 (deadline exceeded): a member without
                    // quorum or a leader; another member may have both.
                    let code = int(&answer["code"]);
                    last = format!("{url}: {status} {}", answer["error"].as_str().unwrap_or_default());
                    if code != 14 && code != 4 && !status.is_server_error() {
                        return Err(Ok(StoreError::Etcd(last)));
                    }
                }
                Err(e) => last = format!("{url}: {e}"),
            }
            tracing::debug!(%last, "etcd: trying the next member");
        }
        Err(Err(last))
    }

    /// The `kvs` of a range over `[key, range_end)` (`range_end` empty: `key` alone).
    pub async fn range(&self, key: &[u8], range_end: &[u8], limit: i64) -> Result<Vec<Value>, StoreError> {
        Ok(self.range_at(key, range_end, limit).await?.0)
    }

    /// [`Client::range`] with the store's revision it was read at.
    pub async fn range_at(&self, key: &[u8], range_end: &[u8], limit: i64) -> Result<(Vec<Value>, i64), StoreError> {
        let mut body = json!({ "key": b64(key), "limit": limit });
        if !range_end.is_empty() {
            body["range_end"] = json!(b64(range_end));
        }
        let answer = self.call("/v3/kv/range", &body).await?;
        Ok((answer["kvs"].as_array().cloned().unwrap_or_default(), int(&answer["header"]["revision"])))
    }
}

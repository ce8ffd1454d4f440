//! Following a range of keys as it changes, with etcd's watches instead of polling.
//!
//! A follower first reads the whole range (at some revision `R`), hands it over as one
//! [`Change::Reset`], then watches from `R + 1`: every later change arrives, in order, and
//! none twice. When the watch ends (the member died, the history it needs was compacted, no
//! byte for [`SILENCE`]) the follower starts again with a new reset, so that the receiver's
//! picture is always the store's as of some revision.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::client::{b64, prefix_end, unb64};
use super::{Etcd, Inner};
use crate::kv::StoreError;

/// A watch that brings no byte for this long is opened again (with a reset): a member
/// that was cut off says nothing rather than goodbye. (etcd's progress notes, asked for,
/// come only every 10 minutes by default.)
pub const SILENCE: Duration = Duration::from_secs(30);

/// What changed under a followed prefix (keys relative to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Everything under the prefix now (a start, or a start again after a lost watch).
    Reset(Vec<(String, Vec<u8>)>),
    /// A key was set.
    Put(String, Vec<u8>),
    /// A key was removed.
    Delete(String),
}

impl Etcd {
    /// Follows the [`crate::Store`] keys under `prefix` (for example `jobs/`): their contents,
    /// then every change, until the receiver is dropped. At most 1,024 changes wait; a slow
    /// receiver makes the follower wait, not lose any.
    pub fn follow(&self, prefix: &str) -> mpsc::Receiver<Change> {
        let start = format!("{}kv/{prefix}", self.inner.prefix).into_bytes();
        let strip = start.len();
        let (rx, task) = follower(self.inner.clone(), start, strip);
        self.handle().spawn(task);
        rx
    }
}

/// A follower of the keys starting with the full key `start` (named without their first
/// `strip` bytes): its receiver, and the task to spawn on the client's runtime.
pub(crate) fn follower(
    inner: Arc<Inner>,
    start: Vec<u8>,
    strip: usize,
) -> (mpsc::Receiver<Change>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::channel(1024);
    let task = async move {
        while !tx.is_closed() {
            if let Err(err) = follow_once(&inner, &start, strip, &tx).await {
                tracing::debug!(error = %err, "watch ended; following again");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    (rx, task)
}

fn name(key: &[u8], strip: usize) -> String {
    String::from_utf8_lossy(key.get(strip..).unwrap_or_default()).into_owned()
}

/// One reset and the watch after it, until the watch ends.
async fn follow_once(
    inner: &Arc<Inner>,
    start: &[u8],
    strip: usize,
    tx: &mpsc::Sender<Change>,
) -> Result<(), StoreError> {
    let end = prefix_end(start);
    let (kvs, revision) = inner.client.range_at(start, &end, 0).await?;
    let all = kvs
        .iter()
        .map(|kv| Ok((name(&unb64(&kv["key"])?, strip), unb64(&kv["value"])?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    if tx.send(Change::Reset(all)).await.is_err() {
        return Ok(());
    }
    let create = json!({ "create_request": {
        "key": b64(start), "range_end": b64(&end),
        "start_revision": (revision + 1).to_string(), "progress_notify": true,
    }});
    let response = inner.client.stream("/v3/watch", &create).await?;
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::select! {
            chunk = tokio::time::timeout(SILENCE, body.next()) => chunk,
            () = tx.closed() => return Ok(()),
        };
        let chunk = match chunk {
            Err(_) => return Err(StoreError::Etcd(format!("the watch was silent for {SILENCE:?}"))),
            Ok(None) => return Err(StoreError::Etcd("the watch ended".into())),
            Ok(Some(Err(e))) => return Err(StoreError::Etcd(format!("the watch: {e}"))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        buffer.extend_from_slice(&chunk);
        // The gateway writes one JSON object per message; a chunk may hold several, or part
        // of one.
        let mut messages = serde_json::Deserializer::from_slice(&buffer).into_iter::<Value>();
        let mut used = 0;
        let mut parsed = Vec::new();
        while let Some(Ok(message)) = messages.next() {
            used = messages.byte_offset();
            parsed.push(message);
        }
        buffer.drain(..used);
        for message in parsed {
            let result = &message["result"];
            if message.get("error").is_some() || result["canceled"].as_bool() == Some(true) {
                return Err(StoreError::Etcd(format!("the watch was cancelled: {message}")));
            }
            for event in result["events"].as_array().into_iter().flatten() {
                let kv = &event["kv"];
                let key = name(&unb64(&kv["key"])?, strip);
                let change = match event["type"].as_str() {
                    Some("DELETE") => Change::Delete(key),
                    _ => Change::Put(key, unb64(&kv["value"])?),
                };
                if tx.send(change).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

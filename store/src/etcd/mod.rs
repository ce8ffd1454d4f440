//! The etcd backend: the master fleet's state in an etcd cluster, so that losing a master's
//! machine loses nothing, and any master can take over.
//!
//! Layout under the fleet's prefix (default `squilla/`):
//! - `kv/<key>`: every key of [`crate::Store`];
//! - `blob/<sha256>/<n>`: chunk `n` (five digits) of a component's bytes, [`CHUNK`] bytes
//!   each, and `blob/<sha256>/size` its length in decimal, written after every chunk: bytes
//!   without their `size` are an upload that never finished, and are not there;
//! - `leader`: the elected master's URL, held by its lease (see [`election`]).
//!
//! Every write is one etcd transaction conditioned on the leadership this process holds
//! (the `leader` key's create revision): a master that lost its lease — cut off, paused,
//! deposed — cannot write, even before it notices. Without leadership a write fails with
//! [`StoreError::NotLeader`] and changes nothing.
//!
//! The calls of [`Kv`] are blocking, as the master makes them from blocking threads; they
//! run on the client's own small runtime (one thread), so they may also be made from any
//! thread, inside or outside another runtime.

pub mod client;
pub mod election;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::{Value, json};

pub use client::EtcdConfig;
use client::{Client, b64, prefix_end, unb64};

use crate::kv::{Kv, Op, StoreError};

/// Bytes of one chunk of a blob (etcd takes at most 1.5 MiB per request by default; a chunk
/// travels base64-encoded in JSON to the gateway).
pub const CHUNK: usize = 768 << 10;

/// The store in etcd.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
    runtime: Arc<Runtime>,
}

/// What the client's calls and its election share.
pub(crate) struct Inner {
    client: Client,
    prefix: String,
    /// The create revision of the `leader` key while this process holds it; 0 otherwise.
    fence: AtomicI64,
}

/// The client's runtime, owned by the [`Etcd`] handles only (never by its own tasks).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        // A runtime may not be dropped (and so block) inside another runtime's task.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Etcd {
    /// A client of the cluster `config` names. Nothing is sent until the first call.
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd(format!("cannot start the client's runtime: {e}")))?;
        Ok(Etcd {
            inner: Arc::new(Inner {
                client: Client::new(config)?,
                prefix: config.prefix.clone(),
                fence: AtomicI64::new(0),
            }),
            runtime: Arc::new(Runtime(Some(runtime))),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        // The runtime is taken only when the last reference drops.
        self.runtime.0.as_ref().map(tokio::runtime::Runtime::handle).expect("runtime present until drop")
    }

    /// Runs `f` on the client's runtime and waits for its answer.
    fn block<T, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = f(self.inner.clone());
        self.handle().spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| StoreError::Etcd("the client stopped".into()))?
    }

    /// The full key of `rest` under the fleet's prefix.
    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.inner.prefix).into_bytes()
    }

    /// Whether this process holds the leadership its writes are conditioned on.
    pub fn is_leader(&self) -> bool {
        self.inner.fence.load(Ordering::Acquire) != 0
    }
}

impl Inner {
    /// One transaction: `ops` if this process still leads, else nothing (and `NotLeader`).
    async fn fenced(&self, ops: Vec<Value>) -> Result<(), StoreError> {
        let fence = self.fence.load(Ordering::Acquire);
        if fence == 0 {
            return Err(StoreError::NotLeader);
        }
        let leader = b64(format!("{}leader", self.prefix));
        let body = json!({
            "compare": [{ "key": leader, "target": "CREATE", "result": "EQUAL", "create_revision": fence.to_string() }],
            "success": ops,
        });
        let answer = self.client.call("/v3/kv/txn", &body).await?;
        if answer["succeeded"].as_bool() == Some(true) { Ok(()) } else { Err(StoreError::NotLeader) }
    }
}

fn put(key: &[u8], value: &[u8]) -> Value {
    json!({ "request_put": { "key": b64(key), "value": b64(value) } })
}

fn delete_prefix(prefix: &[u8]) -> Value {
    json!({ "request_delete_range": { "key": b64(prefix), "range_end": b64(prefix_end(prefix)) } })
}

impl Kv for Etcd {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(&format!("kv/{key}"));
        self.block(|inner| async move {
            let kvs = inner.client.range(&key, &[], 1).await?;
            kvs.first().map(|kv| unb64(&kv["value"])).transpose()
        })
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let start = self.key(&format!("kv/{prefix}"));
        let strip = self.key("kv/").len();
        self.block(|inner| async move {
            let kvs = inner.client.range(&start, &prefix_end(&start), 0).await?;
            kvs.iter()
                .map(|kv| {
                    let key = unb64(&kv["key"])?;
                    let key =
                        String::from_utf8(key.get(strip..).unwrap_or_default().to_vec()).map_err(StoreError::decode)?;
                    Ok((key, unb64(&kv["value"])?))
                })
                .collect()
        })
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let ops: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => put(&self.key(&format!("kv/{key}")), value),
                Op::Delete(key) => json!({ "request_delete_range": { "key": b64(self.key(&format!("kv/{key}"))) } }),
            })
            .collect();
        self.block(|inner| async move { inner.fenced(ops).await })
    }

    fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let base = self.key(&format!("blob/{sha256}/"));
        let mut writes: Vec<Value> = bytes
            .chunks(CHUNK)
            .enumerate()
            .map(|(n, chunk)| put(&[base.as_slice(), format!("{n:05}").as_bytes()].concat(), chunk))
            .collect();
        // The size goes last: until it is written, the chunks are not a blob.
        writes.push(put(&[base.as_slice(), b"size"].concat(), bytes.len().to_string().as_bytes()));
        self.block(|inner| async move {
            for write in writes {
                inner.fenced(vec![write]).await?;
            }
            Ok(())
        })
    }

    fn has_blob(&self, sha256: &str) -> Result<bool, StoreError> {
        let size = self.key(&format!("blob/{sha256}/size"));
        self.block(|inner| async move { Ok(!inner.client.range(&size, &[], 1).await?.is_empty()) })
    }

    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let base = self.key(&format!("blob/{sha256}/"));
        self.block(|inner| async move {
            let size_key = [base.as_slice(), b"size"].concat();
            let Some(size) = inner.client.range(&size_key, &[], 1).await?.first().cloned() else {
                return Ok(None);
            };
            let size: usize = String::from_utf8_lossy(&unb64(&size["value"])?)
                .parse()
                .map_err(|e| StoreError::corrupt(&String::from_utf8_lossy(&size_key), e))?;
            let mut bytes = Vec::with_capacity(size);
            for n in 0..size.div_ceil(CHUNK) {
                let key = [base.as_slice(), format!("{n:05}").as_bytes()].concat();
                let chunk = inner.client.range(&key, &[], 1).await?;
                let chunk = chunk.first().ok_or_else(|| {
                    StoreError::corrupt(&String::from_utf8_lossy(&key), "a chunk of the blob is missing")
                })?;
                bytes.extend(unb64(&chunk["value"])?);
            }
            if bytes.len() != size {
                return Err(StoreError::corrupt(&String::from_utf8_lossy(&size_key), "the chunks do not add up"));
            }
            Ok(Some(bytes))
        })
    }

    fn delete_blob(&self, sha256: &str) -> Result<(), StoreError> {
        let base = self.key(&format!("blob/{sha256}/"));
        self.block(|inner| async move { inner.fenced(vec![delete_prefix(&base)]).await })
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

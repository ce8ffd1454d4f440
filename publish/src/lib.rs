//! Publish an application's events to a Squilla application stream (`<app>/<stream>`), and pay
//! only for what someone asks for. `docs/publish.md` is the guide.
//!
//! ```no_run
//! use squilla_publish::{Config, Publisher, ValueRef};
//!
//! let publisher = Publisher::start(Config::new("http://127.0.0.1:7071", "shop/requests").token("tenant-token"))?;
//! // On every request the service serves:
//! publisher.publish(&[("path", ValueRef::Text("/cart")), ("status", ValueRef::Int(200)), ("ms", ValueRef::Float(3.2))]);
//! # Ok::<(), squilla_publish::Error>(())
//! ```
//!
//! How it stays cheap:
//!
//! - **No subscriber, no work.** [`Publisher::publish`] first reads one atomic flag; while no
//!   subscription (and no job) reads the stream it returns there: no allocation, no lock, no
//!   clock read, nothing sent.
//! - **Only what matches leaves.** A background thread holds a long-lived connection to a
//!   gateway, which tells it the queries subscribed to the stream as they change. `publish`
//!   tests the event against them in place ([`squilla_query::Prefilter`], compiled once per
//!   change) and copies only a matching event into the next batch; the gateway runs the full
//!   queries on what arrives.
//! - **Never blocks, never grows.** Matching events wait in a buffer of at most
//!   [`Config::buffer_events`]; the thread sends them as one archived batch every
//!   [`Config::flush_interval`]. A full buffer or a failed send drops events and counts them
//!   ([`Stats::dropped`]); the count also reaches the gateway with the next send. Losing the
//!   control connection (a gateway restart, a network cut) stops the matching until it is back.

mod control;
mod send;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use squilla_batch::BatchBuilder;
pub use squilla_batch::ValueRef;
use squilla_query::{FieldSlice, Prefilter};

/// Why a publisher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream's name is not `<app>/<stream>`.
    #[error("`{0}` is not a stream name: `<app>/<stream>`, each 1 to 63 of a-z, 0-9 and '-', starting with a letter")]
    Stream(String),
    /// The gateway's address is not an `http://` or `https://` URL.
    #[error("`{0}` is not a gateway address (`http://host:port` or `https://host:port`)")]
    Gateway(String),
    /// The background thread or its HTTP client could not be made.
    #[error("cannot start the publisher: {0}")]
    Start(String),
}

/// A publisher's settings. [`Config::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway's base URL.
    pub gateway: String,
    /// `<app>/<stream>`.
    pub stream: String,
    /// The tenant's API token (sent as a bearer token).
    pub token: Option<String>,
    /// Matching events that may wait to be sent (default 65,536); past it they are dropped.
    pub buffer_events: usize,
    /// How often waiting events are sent (default 50 ms).
    pub flush_interval: Duration,
    /// How long one send may take (default 5 s); then its events count as dropped.
    pub request_timeout: Duration,
}

impl Config {
    /// Settings for publishing `stream` through the gateway at `gateway`, with the defaults.
    pub fn new(gateway: impl Into<String>, stream: impl Into<String>) -> Config {
        Config {
            gateway: gateway.into().trim_end_matches('/').to_owned(),
            stream: stream.into(),
            token: None,
            buffer_events: 65_536,
            flush_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the tenant's API token.
    pub fn token(mut self, token: impl Into<String>) -> Config {
        self.token = Some(token.into());
        self
    }
}

/// What a publisher has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stats {
    /// Whether the control connection to the gateway is up.
    pub connected: bool,
    /// Distinct queries subscribed now.
    pub subscriptions: usize,
    /// Events some query wanted (taken into the buffer, or dropped at a full one).
    pub matched: u64,
    /// Events the gateway took.
    pub sent: u64,
    /// Events lost: the buffer was full, or a send failed.
    pub dropped: u64,
    /// Requests that carried events.
    pub requests: u64,
    /// Bytes of events sent (bodies, without HTTP headers).
    pub bytes_sent: u64,
}

/// What the application's threads and the background thread share.
pub(crate) struct Shared {
    /// Whether any query reads the stream: the one thing `publish` reads while none does.
    active: AtomicBool,
    filter: RwLock<Prefilter>,
    pending: Mutex<BatchBuilder>,
    buffer_events: usize,
    pub(crate) connected: AtomicBool,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) matched: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) stop: AtomicBool,
    /// When the control connection last said something, Unix ms.
    pub(crate) last_line: AtomicI64,
    /// Drops not yet reported to the gateway.
    pub(crate) unreported: AtomicU64,
}

impl Shared {
    /// Sets what the subscribed queries want (empty: nothing).
    pub(crate) fn set_filter(&self, filter: Prefilter, subscriptions: usize) {
        let active = !filter.is_empty();
        *self.filter.write().unwrap_or_else(PoisonError::into_inner) = filter;
        self.subscriptions.store(subscriptions as u64, Ordering::Relaxed);
        self.active.store(active, Ordering::Release);
    }

    /// Counts `n` events lost (reported to the gateway with the next send).
    pub(crate) fn drop_events(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.unreported.fetch_add(n, Ordering::Relaxed);
    }

    /// The events waiting, as one batch (`None` if there are none).
    pub(crate) fn take(&self) -> Option<squilla_batch::BatchBytes> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.is_empty() {
            return None;
        }
        let events = pending.len() as u64;
        match pending.take() {
            Ok(batch) => Some(batch),
            Err(e) => {
                tracing::warn!(error = %e, "events cannot be archived; dropped");
                self.drop_events(events);
                None
            }
        }
    }
}

/// Publishes one application stream's events (see the crate's docs). Cheap to share between
/// threads (`&self` everywhere); dropping it stops its thread after one last send.
pub struct Publisher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// Checks `config` and starts the background thread (which connects in the background:
    /// an unreachable gateway is not an error here).
    pub fn start(config: Config) -> Result<Publisher, Error> {
        if !squilla_types::valid_stream(&config.stream) {
            return Err(Error::Stream(config.stream));
        }
        if !(config.gateway.starts_with("http://") || config.gateway.starts_with("https://")) {
            return Err(Error::Gateway(config.gateway));
        }
        let shared = Arc::new(Shared {
            active: AtomicBool::new(false),
            filter: RwLock::new(Prefilter::default()),
            pending: Mutex::new(BatchBuilder::new().source(format!("publish:{}", config.stream))),
            buffer_events: config.buffer_events.max(1),
            connected: AtomicBool::new(false),
            subscriptions: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            last_line: AtomicI64::new(0),
            unreported: AtomicU64::new(0),
        });
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Start(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Start(e.to_string()))?;
        let background = shared.clone();
        let thread = std::thread::Builder::new()
            .name("squilla-publish".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let control = control::run(client.clone(), config.clone(), background.clone());
                    let send = send::run(client, config, background);
                    tokio::join!(control, send);
                })
            })
            .map_err(|e| Error::Start(e.to_string()))?;
        Ok(Publisher { shared, thread: Some(thread) })
    }

    /// Whether some query reads the stream now: while not, [`Publisher::publish`] does nothing.
    /// Check it to skip building an expensive event.
    #[inline]
    pub fn wanted(&self) -> bool {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Publishes an event made now (see [`Publisher::publish_at`]).
    #[inline]
    pub fn publish(&self, fields: &[(&str, ValueRef<'_>)]) {
        if !self.wanted() {
            return;
        }
        self.publish_slow(None, fields);
    }

    /// Publishes an event of `timestamp_ms` (ms since the Unix epoch) with `fields` (dotted
    /// names for nested values: `user.id`). It is sent only if some subscribed query could want
    /// it; it never blocks on the network.
    #[inline]
    pub fn publish_at(&self, timestamp_ms: i64, fields: &[(&str, ValueRef<'_>)]) {
        if !self.wanted() {
            return;
        }
        self.publish_slow(Some(timestamp_ms), fields);
    }

    #[inline(never)]
    fn publish_slow(&self, at: Option<i64>, fields: &[(&str, ValueRef<'_>)]) {
        let shared = &*self.shared;
        let timestamp_ms = {
            let filter = shared.filter.read().unwrap_or_else(PoisonError::into_inner);
            // The clock is read only for an event that matched, unless a filter needs it.
            let time = at.or_else(|| filter.reads_time().then(now_ms));
            if !filter.matches(&FieldSlice { timestamp_ms: time.unwrap_or(0), fields }) {
                return;
            }
            time.unwrap_or_else(now_ms)
        };
        shared.matched.fetch_add(1, Ordering::Relaxed);
        let mut pending = shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= shared.buffer_events {
            drop(pending);
            shared.drop_events(1);
            return;
        }
        let mut out = pending.event(timestamp_ms);
        for (name, value) in fields {
            out.field(name, *value);
        }
    }

    /// What it has done so far.
    pub fn stats(&self) -> Stats {
        let s = &*self.shared;
        Stats {
            connected: s.connected.load(Ordering::Relaxed),
            subscriptions: s.subscriptions.load(Ordering::Relaxed) as usize,
            matched: s.matched.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
        }
    }

    /// Waits until the control connection has told what is subscribed, for at most `timeout`;
    /// whether it has.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while !self.shared.connected.load(Ordering::Relaxed) {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Waits until every event matched so far is sent or dropped, for at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        loop {
            let s = self.stats();
            let waiting = self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner).len();
            if waiting == 0 && s.sent + s.dropped >= s.matched {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // The thread sends what waits (bounded by the request timeout) and ends.
            let _ = thread.join();
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

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
//! - **Only what matches leaves.** A background thread holds a long-lived connection to each
//!   gateway, which tells it the queries subscribed there as they change. `publish` tests the
//!   event against them in place ([`squilla_query::Prefilter`], compiled once per change) and
//!   copies only a matching event into the gateway's next batch; the gateway runs the full
//!   queries on what arrives. With several gateways ([`Config::gateway`]), each gets what its
//!   own subscribers want, and one of them also what the jobs reading the stream want (see
//!   the `link` module).
//! - **Never blocks, never grows.** Matching events wait in a buffer of at most
//!   [`Config::buffer_events`]; the thread sends them as one archived batch every
//!   [`Config::flush_interval`]. A full buffer or a failed send drops events and counts them
//!   ([`Stats::dropped`]); the count also reaches the gateway with the next send. Losing the
//!   control connection (a gateway restart, a network cut) stops the matching until it is back.

mod control;
mod link;
mod send;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use squilla_batch::ValueRef;
use squilla_query::FieldSlice;

use crate::link::Link;

/// Why a publisher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream's name is not `<app>/<stream>`.
    #[error("`{0}` is not a stream name: `<app>/<stream>`, each 1 to 63 of a-z, 0-9 and '-', starting with a letter")]
    Stream(String),
    /// A gateway's address is not an `http://` or `https://` URL.
    #[error("`{0}` is not a gateway address (`http://host:port` or `https://host:port`)")]
    Gateway(String),
    /// More gateways than [`MAX_GATEWAYS`].
    #[error("{0} gateways; a publisher connects to at most {MAX_GATEWAYS}")]
    Gateways(usize),
    /// The background thread or its HTTP client could not be made.
    #[error("cannot start the publisher: {0}")]
    Start(String),
}

/// The most gateways one publisher connects to.
pub const MAX_GATEWAYS: usize = 16;
/// The largest [`Config::buffer_bytes`]: one send stays under the gateway's 8 MiB body limit.
pub const MAX_BUFFER_BYTES: usize = 7 << 20;

/// A publisher's settings. [`Config::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateways' base URLs (at least one; at most [`MAX_GATEWAYS`]).
    pub gateways: Vec<String>,
    /// `<app>/<stream>`.
    pub stream: String,
    /// The tenant's API token (sent as a bearer token).
    pub token: Option<String>,
    /// Matching events that may wait to be sent to one gateway (default 65,536); past it they
    /// are dropped.
    pub buffer_events: usize,
    /// Bytes of matching events (archived, estimated) that may wait to be sent to one gateway
    /// (default 4 MiB, at most [`MAX_BUFFER_BYTES`]); past it they are dropped. What waits
    /// leaves as one request, which must fit the gateway's body limit.
    pub buffer_bytes: usize,
    /// How often waiting events are sent (default 50 ms).
    pub flush_interval: Duration,
    /// How long one send may take (default 5 s); then its events count as dropped.
    pub request_timeout: Duration,
}

impl Config {
    /// Settings for publishing `stream` through the gateway at `gateway`, with the defaults.
    pub fn new(gateway: impl Into<String>, stream: impl Into<String>) -> Config {
        Config {
            gateways: vec![gateway.into().trim_end_matches('/').to_owned()],
            stream: stream.into(),
            token: None,
            buffer_events: 65_536,
            buffer_bytes: 4 << 20,
            flush_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Adds another gateway: the publisher connects to every one, so that subscribers at any
    /// of them see its events.
    pub fn gateway(mut self, gateway: impl Into<String>) -> Config {
        let gateway = gateway.into().trim_end_matches('/').to_owned();
        if !self.gateways.contains(&gateway) {
            self.gateways.push(gateway);
        }
        self
    }

    /// Sets the tenant's API token.
    pub fn token(mut self, token: impl Into<String>) -> Config {
        self.token = Some(token.into());
        self
    }
}

/// What a publisher has done so far. With several gateways, event counts are of copies: an
/// event two gateways want counts twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stats {
    /// Whether a control connection to a gateway is up.
    pub connected: bool,
    /// Gateways whose control connection is up.
    pub gateways_connected: usize,
    /// Distinct queries subscribed now, summed over the gateways.
    pub subscriptions: usize,
    /// Events some query wanted (taken into a buffer, or dropped at a full one).
    pub matched: u64,
    /// Events the gateway took.
    pub sent: u64,
    /// Events lost: the buffer was full, or a send failed.
    pub dropped: u64,
    /// Requests that carried events.
    pub requests: u64,
    /// Bytes of events sent (bodies, without HTTP headers).
    pub bytes_sent: u64,
    /// Why a control connection last failed (`None` once every gateway has answered).
    pub last_error: Option<String>,
    /// Whether that failure was a gateway refusing (an error status: a wrong token, a stream
    /// name it does not know, a limit), which waiting will not cure.
    pub refused: bool,
}

/// What the application's threads and the background thread share.
pub(crate) struct Shared {
    /// Whether any gateway wants any event: the one thing `publish` reads while none does.
    active: AtomicBool,
    /// One per gateway, in [`Config::gateways`]' order.
    pub(crate) links: Vec<Link>,
    /// The order in which gateways are tried as the primary (rotated per publisher).
    order: Vec<usize>,
    /// Held while the primary is chosen and the filters rebuilt.
    elect: Mutex<()>,
    buffer_events: usize,
    buffer_bytes: usize,
    pub(crate) matched: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) stop: AtomicBool,
}

impl Shared {
    /// After a gateway connected, left or announced a change: chooses the primary (the first
    /// connected gateway in this publisher's order), and rebuilds every filter.
    pub(crate) fn changed(&self) {
        let _elect = self.elect.lock().unwrap_or_else(PoisonError::into_inner);
        let primary = self.order.iter().copied().find(|&i| self.links[i].connected.load(Ordering::Relaxed));
        let mut active = false;
        for (i, link) in self.links.iter().enumerate() {
            link.primary.store(primary == Some(i), Ordering::Relaxed);
            active |= link.rebuild();
        }
        self.active.store(active, Ordering::Release);
    }

    /// Counts `n` events lost on the way to gateway `link` (reported to it with the next send).
    pub(crate) fn drop_events(&self, link: &Link, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        link.unreported.fetch_add(n, Ordering::Relaxed);
    }

    /// The events waiting for gateway `link`, as one batch (`None` if there are none). The
    /// builder is swapped out under the lock and archived outside it, so `publish` never waits
    /// for an archive.
    pub(crate) fn take(&self, link: &Link) -> Option<squilla_batch::BatchBytes> {
        let full = {
            let mut pending = link.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.is_empty() {
                return None;
            }
            std::mem::replace(&mut *pending, link.builder())
        };
        let events = full.len() as u64;
        match full.finish() {
            Ok(batch) => Some(batch),
            Err(e) => {
                tracing::warn!(error = %e, "events cannot be archived; dropped");
                self.drop_events(link, events);
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
        if let Some(bad) = config.gateways.iter().find(|g| !(g.starts_with("http://") || g.starts_with("https://"))) {
            return Err(Error::Gateway(bad.clone()));
        }
        if config.gateways.is_empty() || config.gateways.len() > MAX_GATEWAYS {
            return Err(Error::Gateways(config.gateways.len()));
        }
        let mut gateways: Vec<String> = Vec::with_capacity(config.gateways.len());
        for g in &config.gateways {
            let g = g.trim_end_matches('/');
            if !gateways.iter().any(|known| known == g) {
                gateways.push(g.to_owned());
            }
        }
        let config = Config { gateways, ..config };
        let n = config.gateways.len();
        // Publishers of one stream start their order at different gateways, so that their
        // primaries (and the jobs' traffic) spread over the gateways.
        let first = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), ()) as usize % n;
        let shared = Arc::new(Shared {
            active: AtomicBool::new(false),
            links: config.gateways.iter().map(|g| Link::new(g.clone(), &config.stream)).collect(),
            order: (0..n).map(|i| (first + i) % n).collect(),
            elect: Mutex::new(()),
            buffer_events: config.buffer_events.max(1),
            buffer_bytes: config.buffer_bytes.clamp(1, MAX_BUFFER_BYTES),
            matched: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
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
                    let tasks = (0..background.links.len()).flat_map(|i| {
                        let control = control::run(client.clone(), config.clone(), background.clone(), i);
                        let send = send::run(client.clone(), config.clone(), background.clone(), i);
                        [futures_util::future::Either::Left(control), futures_util::future::Either::Right(send)]
                    });
                    futures_util::future::join_all(tasks).await;
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
        let mut time = at;
        for link in &shared.links {
            if !link.active.load(Ordering::Relaxed) {
                continue;
            }
            {
                let filter = link.filter.read().unwrap_or_else(PoisonError::into_inner);
                // The clock is read only for an event that matched, unless a filter needs it.
                if time.is_none() && filter.reads_time() {
                    time = Some(now_ms());
                }
                if !filter.matches(&FieldSlice { timestamp_ms: time.unwrap_or(0), fields }) {
                    continue;
                }
            }
            let timestamp_ms = *time.get_or_insert_with(now_ms);
            shared.matched.fetch_add(1, Ordering::Relaxed);
            let mut pending = link.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() >= shared.buffer_events || pending.estimated_bytes() >= shared.buffer_bytes {
                drop(pending);
                shared.drop_events(link, 1);
                continue;
            }
            let mut out = pending.event(timestamp_ms);
            for (name, value) in fields {
                out.field(name, *value);
            }
        }
    }

    /// What it has done so far.
    pub fn stats(&self) -> Stats {
        let s = &*self.shared;
        let connected = s.links.iter().filter(|l| l.connected.load(Ordering::Relaxed)).count();
        let failure = s.links.iter().find_map(|l| l.failure.lock().unwrap_or_else(PoisonError::into_inner).clone());
        Stats {
            connected: connected > 0,
            gateways_connected: connected,
            subscriptions: s.links.iter().map(|l| l.subscriptions.load(Ordering::Relaxed) as usize).sum(),
            matched: s.matched.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            refused: failure.as_ref().is_some_and(|f| f.1),
            last_error: failure.map(|f| f.0),
        }
    }

    /// Waits until every gateway's control connection has told what is subscribed there, for
    /// at most `timeout`; whether they have.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while !self.shared.links.iter().all(|l| l.connected.load(Ordering::Relaxed)) {
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
            let waiting: usize =
                self.shared.links.iter().map(|l| l.pending.lock().unwrap_or_else(PoisonError::into_inner).len()).sum();
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

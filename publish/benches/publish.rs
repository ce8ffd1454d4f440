//! What `publish` costs an application: with no subscriber (time per call, allocations counted
//! by a counting global allocator, bytes sent), and with a subscription whose query selects
//! 1 % or 100 % of the events (time per call on the application's thread, CPU of the whole
//! process including the sending thread, bytes sent per event).
//!
//! The "gateway" here is a minimal HTTP server on loopback that announces one query and
//! counts what arrives: the figures are the publisher's alone.
//!
//! `cargo bench -p squilla-publish --bench publish` prints one JSON object.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use squilla_publish::{Config, Publisher, ValueRef};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, that is from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PATHS: [&str; 4] = ["/cart", "/home", "/search", "/checkout"];

/// Publishes `n` events; returns ns per call.
fn run(publisher: &Publisher, n: u64) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        let status = if i % 100 == 0 { 503 } else { 200 };
        publisher.publish(&[
            ("path", ValueRef::Text(PATHS[(i % 4) as usize])),
            ("status", ValueRef::Int(status)),
            ("ms", ValueRef::Float((i % 997) as f64 * 0.1)),
            ("user.id", ValueRef::Int((i % 10_000) as i64)),
            ("region", ValueRef::Text("eu-west-1")),
        ]);
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

/// CPU time of the whole process so far, s.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A loopback server that announces `query` and counts the bytes published to it.
fn gateway(query: &'static str, received: Arc<AtomicU64>) -> String {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let line = format!("{}\n", serde_json::json!({"subscriptions": [{"query": query}]}));
            let app = axum::Router::new()
                .route(
                    "/api/v1/streams/{app}/{stream}/subscriptions",
                    axum::routing::get(move || {
                        let line = line.clone();
                        async move {
                            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(line) })
                                .chain(futures_util::stream::pending());
                            axum::body::Body::from_stream(stream)
                        }
                    }),
                )
                .route(
                    "/api/v1/streams/{app}/{stream}/events",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        received.fetch_add(body.len() as u64, Ordering::Relaxed);
                        async { "{}" }
                    }),
                )
                .layer(axum::extract::DefaultBodyLimit::disable());
            axum::serve(listener, app).await.unwrap();
        })
    });
    format!("http://{addr}")
}

use futures_util::StreamExt;

fn subscribed(query: &'static str, n: u64) -> serde_json::Value {
    let received = Arc::new(AtomicU64::new(0));
    let url = gateway(query, received.clone());
    let publisher = Publisher::start(Config::new(url, "shop/requests")).unwrap();
    assert!(publisher.wait_connected(Duration::from_secs(10)), "the bench's gateway did not answer");
    run(&publisher, n / 10);
    publisher.flush(Duration::from_secs(30));
    let (cpu0, bytes0, sent0) = (cpu_seconds(), received.load(Ordering::Relaxed), publisher.stats().sent);
    let ns = run(&publisher, n);
    publisher.flush(Duration::from_secs(30));
    let cpu = cpu_seconds() - cpu0;
    let stats = publisher.stats();
    let bytes = received.load(Ordering::Relaxed) - bytes0;
    serde_json::json!({
        "query": query,
        "events": n,
        "matched": stats.sent - sent0,
        "publish-ns": ns,
        "process-cpu-ns-per-event": cpu * 1e9 / n as f64,
        "bytes-per-event": bytes as f64 / n as f64,
        "bytes-per-match": bytes as f64 / (stats.sent - sent0).max(1) as f64,
        "dropped": stats.dropped,
    })
}

fn main() {
    let n: u64 = std::env::var("SQUILLA_PUBLISH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000_000);
    // No subscriber: a gateway that never answers (nothing listens on port 9 here).
    let idle = Publisher::start(Config::new("http://127.0.0.1:9", "shop/requests")).unwrap();
    run(&idle, n / 10);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let idle_ns = run(&idle, n);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let idle_stats = idle.stats();
    drop(idle);
    let selective = subscribed("SELECT * WHERE status = 503", n / 4);
    let everything = subscribed("SELECT *", n / 20);
    let report = serde_json::json!({
        "no-subscriber": {
            "events": n,
            "publish-ns": idle_ns,
            "allocations-during": allocations,
            "bytes-sent": idle_stats.bytes_sent,
            "requests": idle_stats.requests,
        },
        "one-percent": selective,
        "every-event": everything,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}

//! Shared upstreams: every subscriber of one job with the same query string (query, `clientId`,
//! `sample`) is served from one [`relay::follow`](crate::relay::follow) — one stream per agent
//! — however many there are, as Mantis's API tier does. A thousand watchers of one job cost
//! its agents one stream each.
//!
//! - **Without `clientId`** every member receives every chunk (the same bytes, shared).
//! - **With `clientId`** the members split the stream: each complete frame goes to the next
//!   member in turn (the agents see one subscriber of the group; the split happens here).
//! - **A stream `LIMIT`** is per subscriber: such a subscription is never shared.
//! - **Memory** is counted as it is held: each chunk handed to members is reserved once in the
//!   tenant's (and the process's) budget and given back when the last member has read or
//!   dropped it, however many members hold it; each member's own queue is bounded by the
//!   per-subscriber cap alone. A chunk the tenant's or process's budget cannot hold ends every
//!   member's stream (`subscriber_memory`).
//! - **Slow members** lose chunks at their own bounded queue (counted; told by a `meta` event)
//!   and never slow the upstream or each other. A member's end (it left) is noticed within a
//!   second; the upstream ends when its last member has left.
//! - **Errors**: an `error` event from an agent (a limit of the shared query) ends every
//!   member's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use squilla_net::budget::Budget;
use squilla_net::queue::{self, Item, Offered, StreamEnd};

use crate::relay::{self, Follow};

/// Events an upstream may hold for its distributor.
const UPSTREAM_EVENTS: usize = 16_384;

/// How often a shared upstream looks for members that left.
const PRUNE: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One shared upstream's members.
#[derive(Default)]
struct Members {
    list: Vec<queue::Sender>,
    /// Whether members split the stream (`clientId`).
    split: bool,
    /// The member the next frame goes to, when splitting.
    next: usize,
    /// Set once the upstream ended: no new member may join it.
    closed: bool,
}

/// The shared upstreams of one process.
#[derive(Default)]
pub struct Fanouts {
    upstreams: Mutex<HashMap<String, Arc<Mutex<Members>>>>,
    /// Upstreams started (a subscriber that joined an existing one does not count).
    started: std::sync::atomic::AtomicU64,
}

/// How one subscriber joins: what it follows and where its chunks go.
pub struct Join {
    /// What makes two subscriptions the same stream: the job and the parsed subscription
    /// parameters (so that `a=1&b=2` and `b=2&a=1` share); `None` (a stream `LIMIT`): never
    /// shared.
    pub share: Option<String>,
    /// The stream to follow (used only if no upstream of the same key runs).
    pub follow: Follow,
    /// The subscriber's queue.
    pub member: queue::Sender,
    /// Whether the subscription names a `clientId` (members split the stream).
    pub split: bool,
    /// The budget the shared upstream's own queue is held under.
    pub budget: Arc<Budget>,
    /// The tenant's stream budget, where chunks handed to members are held once. The
    /// member's queue should be bounded by a per-subscriber [`Budget::root`] of its own.
    pub hold: Arc<Budget>,
}

/// A chunk held for members: its bytes stay reserved in the tenant's budget until the last
/// member's copy of it is gone.
struct HeldChunk {
    bytes: Bytes,
    budget: Arc<Budget>,
}

impl AsRef<[u8]> for HeldChunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for HeldChunk {
    fn drop(&mut self) {
        self.budget.release(self.bytes.len());
    }
}

/// `bytes` reserved once in `budget` for as long as any copy of the result lives; `Err` with
/// the stream's end if the budget cannot hold it.
fn held(bytes: Bytes, budget: &Arc<Budget>) -> Result<Bytes, StreamEnd> {
    match budget.try_reserve(bytes.len()) {
        Ok(()) => Ok(Bytes::from_owner(HeldChunk { bytes, budget: budget.clone() })),
        Err(e) => Err(StreamEnd::memory(e)),
    }
}

impl Fanouts {
    /// Upstreams running now.
    pub fn upstreams(&self) -> usize {
        lock(&self.upstreams).len()
    }

    /// Upstreams started since the process began.
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds a subscriber to the upstream of its job and query string, starting one if none
    /// runs. `LIMIT` subscriptions always get their own.
    pub fn join(self: &Arc<Self>, join: Join) {
        let key = join.share.filter(|_| join.follow.limit.is_none());
        let mut upstreams = lock(&self.upstreams);
        if let Some(key) = &key
            && let Some(members) = upstreams.get(key)
        {
            let mut m = lock(members);
            if !m.closed {
                m.list.push(join.member);
                return;
            }
        }
        let members =
            Arc::new(Mutex::new(Members { list: vec![join.member], split: join.split, ..Members::default() }));
        if let Some(key) = &key {
            upstreams.insert(key.clone(), members.clone());
        }
        drop(upstreams);
        self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = queue::channel(join.budget, UPSTREAM_EVENTS);
        let follower = relay::follow(join.follow, tx);
        let me = self.clone();
        let hold = join.hold;
        tokio::spawn(async move {
            distribute(rx, &members, &hold).await;
            follower.abort();
            let mut upstreams = lock(&me.upstreams);
            lock(&members).closed = true;
            if let Some(key) = key
                && upstreams.get(&key).is_some_and(|m| Arc::ptr_eq(m, &members))
            {
                upstreams.remove(&key);
            }
        });
    }
}

/// Hands the upstream's chunks to the members until it ends or every member has left.
async fn distribute(mut rx: queue::Receiver, members: &Mutex<Members>, hold: &Arc<Budget>) {
    loop {
        let item = match tokio::time::timeout(PRUNE, rx.recv()).await {
            Err(_) => None,
            Ok(None) => {
                let mut m = lock(members);
                // No member may join an upstream that has ended.
                m.closed = true;
                for s in m.list.drain(..) {
                    s.finish();
                }
                return;
            }
            Ok(Some(item)) => Some(item),
        };
        let mut m = lock(members);
        m.list.retain(|s| !s.is_closed());
        if m.list.is_empty() {
            m.closed = true;
            return;
        }
        match item {
            None => {}
            Some(Item::End(end)) => {
                for s in m.list.drain(..) {
                    s.end(end.clone());
                }
                m.closed = true;
                return;
            }
            // Drops at the upstream's own queue are not told to members: their queues are
            // larger in sum, so it only overflows when the process is over its budgets.
            Some(Item::Chunk { bytes, .. }) => {
                let dealt = if m.split && m.list.len() > 1 {
                    split(&mut m, &bytes, hold)
                } else {
                    let events = squilla_types::sse::frame_count(&bytes);
                    held(bytes, hold).map(|shared| {
                        for s in &m.list {
                            // A full member loses this chunk (counted in its queue); a closed
                            // one is forgotten on the next pass.
                            let _: Offered = s.offer(shared.clone(), events);
                        }
                    })
                };
                if let Err(end) = dealt {
                    for s in m.list.drain(..) {
                        s.end(end.clone());
                    }
                    m.closed = true;
                    return;
                }
            }
        }
    }
}

/// Deals `chunk`'s data frames out to the members in turn; other frames (`meta`, `ping`) go
/// to every member. Each member's part is held in `hold`.
fn split(m: &mut Members, chunk: &[u8], hold: &Arc<Budget>) -> Result<(), StreamEnd> {
    let n = m.list.len();
    let mut parts: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0); n];
    for frame in squilla_types::sse::frames(chunk) {
        if frame.starts_with(b"data:") {
            let part = &mut parts[m.next % n];
            part.0.extend_from_slice(frame);
            part.1 += 1;
            m.next = (m.next + 1) % n;
        } else {
            for part in &mut parts {
                part.0.extend_from_slice(frame);
                part.1 += 1;
            }
        }
    }
    for (member, (text, events)) in m.list.iter().zip(parts) {
        if events > 0 {
            let _: Offered = member.offer(held(Bytes::from(text), hold)?, events);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use squilla_net::budget::{Budgets, Level};

    use super::*;

    fn member(cap: usize) -> (queue::Sender, queue::Receiver) {
        queue::channel(Budget::root(Level::Subscriber, cap), 100_000)
    }

    fn text(item: Item) -> String {
        match item {
            Item::Chunk { bytes, .. } => String::from_utf8(bytes.to_vec()).unwrap(),
            Item::End(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_client_id_group_deals_data_frames_in_turn_and_meta_to_all() {
        let budgets = Budgets::new(1 << 20, 1 << 20);
        let ((a, mut ra), (b, mut rb)) = (member(1 << 20), member(1 << 20));
        let mut m = Members { list: vec![a, b], split: true, ..Members::default() };
        split(&mut m, b"data: 1\n\ndata: 2\n\nevent: meta\ndata: {}\n\ndata: 3\n\n", &budgets.tenant("t")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (ia, ib) = rt.block_on(async { (ra.recv().await.unwrap(), rb.recv().await.unwrap()) });
        assert_eq!(text(ia), "data: 1\n\nevent: meta\ndata: {}\n\ndata: 3\n\n");
        assert_eq!(text(ib), "data: 2\n\nevent: meta\ndata: {}\n\n");
    }

    #[tokio::test]
    async fn members_holding_the_same_chunks_cost_their_tenant_one_copy() {
        let budgets = Budgets::new(64 << 20, 4 << 20);
        let tenant = budgets.tenant("t");
        let (tx, rx) = queue::channel(tenant.child(Level::Subscriber, 8 << 20), UPSTREAM_EVENTS);
        let readers: Vec<_> = (0..200).map(|_| member(2 << 20)).collect();
        let members = Arc::new(Mutex::new(Members {
            list: readers.iter().map(|(s, _)| s.clone()).collect(),
            ..Members::default()
        }));
        let (m, hold) = (members.clone(), tenant.clone());
        let task = tokio::spawn(async move { distribute(rx, &m, &hold).await });
        // 1 MiB in all, held by 200 members that read nothing: 200 MiB if counted per member.
        let chunk = Bytes::from(format!("data: {}\n\n", "x".repeat((64 << 10) - 8)));
        for _ in 0..16 {
            assert_eq!(tx.offer(chunk.clone(), 1), Offered::Queued);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(readers.iter().all(|(s, _)| !s.is_closed()), "no member was ended");
        let used = tenant.used();
        assert!((1 << 20..(1 << 20) + (64 << 10)).contains(&used), "one copy held: {used}");
        // Members reading and leaving give it back.
        for (_, mut r) in readers {
            while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_millis(5), r.recv()).await {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        assert_eq!(tenant.used(), 0);
        tx.finish();
        task.await.unwrap();
    }
}

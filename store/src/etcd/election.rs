//! Leader election through etcd: one master of a fleet leads (runs the control loop,
//! placement and every write); the others stand by and send clients to it.
//!
//! The recipe is etcd's own: each candidate holds a lease of `ttl`; the leader is whoever
//! created the `leader` key (with its URL as value, attached to its lease) — a transaction
//! that creates the key only if it does not exist. The leader renews its lease every third
//! of `ttl`; if it dies, is cut off or paused, the lease expires and the key with it. Each
//! standby watches the key (`super::watch`) and tries to create it as soon as it is gone
//! (and every [`POLL`] in any case).
//!
//! Safety does not rest on timing: every write of the leader is conditioned on the key's
//! create revision (its *fence*, see [`super::Etcd`]), so a master that lost the key cannot
//! write. Timing decides only how soon a cut-off leader *stops acting* (answering
//! heartbeats, placing workers): it steps down when a renewal has not succeeded by
//! `sent + ttl - margin`, where `sent` is when the last successful renewal was sent. etcd
//! counts the lease from when it received that renewal, later than `sent`, so the old leader
//! stops before the key can expire and a new leader be elected.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{b64, int, unb64};
use super::{Etcd, Inner};
use crate::kv::StoreError;

/// How long a candidate waits between attempts: it watches the `leader` key and tries again
/// at once when it changes (when the leader's lease expires, or it resigns), and after this
/// long without a change anyway.
pub const POLL: Duration = Duration::from_secs(1);

/// What this master is in its fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This master leads: it writes and runs the control loop.
    Leader,
    /// Another master leads (its URL, once known), or none does yet.
    Standby {
        /// The leader's URL as it advertised it.
        leader: Option<String>,
    },
}

/// A master's candidacy: its role as it changes, until it resigns.
pub struct Candidacy {
    /// This master's role.
    pub role: watch::Receiver<Role>,
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl Candidacy {
    /// Gives up: stops acting as leader at once, and revokes the lease (within about a
    /// second), so that another master takes over without waiting for it to expire.
    pub async fn resign(self) {
        drop(self.role);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ended).await;
    }
}

impl Etcd {
    /// Stands for leadership as `me` (the URL clients should be sent to) with leases of
    /// `ttl` (at least 2 s). The candidacy lasts while its `role` receiver (or a clone) is
    /// held; when the last is dropped the leadership is given up and the lease revoked.
    pub fn campaign(&self, me: String, ttl: Duration) -> Candidacy {
        let ttl = ttl.max(Duration::from_secs(2));
        let (tx, rx) = watch::channel(Role::Standby { leader: None });
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        self.handle().spawn(async move {
            while !tx.is_closed() {
                if let Err(err) = stand(&inner, &me, ttl, &tx).await {
                    tracing::warn!(error = %err, "election: etcd failed; standing again");
                }
                step_down(&inner, &tx);
                if !tx.is_closed() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            let _ = ended_tx.send(());
        });
        Candidacy { role: rx, ended }
    }
}

/// One candidacy: a lease, attempts until this master leads, its leadership until it ends.
async fn stand(inner: &Arc<Inner>, me: &str, ttl: Duration, role: &watch::Sender<Role>) -> Result<(), StoreError> {
    let mut renewed = Instant::now();
    let granted = inner.client.call("/v3/lease/grant", &json!({ "TTL": ttl.as_secs() })).await?;
    let lease = int(&granted["ID"]);
    let (mut changes, follow) =
        super::watch::follower(inner.clone(), format!("{}leader", inner.prefix).into_bytes(), 0);
    let following = tokio::spawn(follow);
    let key = b64(format!("{}leader", inner.prefix));
    let result = async {
        loop {
            let take = json!({
                "compare": [{ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                "success": [{ "request_put": { "key": key, "value": b64(me), "lease": lease.to_string() } }],
                "failure": [{ "request_range": { "key": key } }],
            });
            let answer = inner.client.call("/v3/kv/txn", &take).await?;
            if answer["succeeded"].as_bool() == Some(true) {
                let fence = int(&answer["header"]["revision"]);
                return lead(inner, lease, fence, ttl, renewed, role).await;
            }
            let holder = &answer["responses"][0]["response_range"]["kvs"][0];
            let leader = String::from_utf8(unb64(&holder["value"])?).ok().filter(|l| !l.is_empty());
            role.send_if_modified(|r| {
                let new = Role::Standby { leader: leader.clone() };
                let changed = *r != new;
                *r = new;
                changed
            });
            if role.is_closed() {
                return Ok(());
            }
            // Until the key changes (or a renewal is due).
            let _ = tokio::time::timeout(POLL.min(ttl / 3), changes.recv()).await;
            if renewed.elapsed() >= ttl / 3 {
                renewed = renew(inner, lease, Instant::now()).await?.ok_or_else(|| lost("the lease expired"))?;
            }
        }
    }
    .await;
    following.abort();
    step_down(inner, role);
    // Best effort, and bounded: a revoked lease frees the leadership at once instead of
    // after `ttl` (without quorum it cannot be revoked, and expires by itself).
    let revoke = json!({ "ID": lease.to_string() });
    let _ = tokio::time::timeout(Duration::from_secs(1), inner.client.call("/v3/lease/revoke", &revoke)).await;
    result
}

/// Stops acting as leader: writes are refused from now on, and the role says so.
fn step_down(inner: &Inner, role: &watch::Sender<Role>) {
    inner.fence.store(0, Ordering::Release);
    role.send_if_modified(|role| {
        let was_leader = *role == Role::Leader;
        if was_leader {
            *role = Role::Standby { leader: None };
        }
        was_leader
    });
}

fn lost(why: &str) -> StoreError {
    StoreError::Etcd(format!("leadership lost: {why}"))
}

/// Renews `lease`; the instant the renewal was sent if it held, `None` if the lease is gone.
async fn renew(inner: &Inner, lease: i64, sent: Instant) -> Result<Option<Instant>, StoreError> {
    let answer = inner.client.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() })).await?;
    Ok((int(&answer["result"]["TTL"]) > 0).then_some(sent))
}

/// Leads while the lease is renewed in time and the key is still this master's.
async fn lead(
    inner: &Inner,
    lease: i64,
    fence: i64,
    ttl: Duration,
    mut renewed: Instant,
    role: &watch::Sender<Role>,
) -> Result<(), StoreError> {
    inner.fence.store(fence, Ordering::Release);
    role.send_replace(Role::Leader);
    tracing::info!(fence, "election: this master leads");
    let margin = (ttl / 10).max(Duration::from_millis(200));
    let key = format!("{}leader", inner.prefix);
    loop {
        let deadline = renewed + ttl - margin;
        let attempt = async {
            tokio::time::sleep(ttl / 3).await;
            let sent = Instant::now();
            let renewed = renew(inner, lease, sent).await?;
            let holder = inner.client.range(key.as_bytes(), &[], 1).await?;
            let ours = holder.first().is_some_and(|kv| int(&kv["create_revision"]) == fence);
            Ok::<_, StoreError>(renewed.filter(|_| ours))
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Err(lost("no renewal in time")),
            () = role.closed() => return Ok(()),
            attempt = attempt => match attempt {
                Ok(Some(sent)) => renewed = sent,
                Ok(None) => return Err(lost("the lease or the key is gone")),
                Err(err) => tracing::warn!(error = %err, "election: renewal failed; retrying"),
            },
        }
    }
}

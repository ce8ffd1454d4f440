//! `squilla master --store etcd://…`: masters that share an etcd store, one leading.
//!
//! Each master stands for leadership (`squilla_store::etcd::election`). While it leads, it
//! serves the whole API and runs the control loop over the jobs it loaded from the store
//! when it was elected — the plan the previous leader left, adopted as a restarted master
//! adopts its own. While it stands by, it runs nothing: it answers reads of artifacts,
//! clusters and jobs itself, from the store and from a copy of the jobs that follows the
//! leader's writes through an etcd watch, and every other request with where the leader is
//! (`squilla_scheduler::api::standby`). The switch is one router swapped behind the
//! listener, so connections are never refused during a change.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use squilla_scheduler::api::{Tenants, router, spawn_control_loop, standby};
use squilla_scheduler::store::etcd::election::Role;
use squilla_scheduler::store::etcd::watch::Change;
use squilla_scheduler::store::etcd::{Etcd, EtcdConfig};
use squilla_scheduler::store::{JobRecord, Store};
use tower::ServiceExt;

use crate::master::{MasterArgs, leader_state};

/// Asks a fleet master to resign; answered once it has (or could not within 2 s).
pub type Resign = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>;

/// Connects to the etcd store at `url`, stands for leadership as `me`, and returns the
/// router to serve (the leader's API while leading, the standby's answers otherwise) and
/// the way to resign when the master stops.
pub async fn lead_or_stand_by(
    args: MasterArgs,
    tenants: Tenants,
    url: &str,
    me: String,
) -> anyhow::Result<(Router, Resign)> {
    let mut config = EtcdConfig::from_url(url)?;
    config.ca = args.fleet.etcd_ca.clone();
    config.identity = args.fleet.etcd_cert.clone().zip(args.fleet.etcd_key.clone());
    let etcd = Etcd::connect(&config)?;
    let store = Arc::new(Store::new(etcd.clone()));
    let candidacy = etcd.campaign(me.clone(), Duration::from_secs(args.fleet.leader_lease_secs));
    let mut role = candidacy.role.clone();
    let follow = etcd.clone();
    let current = Arc::new(RwLock::new(standby::router(None)));
    let switch = current.clone();
    let (resign, mut resigning) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    tokio::spawn(async move {
        let mut control_loop: Option<tokio::task::JoinHandle<()>> = None;
        // A standby's read-only API and the task that keeps its jobs as the leader writes
        // them; made in the background (it needs the store, which may be out of reach).
        let mut reads: Option<(Router, tokio::task::JoinHandle<()>)> = None;
        let mut making: Option<tokio::task::JoinHandle<()>> = None;
        let (made_tx, mut made) = tokio::sync::mpsc::channel::<ReadState>(1);
        loop {
            let now = role.borrow_and_update().clone();
            match now {
                Role::Leader if control_loop.is_none() => {
                    if let Some((_, following)) = reads.take() {
                        following.abort();
                    }
                    if let Some(task) = making.take() {
                        task.abort();
                    }
                    let (a, t, s) = (args.clone(), tenants.clone(), store.clone());
                    match tokio::task::spawn_blocking(move || take_over(&a, t, s)).await {
                        Ok(Ok(app)) => {
                            let (state, control) = app;
                            control_loop = Some(spawn_control_loop(control));
                            set(&switch, router(state));
                            eprintln!("squilla master: leading as {me}");
                        }
                        Ok(Err(err)) => {
                            tracing::error!(error = %err, "cannot take over as leader; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        Err(err) => tracing::error!(error = %err, "taking over panicked"),
                    }
                }
                Role::Leader => {}
                Role::Standby { leader } => {
                    if let Some(running) = control_loop.take() {
                        running.abort();
                    }
                    // Our own URL is a lease of a previous run of this master, expiring.
                    let leader = leader.filter(|l| *l != me);
                    // At once: a master that stood down answers nothing as a leader any more.
                    set(
                        &switch,
                        match &reads {
                            Some((reads, _)) => standby::with_reads(leader.clone(), reads.clone()),
                            None => standby::router(leader.clone()),
                        },
                    );
                    eprintln!("squilla master: standing by; leader: {}", leader.as_deref().unwrap_or("none yet"));
                    if reads.is_none() && making.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                        let (a, t, s, tx) = (args.clone(), tenants.clone(), store.clone(), made_tx.clone());
                        making = Some(tokio::spawn(make_reads(a, t, s, tx)));
                    }
                }
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() { break },
                Some((state, control)) = made.recv() => {
                    // Applied by the next turn, if this master still stands by.
                    if control_loop.is_none() {
                        reads = Some((router(state), tokio::spawn(keep(control, follow.follow("jobs/")))));
                    }
                }
                Some(done) = resigning.recv() => {
                    if let Some(running) = control_loop.take() {
                        running.abort();
                    }
                    set(&switch, standby::router(None));
                    drop(role);
                    candidacy.resign().await;
                    let _ = done.send(());
                    break;
                }
            }
        }
    });
    let app = Router::new().fallback(move |request: Request| {
        let app = current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        async move { app.oneshot(request).await.into_response() }
    });
    Ok((app, resign))
}

fn set(switch: &RwLock<Router>, app: Router) {
    *switch.write().unwrap_or_else(std::sync::PoisonError::into_inner) = app;
}

/// A standby's API state and its jobs.
type ReadState = (squilla_scheduler::api::AppState, Arc<squilla_scheduler::control::Control>);

/// Makes a standby's read state, trying again every 2 s while the store is out of reach.
async fn make_reads(args: MasterArgs, tenants: Tenants, store: Arc<Store>, made: tokio::sync::mpsc::Sender<ReadState>) {
    loop {
        let (a, t, s) = (args.clone(), tenants.clone(), store.clone());
        match tokio::task::spawn_blocking(move || read_only(&a, t, s)).await {
            Ok(Ok(state)) => {
                let _ = made.send(state).await;
                return;
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "cannot serve reads as a standby yet; redirecting them"),
            Err(err) => tracing::error!(error = %err, "making the standby's reads panicked"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A standby's state, for reads only: the jobs as stored (kept up to date by [`keep`]); the
/// fleet's CA if the store has one (a standby issues no certificates).
fn read_only(args: &MasterArgs, tenants: Tenants, store: Arc<Store>) -> anyhow::Result<ReadState> {
    let authority = match store.fleet_ca()? {
        Some((cert, key)) => squilla_net::ca::Authority::from_pems(&cert, &key)?,
        None => squilla_net::ca::Authority::generate()?,
    };
    leader_state(args, tenants, store, authority)
}

/// Keeps a standby's jobs as the leader writes them.
async fn keep(control: Arc<squilla_scheduler::control::Control>, mut changes: tokio::sync::mpsc::Receiver<Change>) {
    while let Some(change) = changes.recv().await {
        match change {
            Change::Reset(all) => control.replace_stored_jobs(
                all.into_iter().filter_map(|(key, json)| Some(JobRecord { key: key.parse().ok()?, json })).collect(),
            ),
            Change::Put(key, json) => {
                if let Ok(key) = key.parse() {
                    control.put_stored_job(key, Some(&json));
                }
            }
            Change::Delete(key) => {
                if let Ok(key) = key.parse() {
                    control.put_stored_job(key, None);
                }
            }
        }
    }
}

/// The leader's state: the fleet's CA (shared through the store), the jobs as stored.
fn take_over(
    args: &MasterArgs,
    tenants: Tenants,
    store: Arc<Store>,
) -> anyhow::Result<(squilla_scheduler::api::AppState, Arc<squilla_scheduler::control::Control>)> {
    let fresh = squilla_net::ca::Authority::generate()?.pems();
    let (cert, key) = store.fleet_ca_or(|| fresh)?;
    let authority = squilla_net::ca::Authority::from_pems(&cert, &key)?;
    leader_state(args, tenants, store, authority)
}

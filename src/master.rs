//! `squilla master`: the HTTP API, the store and the control loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use squilla_net::rate::Rate;
use squilla_net::server::ServerLimits;
use squilla_scheduler::api::{ApiLimits, AppState, Tenants, router, spawn_control_loop};
use squilla_scheduler::control::{Control, ControlConfig, Quota};
use squilla_scheduler::store::Store;

/// Arguments of `squilla master` (and the master half of `squilla dev`).
#[derive(clap::Args, Clone)]
pub struct MasterArgs {
    /// Address to listen on.
    #[arg(long, env = "SQUILLA_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Directory for the store (`squilla.redb`); created if missing.
    #[arg(long, env = "SQUILLA_DATA_DIR", default_value = "squilla-data")]
    pub data_dir: PathBuf,
    /// Tokens file: one `tenant token` pair per line (tokens of 16 characters or more).
    #[arg(long, env = "SQUILLA_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// The token agents present (16 characters or more). Without one, no agent can join.
    #[arg(long, env = "SQUILLA_AGENT_TOKEN")]
    pub agent_token: Option<String>,
    /// Largest artifact accepted, in MiB.
    #[arg(long, env = "SQUILLA_MAX_ARTIFACT_MIB", default_value_t = 64)]
    pub max_artifact_mib: usize,
    /// Artifact MiB one tenant may hold.
    #[arg(long, env = "SQUILLA_TENANT_ARTIFACT_MIB", default_value_t = 1024)]
    pub tenant_artifact_mib: u64,
    /// Workers one tenant may run (over its active jobs).
    #[arg(long, env = "SQUILLA_TENANT_WORKERS", default_value_t = 100)]
    pub tenant_workers: u64,
    /// Worker memory one tenant may reserve, MiB.
    #[arg(long, env = "SQUILLA_TENANT_MEMORY_MIB", default_value_t = 16_384)]
    pub tenant_memory_mib: u64,
    /// How often agents heartbeat, ms.
    #[arg(long, env = "SQUILLA_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Silence after which an agent is lost and its workers re-placed, ms.
    #[arg(long, env = "SQUILLA_AGENT_TIMEOUT_MS", default_value_t = 5000)]
    pub agent_timeout_ms: u64,
    /// Requests per second one tenant may make (burst: twice as many).
    #[arg(long, env = "SQUILLA_TENANT_RPS", default_value_t = 200)]
    pub tenant_rps: u32,
    /// Requests per second one client address may make (burst: twice as many).
    #[arg(long, env = "SQUILLA_CLIENT_RPS", default_value_t = 500)]
    pub client_rps: u32,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Sink subscriptions one tenant may hold open at once (429 `too_many_subscriptions`
    /// beyond).
    #[arg(long, env = "SQUILLA_TENANT_SUBSCRIPTIONS", default_value_t = 64)]
    pub tenant_subscriptions: usize,
    /// Open connections one client address may have.
    #[arg(long, env = "SQUILLA_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_connections_per_ip: usize,
    /// A gateway's address (repeatable, or comma-separated in the variable): its requests are
    /// rated by the client address its `X-Forwarded-For` names.
    #[arg(long = "trusted-proxy", env = "SQUILLA_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve the API over HTTPS with this certificate chain (PEM, leaf first); needs
    /// `--tls-key`.
    #[arg(long, env = "SQUILLA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "SQUILLA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Agent-pool advice: idle agents each zone should keep at least.
    #[arg(long, env = "SQUILLA_POOL_MIN_IDLE", default_value_t = 0)]
    pub pool_min_idle: u32,
    /// Agent-pool advice: idle agents beyond which a zone should shrink.
    #[arg(long, env = "SQUILLA_POOL_MAX_IDLE", default_value_t = 2)]
    pub pool_max_idle: u32,
    /// Agent-pool advice: seconds after a zone changed before it is advised again.
    #[arg(long, env = "SQUILLA_POOL_COOLDOWN_SECS", default_value_t = 300)]
    pub pool_cooldown_secs: u32,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Where the state lives, and how masters sharing it elect their leader.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// The store: none for the embedded file in `--data-dir`, or an etcd cluster,
    /// `etcd://h1:2379,h2:2379,h3:2379[/prefix]` (`etcds://` for TLS), shared by every
    /// master of the fleet; one of them is elected to lead.
    #[arg(long, env = "SQUILLA_STORE")]
    pub store: Option<String>,
    /// PEM CA certificates to trust for an `etcds://` store.
    #[arg(long, env = "SQUILLA_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd members that require one; needs `--etcd-key`.
    #[arg(long, env = "SQUILLA_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of `--etcd-cert` (PEM).
    #[arg(long, env = "SQUILLA_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The URL other masters send clients to when this master leads (default: the scheme
    /// and `--listen` address).
    #[arg(long, env = "SQUILLA_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The leader's lease, seconds (at least 2): a leader that cannot renew it for this long
    /// steps down, and another takes over.
    #[arg(long, env = "SQUILLA_LEADER_LEASE_SECS", default_value_t = 3)]
    pub leader_lease_secs: u64,
}

/// The TLS acceptor of `--tls-cert` and `--tls-key`, if given.
pub fn tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> anyhow::Result<Option<squilla_net::tls::TlsAcceptor>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(squilla_net::tls::acceptor(cert, key)?)),
        (None, None) => Ok(None),
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    }
}

/// What a process that serves sink streams (the master, a gateway) may hold for subscribers.
#[derive(clap::Args, Debug, Clone)]
pub struct StreamArgs {
    /// Bytes one stream subscriber may have waiting here, MiB.
    #[arg(long, env = "SQUILLA_STREAM_SUBSCRIBER_MIB", default_value_t = 16)]
    pub stream_subscriber_mib: usize,
    /// Bytes all of one tenant's stream subscribers may have waiting here, MiB.
    #[arg(long, env = "SQUILLA_STREAM_TENANT_MIB", default_value_t = 256)]
    pub stream_tenant_mib: usize,
    /// Bytes all stream subscribers may have waiting here, MiB.
    #[arg(long, env = "SQUILLA_STREAM_TOTAL_MIB", default_value_t = 1024)]
    pub stream_total_mib: usize,
}

impl StreamArgs {
    /// `(subscriber, tenant, total)` bytes.
    pub fn bytes(&self) -> (usize, usize, usize) {
        let mib = |n: usize| n.max(1) << 20;
        (mib(self.stream_subscriber_mib), mib(self.stream_tenant_mib), mib(self.stream_total_mib))
    }
}

/// Limits on application publishers, for a gateway and for the streams a plain-HTTP master
/// serves itself (docs/publish.md).
#[derive(clap::Args, Debug, Clone)]
pub struct PublishArgs {
    /// Publishers (control connections) one tenant may hold open here (429
    /// `too_many_publishers` beyond).
    #[arg(long, env = "SQUILLA_TENANT_PUBLISHERS", default_value_t = 1024)]
    pub tenant_publishers: usize,
    /// Events per second one tenant may publish here, bursts of twice as many (429
    /// `rate_limited` beyond; a refused request takes none of its events).
    #[arg(long, env = "SQUILLA_TENANT_PUBLISH_RATE", default_value_t = 1_000_000)]
    pub tenant_publish_rate: u32,
}

impl PublishArgs {
    /// `config` with these limits.
    pub fn apply(&self, config: squilla_gateway::server::GatewayConfig) -> squilla_gateway::server::GatewayConfig {
        let rate = f64::from(self.tenant_publish_rate.max(1));
        squilla_gateway::server::GatewayConfig {
            publishers_per_tenant: self.tenant_publishers,
            publish_rate: squilla_net::rate::Rate { per_second: rate, burst: 2.0 * rate },
            ..config
        }
    }
}

/// A master serving on its own tasks.
pub struct Running {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// `https` or `http`.
    pub scheme: &'static str,
    /// How a master of a fleet resigns its leadership when it stops.
    pub resign: Option<crate::fleet::Resign>,
}

/// Opens the store, loads the jobs, and serves the API on the current runtime. With an etcd
/// store, stands for leadership: serves the whole API while leading, and sends clients to
/// the leader while standing by.
pub async fn start(args: &MasterArgs, tenants: Tenants) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(squilla_net::server::ServerStats::default());
    let server = ServerLimits { max_connections_per_ip: args.max_connections_per_ip, ..ServerLimits::default() };
    let acceptor = tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let mut resign = None;
    let app = match &args.fleet.store {
        None => {
            let store = Arc::new(Store::open(&args.data_dir.join("squilla.redb"))?);
            let authority = squilla_net::ca::Authority::load_or_create(&args.data_dir.join("ca"))?;
            let (state, control) = leader_state(args, tenants, store, authority)?;
            spawn_control_loop(control);
            match &acceptor {
                // Application streams built in, asking this master who callers are.
                None => {
                    let config = args.publish.apply(squilla_gateway::server::GatewayConfig {
                        master: squilla_net::masters::Masters::new(&format!("http://{addr}")),
                        // The streams' metrics are the operator's, as the master's own are.
                        operator_token: args.agent_token.as_deref().map(squilla_net::auth::TokenHash::of),
                        ..Default::default()
                    });
                    let gateway = squilla_gateway::server::Gateway::new(config, reqwest::Client::new())?;
                    router(state).merge(squilla_gateway::apps::router(gateway))
                }
                Some(_) => router(state),
            }
        }
        Some(url) => {
            // Agents keep their workers for 0.9 × the agent timeout without an answer: a
            // failover (the lease, then a heartbeat) shorter than that stops no worker.
            let failover_ms = args.fleet.leader_lease_secs.max(2) * 1000 + args.heartbeat_ms;
            if args.agent_timeout_ms * 9 / 10 <= failover_ms {
                tracing::warn!(
                    agent_timeout_ms = args.agent_timeout_ms,
                    leader_lease_secs = args.fleet.leader_lease_secs,
                    "agents' leases (0.9 × the agent timeout) are shorter than a failover (the leader lease plus a \
                     heartbeat): workers will pause while masters fail over"
                );
            }
            let me = args.fleet.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
            let (app, resigner) = crate::fleet::lead_or_stand_by(args.clone(), tenants, url, me).await?;
            resign = Some(resigner);
            app
        }
    };
    tokio::spawn(squilla_net::server::serve_tls(listener, app, server, stats, acceptor));
    Ok(Running { addr, scheme, resign })
}

/// The API's state, and the control over `store`'s jobs, of a master that leads.
pub(crate) fn leader_state(
    args: &MasterArgs,
    tenants: Tenants,
    store: Arc<Store>,
    authority: squilla_net::ca::Authority,
) -> anyhow::Result<(AppState, Arc<Control>)> {
    let config = ControlConfig {
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(10)),
        agent_timeout: Duration::from_millis(args.agent_timeout_ms.max(20)),
        quota: Quota { workers: args.tenant_workers, memory_mib: args.tenant_memory_mib },
        ..ControlConfig::default()
    };
    let control = Arc::new(Control::load(store.clone(), config)?);
    let limits = ApiLimits {
        max_artifact_bytes: args.max_artifact_mib << 20,
        artifact_bytes_per_tenant: args.tenant_artifact_mib << 20,
        tenant_rate: Rate { per_second: f64::from(args.tenant_rps), burst: 2.0 * f64::from(args.tenant_rps) },
        client_rate: Rate { per_second: f64::from(args.client_rps), burst: 2.0 * f64::from(args.client_rps) },
        subscriber_bytes: args.streams.bytes().0,
        tenant_stream_bytes: args.streams.bytes().1,
        total_stream_bytes: args.streams.bytes().2,
        subscriptions_per_tenant: args.tenant_subscriptions,
        trusted_proxies: args.trusted_proxies.clone(),
        ..ApiLimits::default()
    };
    let mut state = AppState::new(tenants, store, limits, control.clone(), args.agent_token.clone())?;
    state.set_authority(Arc::new(authority))?;
    state.pool = squilla_scheduler::advice::PoolRules {
        min_idle: args.pool_min_idle,
        max_idle: args.pool_max_idle.max(args.pool_min_idle),
        cooldown_ms: i64::from(args.pool_cooldown_secs) * 1000,
    };
    Ok((state, control))
}

pub fn run(args: MasterArgs) -> anyhow::Result<()> {
    let path =
        args.tokens.clone().context("--tokens (or SQUILLA_TOKENS) is required: a file of `tenant token` lines")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let tenants = Tenants::parse(&text).with_context(|| format!("{}", path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let running = start(&args, tenants).await?;
        let (addr, scheme) = (running.addr, running.scheme);
        match &args.fleet.store {
            None => eprintln!("squilla master: API at {scheme}://{addr}/api/v1 (data in {})", args.data_dir.display()),
            Some(store) => eprintln!("squilla master: API at {scheme}://{addr}/api/v1 (store {store})"),
        }
        eprintln!("squilla master: web console at {scheme}://{addr}/");
        if args.agent_token.is_none() {
            eprintln!("squilla master: no --agent-token given, so no agent can join");
        }
        // Ctrl-C, or SIGTERM as service managers and Kubernetes stop a process.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        if let Some(resign) = running.resign {
            // Another master takes over at once instead of after the lease.
            let (done, resigned) = tokio::sync::oneshot::channel();
            if resign.send(done).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(3), resigned).await;
            }
        }
        anyhow::Ok(())
    })
}

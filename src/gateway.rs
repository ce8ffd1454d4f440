//! `squilla gateway`: a job's sink and ingest served without the master in the data path
//! (`squilla_gateway::server`); every other request is passed through to the master.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use squilla_gateway::server::{Gateway, GatewayConfig, router};
use squilla_net::server::ServerLimits;

/// The gateway's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Where the gateway listens.
    #[arg(long, env = "SQUILLA_GATEWAY_LISTEN", default_value = "127.0.0.1:7080")]
    pub listen: SocketAddr,
    /// The master's URL, or every master's, comma-separated (the gateway follows the leader).
    #[arg(long, env = "SQUILLA_MASTER", default_value = "http://127.0.0.1:7070")]
    pub master: String,
    /// Sink subscriptions one tenant may hold open at this gateway (429
    /// `too_many_subscriptions` beyond).
    #[arg(long, env = "SQUILLA_GATEWAY_TENANT_SUBSCRIPTIONS", default_value_t = 1024)]
    pub tenant_subscriptions: usize,
    #[command(flatten)]
    pub streams: crate::master::StreamArgs,
    #[command(flatten)]
    pub publish: crate::master::PublishArgs,
    /// Requests per second from one client address (bursts of twice as many); 429
    /// `rate_limited` beyond.
    #[arg(long, env = "SQUILLA_CLIENT_RPS", default_value_t = 500)]
    pub client_rps: u32,
    /// Open connections in all.
    #[arg(long, env = "SQUILLA_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Open connections one client address may have.
    #[arg(long, env = "SQUILLA_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_connections_per_ip: usize,
    /// Serve over HTTPS with this certificate chain (PEM, leaf first); needs `--tls-key`.
    #[arg(long, env = "SQUILLA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "SQUILLA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The operator's token (at least 16 characters): it opens `/gateway/metrics` and the
    /// application streams of `/gateway/status`, which name tenants. Without it neither is
    /// served.
    #[arg(long, env = "SQUILLA_OPERATOR_TOKEN")]
    pub operator_token: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` master (beside the public ones).
    #[arg(long, env = "SQUILLA_CA")]
    pub ca: Option<std::path::PathBuf>,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    if let Some(token) = &args.operator_token
        && token.len() < 16
    {
        anyhow::bail!("--operator-token must be at least 16 characters");
    }
    let config = args.publish.apply(GatewayConfig {
        master: squilla_net::masters::Masters::new(&args.master),
        subscriptions_per_tenant: args.tenant_subscriptions,
        subscriber_bytes: args.streams.bytes().0,
        tenant_stream_bytes: args.streams.bytes().1,
        total_stream_bytes: args.streams.bytes().2,
        agent_timeout: Duration::from_secs(10),
        client_rate: squilla_net::rate::Rate {
            per_second: f64::from(args.client_rps),
            burst: 2.0 * f64::from(args.client_rps),
        },
        operator_token: args.operator_token.as_deref().map(squilla_net::auth::TokenHash::of),
        ..GatewayConfig::default()
    });
    let gateway = Gateway::new(config, crate::client::http_client(args.ca.as_deref())?)?;
    let acceptor = crate::master::tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let limits = ServerLimits {
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            ..ServerLimits::default()
        };
        let stats = Arc::new(squilla_net::server::ServerStats::default());
        tokio::spawn(squilla_net::server::serve_tls(listener, router(gateway), limits, stats, acceptor));
        eprintln!("squilla gateway: serving {scheme}://{addr}/api/v1 in front of {}", args.master);
        let _ = tokio::signal::ctrl_c().await;
        anyhow::Ok(())
    })
}

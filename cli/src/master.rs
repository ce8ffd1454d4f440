//! `squilla master`: the HTTP API over the embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use squilla_scheduler::api::{ApiLimits, AppState, Tenants, router};
use squilla_scheduler::store::Store;

/// Arguments of `squilla master`.
#[derive(clap::Args)]
pub struct MasterArgs {
    /// Address to listen on.
    #[arg(long, env = "SQUILLA_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for the store (`squilla.redb`); created if missing.
    #[arg(long, env = "SQUILLA_DATA_DIR", default_value = "squilla-data")]
    data_dir: PathBuf,
    /// Tokens file: one `tenant token` pair per line (tokens of 16 characters or more).
    #[arg(long, env = "SQUILLA_TOKENS")]
    tokens: PathBuf,
    /// Largest artifact accepted, in MiB.
    #[arg(long, env = "SQUILLA_MAX_ARTIFACT_MIB", default_value_t = 64)]
    max_artifact_mib: usize,
    /// Artifact MiB one tenant may hold.
    #[arg(long, env = "SQUILLA_TENANT_ARTIFACT_MIB", default_value_t = 1024)]
    tenant_artifact_mib: u64,
}

pub fn run(args: MasterArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.tokens).with_context(|| format!("cannot read {}", args.tokens.display()))?;
    let tenants = Tenants::parse(&text).with_context(|| format!("{}", args.tokens.display()))?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let store = Store::open(&args.data_dir.join("squilla.redb"))?;
    let state = AppState {
        tenants: Arc::new(tenants),
        store: Arc::new(store),
        limits: ApiLimits {
            max_artifact_bytes: args.max_artifact_mib << 20,
            artifact_bytes_per_tenant: args.tenant_artifact_mib << 20,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "squilla master: API at http://{}/api/v1 (data in {})",
            listener.local_addr()?,
            args.data_dir.display()
        );
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })
}

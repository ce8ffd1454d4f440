//! The agent's client for the master: artifacts by sha256, verified before they are compiled,
//! and what a job source needs to subscribe to an upstream job ([`crate::chain`]).
//!
//! The agent asks the master for the bytes of an artifact by its content address and checks
//! that they hash to it: a master (or anything between) that sends other bytes is refused.
//! Compiled artifacts are kept by the host's [`ArtifactCache`] (in memory, and on disk when
//! the agent has a cache directory), so each sha256 is fetched and compiled once; a sha256
//! that failed to compile is refused at once afterwards, without fetching it again.

use std::sync::Arc;
use std::time::Duration;

use squilla_host::{Artifact, ArtifactCache};
use squilla_types::ids::{Sha256, TenantId};

/// How long fetching an artifact's bytes from the master may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent's client for the master: its address and token, an HTTP client, and the
/// artifact cache that what it fetches is compiled into.
#[derive(Clone)]
pub struct MasterClient {
    /// The masters.
    pub(crate) url: squilla_net::masters::Masters,
    pub(crate) token: String,
    pub(crate) client: reqwest::Client,
    pub(crate) cache: Arc<ArtifactCache>,
    pub(crate) runtime: tokio::runtime::Handle,
}

/// Why an artifact is not available here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFailure {
    /// What went wrong.
    pub message: String,
    /// Whether it will fail the same way wherever it is tried (the bytes cannot be compiled).
    pub fatal: bool,
}

impl MasterClient {
    /// The compiled artifact with content address `sha256`, on behalf of `tenant` (call from
    /// a thread that may block: it fetches, then compiles within the compile budget).
    pub fn artifact(&self, tenant: &TenantId, key: &Sha256) -> Result<Artifact, ArtifactFailure> {
        let retry = |message: String| ArtifactFailure { message, fatal: false };
        let sha256 = key.to_string();
        let key = *key;
        if let Some(artifact) = self.cache.get(&key) {
            return Ok(artifact);
        }
        if let Some(err) = self.cache.failure(&key) {
            return Err(ArtifactFailure { message: format!("artifact {sha256}: {err}"), fatal: true });
        }
        let path = format!("/api/v1/agent/artifacts/{sha256}");
        let limit = self.cache.max_component_bytes();
        let bytes = self.runtime.block_on(async {
            let response = self
                .url
                .send(|base| self.client.get(format!("{base}{path}")).bearer_auth(&self.token).timeout(FETCH_TIMEOUT))
                .await
                .map_err(|e| retry(format!("artifact {sha256}: cannot fetch it from the master: {e}")))?;
            if !response.status().is_success() {
                return Err(retry(format!("artifact {sha256}: the master answered {}", response.status())));
            }
            let mut body = response;
            let mut bytes = Vec::new();
            while let Some(chunk) =
                body.chunk().await.map_err(|e| retry(format!("artifact {sha256}: reading it: {e}")))?
            {
                if bytes.len() + chunk.len() > limit {
                    return Err(ArtifactFailure {
                        message: format!("artifact {sha256}: over the {limit}-byte limit of components"),
                        fatal: true,
                    });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        })?;
        let actual = Sha256::of(&bytes);
        if actual != key {
            return Err(retry(format!("artifact {sha256}: the bytes received hash to {actual}; refused")));
        }
        self.cache
            .get_or_compile_for(tenant.as_str(), &bytes)
            .map_err(|e| ArtifactFailure { message: format!("artifact {sha256}: {e}"), fatal: e.is_permanent() })
    }
}

/// Posts `body` as JSON to the master's `path` with the agent token, within `timeout`; the
/// answer parsed, or what went wrong (a refusal with its status and body).
pub(crate) async fn post_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    config: &crate::config::AgentConfig,
    path: &str,
    timeout: Duration,
    body: &impl serde::Serialize,
) -> Result<T, String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let response = config
        .master
        .send(|base| {
            client
                .post(format!("{base}{path}"))
                .bearer_auth(&config.token)
                .timeout(timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!("{status}: {}", response.text().await.unwrap_or_default()));
    }
    response.json::<T>().await.map_err(|e| e.to_string())
}

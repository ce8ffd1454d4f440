//! Artifacts from the master, by sha256, verified before they are compiled.
//!
//! The agent asks the master for the bytes of an artifact by its content address and checks
//! that they hash to it: a master (or anything between) that sends other bytes is refused.
//! Compiled artifacts are kept by the host's [`ArtifactCache`] (in memory, and on disk when
//! the agent has a cache directory), so each sha256 is fetched and compiled once.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use squilla_host::{Artifact, ArtifactCache};

/// Fetches and compiles artifacts.
#[derive(Clone)]
pub struct Fetcher {
    pub(crate) master: String,
    pub(crate) token: String,
    pub(crate) client: reqwest::Client,
    pub(crate) cache: Arc<ArtifactCache>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Fetcher {
    /// The compiled artifact with content address `sha256` (call from a blocking thread).
    pub fn artifact(&self, sha256: &str) -> Result<Artifact, String> {
        if let Some(artifact) = squilla_host::Sha256::from_hex(sha256).and_then(|key| self.cache.get(&key)) {
            return Ok(artifact);
        }
        let url = format!("{}/api/v1/agent/artifacts/{sha256}", self.master.trim_end_matches('/'));
        let bytes = self.runtime.block_on(async {
            let response = self.client.get(&url).bearer_auth(&self.token).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("artifact {sha256}: the master answered {}", response.status()));
            }
            response.bytes().await.map_err(|e| e.to_string())
        })?;
        let actual = Sha256::digest(&bytes);
        let actual: String = actual.iter().map(|b| format!("{b:02x}")).collect();
        if actual != sha256 {
            return Err(format!("artifact {sha256}: the bytes received hash to {actual}; refused"));
        }
        self.cache.get_or_compile(&bytes).map_err(|e| format!("artifact {sha256}: {e}"))
    }
}

//! The agent's data-port certificate (see `squilla_net::ca`): the agent makes a key that never
//! leaves it, asks the master to certify it (`POST /api/v1/agent/certificate`, with the agent
//! token) before its first heartbeat, and asks again at two thirds of the certificate's
//! lifetime, so that it always holds a valid one while the master is reachable at least once
//! every eight hours. Connections already open keep the certificate they were made with.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use squilla_host::transport::DataTls;
use squilla_types::control::{CertificateAnswer, CertificateRequest};

use crate::config::AgentConfig;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait between attempts when the master does not answer.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Asks for a certificate for a new key and installs it; returns how long it is valid from
/// now.
async fn renew_once(config: &AgentConfig, client: &reqwest::Client, tls: &DataTls) -> Result<Duration, String> {
    let (key, csr) = squilla_net::ca::request(config.id.as_str()).map_err(|e| e.to_string())?;
    let request = CertificateRequest { agent: config.id.clone(), csr };
    let answer: CertificateAnswer =
        crate::master::post_json(client, config, "/api/v1/agent/certificate", TIMEOUT, &request).await?;
    tls.install(&answer.ca, &answer.certificate, &key).map_err(|e| e.to_string())?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    Ok(Duration::from_millis(answer.not_after_ms.saturating_sub(now_ms)))
}

/// Obtains a certificate, retrying (1 s doubling to 10 s) until the master gives one; returns
/// how long it is valid.
pub(crate) async fn obtain(config: &AgentConfig, client: &reqwest::Client, tls: &DataTls) -> Duration {
    let mut wait = Duration::from_secs(1);
    let mut warned = false;
    loop {
        match renew_once(config, client, tls).await {
            Ok(valid) => {
                tracing::info!(valid_s = valid.as_secs(), "data-port certificate installed");
                return valid;
            }
            Err(err) => {
                if !warned {
                    tracing::warn!(master = %config.master, error = %err, "cannot get a data-port certificate; retrying");
                    warned = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
        }
    }
}

/// The shortest wait between renewals (a clock far ahead of the master's sees certificates
/// already expired: it asks again this often, not in a loop).
const MIN_RENEWAL: Duration = Duration::from_secs(60);

/// Renews the certificate at two thirds of its lifetime, forever.
pub(crate) async fn renew(config: AgentConfig, client: reqwest::Client, tls: Arc<DataTls>, mut valid: Duration) {
    loop {
        tokio::time::sleep((valid * 2 / 3).max(MIN_RENEWAL)).await;
        valid = obtain(&config, &client, &tls).await;
    }
}

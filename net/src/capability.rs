//! Capabilities: short-lived, signed grants to read one job's sink or feed its ingest on the
//! agents that run it, so that a gateway — or a program that wants no hop at all — can talk to
//! agents directly while the master stays out of the data path.
//!
//! The master signs, agents verify, both with a key derived from the agent token they already
//! share ([`key_from_token`]); nobody else can make one. A capability names one job (as
//! `tenant.job`), the verbs it allows, and when it expires (Unix ms); it is presented as the
//! bearer token. Its text is `sqcap1.` + hex(payload) + `.` + hex(HMAC-SHA256(key, payload)),
//! where the payload is `job\nverbs\nexpires`. Anyone holding it may use it until it expires:
//! keep the lifetime short ([`DEFAULT_TTL_MS`]) and the transport private (docs/security.md).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How long a capability the master issues is valid, ms.
pub const DEFAULT_TTL_MS: i64 = 60_000;

/// The prefix that tells a capability from a token.
pub const PREFIX: &str = "sqcap1.";

/// What a capability allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Subscribe to the job's sink.
    Sink,
    /// Feed the job's ingest.
    Ingest,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Sink => "sink",
            Verb::Ingest => "ingest",
        }
    }
}

/// A grant: `verbs` on `job` until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// The job, as `tenant.job-id`.
    pub job: String,
    /// What it allows.
    pub verbs: Vec<Verb>,
    /// When it stops being valid, Unix ms.
    pub expires_ms: i64,
}

/// Why a capability is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not the text of a capability.
    #[error("not a capability")]
    Malformed,
    /// Not signed with the fleet's key (forged, or altered).
    #[error("the capability's signature is not valid")]
    Signature,
    /// Past its expiry.
    #[error("the capability expired")]
    Expired,
    /// For another job.
    #[error("the capability is for another job")]
    OtherJob,
    /// Not for this verb.
    #[error("the capability does not allow {0}")]
    Verb(&'static str),
}

/// The capability key of a fleet whose agents share `token`.
pub fn key_from_token(token: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"squilla capability v1\0");
    hash.update(token.trim().as_bytes());
    hash.finalize().into()
}

fn mac(key: &[u8; 32], payload: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(payload);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

impl Capability {
    /// The capability's text, signed with `key`.
    pub fn sign(&self, key: &[u8; 32]) -> String {
        let verbs: Vec<&str> = self.verbs.iter().map(|v| v.name()).collect();
        let payload = format!("{}\n{}\n{}", self.job, verbs.join(","), self.expires_ms);
        let tag = mac(key, payload.as_bytes()).finalize().into_bytes();
        format!("{PREFIX}{}.{}", hex(payload.as_bytes()), hex(&tag))
    }

    /// Checks `text` against `key` and the clock: the capability, if it is genuine and valid
    /// at `now_ms`.
    pub fn verify(text: &str, key: &[u8; 32], now_ms: i64) -> Result<Capability, Refused> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(Refused::Malformed)?;
        let (payload, tag) = body.split_once('.').ok_or(Refused::Malformed)?;
        let (payload, tag) = (unhex(payload).ok_or(Refused::Malformed)?, unhex(tag).ok_or(Refused::Malformed)?);
        // The signature first: nothing of an unsigned payload is believed.
        mac(key, &payload).verify_slice(&tag).map_err(|_| Refused::Signature)?;
        let payload = String::from_utf8(payload).map_err(|_| Refused::Malformed)?;
        let mut parts = payload.split('\n');
        let (Some(job), Some(verbs), Some(expires), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refused::Malformed);
        };
        let verbs = verbs
            .split(',')
            .filter(|v| !v.is_empty())
            .map(|v| match v {
                "sink" => Ok(Verb::Sink),
                "ingest" => Ok(Verb::Ingest),
                _ => Err(Refused::Malformed),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let expires_ms: i64 = expires.parse().map_err(|_| Refused::Malformed)?;
        if now_ms >= expires_ms {
            return Err(Refused::Expired);
        }
        Ok(Capability { job: job.to_owned(), verbs, expires_ms })
    }

    /// Whether this capability allows `verb` on `job`.
    pub fn allows(&self, job: &str, verb: Verb) -> Result<(), Refused> {
        if self.job != job {
            return Err(Refused::OtherJob);
        }
        if !self.verbs.contains(&verb) {
            return Err(Refused::Verb(verb.name()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Capability {
        Capability { job: "acme.errors-1".into(), verbs: vec![Verb::Sink], expires_ms: 10_000 }
    }

    #[test]
    fn a_signed_capability_verifies_until_it_expires() {
        let key = key_from_token("agent-token-0123456789");
        let text = cap().sign(&key);
        assert!(text.starts_with(PREFIX));
        let got = Capability::verify(&text, &key, 9_999).unwrap();
        assert_eq!(got, cap());
        assert_eq!(got.allows("acme.errors-1", Verb::Sink), Ok(()));
        assert_eq!(got.allows("acme.errors-2", Verb::Sink), Err(Refused::OtherJob));
        assert_eq!(got.allows("acme.errors-1", Verb::Ingest), Err(Refused::Verb("ingest")));
        assert_eq!(Capability::verify(&text, &key, 10_000), Err(Refused::Expired));
    }

    #[test]
    fn forged_altered_or_garbled_capabilities_are_refused() {
        let key = key_from_token("agent-token-0123456789");
        let other = key_from_token("guessed-token-000000");
        assert_eq!(Capability::verify(&cap().sign(&other), &key, 0), Err(Refused::Signature));
        // Another job, or a later expiry, in the payload of a genuine signature.
        let text = cap().sign(&key);
        let (payload, tag) = text.strip_prefix(PREFIX).unwrap().split_once('.').unwrap();
        let altered = hex(String::from_utf8(unhex(payload).unwrap()).unwrap().replace("10000", "99999").as_bytes());
        assert_eq!(Capability::verify(&format!("{PREFIX}{altered}.{tag}"), &key, 0), Err(Refused::Signature));
        for garbled in ["", "sqcap1.", "sqcap1.zz.zz", "sqcap1.abc", "Bearer x", "sqcap1.00.00"] {
            assert!(Capability::verify(garbled, &key, 0).is_err(), "{garbled}");
        }
    }
}

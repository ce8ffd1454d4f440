//! The names of things, each with one parsing and one text form.
//!
//! Every id that crosses a process boundary — a path segment of the API, a field of the
//! heartbeat protocol, a key of the store — is one of these newtypes. Each is made only by
//! [`FromStr`](std::str::FromStr) (or serde, which calls it), so a value in hand is valid, and
//! each has exactly one text form (`Display`), which is also its JSON form.
//!
//! | id | form |
//! | --- | --- |
//! | [`TenantId`] | 1 to 63 of `a-z`, `0-9`, `-` |
//! | [`ClusterName`], [`StageName`] | 1 to 63 of `a-z`, `0-9`, `-`, starting with a letter |
//! | [`JobId`] | `<cluster>-<n>`, `n` from 1 |
//! | [`JobKey`] | `<tenant>.<job>`: a job among every tenant's (neither part holds a `.`) |
//! | [`AgentId`] | 1 to 63 of `A-Z`, `a-z`, `0-9`, `-`, `_`, `.` |
//! | [`WorkerNumber`] | an incarnation of a worker slot, from 1 (0 only outside a master) |
//! | [`Sha256`] | 64 lowercase hex digits |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an id of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid {kind}: {rule}")]
pub struct IdError {
    /// What was expected (`tenant id`, `job id`…).
    pub kind: &'static str,
    /// The text given (cut at 100 characters).
    pub text: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl IdError {
    fn new(kind: &'static str, text: &str, rule: &'static str) -> Self {
        IdError { kind, text: text.chars().take(100).collect(), rule }
    }
}

/// Defines a string newtype with a validating `FromStr`, `Display`, serde as a string, and
/// `as_str`.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                let valid: fn(&str) -> bool = $valid;
                if valid(s) { Ok($name(s.to_owned())) } else { Err(IdError::new($kind, s, $rule)) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Whether `s` is 1 to 63 of `a-z`, `0-9`, `-`, starting with a letter.
pub fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= 63
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

string_id!(
    /// A tenant: the owner of artifacts, clusters and jobs.
    TenantId,
    "tenant id",
    "1 to 63 of a-z, 0-9 and '-'",
    |s| !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
);

string_id!(
    /// A job cluster's name.
    ClusterName,
    "cluster name",
    "1 to 63 of a-z, 0-9 and '-', starting with a letter",
    is_name
);

string_id!(
    /// A stage's name, unique within its job.
    StageName,
    "stage name",
    "1 to 63 of a-z, 0-9 and '-', starting with a letter",
    is_name
);

string_id!(
    /// An agent, unique among live agents (a restarted agent takes a new id).
    AgentId,
    "agent id",
    "1 to 63 of A-Z, a-z, 0-9, '-', '_' and '.'",
    |s| !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
);

impl AgentId {
    /// `agent-<a>-<b in hex>`, valid by construction (an agent's default id, from its process
    /// id and a random number).
    pub fn numbered(a: u32, b: u32) -> Self {
        AgentId(format!("agent-{a}-{b:x}"))
    }
}

/// A job: `<cluster>-<n>`, the `n`th job of its tenant's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId {
    text: String,
    split: usize,
}

impl JobId {
    /// The `n`th job of `cluster`.
    pub fn new(cluster: &ClusterName, n: u64) -> Self {
        let text = format!("{cluster}-{n}");
        JobId { split: cluster.as_str().len(), text }
    }

    /// The job's cluster.
    pub fn cluster(&self) -> ClusterName {
        ClusterName(self.text[..self.split].to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for JobId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::new("job id", s, "`<cluster>-<n>`, n from 1");
        let (cluster, n) = s.rsplit_once('-').ok_or_else(err)?;
        let n_ok = !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()) && n.len() <= 19;
        if !n_ok || !is_name(cluster) {
            return Err(err());
        }
        Ok(JobId { text: s.to_owned(), split: cluster.len() })
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A job among every tenant's: `<tenant>.<job>`. Agents, the transport and the store know
/// jobs by it; a tenant knows its own by [`JobId`] alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    /// The job's tenant.
    pub tenant: TenantId,
    /// The job.
    pub job: JobId,
}

impl JobKey {
    /// `tenant`'s job `job`.
    pub fn new(tenant: TenantId, job: JobId) -> Self {
        JobKey { tenant, job }
    }
}

impl FromStr for JobKey {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let (tenant, job) = s.split_once('.').ok_or_else(|| IdError::new("job key", s, "`<tenant>.<job>`"))?;
        Ok(JobKey { tenant: tenant.parse()?, job: job.parse()? })
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tenant, self.job)
    }
}

impl Serialize for JobKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An incarnation of a worker slot: new on every replacement, unique within its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerNumber(pub u64);

impl fmt::Display for WorkerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A component's sha256: an artifact's content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(bytes).into())
    }
}

impl FromStr for Sha256 {
    type Err = IdError;

    fn from_str(hex: &str) -> Result<Self, IdError> {
        let err = || IdError::new("sha256", hex, "64 lowercase hex digits");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_parsing_and_one_text_form() {
        let key: JobKey = "acme.device-errors-12".parse().unwrap();
        assert_eq!((key.tenant.as_str(), key.job.as_str()), ("acme", "device-errors-12"));
        assert_eq!(key.job.cluster().as_str(), "device-errors");
        assert_eq!(key.to_string(), "acme.device-errors-12");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"acme.device-errors-12\"");
        assert_eq!(serde_json::from_str::<JobKey>("\"acme.device-errors-12\"").unwrap(), key);
        assert_eq!(JobId::new(&"errors".parse().unwrap(), 3).as_str(), "errors-3");
        for bad in ["errors", "errors-0", "errors-01", "Errors-1", "-1", "errors-x", "errors-99999999999999999999"] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
        for bad in ["", "acme", "ac.me.errors-1", "acme.", ".errors-1", "ACME.errors-1"] {
            assert!(bad.parse::<JobKey>().is_err(), "{bad}");
        }
        assert!("a-1".parse::<TenantId>().is_ok() && "1a".parse::<TenantId>().is_ok());
        assert!("1a".parse::<ClusterName>().is_err() && "a".repeat(64).parse::<ClusterName>().is_err());
        assert!("Agent_1.eu".parse::<AgentId>().is_ok() && "agent 1".parse::<AgentId>().is_err());
        let sha = Sha256::of(b"abc");
        assert_eq!(sha.to_string().parse::<Sha256>().unwrap(), sha);
        assert!(sha.to_string().to_uppercase().parse::<Sha256>().is_err());
        let err = "x y".parse::<TenantId>().unwrap_err();
        assert_eq!(err.to_string(), "`x y` is not a valid tenant id: 1 to 63 of a-z, 0-9 and '-'");
    }
}

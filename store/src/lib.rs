//! The master's state — tenants' artifacts, job clusters and jobs — over a key-value store:
//! an embedded redb file on one machine ([`redb::Redb`], the default), or etcd for a fleet of
//! masters ([`etcd::Etcd`], with [`etcd::election`] choosing the one that writes).
//!
//! Every write is durable in the store before the API answers, so an acknowledged upload
//! survives a crash. One [`Store`] serializes its writes: each read-check-write operation
//! (a quota, a tag, a version number) runs under one lock, and only one master writes (the
//! only one, or the leader, whose every etcd write is conditioned on its leadership).
//!
//! Keys put the tenant first, so that one tenant's objects are a contiguous range and
//! another tenant's are never visible by mistake:
//! - `artifacts/tenant/sha256` → [`ArtifactMeta`] as JSON; the bytes are a blob under the
//!   sha256, shared when two tenants upload the same bytes and removed with the last
//!   tenant's artifact;
//! - `tags/tenant/name@version` → the sha256 it names;
//! - `clusters/tenant/name/version` (version zero-padded, so versions sort) →
//!   [`ClusterVersion`] as JSON;
//! - `jobs/tenant.job-id` (a `JobKey`) → the job as JSON (the control layer reads and
//!   writes it; the store only keeps it);
//! - `job-seq/tenant/cluster` → the last job number given out for that cluster, in decimal;
//! - `fleet/ca` → the fleet CA's certificate and key (PEM, JSON), when masters share a store
//!   (one machine keeps its CA in files instead).

pub mod etcd;
pub mod kv;
pub mod redb;

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use squilla_types::ids::{ClusterName, JobKey, Sha256, TenantId};

pub use kv::{Kv, Op, StoreError};

/// A version of a job cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterVersion {
    /// The cluster's name.
    pub name: ClusterName,
    /// Its version, counting from 1.
    pub version: u32,
    /// The spec of this version.
    pub spec: squilla_types::JobSpec,
    /// The artifacts its stages use, by sha256 (resolved when the version was created).
    pub artifacts: Vec<Sha256>,
    /// When this version was created, ms since the Unix epoch.
    pub created_at_ms: i64,
}

/// An artifact as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactMeta {
    /// Content address: hex sha256 of the component.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// `raw` or `typed`.
    pub flavour: String,
    /// Tag name, if tagged.
    pub name: Option<String>,
    /// Tag version, if tagged.
    pub version: Option<String>,
    /// When it was first uploaded, ms since the Unix epoch.
    pub created_at_ms: i64,
}

/// What `put_artifact` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Storing it would take the tenant past its artifact quota; nothing was stored.
    OverQuota {
        /// Bytes the tenant would hold.
        would_hold: u64,
        /// Its quota.
        quota: u64,
    },
    /// A new artifact for this tenant.
    Created(ArtifactMeta),
    /// The tenant had it already (same bytes); nothing changed except a new tag, if given.
    Existing(ArtifactMeta),
    /// The tag names another artifact of this tenant.
    TagTaken {
        /// The artifact the tag names.
        sha256: String,
    },
}

/// What `delete_artifact` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delete {
    /// Deleted.
    Deleted,
    /// The tenant has no such artifact.
    Missing,
    /// A cluster version uses it.
    InUse {
        /// The cluster.
        cluster: ClusterName,
        /// Its version.
        version: u32,
    },
}

/// A job as the store keeps it: its key, its JSON.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// The job's key (also its key in the store).
    pub key: JobKey,
    /// The job, as JSON.
    pub json: Vec<u8>,
}

/// A stage's artifact reference that names none of the tenant's artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownArtifact {
    /// The stage's index.
    pub stage: usize,
    /// The reference, as written.
    pub reference: String,
}

/// The master's state over a [`Kv`].
pub struct Store {
    kv: Box<dyn Kv>,
    /// Held across every read-check-write operation (see the crate's documentation).
    writer: Mutex<()>,
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::decode)
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(&key, e))
}

impl Store {
    /// The store over `kv`.
    pub fn new(kv: impl Kv) -> Self {
        Store { kv: Box::new(kv), writer: Mutex::new(()) }
    }

    /// Opens (or creates) the embedded store file at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Store::new(redb::Redb::open(path)?))
    }

    /// The backend's name (`redb`, `etcd`).
    pub fn kind(&self) -> &'static str {
        self.kv.kind()
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every JSON value under `prefix`, in key order.
    fn values<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.kv.scan(prefix)?.iter().map(|(k, v)| parse(k, v)).collect()
    }

    /// Stores an artifact for `tenant` (idempotent by content), tagging it if asked, unless
    /// its tag names another artifact or a new artifact would take the tenant's artifacts
    /// past `quota` bytes. The checks and the write are made under the writer lock:
    /// concurrent uploads cannot pass the quota together, nor take one tag twice. The bytes
    /// are stored first; the artifact exists once its record is written after them.
    pub fn put_artifact(
        &self,
        tenant: &TenantId,
        meta: ArtifactMeta,
        bytes: &[u8],
        quota: u64,
    ) -> Result<Put, StoreError> {
        let sha = meta.sha256.to_string();
        let _writer = self.writer();
        let tag = meta.name.as_ref().zip(meta.version.as_ref()).map(|(n, v)| format!("tags/{tenant}/{n}@{v}"));
        if let Some(tag) = &tag
            && let Some(existing) = self.kv.get(tag)?
            && existing != sha.as_bytes()
        {
            return Ok(Put::TagTaken { sha256: String::from_utf8_lossy(&existing).into_owned() });
        }
        let artifact_key = format!("artifacts/{tenant}/{sha}");
        let mut ops = Vec::new();
        let result = match self.kv.get(&artifact_key)? {
            Some(json_bytes) => {
                let mut existing: ArtifactMeta = parse(&artifact_key, &json_bytes)?;
                if existing.name.is_none() && meta.name.is_some() {
                    existing.name = meta.name.clone();
                    existing.version = meta.version.clone();
                    ops.push(Op::Put(artifact_key, json(&existing)?));
                }
                Put::Existing(existing)
            }
            None => {
                let used: u64 = self.artifacts(tenant)?.iter().map(|a| a.size).sum();
                if used + meta.size > quota {
                    return Ok(Put::OverQuota { would_hold: used + meta.size, quota });
                }
                if !self.kv.has_blob(&sha)? {
                    self.kv.put_blob(&sha, bytes)?;
                }
                ops.push(Op::Put(artifact_key, json(&meta)?));
                Put::Created(meta.clone())
            }
        };
        if let Some(tag) = tag {
            ops.push(Op::Put(tag, sha.into_bytes()));
        }
        self.kv.apply(ops)?;
        Ok(result)
    }

    /// `tenant`'s artifacts, by sha256.
    pub fn artifacts(&self, tenant: &TenantId) -> Result<Vec<ArtifactMeta>, StoreError> {
        self.values(&format!("artifacts/{tenant}/"))
    }

    /// One of `tenant`'s artifacts.
    pub fn artifact(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Option<ArtifactMeta>, StoreError> {
        let key = format!("artifacts/{tenant}/{sha256}");
        self.kv.get(&key)?.map(|v| parse(&key, &v)).transpose()
    }

    /// The bytes of one of `tenant`'s artifacts.
    pub fn artifact_bytes(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        if self.artifact(tenant, sha256)?.is_none() {
            return Ok(None);
        }
        self.blob(sha256)
    }

    /// Deletes one of `tenant`'s artifacts and its tags; the bytes go with the last tenant
    /// holding them. Refused (with the cluster's name) while a cluster version uses it. The
    /// check and the delete are made under the writer lock, as is cluster creation's
    /// resolution of artifacts, so a cluster version can never point at a deleted artifact.
    pub fn delete_artifact(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Delete, StoreError> {
        let sha = sha256.to_string();
        let _writer = self.writer();
        for c in self.clusters(tenant)? {
            if c.artifacts.contains(sha256) {
                return Ok(Delete::InUse { cluster: c.name, version: c.version });
            }
        }
        let artifact_key = format!("artifacts/{tenant}/{sha}");
        if self.kv.get(&artifact_key)?.is_none() {
            return Ok(Delete::Missing);
        }
        let mut ops = vec![Op::Delete(artifact_key.clone())];
        for (tag, named) in self.kv.scan(&format!("tags/{tenant}/"))? {
            if named == sha.as_bytes() {
                ops.push(Op::Delete(tag));
            }
        }
        self.kv.apply(ops)?;
        let suffix = format!("/{sha}");
        let still_used = self.kv.scan("artifacts/")?.iter().any(|(k, _)| k.ends_with(&suffix));
        if !still_used {
            self.kv.delete_blob(&sha)?;
        }
        Ok(Delete::Deleted)
    }

    /// The sha256 that `tenant`'s tag `name@version` names, if any.
    pub fn tag(&self, tenant: &TenantId, name: &str, version: &str) -> Result<Option<Sha256>, StoreError> {
        let sha = self.kv.get(&format!("tags/{tenant}/{name}@{version}"))?;
        sha.map(|v| String::from_utf8_lossy(&v).parse().map_err(StoreError::decode)).transpose()
    }

    /// Adds a new version of `tenant`'s cluster `spec.name`, numbered after the latest, with
    /// each stage's artifact resolved (by tag or sha256) among the tenant's artifacts under
    /// the writer lock: an artifact deleted concurrently is either resolved before its
    /// deletion (which then refuses, the artifact being in use) or not found.
    pub fn put_cluster(
        &self,
        tenant: &TenantId,
        spec: squilla_types::JobSpec,
        created_at_ms: i64,
    ) -> Result<Result<ClusterVersion, UnknownArtifact>, StoreError> {
        let name: ClusterName = spec.name.parse().map_err(StoreError::decode)?;
        let _writer = self.writer();
        let mut artifacts = Vec::with_capacity(spec.stages.len());
        for (stage, s) in spec.stages.iter().enumerate() {
            let sha = match &s.artifact {
                squilla_types::ArtifactRef::Tag { name, version } => self
                    .kv
                    .get(&format!("tags/{tenant}/{name}@{version}"))?
                    .map(|v| String::from_utf8_lossy(&v).into_owned()),
                squilla_types::ArtifactRef::Sha256(sha) => {
                    self.kv.get(&format!("artifacts/{tenant}/{sha}"))?.map(|_| sha.clone())
                }
            };
            match sha.and_then(|sha| sha.parse::<Sha256>().ok()) {
                Some(sha) => artifacts.push(sha),
                None => return Ok(Err(UnknownArtifact { stage, reference: s.artifact.to_string() })),
            }
        }
        let prefix = format!("clusters/{tenant}/{name}/");
        let latest = self.kv.scan(&prefix)?.len() as u32;
        let cluster = ClusterVersion { name, version: latest + 1, spec, artifacts, created_at_ms };
        self.kv.apply(vec![Op::Put(format!("{prefix}{:010}", cluster.version), json(&cluster)?)])?;
        Ok(Ok(cluster))
    }

    /// Every version of `tenant`'s clusters, by name then version.
    pub fn clusters(&self, tenant: &TenantId) -> Result<Vec<ClusterVersion>, StoreError> {
        self.values(&format!("clusters/{tenant}/"))
    }

    /// Total bytes of `tenant`'s artifacts (for the quota).
    pub fn artifact_bytes_used(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        Ok(self.artifacts(tenant)?.iter().map(|a| a.size).sum())
    }

    /// The next job number of `tenant`'s cluster `cluster` (1, 2, …; never reused).
    pub fn next_job_number(&self, tenant: &TenantId, cluster: &ClusterName) -> Result<u64, StoreError> {
        let key = format!("job-seq/{tenant}/{cluster}");
        let _writer = self.writer();
        let last = match self.kv.get(&key)? {
            Some(v) => String::from_utf8_lossy(&v).parse::<u64>().map_err(|e| StoreError::corrupt(&key, e))?,
            None => 0,
        };
        let n = last + 1;
        self.kv.apply(vec![Op::Put(key, n.to_string().into_bytes())])?;
        Ok(n)
    }

    /// Writes jobs (new or changed, already serialized) durably; nothing for none. Each
    /// job's record is written whole; many jobs are written in as few writes as the
    /// backend's limits allow ([`kv::MAX_OPS`], [`kv::MAX_APPLY_BYTES`]).
    pub fn put_job_records(&self, records: &[JobRecord]) -> Result<(), StoreError> {
        let _writer = self.writer();
        let mut ops = Vec::new();
        let mut bytes = 0;
        for record in records {
            if !ops.is_empty() && (ops.len() == kv::MAX_OPS || bytes + record.json.len() > kv::MAX_APPLY_BYTES) {
                self.kv.apply(std::mem::take(&mut ops))?;
                bytes = 0;
            }
            bytes += record.json.len();
            ops.push(Op::Put(format!("jobs/{}", record.key), record.json.clone()));
        }
        self.kv.apply(ops)
    }

    /// Every job of every tenant, as stored (JSON), by key.
    pub fn all_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for (k, json) in self.kv.scan("jobs/")? {
            let key = k["jobs/".len()..].parse().map_err(|e| StoreError::corrupt(&k, e))?;
            out.push(JobRecord { key, json });
        }
        Ok(out)
    }

    /// The latest version of every tenant's clusters, as `(tenant, cluster)`.
    pub fn all_latest_clusters(&self) -> Result<Vec<(TenantId, ClusterVersion)>, StoreError> {
        let mut out: Vec<(TenantId, ClusterVersion)> = Vec::new();
        for (k, v) in self.kv.scan("clusters/")? {
            let tenant: TenantId =
                k.split('/').nth(1).unwrap_or_default().parse().map_err(|e| StoreError::corrupt(&k, e))?;
            let cluster: ClusterVersion = parse(&k, &v)?;
            match out.last_mut() {
                Some((t, last)) if *t == tenant && last.name == cluster.name => *last = cluster,
                _ => out.push((tenant, cluster)),
            }
        }
        Ok(out)
    }

    /// The fleet CA's certificate and key (PEM), if one was stored.
    pub fn fleet_ca(&self) -> Result<Option<(String, String)>, StoreError> {
        self.kv.get("fleet/ca")?.map(|v| parse("fleet/ca", &v)).transpose()
    }

    /// The fleet CA: the one stored, or `make`'s, stored for every master after this one.
    pub fn fleet_ca_or(&self, make: impl FnOnce() -> (String, String)) -> Result<(String, String), StoreError> {
        let _writer = self.writer();
        if let Some(ca) = self.fleet_ca()? {
            return Ok(ca);
        }
        let ca = make();
        self.kv.apply(vec![Op::Put("fleet/ca".into(), json(&ca)?)])?;
        Ok(ca)
    }

    /// The bytes stored under `sha256`, whoever uploaded them (for agents).
    pub fn blob(&self, sha256: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.blob(&sha256.to_string())
    }
}

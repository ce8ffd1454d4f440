//! The master's state in an embedded store: one redb file under the data directory.
//!
//! Every write is one transaction committed durably (fsync) before the API answers, so an
//! acknowledged upload survives a crash. Keys put the tenant first, so that one tenant's
//! objects are a contiguous range and another tenant's are never visible by mistake.
//!
//! Tables:
//! - `artifacts`: `tenant/sha256` → [`ArtifactMeta`] as JSON;
//! - `blobs`: `sha256` → component bytes (shared when two tenants upload the same bytes;
//!   removed with the last tenant's artifact);
//! - `tags`: `tenant/name@version` → `sha256`;
//! - `clusters`: `tenant/name/version` (version zero-padded, so versions sort) →
//!   [`ClusterVersion`] as JSON;
//! - `jobs`: `tenant.job-id` (a `JobKey`) → the job as JSON (workers, states, history; the
//!   control layer reads and writes it, the store only keeps it);
//! - `job-seq`: `tenant/cluster` → the last job number given out for that cluster.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use squilla_types::ids::{ClusterName, JobKey, Sha256, TenantId};

const ARTIFACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("artifacts");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const JOB_SEQ: TableDefinition<&str, u64> = TableDefinition::new("job-seq");

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

/// A store failure; the API answers 500 and logs it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, a full disk, a lock).
    #[error("store: {0}")]
    Database(#[from] redb::Error),
    /// What the store holds is not what it should be (a record that does not decode).
    #[error("store: a record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// What the store holds under `key` is not what it should be.
    pub fn corrupt(key: &impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(format!("`{key}`: {err}"))
    }

    fn decode(err: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(err.to_string())
    }
}

macro_rules! database_errors {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                StoreError::Database(err.into())
            }
        }
    )*};
}

database_errors!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

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

/// The embedded store.
pub struct Store {
    db: Database,
}

fn key(tenant: &str, rest: &str) -> String {
    format!("{tenant}/{rest}")
}

impl Store {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ARTIFACTS)?;
        txn.open_table(BLOBS)?;
        txn.open_table(TAGS)?;
        txn.open_table(CLUSTERS)?;
        txn.open_table(JOB_SEQ)?;
        {
            // Jobs were once keyed `tenant/job`; they are keyed by their `JobKey` now.
            let mut jobs = txn.open_table(JOBS)?;
            let old: Vec<(String, Vec<u8>)> = jobs
                .iter()?
                .filter_map(Result::ok)
                .filter(|(k, _)| k.value().contains('/'))
                .map(|(k, v)| (k.value().to_owned(), v.value().to_vec()))
                .collect();
            for (old_key, json) in old {
                // `tenant/job` → `tenant.job` (neither part holds either character).
                let new_key = old_key.replacen('/', ".", 1);
                if jobs.get(new_key.as_str())?.is_none() {
                    jobs.insert(new_key.as_str(), json.as_slice())?;
                }
                jobs.remove(old_key.as_str())?;
            }
        }
        txn.commit()?;
        Ok(Store { db })
    }

    /// Stores an artifact for `tenant` (idempotent by content), tagging it if asked, unless
    /// its tag names another artifact or a new artifact would take the tenant's artifacts
    /// past `quota` bytes. Checks and write are one transaction: concurrent uploads cannot
    /// pass the quota together, nor take one tag twice.
    pub fn put_artifact(
        &self,
        tenant: &TenantId,
        meta: ArtifactMeta,
        bytes: &[u8],
        quota: u64,
    ) -> Result<Put, StoreError> {
        let tenant = tenant.as_str();
        let sha = meta.sha256.to_string();
        let txn = self.db.begin_write()?;
        let result = {
            let mut artifacts = txn.open_table(ARTIFACTS)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let mut tags = txn.open_table(TAGS)?;
            let tag = meta.name.as_ref().zip(meta.version.as_ref()).map(|(n, v)| key(tenant, &format!("{n}@{v}")));
            if let Some(tag) = &tag
                && let Some(existing) = tags.get(tag.as_str())?
                && existing.value() != sha
            {
                return Ok(Put::TagTaken { sha256: existing.value().to_owned() });
            }
            let artifact_key = key(tenant, &sha);
            let previous = artifacts.get(artifact_key.as_str())?.map(|v| v.value().to_vec());
            if previous.is_none() {
                let prefix = key(tenant, "");
                let mut used = 0u64;
                for entry in artifacts.range(prefix.as_str()..)? {
                    let (k, v) = entry?;
                    if !k.value().starts_with(&prefix) {
                        break;
                    }
                    let held: ArtifactMeta = serde_json::from_slice(v.value()).map_err(StoreError::decode)?;
                    used += held.size;
                }
                if used + meta.size > quota {
                    return Ok(Put::OverQuota { would_hold: used + meta.size, quota });
                }
            }
            let result = match previous {
                Some(json) => {
                    let mut existing: ArtifactMeta = serde_json::from_slice(&json).map_err(StoreError::decode)?;
                    if existing.name.is_none() && meta.name.is_some() {
                        existing.name = meta.name.clone();
                        existing.version = meta.version.clone();
                        let json = serde_json::to_vec(&existing).map_err(StoreError::decode)?;
                        artifacts.insert(artifact_key.as_str(), json.as_slice())?;
                    }
                    Put::Existing(existing)
                }
                None => {
                    if blobs.get(sha.as_str())?.is_none() {
                        blobs.insert(sha.as_str(), bytes)?;
                    }
                    let json = serde_json::to_vec(&meta).map_err(StoreError::decode)?;
                    artifacts.insert(artifact_key.as_str(), json.as_slice())?;
                    Put::Created(meta.clone())
                }
            };
            if let Some(tag) = &tag {
                tags.insert(tag.as_str(), sha.as_str())?;
            }
            result
        };
        txn.commit()?;
        Ok(result)
    }

    /// Every JSON value of `table` whose key starts with `tenant/`, in key order.
    fn tenant_values<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        tenant: &str,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let prefix = key(tenant, "");
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(StoreError::decode)?);
        }
        Ok(out)
    }

    /// `tenant`'s artifacts, by sha256.
    pub fn artifacts(&self, tenant: &TenantId) -> Result<Vec<ArtifactMeta>, StoreError> {
        self.tenant_values(ARTIFACTS, tenant.as_str())
    }

    /// One of `tenant`'s artifacts.
    pub fn artifact(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Option<ArtifactMeta>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ARTIFACTS)?;
        let value = table.get(key(tenant.as_str(), &sha256.to_string()).as_str())?;
        value.map(|v| serde_json::from_slice(v.value()).map_err(StoreError::decode)).transpose()
    }

    /// The bytes of one of `tenant`'s artifacts.
    pub fn artifact_bytes(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        if self.artifact(tenant, sha256)?.is_none() {
            return Ok(None);
        }
        self.blob(sha256)
    }

    /// Deletes one of `tenant`'s artifacts and its tags; the bytes go with the last tenant
    /// holding them. Refused (with the cluster's name) while a cluster version uses it.
    /// The check and the delete are one transaction with cluster creation's resolution of
    /// artifacts, so a cluster version can never point at a deleted artifact.
    pub fn delete_artifact(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Delete, StoreError> {
        let tenant = tenant.as_str();
        let sha = sha256.to_string();
        let sha256 = sha.as_str();
        let txn = self.db.begin_write()?;
        let existed = {
            let clusters = txn.open_table(CLUSTERS)?;
            let prefix = key(tenant, "");
            for entry in clusters.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let c: ClusterVersion = serde_json::from_slice(v.value()).map_err(StoreError::decode)?;
                if c.artifacts.iter().any(|a| a.to_string() == sha256) {
                    return Ok(Delete::InUse { cluster: c.name, version: c.version });
                }
            }
            drop(clusters);
            let mut artifacts = txn.open_table(ARTIFACTS)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let mut tags = txn.open_table(TAGS)?;
            let existed = artifacts.remove(key(tenant, sha256).as_str())?.is_some();
            if existed {
                let prefix = key(tenant, "");
                let stale: Vec<String> = tags
                    .range(prefix.as_str()..)?
                    .filter_map(Result::ok)
                    .take_while(|(k, _)| k.value().starts_with(&prefix))
                    .filter(|(_, v)| v.value() == sha256)
                    .map(|(k, _)| k.value().to_owned())
                    .collect();
                for tag in stale {
                    tags.remove(tag.as_str())?;
                }
                let suffix = format!("/{sha256}");
                let still_used = artifacts.iter()?.filter_map(Result::ok).any(|(k, _)| k.value().ends_with(&suffix));
                if !still_used {
                    blobs.remove(sha256)?;
                }
            }
            existed
        };
        txn.commit()?;
        Ok(if existed { Delete::Deleted } else { Delete::Missing })
    }

    /// The sha256 that `tenant`'s tag `name@version` names, if any.
    pub fn tag(&self, tenant: &TenantId, name: &str, version: &str) -> Result<Option<Sha256>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TAGS)?;
        let sha = table.get(key(tenant.as_str(), &format!("{name}@{version}")).as_str())?;
        sha.map(|v| v.value().parse().map_err(StoreError::decode)).transpose()
    }

    /// Adds a new version of `tenant`'s cluster `spec.name`, numbered after the latest, with
    /// each stage's artifact resolved (by tag or sha256) among the tenant's artifacts in the
    /// same transaction: an artifact deleted concurrently is either resolved before its
    /// deletion (which then refuses, the artifact being in use) or not found.
    pub fn put_cluster(
        &self,
        tenant: &TenantId,
        spec: squilla_types::JobSpec,
        created_at_ms: i64,
    ) -> Result<Result<ClusterVersion, UnknownArtifact>, StoreError> {
        let tenant = tenant.as_str();
        let name: ClusterName = spec.name.parse().map_err(StoreError::decode)?;
        let txn = self.db.begin_write()?;
        let mut artifacts = Vec::with_capacity(spec.stages.len());
        {
            let metas = txn.open_table(ARTIFACTS)?;
            let tags = txn.open_table(TAGS)?;
            for (stage, s) in spec.stages.iter().enumerate() {
                let sha = match &s.artifact {
                    squilla_types::ArtifactRef::Tag { name, version } => {
                        tags.get(key(tenant, &format!("{name}@{version}")).as_str())?.map(|v| v.value().to_owned())
                    }
                    squilla_types::ArtifactRef::Sha256(sha) => {
                        metas.get(key(tenant, sha).as_str())?.map(|_| sha.clone())
                    }
                };
                match sha.and_then(|sha| sha.parse::<Sha256>().ok()) {
                    Some(sha) => artifacts.push(sha),
                    None => return Ok(Err(UnknownArtifact { stage, reference: s.artifact.to_string() })),
                }
            }
        }
        let mut cluster = ClusterVersion { name, version: 0, spec, artifacts, created_at_ms };
        {
            let mut table = txn.open_table(CLUSTERS)?;
            let prefix = key(tenant, &format!("{}/", cluster.name));
            let latest = table
                .range(prefix.as_str()..)?
                .filter_map(Result::ok)
                .take_while(|(k, _)| k.value().starts_with(&prefix))
                .count() as u32;
            cluster.version = latest + 1;
            let json = serde_json::to_vec(&cluster).map_err(StoreError::decode)?;
            table.insert(format!("{prefix}{:010}", cluster.version).as_str(), json.as_slice())?;
        }
        txn.commit()?;
        Ok(Ok(cluster))
    }

    /// Every version of `tenant`'s clusters, by name then version.
    pub fn clusters(&self, tenant: &TenantId) -> Result<Vec<ClusterVersion>, StoreError> {
        self.tenant_values(CLUSTERS, tenant.as_str())
    }

    /// Total bytes of `tenant`'s artifacts (for the quota).
    pub fn artifact_bytes_used(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        Ok(self.artifacts(tenant)?.iter().map(|a| a.size).sum())
    }

    /// The next job number of `tenant`'s cluster `cluster` (1, 2, …; never reused).
    pub fn next_job_number(&self, tenant: &TenantId, cluster: &ClusterName) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut table = txn.open_table(JOB_SEQ)?;
            let k = key(tenant.as_str(), cluster.as_str());
            let n = table.get(k.as_str())?.map_or(0, |v| v.value()) + 1;
            table.insert(k.as_str(), n)?;
            n
        };
        txn.commit()?;
        Ok(n)
    }

    /// Writes jobs (new or changed, already serialized) in one durable transaction; nothing
    /// for none.
    pub fn put_job_records(&self, records: &[JobRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(JOBS)?;
            for record in records {
                table.insert(record.key.to_string().as_str(), record.json.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every job of every tenant, as stored (JSON), by key.
    pub fn all_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let key = k.value().parse().map_err(StoreError::decode)?;
            out.push(JobRecord { key, json: v.value().to_vec() });
        }
        Ok(out)
    }

    /// The latest version of every tenant's clusters, as `(tenant, cluster)`.
    pub fn all_latest_clusters(&self) -> Result<Vec<(TenantId, ClusterVersion)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLUSTERS)?;
        let mut out: Vec<(TenantId, ClusterVersion)> = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let tenant: TenantId =
                k.value().split('/').next().unwrap_or_default().parse().map_err(StoreError::decode)?;
            let cluster: ClusterVersion = serde_json::from_slice(v.value()).map_err(StoreError::decode)?;
            match out.last_mut() {
                Some((t, last)) if *t == tenant && last.name == cluster.name => *last = cluster,
                _ => out.push((tenant, cluster)),
            }
        }
        Ok(out)
    }

    /// The bytes stored under `sha256`, whoever uploaded them (for agents).
    pub fn blob(&self, sha256: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        Ok(table.get(sha256.to_string().as_str())?.map(|v| v.value().to_vec()))
    }
}

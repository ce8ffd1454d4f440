//! The key-value interface the master's state is written through, so that one machine keeps
//! it in an embedded file (redb) and a fleet keeps it in etcd, with the same operations above.
//!
//! Keys are UTF-8 paths (`artifacts/tenant/sha256`); values are bytes. Reads see every write
//! that was acknowledged before them. A write ([`Kv::apply`]) is atomic and durable before it
//! returns. There is no compare-and-swap: one process writes at a time (the only master, or
//! the elected leader, which serializes its writes — see [`crate::Store`]), and the etcd
//! backend conditions every write on that leadership, so a deposed leader's write is refused
//! rather than applied.
//!
//! Component bytes go through their own calls ([`Kv::put_blob`]): they are large (up to
//! 64 MiB by default), and etcd takes at most 1.5 MiB per request, so its backend cuts them
//! into chunks.

/// A store failure; the API answers 500 (or 503 `not_leader`) and logs it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed (I/O, a full disk, a lock).
    #[error("store: {0}")]
    Database(#[from] redb::Error),
    /// etcd could not be reached, or refused the request, at every endpoint.
    #[error("store: etcd: {0}")]
    Etcd(String),
    /// This master is not (or no longer) the leader: the write was not applied.
    #[error("store: this master is not the leader; the write was not applied")]
    NotLeader,
    /// What the store holds is not what it should be (a record that does not decode).
    #[error("store: a record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// What the store holds under `key` is not what it should be.
    pub fn corrupt(key: &impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(format!("`{key}`: {err}"))
    }

    pub(crate) fn decode(err: impl std::fmt::Display) -> Self {
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

/// One change of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to the value.
    Put(String, Vec<u8>),
    /// Removes `key` (nothing if absent).
    Delete(String),
}

/// Most changes in one [`Kv::apply`] (etcd's default `--max-txn-ops` is 128; one is the
/// leadership check). Callers with more split them where atomicity does not matter.
pub const MAX_OPS: usize = 100;

/// Most bytes of values in one [`Kv::apply`] (etcd refuses requests over 1.5 MiB by default).
pub const MAX_APPLY_BYTES: usize = 1 << 20;

/// Where the master's state lives.
pub trait Kv: Send + Sync + 'static {
    /// The value of `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key starting with `prefix`, with its value, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `ops` atomically and durably (at most [`MAX_OPS`] and [`MAX_APPLY_BYTES`]).
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Stores component bytes under their sha256 (hex), durably, before returning.
    fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Whether bytes are stored under `sha256` (without reading them).
    fn has_blob(&self, sha256: &str) -> Result<bool, StoreError>;
    /// The bytes stored under `sha256`.
    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes the bytes stored under `sha256`.
    fn delete_blob(&self, sha256: &str) -> Result<(), StoreError>;
    /// A short name of the backend, for logs and metrics (`redb`, `etcd`).
    fn kind(&self) -> &'static str;
}

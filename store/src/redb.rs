//! The embedded backend: one redb file, every write one transaction committed durably (fsync)
//! before it returns. The default for one machine (`squilla dev`, a single `squilla master`).
//!
//! Tables: `kv` (every key of [`crate::Store`]) and `blobs` (sha256 → component bytes).
//! Files written before `kv` existed kept each kind in a table of its own (`artifacts`,
//! `tags`, `clusters`, `jobs`, `job-seq`); [`Redb::open`] moves them into `kv` in one
//! transaction and drops the old tables.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::kv::{Kv, Op, StoreError};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");

/// The store in one redb file.
pub struct Redb {
    db: Database,
}

impl Redb {
    /// Opens (or creates) the file at `path`, moving records of an older layout into `kv`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(BLOBS)?;
        {
            let old: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
            let mut kv = txn.open_table(KV)?;
            for name in old {
                migrate(&txn, &mut kv, &name)?;
            }
        }
        txn.commit()?;
        Ok(Redb { db })
    }
}

/// Moves the old table `name` (if it is one) into `kv` and drops it.
fn migrate(txn: &redb::WriteTransaction, kv: &mut redb::Table<&str, &[u8]>, name: &str) -> Result<(), StoreError> {
    let mut moved: Vec<(String, Vec<u8>)> = Vec::new();
    match name {
        "artifacts" | "clusters" | "jobs" => {
            let table = txn.open_table(TableDefinition::<&str, &[u8]>::new(name))?;
            for entry in table.iter()? {
                let (k, v) = entry?;
                // Jobs were once keyed `tenant/job`; they are keyed by their `JobKey` now.
                let key = if name == "jobs" { k.value().replacen('/', ".", 1) } else { k.value().to_owned() };
                moved.push((format!("{name}/{key}"), v.value().to_vec()));
            }
        }
        "tags" => {
            let table = txn.open_table(TableDefinition::<&str, &str>::new(name))?;
            for entry in table.iter()? {
                let (k, v) = entry?;
                moved.push((format!("tags/{}", k.value()), v.value().as_bytes().to_vec()));
            }
        }
        "job-seq" => {
            let table = txn.open_table(TableDefinition::<&str, u64>::new(name))?;
            for entry in table.iter()? {
                let (k, v) = entry?;
                moved.push((format!("job-seq/{}", k.value()), v.value().to_string().into_bytes()));
            }
        }
        _ => return Ok(()),
    }
    for (key, value) in moved {
        kv.insert(key.as_str(), value.as_slice())?;
    }
    // redb deletes a table by name, whatever its types.
    txn.delete_table(TableDefinition::<&str, &[u8]>::new(name))?;
    Ok(())
}

impl Kv for Redb {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(KV)?;
            for op in &ops {
                match op {
                    Op::Put(key, value) => {
                        table.insert(key.as_str(), value.as_slice())?;
                    }
                    Op::Delete(key) => {
                        table.remove(key.as_str())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(BLOBS)?.insert(sha256, bytes)?;
        txn.commit()?;
        Ok(())
    }

    fn has_blob(&self, sha256: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(BLOBS)?.get(sha256)?.is_some())
    }

    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        Ok(table.get(sha256)?.map(|v| v.value().to_vec()))
    }

    fn delete_blob(&self, sha256: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(BLOBS)?.remove(sha256)?;
        txn.commit()?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redb"
    }
}

//! Replicated tables on sled.
//!
//! The store lives in `p2p` rather than in `node` because replication is a
//! property of the substrate: gossip and anti-entropy must enumerate tables,
//! digest their rows and apply rows received from other peers without knowing
//! what a deployment is. A [`Table`] therefore holds opaque keys and
//! CBOR-encoded rows, and every write goes through the row type's [`Merge`]
//! law, so a local write and a replicated one are the same operation and
//! converge to the same state on every peer, in any order.

use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use tracing::warn;

/// Largest encoded row the store accepts; bigger rows are refused, not truncated.
pub const MAX_ROW_BYTES: usize = 256 * 1024;

/// The join of two versions of the same row. Implementations must be
/// commutative, associative and idempotent: that is what lets every peer
/// apply the same updates in any order, any number of times, and agree.
pub trait Merge: Sized {
    fn merge(self, other: Self) -> Self;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] sled::Error),
    #[error("could not encode row: {0}")]
    Encode(String),
    #[error("corrupt row in table {table}: {detail}")]
    Decode { table: String, detail: String },
    #[error("row of {0} bytes exceeds the {MAX_ROW_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("could not move the unreadable database aside: {0}")]
    MoveAside(std::io::Error),
}

/// The peer's local database: one sled tree per table.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens the database in `dir`. If it cannot be opened (corruption, a
    /// format change), it is moved aside to `dir.broken-<n>` and a fresh one is
    /// created: the mesh resynchronises it from other peers.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        match sled::open(dir) {
            Ok(db) => Ok(Self { db }),
            Err(err) => {
                let aside = free_aside_path(dir);
                warn!(error = %err, path = %dir.display(), aside = %aside.display(),
                      "state database unreadable; moving it aside and starting empty");
                std::fs::rename(dir, &aside).map_err(StoreError::MoveAside)?;
                Ok(Self {
                    db: sled::open(dir)?,
                })
            }
        }
    }

    pub fn table<T>(&self, name: &str) -> Result<Table<T>, StoreError> {
        Ok(Table {
            name: name.to_owned(),
            tree: self.db.open_tree(name)?,
            _row: PhantomData,
        })
    }

    /// Makes every write so far durable, blocking the caller until it is.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn free_aside_path(dir: &Path) -> PathBuf {
    (1..)
        .map(|n| PathBuf::from(format!("{}.broken-{n}", dir.display())))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.with_extension("broken"))
}

/// A typed table whose rows merge by `T`'s [`Merge`] law.
pub struct Table<T> {
    name: String,
    tree: sled::Tree,
    _row: PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            tree: self.tree.clone(),
            _row: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned + Merge + Clone> Table<T> {
    fn encode(row: &T) -> Result<Vec<u8>, StoreError> {
        let bytes = cbor4ii::serde::to_vec(Vec::new(), row)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        if bytes.len() > MAX_ROW_BYTES {
            return Err(StoreError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, StoreError> {
        cbor4ii::serde::from_slice(bytes).map_err(|e| StoreError::Decode {
            table: self.name.clone(),
            detail: e.to_string(),
        })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.tree.get(key)?.map(|v| self.decode(&v)).transpose()
    }

    /// Merges `row` into whatever the table holds under `key` and returns the
    /// merged row and whether the stored row changed. Atomic per key.
    pub fn merge(&self, key: &[u8], row: T) -> Result<(T, bool), StoreError> {
        let incoming = Self::encode(&row)?;
        loop {
            let current = self.tree.get(key)?;
            let merged = match &current {
                Some(bytes) => self.decode(bytes)?.merge(row.clone()),
                None => row.clone(),
            };
            let encoded = if current.is_none() {
                incoming.clone()
            } else {
                Self::encode(&merged)?
            };
            if current.as_deref() == Some(encoded.as_slice()) {
                return Ok((merged, false));
            }
            match self.tree.compare_and_swap(key, current, Some(encoded))? {
                Ok(()) => return Ok((merged, true)),
                Err(_) => continue, // lost a race with another writer; merge again
            }
        }
    }

    /// Every row whose key starts with `prefix`, in key order. Rows that no
    /// longer decode are logged and skipped rather than failing the scan.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item?;
            match self.decode(&v) {
                Ok(row) => out.push((k.to_vec(), row)),
                Err(err) => warn!(error = %err, "skipping undecodable row"),
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Max(u64);
    impl Merge for Max {
        fn merge(self, other: Self) -> Self {
            Max(self.0.max(other.0))
        }
    }

    #[test]
    fn merge_keeps_the_join_and_reports_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let t: Table<Max> = store.table("t").unwrap();
        assert_eq!(t.merge(b"k", Max(3)).unwrap(), (Max(3), true));
        assert_eq!(t.merge(b"k", Max(1)).unwrap(), (Max(3), false));
        assert_eq!(t.merge(b"k", Max(9)).unwrap(), (Max(9), true));
        assert_eq!(t.get(b"k").unwrap(), Some(Max(9)));
        assert_eq!(t.scan_prefix(b"").unwrap().len(), 1);
    }

    #[test]
    fn unreadable_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::write(&db, b"not a directory").unwrap();
        let store = Store::open(&db).unwrap();
        let t: Table<Max> = store.table("t").unwrap();
        assert!(t.is_empty());
        assert!(dir.path().join("db.broken-1").exists());
    }
}

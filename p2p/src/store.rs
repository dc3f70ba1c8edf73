//! Replicated tables on sled.
//!
//! The store lives in `p2p` rather than in `node` because replication is a
//! property of the substrate: gossip and anti-entropy must enumerate tables,
//! digest their rows and apply rows received from other peers without knowing
//! what a deployment is. A [`Table`] therefore holds opaque keys and
//! CBOR-encoded rows, and every write, local or remote, goes through the row
//! type's [`Merge`] law, so they converge to the same state on every peer, in
//! any order. Every change is reported to the store's listeners (gossip push,
//! the node's live events).

use crate::digest::{bucket_of, row_hash, Hash, TableDigest};
use crate::locks::{LockExt, RwLockExt};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tracing::warn;

/// Largest encoded row the store accepts; bigger rows are refused, not
/// truncated. Small enough to travel in one gossip message.
pub const MAX_ROW_BYTES: usize = 48 * 1024;

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
    #[error("no replicated table named {0}")]
    NoSuchTable(String),
    #[error("could not move the unreadable database aside: {0}")]
    MoveAside(std::io::Error),
}

/// Where a write came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Written by this peer: to be pushed to the others.
    Local,
    /// Received from another peer.
    Remote,
}

/// A row that changed.
#[derive(Clone, Debug)]
pub struct Change {
    pub table: Arc<str>,
    pub key: Vec<u8>,
    pub old: Option<Vec<u8>>,
    pub new: Vec<u8>,
    pub origin: Origin,
}

/// Called for every change, synchronously: must not block.
pub type Listener = Arc<dyn Fn(&Change) + Send + Sync>;

/// A table as replication sees it: raw keys and encoded rows.
trait RawTable: Send + Sync {
    fn apply(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError>;
}

type Listeners = Arc<RwLock<Vec<Listener>>>;

/// A registered table: its tree, its merge (type-erased) and its digest.
#[derive(Clone)]
struct Entry {
    tree: sled::Tree,
    raw: Arc<dyn RawTable>,
    digest: Arc<Mutex<TableDigest>>,
}

/// What every handle of one store shares. Tables hold only the listeners,
/// never this, so there is no reference cycle keeping the database open.
#[derive(Default)]
struct Shared {
    listeners: Listeners,
    tables: RwLock<HashMap<String, Entry>>,
}

/// The peer's local database: one sled tree per table.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    shared: Arc<Shared>,
}

impl Store {
    /// Opens the database in `dir`. If it cannot be opened (corruption, a
    /// format change), it is moved aside to `dir.broken-<n>` and a fresh one is
    /// created: the mesh resynchronises it from other peers.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = match sled::open(dir) {
            Ok(db) => db,
            Err(err) => {
                let aside = free_aside_path(dir);
                warn!(error = %err, path = %dir.display(), aside = %aside.display(),
                      "state database unreadable; moving it aside and starting empty");
                std::fs::rename(dir, &aside).map_err(StoreError::MoveAside)?;
                sled::open(dir)?
            }
        };
        Ok(Self {
            db,
            shared: Arc::default(),
        })
    }

    /// Opens (or creates) the replicated table `name` with rows of type `T`.
    pub fn table<T>(&self, name: &str) -> Result<Table<T>, StoreError>
    where
        T: Serialize + DeserializeOwned + Merge + Clone + Send + Sync + 'static,
    {
        let tree = self.db.open_tree(name)?;
        let mut digest = TableDigest::default();
        for item in tree.iter() {
            let (k, v) = item?;
            digest.update(&k, None, Some(&v));
        }
        let table = Table {
            name: name.into(),
            tree: tree.clone(),
            digest: Arc::new(Mutex::new(digest)),
            listeners: self.shared.listeners.clone(),
            _row: PhantomData,
        };
        self.shared.tables.write_unpoisoned().insert(
            name.to_owned(),
            Entry {
                tree,
                raw: Arc::new(table.clone()),
                digest: table.digest.clone(),
            },
        );
        Ok(table)
    }

    /// Registers a listener for every change to every table.
    pub fn listen(&self, listener: Listener) {
        self.shared.listeners.write_unpoisoned().push(listener);
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

    /// Names of the replicated tables, sorted.
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .shared
            .tables
            .read_unpoisoned()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    fn entry(&self, table: &str) -> Result<Entry, StoreError> {
        self.shared
            .tables
            .read_unpoisoned()
            .get(table)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchTable(table.to_owned()))
    }

    /// Merges a row received from another peer. Returns whether it changed anything.
    pub fn apply_remote(&self, table: &str, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        if value.len() > MAX_ROW_BYTES {
            return Err(StoreError::TooLarge(value.len()));
        }
        self.entry(table)?.raw.apply(key, value)
    }

    pub fn digest(&self, table: &str) -> Result<TableDigest, StoreError> {
        Ok(self.entry(table)?.digest.lock_unpoisoned().clone())
    }

    /// `(key, row hash)` of the rows in `buckets`, in key order, starting
    /// after `after`, at most `limit` of them.
    pub fn hashes_in(
        &self,
        table: &str,
        buckets: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Hash)>, StoreError> {
        let tree = self.entry(table)?.tree;
        let mut wanted = [false; 256];
        for b in buckets {
            wanted[usize::from(*b)] = true;
        }
        let range = match after {
            Some(a) => {
                tree.range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => tree.iter(),
        };
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item?;
            if wanted[usize::from(bucket_of(&k))] {
                out.push((k.to_vec(), row_hash(&k, &v)));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The encoded row under `key`.
    pub fn raw(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entry(table)?.tree.get(key)?.map(|v| v.to_vec()))
    }
}

fn free_aside_path(dir: &Path) -> PathBuf {
    (1..)
        .map(|n| PathBuf::from(format!("{}.broken-{n}", dir.display())))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.with_extension("broken"))
}

/// A typed, replicated table whose rows merge by `T`'s [`Merge`] law.
pub struct Table<T> {
    name: Arc<str>,
    tree: sled::Tree,
    digest: Arc<Mutex<TableDigest>>,
    listeners: Listeners,
    _row: PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            tree: self.tree.clone(),
            digest: self.digest.clone(),
            listeners: self.listeners.clone(),
            _row: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned + Merge + Clone + Send + Sync + 'static> RawTable
    for Table<T>
{
    fn apply(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let row = self.decode(value)?;
        self.merge_from(key, row, Origin::Remote)
            .map(|(_, changed)| changed)
    }
}

impl<T: Serialize + DeserializeOwned + Merge + Clone + Send + Sync + 'static> Table<T> {
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
            table: self.name.to_string(),
            detail: e.to_string(),
        })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.tree.get(key)?.map(|v| self.decode(&v)).transpose()
    }

    /// Merges a local write into whatever the table holds under `key` and
    /// returns the merged row and whether the stored row changed.
    pub fn merge(&self, key: &[u8], row: T) -> Result<(T, bool), StoreError> {
        self.merge_from(key, row, Origin::Local)
    }

    fn merge_from(&self, key: &[u8], row: T, origin: Origin) -> Result<(T, bool), StoreError> {
        loop {
            let current = self.tree.get(key)?;
            let merged = match &current {
                Some(bytes) => self.decode(bytes)?.merge(row.clone()),
                None => row.clone(),
            };
            let encoded = Self::encode(&merged)?;
            if current.as_deref() == Some(encoded.as_slice()) {
                return Ok((merged, false));
            }
            if self
                .tree
                .compare_and_swap(key, current.clone(), Some(encoded.clone()))?
                .is_err()
            {
                continue; // lost a race with another writer; merge again
            }
            let old = current.map(|c| c.to_vec());
            self.digest
                .lock_unpoisoned()
                .update(key, old.as_deref(), Some(&encoded));
            let change = Change {
                table: self.name.clone(),
                key: key.to_vec(),
                old,
                new: encoded,
                origin,
            };
            for listener in self.listeners.read_unpoisoned().iter() {
                listener(&change);
            }
            return Ok((merged, true));
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

    /// Number of rows whose key starts with `prefix`.
    pub fn count_prefix(&self, prefix: &[u8]) -> usize {
        self.tree.scan_prefix(prefix).keys().count()
    }

    pub fn decode_value(&self, bytes: &[u8]) -> Result<T, StoreError> {
        self.decode(bytes)
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

    fn open() -> (tempfile::TempDir, Store, Table<Max>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let t = store.table("t").unwrap();
        (dir, store, t)
    }

    #[test]
    fn merge_keeps_the_join_and_reports_change() {
        let (_d, _s, t) = open();
        assert_eq!(t.merge(b"k", Max(3)).unwrap(), (Max(3), true));
        assert_eq!(t.merge(b"k", Max(1)).unwrap(), (Max(3), false));
        assert_eq!(t.merge(b"k", Max(9)).unwrap(), (Max(9), true));
        assert_eq!(t.get(b"k").unwrap(), Some(Max(9)));
        assert_eq!(t.scan_prefix(b"").unwrap().len(), 1);
    }

    #[test]
    fn remote_rows_merge_and_digests_follow() {
        let (_d1, a, ta) = open();
        let (_d2, b, tb) = open();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        b.listen(Arc::new(move |c: &Change| {
            log.lock().unwrap().push((c.key.clone(), c.origin))
        }));
        ta.merge(b"x", Max(5)).unwrap();
        ta.merge(b"y", Max(1)).unwrap();
        tb.merge(b"x", Max(2)).unwrap();
        assert_ne!(a.digest("t").unwrap().root(), b.digest("t").unwrap().root());
        for key in [&b"x"[..], b"y"] {
            let raw = a.raw("t", key).unwrap().unwrap();
            assert!(b.apply_remote("t", key, &raw).unwrap());
        }
        assert_eq!(tb.get(b"x").unwrap(), Some(Max(5)));
        assert_eq!(a.digest("t").unwrap(), b.digest("t").unwrap());
        assert_eq!(
            seen.lock().unwrap().last(),
            Some(&(b"y".to_vec(), Origin::Remote))
        );
        assert!(b.apply_remote("t", b"x", b"\xff not cbor").is_err());
        assert!(matches!(
            b.apply_remote("nope", b"x", b""),
            Err(StoreError::NoSuchTable(_))
        ));
        let all = b
            .hashes_in("t", &(0..=255).collect::<Vec<u8>>(), None, 10)
            .unwrap();
        assert_eq!(all.len(), 2);
        let rest = b
            .hashes_in("t", &(0..=255).collect::<Vec<u8>>(), Some(&all[0].0), 10)
            .unwrap();
        assert_eq!(rest, all[1..].to_vec());
    }

    #[test]
    fn digests_are_rebuilt_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = {
            let store = Store::open(&dir.path().join("db")).unwrap();
            let t: Table<Max> = store.table("t").unwrap();
            t.merge(b"a", Max(1)).unwrap();
            store.flush_now().unwrap();
            store.digest("t").unwrap().root()
        };
        let store = Store::open(&dir.path().join("db")).unwrap();
        let _t: Table<Max> = store.table("t").unwrap();
        assert_eq!(store.digest("t").unwrap().root(), root);
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

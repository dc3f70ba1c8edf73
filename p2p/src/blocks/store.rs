//! The block store on disk: blocks under `blocks/<2 hex>/<64 hex>`,
//! written to a temporary file and hard-linked into place, verified when
//! read for use; manifests under `manifests/`; import (cut a file into
//! blocks) and garbage collection of what no kept manifest uses.

use super::*;

/// Blocks and manifests in one directory, with a running count and size.
#[derive(Debug)]
pub struct BlockStore {
    root: PathBuf,
    count: AtomicU64,
    bytes: AtomicU64,
    /// Imports hold it shared: their blocks belong to no manifest yet, so
    /// block collection (which holds it exclusively) waits for none and
    /// skips its turn while any runs.
    imports: std::sync::RwLock<()>,
    /// Some blocks may be unused: a manifest went, an import failed (its
    /// blocks have no manifest), or the store just opened (a crash may have
    /// cut one short). Until then a collection leaves the blocks alone.
    sweep_due: AtomicBool,
}

/// Manifests no deployment names yet are not collected before this age:
/// the deployment that names one may not be recorded yet.
pub const MANIFEST_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(120);

impl BlockStore {
    /// Opens (creating) the store at `root` and counts what it holds.
    pub fn open(root: &Path) -> Result<Self, BlockError> {
        std::fs::create_dir_all(root.join("blocks"))?;
        std::fs::create_dir_all(root.join("manifests"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        // Leftovers of writes cut short by a crash.
        for entry in std::fs::read_dir(root.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        for dir in std::fs::read_dir(root.join("blocks"))?.flatten() {
            for block in std::fs::read_dir(dir.path())?.flatten() {
                if let Ok(meta) = block.metadata() {
                    count += 1;
                    bytes += meta.len();
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            count: AtomicU64::new(count),
            bytes: AtomicU64::new(bytes),
            imports: std::sync::RwLock::new(()),
            sweep_due: AtomicBool::new(true),
        })
    }

    /// Blocks held and their total size.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn block_path(&self, hash: &Hash) -> PathBuf {
        let hex = to_hex(hash);
        self.root.join("blocks").join(&hex[..2]).join(hex)
    }

    fn manifest_path(&self, id: &Hash) -> PathBuf {
        self.root.join("manifests").join(to_hex(id))
    }

    fn temp_path(&self) -> PathBuf {
        use rand::Rng;
        let n: u64 = rand::thread_rng().gen();
        self.root.join("tmp").join(format!("{n:016x}"))
    }

    pub fn has(&self, hash: &Hash) -> bool {
        self.block_path(hash).is_file()
    }

    /// Stores `data` as block `hash` after checking that it is. Returns
    /// whether the block is new here.
    pub fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, BlockError> {
        if &sha256(data) != hash {
            return Err(BlockError::Corrupt(to_hex(hash)));
        }
        self.put_verified(hash, data)
    }

    fn put_verified(&self, hash: &Hash, data: &[u8]) -> Result<bool, BlockError> {
        let path = self.block_path(hash);
        if path.is_file() {
            return Ok(false);
        }
        let tmp = self.temp_path();
        std::fs::write(&tmp, data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.count.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads block `hash` and checks it; a corrupt block is deleted, so that
    /// it is fetched again.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>, BlockError> {
        let data = self.read_raw(hash)?;
        if &sha256(&data) != hash {
            tracing::warn!(block = %to_hex(hash), "corrupt block on disk; deleting it");
            self.remove(hash);
            return Err(BlockError::Corrupt(to_hex(hash)));
        }
        Ok(data)
    }

    /// Reads block `hash` without checking it (for sending: the receiver
    /// checks every block anyway).
    pub fn read_raw(&self, hash: &Hash) -> Result<Vec<u8>, BlockError> {
        match std::fs::read(self.block_path(hash)) {
            Ok(d) => Ok(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlockError::Missing(to_hex(hash))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn remove(&self, hash: &Hash) {
        let path = self.block_path(hash);
        if let Ok(meta) = std::fs::metadata(&path) {
            if std::fs::remove_file(&path).is_ok() {
                self.count.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(meta.len(), Ordering::Relaxed);
            }
        }
    }

    /// Stores a manifest; returns its id.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<Hash, BlockError> {
        let bytes = manifest.encode();
        let id = sha256(&bytes);
        self.put_manifest_bytes(&id, &bytes)?;
        Ok(id)
    }

    /// Stores manifest bytes already checked to be `id`.
    pub fn put_manifest_bytes(&self, id: &Hash, bytes: &[u8]) -> Result<(), BlockError> {
        let path = self.manifest_path(id);
        if path.is_file() {
            return Ok(());
        }
        let tmp = self.temp_path();
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The encoded manifest `id`, checked.
    pub fn manifest_bytes(&self, id: &Hash) -> Result<Option<Vec<u8>>, BlockError> {
        match std::fs::read(self.manifest_path(id)) {
            Ok(bytes) if &sha256(&bytes) == id => Ok(Some(bytes)),
            Ok(_) => {
                if std::fs::remove_file(self.manifest_path(id)).is_ok() {
                    self.sweep_due.store(true, Ordering::Relaxed);
                }
                Err(BlockError::Corrupt(to_hex(id)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn manifest(&self, id: &Hash) -> Result<Option<Manifest>, BlockError> {
        match self.manifest_bytes(id)? {
            Some(bytes) => Manifest::decode(&bytes, id).map(Some),
            None => Ok(None),
        }
    }

    /// Every manifest held.
    pub fn manifests(&self) -> Vec<Hash> {
        let Ok(dir) = std::fs::read_dir(self.root.join("manifests")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| from_hex(e.file_name().to_str()?))
            .collect()
    }

    /// Whether every block of `manifest` is here.
    pub fn complete(&self, manifest: &Manifest) -> bool {
        (0..manifest.len()).all(|i| self.has(&manifest.hash(i)))
    }

    /// Cuts the file at `path` into blocks and stores them with their
    /// manifest, streaming. Returns the manifest and its id.
    pub fn import(&self, path: &Path) -> Result<(Hash, Manifest), BlockError> {
        let _importing = self.imports.read_unpoisoned();
        let imported = self.import_blocks(path);
        if imported.is_err() {
            self.sweep_due.store(true, Ordering::Relaxed);
        }
        imported
    }

    fn import_blocks(&self, path: &Path) -> Result<(Hash, Manifest), BlockError> {
        let chunks = fastcdc::v2020::StreamCDC::new(
            io::BufReader::with_capacity(1 << 20, File::open(path)?),
            MIN_CHUNK,
            AVG_CHUNK,
            MAX_CHUNK,
        );
        let mut whole = Sha256::new();
        let (mut hashes, mut sizes, mut size) = (Vec::new(), Vec::new(), 0u64);
        for chunk in chunks {
            let chunk = chunk.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => BlockError::Io(e),
                other => BlockError::Io(io::Error::other(other.to_string())),
            })?;
            whole.update(&chunk.data);
            let hash = sha256(&chunk.data);
            self.put_verified(&hash, &chunk.data)?;
            hashes.extend_from_slice(&hash);
            sizes.push(chunk.length as u32);
            size += chunk.length as u64;
            if sizes.len() > MAX_BLOCKS {
                return Err(BlockError::BadManifest("artifact too large".into()));
            }
        }
        let manifest = Manifest {
            v: MANIFEST_VERSION,
            size,
            sha256: ByteBuf::from(whole.finalize().to_vec()),
            hashes: ByteBuf::from(hashes),
            sizes,
        };
        let id = self.put_manifest(&manifest)?;
        Ok((id, manifest))
    }

    /// Reads the artifact back as one file, block by block, checking each.
    pub fn reader<'a>(&'a self, manifest: &'a Manifest) -> ArtifactReader<&'a Self, &'a Manifest> {
        ArtifactReader::new(self, manifest)
    }

    /// Checks the whole artifact: every block, and the file's sha256.
    pub fn verify(&self, manifest: &Manifest) -> Result<(), BlockError> {
        let mut hash = Sha256::new();
        for i in 0..manifest.len() {
            hash.update(self.get(&manifest.hash(i))?);
        }
        if hash.finalize().as_slice() != manifest.sha256.as_slice() {
            return Err(BlockError::BadManifest(
                "the assembled artifact does not match its sha256".into(),
            ));
        }
        Ok(())
    }

    /// Deletes every manifest not in `keep` (except, among those not in
    /// `known` either, manifests younger than `unknown_min_age`: whatever
    /// names one may not be recorded yet) and every block no remaining
    /// manifest uses. Blocks are looked over only when some may be unused
    /// (see `sweep_due`), and not while an import runs. Returns (blocks,
    /// bytes) removed.
    pub fn collect_garbage(
        &self,
        keep: &[Hash],
        known: &[Hash],
        unknown_min_age: std::time::Duration,
    ) -> Result<(u64, u64), BlockError> {
        let young = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < unknown_min_age)
        };
        let mut kept = Vec::new();
        for id in self.manifests() {
            if keep.contains(&id) || !known.contains(&id) && young(&self.manifest_path(&id)) {
                kept.push(id);
            } else if std::fs::remove_file(self.manifest_path(&id)).is_ok() {
                self.sweep_due.store(true, Ordering::Relaxed);
            }
        }
        if !self.sweep_due.load(Ordering::Relaxed) {
            return Ok((0, 0));
        }
        let Ok(_no_imports) = self.imports.try_write() else {
            return Ok((0, 0));
        };
        // From here on, what makes blocks unused calls for the next sweep.
        self.sweep_due.store(false, Ordering::Relaxed);
        let swept = self.sweep(&kept);
        if swept.is_err() {
            self.sweep_due.store(true, Ordering::Relaxed);
        }
        swept
    }

    /// Deletes every block the manifests `kept` do not use.
    fn sweep(&self, kept: &[Hash]) -> Result<(u64, u64), BlockError> {
        // Sorted, 32 bytes a block: a hash set would take about 2.5 times
        // that (13 MB for a 10 GiB artifact, every minute).
        let mut used: Vec<Hash> = Vec::new();
        for id in kept {
            if let Ok(Some(m)) = self.manifest(id) {
                used.reserve_exact(m.len());
                used.extend((0..m.len()).map(|i| m.hash(i)));
            }
        }
        used.sort_unstable();
        used.dedup();
        let (mut blocks, mut bytes) = (0u64, 0u64);
        for dir in std::fs::read_dir(self.root.join("blocks"))?.flatten() {
            for entry in std::fs::read_dir(dir.path())?.flatten() {
                let Some(hash) = entry.file_name().to_str().and_then(from_hex) else {
                    continue;
                };
                if used.binary_search(&hash).is_err() {
                    let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    self.remove(&hash);
                    blocks += 1;
                    bytes += len;
                }
            }
        }
        Ok((blocks, bytes))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen()).collect()
    }

    fn import_bytes(store: &BlockStore, data: &[u8]) -> (Hash, Manifest) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), data).unwrap();
        store.import(f.path()).unwrap()
    }

    #[test]
    fn import_then_read_back_is_identical_and_seekable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let data = random(3 << 20, 1);
        let (id, m) = import_bytes(&store, &data);
        assert!(m.len() > 8, "{} blocks", m.len());
        assert!(m.sizes.iter().all(|s| *s <= MAX_CHUNK));
        assert_eq!(store.manifest(&id).unwrap().unwrap(), m);
        let mut out = Vec::new();
        assemble(&store, &m, &mut out).unwrap();
        assert_eq!(out, data);
        store.verify(&m).unwrap();
        let mut r = store.reader(&m);
        r.seek(SeekFrom::End(-10)).unwrap();
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, data[data.len() - 10..]);
        r.seek(SeekFrom::Start(100_000)).unwrap();
        let mut mid = [0u8; 300_000];
        r.read_exact(&mut mid).unwrap();
        assert_eq!(mid[..], data[100_000..400_000]);
        assert_eq!(store.stats().1, data.len() as u64);
        // Reopening counts the same.
        let again = BlockStore::open(dir.path()).unwrap();
        assert_eq!(again.stats(), store.stats());
    }

    #[test]
    fn a_local_edit_changes_few_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let mut data = random(8 << 20, 2);
        let (_, a) = import_bytes(&store, &data);
        data.splice(4_000_000..4_000_010, b"edited, and longer".iter().copied());
        let (_, b) = import_bytes(&store, &data);
        let old: std::collections::HashSet<_> = (0..a.len()).map(|i| a.hash(i)).collect();
        let moved: u64 = (0..b.len())
            .filter(|i| !old.contains(&b.hash(*i)))
            .map(|i| b.size_of(i))
            .sum();
        assert!(
            moved * 100 < b.size,
            "{moved} of {} bytes changed blocks",
            b.size
        );
    }

    #[test]
    fn corruption_is_refused_and_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let good = random(1000, 3);
        let hash = sha256(&good);
        assert!(matches!(
            store.put(&hash, b"not it"),
            Err(BlockError::Corrupt(_))
        ));
        assert!(store.put(&hash, &good).unwrap());
        assert!(!store.put(&hash, &good).unwrap(), "second put is a no-op");
        std::fs::write(store.block_path(&hash), b"tampered").unwrap();
        assert!(matches!(store.get(&hash), Err(BlockError::Corrupt(_))));
        assert!(!store.has(&hash), "a corrupt block is dropped");
    }

    #[test]
    fn manifests_are_checked_against_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let (id, m) = import_bytes(&store, &random(200_000, 4));
        let bytes = m.encode();
        assert!(Manifest::decode(&bytes, &id).is_ok());
        assert!(Manifest::decode(&bytes, &[0; 32]).is_err());
        let mut lying = m.clone();
        lying.size += 1;
        let lie = lying.encode();
        assert!(Manifest::decode(&lie, &sha256(&lie)).is_err());
        assert!(Manifest::decode(b"\xff\x00garbage", &sha256(b"\xff\x00garbage")).is_err());
    }

    #[test]
    fn garbage_collection_keeps_what_kept_manifests_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let shared = random(600_000, 5);
        let mut a = shared.clone();
        a.extend(random(300_000, 6));
        let mut b = shared;
        b.extend(random(300_000, 7));
        let (ida, ma) = import_bytes(&store, &a);
        let (idb, mb) = import_bytes(&store, &b);
        let (removed, _) = store
            .collect_garbage(&[idb], &[], std::time::Duration::ZERO)
            .unwrap();
        assert!(removed > 0);
        assert!(store.complete(&mb));
        assert!(!store.complete(&ma));
        assert_eq!(store.manifests(), vec![idb]);
        assert!(store.manifest(&ida).unwrap().is_none());
        let mut out = Vec::new();
        assemble(&store, &mb, &mut out).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn blocks_are_looked_over_only_when_some_may_be_unused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let collect = |keep: &[Hash]| {
            store
                .collect_garbage(keep, &[], std::time::Duration::ZERO)
                .unwrap()
                .0
        };
        let (ida, ma) = import_bytes(&store, &random(500_000, 8));
        assert_eq!(collect(&[ida]), 0); // the first pass after opening
        let stray = random(1000, 9);
        store.put(&sha256(&stray), &stray).unwrap();
        // Nothing went since the last pass: the blocks are left alone.
        assert_eq!(collect(&[ida]), 0);
        assert!(store.has(&sha256(&stray)));
        // A failed import may leave blocks no manifest names.
        assert!(store.import(dir.path()).is_err());
        assert_eq!(collect(&[ida]), 1);
        assert!(!store.has(&sha256(&stray)));
        // A manifest that goes takes its blocks with it.
        let (idb, mb) = import_bytes(&store, &random(500_000, 10));
        assert_eq!(collect(&[ida, idb]), 0);
        assert!(collect(&[idb]) > 0);
        assert!(store.complete(&mb));
        assert!(!store.complete(&ma));
        assert_eq!(store.stats().0 as usize, mb.len());
    }

    #[test]
    fn an_empty_artifact_has_no_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let (_, m) = import_bytes(&store, b"");
        assert!(m.is_empty());
        store.verify(&m).unwrap();
    }
}

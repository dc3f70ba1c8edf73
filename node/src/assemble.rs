//! Unpacking an artifact while it is fetched. The zip's central directory
//! is asked for first; then every stored (uncompressed) entry whose local
//! header is here gets its file, and each block's bytes are written into
//! place as the block lands, so little is left to do when the last block
//! arrives. Deflated entries, and whatever could not be placed, are left to
//! the final pass ([`crate::unpack::unpack`]), which takes the placed
//! entries as done.
//!
//! The final pass's checks (zip slip, file types, duplicates, total size,
//! entry count) are made here before a byte is written; anything odd turns
//! the assembler off, and the final pass then unpacks the whole artifact and
//! reports what is wrong. Blocks are written as they were checked on
//! arrival, so a placed file's bytes are exactly the artifact's.

use crate::unpack::{safe_relative, Done, UnpackLimits};
use p2p::blocks::{ArtifactReader, BlockStore, Manifest};
use p2p::exchange::BlockSink;
use p2p::locks::LockExt;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::debug;

/// How many blocks [`BlockSink::urgent`] names at most.
const URGENT: usize = 8;
const NOWHERE: u64 = u64::MAX;

/// The artifact as the store has it so far; remembers where a read found a
/// block missing, so the assembler knows what to wait for.
struct Probe {
    inner: ArtifactReader<Arc<BlockStore>, Arc<Manifest>>,
    missing: Arc<AtomicU64>,
}

impl Read for Probe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let at = self.inner.stream_position()?;
        self.inner.read(buf).inspect_err(|_| {
            self.missing.store(at, Ordering::Relaxed);
        })
    }
}

impl Seek for Probe {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

/// A stored entry with its file made, by where its data starts.
struct Placed {
    index: usize,
    len: u64,
    written: u64,
    path: PathBuf,
}

#[derive(Default)]
struct Inner {
    /// Finished, or gave up: nothing more is written.
    off: bool,
    /// Blocks written into every placed entry they overlap (blocks here
    /// before any entry was placed count: placing an entry catches up).
    applied: Vec<bool>,
    archive: Option<zip::ZipArchive<Probe>>,
    /// Before the central directory is read: the block it waits for.
    want: Option<usize>,
    /// Entries whose local header is not here yet, by the block it needs.
    pending: BTreeMap<usize, Vec<usize>>,
    placed: BTreeMap<u64, Placed>,
    total: u64,
    /// The last file written to, by its entry's data start.
    open: Option<(u64, File)>,
}

pub struct Assembler {
    store: Arc<BlockStore>,
    manifest: Arc<Manifest>,
    offsets: Vec<u64>,
    dest: PathBuf,
    limits: UnpackLimits,
    missing: Arc<AtomicU64>,
    inner: Mutex<Inner>,
}

impl Assembler {
    /// An assembler writing `manifest`'s entries under `dest` (created when
    /// the central directory is here). Blocking: looks at the store.
    pub fn new(
        store: Arc<BlockStore>,
        manifest: Arc<Manifest>,
        dest: PathBuf,
        limits: UnpackLimits,
    ) -> Self {
        let n = manifest.len();
        let applied = (0..n).map(|i| store.has(&manifest.hash(i))).collect();
        let a = Self {
            offsets: manifest.offsets(),
            store,
            manifest,
            dest,
            limits,
            missing: Arc::new(AtomicU64::new(NOWHERE)),
            inner: Mutex::new(Inner {
                applied,
                want: n.checked_sub(1),
                ..Inner::default()
            }),
        };
        {
            let mut g = a.lock();
            a.read_layout(&mut g);
        }
        a
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock_unpoisoned()
    }

    fn block_at(&self, pos: u64) -> usize {
        self.offsets
            .partition_point(|o| *o <= pos)
            .saturating_sub(1)
    }

    fn give_up(&self, g: &mut Inner, why: &str) {
        debug!(dest = %self.dest.display(), why, "unpacking after the fetch instead");
        g.off = true;
        g.open = None;
    }

    /// Reads the central directory if its blocks are here, and places what
    /// it can.
    fn read_layout(&self, g: &mut Inner) {
        if g.off || g.archive.is_some() || self.manifest.is_empty() {
            return;
        }
        self.missing.store(NOWHERE, Ordering::Relaxed);
        let probe = Probe {
            inner: ArtifactReader::new(self.store.clone(), self.manifest.clone()),
            missing: self.missing.clone(),
        };
        let archive = match zip::ZipArchive::new(probe) {
            Ok(a) => a,
            Err(err) => {
                match self.missing.load(Ordering::Relaxed) {
                    NOWHERE => self.give_up(g, &format!("cannot read the zip: {err}")),
                    at => g.want = Some(self.block_at(at)),
                }
                return;
            }
        };
        if archive.len() > self.limits.max_entries {
            return self.give_up(g, "too many entries");
        }
        if let Err(err) = std::fs::create_dir_all(&self.dest) {
            return self.give_up(g, &err.to_string());
        }
        let n = archive.len();
        g.archive = Some(archive);
        g.want = None;
        for k in 0..n {
            self.place(g, k);
        }
    }

    /// Makes entry `k`'s file if it is stored and its header is here, and
    /// writes the blocks already here into it.
    fn place(&self, g: &mut Inner, k: usize) {
        if g.off {
            return;
        }
        let Some(archive) = g.archive.as_mut() else {
            return;
        };
        self.missing.store(NOWHERE, Ordering::Relaxed);
        let (rel, start, len) = match look(archive, k) {
            Look::Stored { rel, start, len } => (rel, start, len),
            Look::Skip => return, // the final pass's
            Look::Bad(why) => match self.missing.load(Ordering::Relaxed) {
                NOWHERE => return self.give_up(g, &format!("entry {k}: {why}")),
                at => {
                    let b = self.block_at(at);
                    g.pending.entry(b).or_default().push(k);
                    return;
                }
            },
        };
        let end = start.saturating_add(len);
        g.total = g.total.saturating_add(len);
        if end > self.manifest.size || g.total > self.limits.max_total_bytes {
            return self.give_up(g, "entry out of bounds or over the size limit");
        }
        let before = g.placed.range(..=start).next_back();
        let after = g.placed.range(start..).next();
        if before.is_some_and(|(s, p)| s + p.len > start) || after.is_some_and(|(s, _)| *s < end) {
            return self.give_up(g, "overlapping entries");
        }
        let path = self.dest.join(rel);
        let made = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| File::create_new(&path));
        if let Err(err) = made {
            return self.give_up(g, &format!("{}: {err}", path.display()));
        }
        g.placed.insert(
            start,
            Placed {
                index: k,
                len,
                written: 0,
                path,
            },
        );
        // Catch up with the blocks already here.
        if len == 0 {
            return;
        }
        for b in self.block_at(start)..=self.block_at(end - 1) {
            if !g.applied[b] {
                continue;
            }
            match self.store.get(&self.manifest.hash(b)) {
                Ok(data) => self.write(g, b, &data, Some(start)),
                // Lost meanwhile: the entry stays short, the final pass
                // unpacks it.
                Err(_) => continue,
            }
        }
    }

    /// Writes block `b` into the placed entries it overlaps (only into the
    /// one starting at `only`, if given).
    fn write(&self, g: &mut Inner, b: usize, data: &[u8], only: Option<u64>) {
        let a = self.offsets[b];
        let z = a + data.len() as u64;
        let starts: Vec<u64> = match only {
            Some(s) => vec![s],
            None => g
                .placed
                .range(..z)
                .rev()
                .take_while(|(s, p)| *s + p.len > a)
                .map(|(s, _)| *s)
                .collect(),
        };
        for s in starts {
            let Some(p) = g.placed.get(&s) else { continue };
            let (from, to) = (a.max(s), z.min(s + p.len));
            if from >= to {
                continue;
            }
            let path = p.path.clone();
            if g.open.as_ref().is_none_or(|(o, _)| *o != s) {
                match std::fs::OpenOptions::new().write(true).open(&path) {
                    Ok(f) => g.open = Some((s, f)),
                    Err(err) => return self.give_up(g, &err.to_string()),
                }
            }
            let Some((_, file)) = g.open.as_ref() else {
                return;
            };
            let chunk = &data[(from - a) as usize..(to - a) as usize];
            if let Err(err) = file.write_all_at(chunk, from - s) {
                return self.give_up(g, &err.to_string());
            }
            if let Some(p) = g.placed.get_mut(&s) {
                p.written += to - from;
            }
        }
    }

    /// Stops writing and removes what was written (the fetch failed).
    /// Blocking.
    pub fn abandon(&self) {
        let mut g = self.lock();
        g.off = true;
        g.open = None;
        let _ = std::fs::remove_dir_all(&self.dest);
    }

    /// Stops writing; returns the entries placed in full, or `None` (and
    /// nothing written) when the final pass must unpack everything.
    /// Blocking.
    pub fn finish(&self) -> Option<Done> {
        let mut g = self.lock();
        let gave_up = std::mem::replace(&mut g.off, true);
        g.open = None;
        if !gave_up {
            let mut done = Done::default();
            let mut clean = true;
            for p in g.placed.values() {
                if p.written == p.len {
                    done.entries.insert(p.index, p.len);
                } else {
                    clean &= std::fs::remove_file(&p.path).is_ok();
                }
            }
            if clean {
                return Some(done);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dest);
        None
    }
}

enum Look {
    Stored {
        rel: PathBuf,
        start: u64,
        len: u64,
    },
    /// A directory or a compressed entry.
    Skip,
    Bad(String),
}

/// What entry `k` is, from its central and local headers.
fn look(archive: &mut zip::ZipArchive<Probe>, k: usize) -> Look {
    let entry = match archive.by_index_raw(k) {
        Ok(e) => e,
        Err(err) => return Look::Bad(err.to_string()),
    };
    if entry.is_dir() || entry.compression() != zip::CompressionMethod::Stored {
        return Look::Skip;
    }
    let Some(rel) = safe_relative(entry.name()) else {
        return Look::Bad("unsafe name".into());
    };
    let file_type = entry.unix_mode().unwrap_or(0o100644) & 0o170000;
    if entry.is_symlink() || (file_type != 0 && file_type != 0o100000) {
        return Look::Bad("not a plain file".into());
    }
    if entry.size() != entry.compressed_size() {
        return Look::Bad("stored entry with two sizes".into());
    }
    Look::Stored {
        rel,
        start: entry.data_start(),
        len: entry.compressed_size(),
    }
}

impl BlockSink for Assembler {
    fn block(&self, b: usize, data: &[u8]) {
        let mut g = self.lock();
        if g.off || g.applied.get(b).is_none_or(|a| *a) {
            return;
        }
        g.applied[b] = true;
        if g.archive.is_none() {
            if g.want == Some(b) {
                self.read_layout(&mut g);
            }
            return;
        }
        self.write(&mut g, b, data, None);
        if let Some(waiting) = g.pending.remove(&b) {
            for k in waiting {
                self.place(&mut g, k);
            }
        }
    }

    fn urgent(&self) -> Vec<usize> {
        // A hint only: never wait for a block being written.
        let Ok(g) = self.inner.try_lock() else {
            return Vec::new();
        };
        if g.off {
            return Vec::new();
        }
        let unapplied = |b: &usize| g.applied.get(*b).is_some_and(|a| !a);
        match g.want {
            // The central directory is read front to back from here.
            Some(b) => (b..self.manifest.len())
                .filter(unapplied)
                .take(URGENT)
                .collect(),
            None => g
                .pending
                .keys()
                .copied()
                .filter(unapplied)
                .take(URGENT)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::build::pack::{pack, PackLimits};
    use crate::unpack::unpack;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use std::io::Write;
    use std::path::Path;

    const LIMITS: UnpackLimits = UnpackLimits {
        max_entries: 1000,
        max_total_bytes: 1 << 30,
        max_ratio: 200,
    };

    /// A site of stored and deflated files, packed and cut into blocks.
    fn artifact(dir: &Path, seed: u64) -> (Arc<BlockStore>, Arc<Manifest>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let site = dir.join("site");
        std::fs::create_dir_all(site.join("a/b")).unwrap();
        let mut random = |n: usize| (0..n).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>();
        std::fs::write(site.join("big.bin"), random(3 << 20)).unwrap();
        std::fs::write(site.join("a/photo.jpg"), random(200_000)).unwrap();
        std::fs::write(site.join("a/b/tiny.bin"), random(10)).unwrap();
        std::fs::write(site.join("empty.png"), b"").unwrap();
        std::fs::write(site.join("index.html"), "<p>hello</p>\n".repeat(5000)).unwrap();
        for i in 0..40 {
            std::fs::write(site.join(format!("a/img{i}.webp")), random(3000 + i * 97)).unwrap();
        }
        let zip = dir.join("site.zip");
        pack(
            &site,
            &zip,
            PackLimits {
                max_files: 1000,
                max_bytes: 1 << 30,
            },
        )
        .unwrap();
        let store = BlockStore::open(&dir.join("built")).unwrap();
        let (_, manifest) = store.import(&zip).unwrap();
        (Arc::new(store), Arc::new(manifest))
    }

    fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    /// Feeds every block to a fresh peer's store, in the order a fetch
    /// honouring `urgent` might, with some deliveries lost (blocks that
    /// were here already) and some doubled (endgame); then the final pass.
    fn fetch_and_unpack(
        dir: &Path,
        from: &BlockStore,
        manifest: &Arc<Manifest>,
        seed: u64,
        honour_urgent: bool,
        here_before: usize,
    ) -> (Option<Done>, BTreeMap<String, Vec<u8>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let store = Arc::new(BlockStore::open(&dir.join(format!("peer-{seed}"))).unwrap());
        let mut order: Vec<usize> = (0..manifest.len()).collect();
        order.shuffle(&mut rng);
        for b in order.drain(..here_before.min(manifest.len())) {
            let h = manifest.hash(b);
            store.put(&h, &from.get(&h).unwrap()).unwrap();
        }
        let dest = dir.join(format!("out-{seed}"));
        let a = Assembler::new(store.clone(), manifest.clone(), dest.clone(), LIMITS);
        while !order.is_empty() {
            let urgent = if honour_urgent {
                a.urgent()
            } else {
                Vec::new()
            };
            let pos = urgent
                .iter()
                .find_map(|u| order.iter().position(|b| b == u))
                .unwrap_or(0);
            let b = order.remove(pos);
            let h = manifest.hash(b);
            let data = from.get(&h).unwrap();
            store.put(&h, &data).unwrap();
            if rng.gen_ratio(1, 20) {
                continue; // this delivery is not seen
            }
            a.block(b, &data);
            if rng.gen_ratio(1, 10) {
                a.block(b, &data);
            }
        }
        let done = a.finish();
        let reader = ArtifactReader::new(store, manifest.clone());
        let n = unpack(
            reader,
            &dest,
            LIMITS,
            done.as_ref().unwrap_or(&Done::default()),
        );
        assert!(n.is_ok(), "{n:?}");
        (done, tree(&dest))
    }

    #[test]
    fn unpacking_while_fetching_gives_the_same_site_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let (built, manifest) = artifact(dir.path(), 1);
        assert!(manifest.len() > 20, "{} blocks", manifest.len());
        let want_dir = dir.path().join("want");
        unpack(built.reader(&manifest), &want_dir, LIMITS, &Done::default()).unwrap();
        let want = tree(&want_dir);
        assert_eq!(want.len(), 45);
        for seed in 0..12 {
            let (done, got) =
                fetch_and_unpack(dir.path(), &built, &manifest, seed, seed % 2 == 0, 0);
            assert_eq!(got, want, "seed {seed}");
            assert!(done.is_some(), "seed {seed}: the assembler gave up");
        }
    }

    #[test]
    fn the_central_directory_first_places_the_stored_files_while_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let (built, manifest) = artifact(dir.path(), 2);
        let mut z = zip::ZipArchive::new(built.reader(&manifest)).unwrap();
        let stored: Vec<usize> = (0..z.len())
            .filter(|i| z.by_index_raw(*i).unwrap().compression() == zip::CompressionMethod::Stored)
            .collect();
        assert!(stored.len() >= 40);
        // Every block reaches the sink (none lost or doubled is the common
        // case): with the urgent blocks first, every stored entry is placed
        // in full before the final pass.
        let store = Arc::new(BlockStore::open(&dir.path().join("peer")).unwrap());
        let dest = dir.path().join("out");
        let a = Assembler::new(store.clone(), manifest.clone(), dest.clone(), LIMITS);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut order: Vec<usize> = (0..manifest.len()).collect();
        order.shuffle(&mut rng);
        let mut asked_first = Vec::new();
        while !order.is_empty() {
            let urgent = a.urgent();
            let pos = urgent
                .iter()
                .find_map(|u| order.iter().position(|b| b == u))
                .unwrap_or(0);
            if pos != 0 || urgent.first() == order.first() {
                asked_first.push(order[pos]);
            }
            let b = order.remove(pos);
            let data = built.get(&manifest.hash(b)).unwrap();
            store.put(&manifest.hash(b), &data).unwrap();
            a.block(b, &data);
        }
        assert!(
            asked_first.contains(&(manifest.len() - 1)),
            "the last block first"
        );
        let done = a.finish().unwrap();
        let mut placed: Vec<usize> = done.entries.keys().copied().collect();
        placed.sort();
        assert_eq!(placed, stored);
        assert_eq!(std::fs::read(dest.join("big.bin")).unwrap().len(), 3 << 20);
    }

    #[test]
    fn blocks_here_before_the_fetch_are_used_too() {
        let dir = tempfile::tempdir().unwrap();
        let (built, manifest) = artifact(dir.path(), 3);
        let want_dir = dir.path().join("want");
        unpack(built.reader(&manifest), &want_dir, LIMITS, &Done::default()).unwrap();
        let half = manifest.len() / 2;
        let (done, got) = fetch_and_unpack(dir.path(), &built, &manifest, 99, true, half);
        assert_eq!(got, tree(&want_dir));
        assert!(done.is_some());
    }

    #[test]
    fn a_hostile_zip_turns_it_off_and_the_final_pass_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("evil.zip");
        {
            let mut z = zip::ZipWriter::new(File::create(&zip_path).unwrap());
            let stored = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            z.start_file("ok.bin", stored).unwrap();
            z.write_all(&[7u8; 5000]).unwrap();
            z.start_file("../../escape.bin", stored).unwrap();
            z.write_all(&[9u8; 5000]).unwrap();
            z.finish().unwrap();
        }
        let store = Arc::new(BlockStore::open(&dir.path().join("s")).unwrap());
        let (_, manifest) = store.import(&zip_path).unwrap();
        let manifest = Arc::new(manifest);
        let dest = dir.path().join("sites/x/out");
        let a = Assembler::new(store.clone(), manifest.clone(), dest.clone(), LIMITS);
        assert!(a.finish().is_none(), "the assembler must give up");
        assert!(!dir.path().join("sites/escape.bin").exists());
        let err = unpack(store.reader(&manifest), &dest, LIMITS, &Done::default()).unwrap_err();
        assert!(err.to_string().contains("zip slip"), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn a_site_over_the_size_limit_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (built, manifest) = artifact(dir.path(), 4);
        let small = UnpackLimits {
            max_total_bytes: 1 << 20,
            ..LIMITS
        };
        let dest = dir.path().join("out");
        let a = Assembler::new(built.clone(), manifest.clone(), dest.clone(), small);
        assert!(a.finish().is_none());
        let err = unpack(built.reader(&manifest), &dest, small, &Done::default()).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }
}

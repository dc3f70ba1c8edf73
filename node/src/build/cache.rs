//! The per-project build cache on this peer: what the package manager
//! downloaded (npm's cache, the pnpm store, yarn's cache, corepack's
//! package managers, bundler's gems), keyed by the lockfile's hash,
//! restored into the build before the install and saved after a
//! successful build, so a redeploy with the same lockfile downloads
//! nothing. A lockfile with no entry gets the project's newest one (most
//! of it still applies). Bounded in total size, evicted least recently
//! used first; clearing a project's cache bumps its generation in the
//! replicated project row, and every peer drops entries of older
//! generations.
//!
//! Layout: `<dir>/<project>/<generation>-<key>/` holds the cache itself,
//! and `<dir>/<project>/<generation>-<key>.size` its size in bytes. Entries
//! are restored as copies, large files as hard links (content-addressed
//! stores never rewrite a file in place); a save replaces the entry whole.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Files at least this big are restored as hard links, smaller ones copied.
const LINK_BYTES: u64 = 64 * 1024;

/// Where a peer keeps build caches, and how much.
#[derive(Debug, Clone)]
pub struct Caches {
    dir: PathBuf,
    max_bytes: u64,
}

/// One project's cache, at one generation.
#[derive(Debug, Clone)]
pub struct Slot {
    caches: Caches,
    project: String,
    generation: u64,
}

/// What a restore found.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// The entry for this lockfile.
    Exact {
        bytes: u64,
    },
    /// The project's newest entry, for another lockfile.
    Partial {
        bytes: u64,
    },
    Empty,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |b: &u64| (b + 500_000) / 1_000_000;
        match self {
            Restored::Exact { bytes } => write!(
                f,
                "restored the build cache for this lockfile ({} MB)",
                mb(bytes)
            ),
            Restored::Partial { bytes } => write!(
                f,
                "restored the build cache of an earlier lockfile ({} MB)",
                mb(bytes)
            ),
            Restored::Empty => write!(f, "no build cache yet for this project on this peer"),
        }
    }
}

impl Caches {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    pub fn slot(&self, project: &str, generation: u64) -> Slot {
        Slot {
            caches: self.clone(),
            project: project.to_owned(),
            generation,
        }
    }

    /// Bytes held, over every project.
    #[cfg(test)]
    fn total_bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.bytes).sum()
    }

    /// Every entry, with its size and last use.
    fn entries(&self) -> Vec<Entry> {
        let Ok(projects) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        projects
            .flatten()
            .flat_map(|project| entries_in(&project.path()))
            .collect()
    }

    /// Evicts least recently used entries until the total fits.
    fn evict(&self, keep: &Path) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if total <= self.max_bytes {
                break;
            }
            if e.path == keep {
                continue;
            }
            remove_entry(&e.path);
            total = total.saturating_sub(e.bytes);
        }
    }
}

/// The entries of one project's directory.
fn entries_in(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let Ok(items) = std::fs::read_dir(dir) else {
        return out;
    };
    for item in items.flatten() {
        let path = item.path();
        if path.extension().is_some_and(|e| e == "size") {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("tmp-") {
            // A save that died half way.
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        let bytes = std::fs::read_to_string(size_file(&path))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let used = item
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        out.push(Entry {
            generation: name
                .split_once('-')
                .and_then(|(g, _)| g.parse().ok())
                .unwrap_or(0),
            path,
            bytes,
            used,
        });
    }
    out
}

struct Entry {
    path: PathBuf,
    generation: u64,
    bytes: u64,
    used: SystemTime,
}

fn size_file(entry: &Path) -> PathBuf {
    entry.with_extension("size")
}

fn remove_entry(entry: &Path) {
    let _ = std::fs::remove_dir_all(entry);
    let _ = std::fs::remove_file(size_file(entry));
}

/// A cache key or project name safe as one path segment.
fn safe(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 128
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !segment.starts_with('.')
}

impl Slot {
    fn project_dir(&self) -> PathBuf {
        self.caches.dir.join(&self.project)
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.project_dir()
            .join(format!("{}-{key}", self.generation))
    }

    /// This project's entries at the current generation, dropping older
    /// generations' (the cache was cleared since).
    fn current(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for e in entries_in(&self.project_dir()) {
            if e.generation == self.generation {
                out.push(e);
            } else {
                remove_entry(&e.path);
            }
        }
        out
    }

    /// Fills `into` (an empty directory) from the entry for `key`, else the
    /// project's newest.
    pub fn restore(&self, key: &str, into: &Path) -> io::Result<Restored> {
        if !safe(&self.project) || !safe(key) {
            return Ok(Restored::Empty);
        }
        let mut entries = self.current();
        let exact = self.entry(key);
        entries.sort_by_key(|e| std::cmp::Reverse(e.used));
        let (found, is_exact) = match entries.iter().find(|e| e.path == exact) {
            Some(e) => (e, true),
            None => match entries.first() {
                Some(e) => (e, false),
                None => return Ok(Restored::Empty),
            },
        };
        copy_tree(&found.path, into)?;
        // Last use, for eviction.
        let _ = std::fs::File::open(&found.path).and_then(|f| f.set_modified(SystemTime::now()));
        let bytes = found.bytes;
        Ok(if is_exact {
            Restored::Exact { bytes }
        } else {
            Restored::Partial { bytes }
        })
    }

    /// Makes `from` (the build's cache directory, consumed) the entry for
    /// `key`; returns its size.
    pub fn save(&self, key: &str, from: &Path) -> io::Result<u64> {
        if !safe(&self.project) || !safe(key) {
            return Err(io::Error::other("unsafe cache key"));
        }
        let bytes = tree_bytes(from);
        if bytes > self.caches.max_bytes {
            return Err(io::Error::other(format!(
                "{} MB is more than the peer's whole build cache ({} MB)",
                bytes / 1_000_000,
                self.caches.max_bytes / 1_000_000
            )));
        }
        let dir = self.project_dir();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("tmp-{}", ulid::Ulid::new()));
        if std::fs::rename(from, &tmp).is_err() {
            // Another file system: copy instead.
            copy_tree(from, &tmp)?;
        }
        let entry = self.entry(key);
        remove_entry(&entry);
        std::fs::rename(&tmp, &entry)?;
        std::fs::write(size_file(&entry), bytes.to_string())?;
        // Other lockfiles' entries of this project are superseded.
        for e in self.current() {
            if e.path != entry {
                remove_entry(&e.path);
            }
        }
        self.caches.evict(&entry);
        Ok(bytes)
    }
}

/// Bytes of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Copies `from` into `to` (created): directories made, symlinks
/// recreated, small files copied and large ones hard-linked.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        let (src, dst) = (item.path(), to.join(item.file_name()));
        let kind = item.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src)?;
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(target, &dst)?;
        } else if kind.is_file() {
            let _ = std::fs::remove_file(&dst);
            let big = item.metadata()?.len() >= LINK_BYTES;
            if !(big && std::fs::hard_link(&src, &dst).is_ok()) {
                std::fs::copy(&src, &dst)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(dir: &Path, files: &[(&str, usize)]) {
        for (name, len) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, vec![b'x'; *len]).unwrap();
        }
    }

    #[test]
    fn a_saved_cache_comes_back_for_the_same_lockfile_and_in_part_for_another() {
        let t = tempfile::tempdir().unwrap();
        let caches = Caches::new(t.path().join("caches"), 10 << 20);
        let slot = caches.slot("site", 0);
        let build = t.path().join("b1");
        fill(&build, &[("npm/index", 10), ("npm/content/big", 100_000)]);
        assert_eq!(slot.save("k1", &build).unwrap(), 100_010);
        let into = t.path().join("b2");
        assert_eq!(
            slot.restore("k1", &into).unwrap(),
            Restored::Exact { bytes: 100_010 }
        );
        assert_eq!(
            std::fs::read(into.join("npm/content/big")).unwrap().len(),
            100_000
        );
        let other = t.path().join("b3");
        assert_eq!(
            slot.restore("k2", &other).unwrap(),
            Restored::Partial { bytes: 100_010 }
        );
        // A cleared cache (next generation) starts empty and drops the old.
        let cleared = caches.slot("site", 1);
        assert_eq!(
            cleared.restore("k1", &t.path().join("b4")).unwrap(),
            Restored::Empty
        );
        assert_eq!(caches.total_bytes(), 0);
        assert_eq!(
            slot.restore("../x", &t.path().join("b5")).unwrap(),
            Restored::Empty
        );
    }

    #[test]
    fn the_total_is_bounded_least_recently_used_first() {
        let t = tempfile::tempdir().unwrap();
        let caches = Caches::new(t.path().join("caches"), 250_000);
        for (i, project) in ["a", "b", "c"].iter().enumerate() {
            let build = t.path().join(format!("b{i}"));
            fill(&build, &[("f", 100_000)]);
            caches.slot(project, 0).save("k", &build).unwrap();
            // Distinct last-use times.
            let entry = t.path().join("caches").join(project).join("0-k");
            let f = std::fs::File::open(&entry).unwrap();
            f.set_modified(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64),
            )
            .unwrap();
        }
        assert!(caches.total_bytes() <= 250_000);
        let a = caches
            .slot("a", 0)
            .restore("k", &t.path().join("ra"))
            .unwrap();
        assert_eq!(a, Restored::Empty, "the oldest went first");
        let c = caches
            .slot("c", 0)
            .restore("k", &t.path().join("rc"))
            .unwrap();
        assert_eq!(c, Restored::Exact { bytes: 100_000 });
        let too_big = t.path().join("huge");
        fill(&too_big, &[("f", 300_000)]);
        assert!(caches.slot("d", 0).save("k", &too_big).is_err());
    }
}

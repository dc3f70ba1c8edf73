//! The sites this peer serves: unpacking an artifact beside the version being
//! served, with zip-slip, symlink and zip-bomb protection, and switching a
//! site's `current` link atomically so no request sees half a site.
//!
//! Layout: `sites/<name>/versions/<deployment id>/…` and
//! `sites/<name>/current → versions/<deployment id>`.

use crate::assemble::Done;
use std::io::{self, Read, Seek};
use std::path::{Component, Path, PathBuf};

/// Bounds on what an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_entries: usize,
    pub max_total_bytes: u64,
    /// Largest uncompressed/compressed ratio of an entry bigger than 1 MiB.
    pub max_ratio: u64,
}

impl UnpackLimits {
    pub fn with_total(max_total_bytes: u64) -> Self {
        Self {
            max_entries: 100_000,
            max_total_bytes,
            max_ratio: 200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry '{0}' would be written outside the site (zip slip)")]
    Slip(String),
    #[error("archive entry '{0}' is a symlink or special file")]
    NotAFile(String),
    #[error("archive has more than {0} entries")]
    TooManyEntries(usize),
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("archive entry '{0}' is compressed suspiciously well (zip bomb?)")]
    Ratio(String),
    #[error("archive lists '{0}' twice")]
    Duplicate(String),
    #[error("archive is corrupt: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("unpacking failed: {0}")]
    Io(#[from] io::Error),
}

/// A relative path made only of normal components, no dotfile tricks.
pub(crate) fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\\') || name.contains('\0') || name.starts_with('/') {
        return None;
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Unpacks the zip read from `zip` into `dest`, where the entries in `done`
/// were already written in full (by an [`crate::assemble::Assembler`]:
/// those only count). On any error the partial directory is removed.
pub fn unpack<R: Read + Seek>(
    zip: R,
    dest: &Path,
    limits: UnpackLimits,
    done: &Done,
) -> Result<(usize, u64), UnpackError> {
    let result = unpack_inner(zip, dest, limits, done);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner<R: Read + Seek>(
    zip: R,
    dest: &Path,
    limits: UnpackLimits,
    done: &Done,
) -> Result<(usize, u64), UnpackError> {
    let mut archive = zip::ZipArchive::new(zip)?;
    if archive.len() > limits.max_entries {
        return Err(UnpackError::TooManyEntries(limits.max_entries));
    }
    std::fs::create_dir_all(dest)?;
    let mut total = 0u64;
    let mut files = 0usize;
    for i in 0..archive.len() {
        if let Some(len) = done.entries.get(&i) {
            total += len;
            if total > limits.max_total_bytes {
                return Err(UnpackError::TooLarge(limits.max_total_bytes));
            }
            files += 1;
            continue;
        }
        let mut entry = archive.by_index(i)?;
        let name = entry.name().to_owned();
        let rel = safe_relative(&name).ok_or_else(|| UnpackError::Slip(name.clone()))?;
        if entry.is_dir() {
            std::fs::create_dir_all(dest.join(&rel))?;
            continue;
        }
        let mode = entry.unix_mode().unwrap_or(0o100644);
        let file_type = mode & 0o170000;
        if entry.is_symlink() || (file_type != 0 && file_type != 0o100000) {
            return Err(UnpackError::NotAFile(name));
        }
        let declared = entry.size();
        if declared > (1 << 20) && declared / entry.compressed_size().max(1) > limits.max_ratio {
            return Err(UnpackError::Ratio(name));
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // create_new: a second entry with the same name fails instead of overwriting.
        let mut out = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(UnpackError::Duplicate(name))
            }
            Err(e) => return Err(e.into()),
        };
        // Never trust the declared size: count what actually comes out.
        let room = limits.max_total_bytes - total;
        let written = copy_large(&mut (&mut entry).take(room + 1), &mut out)?;
        total += written;
        if written > room {
            return Err(UnpackError::TooLarge(limits.max_total_bytes));
        }
        files += 1;
    }
    Ok((files, total))
}

/// The on-disk home of every site this peer serves.
#[derive(Debug, Clone)]
pub struct Sites {
    root: PathBuf,
}

impl Sites {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn version_dir(&self, name: &str, deployment: &str) -> PathBuf {
        self.root.join(name).join("versions").join(deployment)
    }

    /// The deployment id currently served for `name`.
    pub fn current(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.root.join(name).join("current")).ok()?;
        Some(target.file_name()?.to_str()?.to_owned())
    }

    /// The directory of the version served now, resolved once per request.
    pub fn current_dir(&self, name: &str) -> Option<PathBuf> {
        let id = self.current(name)?;
        Some(self.version_dir(name, &id))
    }

    /// Where version `deployment` of `name` is unpacked before it is
    /// renamed into place.
    pub fn staging_dir(&self, name: &str, deployment: &str) -> PathBuf {
        self.version_dir(name, deployment)
            .with_extension(format!("unpacking-{}", std::process::id()))
    }

    /// Unpacks an artifact as version `deployment` of `name` (unless it is
    /// already there). `placed`: what an assembler already wrote into the
    /// staging dir while fetching (`None`: start afresh).
    pub fn install<R: Read + Seek>(
        &self,
        name: &str,
        deployment: &str,
        zip: R,
        limits: UnpackLimits,
        placed: Option<Done>,
    ) -> Result<(usize, u64), UnpackError> {
        let dir = self.version_dir(name, deployment);
        if dir.is_dir() {
            return Ok((0, 0));
        }
        let tmp = self.staging_dir(name, deployment);
        if placed.is_none() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let stats = unpack(zip, &tmp, limits, &placed.unwrap_or_default())?;
        std::fs::rename(&tmp, &dir)?;
        Ok(stats)
    }

    /// The site names with a directory here.
    pub fn names(&self) -> Vec<String> {
        list_dir(&self.root)
    }

    /// The deployments unpacked for `name`.
    pub fn versions(&self, name: &str) -> Vec<String> {
        list_dir(&self.root.join(name).join("versions"))
            .into_iter()
            .filter(|v| !v.contains(".unpacking-"))
            .collect()
    }

    /// Removes an unpacked version (never the one served now).
    pub fn remove_version(&self, name: &str, deployment: &str) -> io::Result<()> {
        if self.current(name).as_deref() == Some(deployment) {
            return Ok(());
        }
        std::fs::remove_dir_all(self.version_dir(name, deployment))
    }

    /// Points `current` at version `deployment` with one atomic rename.
    pub fn switch(&self, name: &str, deployment: &str) -> io::Result<()> {
        let site = self.root.join(name);
        let tmp = site.join(format!(".current-{}-{deployment}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("versions").join(deployment), &tmp)?;
        std::fs::rename(&tmp, site.join("current"))
    }
}

/// `io::copy` with a 256 KiB buffer: big files move in far fewer syscalls.
fn copy_large(from: &mut impl Read, to: &mut impl io::Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_with(entries: &[(&str, &[u8])], symlink: Option<&str>) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(f.reopen().unwrap());
        for (name, data) in entries {
            z.start_file(*name, SimpleFileOptions::default()).unwrap();
            z.write_all(data).unwrap();
        }
        if let Some(name) = symlink {
            z.add_symlink(name, "/etc/passwd", SimpleFileOptions::default())
                .unwrap();
        }
        z.finish().unwrap();
        f
    }

    const LIMITS: UnpackLimits = UnpackLimits {
        max_entries: 100,
        max_total_bytes: 1 << 24,
        max_ratio: 200,
    };

    #[test]
    fn unpacks_a_normal_archive() {
        let z = zip_with(&[("index.html", b"hi"), ("a/b.css", b"x")], None);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v");
        assert_eq!(
            unpack(
                File::open(z.path()).unwrap(),
                &dest,
                LIMITS,
                &Done::default()
            )
            .unwrap(),
            (2, 3)
        );
        assert_eq!(std::fs::read(dest.join("a/b.css")).unwrap(), b"x");
    }

    #[test]
    fn refuses_slip_symlinks_duplicates_and_bombs() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v");
        for name in ["../evil", "/abs", "a/../../evil", "a\\..\\evil"] {
            let z = zip_with(&[(name, b"x")], None);
            assert!(
                matches!(
                    unpack(
                        File::open(z.path()).unwrap(),
                        &dest,
                        LIMITS,
                        &Done::default()
                    ),
                    Err(UnpackError::Slip(_))
                ),
                "{name}"
            );
            assert!(!dest.exists(), "partial output must be removed");
        }
        let z = zip_with(&[("index.html", b"x")], Some("link"));
        assert!(matches!(
            unpack(
                File::open(z.path()).unwrap(),
                &dest,
                LIMITS,
                &Done::default()
            ),
            Err(UnpackError::NotAFile(_))
        ));
        let z = zip_with(&[("x/a", b"x"), ("x//a", b"y")], None);
        assert!(matches!(
            unpack(
                File::open(z.path()).unwrap(),
                &dest,
                LIMITS,
                &Done::default()
            ),
            Err(UnpackError::Duplicate(_))
        ));
        let zeros = vec![0u8; 8 << 20];
        let z = zip_with(&[("bomb", &zeros)], None);
        assert!(matches!(
            unpack(
                File::open(z.path()).unwrap(),
                &dest,
                LIMITS,
                &Done::default()
            ),
            Err(UnpackError::Ratio(_))
        ));
        let small = UnpackLimits {
            max_total_bytes: 1000,
            max_ratio: u64::MAX,
            ..LIMITS
        };
        assert!(matches!(
            unpack(
                File::open(z.path()).unwrap(),
                &dest,
                small,
                &Done::default()
            ),
            Err(UnpackError::TooLarge(1000))
        ));
        let many = UnpackLimits {
            max_entries: 1,
            ..LIMITS
        };
        let z = zip_with(&[("a", b"x"), ("b", b"y")], None);
        assert!(matches!(
            unpack(File::open(z.path()).unwrap(), &dest, many, &Done::default()),
            Err(UnpackError::TooManyEntries(1))
        ));
    }

    #[test]
    fn switching_is_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let sites = Sites::new(dir.path().to_path_buf());
        for id in ["A", "B"] {
            let z = zip_with(&[("index.html", id.as_bytes())], None);
            sites
                .install("blog", id, File::open(z.path()).unwrap(), LIMITS, None)
                .unwrap();
            sites.switch("blog", id).unwrap();
            assert_eq!(sites.current("blog").as_deref(), Some(id));
            assert_eq!(
                std::fs::read(sites.current_dir("blog").unwrap().join("index.html")).unwrap(),
                id.as_bytes()
            );
        }
        assert_eq!(sites.current("nope"), None);
    }
}

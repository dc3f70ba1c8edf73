//! Unpacking an artifact's zip into a directory, refusing what could harm
//! the peer: entries outside the directory (zip slip), symlinks and other
//! non-files, a name given twice, too many entries or bytes, and entries
//! compressed suspiciously well (zip bombs). The sizes that count are the
//! bytes that come out, never the declared ones. Both the final pass
//! (`site`) and the assembler that unpacks while blocks arrive use it.

use std::collections::HashMap;
use std::io::{self, Read, Seek};
use std::path::{Component, Path, PathBuf};

/// The entries placed in full: zip index → size. The final pass skips them.
#[derive(Debug, Default)]
pub struct Done {
    pub entries: HashMap<usize, u64>,
}

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    pub(crate) fn zip_with(
        entries: &[(&str, &[u8])],
        symlink: Option<&str>,
    ) -> tempfile::NamedTempFile {
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

    pub(crate) const LIMITS: UnpackLimits = UnpackLimits {
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
}

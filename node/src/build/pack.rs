//! Packing a build output as a deterministic zip: entries sorted by path,
//! fixed timestamps and modes, UTF-8 names, no directory entries. The same
//! tree gives the same bytes on every peer and every run, so the artifact id
//! (its sha256) names the content. Files are streamed, never held whole.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub files: usize,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// Size of the zip.
    pub zip_bytes: u64,
    /// sha256 of the zip, hex.
    pub sha256: String,
    /// Entries left out (symlinks, special files), for the log.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("file name is not UTF-8: {0}")]
    NotUtf8(String),
    #[error("the output has more than {0} files")]
    TooManyFiles(usize),
    #[error("the output is larger than {0} bytes")]
    TooLarge(u64),
    #[error("packing failed: {0}")]
    Io(#[from] io::Error),
    #[error("packing failed: {0}")]
    Zip(#[from] zip::result::ZipError),
}

/// Bounds on what is packed.
#[derive(Debug, Clone, Copy)]
pub struct PackLimits {
    pub max_files: usize,
    pub max_bytes: u64,
}

/// Files to pack (relative path, absolute path), sorted, and what was left out.
type Listing = (Vec<(String, PathBuf)>, Vec<String>);

/// Lists the regular files under `root` as sorted `/`-separated relative
/// paths, leaving out `.git` and anything that is not a regular file.
fn list(root: &Path, limits: PackLimits) -> Result<Listing, PackError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| PackError::NotUtf8(entry.path().display().to_string()))?;
            if name == ".git" {
                continue;
            }
            let rel = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), rel));
            } else if kind.is_file() {
                files.push((rel, entry.path()));
                if files.len() > limits.max_files {
                    return Err(PackError::TooManyFiles(limits.max_files));
                }
            } else {
                skipped.push(rel);
            }
        }
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

/// Hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes of a file sampled to decide whether deflate is worth it.
const SAMPLE: usize = 64 * 1024;

/// Whether deflating `path` is worth its CPU (on every packing and every
/// peer's unpacking): already-compressed formats by extension, anything else
/// by how well its first 64 KiB compress. Deterministic: the same file
/// always gets the same answer, so the zip stays reproducible.
fn worth_deflating(path: &Path, size: u64) -> io::Result<bool> {
    const PACKED: [&str; 22] = [
        "png", "jpg", "jpeg", "gif", "webp", "avif", "ico", "mp4", "webm", "mov", "mp3", "ogg",
        "m4a", "woff", "woff2", "zip", "gz", "tgz", "br", "zst", "xz", "7z",
    ];
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.is_some_and(|e| PACKED.contains(&e.as_str())) {
        return Ok(false);
    }
    if size < 1024 {
        return Ok(true);
    }
    let mut sample = Vec::with_capacity(SAMPLE);
    File::open(path)?
        .take(SAMPLE as u64)
        .read_to_end(&mut sample)?;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&sample)?;
    let packed = z.finish()?;
    // Keep deflate only if it saves at least a tenth.
    Ok(packed.len() * 10 < sample.len() * 9)
}

/// Packs the tree at `root` into `out` (created or truncated).
pub fn pack(root: &Path, out: &Path, limits: PackLimits) -> Result<Packed, PackError> {
    let (files, skipped) = list(root, limits)?;
    let mut zip = ZipWriter::new(BufWriter::new(File::create(out)?));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(6))
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
        .large_file(false);
    let mut total = 0u64;
    for (rel, path) in &files {
        let mut src = File::open(path)?;
        let size = src.metadata()?.len();
        total += size;
        if total > limits.max_bytes {
            return Err(PackError::TooLarge(limits.max_bytes));
        }
        let entry = if worth_deflating(path, size)? {
            options
        } else {
            options
                .compression_method(CompressionMethod::Stored)
                .compression_level(None)
        };
        let entry = entry.large_file(size >= u32::MAX as u64);
        zip.start_file(rel.as_str(), entry)?;
        let copied = io::copy(&mut (&mut src).take(size), &mut zip)?;
        if copied != size {
            return Err(PackError::Io(io::Error::other(format!(
                "{rel} changed while packing"
            ))));
        }
    }
    zip.finish()?.flush()?;
    // Hash what is on disk, streaming, so the id names exactly those bytes.
    let mut hash = HashingWriter {
        inner: io::sink(),
        hash: Sha256::new(),
        len: 0,
    };
    io::copy(&mut File::open(out)?, &mut hash)?;
    let sha256 = hex::encode(hash.hash.finalize());
    Ok(Packed {
        files: files.len(),
        bytes: total,
        zip_bytes: hash.len,
        sha256,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: PackLimits = PackLimits {
        max_files: 10_000,
        max_bytes: 1 << 30,
    };

    fn write_tree(root: &Path, files: &[(String, Vec<u8>)]) {
        for (rel, data) in files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
    }

    #[test]
    fn packs_sorted_files_and_skips_git_and_symlinks() {
        let src = tempfile::tempdir().unwrap();
        write_tree(
            src.path(),
            &[
                ("b.html".into(), b"b".to_vec()),
                ("a/x.css".into(), b"x".to_vec()),
                (".git/HEAD".into(), b"h".to_vec()),
            ],
        );
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let out = src.path().join("../out.zip");
        let p = pack(src.path(), &out, LIMITS).unwrap();
        assert_eq!(
            (p.files, p.bytes, p.skipped.clone()),
            (2, 2, vec!["link".to_owned()])
        );
        let mut z = zip::ZipArchive::new(File::open(&out).unwrap()).unwrap();
        let names: Vec<_> = (0..z.len())
            .map(|i| z.by_index(i).unwrap().name().to_owned())
            .collect();
        assert_eq!(names, ["a/x.css", "b.html"]);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(p.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(p.zip_bytes, bytes.len() as u64);
    }

    #[test]
    fn incompressible_files_are_stored_and_text_is_deflated() {
        use rand::RngCore;
        let src = tempfile::tempdir().unwrap();
        let mut noise = vec![0u8; 200_000];
        rand::thread_rng().fill_bytes(&mut noise);
        write_tree(
            src.path(),
            &[
                ("noise.bin".into(), noise.clone()),
                ("photo.jpg".into(), b"small but already compressed".to_vec()),
                ("page.html".into(), b"<p>again</p>".repeat(5000)),
            ],
        );
        let out = tempfile::tempdir().unwrap();
        let zip_path = out.path().join("a.zip");
        pack(src.path(), &zip_path, LIMITS).unwrap();
        let mut z = zip::ZipArchive::new(File::open(&zip_path).unwrap()).unwrap();
        let method = |z: &mut zip::ZipArchive<File>, n: &str| z.by_name(n).unwrap().compression();
        assert_eq!(method(&mut z, "noise.bin"), CompressionMethod::Stored);
        assert_eq!(method(&mut z, "photo.jpg"), CompressionMethod::Stored);
        assert_eq!(method(&mut z, "page.html"), CompressionMethod::Deflated);
        let mut back = Vec::new();
        z.by_name("noise.bin")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, noise);
    }

    #[test]
    fn limits_are_enforced() {
        let src = tempfile::tempdir().unwrap();
        write_tree(
            src.path(),
            &[("a".into(), vec![0; 10]), ("b".into(), vec![0; 10])],
        );
        let out = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            pack(
                src.path(),
                out.path(),
                PackLimits {
                    max_files: 1,
                    max_bytes: 100
                }
            ),
            Err(PackError::TooManyFiles(1))
        ));
        assert!(matches!(
            pack(
                src.path(),
                out.path(),
                PackLimits {
                    max_files: 9,
                    max_bytes: 15
                }
            ),
            Err(PackError::TooLarge(15))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn the_same_tree_packs_to_the_same_bytes(
            files in proptest::collection::btree_map("[a-c]{1,3}(/[a-c]{1,3}){0,2}\\.[a-z]{1,3}", proptest::collection::vec(any::<u8>(), 0..2048), 1..12)
        ) {
            let files: Vec<_> = files.into_iter().collect();
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            write_tree(a.path(), &files);
            let mut reversed = files.clone();
            reversed.reverse();
            write_tree(b.path(), &reversed); // different creation order and mtimes
            let out = tempfile::tempdir().unwrap();
            let pa = pack(a.path(), &out.path().join("a.zip"), LIMITS);
            let pb = pack(b.path(), &out.path().join("b.zip"), LIMITS);
            // Paths that are both a file and a directory prefix cannot be written; skip those cases.
            if let (Ok(pa), Ok(pb)) = (pa, pb) {
                prop_assert_eq!(&pa.sha256, &pb.sha256);
                prop_assert_eq!(std::fs::read(out.path().join("a.zip")).unwrap(), std::fs::read(out.path().join("b.zip")).unwrap());
            }
        }
    }
}

//! The sites this peer serves: unpacking an artifact beside the version being
//! served, with zip-slip, symlink and zip-bomb protection, and switching a
//! site's `current` link atomically so no request sees half a site.
//!
//! Layout: `sites/<name>/versions/<deployment id>/…` and
//! `sites/<name>/current → versions/<deployment id>`.

use crate::unpack::{unpack, Done, UnpackError, UnpackLimits};
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

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
    use crate::unpack::tests::{zip_with, LIMITS};
    use std::fs::File;

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

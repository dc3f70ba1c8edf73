//! Reading an artifact back from its blocks: a `Read + Seek` over the
//! store that verifies each block as it goes, and `assemble` to a file.

use super::*;

/// A manifest's blocks read as one seekable file (for unzipping without
/// assembling the zip first). Holds one block in memory.
pub struct ArtifactReader<S, M> {
    store: S,
    manifest: M,
    offsets: Vec<u64>,
    pos: u64,
    current: Option<(usize, Vec<u8>)>,
}

impl<S: Borrow<BlockStore>, M: Borrow<Manifest>> ArtifactReader<S, M> {
    /// Reads `manifest`'s artifact from `store` (owned or borrowed).
    pub fn new(store: S, manifest: M) -> Self {
        let offsets = manifest.borrow().offsets();
        Self {
            store,
            manifest,
            offsets,
            pos: 0,
            current: None,
        }
    }

    /// The block holding byte `pos` of the artifact.
    pub fn block_at(&self, pos: u64) -> usize {
        self.offsets
            .partition_point(|o| *o <= pos)
            .saturating_sub(1)
    }
}

impl<S: Borrow<BlockStore>, M: Borrow<Manifest>> Read for ArtifactReader<S, M> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let manifest = self.manifest.borrow();
        if self.pos >= manifest.size || buf.is_empty() {
            return Ok(0);
        }
        // The block holding `pos`: the last offset at or before it.
        let i = self.block_at(self.pos);
        if self.current.as_ref().map(|(c, _)| *c) != Some(i) {
            let data = self
                .store
                .borrow()
                .get(&manifest.hash(i))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.current = Some((i, data));
        }
        let Some((_, data)) = &self.current else {
            return Ok(0);
        };
        let within = (self.pos - self.offsets[i]) as usize;
        let n = buf.len().min(data.len().saturating_sub(within));
        buf[..n].copy_from_slice(&data[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<S: Borrow<BlockStore>, M: Borrow<Manifest>> Seek for ArtifactReader<S, M> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.manifest.borrow().size as i128;
        let target = match to {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = u64::try_from(target).unwrap_or(u64::MAX);
        Ok(self.pos)
    }
}

/// Writes an artifact's bytes out as one file (for tests and tools).
pub fn assemble(
    store: &BlockStore,
    manifest: &Manifest,
    out: &mut impl Write,
) -> Result<u64, BlockError> {
    Ok(io::copy(&mut store.reader(manifest), out)?)
}

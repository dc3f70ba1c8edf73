//! A manifest: the blocks of an artifact in order with their sizes, the
//! whole file's size and sha256. Its encoding is checked on decode (version,
//! sizes, count) and its sha256 is the artifact id.

use super::*;

/// The list of blocks that make one artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u8,
    /// Size of the whole artifact.
    pub size: u64,
    /// sha256 of the whole artifact.
    pub sha256: ByteBuf,
    /// The blocks' hashes, 32 bytes each, in order.
    pub hashes: ByteBuf,
    /// The blocks' sizes, in order.
    pub sizes: Vec<u32>,
}

impl Manifest {
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// The hash of block `i` (`i < len()`, checked by `validate`).
    pub fn hash(&self, i: usize) -> Hash {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.hashes[i * 32..i * 32 + 32]);
        out
    }

    pub fn size_of(&self, i: usize) -> u64 {
        u64::from(self.sizes[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        cbor4ii::serde::to_vec(Vec::new(), self).unwrap_or_default()
    }

    /// The artifact id: the sha256 of the encoded manifest.
    pub fn id(&self) -> Hash {
        sha256(&self.encode())
    }

    /// Decodes a manifest received from anywhere, checking it is the one
    /// named `id` and internally consistent.
    pub fn decode(bytes: &[u8], id: &Hash) -> Result<Self, BlockError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(BlockError::BadManifest(format!("{} bytes", bytes.len())));
        }
        if &sha256(bytes) != id {
            return Err(BlockError::BadManifest("does not match its id".into()));
        }
        let m: Manifest = cbor4ii::serde::from_slice(bytes)
            .map_err(|e| BlockError::BadManifest(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), BlockError> {
        let bad = |s: &str| Err(BlockError::BadManifest(s.into()));
        if self.v != MANIFEST_VERSION {
            return bad("unknown version");
        }
        if self.sha256.len() != 32 || self.hashes.len() != self.sizes.len() * 32 {
            return bad("hash lengths");
        }
        if self.sizes.len() > MAX_BLOCKS {
            return bad("too many blocks");
        }
        if self.sizes.iter().any(|s| *s == 0 || *s > MAX_CHUNK) {
            return bad("block size out of range");
        }
        if self.sizes.iter().map(|s| u64::from(*s)).sum::<u64>() != self.size {
            return bad("sizes do not add up");
        }
        Ok(())
    }

    /// Offset of each block in the artifact, plus the end.
    pub fn offsets(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.len() + 1);
        let mut at = 0u64;
        out.push(0);
        for s in &self.sizes {
            at += u64::from(*s);
            out.push(at);
        }
        out
    }
}

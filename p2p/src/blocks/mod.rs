//! Content-addressed blocks on disk, and the manifests that make artifacts
//! of them. An artifact (any file) is cut into content-defined chunks with
//! FastCDC; each chunk is a block named by its sha256. A manifest lists the
//! blocks in order with their sizes, plus the whole file's size and sha256;
//! the sha256 of the encoded manifest is the artifact id.
//!
//! Chunk sizes are 16/64/256 KiB (min/avg/max): small enough that an edit to
//! one page of a deterministic zip moves a few blocks, large enough that a
//! 10 GB artifact is ~160k blocks (a 6 MB manifest) and per-block overheads
//! (a file, a hash, a frame) stay well under 1 % of the bytes.
//!
//! Layout: `blocks/<2 hex>/<64 hex>` and `manifests/<64 hex>`. Blocks are
//! written to a temporary file and hard-linked into place (so a block is
//! either absent or whole, and two writers of one block do not race), and
//! verified whenever they are read for use. Nothing here holds more than
//! one block of an artifact in memory.

mod manifest;
mod reader;
mod store;

pub use manifest::Manifest;
pub use reader::{assemble, ArtifactReader};
pub use store::{BlockStore, MANIFEST_MIN_AGE};

use crate::locks::RwLockExt;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use std::borrow::Borrow;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A block or artifact id: a sha256.
pub type Hash = [u8; 32];

pub const MIN_CHUNK: u32 = 16 * 1024;
pub const AVG_CHUNK: u32 = 64 * 1024;
pub const MAX_CHUNK: u32 = 256 * 1024;
/// Most blocks one artifact may have (about 28 GB at the average size).
pub const MAX_BLOCKS: usize = 1 << 19;
/// Largest encoded manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 20 * 1024 * 1024;
const MANIFEST_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block {0} does not match its hash")]
    Corrupt(String),
    #[error("block {0} is missing")]
    Missing(String),
    #[error("manifest is invalid: {0}")]
    BadManifest(String),
    #[error("block store: {0}")]
    Io(#[from] io::Error),
}

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

pub fn from_hex(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

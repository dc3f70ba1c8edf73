//! Order-independent digests of a table, for anti-entropy: rows fall into
//! 256 buckets by the hash of their key; a bucket's digest is the XOR of its
//! rows' hashes, so it can be updated in O(1) on every write, and two peers
//! holding the same rows have the same digests whatever order they wrote
//! them in.

use sha2::{Digest as _, Sha256};

pub const BUCKETS: usize = 256;
pub type Hash = [u8; 32];

/// The bucket a key belongs to, the same on every peer.
pub fn bucket_of(key: &[u8]) -> u8 {
    Sha256::digest(key)[0]
}

/// Hash of one row (key and encoded value).
pub fn row_hash(key: &[u8], value: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(value);
    h.finalize().into()
}

/// The digests of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDigest {
    pub buckets: Vec<Hash>,
    pub rows: u64,
}

impl Default for TableDigest {
    fn default() -> Self {
        Self {
            buckets: vec![[0; 32]; BUCKETS],
            rows: 0,
        }
    }
}

fn xor(into: &mut Hash, other: &Hash) {
    for (a, b) in into.iter_mut().zip(other) {
        *a ^= b;
    }
}

impl TableDigest {
    /// Accounts for a row changing from `old` to `new` (either may be absent).
    pub fn update(&mut self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        let bucket = &mut self.buckets[usize::from(bucket_of(key))];
        if let Some(old) = old {
            xor(bucket, &row_hash(key, old));
            self.rows = self.rows.saturating_sub(1);
        }
        if let Some(new) = new {
            xor(bucket, &row_hash(key, new));
            self.rows += 1;
        }
    }

    /// One hash over every bucket: equal roots mean equal tables.
    pub fn root(&self) -> Hash {
        let mut h = Sha256::new();
        for b in &self.buckets {
            h.update(b);
        }
        h.update(self.rows.to_be_bytes());
        h.finalize().into()
    }

    /// Buckets whose digests differ from `other`'s.
    pub fn differing(&self, other: &[Hash]) -> Vec<u8> {
        (0..BUCKETS)
            .filter(|&i| other.get(i) != Some(&self.buckets[i]))
            .map(|i| i as u8)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn digests_ignore_write_order(rows in proptest::collection::btree_map(any::<Vec<u8>>(), any::<Vec<u8>>(), 0..30)) {
            let mut forward = TableDigest::default();
            for (k, v) in &rows { forward.update(k, None, Some(v)); }
            let mut backward = TableDigest::default();
            for (k, v) in rows.iter().rev() {
                backward.update(k, None, Some(b"stale"));
                backward.update(k, Some(b"stale"), Some(v));
            }
            prop_assert_eq!(forward.root(), backward.root());
            prop_assert!(forward.differing(&backward.buckets).is_empty());
        }
    }

    #[test]
    fn a_changed_row_changes_exactly_its_bucket() {
        let mut a = TableDigest::default();
        a.update(b"k1", None, Some(b"v1"));
        a.update(b"k2", None, Some(b"v2"));
        let mut b = a.clone();
        b.update(b"k2", Some(b"v2"), Some(b"v3"));
        assert_ne!(a.root(), b.root());
        assert_eq!(a.differing(&b.buckets), vec![bucket_of(b"k2")]);
    }
}

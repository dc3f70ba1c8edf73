//! An artifact this peer can serve, wholly or in part: its manifest, which
//! of its blocks are here (a bitfield, and a watch that moves whenever one
//! arrives), and which of them no one was sent yet, so that a peer holding
//! blocks only it has (the builder, at first) sends each once before a
//! second copy of any.

use super::frame::{bit, clear_bit, set_bit};
use super::HOLD;
use crate::blocks::{BlockStore, Manifest};
use crate::locks::LockExt;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// An artifact this peer can serve (wholly or in part).
pub struct Held {
    pub manifest: Arc<Manifest>,
    pub(super) bits: Mutex<Vec<u8>>,
    pub(super) count: AtomicUsize,
    /// Bumped whenever a block arrives.
    pub(super) changed: watch::Sender<u64>,
    pub(super) sends: Mutex<Sends>,
}

/// Which blocks held here no one was sent yet, and which went out lately
/// as first copies (see [`HOLD`]).
pub(super) struct Sends {
    /// Blocks that were here without being fetched (a local build, or the
    /// store at start) and have not been sent since.
    pub(super) unsent: Vec<u8>,
    pub(super) unsent_count: usize,
    /// First copies sent within [`HOLD`], oldest first, and the same as a set.
    pub(super) recent: VecDeque<(Instant, u32)>,
    pub(super) recent_set: HashSet<u32>,
}

impl Sends {
    /// `unsent` blocks (a bitmap) of which `unsent_count` are set.
    pub(super) fn new(unsent: Vec<u8>, unsent_count: usize) -> Self {
        Self {
            unsent,
            unsent_count,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        }
    }

    pub(super) fn fresh(&mut self, i: usize) {
        if !bit(&self.unsent, i) {
            set_bit(&mut self.unsent, i);
            self.unsent_count += 1;
        }
    }

    pub(super) fn gone(&mut self, i: usize) {
        if bit(&self.unsent, i) {
            clear_bit(&mut self.unsent, i);
            self.unsent_count -= 1;
        }
    }

    /// Whether block `i` may go out now: a first copy always does (and is
    /// remembered); a second one of a first copy sent within [`HOLD`] waits
    /// while blocks no one was sent yet remain.
    pub(super) fn may_send(&mut self, i: u32, now: Instant) -> bool {
        while let Some((t, b)) = self.recent.front().copied() {
            if now.duration_since(t) < HOLD {
                break;
            }
            self.recent.pop_front();
            self.recent_set.remove(&b);
        }
        if bit(&self.unsent, i as usize) {
            self.gone(i as usize);
            self.recent.push_back((now, i));
            self.recent_set.insert(i);
            return true;
        }
        self.unsent_count == 0 || !self.recent_set.contains(&i)
    }
}

impl Held {
    pub(super) fn new(manifest: Manifest, store: &BlockStore) -> Self {
        let mut bits = vec![0u8; manifest.len().div_ceil(8)];
        let mut count = 0;
        for i in 0..manifest.len() {
            if store.has(&manifest.hash(i)) {
                set_bit(&mut bits, i);
                count += 1;
            }
        }
        Self {
            manifest: Arc::new(manifest),
            sends: Mutex::new(Sends::new(bits.clone(), count)),
            bits: Mutex::new(bits),
            count: AtomicUsize::new(count),
            changed: watch::channel(0).0,
        }
    }

    pub(super) fn sends(&self) -> std::sync::MutexGuard<'_, Sends> {
        self.sends.lock_unpoisoned()
    }

    pub(super) fn bits(&self) -> Vec<u8> {
        self.bits.lock_unpoisoned().clone()
    }

    pub fn has(&self, i: usize) -> bool {
        bit(&self.bits.lock_unpoisoned(), i)
    }

    pub(super) fn mark(&self, i: usize, present: bool) {
        {
            let mut bits = self.bits.lock_unpoisoned();
            if bit(&bits, i) == present {
                return;
            }
            if present {
                set_bit(&mut bits, i);
                self.count.fetch_add(1, Ordering::Relaxed);
            } else {
                clear_bit(&mut bits, i);
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if !present {
            self.sends().gone(i);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Marks the blocks that reached the store by another way (a local
    /// build imported them) as held.
    pub(super) fn refresh(&self, store: &BlockStore) {
        for i in 0..self.manifest.len() {
            if !self.has(i) && store.has(&self.manifest.hash(i)) {
                self.sends().fresh(i);
                self.mark(i, true);
            }
        }
    }

    /// Blocks held.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn complete(&self) -> bool {
        self.count() == self.manifest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_first_copy_goes_before_a_second_one_for_a_while() {
        let ms = Duration::from_millis;
        let mut sends = Sends::new(vec![0b0000_0111], 3);
        let t0 = Instant::now();
        // First copies go; a second one waits while blocks 1 and 2 do.
        assert!(sends.may_send(0, t0));
        assert!(!sends.may_send(0, t0 + ms(100)));
        // A block that arrived by fetch is held elsewhere: it always goes.
        assert!(sends.may_send(5, t0 + ms(100)));
        assert!(sends.may_send(5, t0 + ms(100)));
        // Not for longer than HOLD.
        assert!(sends.may_send(0, t0 + HOLD));
        assert!(sends.may_send(1, t0 + HOLD));
        assert!(!sends.may_send(1, t0 + HOLD + ms(1)));
        // Once every first copy went, nothing waits.
        assert!(sends.may_send(2, t0 + HOLD + ms(2)));
        assert!(sends.may_send(1, t0 + HOLD + ms(3)));
        assert!(sends.may_send(2, t0 + HOLD + ms(3)));
        // A block lost here is no longer waited for.
        let mut sends = Sends::new(vec![0b0000_0011], 2);
        assert!(sends.may_send(0, t0));
        sends.gone(1);
        assert!(sends.may_send(0, t0 + ms(1)));
    }
}

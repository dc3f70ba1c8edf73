//! Hybrid logical clock: wall-clock milliseconds plus a counter, so that
//! timestamps from different peers are totally ordered, never go backwards on
//! one peer, and stay close to real time.

use crate::locks::LockExt;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// One hybrid-logical-clock reading. Ordered by `(wall_ms, counter)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as the writer saw it (or later).
    pub wall_ms: u64,
    /// Tie-breaker for events within the same millisecond.
    pub counter: u32,
}

impl Hlc {
    /// Big-endian bytes, so that byte order equals clock order (for sled keys).
    pub fn to_be_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.wall_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.counter.to_be_bytes());
        out
    }
}

/// A peer's clock. Cheap to share; `now` is monotonic even if the wall clock
/// steps back.
#[derive(Debug, Default)]
pub struct Clock {
    /// The last reading handed out or observed.
    last: Mutex<Hlc>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh reading, strictly greater than every earlier one.
    pub fn now(&self) -> Hlc {
        let mut last = self.last.lock_unpoisoned();
        let wall = wall_ms();
        let next = if wall > last.wall_ms {
            Hlc {
                wall_ms: wall,
                counter: 0,
            }
        } else {
            Hlc {
                wall_ms: last.wall_ms,
                counter: last.counter.saturating_add(1),
            }
        };
        *last = next;
        next
    }

    /// Takes note of a remote reading so that later local readings order after it.
    pub fn observe(&self, remote: Hlc) {
        let mut last = self.last.lock_unpoisoned();
        if remote > *last {
            *last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_strictly_increase_and_follow_observed() {
        let clock = Clock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b > a);
        let far = Hlc {
            wall_ms: b.wall_ms + 60_000,
            counter: 7,
        };
        clock.observe(far);
        let c = clock.now();
        assert!(c > far, "{c:?} must order after observed {far:?}");
    }

    #[test]
    fn byte_order_is_clock_order() {
        let a = Hlc {
            wall_ms: 1,
            counter: u32::MAX,
        };
        let b = Hlc {
            wall_ms: 2,
            counter: 0,
        };
        assert!(a.to_be_bytes() < b.to_be_bytes());
    }
}

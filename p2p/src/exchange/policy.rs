//! The pure rules of a fetch, apart from the driver that acts on them: when
//! a source counts as queued, how many near and far sources hold each
//! block, which blocks are this peer's to bring from another region (its
//! crew's shares), its share of what a seed sends, and how a source's
//! window of bytes in flight grows and shrinks.

use super::frame::bit;
use super::{MAX_WINDOW, QUEUE_TICKS, WINDOW};
use crate::picker::Picker;
use libp2p::PeerId;
use std::time::Duration;

/// Whether a source's answers show a queue there: 2.5 times as slow as its
/// quickest and slower by more than a slack, for [`super::QUEUE_TICKS`] ticks in a
/// row.
#[derive(Default)]
pub(super) struct QueueWatch {
    slow_ticks: u32,
}

impl QueueWatch {
    /// One tick's mean answer time: whether the source counts as queued now.
    pub(super) fn tick(&mut self, mean: Duration, quickest: Duration, slack: Duration) -> bool {
        let slow = mean * 2 > quickest * 5 && mean > quickest + slack;
        self.slow_ticks = if slow {
            self.slow_ticks.saturating_add(1)
        } else {
            0
        };
        self.queued()
    }

    pub(super) fn queued(&self) -> bool {
        self.slow_ticks >= QUEUE_TICKS
    }
}

/// How many sources hold each block still needed: all of them, for the
/// picker's rarest-first order, and beside it the near ones without a queue,
/// which keep far sources off what is at hand. The two counts move together.
pub(super) struct Holders {
    pub(super) picker: Picker,
    /// Per block, how many near sources without a queue hold it.
    near: Vec<u8>,
}

impl Holders {
    pub(super) fn new(picker: Picker, n: usize) -> Self {
        Self {
            picker,
            near: vec![0; n],
        }
    }

    /// A source now holds block `i`; `near`: see [`super::Source`].
    pub(super) fn gained(&mut self, i: usize, near: bool) {
        self.picker.gained(i);
        if near {
            self.near[i] = self.near[i].saturating_add(1);
        }
    }

    /// A source no longer holds block `i`.
    pub(super) fn lost(&mut self, i: usize, near: bool) {
        self.picker.lost(i);
        if near {
            self.near[i] = self.near[i].saturating_sub(1);
        }
    }

    /// A source holds every block of `bits`.
    pub(super) fn gained_all(&mut self, bits: &[u8], near: bool) {
        for i in (0..self.near.len()).filter(|i| bit(bits, *i)) {
            self.gained(i, near);
        }
    }

    /// A source no longer holds the blocks of `bits`.
    pub(super) fn lost_all(&mut self, bits: &[u8], near: bool) {
        for i in (0..self.near.len()).filter(|i| bit(bits, *i)) {
            self.lost(i, near);
        }
    }

    /// A near source's queue came (`queued`) or went: what it holds stops
    /// or starts keeping far sources off.
    pub(super) fn queue(&mut self, bits: &[u8], queued: bool) {
        for i in (0..self.near.len()).filter(|i| bit(bits, *i)) {
            self.near[i] = if queued {
                self.near[i].saturating_sub(1)
            } else {
                self.near[i].saturating_add(1)
            };
        }
    }

    /// Whether a near source without a queue holds block `i`.
    pub(super) fn near_holds(&self, i: usize) -> bool {
        self.near[i] > 0
    }
}

/// The peers of one region fetching an artifact together: this one and
/// its nearby sources that are still fetching it and lately got a block
/// (within [`super::ACTIVE`]). Each asks other regions only for its own share of
/// what none of them holds, and gets the rest from the others nearby once
/// they have it, so a block crosses into the region about once instead of
/// once per peer there. A member that stops getting blocks (or queues)
/// drops out and its share falls to the rest: one that cannot reach other
/// regions at all delays its share by [`super::ACTIVE`] once it has the rest.
/// Views that differ only cost a few doubles.
pub(super) struct Crew {
    size: u64,
    rank: u64,
}

impl Crew {
    pub(super) fn new(local: PeerId, fellows: impl Iterator<Item = PeerId>) -> Self {
        let mut peers: Vec<PeerId> = fellows.filter(|p| *p != local).collect();
        peers.push(local);
        peers.sort_unstable();
        let rank = peers.iter().position(|p| *p == local).unwrap_or(0);
        Self {
            size: peers.len() as u64,
            rank: rank as u64,
        }
    }

    /// Whether block `i` is this peer's to bring from afar.
    pub(super) fn brings(&self, i: usize) -> bool {
        mix(i as u64 ^ CREW_SALT) % self.size == self.rank
    }
}

/// Keeps a crew's shares apart from [`share`]'s.
pub(super) const CREW_SALT: u64 = 0x005e_edc0_de0f_c4e3;

/// The next window of a source whose answers took `mean` on average lately
/// and `quickest` at best (about one round trip). Answers about as quick as
/// the quickest mean nothing queues at the source: if the window is what
/// limits it (`busy`), it doubles. Answers much slower mean a queue there
/// (its link is shared, or full): the window shrinks back towards
/// [`super::WINDOW`], since asking more would only make the queue, and the wait
/// for the last blocks of a fetch, longer. So a far, fast source gets a
/// window of its bandwidth-delay product, and a busy one nearby no more
/// than it needs.
pub(super) fn next_window(window: u64, busy: bool, mean: Duration, quickest: Duration) -> u64 {
    if busy && mean * 2 <= quickest * 3 {
        (window * 2).min(MAX_WINDOW)
    } else if mean * 2 > quickest * 5 {
        (window / 4 * 3).max(WINDOW)
    } else {
        window
    }
}

/// The share of what `local` asks of `source`: its place among the peers
/// that may fetch from that source (itself and its other sources, as it
/// sees them), and how many there are. Among equally rare blocks each
/// fetcher asks first for those that hash to its place, so fetchers drawing
/// on one seed at once ask it for different blocks instead of the same ones
/// (which the seed would then send twice, on the link every first copy has
/// to leave through). Views that differ only cost a few doubles.
pub(super) fn share<'a>(
    local: &'a PeerId,
    sources: impl Iterator<Item = &'a PeerId>,
    source: &PeerId,
) -> (u64, u64) {
    let mut peers: Vec<&PeerId> = sources
        .filter(|p| *p != source && *p != local)
        .chain(std::iter::once(local))
        .collect();
    peers.sort_unstable();
    let rank = peers.iter().position(|p| *p == local).unwrap_or(0);
    (rank as u64, peers.len() as u64)
}

/// A cheap 64-bit mix (splitmix64), for per-source random orders.
pub(super) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::exchange::{QUEUED, SEED_QUEUED};

    #[test]
    fn near_counts_follow_sources_and_their_queues() {
        let mut h = Holders::new(Picker::new(10, |_| true, 1), 10);
        let (a, b) = ([0b0000_0101, 0], [0b0000_0100, 0b10]);
        h.gained_all(&a, true);
        h.gained_all(&b, false);
        let near: Vec<usize> = (0..10).filter(|i| h.near_holds(*i)).collect();
        assert_eq!(near, [0, 2], "only the near source counts");
        h.queue(&a, true);
        assert!((0..10).all(|i| !h.near_holds(i)), "a queue stops counting");
        h.queue(&a, false);
        h.lost(0, true);
        h.gained(9, true);
        let near: Vec<usize> = (0..10).filter(|i| h.near_holds(*i)).collect();
        assert_eq!(near, [2, 9]);
        h.lost_all(&[0b0000_0100, 0b10], true);
        assert!((0..10).all(|i| !h.near_holds(i)));
        // A second near holder keeps a block near when the first goes.
        h.gained(3, true);
        h.gained(3, true);
        h.lost(3, true);
        assert!(h.near_holds(3));
    }

    #[test]
    fn a_crew_splits_what_crosses_between_its_members() {
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        // Each member sees the others in its own order.
        let crews: Vec<Crew> = peers
            .iter()
            .map(|p| Crew::new(*p, peers.iter().rev().copied()))
            .collect();
        let mut per_member = [0usize; 4];
        for i in 0..4000 {
            let bringers: Vec<usize> = (0..4).filter(|m| crews[*m].brings(i)).collect();
            assert_eq!(bringers.len(), 1, "block {i} is brought by {bringers:?}");
            per_member[bringers[0]] += 1;
        }
        assert!(
            per_member.iter().all(|n| (800..1200).contains(n)),
            "{per_member:?}"
        );
        // Alone, a peer brings everything; a member that drops out leaves its
        // share to the rest.
        let alone = Crew::new(peers[0], std::iter::empty());
        assert!((0..100).all(|i| alone.brings(i)));
        let three: Vec<Crew> = peers[..3]
            .iter()
            .map(|p| Crew::new(*p, peers[..3].iter().copied()))
            .collect();
        assert!((0..1000).all(|i| three.iter().filter(|c| c.brings(i)).count() == 1));
    }

    #[test]
    fn a_queue_counts_only_once_it_lasts() {
        let ms = Duration::from_millis;
        let mut watch = QueueWatch::default();
        // A moment without CPU: one slow tick, then quick ones again.
        assert!(!watch.tick(ms(300), ms(2), SEED_QUEUED));
        assert!(!watch.tick(ms(3), ms(2), SEED_QUEUED));
        assert!(!watch.tick(ms(300), ms(2), SEED_QUEUED));
        assert!(!watch.tick(ms(300), ms(2), SEED_QUEUED));
        // A queue at its link: slow tick after tick.
        assert!(watch.tick(ms(300), ms(2), SEED_QUEUED));
        assert!(watch.tick(ms(250), ms(2), SEED_QUEUED));
        // One quick tick clears it.
        assert!(!watch.tick(ms(20), ms(2), SEED_QUEUED));
        // Within the slack, or under 2.5 times the quickest, is no queue.
        for (mean, quickest, slack) in [
            (ms(40), ms(2), SEED_QUEUED),
            (ms(240), ms(100), SEED_QUEUED),
            (ms(900), ms(2), QUEUED),
        ] {
            let mut watch = QueueWatch::default();
            for _ in 0..2 * QUEUE_TICKS {
                assert!(!watch.tick(mean, quickest, slack));
            }
        }
    }

    #[test]
    fn windows_grow_while_nothing_queues_and_shrink_when_it_does() {
        let ms = Duration::from_millis;
        // Far and fast: answers in about one round trip, window the limit.
        assert_eq!(next_window(WINDOW, true, ms(110), ms(100)), 2 * WINDOW);
        // Not using its window: no reason to grow it.
        assert_eq!(next_window(WINDOW, false, ms(110), ms(100)), WINDOW);
        // A queue at the source: back down, never below the floor.
        assert_eq!(next_window(4 * WINDOW, true, ms(400), ms(100)), 3 * WINDOW);
        assert_eq!(next_window(WINDOW, true, ms(900), ms(30)), WINDOW);
        // In between: hold.
        assert_eq!(next_window(4 * WINDOW, true, ms(200), ms(100)), 4 * WINDOW);
        // Never beyond the ceiling.
        assert_eq!(next_window(MAX_WINDOW, true, ms(100), ms(100)), MAX_WINDOW);
    }

    #[test]
    fn fetchers_of_one_seed_take_different_shares() {
        let seed = PeerId::random();
        let fetchers: Vec<PeerId> = (0..7).map(|_| PeerId::random()).collect();
        // Each fetcher's sources: the seed and every other fetcher.
        let shares: Vec<(u64, u64)> = fetchers
            .iter()
            .map(|me| {
                let sources: Vec<PeerId> = std::iter::once(seed)
                    .chain(fetchers.iter().filter(|p| *p != me).copied())
                    .collect();
                share(me, sources.iter(), &seed)
            })
            .collect();
        let mut ranks: Vec<u64> = shares.iter().map(|(r, _)| *r).collect();
        ranks.sort_unstable();
        assert_eq!(ranks, (0..7).collect::<Vec<u64>>());
        assert!(shares.iter().all(|(_, parts)| *parts == 7));
        // So every block is the first choice of exactly one of them.
        for i in 0..1000u64 {
            let takers = shares
                .iter()
                .filter(|(rank, parts)| mix(i) % parts == *rank)
                .count();
            assert_eq!(takers, 1);
        }
        // A fetcher alone with the seed has it all.
        assert_eq!(share(&fetchers[0], [seed].iter(), &seed), (0, 1));
    }
}

//! Which blocks a fetch asks a source for, without scanning the whole
//! artifact each time (a 10 GB artifact has some 160,000 blocks, and a
//! source asks again after every few blocks).
//!
//! The blocks still needed are kept in one array, grouped by how many
//! sources hold them, rarest first, as in libtorrent's piece picker: a
//! change in a block's availability moves it to the edge of its group and
//! across, which is O(1); a block that arrives leaves in O(groups). A pick
//! walks the rarest groups first and stops as soon as it has enough, so a
//! source that holds most of what is missing (a seed) is served after a
//! short walk. A source that holds little of it could make that walk long,
//! so the walk is bounded and such a source is served from its own bitmap
//! instead, 64 blocks per word.

/// Availability groups kept apart; blocks held by more sources share the last.
const GROUPS: usize = 16;
/// Entries a pick walks before it turns to the source's bitmap.
const WALK: usize = 4096;
/// Entries of one group a pick walks for its own share once it has enough
/// others' (its share may be all asked for already).
const SHARE_WALK: usize = 1024;
const NOWHERE: u32 = u32::MAX;

pub(crate) struct Picker {
    /// Needed blocks, by availability group.
    order: Vec<u32>,
    /// Where each block is in `order`, or `NOWHERE` if not needed.
    pos: Vec<u32>,
    /// `start[g]..start[g + 1]` is group `g` in `order`.
    start: [u32; GROUPS + 1],
    /// Sources holding each block.
    avail: Vec<u16>,
}

/// What one source may be asked for.
pub(crate) struct Ask<'a> {
    /// The source's bitmap.
    pub bits: &'a [u8],
    /// Whether block `i` is in this fetcher's share at the source.
    pub mine: &'a dyn Fn(usize) -> bool,
    /// Whether block `i` may be asked for (not in flight, say).
    pub free: &'a dyn Fn(usize) -> bool,
    /// How many blocks at most.
    pub count: usize,
}

fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

impl Picker {
    /// A picker for `n` blocks, of which those for which `needed` holds are
    /// missing; no source holds any yet. Equally rare blocks are picked in
    /// an order drawn from `seed`, so that fetchers spread out and soon
    /// have something to give each other.
    pub(crate) fn new(n: usize, needed: impl Fn(usize) -> bool, seed: u64) -> Self {
        let mut order: Vec<u32> = (0..n).filter(|i| needed(*i)).map(|i| i as u32).collect();
        // Fisher-Yates, with a xorshift generator.
        let mut x = seed | 1;
        for k in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(k, (x % (k as u64 + 1)) as usize);
        }
        let mut pos = vec![NOWHERE; n];
        for (p, i) in order.iter().enumerate() {
            pos[*i as usize] = p as u32;
        }
        let mut start = [order.len() as u32; GROUPS + 1];
        start[0] = 0;
        Self {
            order,
            pos,
            start,
            avail: vec![0; n],
        }
    }

    #[cfg(test)]
    fn avail(&self, i: usize) -> u16 {
        self.avail[i]
    }

    pub(crate) fn needed(&self, i: usize) -> bool {
        self.pos[i] != NOWHERE
    }

    /// Needed blocks, rarest first (in no particular order within a group).
    pub(crate) fn missing(&self) -> impl Iterator<Item = usize> + '_ {
        self.order.iter().map(|i| *i as usize)
    }

    fn group(&self, i: usize) -> usize {
        usize::from(self.avail[i]).min(GROUPS - 1)
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.order.swap(a, b);
        self.pos[self.order[a] as usize] = a as u32;
        self.pos[self.order[b] as usize] = b as u32;
    }

    /// One more source holds block `i`.
    pub(crate) fn gained(&mut self, i: usize) {
        let g = self.group(i);
        self.avail[i] = self.avail[i].saturating_add(1);
        if self.pos[i] != NOWHERE && self.group(i) != g {
            // Last of group g, then first of group g + 1.
            let last = self.start[g + 1] as usize - 1;
            self.swap(self.pos[i] as usize, last);
            self.start[g + 1] -= 1;
        }
    }

    /// One source fewer holds block `i`.
    pub(crate) fn lost(&mut self, i: usize) {
        let g = self.group(i);
        self.avail[i] = self.avail[i].saturating_sub(1);
        if self.pos[i] != NOWHERE && self.group(i) != g {
            // First of group g, then last of group g - 1.
            let first = self.start[g] as usize;
            self.swap(self.pos[i] as usize, first);
            self.start[g] += 1;
        }
    }

    /// Block `i` is here: it is no longer needed.
    pub(crate) fn arrived(&mut self, i: usize) {
        if self.pos[i] == NOWHERE {
            return;
        }
        let g = self.group(i);
        // Move it to the end of its group, then shift each later group down
        // by one slot (its last entry fills the hole before it).
        let mut hole = self.start[g + 1] as usize - 1;
        self.swap(self.pos[i] as usize, hole);
        for h in g + 1..GROUPS {
            let end = self.start[h + 1] as usize;
            if end > self.start[h] as usize {
                self.swap(hole, end - 1);
                hole = end - 1;
            }
            self.start[h] -= 1;
        }
        self.order.pop();
        self.start[GROUPS] -= 1;
        self.pos[i] = NOWHERE;
    }

    /// Block `i` is needed again (its stored copy was lost).
    pub(crate) fn needed_again(&mut self, i: usize) {
        if self.pos[i] != NOWHERE {
            return;
        }
        // In at the very end (the last group), then down group by group.
        self.order.push(i as u32);
        self.pos[i] = self.order.len() as u32 - 1;
        self.start[GROUPS] += 1;
        let target = self.group(i);
        for h in (target + 1..GROUPS).rev() {
            let first = self.start[h] as usize;
            self.swap(self.pos[i] as usize, first);
            self.start[h] += 1;
        }
    }

    /// Whether any needed block that some source holds is `free`.
    pub(crate) fn any_free(&self, free: &dyn Fn(usize) -> bool) -> bool {
        self.order[self.start[1] as usize..]
            .iter()
            .any(|i| free(*i as usize))
    }

    /// Up to `ask.count` blocks to ask the source for: the rarest first and,
    /// among equally rare ones, this fetcher's share first (looked for among
    /// the first [`SHARE_WALK`] of them).
    pub(crate) fn pick(&self, ask: &Ask<'_>) -> Vec<usize> {
        let mut out = Vec::with_capacity(ask.count);
        let mut walked = 0;
        for g in 1..GROUPS {
            let group = &self.order[self.start[g] as usize..self.start[g + 1] as usize];
            let (mut mine, mut other) = (Vec::new(), Vec::new());
            let want = ask.count - out.len();
            for (k, &i) in group.iter().enumerate() {
                if other.len() == want && k >= SHARE_WALK {
                    break;
                }
                walked += 1;
                if walked > WALK {
                    return self.pick_by_bits(ask);
                }
                let i = i as usize;
                if !bit(ask.bits, i) || !(ask.free)(i) {
                    continue;
                }
                if (ask.mine)(i) {
                    mine.push(i);
                    if mine.len() == want {
                        break;
                    }
                } else if other.len() < want {
                    other.push(i);
                }
            }
            out.extend(mine.into_iter().chain(other).take(want));
            if out.len() == ask.count {
                break;
            }
        }
        out
    }

    /// [`Self::pick`] by walking the source's bitmap: what it holds and is
    /// needed here, ranked the same way.
    fn pick_by_bits(&self, ask: &Ask<'_>) -> Vec<usize> {
        let mut ranked: Vec<(u16, bool, usize)> = Vec::new();
        for (w, byte) in ask.bits.iter().enumerate() {
            if *byte == 0 {
                continue;
            }
            for b in 0..8 {
                let i = w * 8 + b;
                if byte & (1 << b) != 0
                    && i < self.pos.len()
                    && self.pos[i] != NOWHERE
                    && self.avail[i] > 0
                    && (ask.free)(i)
                {
                    ranked.push((self.avail[i].min(GROUPS as u16 - 1), !(ask.mine)(i), i));
                }
            }
        }
        if ranked.len() > ask.count {
            ranked.select_nth_unstable(ask.count);
            ranked.truncate(ask.count);
        }
        ranked.sort_unstable();
        ranked.into_iter().map(|(_, _, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(p: &Picker) {
        for (k, i) in p.order.iter().enumerate() {
            assert_eq!(p.pos[*i as usize], k as u32, "pos of {i}");
            let g = p.group(*i as usize);
            assert!(
                (p.start[g] as usize..p.start[g + 1] as usize).contains(&k),
                "block {i} (group {g}) at {k}, groups {:?}",
                p.start
            );
        }
        assert_eq!(p.start[GROUPS] as usize, p.order.len());
        let listed = p.pos.iter().filter(|x| **x != NOWHERE).count();
        assert_eq!(listed, p.order.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Gain(usize),
        Lose(usize),
        Arrive(usize),
        Again(usize),
    }

    fn op(n: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..n).prop_map(Op::Gain),
            2 => (0..n).prop_map(Op::Lose),
            2 => (0..n).prop_map(Op::Arrive),
            1 => (0..n).prop_map(Op::Again),
        ]
    }

    proptest! {
        /// Any mix of changes keeps every needed block in the group of its
        /// availability, and a pick is exactly what ranking every needed
        /// block the source holds would give (up to order within a rank).
        #[test]
        fn groups_stay_sorted_and_picks_match_a_full_ranking(
            ops in proptest::collection::vec(op(300), 0..2000),
            source in proptest::collection::vec(any::<bool>(), 300),
            count in 1usize..40,
        ) {
            let n = 300;
            let mut p = Picker::new(n, |i| !i.is_multiple_of(7), 42);
            for o in ops {
                match o {
                    Op::Gain(i) => p.gained(i),
                    Op::Lose(i) => if p.avail(i) > 0 { p.lost(i) },
                    Op::Arrive(i) => p.arrived(i),
                    Op::Again(i) => p.needed_again(i),
                }
            }
            check(&p);
            let mut bits = vec![0u8; n.div_ceil(8)];
            for (i, has) in source.iter().enumerate() {
                if *has { bits[i / 8] |= 1 << (i % 8); }
            }
            let mine = |i: usize| i.is_multiple_of(3);
            let free = |i: usize| !i.is_multiple_of(11);
            let ask = Ask { bits: &bits, mine: &mine, free: &free, count };
            let rank = |i: usize| (p.avail(i).min(GROUPS as u16 - 1), !mine(i));
            let mut all: Vec<(u16, bool)> = (0..n)
                .filter(|i| p.needed(*i) && bit(&bits, *i) && free(*i) && p.avail(*i) > 0)
                .map(rank)
                .collect();
            all.sort_unstable();
            all.truncate(count);
            let mut got: Vec<(u16, bool)> = p.pick(&ask).into_iter().map(rank).collect();
            got.sort_unstable();
            prop_assert_eq!(&got, &all);
            let mut by_bits: Vec<(u16, bool)> = p.pick_by_bits(&ask).into_iter().map(rank).collect();
            by_bits.sort_unstable();
            prop_assert_eq!(by_bits, all);
        }
    }

    #[test]
    fn a_seed_is_served_after_a_short_walk_and_a_sparse_source_by_its_bitmap() {
        let n = 100_000;
        let mut p = Picker::new(n, |_| true, 7);
        let seed = vec![0xffu8; n / 8];
        for i in 0..n {
            p.gained(i);
        }
        let mine = |i: usize| i % 7 == 3;
        let free = |_| true;
        let picks = p.pick(&Ask {
            bits: &seed,
            mine: &mine,
            free: &free,
            count: 8,
        });
        assert_eq!(picks.len(), 8);
        assert!(picks.iter().all(|i| mine(*i)));

        // With none of its share left, others' blocks, after a bounded walk.
        let none = |_: usize| false;
        let picks = p.pick(&Ask {
            bits: &seed,
            mine: &none,
            free: &free,
            count: 8,
        });
        assert_eq!(picks.len(), 8);

        // A source holding one block, far down the order.
        let mut sparse = vec![0u8; n / 8];
        sparse[(n - 1) / 8] |= 1 << ((n - 1) % 8);
        p.gained(n - 1);
        let picks = p.pick(&Ask {
            bits: &sparse,
            mine: &mine,
            free: &free,
            count: 8,
        });
        assert_eq!(picks, vec![n - 1]);
    }
}

//! Who builds a deployment: the same pure function on every peer, over that
//! peer's view of the mesh. Rendezvous (HRW) hashing of (key, peer) orders
//! the eligible peers (the key is the deployment's project, so that its
//! builds find their build cache); the least loaded of the top three wins, ties
//! broken by HRW order. HRW keeps peers agreeing even when their load
//! figures are a little stale: only the top three compare loads, and loads
//! are compared in steps of [`LOAD_STEP`].

use sha2::{Digest, Sha256};

/// How many of the HRW order compare their loads.
pub const TOP: usize = 3;
/// Loads closer than this count as equal (absorbs gossip staleness).
pub const LOAD_STEP: f64 = 0.5;

/// A peer that could build.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub load: f64,
    pub capabilities: Vec<String>,
}

/// The rendezvous weight of `peer` for `deployment`.
pub fn weight(deployment: &str, peer: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(deployment.as_bytes());
    h.update([0]);
    h.update(peer.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn load_class(load: f64) -> i64 {
    if load.is_finite() {
        (load.max(0.0) / LOAD_STEP).floor() as i64
    } else {
        i64::MAX
    }
}

/// Eligible peers (those with every capability in `needs`) in the order
/// they should claim `deployment`: the winner first, then its successors.
pub fn rank(deployment: &str, candidates: &[Candidate], needs: &[String]) -> Vec<String> {
    let mut eligible: Vec<(u64, &Candidate)> = candidates
        .iter()
        .filter(|c| needs.iter().all(|n| c.capabilities.contains(n)))
        .map(|c| (weight(deployment, &c.id), c))
        .collect();
    eligible.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let split = eligible.len().min(TOP);
    let (top, rest) = eligible.split_at_mut(split);
    // Stable sort: equal load classes keep their HRW order.
    top.sort_by_key(|(_, c)| load_class(c.load));
    top.iter()
        .chain(rest.iter())
        .map(|(_, c)| c.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peers(loads: &[f64]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(i, l)| Candidate {
                id: format!("peer-{i}"),
                load: *l,
                capabilities: vec!["build".into()],
            })
            .collect()
    }

    #[test]
    fn the_least_loaded_of_the_top_three_wins() {
        let c = peers(&[0.0; 5]);
        let idle = rank("d1", &c, &[]);
        assert_eq!(idle.len(), 5);
        let mut busy = c.clone();
        let first = busy.iter_mut().find(|p| p.id == idle[0]).unwrap();
        first.load = 3.0;
        let r = rank("d1", &busy, &[]);
        assert_eq!(
            r[0], idle[1],
            "the busy winner gives way to the next in HRW order"
        );
        assert_eq!(r[2], idle[0]);
        assert_eq!(
            &r[3..],
            &idle[3..],
            "beyond the top three, HRW order stands"
        );
    }

    #[test]
    fn capabilities_filter_candidates() {
        let mut c = peers(&[0.0, 0.0, 0.0]);
        c[1].capabilities.push("hugo".into());
        assert_eq!(rank("d", &c, &["hugo".into()]), vec!["peer-1".to_owned()]);
        assert!(rank("d", &c, &["zola".into()]).is_empty());
    }

    proptest! {
        #[test]
        fn the_same_view_elects_the_same_peer(
            loads in proptest::collection::vec(0.0f64..8.0, 1..12),
            id in "[0-9A-Z]{26}",
            seed in any::<u64>(),
        ) {
            let c = peers(&loads);
            let mut shuffled = c.clone();
            let n = shuffled.len();
            for i in 0..n { shuffled.swap(i, (seed as usize).wrapping_add(i * 31) % n); }
            prop_assert_eq!(rank(&id, &c, &[]), rank(&id, &shuffled, &[]));
        }
    }

    /// Peers whose load figures differ a little (gossip staleness) still
    /// agree on the winner for most deployments. Prints the rate.
    #[test]
    fn slightly_different_views_mostly_agree() {
        let mut rng_state = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            (rng_state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (deployments, mut agreed) = (1000, 0);
        for d in 0..deployments {
            let truth: Vec<f64> = (0..10)
                .map(|_| (next() * 4.0).floor() + next() * 0.3)
                .collect();
            // Another peer's view: each load off by up to ±0.2.
            let seen: Vec<f64> = truth
                .iter()
                .map(|l| (l + (next() - 0.5) * 0.4).max(0.0))
                .collect();
            let id = format!("deployment-{d}");
            if rank(&id, &peers(&truth), &[])[0] == rank(&id, &peers(&seen), &[])[0] {
                agreed += 1;
            }
        }
        let rate = agreed as f64 / deployments as f64;
        println!(
            "election agreement with ±0.2 load noise over {deployments} deployments: {:.1}%",
            rate * 100.0
        );
        assert!(rate > 0.8, "agreement {rate}");
    }
}

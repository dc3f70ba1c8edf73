//! The node's own Prometheus figures: deployments by status, build
//! durations, and the block exchange's counters.

use p2p::locks::LockExt;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the build-duration histogram.
const BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
];

#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Per-bucket counts, then sum and count.
    builds: Mutex<([u64; BUCKETS.len()], f64, u64)>,
}

impl NodeMetrics {
    pub fn observe_build(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let mut b = self.builds.lock_unpoisoned();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                b.0[i] += 1;
            }
        }
        b.1 += secs;
        b.2 += 1;
    }

    pub fn render(&self, by_status: &[(&str, usize)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP shoal_deployments Deployments known to this peer, by status."
        );
        let _ = writeln!(out, "# TYPE shoal_deployments gauge");
        for (status, n) in by_status {
            let _ = writeln!(out, "shoal_deployments{{status=\"{status}\"}} {n}");
        }
        let b = self.builds.lock_unpoisoned();
        let _ = writeln!(
            out,
            "# HELP shoal_build_duration_seconds Wall-clock time of builds run by this peer."
        );
        let _ = writeln!(out, "# TYPE shoal_build_duration_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "shoal_build_duration_seconds_bucket{{le=\"{le}\"}} {}",
                b.0[i]
            );
        }
        let _ = writeln!(
            out,
            "shoal_build_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            b.2
        );
        let _ = writeln!(out, "shoal_build_duration_seconds_sum {}", b.1);
        let _ = writeln!(out, "shoal_build_duration_seconds_count {}", b.2);
        out
    }
}

/// Open peer connections, by transport.
pub fn render_connections(out: &mut String, counts: p2p::net::ConnectionCounts) {
    let _ = writeln!(
        out,
        "# HELP shoal_p2p_connections Open connections to other peers, by transport."
    );
    let _ = writeln!(out, "# TYPE shoal_p2p_connections gauge");
    for (transport, n) in [("quic", counts.quic), ("tcp", counts.tcp)] {
        let _ = writeln!(
            out,
            "shoal_p2p_connections{{transport=\"{transport}\"}} {n}"
        );
    }
}

/// The block store and exchange counters.
pub fn render_exchange(out: &mut String, ex: &p2p::exchange::Exchange) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &ex.stats;
    let (blocks, bytes) = ex.store.stats();
    let rows: [(&str, &str, &str, u64); 9] = [
        (
            "shoal_block_store_blocks",
            "gauge",
            "Blocks held by this peer.",
            blocks,
        ),
        (
            "shoal_block_store_bytes",
            "gauge",
            "Bytes of blocks held by this peer.",
            bytes,
        ),
        (
            "shoal_blocks_fetched_total",
            "counter",
            "Blocks received from other peers.",
            s.fetched_blocks.load(Relaxed),
        ),
        (
            "shoal_blocks_fetched_bytes_total",
            "counter",
            "Block bytes received from other peers (duplicates included).",
            s.fetched_bytes.load(Relaxed),
        ),
        (
            "shoal_blocks_duplicate_bytes_total",
            "counter",
            "Block bytes received that were already here.",
            s.duplicate_bytes.load(Relaxed),
        ),
        (
            "shoal_blocks_fetched_far_bytes_total",
            "counter",
            "Block bytes received from peers in another region.",
            s.far_bytes.load(Relaxed),
        ),
        (
            "shoal_blocks_served_total",
            "counter",
            "Blocks sent to other peers.",
            s.served_blocks.load(Relaxed),
        ),
        (
            "shoal_blocks_served_bytes_total",
            "counter",
            "Block bytes sent to other peers.",
            s.served_bytes.load(Relaxed),
        ),
        (
            "shoal_blocks_corrupt_total",
            "counter",
            "Blocks received that did not match their hash.",
            s.bad_blocks.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

//! This peer's load figure and capabilities, as gossiped in heartbeats.
//!
//! load = active builds
//!      + 1-minute load average ÷ CPU count
//!      + 4 if less than 10 % of the data disk is free
//!
//! One running build counts as one unit; a machine busy with other work
//! adds up to about one more; a nearly full disk makes the peer the last
//! choice, since artifacts and checkouts need room.

use crate::build::sandbox::{self, Isolation};
use p2p::members::LocalInfo;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Programs a peer reports as capabilities when it has them.
const TOOLS: &[&str] = &[
    "git", "node", "npm", "pnpm", "yarn", "hugo", "zola", "mdbook", "jekyll", "bundle",
];
/// The capability every builder has.
pub const BUILD: &str = "build";
/// How often the load figure is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// What this peer can build with.
pub fn capabilities(isolation: &Isolation) -> Vec<String> {
    let mut caps = Vec::new();
    if !matches!(isolation, Isolation::Unavailable(_)) {
        caps.push(BUILD.to_owned());
    }
    caps.extend(
        TOOLS
            .iter()
            .filter(|t| sandbox::which(t).is_some())
            .map(|t| (*t).to_owned()),
    );
    caps
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn disk_nearly_full(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .map(|s| (s.blocks_available() as f64) < 0.1 * (s.blocks() as f64).max(1.0))
        .unwrap_or(false)
}

/// The load formula above.
pub fn load(active_builds: usize, load_avg: f64, cpus: usize, disk_full: bool) -> f64 {
    let raw =
        active_builds as f64 + load_avg / cpus.max(1) as f64 + if disk_full { 4.0 } else { 0.0 };
    (raw * 100.0).round() / 100.0
}

/// Keeps `info.load` and `info.free_slots` current until shutdown; from
/// `draining` on, no free slots (the peer is leaving: elect others).
pub async fn report(
    info: watch::Sender<LocalInfo>,
    active: Arc<AtomicUsize>,
    max_builds: usize,
    data: PathBuf,
    mut draining: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    loop {
        let running = active.load(Ordering::Relaxed);
        let value = load(running, load_average(), cpus, disk_nearly_full(&data));
        let free = if *draining.borrow() {
            0
        } else {
            u8::try_from(max_builds.saturating_sub(running)).unwrap_or(u8::MAX)
        };
        info.send_if_modified(|i| {
            let changed = (i.load - value).abs() > f64::EPSILON || i.free_slots != free;
            i.load = value;
            i.free_slots = free;
            changed
        });
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = draining.wait_for(|d| *d), if !*draining.borrow() => {}
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_formula() {
        assert_eq!(super::load(0, 0.0, 4, false), 0.0);
        assert_eq!(super::load(2, 2.0, 4, false), 2.5);
        assert_eq!(super::load(0, 0.0, 0, true), 4.0);
    }
}

//! Block exchange on loopback, CPU per GiB by artifact size: one seed and
//! `fetchers` peers, all in this process, each fetching from all the others
//! at once. Run by `scripts/bench/exchange.sh`.
//!
//! Usage: exchange_bench SIZE_MIB [FETCHERS] [DIR]. The seed's store is in
//! TMPDIR; the artifact (deleted once the seed holds it) and the fetchers'
//! stores are in DIR if given (another file system, for artifacts larger
//! than one can hold), else in TMPDIR too. Prints one line of figures,
//! among them the process's peak RSS (all peers together). With
//! `EXCHANGE_TRANSPORT=tcp` the peers run TCP only (no QUIC).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use libp2p::identity::Keypair;
use libp2p::PeerId;
use p2p::blocks::BlockStore;
use p2p::exchange::{Candidate, Candidates, Exchange, Progress};
use p2p::net::{self, NetConfig};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// CPU-seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Peak resident memory of this process, in MiB, from /proc.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let fetchers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let far = match args.get(3) {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let (_stop, shutdown) = watch::channel(false);

    let mut nodes = Vec::new();
    let mut boot = Vec::new();
    for k in 0..=fetchers {
        let cfg = NetConfig {
            keypair: Keypair::generate_ed25519(),
            listen: net::tcp_listen_addr("127.0.0.1".parse().unwrap(), 0),
            bootstrap: boot.clone(),
            psk: None,
            quic: std::env::var("EXCHANGE_TRANSPORT").map_or(true, |t| t != "tcp"),
        };
        let (client, events, _task) = net::spawn(cfg, shutdown.clone()).unwrap();
        client.listening().await.unwrap();
        if boot.is_empty() {
            boot = client.listen_addrs();
        }
        let root = if k == 0 { dir.path() } else { far.path() };
        let store = Arc::new(BlockStore::open(&root.join(format!("n{k}"))).unwrap());
        let ex = Exchange::new(store, &client, 0);
        tokio::spawn(ex.clone().serve(shutdown.clone()));
        nodes.push((client, ex, events));
    }
    let peers: Vec<PeerId> = nodes.iter().map(|n| n.0.local_peer_id()).collect();

    // An incompressible artifact (xorshift), written in 1 MiB pieces.
    let path = far.path().join("artifact");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        file.write_all(&buf).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
    let (id, manifest) = nodes[0].1.store.import(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (k, (client, ex, _)) in nodes.iter().enumerate().skip(1) {
        let others: Vec<Candidate> = peers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, p)| Candidate::near(*p))
            .collect();
        let candidates: Candidates = Arc::new(move || others.clone());
        let (client, ex) = (client.clone(), ex.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, _rx) = watch::channel(Progress::default());
            ex.fetch(id, candidates, client, tx, None).await.unwrap();
            t0.elapsed().as_secs_f64()
        }));
    }
    let mut last: f64 = 0.0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    let cpu = cpu_seconds() - cpu0;
    let gib = (manifest.size as f64) / f64::from(1u32 << 30);
    let counts = nodes[0].0.connection_counts();
    println!(
        "size={mib}MiB blocks={} fetchers={fetchers} quic_conns={} tcp_conns={} secs={last:.2} MB/s-per-fetcher={:.0} cpu_s={cpu:.2} cpu_s_per_GiB_fetched={:.2} peak_rss_MiB={:.0}",
        manifest.len(),
        counts.quic,
        counts.tcp,
        manifest.size as f64 / last / 1e6,
        cpu / (gib * fetchers as f64),
        peak_rss_mib(),
    );
}

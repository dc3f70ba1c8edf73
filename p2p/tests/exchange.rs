//! Block exchange between real libp2p peers on loopback (in one process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use libp2p::identity::Keypair;
use libp2p::PeerId;
use p2p::blocks::{self, BlockStore};
use p2p::exchange::{Candidate, Candidates, Exchange, Progress};
use p2p::net::{self, Client, NetConfig};
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

struct Node {
    client: Client,
    ex: Arc<Exchange>,
    _dir: tempfile::TempDir,
    _events: tokio::sync::mpsc::Receiver<net::NetEvent>,
}

async fn node(bootstrap: Vec<libp2p::Multiaddr>, shutdown: &watch::Receiver<bool>) -> Node {
    node_limited(bootstrap, shutdown, 0).await
}

/// A node that sends at most `upload_limit` block bytes a second (0: no limit).
async fn node_limited(
    bootstrap: Vec<libp2p::Multiaddr>,
    shutdown: &watch::Receiver<bool>,
    upload_limit: u64,
) -> Node {
    let cfg = NetConfig {
        keypair: Keypair::generate_ed25519(),
        listen: net::tcp_listen_addr("127.0.0.1".parse().unwrap(), 0),
        bootstrap,
        psk: None,
        quic: true,
    };
    let (client, events, _task) = net::spawn(cfg, shutdown.clone()).unwrap();
    client.listening().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlockStore::open(dir.path()).unwrap());
    let ex = Exchange::new(store, &client, upload_limit);
    tokio::spawn(ex.clone().serve(shutdown.clone()));
    Node {
        client,
        ex,
        _dir: dir,
        _events: events,
    }
}

/// Dials `b` from `a` and waits (10 s at most) until each counts the other
/// among its connected peers.
async fn connect(a: &Node, b: &Node) {
    let (pa, pb) = (a.client.local_peer_id(), b.client.local_peer_id());
    a.client
        .dial(b.client.listen_addrs()[0].clone())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (sa, sb) = (
                a.client.peers().await.unwrap(),
                b.client.peers().await.unwrap(),
            );
            if sa.contains(&pb) && sb.contains(&pa) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the two nodes did not connect");
}

fn random_file(n: usize, seed: u64) -> tempfile::NamedTempFile {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), data).unwrap();
    f
}

/// Fetches `id` from peers in the same region.
async fn fetch(n: &Node, id: blocks::Hash, from: Vec<PeerId>) -> Arc<blocks::Manifest> {
    fetch_from(n, id, from.into_iter().map(Candidate::near).collect()).await
}

async fn fetch_from(n: &Node, id: blocks::Hash, from: Vec<Candidate>) -> Arc<blocks::Manifest> {
    let candidates: Candidates = Arc::new(move || from.clone());
    let (tx, _rx) = watch::channel(Progress::default());
    tokio::time::timeout(
        Duration::from_secs(30),
        n.ex.fetch(id, candidates, n.client.clone(), tx, None),
    )
    .await
    .expect("fetch timed out")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_fetch_from_each_other_and_refuse_corrupt_blocks() {
    let (_stop, shutdown) = watch::channel(false);
    let a = node(vec![], &shutdown).await;
    let seed = a.client.listen_addrs()[0].clone();
    let b = node(vec![seed.clone()], &shutdown).await;
    let c = node(vec![seed], &shutdown).await;
    let (pa, pb, pc) = (
        a.client.local_peer_id(),
        b.client.local_peer_id(),
        c.client.local_peer_id(),
    );
    let file = random_file(6 << 20, 9);
    let (id, manifest) = a.ex.store.import(file.path()).unwrap();

    // B fetches everything from A.
    let got = fetch(&b, id, vec![pa]).await;
    assert_eq!(*got, manifest);
    let mut out = Vec::new();
    blocks::assemble(&b.ex.store, &got, &mut out).unwrap();
    assert_eq!(out, std::fs::read(file.path()).unwrap());
    assert_eq!(
        b.ex.stats.fetched_bytes.load(Ordering::Relaxed),
        manifest.size
    );

    // B's copy rots: C, fetching from both, detects B's bad blocks, bans
    // B and completes from A.
    for i in 0..manifest.len() {
        let hash = manifest.hash(i);
        let path = b_block_path(&b, &hash);
        std::fs::write(path, b"rotten").unwrap();
    }
    let got = fetch(&c, id, vec![pb, pa]).await;
    assert_eq!(*got, manifest);
    c.ex.store.verify(&got).unwrap();
    assert!(c.ex.stats.bad_blocks.load(Ordering::Relaxed) >= 1);
    let _ = pc;
}

fn b_block_path(n: &Node, hash: &blocks::Hash) -> std::path::PathBuf {
    let hex = blocks::to_hex(hash);
    n._dir.path().join("blocks").join(&hex[..2]).join(hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_artifact_moves_only_changed_blocks() {
    let (_stop, shutdown) = watch::channel(false);
    let a = node(vec![], &shutdown).await;
    let b = node(vec![a.client.listen_addrs()[0].clone()], &shutdown).await;
    let pa = a.client.local_peer_id();
    let file = random_file(4 << 20, 11);
    let (id1, m1) = a.ex.store.import(file.path()).unwrap();
    fetch(&b, id1, vec![pa]).await;
    let mut data = std::fs::read(file.path()).unwrap();
    data[2_000_000..2_000_020].copy_from_slice(b"a small edit in here");
    std::fs::write(file.path(), &data).unwrap();
    let (id2, m2) = a.ex.store.import(file.path()).unwrap();
    let before = b.ex.stats.fetched_bytes.load(Ordering::Relaxed);
    fetch(&b, id2, vec![pa]).await;
    let moved = b.ex.stats.fetched_bytes.load(Ordering::Relaxed) - before;
    assert_eq!(before, m1.size);
    assert!(moved * 20 < m2.size, "moved {moved} of {}", m2.size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_sources_send_only_what_no_near_source_holds() {
    let (_stop, shutdown) = watch::channel(false);
    let near = node(vec![], &shutdown).await;
    let boot = near.client.listen_addrs()[0].clone();
    let far = node(vec![boot.clone()], &shutdown).await;
    let x = node(vec![boot], &shutdown).await;
    let file = random_file(4 << 20, 21);
    let (_, v1) = near.ex.store.import(file.path()).unwrap();
    // Version 2 changes a little in the middle. The far peer holds all of
    // it; the near one holds its manifest and the blocks it shares with
    // version 1, like a peer that has fetched all but the change.
    let mut data = std::fs::read(file.path()).unwrap();
    data[2_000_000..2_000_020].copy_from_slice(b"a small edit in here");
    std::fs::write(file.path(), &data).unwrap();
    let (id, v2) = far.ex.store.import(file.path()).unwrap();
    near.ex.store.put_manifest(&v2).unwrap();
    let old: std::collections::HashSet<blocks::Hash> = (0..v1.len()).map(|i| v1.hash(i)).collect();
    let changed: u64 = (0..v2.len())
        .filter(|i| !old.contains(&v2.hash(*i)))
        .map(|i| v2.size_of(i))
        .sum();
    assert!(
        changed > 0 && changed * 4 < v2.size,
        "changed {changed} of {}",
        v2.size
    );

    let sources = vec![
        Candidate {
            peer: far.client.local_peer_id(),
            far: true,
        },
        Candidate::near(near.client.local_peer_id()),
    ];
    let got = fetch_from(&x, id, sources).await;
    x.ex.store.verify(&got).unwrap();
    // The far peer sent exactly the changed blocks; the near one the rest.
    assert_eq!(far.ex.stats.served_bytes.load(Ordering::Relaxed), changed);
    assert_eq!(x.ex.stats.far_bytes.load(Ordering::Relaxed), changed);
    assert_eq!(
        near.ex.stats.served_bytes.load(Ordering::Relaxed),
        v2.size - changed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_sources_are_used_when_no_near_one_can_serve() {
    let (_stop, shutdown) = watch::channel(false);
    let far = node(vec![], &shutdown).await;
    let x = node(vec![far.client.listen_addrs()[0].clone()], &shutdown).await;
    let file = random_file(2 << 20, 23);
    let (id, manifest) = far.ex.store.import(file.path()).unwrap();
    // The near candidate cannot be reached at all.
    let sources = vec![
        Candidate::near(PeerId::random()),
        Candidate {
            peer: far.client.local_peer_id(),
            far: true,
        },
    ];
    let got = fetch_from(&x, id, sources).await;
    x.ex.store.verify(&got).unwrap();
    assert_eq!(
        far.ex.stats.served_bytes.load(Ordering::Relaxed),
        manifest.size
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_near_source_with_a_queue_does_not_hold_up_far_ones() {
    let (_stop, shutdown) = watch::channel(false);
    // The near peer sends 256 KiB a second: its answers queue.
    let near = node_limited(vec![], &shutdown, 256 * 1024).await;
    let boot = near.client.listen_addrs()[0].clone();
    let far = node(vec![boot.clone()], &shutdown).await;
    let x = node(vec![boot], &shutdown).await;
    let file = random_file(6 << 20, 25);
    let (id, manifest) = near.ex.store.import(file.path()).unwrap();
    far.ex.store.import(file.path()).unwrap();
    let sources = vec![
        Candidate::near(near.client.local_peer_id()),
        Candidate {
            peer: far.client.local_peer_id(),
            far: true,
        },
    ];
    let got = fetch_from(&x, id, sources).await;
    x.ex.store.verify(&got).unwrap();
    let from_far = far.ex.stats.served_bytes.load(Ordering::Relaxed);
    assert!(
        from_far * 2 > manifest.size,
        "the far peer sent {from_far} of {} bytes",
        manifest.size
    );
}

/// A seed whose link is the narrow part sends each block once while two
/// fetchers draw on it and on each other: a block asked of it a second
/// time, while blocks no one has yet wait there, is had from the peer it
/// went to instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seed_sends_every_first_copy_before_a_second_one() {
    let (_stop, shutdown) = watch::channel(false);
    let seed = node_limited(vec![], &shutdown, 2 << 20).await;
    let boot = seed.client.listen_addrs()[0].clone();
    let b = node(vec![boot.clone()], &shutdown).await;
    let c = node(vec![boot], &shutdown).await;
    let file = random_file(8 << 20, 31);
    let (id, manifest) = seed.ex.store.import(file.path()).unwrap();
    let (ps, pb, pc) = (
        seed.client.local_peer_id(),
        b.client.local_peer_id(),
        c.client.local_peer_id(),
    );
    // Both fetchers are connected to each other and hold the manifest
    // first, so each answers the other
    // with what it holds (none yet) from the first ask on, and their
    // shares of the seed split from the start. (Without it, one that asks
    // before the other has the manifest leaves it out for a retry, and for
    // that while asks the seed for everything: the start-up part of the
    // duplicates that the distribution benchmark counts.)
    connect(&b, &c).await;
    let from_seed: Candidates = Arc::new(move || vec![Candidate::near(ps)]);
    for n in [&b, &c] {
        n.ex.manifest(id, &from_seed, &n.client).await.unwrap();
    }
    let (got_b, got_c) = tokio::join!(fetch(&b, id, vec![ps, pc]), fetch(&c, id, vec![ps, pb]));
    b.ex.store.verify(&got_b).unwrap();
    c.ex.store.verify(&got_c).unwrap();
    let served = seed.ex.stats.served_bytes.load(Ordering::Relaxed);
    let (from_b, from_c) = (
        b.ex.stats.served_bytes.load(Ordering::Relaxed),
        c.ex.stats.served_bytes.load(Ordering::Relaxed),
    );
    assert!(
        served * 100 <= manifest.size * 103,
        "the seed sent {served} bytes of a {} byte artifact (B sent {from_b}, C {from_c})",
        manifest.size
    );
    assert!(from_b > 0 && from_c > 0, "B sent {from_b}, C {from_c}");
}

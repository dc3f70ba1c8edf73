//! Transports between real libp2p peers on loopback (in one process): QUIC
//! where both ends run it, TCP with a peer that does not, and TCP only in a
//! private network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use p2p::net::{self, Client, NetConfig};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

struct Node {
    client: Client,
    _events: mpsc::Receiver<net::NetEvent>,
}

fn config(bootstrap: Vec<Multiaddr>, quic: bool, psk: Option<&str>) -> NetConfig {
    NetConfig {
        keypair: Keypair::generate_ed25519(),
        listen: net::tcp_listen_addr("127.0.0.1".parse().unwrap(), 0),
        bootstrap,
        psk: psk.map(|text| net::parse_psk(text).unwrap()),
        quic,
    }
}

async fn node(cfg: NetConfig, shutdown: &watch::Receiver<bool>) -> Node {
    let (client, events, _task) = net::spawn(cfg, shutdown.clone()).unwrap();
    client.listening().await.unwrap();
    Node {
        client,
        _events: events,
    }
}

/// Waits (20 s at most: a QUIC dial that gets no answer gives up after 5 s)
/// until `what` holds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected(a: &Client, b: PeerId) -> bool {
    a.peers().await.unwrap().contains(&b)
}

fn tcp_addr(n: &Node) -> Multiaddr {
    let addr = n.client.listen_addrs()[0].clone();
    assert!(!net::is_quic(&addr), "TCP addresses come first: {addr}");
    addr
}

#[tokio::test]
async fn peers_joined_over_tcp_move_to_quic() {
    let (_stop, shutdown) = watch::channel(false);
    let a = node(config(vec![], true, None), &shutdown).await;
    // Port 0: A's UDP port is not its TCP port, so B's dial of the QUIC
    // twin of A's TCP address gets no answer and B joins over TCP; what A
    // listens on, told by identify, then takes them to QUIC.
    let b = node(config(vec![tcp_addr(&a)], true, None), &shutdown).await;
    until("both ends talk over QUIC only", async || {
        let (ca, cb) = (a.client.connection_counts(), b.client.connection_counts());
        ca.tcp == 0 && ca.quic > 0 && cb.tcp == 0 && cb.quic > 0
    })
    .await;
    assert!(connected(&a.client, b.client.local_peer_id()).await);
    assert!(connected(&b.client, a.client.local_peer_id()).await);
    assert!(
        a.client.listen_addrs().iter().any(net::is_quic),
        "{:?}",
        a.client.listen_addrs()
    );
}

#[tokio::test]
async fn a_peer_without_quic_stays_on_tcp() {
    let (_stop, shutdown) = watch::channel(false);
    let a = node(config(vec![], true, None), &shutdown).await;
    let b = node(config(vec![tcp_addr(&a)], false, None), &shutdown).await;
    let c = node(config(vec![tcp_addr(&a)], true, None), &shutdown).await;
    let (pa, pb, pc) = (
        a.client.local_peer_id(),
        b.client.local_peer_id(),
        c.client.local_peer_id(),
    );
    until("the three are connected", async || {
        connected(&a.client, pb).await
            && connected(&a.client, pc).await
            && connected(&b.client, pc).await
    })
    .await;
    // A and C move to QUIC; B, which runs none, keeps TCP with both.
    until("A and C talk over QUIC, B over TCP", async || {
        let (ca, cb, cc) = (
            a.client.connection_counts(),
            b.client.connection_counts(),
            c.client.connection_counts(),
        );
        ca.quic > 0 && ca.tcp > 0 && cc.quic > 0 && cc.tcp > 0 && cb.quic == 0 && cb.tcp >= 2
    })
    .await;
    assert!(b.client.listen_addrs().iter().all(|a| !net::is_quic(a)));
    assert!(connected(&b.client, pa).await && connected(&c.client, pa).await);
}

#[tokio::test]
async fn a_private_network_runs_over_tcp_only() {
    const KEY: &str = "/key/swarm/psk/1.0.0/\n/base16/\n\
        abababababababababababababababababababababababababababababababab\n";
    let (_stop, shutdown) = watch::channel(false);
    let a = node(config(vec![], true, Some(KEY)), &shutdown).await;
    let b = node(config(vec![tcp_addr(&a)], true, Some(KEY)), &shutdown).await;
    until("the two are connected", async || {
        connected(&a.client, b.client.local_peer_id()).await
    })
    .await;
    for n in [&a, &b] {
        assert!(
            n.client.listen_addrs().iter().all(|a| !net::is_quic(a)),
            "{:?}",
            n.client.listen_addrs()
        );
        assert_eq!(n.client.connection_counts().quic, 0);
        assert!(n.client.connection_counts().tcp > 0);
    }
}

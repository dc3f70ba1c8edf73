//! Listening: a second peer on a port that one already uses is refused,
//! though libp2p itself would share the port (it sets `SO_REUSEPORT`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use p2p::net::{self, NetConfig, NetError};
use tokio::sync::watch;

fn config(port: u16) -> NetConfig {
    NetConfig {
        keypair: Keypair::generate_ed25519(),
        listen: net::tcp_listen_addr("127.0.0.1".parse().unwrap(), port),
        bootstrap: Vec::new(),
        psk: None,
        quic: true,
    }
}

#[tokio::test]
async fn a_second_peer_on_a_port_in_use_is_refused() {
    let (stop, shutdown) = watch::channel(false);
    let (first, _events, task) = net::spawn(config(0), shutdown.clone()).unwrap();
    let addrs = first.listening().await.unwrap();
    let port = addrs[0]
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();

    let err = net::spawn(config(port), shutdown.clone()).err().unwrap();
    assert!(matches!(err, NetError::PortInUse(_)), "{err}");
    assert!(err.to_string().contains(&format!("/tcp/{port}")), "{err}");

    // Once the first peer has stopped, the port is free again.
    stop.send(true).unwrap();
    task.await.unwrap();
    drop(first);
    let (stop, shutdown) = watch::channel(false);
    let (again, _events, task) = net::spawn(config(port), shutdown).unwrap();
    assert!(again.listening().await.unwrap()[0]
        .to_string()
        .ends_with(&format!("/tcp/{port}")));
    stop.send(true).unwrap();
    task.await.unwrap();
}

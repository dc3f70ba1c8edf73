//! The network's public face: one task (see `swarm`) owns the libp2p
//! `Swarm`; everything else talks to it through a cloneable [`Client`] (commands over a bounded
//! channel, answers over oneshots) and hears from it through a bounded
//! stream of [`NetEvent`]s. The task never blocks on its users: events that
//! find the channel full are dropped (gossip is repaired by anti-entropy,
//! unanswered requests time out at the asker).

use crate::behaviour::build_swarm;
use crate::swarm::SwarmTask;
use crate::wire::{self, SyncRequest, SyncResponse};
use libp2p::gossipsub::IdentTopic;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

/// Commands waiting for the swarm task.
const COMMAND_BUFFER: usize = 256;
/// Events waiting for the application.
const EVENT_BUFFER: usize = 1024;
/// How long a provider lookup may take.
const PROVIDER_LOOKUP: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the network task has stopped")]
    Shutdown,
    #[error("request to {peer} failed: {detail}")]
    Request { peer: PeerId, detail: String },
    #[error("invalid address {0}")]
    Address(String),
    #[error("libp2p: {0}")]
    Setup(String),
    #[error("{0}: the port is in use by another process")]
    PortInUse(Multiaddr),
}

/// How to run the network.
pub struct NetConfig {
    pub keypair: Keypair,
    pub listen: Multiaddr,
    /// Addresses to join through, with or without `/p2p/<id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Private network key: only peers with the same key can connect.
    pub psk: Option<PreSharedKey>,
    /// Also listen and dial over QUIC, on the UDP port of the same number
    /// as `listen`'s TCP port, and prefer it where both ends can. Ignored
    /// with a `psk`: the private-network handshake exists over TCP only.
    pub quic: bool,
}

impl NetConfig {
    /// Whether this peer runs QUIC beside TCP.
    pub fn quic_enabled(&self) -> bool {
        self.quic && self.psk.is_none()
    }
}

/// What the network tells the application.
#[derive(Debug)]
pub enum NetEvent {
    Gossip {
        topic: String,
        source: Option<PeerId>,
        data: Vec<u8>,
    },
    /// A sync request; answer through `reply` (dropping it answers nothing).
    Inbound {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<SyncResponse>,
    },
    Connected(PeerId),
    Disconnected(PeerId),
}

pub(crate) enum Command {
    Publish {
        topic: &'static str,
        data: Vec<u8>,
    },
    Request {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, NetError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        addr: Multiaddr,
    },
    /// Announce this peer as a provider of `key` (Kademlia).
    Provide {
        key: Vec<u8>,
    },
    StopProviding {
        key: Vec<u8>,
    },
    /// Look up the providers of `key`.
    Providers {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// Open connections, by transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub quic: usize,
    pub tcp: usize,
}

/// A handle on the swarm task.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    local: PeerId,
    listen: watch::Receiver<Vec<Multiaddr>>,
    connections: watch::Receiver<ConnectionCounts>,
    streams: libp2p_stream::Control,
}

impl Client {
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// A handle for opening and accepting long-lived streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// The addresses the swarm listens on, TCP ones first (empty until it
    /// does).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        tcp_first(self.listen.borrow().clone())
    }

    /// How many connections are open over each transport.
    pub fn connection_counts(&self) -> ConnectionCounts {
        *self.connections.borrow()
    }

    /// Waits until the swarm listens over TCP, and returns its addresses,
    /// TCP ones first.
    pub async fn listening(&self) -> Result<Vec<Multiaddr>, NetError> {
        let mut rx = self.listen.clone();
        let addrs = rx
            .wait_for(|a| a.iter().any(|a| !is_quic(a)))
            .await
            .map_err(|_| NetError::Shutdown)?;
        Ok(tcp_first(addrs.clone()))
    }

    async fn send(&self, cmd: Command) -> Result<(), NetError> {
        self.tx.send(cmd).await.map_err(|_| NetError::Shutdown)
    }

    pub async fn publish(&self, topic: &'static str, data: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Publish { topic, data }).await
    }

    /// Publishes without waiting; false if the swarm is too busy to take it.
    pub fn try_publish(&self, topic: &'static str, data: Vec<u8>) -> bool {
        self.tx.try_send(Command::Publish { topic, data }).is_ok()
    }

    pub async fn request(
        &self,
        peer: PeerId,
        request: SyncRequest,
    ) -> Result<SyncResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Shutdown)?
    }

    /// Peers we have a connection to.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Peers { reply }).await?;
        rx.await.map_err(|_| NetError::Shutdown)
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::Dial { addr }).await
    }

    /// Announces this peer as a provider of `key` in the DHT (re-published
    /// by Kademlia before the record expires, until `stop_providing`).
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Provide { key }).await
    }

    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::StopProviding { key }).await
    }

    /// The providers of `key` found in the DHT within a few seconds.
    pub async fn providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Providers { key, reply }).await?;
        match tokio::time::timeout(PROVIDER_LOOKUP, rx).await {
            Ok(found) => found.map_err(|_| NetError::Shutdown),
            Err(_) => Ok(Vec::new()),
        }
    }
}

/// Fails if another process listens on the TCP port of `listen`.
///
/// libp2p listens with `SO_REUSEPORT`, so a second peer started on a port
/// that one already uses would bind without error and the kernel would
/// split incoming connections between the two. A plain bind, without that
/// option, fails in that case. Port 0 needs no check: the kernel never hands
/// out a port in use.
fn ensure_port_free(listen: &Multiaddr) -> Result<(), NetError> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for part in listen.iter() {
        match part {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            Err(NetError::PortInUse(listen.clone()))
        }
        // Anything else is for libp2p's own bind to report.
        _ => Ok(()),
    }
}

/// Starts the swarm task. It runs until `shutdown` turns true.
pub fn spawn(
    cfg: NetConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<
    (
        Client,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetError,
> {
    let mut swarm = build_swarm(&cfg)?;
    for topic in [wire::STATE_TOPIC, wire::HEARTBEAT_TOPIC] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(topic))
            .map_err(|e| NetError::Setup(e.to_string()))?;
    }
    ensure_port_free(&cfg.listen)?;
    swarm
        .listen_on(cfg.listen.clone())
        .map_err(|e| NetError::Address(format!("{}: {e}", cfg.listen)))?;
    let mut quic = cfg.quic_enabled();
    if cfg.quic && !quic {
        tracing::info!("QUIC is off: a private network runs over TCP only");
    }
    if let Some(addr) = quic.then(|| quic_twin(&cfg.listen)).flatten() {
        // A peer that cannot bind the UDP port still works over TCP.
        if let Err(err) = swarm.listen_on(addr.clone()) {
            tracing::warn!(%addr, error = %err, "cannot listen over QUIC; TCP only");
            quic = false;
        }
    }
    let (tx, rx) = mpsc::channel(COMMAND_BUFFER);
    let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
    let (listen_tx, listen) = watch::channel(Vec::new());
    let local = *swarm.local_peer_id();
    let streams = swarm.behaviour().stream.new_control();
    let bootstrap = cfg
        .bootstrap
        .iter()
        .map(|a| strip_peer_id(a.clone()))
        .collect();
    let (connections_tx, connections) = watch::channel(ConnectionCounts::default());
    let task = SwarmTask::new(
        swarm,
        rx,
        events_tx,
        listen_tx,
        connections_tx,
        bootstrap,
        quic,
    );
    let handle = tokio::spawn(task.run(shutdown));
    Ok((
        Client {
            tx,
            local,
            listen,
            connections,
            streams,
        },
        events,
        handle,
    ))
}

/// Accepts inbound streams of `protocol` until `shutdown`, at most `max`
/// at once (more are refused), and runs `handle` on each in its own task.
pub(crate) async fn accept_streams<F, Fut>(
    mut control: libp2p_stream::Control,
    protocol: libp2p::StreamProtocol,
    max: usize,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(PeerId, libp2p::Stream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures_util::StreamExt;
    let mut incoming = match control.accept(protocol.clone()) {
        Ok(incoming) => incoming,
        Err(err) => {
            tracing::warn!(%protocol, error = %err, "protocol already registered");
            return;
        }
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let (peer, stream) = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            next = incoming.next() => match next { Some(s) => s, None => break },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, %protocol, "too many inbound streams; refusing one");
            continue;
        };
        let task = handle(peer, stream);
        tokio::spawn(async move {
            let _slot = slot;
            task.await;
        });
    }
}

/// Drops a trailing `/p2p/<id>`: the id is learned on connect.
pub(crate) fn strip_peer_id(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// The QUIC address at the UDP port of the same number as `addr`'s TCP
/// port (`/ip4/10.0.0.5/tcp/9000` → `/ip4/10.0.0.5/udp/9000/quic-v1`, and
/// so for `/dns4/…` and `/ip6/…`); `None` for an address that is not TCP.
pub fn quic_twin(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut out = Multiaddr::empty();
    let mut tcp = false;
    for p in addr.iter() {
        match p {
            Protocol::Tcp(port) if !tcp => {
                tcp = true;
                out.push(Protocol::Udp(port));
                out.push(Protocol::QuicV1);
            }
            Protocol::Tcp(_) | Protocol::Ws(_) | Protocol::Wss(_) | Protocol::Tls => return None,
            other => out.push(other),
        }
    }
    tcp.then_some(out)
}

fn tcp_first(mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs.sort_by_key(is_quic);
    addrs
}

/// Whether `addr` is a QUIC address.
pub fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

/// Parses a private-network key file (`/key/swarm/psk/1.0.0/` format).
pub fn parse_psk(text: &str) -> Result<PreSharedKey, NetError> {
    text.parse::<PreSharedKey>()
        .map_err(|e| NetError::Setup(format!("invalid PSK: {e}")))
}

/// Loads this peer's identity from `path`, creating it (mode 0600) on first start.
pub fn load_or_create_identity(path: &std::path::Path) -> Result<Keypair, NetError> {
    let bad =
        |e: &dyn std::fmt::Display| NetError::Setup(format!("identity {}: {e}", path.display()));
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| bad(&e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| bad(&e))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| bad(&e))?;
            f.write_all(&bytes).map_err(|e| bad(&e))?;
            Ok(key)
        }
        Err(e) => Err(bad(&e)),
    }
}

/// Parses a multiaddr given by a user.
pub fn parse_addr(text: &str) -> Result<Multiaddr, NetError> {
    text.trim()
        .parse()
        .map_err(|e| NetError::Address(format!("{text}: {e}")))
}

/// The TCP listen address for `ip` and `port`.
pub fn tcp_listen_addr(ip: std::net::IpAddr, port: u16) -> Multiaddr {
    let mut addr = Multiaddr::empty();
    addr.push(match ip {
        std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
    });
    addr.push(Protocol::Tcp(port));
    addr
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_tcp_address_has_a_quic_twin_at_the_same_port() {
        for (tcp, quic) in [
            ("/ip4/10.0.0.5/tcp/9000", "/ip4/10.0.0.5/udp/9000/quic-v1"),
            ("/ip6/::1/tcp/4001", "/ip6/::1/udp/4001/quic-v1"),
            (
                "/dns4/shoal-0.shoal/tcp/9000",
                "/dns4/shoal-0.shoal/udp/9000/quic-v1",
            ),
        ] {
            let twin = quic_twin(&addr(tcp)).unwrap();
            assert_eq!(twin, addr(quic));
            assert!(is_quic(&twin) && !is_quic(&addr(tcp)));
        }
        for other in [
            "/ip4/10.0.0.5/udp/9000/quic-v1",
            "/ip4/10.0.0.5/tcp/9000/ws",
            "/ip4/10.0.0.5",
        ] {
            assert_eq!(quic_twin(&addr(other)), None, "{other}");
        }
    }

    #[test]
    fn tcp_addresses_come_first() {
        let sorted = tcp_first(vec![
            addr("/ip4/127.0.0.1/udp/9000/quic-v1"),
            addr("/ip4/127.0.0.1/tcp/9000"),
            addr("/ip4/10.0.0.1/tcp/9000"),
        ]);
        assert_eq!(
            sorted,
            vec![
                addr("/ip4/127.0.0.1/tcp/9000"),
                addr("/ip4/10.0.0.1/tcp/9000"),
                addr("/ip4/127.0.0.1/udp/9000/quic-v1"),
            ]
        );
    }
}

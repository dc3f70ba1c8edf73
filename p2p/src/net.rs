//! The swarm task: the one owner of the libp2p `Swarm`. Everything else
//! talks to it through a cloneable [`Client`] (commands over a bounded
//! channel, answers over oneshots) and hears from it through a bounded
//! stream of [`NetEvent`]s. The task never blocks on its users: events that
//! find the channel full are dropped (gossip is repaired by anti-entropy,
//! unanswered requests time out at the asker).

use crate::wire::{self, SyncRequest, SyncResponse};
use either::Either;
use futures_util::stream::{FuturesUnordered, StreamExt};
use libp2p::core::{muxing::StreamMuxerBox, transport::upgrade::Version, ConnectedPoint};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    identify, kad, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, Transport,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// Commands waiting for the swarm task.
const COMMAND_BUFFER: usize = 256;
/// Events waiting for the application.
const EVENT_BUFFER: usize = 1024;
/// How often unreachable bootstrap addresses are dialled again (DNS is
/// resolved anew on every dial).
const REDIAL: Duration = Duration::from_secs(2);
/// How often Kademlia looks for more peers.
const KAD_BOOTSTRAP: Duration = Duration::from_secs(300);
/// How often each connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(60);
/// Connections kept open without traffic (the mesh wants them).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Peers we try to stay connected to. Up to this size the mesh is fully
/// connected, so a change published with flood-publish reaches every peer in
/// one hop; larger meshes rely on gossipsub relaying.
const TARGET_CONNECTIONS: usize = 64;

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
}

/// How to run the network.
pub struct NetConfig {
    pub keypair: Keypair,
    pub listen: Multiaddr,
    /// Addresses to join through, with or without `/p2p/<id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Private network key: only peers with the same key can connect.
    pub psk: Option<PreSharedKey>,
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

enum Command {
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
}

/// A handle on the swarm task.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    local: PeerId,
    listen: watch::Receiver<Vec<Multiaddr>>,
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

    /// The addresses the swarm listens on (empty until it does).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen.borrow().clone()
    }

    /// Waits until the swarm listens somewhere.
    pub async fn listening(&self) -> Result<Vec<Multiaddr>, NetError> {
        let mut rx = self.listen.clone();
        let addrs = rx
            .wait_for(|a| !a.is_empty())
            .await
            .map_err(|_| NetError::Shutdown)?;
        Ok(addrs.clone())
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
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    /// Long-lived streams to each peer (heartbeats).
    stream: libp2p_stream::Behaviour,
}

fn build_swarm(cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let psk = cfg.psk;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
            let maybe_private = match psk {
                Some(psk) => Either::Left(
                    base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
                ),
                None => Either::Right(base),
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                maybe_private
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(10))
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))),
            )
        })
        .map_err(|e| setup(&e))?
        .with_dns()
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .max_transmit_size(wire::MAX_GOSSIP_BYTES)
                .heartbeat_interval(Duration::from_secs(1))
                // A sparser mesh than the default (6): with flood-publish the
                // author already reaches every connected peer, so relays only
                // cover gaps, and each extra mesh link costs a duplicate of
                // every message (idle traffic is mostly heartbeats).
                .mesh_n(3)
                .mesh_n_low(2)
                .mesh_n_high(5)
                .mesh_outbound_min(1)
                .gossip_lazy(3)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
            let mut kad_cfg = kad::Config::new(StreamProtocol::new("/shoal/kad/1"));
            kad_cfg.set_query_timeout(Duration::from_secs(30));
            let mut kad =
                kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_cfg);
            kad.set_mode(Some(kad::Mode::Server));
            let codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(wire::MAX_SYNC_REQUEST_BYTES)
                .set_response_size_maximum(wire::MAX_SYNC_RESPONSE_BYTES);
            let sync = request_response::Behaviour::with_codec(
                codec,
                [(
                    StreamProtocol::new(wire::SYNC_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new("/shoal/id/1".into(), key.public())
                        .with_agent_version(format!("shoal/{}", env!("CARGO_PKG_VERSION"))),
                ),
                // Heartbeats already tell who is alive; pings only guard
                // against half-open connections.
                ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
                kad,
                gossipsub,
                sync,
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
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
    swarm
        .listen_on(cfg.listen.clone())
        .map_err(|e| NetError::Address(format!("{}: {e}", cfg.listen)))?;
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
    let task = SwarmTask {
        swarm,
        commands: rx,
        events: events_tx,
        listen: listen_tx,
        bootstrap,
        bootstrap_peers: HashMap::new(),
        pending: HashMap::new(),
        replies: FuturesUnordered::new(),
        connected: HashSet::new(),
        known: HashMap::new(),
    };
    let handle = tokio::spawn(task.run(shutdown));
    Ok((
        Client {
            tx,
            local,
            listen,
            streams,
        },
        events,
        handle,
    ))
}

/// Drops a trailing `/p2p/<id>`: the id is learned on connect.
fn strip_peer_id(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

type PendingReply = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    request_response::ResponseChannel<SyncResponse>,
                    Option<SyncResponse>,
                ),
            > + Send,
    >,
>;

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    listen: watch::Sender<Vec<Multiaddr>>,
    /// Addresses to stay joined through.
    bootstrap: Vec<Multiaddr>,
    /// Which peer answered at each bootstrap address.
    bootstrap_peers: HashMap<Multiaddr, PeerId>,
    /// Our outbound requests, by id.
    pending: HashMap<
        request_response::OutboundRequestId,
        oneshot::Sender<Result<SyncResponse, NetError>>,
    >,
    /// Inbound requests the application is answering.
    replies: FuturesUnordered<PendingReply>,
    connected: HashSet<PeerId>,
    /// Addresses learned through identify, to reconnect and grow the mesh.
    known: HashMap<PeerId, Vec<Multiaddr>>,
}

impl SwarmTask {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut redial = tokio::time::interval(REDIAL);
        let mut kad_tick = tokio::time::interval(KAD_BOOTSTRAP);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some((channel, response)) = self.replies.next(), if !self.replies.is_empty() => {
                    let response = response.unwrap_or_else(|| SyncResponse::Refused("busy".into()));
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
                }
                _ = redial.tick() => self.maintain_connections(),
                _ = kad_tick.tick() => {
                    if !self.connected.is_empty() {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
        }
        debug!("swarm task stopped");
    }

    /// Redials bootstrap addresses whose peer is not connected, and dials
    /// known peers while below the connection target.
    fn maintain_connections(&mut self) {
        for addr in self.bootstrap.clone() {
            let up = self
                .bootstrap_peers
                .get(&addr)
                .is_some_and(|p| self.connected.contains(p));
            if !up {
                if let Err(err) = self.swarm.dial(addr.clone()) {
                    debug!(%addr, error = %err, "bootstrap dial failed");
                }
            }
        }
        if self.connected.len() < TARGET_CONNECTIONS {
            let candidates: Vec<_> = self
                .known
                .iter()
                .filter(|(p, _)| !self.connected.contains(p))
                .take(TARGET_CONNECTIONS - self.connected.len())
                .map(|(p, a)| (*p, a.clone()))
                .collect();
            for (peer, addrs) in candidates {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
    }

    fn emit(&self, event: NetEvent) {
        if let Err(err) = self.events.try_send(event) {
            warn!(error = %err, "network event dropped: application is behind");
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { topic, data } => {
                if let Err(err) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), data)
                {
                    debug!(topic, error = %err, "publish skipped");
                }
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Command::Dial { addr } => {
                if let Err(err) = self.swarm.dial(strip_peer_id(addr.clone())) {
                    debug!(%addr, error = %err, "dial failed");
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "p2p listening");
                self.listen.send_modify(|a| a.push(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    let bare = strip_peer_id(address.clone());
                    if self.bootstrap.contains(&bare) {
                        self.bootstrap_peers.insert(bare, peer_id);
                    }
                }
                if num_established.get() == 1 && self.connected.insert(peer_id) {
                    debug!(peer = %peer_id, "connected");
                    if self.connected.len() == 1 {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                    self.emit(NetEvent::Connected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if self.connected.remove(&peer_id) => {
                debug!(peer = %peer_id, "disconnected");
                self.emit(NetEvent::Disconnected(peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let addrs: Vec<_> = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| !is_unspecified(a))
                    .take(8)
                    .collect();
                for addr in &addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                self.known.insert(peer_id, addrs);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) => {
                self.known
                    .entry(peer)
                    .or_insert_with(|| addresses.into_vec());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                self.emit(NetEvent::Gossip {
                    topic: message.topic.into_string(),
                    source: message.source,
                    data: message.data,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync_event(event),
            _ => {}
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let (reply, rx) = oneshot::channel();
                if self
                    .events
                    .try_send(NetEvent::Inbound {
                        peer,
                        request,
                        reply,
                    })
                    .is_err()
                {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, SyncResponse::Refused("busy".into()));
                    return;
                }
                self.replies.push(Box::pin(async move {
                    let response = tokio::time::timeout(Duration::from_secs(8), rx)
                        .await
                        .ok()
                        .and_then(Result::ok);
                    (channel, response)
                }));
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        detail: error.to_string(),
                    }));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound sync request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
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

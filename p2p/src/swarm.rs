//! The swarm task's event loop: it owns the `Swarm`, runs the commands the
//! `Client` sends, turns swarm events into `NetEvent`s, and keeps the mesh
//! connected (bootstrap redials, dials to known peers).

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::net::{
    is_quic, quic_twin, strip_peer_id, Command, ConnectionCounts, NetError, NetEvent,
};
use crate::wire::{SyncRequest, SyncResponse};
use futures_util::stream::{FuturesUnordered, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, kad, Multiaddr, PeerId, Swarm};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// How often unreachable bootstrap addresses are dialled again (DNS is
/// resolved anew on every dial).
const REDIAL: Duration = Duration::from_secs(2);
/// How often Kademlia looks for more peers.
const KAD_BOOTSTRAP: Duration = Duration::from_secs(300);
/// Peers we try to stay connected to. Up to this size the mesh is fully
/// connected, so a change published with flood-publish reaches every peer in
/// one hop; larger meshes rely on gossipsub relaying.
const TARGET_CONNECTIONS: usize = 64;
/// How long before a peer reached over TCP only is dialled over QUIC again
/// (its UDP port may be closed or filtered).
const QUIC_RETRY: Duration = Duration::from_secs(600);
/// How long a stopping peer waits for its connections to close.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

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

pub(crate) struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    listen: watch::Sender<Vec<Multiaddr>>,
    connection_counts: watch::Sender<ConnectionCounts>,
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
    /// Addresses learned through identify, to reconnect and grow the mesh.
    known: HashMap<PeerId, Vec<Multiaddr>>,
    /// Provider lookups under way, with what they found so far.
    lookups: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    /// This peer runs QUIC beside TCP.
    quic: bool,
    /// The peers connected to, each with its connections and whether each
    /// is QUIC.
    conns: HashMap<PeerId, HashMap<ConnectionId, bool>>,
    /// When each peer reached over TCP was last dialled over QUIC.
    quic_tried: HashMap<PeerId, Instant>,
    /// Dials of a bootstrap address's QUIC twin under way.
    twin_dials: HashMap<ConnectionId, Multiaddr>,
    /// Bootstrap addresses whose QUIC twin did not answer: dialled over TCP.
    twin_failed: HashSet<Multiaddr>,
}

impl SwarmTask {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        listen: watch::Sender<Vec<Multiaddr>>,
        connection_counts: watch::Sender<ConnectionCounts>,
        bootstrap: Vec<Multiaddr>,
        quic: bool,
    ) -> Self {
        Self {
            swarm,
            commands,
            events,
            listen,
            connection_counts,
            bootstrap,
            bootstrap_peers: HashMap::new(),
            pending: HashMap::new(),
            replies: FuturesUnordered::new(),
            known: HashMap::new(),
            lookups: HashMap::new(),
            quic,
            conns: HashMap::new(),
            quic_tried: HashMap::new(),
            twin_dials: HashMap::new(),
            twin_failed: HashSet::new(),
        }
    }

    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
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
                    if !self.conns.is_empty() {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
        }
        self.close_all().await;
        debug!("swarm task stopped");
    }

    /// Closes every connection, waiting a moment for the peers to be told.
    /// A TCP connection is closed by the kernel when the process ends, but
    /// nothing tells a QUIC peer: it would keep a dead connection until its
    /// idle timeout, and a restarted peer's new one beside it.
    async fn close_all(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::sleep(CLOSE_GRACE);
        tokio::pin!(deadline);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                _ = &mut deadline => break,
                _ = self.swarm.select_next_some() => {}
            }
        }
    }

    /// Redials bootstrap addresses whose peer is not connected (a TCP
    /// address over QUIC first, at the UDP port of the same number, and
    /// over TCP once that fails), and dials known peers while below the
    /// connection target.
    fn maintain_connections(&mut self) {
        for addr in self.bootstrap.clone() {
            let up = self
                .bootstrap_peers
                .get(&addr)
                .is_some_and(|p| self.conns.contains_key(p));
            if up || self.twin_dials.values().any(|a| *a == addr) {
                continue;
            }
            let twin = quic_twin(&addr).filter(|_| self.quic && !self.twin_failed.contains(&addr));
            let opts = DialOpts::unknown_peer_id()
                .address(twin.clone().unwrap_or_else(|| addr.clone()))
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) if twin.is_some() => {
                    self.twin_dials.insert(id, addr);
                }
                Ok(()) => {}
                Err(err) => debug!(%addr, error = %err, "bootstrap dial failed"),
            }
        }
        if self.conns.len() < TARGET_CONNECTIONS {
            let candidates: Vec<_> = self
                .known
                .iter()
                .filter(|(p, _)| !self.conns.contains_key(p))
                .take(TARGET_CONNECTIONS - self.conns.len())
                .map(|(p, a)| (*p, a.clone()))
                .collect();
            for (peer, mut addrs) in candidates {
                // Tried in this order, one at a time.
                addrs.sort_by_key(|a| self.quic != is_quic(a));
                let opts = DialOpts::peer_id(peer).addresses(addrs).build();
                let _ = self.swarm.dial(opts);
            }
        }
    }

    /// Keeps one kind of connection per peer: once a QUIC connection to a
    /// peer is up, its TCP ones close (streams would otherwise go over
    /// either). A peer that runs TCP only keeps its TCP connections.
    fn prefer_quic(&mut self, peer: PeerId, id: ConnectionId, quic: bool) {
        self.conns.entry(peer).or_default().insert(id, quic);
        self.count_connections();
        if !self.has_quic(&peer) {
            return;
        }
        let tcp: Vec<ConnectionId> = self
            .conns
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|(_, q)| !**q)
            .map(|(id, _)| *id)
            .collect();
        for id in tcp {
            debug!(%peer, "closing a TCP connection: QUIC is up");
            self.swarm.close_connection(id);
        }
    }

    fn has_quic(&self, peer: &PeerId) -> bool {
        self.conns.get(peer).is_some_and(|c| c.values().any(|q| *q))
    }

    fn count_connections(&self) {
        let mut counts = ConnectionCounts::default();
        for quic in self.conns.values().flat_map(|c| c.values()) {
            if *quic {
                counts.quic += 1;
            } else {
                counts.tcp += 1;
            }
        }
        self.connection_counts.send_replace(counts);
    }

    /// Dials `peer`, reached over TCP only, at the QUIC addresses it
    /// listens on (at most every [`QUIC_RETRY`]).
    fn upgrade_to_quic(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let has_quic = self.has_quic(&peer);
        let quic: Vec<Multiaddr> = addrs.iter().filter(|a| is_quic(a)).cloned().collect();
        let recent = self
            .quic_tried
            .get(&peer)
            .is_some_and(|t| t.elapsed() < QUIC_RETRY);
        if !self.quic || has_quic || quic.is_empty() || recent {
            return;
        }
        self.quic_tried.insert(peer, Instant::now());
        debug!(%peer, "dialling over QUIC");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(quic)
            .build();
        if let Err(err) = self.swarm.dial(opts) {
            debug!(%peer, error = %err, "QUIC dial failed");
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
                let _ = reply.send(self.conns.keys().copied().collect());
            }
            Command::Provide { key } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                if let Err(err) = kad.start_providing(kad::RecordKey::new(&key)) {
                    debug!(error = %err, "could not provide");
                }
            }
            Command::StopProviding { key } => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&kad::RecordKey::new(&key));
            }
            Command::Providers { key, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.lookups.insert(id, (reply, HashSet::new()));
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
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.twin_dials.remove(&connection_id);
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    let bare = strip_peer_id(address.clone());
                    let entry = self
                        .bootstrap
                        .iter()
                        .find(|b| **b == bare || quic_twin(b).as_ref() == Some(&bare));
                    if let Some(entry) = entry {
                        self.bootstrap_peers.insert(entry.clone(), peer_id);
                    }
                }
                self.prefer_quic(
                    peer_id,
                    connection_id,
                    is_quic(endpoint.get_remote_address()),
                );
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, "connected");
                    if self.conns.len() == 1 {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                    self.emit(NetEvent::Connected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some(addr) = self.twin_dials.remove(&connection_id) {
                    debug!(%addr, %error, "no answer over QUIC; dialling over TCP");
                    self.twin_failed.insert(addr);
                    self.maintain_connections();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(conns) = self.conns.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                    if conns.is_empty() {
                        self.conns.remove(&peer_id);
                    }
                }
                self.count_connections();
                if num_established == 0 {
                    debug!(peer = %peer_id, "disconnected");
                    self.emit(NetEvent::Disconnected(peer_id));
                }
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
                self.upgrade_to_quic(peer_id, &addrs);
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
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                if let Some((_, found)) = self.lookups.get_mut(&id) {
                    if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                        found.extend(providers);
                    }
                }
                if step.last {
                    if let Some((reply, found)) = self.lookups.remove(&id) {
                        let _ = reply.send(found.into_iter().collect());
                    }
                }
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

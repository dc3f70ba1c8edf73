//! The mesh, assembled: the swarm task plus the loops that keep the
//! replicated tables the same everywhere. Push and repair are separate:
//! every local change is gossiped at once, and anti-entropy rounds with a
//! random peer (jittered, under a timeout) repair what gossip lost.

use crate::hlc::Clock;
use crate::members::{interval_for, LocalInfo, Members, ServerRecord};
use crate::net::{self, Client, NetConfig, NetError, NetEvent};
use crate::store::{Change, Origin, Store, StoreError};
use crate::wire::{self, Heartbeat, StateMsg, VERSION};
use crate::{beats, sync};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Local changes waiting to be gossiped; beyond this they are left to anti-entropy.
const PUSH_BUFFER: usize = 4096;
/// Pause between anti-entropy rounds when in sync (jittered up to twice this).
const REPAIR_INTERVAL: Duration = Duration::from_secs(2);
/// Pause between rounds while catching up.
const CATCH_UP_INTERVAL: Duration = Duration::from_millis(100);
/// A round that takes longer is abandoned.
const ROUND_TIMEOUT: Duration = Duration::from_secs(20);
/// Every how many heartbeats one also goes out over gossipsub.
const GOSSIP_BEAT_EVERY: u32 = 10;
/// With no peer reachable for this long, a peer starts on its own data.
const ALONE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running mesh membership.
pub struct Mesh {
    pub client: Client,
    pub members: Arc<Members>,
    /// True once this peer has caught up with a peer (or found itself alone).
    pub synced: watch::Receiver<bool>,
    tasks: JoinSet<()>,
}

impl Mesh {
    /// Joins the mesh. `info` is what this peer says about itself; a peer
    /// silent for `lease` is dead; the returned tasks stop when `shutdown`
    /// turns true.
    pub fn start(
        net_cfg: NetConfig,
        store: Store,
        clock: Arc<Clock>,
        info: watch::Receiver<LocalInfo>,
        lease: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, MeshError> {
        let servers = store.table::<ServerRecord>("servers")?;
        let (client, events, swarm) = net::spawn(net_cfg, shutdown.clone())?;
        let members = Arc::new(Members::new(
            client.local_peer_id().to_string(),
            servers,
            clock,
            lease,
        ));
        let (synced_tx, synced) = watch::channel(false);
        let (push_tx, push_rx) = mpsc::channel::<Change>(PUSH_BUFFER);
        store.listen(Arc::new(move |c: &Change| {
            if c.origin == Origin::Local && push_tx.try_send(c.clone()).is_err() {
                debug!(table = %c.table, "gossip queue full; anti-entropy will carry this change");
            }
        }));
        let (connected_tx, connected_rx) = mpsc::channel(64);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let _ = swarm.await;
        });
        tasks.spawn(dispatch(
            events,
            store.clone(),
            members.clone(),
            connected_tx,
            shutdown.clone(),
        ));
        tasks.spawn(push(push_rx, client.clone(), shutdown.clone()));
        tasks.spawn(repair(
            store,
            client.clone(),
            connected_rx,
            synced_tx,
            shutdown.clone(),
        ));
        tasks.spawn(beats::accept(
            client.clone(),
            members.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(heartbeat(client.clone(), members.clone(), info, shutdown));
        Ok(Self {
            client,
            members,
            synced,
            tasks,
        })
    }

    /// Waits for every mesh task to end (after shutdown).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Routes network events: gossip into the store or the membership view,
/// sync requests to the answering code.
async fn dispatch(
    mut events: mpsc::Receiver<NetEvent>,
    store: Store,
    members: Arc<Members>,
    connected: mpsc::Sender<libp2p::PeerId>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            e = events.recv() => match e { Some(e) => e, None => break },
        };
        match event {
            NetEvent::Gossip {
                topic,
                source,
                data,
            } if topic == wire::STATE_TOPIC => match wire::decode_gossip::<StateMsg>(&data) {
                Ok(msg) => {
                    if let Err(err) = store.apply_remote(&msg.table, &msg.key, &msg.value) {
                        warn!(?source, table = %msg.table, error = %err, "dropping a gossiped row");
                    }
                }
                Err(err) => warn!(?source, error = %err, "dropping a malformed state message"),
            },
            NetEvent::Gossip {
                topic,
                source,
                data,
            } if topic == wire::HEARTBEAT_TOPIC => {
                // A heartbeat speaks for its signer (gossipsub checks the signature).
                match (wire::decode_gossip::<Heartbeat>(&data), source) {
                    (Ok(beat), Some(peer)) => members.observe(peer.to_string(), beat),
                    (Ok(_), None) => warn!("dropping an unsigned heartbeat"),
                    (Err(err), _) => warn!(?source, error = %err, "dropping a malformed heartbeat"),
                }
            }
            NetEvent::Gossip { topic, .. } => debug!(topic, "gossip on an unknown topic"),
            NetEvent::Inbound { request, reply, .. } => {
                let store = store.clone();
                // Answering may scan a table: keep it off this loop.
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(sync::serve(&store, request));
                });
            }
            NetEvent::Connected(peer) => {
                let _ = connected.try_send(peer);
            }
            NetEvent::Disconnected(_) => {}
        }
    }
}

/// Gossips local changes as they happen.
async fn push(
    mut changes: mpsc::Receiver<Change>,
    client: Client,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            c = changes.recv() => match c { Some(c) => c, None => break },
        };
        let msg = StateMsg {
            v: VERSION,
            table: change.table.to_string(),
            key: ByteBuf::from(change.key),
            value: ByteBuf::from(change.new),
        };
        match wire::encode(&msg) {
            Ok(bytes) if bytes.len() <= wire::MAX_GOSSIP_BYTES => {
                if client.publish(wire::STATE_TOPIC, bytes).await.is_err() {
                    break;
                }
            }
            Ok(_) => debug!(table = %msg.table, "row too large to gossip; anti-entropy carries it"),
            Err(err) => warn!(error = %err, "could not encode a state message"),
        }
    }
}

/// Anti-entropy: a round with a random peer every few seconds (at once with
/// a newly connected peer, quickly while catching up).
async fn repair(
    store: Store,
    client: Client,
    mut connected: mpsc::Receiver<libp2p::PeerId>,
    synced: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    let mut pause = CATCH_UP_INTERVAL;
    loop {
        let chosen = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            Some(peer) = connected.recv() => Some(peer),
            _ = tokio::time::sleep(pause) => None,
        };
        let peer = match chosen {
            Some(p) => Some(p),
            None => client
                .peers()
                .await
                .ok()
                .and_then(|p| p.choose(&mut rand::thread_rng()).copied()),
        };
        let Some(peer) = peer else {
            if !*synced.borrow() && started.elapsed() >= ALONE_AFTER {
                info!("no peer reachable yet; starting from local state");
                let _ = synced.send(true);
            }
            pause = CATCH_UP_INTERVAL.max(Duration::from_millis(500));
            continue;
        };
        let outcome = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = tokio::time::timeout(ROUND_TIMEOUT, sync::round(&store, &client, peer)) => r,
        };
        match outcome {
            Ok(Ok(stats)) => {
                let caught_up = !stats.truncated && stats.pulled == 0 || stats.in_sync();
                if caught_up && !*synced.borrow() {
                    info!(%peer, "caught up with the mesh");
                    let _ = synced.send(true);
                }
                pause = if caught_up {
                    jitter(REPAIR_INTERVAL)
                } else {
                    CATCH_UP_INTERVAL
                };
            }
            Ok(Err(err)) => {
                debug!(%peer, error = %err, "anti-entropy round failed");
                pause = jitter(REPAIR_INTERVAL / 4);
            }
            Err(_) => {
                warn!(%peer, "anti-entropy round timed out");
                pause = jitter(REPAIR_INTERVAL);
            }
        }
    }
}

fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(1.0..2.0))
}

/// Beats every interval (longer in big meshes): directly to every connected
/// peer, and every [`GOSSIP_BEAT_EVERY`]th time also over gossipsub, with a
/// proportionally longer interval, for peers not directly connected.
async fn heartbeat(
    client: Client,
    members: Arc<Members>,
    mut info: watch::Receiver<LocalInfo>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut control = client.streams();
    let mut outbound = beats::Outbound::default();
    let mut count: u32 = 0;
    loop {
        let interval = interval_for(members.alive_count());
        let addresses: Vec<String> = client
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let local = info.borrow_and_update().clone();
        match members.beat(&local, addresses, interval) {
            Ok(beat) => {
                if let (Ok(frame), Ok(peers)) = (beats::frame(&beat), client.peers().await) {
                    outbound.send(&mut control, &peers, &frame).await;
                }
                if count.is_multiple_of(GOSSIP_BEAT_EVERY) {
                    let slow = Heartbeat {
                        interval_ms: beat.interval_ms.saturating_mul(GOSSIP_BEAT_EVERY),
                        ..beat
                    };
                    if let Ok(bytes) = wire::encode(&slow) {
                        let _ = client.try_publish(wire::HEARTBEAT_TOPIC, bytes);
                    }
                }
                count = count.wrapping_add(1);
            }
            Err(err) => warn!(error = %err, "could not record this peer in the servers table"),
        }
        // A change of free build slots (a peer that starts draining has
        // none) beats at once, so that elections stop picking this peer.
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(interval) => {}
            _ = slots_change(&mut info, local.free_slots) => {}
        }
    }
}

/// Resolves when the free build slots differ from `sent`.
async fn slots_change(info: &mut watch::Receiver<LocalInfo>, sent: u8) {
    loop {
        if info.changed().await.is_err() {
            return std::future::pending().await;
        }
        if info.borrow().free_slots != sent {
            return;
        }
    }
}

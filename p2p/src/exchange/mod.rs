//! Bitswap-style block exchange over one libp2p stream per (peer, artifact),
//! protocol `/shoal/blocks/1`.
//!
//! The asking side opens a stream and sends `Open`; the serving side answers
//! with the manifest (if asked) and a bitfield of the blocks it holds, then
//! keeps the asker up to date (`HaveMore`) as it gets more, and sends blocks
//! in the order they are wanted. Frames are length-prefixed CBOR with a hard
//! size limit. A peer serves an artifact as soon as it holds its manifest,
//! whatever blocks it has so far.
//!
//! A fetch runs one session per source (up to [`MAX_SOURCES`], preferred
//! peers first) and one driver that decides which block to want from whom:
//! rarest first among the sources' bitfields, then its own share of them
//! (so fetchers drawing on one seed do not make it send a block twice),
//! in a random order among equals (so fetchers spread out and soon have
//! something to give each other; see the `picker` module, which makes a pick
//! cost about what it picks, not the artifact's size), with a window of
//! bytes in flight per source, kept
//! full, that starts at [`WINDOW`] and grows
//! only while the source answers in about a round trip (so a far, fast
//! source gets its bandwidth-delay product and a busy one no queue of ours).
//! When every missing block is
//! in flight, the tail is asked of a second source too (endgame) and the
//! slower copy cancelled. A block whose hash is wrong bans its sender for a
//! while; a source that stalls loses its requests to the others. A
//! [`BlockSink`] sees every block as it lands and may name a few blocks it
//! needs first (the tail of a zip, say).

mod driver;
mod frame;
mod held;
mod policy;
mod serve;
mod session;

use crate::blocks::{self, BlockError, BlockStore, Hash, Manifest};
use crate::locks::LockExt;
use crate::picker::{Ask, Picker};
use driver::Driver;
use frame::{bit, clear_bit, read_frame, set_bit, write_frame, Frame, VERSION};
use futures_util::io::{AsyncRead, AsyncReadExt};
use futures_util::StreamExt;
pub use held::Held;
use libp2p::{PeerId, StreamProtocol};
use policy::{mix, next_window, share, Crew, Holders, QueueWatch};
use serde_bytes::ByteBuf;
use serve::Limiter;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, trace, warn};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/blocks/1");
/// Largest frame other than a manifest: one block plus framing.
const MAX_FRAME: usize = blocks::MAX_CHUNK as usize + 4096;
/// Most block indices in one `Want`, `Cancel` or `HaveMore` frame.
const MAX_LIST: usize = 16 * 1024;
/// Most wanted blocks one asker may queue at a server.
const MAX_QUEUED: usize = 1024;
/// Bytes asked of one source at a time, at first and at least: a source's
/// share of a busy link needs little more than its rate × RTT in flight,
/// and what is asked beyond that only queues at the source (where the last
/// blocks of a fetch would wait behind it).
pub const WINDOW: u64 = 512 * 1024;
/// The most asked of one source at a time (a fast link far away).
const MAX_WINDOW: u64 = 16 * 1024 * 1024;
/// A source's window is topped up once this much of it is free.
const REFILL: u64 = 2 * blocks::AVG_CHUNK as u64;
/// Sources fetched from at once.
pub const MAX_SOURCES: usize = 8;
/// Inbound block streams served at once.
const MAX_INBOUND: usize = 256;
/// A source with requests out and no block for this long loses them.
const STALL: Duration = Duration::from_secs(4);
/// How long a peer that sent a corrupt block is ignored.
const BAN: Duration = Duration::from_secs(300);
/// Bound on opening a stream and on its first answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// A server stream with nothing asked for this long is closed.
const IDLE: Duration = Duration::from_secs(120);
/// Blocks received on one stream and waiting to be checked and stored.
const STORE_QUEUE: usize = 8;
/// Shortest time between two `HaveMore` updates on one stream.
const HAVE_EVERY: Duration = Duration::from_millis(20);
/// Most wanted blocks a server reads in one go.
const READ_AHEAD: usize = 4;
/// How often a fetch looks for new sources and stalls.
const TICK: Duration = Duration::from_millis(200);
/// How long far sources wait, at most, for a near one to say what it holds
/// (on its first try in a fetch: one that failed before holds nothing up).
const NEAR_GRACE: Duration = Duration::from_secs(1);
/// A nearby source that holds every block (the builder, say) and whose
/// answers lately took this much longer than its quickest (and 2.5 times as
/// long) has a queue: what only it holds nearby may be asked of far
/// sources. Every first copy in its region leaves through its link, and
/// what it sent to other regions is held there too: taking that back from
/// afar spares its link for blocks no one else has yet.
const SEED_QUEUED: Duration = Duration::from_millis(50);
/// The same for a nearby source still fetching: only a badly slow one is
/// passed over, since it is how its blocks reach its region without
/// crossing again (on a busy mesh every peer queues a little).
const QUEUED: Duration = Duration::from_secs(1);
/// Ticks in a row whose answers were that slow before a source counts as
/// queued: a queue at its link lasts, a moment without CPU here or there
/// (a busy machine) passes. One quick tick clears it.
const QUEUE_TICKS: u32 = 3;
/// A nearby fetcher that said it holds a new block within this long is
/// still bringing its share across (see [`Crew`]).
const ACTIVE: Duration = Duration::from_secs(2);
/// How long a server holding blocks no one was sent yet (the builder, at
/// first) answers [`Frame::Later`] to a second ask for a block it sent as a
/// first copy: about the time its first recipient takes to get it and say
/// so. Every first copy leaves through the seed's one link, and a second
/// copy from it would come before some block only it holds.
const HOLD: Duration = Duration::from_secs(2);
/// How long an asker leaves a block alone at a source that said `Later`.
const LATER: Duration = Duration::from_millis(500);

/// Takes each block of a fetch as soon as it is checked and stored (to
/// unpack while fetching, say). Called on a blocking thread, possibly from
/// several at once, and possibly twice for one block.
pub trait BlockSink: Send + Sync {
    fn block(&self, index: usize, data: &[u8]);
    /// Blocks to ask for before any other, now (asked again as blocks arrive;
    /// keep it short).
    fn urgent(&self) -> Vec<usize> {
        Vec::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Store(#[from] BlockError),
    #[error("the network has stopped")]
    Shutdown,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ExchangeStats {
    /// Block bytes received (duplicates included: this is what the wire carried).
    pub fetched_bytes: AtomicU64,
    pub fetched_blocks: AtomicU64,
    /// Block bytes received that were already here (endgame duplicates).
    pub duplicate_bytes: AtomicU64,
    /// Block bytes stored from far sources (see [`Candidate::far`]).
    pub far_bytes: AtomicU64,
    pub served_bytes: AtomicU64,
    pub served_blocks: AtomicU64,
    /// Blocks received that did not match their hash.
    pub bad_blocks: AtomicU64,
}

/// What a fetch has so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub blocks: usize,
    pub total_blocks: usize,
    pub bytes: u64,
    pub total_bytes: u64,
    pub sources: usize,
}

/// A peer a fetch may draw on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub peer: PeerId,
    /// Elsewhere (another region): asked only for blocks that no source
    /// nearby can give soon (none holds them, or only a seed nearby with a
    /// queue or a badly slow fetcher does: see [`SEED_QUEUED`]), of those
    /// only this peer's share among the peers nearby fetching with it (see
    /// [`Crew`]), and only once every source nearby has said what it holds
    /// (or had a second to). So what is at hand does not cross the far
    /// link, a block crosses into a region about once, and a busy builder
    /// nearby does not hold up a fetch that peers afar could feed.
    pub far: bool,
}

impl Candidate {
    pub fn near(peer: PeerId) -> Self {
        Self { peer, far: false }
    }
}

/// Where a fetch may look for sources, best first (asked again every tick,
/// so peers that appear later are used too).
pub type Candidates = Arc<dyn Fn() -> Vec<Candidate> + Send + Sync>;

/// The Kademlia providers of one artifact, looked up in the background
/// every so often: beside the candidates, never in front of them (they
/// usually have it already).
struct Providers {
    found: Arc<Mutex<Vec<PeerId>>>,
    every: Duration,
    last: Option<Instant>,
}

impl Providers {
    fn new(every: Duration) -> Self {
        Self {
            found: Arc::default(),
            every,
            last: None,
        }
    }

    /// The providers found by the last lookup; starts a new lookup if due.
    fn get(&mut self, client: &crate::net::Client, id: &Hash) -> Vec<PeerId> {
        if self.last.is_none_or(|t| t.elapsed() > self.every) {
            self.last = Some(Instant::now());
            let (client, key, found) = (client.clone(), id.to_vec(), self.found.clone());
            tokio::spawn(async move {
                if let Ok(list) = client.providers(key).await {
                    *found.lock_unpoisoned() = list;
                }
            });
        }
        self.found.lock_unpoisoned().clone()
    }
}

/// The block exchange of one peer: serves what it holds, fetches what it is asked to.
pub struct Exchange {
    pub store: Arc<BlockStore>,
    control: libp2p_stream::Control,
    local: PeerId,
    held: Mutex<HashMap<Hash, Arc<Held>>>,
    banned: Mutex<HashMap<PeerId, Instant>>,
    pub stats: ExchangeStats,
    limiter: Limiter,
}

impl Exchange {
    /// `upload_limit`: bytes per second this peer sends at most (0: no limit).
    pub fn new(
        store: Arc<BlockStore>,
        client: &crate::net::Client,
        upload_limit: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            control: client.streams(),
            local: client.local_peer_id(),
            held: Mutex::new(HashMap::new()),
            banned: Mutex::new(HashMap::new()),
            stats: ExchangeStats::default(),
            limiter: Limiter {
                bytes_per_sec: upload_limit,
                next_free: Mutex::new(Instant::now()),
            },
        })
    }

    /// The artifact `id`, if this peer has its manifest (loaded on first use).
    pub fn held(&self, id: &Hash) -> Option<Arc<Held>> {
        if let Some(h) = self.held.lock_unpoisoned().get(id) {
            return Some(h.clone());
        }
        let manifest = self.store.manifest(id).ok()??;
        self.insert(id, manifest)
    }

    fn insert(&self, id: &Hash, manifest: Manifest) -> Option<Arc<Held>> {
        let held = Arc::new(Held::new(manifest, &self.store));
        let mut map = self.held.lock_unpoisoned();
        Some(map.entry(*id).or_insert(held).clone())
    }

    /// Stops serving `id` (its blocks are being collected).
    pub fn forget(&self, id: &Hash) {
        self.held.lock_unpoisoned().remove(id);
    }

    /// Notes that block `i` of `id` went missing here (found corrupt).
    pub fn lost_block(&self, id: &Hash, i: usize) {
        if let Some(h) = self.held(id) {
            h.mark(i, false);
        }
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        let mut banned = self.banned.lock_unpoisoned();
        banned.retain(|_, until| *until > Instant::now());
        banned.contains_key(peer)
    }

    fn ban(&self, peer: PeerId) {
        warn!(%peer, secs = BAN.as_secs(), "peer sent a corrupt block; ignoring it for a while");
        self.banned
            .lock_unpoisoned()
            .insert(peer, Instant::now() + BAN);
    }

    /// The manifest of artifact `id`: the one held here, or one fetched from
    /// the `candidates` and any Kademlia providers found through `client`.
    pub async fn manifest(
        self: &Arc<Self>,
        id: Hash,
        candidates: &Candidates,
        client: &crate::net::Client,
    ) -> Result<Arc<Manifest>, ExchangeError> {
        Ok(self.open(id, candidates, client).await?.manifest.clone())
    }

    async fn open(
        self: &Arc<Self>,
        id: Hash,
        candidates: &Candidates,
        client: &crate::net::Client,
    ) -> Result<Arc<Held>, ExchangeError> {
        match self.held(&id) {
            Some(h) => Ok(h),
            None => self.fetch_manifest(&id, candidates, client).await,
        }
    }

    /// Fetches artifact `id` until every block is here and checked, from
    /// the `candidates` and any Kademlia providers found through `client`,
    /// handing each block to `sink` as it arrives.
    /// Runs until done or dropped; only local failures end it early.
    pub async fn fetch(
        self: &Arc<Self>,
        id: Hash,
        candidates: Candidates,
        client: crate::net::Client,
        progress: watch::Sender<Progress>,
        sink: Option<Arc<dyn BlockSink>>,
    ) -> Result<Arc<Manifest>, ExchangeError> {
        let held = self.open(id, &candidates, &client).await?;
        let manifest = held.manifest.clone();
        // Holding the manifest, this peer serves what it has from now on:
        // say so in the DHT too.
        let _ = client.provide(id.to_vec()).await;
        if !held.complete() {
            let (h, store) = (held.clone(), self.store.clone());
            let _ = tokio::task::spawn_blocking(move || h.refresh(&store)).await;
        }
        if !held.complete() {
            let mut driver = Driver::new(self.clone(), id, held.clone(), candidates.clone(), sink);
            driver.run(&client, &progress).await?;
        }
        // Every block was checked on arrival (or is checked when read for
        // use): no second pass over the whole artifact here.
        Ok(manifest)
    }

    /// Looks again at which blocks of `id` are on disk (after a reader found
    /// one corrupt and deleted it), so that the next fetch gets them again.
    pub fn recheck(&self, id: &Hash) {
        if let Some(held) = self.held(id) {
            for i in 0..held.manifest.len() {
                let here = self.store.has(&held.manifest.hash(i));
                if held.has(i) != here {
                    held.mark(i, here);
                }
            }
        }
    }

    async fn fetch_manifest(
        &self,
        id: &Hash,
        candidates: &Candidates,
        client: &crate::net::Client,
    ) -> Result<Arc<Held>, ExchangeError> {
        let mut providers = Providers::new(Duration::from_secs(5));
        loop {
            // Near peers first: the manifest is small, but why cross.
            let mut listed = candidates();
            listed.sort_by_key(|c| c.far);
            let mut peers: Vec<PeerId> = listed.into_iter().map(|c| c.peer).collect();
            peers.extend(providers.get(client, id));
            let mut seen = HashSet::new();
            peers.retain(|p| *p != self.local && seen.insert(*p) && !self.is_banned(p));
            let mut asks: futures_util::stream::FuturesUnordered<_> = peers
                .iter()
                .take(4)
                .map(|p| self.ask_manifest(*p, id))
                .collect();
            while let Some(got) = asks.next().await {
                match got {
                    Ok(Some(bytes)) => {
                        if let Ok(m) = Manifest::decode(&bytes, id) {
                            self.store.put_manifest_bytes(id, &bytes)?;
                            drop(bytes);
                            if let Some(h) = self.insert(id, m) {
                                return Ok(h);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(err) => debug!(error = %err, "manifest request failed"),
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn ask_manifest(
        &self,
        peer: PeerId,
        id: &Hash,
    ) -> Result<Option<Vec<u8>>, ExchangeError> {
        let mut control = self.control.clone();
        tokio::time::timeout(OPEN_TIMEOUT * 2, async {
            let mut s = control
                .open_stream(peer, PROTOCOL)
                .await
                .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
            write_frame(
                &mut s,
                &Frame::Open {
                    v: VERSION,
                    artifact: ByteBuf::from(id.to_vec()),
                    manifest: true,
                    later: false,
                },
            )
            .await?;
            match read_frame(&mut s, blocks::MAX_MANIFEST_BYTES + 1024).await? {
                Frame::Manifest { bytes } => Ok(Some(bytes.into_vec())),
                Frame::Unknown => Ok(None),
                other => Err(ExchangeError::Protocol(format!("unexpected {other:?}"))),
            }
        })
        .await
        .map_err(|_| ExchangeError::Timeout)?
    }
}

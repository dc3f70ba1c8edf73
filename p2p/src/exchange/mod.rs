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

mod frame;
mod held;
mod policy;

use crate::blocks::{self, BlockError, BlockStore, Hash, Manifest};
use crate::locks::LockExt;
use crate::picker::{Ask, Picker};
use frame::{bit, clear_bit, read_frame, set_bit, write_frame, Frame, VERSION};
use futures_util::io::{AsyncRead, AsyncReadExt};
use futures_util::StreamExt;
pub use held::Held;
use libp2p::{PeerId, StreamProtocol};
use policy::{mix, next_window, share, Crew, Holders, QueueWatch};
use serde_bytes::ByteBuf;
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

/// Limits the rate at which this peer sends block bytes (all streams together).
struct Limiter {
    bytes_per_sec: u64,
    /// When the bytes sent so far will have drained.
    next_free: Mutex<Instant>,
}

impl Limiter {
    async fn take(&self, n: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let wait = {
            let mut next = self.next_free.lock_unpoisoned();
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
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

    /// Serves block streams until shutdown.
    pub async fn serve(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let control = self.control.clone();
        crate::net::accept_streams(control, PROTOCOL, MAX_INBOUND, shutdown, |peer, stream| {
            let this = self.clone();
            async move {
                if let Err(err) = this.serve_stream(stream).await {
                    debug!(%peer, error = %err, "block stream ended");
                }
            }
        })
        .await;
    }

    async fn serve_stream(&self, stream: libp2p::Stream) -> Result<(), ExchangeError> {
        let (mut rd, mut wr) = stream.split();
        let open = tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut rd, 1024))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        let Frame::Open {
            v: VERSION,
            artifact,
            manifest,
            later,
        } = open
        else {
            return Err(ExchangeError::Protocol("expected Open".into()));
        };
        let id: Option<Hash> = artifact.as_slice().try_into().ok();
        let Some((id, held)) = id.and_then(|id| Some((id, self.held(&id)?))) else {
            return write_frame(&mut wr, &Frame::Unknown).await;
        };
        if manifest {
            // Read when asked (once per fetcher) rather than kept beside
            // the decoded one: 32 bytes a block, per artifact held.
            let store = self.store.clone();
            let bytes = tokio::task::spawn_blocking(move || store.manifest_bytes(&id))
                .await
                .ok()
                .and_then(|read| read.ok().flatten());
            let frame = match bytes {
                Some(bytes) => Frame::Manifest {
                    bytes: ByteBuf::from(bytes),
                },
                None => Frame::Unknown, // collected meanwhile
            };
            write_frame(&mut wr, &frame).await?;
            return Ok(()); // a manifest stream carries nothing else
        }
        let mut changes = held.changed.subscribe();
        let mut sent = held.bits();
        write_frame(
            &mut wr,
            &Frame::Have {
                bits: ByteBuf::from(sent.clone()),
            },
        )
        .await?;
        let queue = Arc::new((Mutex::new(WantQueue::default()), Notify::new()));
        let n = held.manifest.len();
        let reader = {
            let queue = queue.clone();
            async move {
                let result = read_wants(&mut rd, &queue, n).await;
                queue.0.lock_unpoisoned().closed = true;
                queue.1.notify_one();
                result
            }
        };
        let writer = async {
            let mut last_have = Instant::now();
            // Blocks read and not sent yet.
            let mut ready: VecDeque<(u32, Answer)> = VecDeque::new();
            // Blocks arrived here that the asker has not been told of.
            let mut dirty = false;
            loop {
                // Tell the asker what arrived here meanwhile, at most every
                // HAVE_EVERY, also while busy sending blocks.
                dirty |= changes.has_changed().unwrap_or(false);
                if dirty && last_have.elapsed() >= HAVE_EVERY {
                    changes.borrow_and_update();
                    dirty = false;
                    last_have = Instant::now();
                    let now = held.bits();
                    // Compared a byte at a time: most bytes are unchanged.
                    let fresh: Vec<u32> = now
                        .iter()
                        .zip(&sent)
                        .enumerate()
                        .filter(|(_, (a, b))| a != b)
                        .flat_map(|(w, (a, b))| {
                            let new = a & !b;
                            (0..8)
                                .filter(move |k| new & (1 << k) != 0)
                                .map(move |k| (w * 8 + k) as u32)
                        })
                        .collect();
                    sent = now;
                    for part in fresh.chunks(MAX_LIST) {
                        write_frame(
                            &mut wr,
                            &Frame::HaveMore {
                                blocks: part.to_vec(),
                            },
                        )
                        .await?;
                    }
                }
                // Wanted blocks are read a few at a time, in one blocking
                // call (its wake-ups cost more than the reads on a busy
                // machine), and sent one frame each.
                if ready.is_empty() {
                    let batch: Vec<u32> = {
                        let mut q = queue.0.lock_unpoisoned();
                        if q.closed {
                            return Ok::<(), ExchangeError>(());
                        }
                        let k = q.wants.len().min(READ_AHEAD);
                        let batch: Vec<u32> = q.wants.drain(..k).collect();
                        q.taken.extend(&batch);
                        batch
                    };
                    if batch.is_empty() {
                        tokio::select! {
                            _ = queue.1.notified() => {}
                            changed = changes.changed(), if !dirty => {
                                if changed.is_err() { return Ok(()); }
                                dirty = true;
                            }
                            _ = tokio::time::sleep_until((last_have + HAVE_EVERY).into()), if dirty => {}
                            _ = tokio::time::sleep(IDLE) => return Ok(()),
                        }
                        continue;
                    }
                    let now = Instant::now();
                    // The hash of each block to read, or the answer instead.
                    let wanted: Vec<(u32, Result<Hash, Answer>)> = batch
                        .into_iter()
                        .map(|index| {
                            let i = index as usize;
                            let what = if !held.has(i) {
                                Err(Answer::DontHave)
                            } else if later && !held.sends().may_send(index, now) {
                                Err(Answer::Later)
                            } else {
                                Ok(held.manifest.hash(i))
                            };
                            (index, what)
                        })
                        .collect();
                    let store = self.store.clone();
                    ready = tokio::task::spawn_blocking(move || {
                        wanted
                            .into_iter()
                            .map(|(index, what)| {
                                let answer = match what {
                                    Ok(hash) => Answer::Block(store.read_raw(&hash)),
                                    Err(answer) => answer,
                                };
                                (index, answer)
                            })
                            .collect()
                    })
                    .await
                    .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
                }
                let Some((index, data)) = ready.pop_front() else {
                    continue;
                };
                let cancelled = {
                    let mut q = queue.0.lock_unpoisoned();
                    q.taken.remove(&index);
                    q.cancelled.remove(&index)
                };
                if cancelled {
                    continue;
                }
                let data = match data {
                    Answer::Block(Ok(data)) => data,
                    Answer::Block(Err(_)) => {
                        // Gone from the store since: stop offering it.
                        held.mark(index as usize, false);
                        write_frame(&mut wr, &Frame::DontHave { index }).await?;
                        continue;
                    }
                    Answer::DontHave => {
                        write_frame(&mut wr, &Frame::DontHave { index }).await?;
                        continue;
                    }
                    Answer::Later => {
                        write_frame(&mut wr, &Frame::Later { index }).await?;
                        continue;
                    }
                };
                self.limiter.take(data.len()).await;
                let len = data.len() as u64;
                write_frame(
                    &mut wr,
                    &Frame::Block {
                        index,
                        data: ByteBuf::from(data),
                    },
                )
                .await?;
                self.stats.served_bytes.fetch_add(len, Ordering::Relaxed);
                self.stats.served_blocks.fetch_add(1, Ordering::Relaxed);
            }
        };
        let (r, w) = tokio::join!(reader, writer);
        r.and(w)
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

/// A server's answer to one wanted block.
enum Answer {
    Block(Result<Vec<u8>, BlockError>),
    DontHave,
    Later,
}

#[derive(Default)]
struct WantQueue {
    wants: VecDeque<u32>,
    /// Taken from `wants` to be sent (read ahead), and of those, the ones
    /// the asker has cancelled since.
    taken: HashSet<u32>,
    cancelled: HashSet<u32>,
    closed: bool,
}

async fn read_wants<R: AsyncRead + Unpin>(
    rd: &mut R,
    queue: &(Mutex<WantQueue>, Notify),
    n: usize,
) -> Result<(), ExchangeError> {
    loop {
        let frame = match read_frame(rd, MAX_FRAME).await {
            Ok(f) => f,
            Err(ExchangeError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        {
            let mut q = queue.0.lock_unpoisoned();
            match frame {
                Frame::Want { blocks } => {
                    if blocks.len() > MAX_LIST
                        || q.wants.len() + blocks.len() > MAX_QUEUED
                        || blocks.iter().any(|b| *b as usize >= n)
                    {
                        return Err(ExchangeError::Protocol("bad or excessive Want".into()));
                    }
                    q.wants.extend(blocks);
                }
                Frame::Cancel { blocks } => {
                    let gone: HashSet<u32> = blocks.into_iter().take(MAX_LIST).collect();
                    q.wants.retain(|b| !gone.contains(b));
                    let late: Vec<u32> = gone.into_iter().filter(|b| q.taken.contains(b)).collect();
                    q.cancelled.extend(late);
                }
                other => return Err(ExchangeError::Protocol(format!("unexpected {other:?}"))),
            }
        }
        queue.1.notify_one();
    }
}

/// What a session tells the driver.
enum Event {
    Have(Vec<u8>),
    HaveMore(Vec<u32>),
    Stored {
        index: u32,
        new: bool,
        /// When its frame was read off the stream.
        landed: Instant,
    },
    DontHave(u32),
    Later(u32),
    Bad(u32),
    /// The source does not (yet) have the artifact.
    Unknown,
    Closed(String),
}

struct Source {
    token: u64,
    cmds: mpsc::Sender<Frame>,
    /// In another region (see [`Candidate::far`]).
    far: bool,
    /// Until then, far sources wait for this near one to say what it holds.
    holds_far_until: Option<Instant>,
    /// Whether its answers lately show a queue there (see [`SEED_QUEUED`],
    /// [`QUEUED`]).
    watch: QueueWatch,
    bits: Option<Vec<u8>>,
    /// How many blocks it holds (the bits set).
    holds: usize,
    /// When it last said it holds a block it did not before (or what it
    /// holds at all).
    last_news: Instant,
    /// Blocks asked of this source, and when.
    wanted: HashMap<u32, Instant>,
    /// Blocks it said to ask for later (see [`Frame::Later`]), and until when.
    later: HashMap<u32, Instant>,
    inflight_bytes: u64,
    /// Bytes it may have in flight (see [`next_window`]).
    window: u64,
    /// The quickest answer so far (about one round trip), and the answers
    /// since the last tick.
    quickest: Duration,
    answers: u32,
    waited: Duration,
    local: Duration,
    last_data: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Source {
    /// Whether the blocks it holds keep far sources from being asked.
    fn counts_near(&self) -> bool {
        !self.far && !self.watch.queued()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Driver {
    ex: Arc<Exchange>,
    id: Hash,
    held: Arc<Held>,
    candidates: Candidates,
    n: usize,
    /// Requests out per block.
    inflight: Vec<u8>,
    /// The blocks still needed, rarest first, and who holds them.
    holders: Holders,
    sources: HashMap<PeerId, Source>,
    /// Peers to leave alone until then (no artifact yet, or failed).
    retry_at: HashMap<PeerId, (Instant, Duration)>,
    providers: Providers,
    next_token: u64,
    /// Bytes of the artifact held here.
    held_bytes: u64,
    sink: Option<Arc<dyn BlockSink>>,
}

impl Driver {
    fn new(
        ex: Arc<Exchange>,
        id: Hash,
        held: Arc<Held>,
        candidates: Candidates,
        sink: Option<Arc<dyn BlockSink>>,
    ) -> Self {
        let n = held.manifest.len();
        let have = held.bits();
        let picker = Picker::new(n, |i| !bit(&have, i), rand::random());
        Self {
            ex,
            id,
            held,
            candidates,
            n,
            inflight: vec![0; n],
            holders: Holders::new(picker, n),
            sources: HashMap::new(),
            retry_at: HashMap::new(),
            providers: Providers::new(Duration::from_secs(10)),
            next_token: 0,
            held_bytes: 0,
            sink,
        }
    }

    async fn run(
        &mut self,
        client: &crate::net::Client,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), ExchangeError> {
        let (tx, mut rx) = mpsc::channel::<(PeerId, u64, Event)>(1024);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        self.held_bytes = self.bytes_held();
        while !self.held.complete() {
            tokio::select! {
                Some((peer, token, ev)) = rx.recv() => {
                    if self.sources.get(&peer).is_some_and(|s| s.token == token) {
                        self.on_event(peer, ev);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for src in self.sources.values_mut() {
                        src.later.retain(|_, until| *until > now);
                    }
                    self.resync();
                    self.adapt_windows();
                    self.check_stalls();
                    self.add_sources(&tx, client);
                }
            }
            self.dispatch();
            let total_bytes = self.held.manifest.size;
            let blocks = self.held.count();
            progress.send_if_modified(|p| {
                let next = Progress {
                    blocks,
                    total_blocks: self.n,
                    bytes: self.held_bytes,
                    total_bytes,
                    sources: self.sources.len(),
                };
                let changed = *p != next;
                *p = next;
                changed
            });
        }
        info!(
            artifact = %blocks::to_hex(&self.id),
            blocks = self.n,
            secs = started.elapsed().as_secs_f64(),
            "all blocks here"
        );
        Ok(())
    }

    /// Brings the picker in line with the blocks held, which can change
    /// besides this fetch (a stored block found corrupt is dropped, say).
    fn resync(&mut self) {
        let have = self.held.bits();
        for i in 0..self.n {
            match (bit(&have, i), self.holders.picker.needed(i)) {
                (true, true) => self.holders.picker.arrived(i),
                (false, false) => self.holders.picker.needed_again(i),
                _ => {}
            }
        }
    }

    fn bytes_held(&self) -> u64 {
        let bits = self.held.bits();
        (0..self.n)
            .filter(|i| bit(&bits, *i))
            .map(|i| self.held.manifest.size_of(i))
            .sum()
    }

    fn add_sources(
        &mut self,
        tx: &mpsc::Sender<(PeerId, u64, Event)>,
        client: &crate::net::Client,
    ) {
        if self.sources.len() >= MAX_SOURCES {
            return;
        }
        let now = Instant::now();
        let mut peers = (self.candidates)();
        // Providers found through Kademlia but not among the candidates are
        // of no known region: taken as near.
        peers.extend(
            self.providers
                .get(client, &self.id)
                .into_iter()
                .map(Candidate::near),
        );
        for Candidate { peer, far } in peers {
            if self.sources.len() >= MAX_SOURCES {
                break;
            }
            if peer == self.ex.local
                || self.sources.contains_key(&peer)
                || self.retry_at.get(&peer).is_some_and(|(t, _)| *t > now)
                || self.ex.is_banned(&peer)
            {
                continue;
            }
            let holds_far_until =
                (!far && !self.retry_at.contains_key(&peer)).then(|| now + NEAR_GRACE);
            self.next_token += 1;
            let token = self.next_token;
            let (cmds, cmd_rx) = mpsc::channel(64);
            let fetch = Fetch {
                ex: self.ex.clone(),
                id: self.id,
                manifest: self.held.manifest.clone(),
                sink: self.sink.clone(),
            };
            let task = tokio::spawn(session(fetch, peer, cmd_rx, tx.clone(), token));
            self.sources.insert(
                peer,
                Source {
                    token,
                    cmds,
                    far,
                    holds_far_until,
                    watch: QueueWatch::default(),
                    bits: None,
                    holds: 0,
                    last_news: now,
                    wanted: HashMap::new(),
                    later: HashMap::new(),
                    window: WINDOW,
                    quickest: Duration::MAX,
                    answers: 0,
                    waited: Duration::ZERO,
                    local: Duration::ZERO,
                    inflight_bytes: 0,
                    last_data: now,
                    task,
                },
            );
        }
    }

    /// Drops a source, giving its requests back to the others.
    fn drop_source(&mut self, peer: &PeerId, retry_after: Duration) {
        if let Some(src) = self.sources.remove(peer) {
            for i in src.wanted.keys() {
                self.inflight[*i as usize] = self.inflight[*i as usize].saturating_sub(1);
            }
            if let Some(bits) = &src.bits {
                self.holders.lost_all(bits, src.counts_near());
            }
        }
        let backoff = self.retry_at.get(peer).map_or(retry_after, |(_, d)| {
            (*d * 2).min(Duration::from_secs(5)).max(retry_after)
        });
        self.retry_at
            .insert(*peer, (Instant::now() + backoff, backoff));
    }

    /// Resizes each source's window by how long its answers took since the
    /// last tick.
    fn adapt_windows(&mut self) {
        for (peer, src) in self.sources.iter_mut() {
            let (answers, waited) = (
                std::mem::take(&mut src.answers),
                std::mem::take(&mut src.waited),
            );
            if answers > 0 {
                let busy = src.inflight_bytes >= src.window / 2;
                let mean = waited / answers;
                let local = std::mem::take(&mut src.local) / answers;
                src.window = next_window(src.window, busy, mean, src.quickest);
                let slack = if src.holds >= self.n {
                    SEED_QUEUED
                } else {
                    QUEUED
                };
                let was = src.watch.queued();
                let queued = src.watch.tick(mean, src.quickest, slack);
                if !src.far && queued != was {
                    if let Some(bits) = &src.bits {
                        self.holders.queue(bits, queued);
                    }
                    debug!(source = %peer, queued, "nearby source's queue");
                }
                trace!(
                    source = %peer,
                    answers,
                    mean_ms = mean.as_millis() as u64,
                    local_ms = local.as_millis() as u64,
                    quickest_ms = src.quickest.as_millis() as u64,
                    inflight = src.inflight_bytes,
                    window = src.window,
                    "window"
                );
            }
        }
    }

    fn check_stalls(&mut self) {
        let stalled: Vec<PeerId> = self
            .sources
            .iter()
            .filter(|(_, s)| !s.wanted.is_empty() && s.last_data.elapsed() > STALL)
            .map(|(p, _)| *p)
            .collect();
        for peer in stalled {
            debug!(%peer, "source stalled; asking others");
            self.drop_source(&peer, Duration::from_secs(5));
        }
    }

    fn on_event(&mut self, peer: PeerId, ev: Event) {
        match ev {
            Event::Have(bits) => {
                if bits.len() != self.n.div_ceil(8) {
                    self.drop_source(&peer, Duration::from_secs(5));
                    return;
                }
                let Some(src) = self.sources.get_mut(&peer) else {
                    return;
                };
                if let Some(old) = src.bits.take() {
                    // Said twice: count the second as the whole truth.
                    self.holders.lost_all(&old, src.counts_near());
                }
                self.holders.gained_all(&bits, src.counts_near());
                src.holds = (0..self.n).filter(|i| bit(&bits, *i)).count();
                src.bits = Some(bits);
                src.last_data = Instant::now();
                src.last_news = src.last_data;
                self.retry_at.remove(&peer);
            }
            Event::HaveMore(list) => {
                let Some(src) = self.sources.get_mut(&peer) else {
                    return;
                };
                let counts_near = src.counts_near();
                let Some(bits) = src.bits.as_mut() else {
                    return;
                };
                for i in list {
                    let i = i as usize;
                    if i < self.n && !bit(bits, i) {
                        set_bit(bits, i);
                        self.holders.gained(i, counts_near);
                        src.holds += 1;
                        src.last_news = Instant::now();
                    }
                }
            }
            Event::Stored { index, new, landed } => {
                let i = index as usize;
                let size = self.held.manifest.size_of(i);
                let asked = self.unask(&peer, index);
                if let Some(src) = self.sources.get_mut(&peer) {
                    if src.far {
                        self.ex.stats.far_bytes.fetch_add(size, Ordering::Relaxed);
                    }
                    if let Some(asked) = asked {
                        let waited = asked.elapsed();
                        src.quickest = src.quickest.min(waited);
                        src.answers += 1;
                        src.waited += waited;
                        src.local += landed.elapsed();
                    }
                    src.last_data = Instant::now();
                }
                if !new {
                    self.ex
                        .stats
                        .duplicate_bytes
                        .fetch_add(size, Ordering::Relaxed);
                }
                if !self.held.has(i) {
                    self.held_bytes += size;
                }
                self.held.mark(i, true);
                self.holders.picker.arrived(i);
                // Endgame: cancel the copies still coming from elsewhere.
                if self.inflight[i] > 0 {
                    for src in self.sources.values_mut() {
                        if src.wanted.remove(&index).is_some() {
                            src.inflight_bytes = src.inflight_bytes.saturating_sub(size);
                            let _ = src.cmds.try_send(Frame::Cancel {
                                blocks: vec![index],
                            });
                        }
                    }
                    self.inflight[i] = 0;
                }
            }
            Event::DontHave(index) => {
                let i = index as usize;
                self.unask(&peer, index);
                if let Some(src) = self.sources.get_mut(&peer) {
                    let counts_near = src.counts_near();
                    if let Some(bits) = src.bits.as_mut() {
                        if bit(bits, i) {
                            clear_bit(bits, i);
                            self.holders.lost(i, counts_near);
                            src.holds = src.holds.saturating_sub(1);
                        }
                    }
                }
            }
            Event::Later(index) => {
                self.unask(&peer, index);
                if let Some(src) = self.sources.get_mut(&peer) {
                    let now = Instant::now();
                    src.later.insert(index, now + LATER);
                    src.last_data = now;
                }
            }
            Event::Bad(index) => {
                debug!(%peer, index, "corrupt block");
                self.ex.stats.bad_blocks.fetch_add(1, Ordering::Relaxed);
                self.ex.ban(peer);
                self.drop_source(&peer, BAN);
            }
            Event::Unknown => self.drop_source(&peer, Duration::from_millis(250)),
            Event::Closed(reason) => {
                debug!(%peer, %reason, "source closed");
                self.drop_source(&peer, Duration::from_secs(1));
            }
        }
    }

    /// Takes block `index` off what `peer` was asked for (it answered),
    /// returning when it was asked (`None` if it was not).
    fn unask(&mut self, peer: &PeerId, index: u32) -> Option<Instant> {
        let i = index as usize;
        let src = self.sources.get_mut(peer)?;
        let asked = src.wanted.remove(&index)?;
        src.inflight_bytes = src
            .inflight_bytes
            .saturating_sub(self.held.manifest.size_of(i));
        self.inflight[i] = self.inflight[i].saturating_sub(1);
        Some(asked)
    }

    /// This peer and the nearby sources still fetching (see [`Crew`]).
    fn crew(&self, now: Instant) -> Crew {
        let fellows = self.sources.iter().filter(|(_, s)| {
            s.counts_near()
                && s.bits.is_some()
                && s.holds < self.n
                && now.duration_since(s.last_news) < ACTIVE
        });
        Crew::new(self.ex.local, fellows.map(|(p, _)| *p))
    }

    /// Fills each source's window: rarest blocks first, this peer's share
    /// of them first (see [`share`]); in the endgame, blocks already asked
    /// of one other source. The blocks a [`BlockSink`] needs first go
    /// before any other.
    fn dispatch(&mut self) {
        let hungry = self
            .sources
            .values()
            .any(|s| s.bits.is_some() && s.inflight_bytes + REFILL <= s.window);
        if !hungry {
            return;
        }
        let endgame = {
            let inflight = &self.inflight;
            !self.holders.picker.any_free(&|i| inflight[i] == 0)
        };
        let urgent = self.sink.as_ref().map(|s| s.urgent()).unwrap_or_default();
        // Far sources wait until every near one has said what it holds.
        let now = Instant::now();
        let near_opening = self
            .sources
            .values()
            .any(|s| s.bits.is_none() && s.holds_far_until.is_some_and(|t| t > now));
        let crew = self.crew(now);
        let peers: Vec<PeerId> = self.sources.keys().copied().collect();
        for peer in peers {
            let Some(src) = self.sources.get(&peer) else {
                continue;
            };
            let Some(bits) = src.bits.as_ref() else {
                continue;
            };
            if src.far && near_opening {
                continue;
            }
            if src.inflight_bytes + REFILL > src.window {
                continue;
            }
            let room = src.window - src.inflight_bytes;
            let count = if endgame {
                4
            } else {
                (room / u64::from(blocks::AVG_CHUNK) + 1) as usize
            };
            let (rank, parts) = share(&self.ex.local, self.sources.keys(), &peer);
            let (inflight, holders, far) = (&self.inflight, &self.holders, src.far);
            let free = |i: usize| {
                let held_back = far && (holders.near_holds(i) || !crew.brings(i));
                let deferred = src.later.get(&(i as u32)).is_some_and(|t| *t > now);
                if held_back || deferred {
                    false
                } else if endgame {
                    inflight[i] == 1 && !src.wanted.contains_key(&(i as u32))
                } else {
                    inflight[i] == 0
                }
            };
            let mut picks: Vec<usize> = urgent
                .iter()
                .copied()
                .filter(|i| {
                    *i < self.n && self.holders.picker.needed(*i) && bit(bits, *i) && free(*i)
                })
                .take(count)
                .collect();
            if picks.len() < count {
                let more = if endgame {
                    // Every missing block is in flight: few are left.
                    self.holders
                        .picker
                        .missing()
                        .filter(|i| bit(bits, *i) && free(*i) && !picks.contains(i))
                        .take(count - picks.len())
                        .collect()
                } else {
                    self.holders.picker.pick(&Ask {
                        bits,
                        mine: &|i| mix(i as u64) % parts == rank,
                        free: &|i| free(i) && !picks.contains(&i),
                        count: count - picks.len(),
                    })
                };
                picks.extend(more);
            }
            if picks.is_empty() {
                continue;
            }
            let mut chosen = Vec::new();
            let mut bytes = 0;
            for i in picks {
                if bytes >= room {
                    break;
                }
                bytes += self.held.manifest.size_of(i);
                chosen.push(i as u32);
            }
            let Some(src) = self.sources.get_mut(&peer) else {
                continue;
            };
            if src
                .cmds
                .try_send(Frame::Want {
                    blocks: chosen.clone(),
                })
                .is_err()
            {
                continue;
            }
            let now = Instant::now();
            if src.wanted.is_empty() {
                src.last_data = now;
            }
            for i in chosen {
                src.wanted.insert(i, now);
                self.inflight[i as usize] += 1;
            }
            src.inflight_bytes += bytes;
        }
    }
}

/// What every session of one fetch shares.
#[derive(Clone)]
struct Fetch {
    ex: Arc<Exchange>,
    id: Hash,
    manifest: Arc<Manifest>,
    sink: Option<Arc<dyn BlockSink>>,
}

/// One source: opens the stream, forwards the driver's wants, checks and
/// stores the blocks that come back.
async fn session(
    fetch: Fetch,
    peer: PeerId,
    mut cmds: mpsc::Receiver<Frame>,
    events: mpsc::Sender<(PeerId, u64, Event)>,
    token: u64,
) {
    let Fetch {
        ex,
        id,
        manifest,
        sink,
    } = fetch;
    let send = |ev: Event| {
        let events = events.clone();
        async move {
            let _ = events.send((peer, token, ev)).await;
        }
    };
    let result: Result<(), ExchangeError> = async {
        let mut control = ex.control.clone();
        let stream = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, PROTOCOL))
            .await
            .map_err(|_| ExchangeError::Timeout)?
            .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
        let (mut rd, mut wr) = stream.split();
        write_frame(
            &mut wr,
            &Frame::Open {
                v: VERSION,
                artifact: ByteBuf::from(id.to_vec()),
                manifest: false,
                later: true,
            },
        )
        .await?;
        let first = tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut rd, MAX_FRAME))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        match first {
            Frame::Have { bits } => send(Event::Have(bits.into_vec())).await,
            Frame::Unknown => {
                send(Event::Unknown).await;
                return Ok(());
            }
            other => return Err(ExchangeError::Protocol(format!("unexpected {other:?}"))),
        }
        let writer = async {
            while let Some(frame) = cmds.recv().await {
                write_frame(&mut wr, &frame).await?;
            }
            Ok::<(), ExchangeError>(())
        };
        // Blocks are checked and stored by a second loop, so that reading
        // the stream never waits for the disk (a few blocks may queue).
        let (put_tx, mut put_rx) = mpsc::channel::<(u32, ByteBuf, Instant)>(STORE_QUEUE);
        let reader = async {
            loop {
                match read_frame(&mut rd, MAX_FRAME).await? {
                    Frame::Block { index, data } => {
                        if index as usize >= manifest.len() {
                            return Err(ExchangeError::Protocol("block index out of range".into()));
                        }
                        let len = data.len() as u64;
                        ex.stats.fetched_bytes.fetch_add(len, Ordering::Relaxed);
                        ex.stats.fetched_blocks.fetch_add(1, Ordering::Relaxed);
                        if put_tx.send((index, data, Instant::now())).await.is_err() {
                            return Ok(());
                        }
                    }
                    Frame::HaveMore { blocks } => send(Event::HaveMore(blocks)).await,
                    Frame::DontHave { index } => send(Event::DontHave(index)).await,
                    Frame::Later { index } => send(Event::Later(index)).await,
                    other => return Err(ExchangeError::Protocol(format!("unexpected {other:?}"))),
                }
            }
        };
        let storer = async {
            while let Some(first) = put_rx.recv().await {
                // What queued meanwhile is checked and stored in the same
                // blocking call.
                let mut batch = vec![first];
                while let Ok(more) = put_rx.try_recv() {
                    batch.push(more);
                }
                let (store, sink, manifest) = (ex.store.clone(), sink.clone(), manifest.clone());
                let stored = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::with_capacity(batch.len());
                    for (index, data, landed) in batch {
                        let stored = store.put(&manifest.hash(index as usize), &data);
                        if let (Ok(_), Some(sink)) = (&stored, &sink) {
                            sink.block(index as usize, &data);
                        }
                        let failed = stored.is_err();
                        out.push((index, landed, stored));
                        if failed {
                            break;
                        }
                    }
                    out
                })
                .await
                .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
                for (index, landed, stored) in stored {
                    match stored {
                        Ok(new) => send(Event::Stored { index, new, landed }).await,
                        Err(BlockError::Corrupt(_)) => {
                            send(Event::Bad(index)).await;
                            return Ok(());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(())
        };
        tokio::select! {
            r = writer => r,
            r = reader => r,
            r = storer => r,
        }
    }
    .await;
    let reason = match result {
        Ok(()) => "closed".to_owned(),
        Err(e) => e.to_string(),
    };
    send(Event::Closed(reason)).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_limiter_paces_bytes() {
        let l = Limiter {
            bytes_per_sec: 1_000_000,
            next_free: Mutex::new(Instant::now()),
        };
        let start = Instant::now();
        for _ in 0..5 {
            l.take(50_000).await;
        }
        // 250 kB at 1 MB/s: the last take waits for the first four (200 ms).
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }
}

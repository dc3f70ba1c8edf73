//! The fetching side's driver: one task per fetch that keeps the sources
//! (near first, then whole copies, fetchers, the rest and Kademlia
//! providers), hears what each session says, and decides which block to
//! want from whom by the rules in `policy`. It only decides and sends; the
//! sessions do the I/O.

use super::session::{session, Event, Fetch};
use super::*;

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

pub(super) struct Driver {
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
    pub(super) fn new(
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

    pub(super) async fn run(
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

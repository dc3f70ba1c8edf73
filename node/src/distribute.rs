//! Artifact distribution, run by every peer: fetch every new artifact as
//! soon as its deployment is `built` (and, on start-up, the live version of
//! every site), unpack it beside the version being served, and report the
//! copy in the replicated `deployment_files` table. From those reports one
//! peer (the builder while it lives, else the first live peer by id) moves
//! the deployment on: `distributed` once a peer other than the builder holds
//! it, `success` once every live peer does, `distributionFailed` when the
//! deadline passes first; and if the builder died before anyone else had a
//! copy, the deployment is queued again for another peer to rebuild. Every
//! peer switches a site to a deployment when it reaches `success`, so the
//! mesh flips together. Garbage collection keeps the last few successful
//! deployments of each site (for rollback) and whatever is in flight.

use crate::assemble::Assembler;
use crate::build::Logger;
use crate::context::Shared;
use crate::model::{DeploymentFile, DeploymentRecord, Project, ReplicaState};
use crate::state::Level;
use crate::unpack::UnpackLimits;
use p2p::blocks::{self, Hash};
use p2p::exchange::{Candidate, Candidates, Exchange, Progress};
use p2p::members::PeerView;
use p2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};
use web::Status;

/// Artifacts fetched at once.
const MAX_FETCHES: usize = 2;
/// How often the distributor looks again without being woken.
const TICK: Duration = Duration::from_secs(1);
/// How often a fetch in progress reports its bytes.
const REPORT: Duration = Duration::from_secs(1);
/// How long a peer waits before trying again an artifact it failed to take.
const RETRY_FAILED_MS: u64 = 30_000;
/// How long a peer just started waits, at most, to hear from a peer of its
/// region that holds a whole copy (by the replicated state) before it
/// fetches that deployment from whoever it has heard from: until then its
/// view may hold only the peer it joined through, near or far.
const WARM_UP: Duration = Duration::from_secs(10);

pub struct DistributeSettings {
    /// How long a built deployment may take to reach every live peer.
    pub timeout: Duration,
    /// Successful deployments kept per site (for rollback).
    pub keep: usize,
    /// How often garbage is collected.
    pub gc_interval: Duration,
}

pub struct Distributor {
    shared: Arc<Shared>,
    ex: Arc<Exchange>,
    client: p2p::net::Client,
    settings: DistributeSettings,
    synced: watch::Receiver<bool>,
    /// Fetches under way, by deployment.
    fetching: HashMap<String, tokio::task::AbortHandle>,
    tasks: JoinSet<String>,
    last_gc: Instant,
    started: Instant,
}

impl Distributor {
    pub fn new(
        shared: Arc<Shared>,
        ex: Arc<Exchange>,
        client: p2p::net::Client,
        settings: DistributeSettings,
        synced: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            ex,
            client,
            settings,
            synced,
            fetching: HashMap::new(),
            tasks: JoinSet::new(),
            last_gc: Instant::now(),
            started: Instant::now(),
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.shared.state.changes();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = changes.changed() => {}
                _ = tick.tick() => {}
                Some(done) = self.tasks.join_next() => {
                    if let Ok(id) = done {
                        self.fetching.remove(&id);
                    }
                }
            }
            if !*self.synced.borrow() {
                continue;
            }
            if let Err(err) = self.reconcile() {
                warn!(error = %err, "distribution: could not read the state");
            }
            if self.last_gc.elapsed() >= self.settings.gc_interval {
                self.last_gc = Instant::now();
                self.collect_garbage().await;
            }
        }
        self.tasks.abort_all();
    }

    fn reconcile(&mut self) -> Result<(), p2p::StoreError> {
        let state = self.shared.state.clone();
        let alive = self.shared.live_peers();
        for rec in state.deployments()? {
            if matches!(rec.status, Status::Built | Status::Distributed) {
                self.advance(&rec, &alive)?;
            }
        }
        // Read again: the advance may have just made something a success.
        let rows = state.deployments()?;
        let projects = state.projects()?;
        let targets = live_targets(&rows, &projects);
        let mut wanted = HashSet::new();
        for rec in &rows {
            let Some(artifact) = rec.artifact.as_deref() else {
                continue;
            };
            let in_flight = matches!(rec.status, Status::Built | Status::Distributed);
            if !in_flight && targets.get(rec.name.as_str()) != Some(&rec.id.as_str()) {
                continue;
            }
            wanted.insert(rec.id.clone());
            if self.shared.sites.version_dir(&rec.name, &rec.id).is_dir() {
                self.confirm_replica(rec);
                continue;
            }
            if self.fetching.contains_key(&rec.id) || self.fetching.len() >= MAX_FETCHES {
                continue;
            }
            let Some(id) = blocks::from_hex(artifact) else {
                continue;
            };
            let mine = state.my_replica(&rec.id).ok().flatten();
            let failed_lately = mine.is_some_and(|r| {
                r.state == ReplicaState::Failed
                    && r.stamp.wall_ms + RETRY_FAILED_MS > state.now_ms()
            });
            if failed_lately {
                continue;
            }
            if in_flight
                && rec.builder.as_deref() == Some(state.peer.as_str())
                && self.ex.held(&id).is_none()
            {
                // Built here, but the blocks are gone (data lost): nobody
                // else can have them unless they fetched them already.
                self.lost_here(rec);
                continue;
            }
            if self.started.elapsed() < WARM_UP && self.near_copy_unheard(&rec.id, &alive) {
                continue;
            }
            self.spawn_fetch(rec.clone(), id);
        }
        // Fetches of deployments no longer wanted (failed, requeued, superseded).
        self.fetching.retain(|id, task| {
            let keep = wanted.contains(id);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, id) in targets {
            self.switch(name, id);
        }
        Ok(())
    }

    /// Whether no peer of this region has been heard from, though one of
    /// them holds a whole copy of `deployment` by the replicated state.
    fn near_copy_unheard(&self, deployment: &str, alive: &[PeerView]) -> bool {
        let region = self.shared.info.borrow().region.clone();
        if alive.iter().any(|p| !p.is_self && p.region == region) {
            return false;
        }
        let me = &self.shared.state.peer;
        self.shared
            .state
            .replicas(deployment)
            .unwrap_or_default()
            .iter()
            .any(|r| {
                r.state == ReplicaState::Complete
                    && r.peer != *me
                    && !alive.iter().any(|p| p.id == r.peer)
                    && self.shared.members.region_of(&r.peer).as_deref() == Some(region.as_str())
            })
    }

    /// Serves deployment `id` as site `name` from now on, if it is unpacked here.
    fn switch(&self, name: &str, id: &str) {
        let sites = &self.shared.sites;
        if !sites.version_dir(name, id).is_dir() || sites.current(name).as_deref() == Some(id) {
            return;
        }
        match sites.switch(name, id) {
            Ok(()) => {
                info!(site = name, deployment = id, "switched");
                let state = &self.shared.state;
                Logger::new(state.clone(), id, "live")
                    .info(&format!("live on peer {}", state.peer));
            }
            Err(err) => warn!(site = name, error = %err, "could not switch the site"),
        }
    }

    /// The builder lost the artifact it built: queue the deployment again
    /// unless another peer already holds a copy.
    fn lost_here(&self, rec: &DeploymentRecord) {
        let state = &self.shared.state;
        let others_hold = state
            .replicas(&rec.id)
            .unwrap_or_default()
            .iter()
            .any(|r| r.peer != state.peer && r.state == ReplicaState::Complete);
        if others_hold {
            return;
        }
        Logger::new(state.clone(), &rec.id, "distribute").line(
            Level::Warn,
            &format!(
                "peer {} built it but no longer has the artifact; building again",
                state.peer
            ),
        );
        let _ = requeue(state, rec);
    }

    /// Makes sure the replicated state says this peer holds `rec` (it may
    /// have been unpacked before a restart, or the row lost).
    fn confirm_replica(&self, rec: &DeploymentRecord) {
        let state = &self.shared.state;
        let mine = state.my_replica(&rec.id).ok().flatten();
        if mine
            .as_ref()
            .is_some_and(|r| r.state == ReplicaState::Complete)
        {
            return;
        }
        let total = rec
            .artifact
            .as_deref()
            .and_then(blocks::from_hex)
            .and_then(|id| self.ex.held(&id))
            .map_or(0, |h| h.manifest.size);
        let _ = state.put_replica(replica_row(
            &self.shared,
            rec,
            ReplicaState::Complete,
            total,
            total,
            None,
        ));
    }

    fn spawn_fetch(&mut self, rec: DeploymentRecord, id: Hash) {
        let shared = self.shared.clone();
        let ex = self.ex.clone();
        let client = self.client.clone();
        let span = info_span!("deployment", id = %rec.id, name = %rec.name, epoch = rec.epoch);
        let dep = rec.id.clone();
        let handle = self.tasks.spawn(
            async move {
                let dep = rec.id.clone();
                replicate(shared, ex, client, rec, id).await;
                dep
            }
            .instrument(span),
        );
        self.fetching.insert(dep, handle);
    }

    /// Moves a built deployment on, if this peer is the one to write it.
    fn advance(&self, rec: &DeploymentRecord, alive: &[PeerView]) -> Result<(), p2p::StoreError> {
        let state = &self.shared.state;
        let alive_ids: Vec<&str> = alive.iter().map(|p| p.id.as_str()).collect();
        let builder = rec.builder.as_deref();
        let builder_alive = builder.is_some_and(|b| alive_ids.contains(&b));
        let writer = if builder_alive {
            builder
        } else {
            alive_ids.iter().min().copied()
        };
        if writer != Some(state.peer.as_str()) {
            return Ok(());
        }
        let replicas = state.replicas(&rec.id)?;
        let holds = |peer: &str| {
            replicas
                .iter()
                .any(|r| r.peer == peer && r.state == ReplicaState::Complete)
        };
        let holders: Vec<&str> = alive_ids.iter().copied().filter(|p| holds(p)).collect();
        let log = Logger::new(state.clone(), &rec.id, "distribute");
        let name_of = |id: &str| {
            alive
                .iter()
                .find(|p| p.id == id)
                .map_or_else(|| short(id), |p| p.name.clone())
        };
        let now = state.now_ms();
        if let Some(failed) = replicas
            .iter()
            .find(|r| Some(r.peer.as_str()) == builder && r.state == ReplicaState::Failed)
        {
            let reason = format!(
                "the builder could not take its own artifact: {}",
                failed.error.as_deref().unwrap_or("unknown error")
            );
            return self.finish(rec, Status::DistributionFailed, Some(reason), &log);
        }
        if !alive_ids.is_empty() && holders.len() == alive_ids.len() {
            log.info(&format!(
                "every live peer holds it ({} of {}); live at {}",
                holders.len(),
                alive_ids.len(),
                rec.live_url
            ));
            return self.finish(rec, Status::Success, None, &log);
        }
        if rec.status == Status::Built && holders.iter().any(|p| Some(*p) != builder) {
            log.info(&format!(
                "distributed: {} of {} live peers hold it",
                holders.len(),
                alive_ids.len()
            ));
            return self.finish(rec, Status::Distributed, None, &log);
        }
        if holders.is_empty() && !builder_alive {
            log.line(
                Level::Warn,
                &format!(
                    "the builder ({}) is gone and no live peer holds a whole copy; building again",
                    builder.map_or_else(|| "?".to_owned(), short)
                ),
            );
            return requeue(state, rec);
        }
        let deadline = rec.built_at_ms + self.settings.timeout.as_millis() as u64;
        if rec.built_at_ms > 0 && now > deadline {
            let missing: Vec<String> = alive_ids
                .iter()
                .filter(|p| !holds(p))
                .map(|p| {
                    let why = replicas.iter().find(|r| r.peer == *p).map_or(
                        "nothing yet".to_owned(),
                        |r| match &r.error {
                            Some(e) => format!("{}: {e}", r.state.as_str()),
                            None => {
                                format!("{} {} of {} bytes", r.state.as_str(), r.bytes, r.total)
                            }
                        },
                    );
                    format!("{} ({why})", name_of(p))
                })
                .collect();
            let reason = format!(
                "distribution did not finish within {}: {} of {} live peers hold it; missing on {}",
                humantime::format_duration(self.settings.timeout),
                holders.len(),
                alive_ids.len(),
                missing.join(", ")
            );
            return self.finish(rec, Status::DistributionFailed, Some(reason), &log);
        }
        Ok(())
    }

    fn finish(
        &self,
        rec: &DeploymentRecord,
        status: Status,
        reason: Option<String>,
        log: &Logger,
    ) -> Result<(), p2p::StoreError> {
        if let Some(reason) = &reason {
            log.line(Level::Error, reason);
        }
        if status == Status::Success {
            let pinned = self
                .shared
                .state
                .project(&rec.name)
                .ok()
                .flatten()
                .filter(|p| p.pinned)
                .and_then(|p| p.current_deployment)
                .filter(|current| *current != rec.id);
            match pinned {
                Some(current) => log.info(&format!(
                    "not made live: site {} is pinned to deployment {current} (promote this one to serve it)",
                    rec.name
                )),
                // Switch here first, so that whoever sees `success` on this
                // peer is served the new version by it.
                None => self.switch(&rec.name, &rec.id),
            }
        }
        self.shared.state.update(&rec.id, |r| {
            if r.epoch == rec.epoch && matches!(r.status, Status::Built | Status::Distributed) {
                r.status = status;
                if reason.is_some() {
                    r.error = reason.clone();
                }
            }
        })?;
        Ok(())
    }

    /// Keeps, per site, the last `keep` successful deployments, the one
    /// served now and everything still in flight; removes the rest here
    /// (unpacked versions, manifests, blocks).
    async fn collect_garbage(&mut self) {
        let state = &self.shared.state;
        let Ok(rows) = state.deployments() else {
            return;
        };
        let mut keep: HashSet<String> = HashSet::new();
        for project in state.projects().unwrap_or_default() {
            if let Some(target) = live_target(&project, &rows) {
                keep.insert(target.id.clone());
            }
        }
        let mut kept_per_site: HashMap<&str, usize> = HashMap::new();
        for rec in &rows {
            let keep_it = match rec.status {
                Status::Queued | Status::Building | Status::Built | Status::Distributed => true,
                Status::Success => {
                    let n = kept_per_site.entry(rec.name.as_str()).or_insert(0);
                    *n += 1;
                    *n <= self.settings.keep
                }
                _ => false,
            };
            let served = self.shared.sites.current(&rec.name).as_deref() == Some(rec.id.as_str());
            if keep_it || served {
                keep.insert(rec.id.clone());
            }
        }
        let artifacts: Vec<Hash> = rows
            .iter()
            .filter(|r| keep.contains(&r.id))
            .filter_map(|r| r.artifact.as_deref().and_then(blocks::from_hex))
            .collect();
        for name in self.shared.sites.names() {
            for version in self.shared.sites.versions(&name) {
                if keep.contains(&version) {
                    continue;
                }
                if self.shared.sites.remove_version(&name, &version).is_ok() {
                    if let Some(rec) = rows.iter().find(|r| r.id == version) {
                        let _ = state.put_replica(replica_row(
                            &self.shared,
                            rec,
                            ReplicaState::Evicted,
                            0,
                            0,
                            None,
                        ));
                    }
                }
            }
        }
        let before: HashSet<Hash> = self.ex.store.manifests().into_iter().collect();
        let known: Vec<Hash> = rows
            .iter()
            .filter_map(|r| r.artifact.as_deref().and_then(blocks::from_hex))
            .collect();
        let store = self.ex.store.clone();
        let removed = tokio::task::spawn_blocking(move || {
            store.collect_garbage(&artifacts, &known, blocks::MANIFEST_MIN_AGE)
        })
        .await;
        if let Ok(Ok((blocks, bytes))) = removed {
            let after: HashSet<Hash> = self.ex.store.manifests().into_iter().collect();
            for gone in before.difference(&after) {
                self.ex.forget(gone);
                let _ = self.client.stop_providing(gone.to_vec()).await;
            }
            if blocks > 0 {
                info!(blocks, bytes, "garbage collected");
            }
        }
    }
}

/// Queues a built deployment again (a new epoch) for another build.
fn requeue(state: &crate::state::State, rec: &DeploymentRecord) -> Result<(), p2p::StoreError> {
    state.update(&rec.id, |r| {
        if r.epoch == rec.epoch {
            r.epoch += 1;
            r.status = Status::Queued;
            r.builder = None;
            r.lease_until_ms = 0;
            r.artifact = None;
            r.built_at_ms = 0;
        }
    })?;
    Ok(())
}

/// The deployment a site should serve: its pinned one (rollback, promote)
/// while that is successful, else its newest successful one. `rows` come
/// newest first.
pub fn live_target<'a>(
    project: &Project,
    rows: &'a [DeploymentRecord],
) -> Option<&'a DeploymentRecord> {
    let servable = |r: &&DeploymentRecord| r.status == Status::Success && r.artifact.is_some();
    let pinned = project
        .current_deployment
        .as_deref()
        .filter(|_| project.pinned)
        .and_then(|id| rows.iter().filter(servable).find(|r| r.id == id));
    pinned.or_else(|| {
        rows.iter()
            .filter(servable)
            .find(|r| r.name == project.name)
    })
}

/// The deployment each site should serve, by site name.
fn live_targets<'a>(
    rows: &'a [DeploymentRecord],
    projects: &[Project],
) -> HashMap<&'a str, &'a str> {
    let mut out = HashMap::new();
    for rec in rows {
        if rec.status == Status::Success && rec.artifact.is_some() {
            out.entry(rec.name.as_str()).or_insert(rec.id.as_str());
        }
    }
    for project in projects {
        if let Some(target) = live_target(project, rows) {
            out.insert(target.name.as_str(), target.id.as_str());
        }
    }
    out
}

/// The last 8 characters of a peer id (from replicated state: may be anything).
fn short(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

fn replica_row(
    shared: &Shared,
    rec: &DeploymentRecord,
    state: ReplicaState,
    bytes: u64,
    total: u64,
    error: Option<String>,
) -> DeploymentFile {
    DeploymentFile {
        deployment: rec.id.clone(),
        peer: shared.state.peer.clone(),
        path: shared
            .sites
            .version_dir(&rec.name, &rec.id)
            .display()
            .to_string(),
        bytes,
        created_at_ms: shared.state.now_ms(),
        stamp: p2p::Hlc::default(),
        state,
        total,
        error,
    }
}

/// Where to look for the blocks of `deployment`, best first.
fn sources(shared: &Shared, deployment: &str) -> Vec<Candidate> {
    let region = shared.info.borrow().region.clone();
    let replicas = shared.state.replicas(deployment).unwrap_or_default();
    rank_sources(&shared.live_peers(), &replicas, &region)
}

/// Live peers other than this one, best source first: peers in `region`
/// before others, and among those the ones holding a whole copy, then the
/// ones fetching, then the rest; random among equals, so that fetchers do
/// not all start with the same peer. Peers in another region are marked
/// far: the exchange asks them only for what no peer nearby holds.
fn rank_sources(view: &[PeerView], replicas: &[DeploymentFile], region: &str) -> Vec<Candidate> {
    let mut ranked: Vec<(u8, u8, u64, PeerId)> = view
        .iter()
        .filter(|p| p.alive && !p.is_self)
        .filter_map(|p| {
            let id: PeerId = p.id.parse().ok()?;
            let held = match replicas.iter().find(|r| r.peer == p.id).map(|r| r.state) {
                Some(ReplicaState::Complete) => 0,
                Some(ReplicaState::Fetching) => 1,
                _ => 2,
            };
            let away = u8::from(p.region != region);
            Some((away, held, rand::random::<u64>(), id))
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .map(|(away, _, _, peer)| Candidate {
            peer,
            far: away == 1,
        })
        .collect()
}

/// An assembler to unpack `rec`'s artifact while it is fetched, once its
/// manifest is here (`None` if the manifest cannot be had: the fetch then
/// reports why).
async fn assembler(
    shared: &Shared,
    ex: &Arc<Exchange>,
    client: &p2p::net::Client,
    candidates: &Candidates,
    rec: &DeploymentRecord,
    id: Hash,
    limits: UnpackLimits,
) -> Option<Arc<Assembler>> {
    let manifest = ex.manifest(id, candidates, client).await.ok()?;
    let (store, dest) = (
        ex.store.clone(),
        shared.sites.staging_dir(&rec.name, &rec.id),
    );
    let _ = tokio::fs::remove_dir_all(&dest).await;
    tokio::task::spawn_blocking(move || Arc::new(Assembler::new(store, manifest, dest, limits)))
        .await
        .ok()
}

/// Fetches, unpacks and reports one deployment's artifact on this peer.
async fn replicate(
    shared: Arc<Shared>,
    ex: Arc<Exchange>,
    client: p2p::net::Client,
    rec: DeploymentRecord,
    id: Hash,
) {
    let state = shared.state.clone();
    let log = Logger::new(state.clone(), &rec.id, "distribute");
    let started = Instant::now();
    let fetched_before = ex
        .stats
        .fetched_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let complete_here = ex.held(&id).is_some_and(|h| h.complete());
    if !complete_here {
        let _ = state.put_replica(replica_row(
            &shared,
            &rec,
            ReplicaState::Fetching,
            0,
            0,
            None,
        ));
    }
    let candidates: Candidates = {
        let (shared, dep) = (shared.clone(), rec.id.clone());
        Arc::new(move || sources(&shared, &dep))
    };
    let (progress, mut watch_progress) = watch::channel(Progress::default());
    let reporter = {
        let (shared, rec) = (shared.clone(), rec.clone());
        tokio::spawn(async move {
            let mut last = Progress::default();
            loop {
                tokio::time::sleep(REPORT).await;
                if watch_progress.changed().await.is_err() {
                    return;
                }
                let p = watch_progress.borrow_and_update().clone();
                if p.bytes != last.bytes {
                    let _ = shared.state.put_replica(replica_row(
                        &shared,
                        &rec,
                        ReplicaState::Fetching,
                        p.bytes,
                        p.total_bytes,
                        None,
                    ));
                    last = p;
                }
            }
        })
    };
    let limits = UnpackLimits::with_total(shared.settings.max_site_bytes);
    let mut attempt = 0;
    let (manifest, unpacked) = loop {
        attempt += 1;
        // Unpack while fetching (a first attempt at a version not here yet).
        let assembler = if attempt == 1
            && !complete_here
            && !shared.sites.version_dir(&rec.name, &rec.id).is_dir()
        {
            assembler(&shared, &ex, &client, &candidates, &rec, id, limits).await
        } else {
            None
        };
        let sink = assembler
            .clone()
            .map(|a| a as Arc<dyn p2p::exchange::BlockSink>);
        let fetched = ex
            .fetch(
                id,
                candidates.clone(),
                client.clone(),
                progress.clone(),
                sink,
            )
            .await;
        let manifest = match fetched {
            Ok(m) => m,
            Err(err) => {
                reporter.abort();
                if let Some(a) = assembler {
                    // Nothing half-written stays behind.
                    let _ = tokio::task::spawn_blocking(move || a.abandon()).await;
                }
                let reason = format!("could not fetch the artifact: {err}");
                log.line(Level::Error, &format!("peer {}: {reason}", state.peer));
                let _ = state.put_replica(replica_row(
                    &shared,
                    &rec,
                    ReplicaState::Failed,
                    0,
                    0,
                    Some(reason),
                ));
                return;
            }
        };
        let (sites, store, name, dep) = (
            shared.sites.clone(),
            ex.store.clone(),
            rec.name.clone(),
            rec.id.clone(),
        );
        let m = manifest.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let placed = assembler.and_then(|a| a.finish());
            sites.install(&name, &dep, store.reader(&m), limits, placed)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        // A block found corrupt on disk while unpacking was deleted: fetch
        // it again (from another peer) and unpack again.
        if unpacked.is_err() && attempt < 3 && !ex.store.complete(&manifest) {
            log.line(
                Level::Warn,
                &format!(
                    "peer {}: a stored block was corrupt; fetching it again",
                    state.peer
                ),
            );
            ex.recheck(&id);
            continue;
        }
        break (manifest, unpacked);
    };
    reporter.abort();
    let fetched = ex
        .stats
        .fetched_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(fetched_before);
    match unpacked {
        Ok((files, bytes)) => {
            let total = manifest.size;
            let _ = state.put_replica(replica_row(
                &shared,
                &rec,
                ReplicaState::Complete,
                total,
                total,
                None,
            ));
            let how = if complete_here {
                "built here".to_owned()
            } else {
                format!(
                    "fetched {fetched} of {total} bytes in {:.2} s",
                    started.elapsed().as_secs_f64()
                )
            };
            log.info(&format!(
                "peer {} holds it: {how}; unpacked {files} files, {bytes} bytes",
                state.peer
            ));
        }
        Err(err) => {
            let reason = format!("unpack failed: {err}");
            log.line(Level::Error, &format!("peer {}: {reason}", state.peer));
            let _ = state.put_replica(replica_row(
                &shared,
                &rec,
                ReplicaState::Failed,
                0,
                manifest.size,
                Some(reason),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &PeerId, region: &str, alive: bool, is_self: bool) -> PeerView {
        PeerView {
            id: id.to_string(),
            name: String::new(),
            addresses: vec![],
            region: region.into(),
            load: 0.0,
            free_slots: 1,
            capabilities: vec![],
            version: String::new(),
            last_seen_ms: 0,
            alive,
            is_self,
        }
    }

    fn replica(peer: &PeerId, state: ReplicaState) -> DeploymentFile {
        DeploymentFile {
            deployment: "d".into(),
            peer: peer.to_string(),
            path: String::new(),
            bytes: 0,
            created_at_ms: 0,
            stamp: p2p::Hlc::default(),
            state,
            total: 0,
            error: None,
        }
    }

    #[test]
    fn sources_prefer_the_region_then_whole_copies_then_fetchers() {
        let ids: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let view = vec![
            peer(&ids[0], "eu", true, true),   // this peer
            peer(&ids[1], "us", true, false),  // away, complete
            peer(&ids[2], "eu", true, false),  // here, nothing yet
            peer(&ids[3], "eu", true, false),  // here, fetching
            peer(&ids[4], "eu", true, false),  // here, complete
            peer(&ids[5], "eu", false, false), // dead
        ];
        let replicas = vec![
            replica(&ids[1], ReplicaState::Complete),
            replica(&ids[3], ReplicaState::Fetching),
            replica(&ids[4], ReplicaState::Complete),
            replica(&ids[5], ReplicaState::Complete),
        ];
        let near = |k: usize| Candidate {
            peer: ids[k],
            far: false,
        };
        let far = Candidate {
            peer: ids[1],
            far: true,
        };
        for _ in 0..10 {
            assert_eq!(
                rank_sources(&view, &replicas, "eu"),
                vec![near(4), near(3), near(2), far]
            );
        }
        // With no region set anywhere, nobody is far.
        let flat: Vec<PeerView> = view
            .iter()
            .map(|p| PeerView {
                region: String::new(),
                ..p.clone()
            })
            .collect();
        assert!(rank_sources(&flat, &replicas, "").iter().all(|c| !c.far));
    }
}

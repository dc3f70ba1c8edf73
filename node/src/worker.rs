//! The build worker: the one task that decides what this peer builds. Every
//! peer runs the same election over its view of the mesh; the winner claims
//! a deployment (builder, epoch + 1, lease), renews the lease while
//! building, and writes every later change fenced by (epoch, builder), so a
//! peer that lost its claim can never overwrite the winner, and stops as
//! soon as it sees it lost. If a claim is not made or not renewed in time,
//! the next peers by rank claim in turn, each waiting a little longer.
//! What happens to one claimed deployment is in `job`.

use crate::build::Logger;
use crate::context::Shared;
use crate::election::{self, Candidate};
use crate::job::{build_and_publish, fenced};
use crate::load::BUILD;
use crate::model::DeploymentRecord;
use crate::state::Level;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};
use web::Status;

/// How often the worker looks for work and renews its leases.
const TICK: Duration = Duration::from_millis(500);
/// How long a new deployment settles before its builder claims it: longer
/// than gossip takes to reach every peer (`scripts/bench/mesh.sh
/// propagation` measures that).
const SETTLE: Duration = Duration::from_millis(250);
/// Extra wait of each further successor, so they do not stampede.
const SUCCESSOR_STAGGER: Duration = Duration::from_secs(2);

/// How long a draining peer waits, after saying it has no free build slots,
/// before giving its builds back.
const HANDOVER_NOTICE: Duration = Duration::from_millis(300);

/// A build this peer is running.
struct Active {
    epoch: u64,
    cancel: watch::Sender<bool>,
}

pub struct Worker {
    shared: Arc<Shared>,
    max_builds: usize,
    /// Nudges from the API ("something was queued").
    wake: mpsc::Receiver<()>,
    /// True once this peer has caught up with the mesh: before that its view
    /// is stale and it must not claim anything.
    synced: watch::Receiver<bool>,
    active: HashMap<String, Active>,
    tasks: JoinSet<String>,
    /// When the next deployment becomes due for this peer to claim.
    next_due: Option<tokio::time::Instant>,
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        max_builds: usize,
        wake: mpsc::Receiver<()>,
        synced: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            max_builds: max_builds.max(1),
            wake,
            synced,
            active: HashMap::new(),
            tasks: JoinSet::new(),
            next_due: None,
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = self.shared.state.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = tick.tick() => {
                    self.renew_leases();
                    self.stop_lost_builds();
                }
                Some(_) = self.wake.recv() => {}
                _ = sleep_until_due(self.next_due) => self.next_due = None,
                ev = events.recv() => {
                    // Only status changes (a new deployment, a claim, an end) matter here.
                    if matches!(ev, Ok(web::Event::Log { .. })) {
                        continue;
                    }
                    self.stop_lost_builds();
                }
                Some(done) = self.tasks.join_next() => {
                    if let Ok(id) = done {
                        self.active.remove(&id);
                        self.shared.active_builds.store(self.active.len(), Ordering::Relaxed);
                    }
                }
            }
            if !*self.synced.borrow() {
                continue;
            }
            if let Err(err) = self.schedule() {
                warn!(error = %err, "could not read deployments");
            }
        }
        self.hand_back().await;
    }

    /// The peer is leaving: stops its builds and gives each back to the
    /// mesh at once (queued again, a new epoch), so that another peer
    /// claims it now instead of after the lease expires. Waits a moment
    /// first, so that the heartbeat saying this peer has no free build
    /// slots reaches the others before they elect a builder.
    async fn hand_back(&mut self) {
        if self.active.is_empty() {
            return;
        }
        tokio::time::sleep(HANDOVER_NOTICE).await;
        for a in self.active.values() {
            let _ = a.cancel.send(true);
        }
        while self.tasks.join_next().await.is_some() {}
        let state = &self.shared.state;
        for (id, a) in &self.active {
            let mut handed = false;
            let _ = fenced(state, id, a.epoch, |r| {
                if r.status == Status::Building {
                    r.status = Status::Queued;
                    r.builder = None;
                    r.epoch = a.epoch + 1;
                    r.lease_until_ms = 0;
                    handed = true;
                }
            });
            if handed {
                info!(deployment = %id, "shutting down; build handed back to the mesh");
                Logger::new(state.clone(), id, "queue").line(
                    Level::Warn,
                    &format!(
                        "peer {} is shutting down: the build goes back to the mesh for another peer",
                        state.peer
                    ),
                );
            }
        }
        let _ = state.flush().await;
    }

    fn renew_leases(&self) {
        let until = self.shared.state.now_ms() + self.shared.lease.as_millis() as u64;
        for (id, a) in &self.active {
            let _ = fenced(&self.shared.state, id, a.epoch, |r| {
                if r.status == Status::Building {
                    r.lease_until_ms = until;
                }
            });
        }
    }

    /// Stops builds that were canceled, or whose claim another peer won (a
    /// concurrent claim, or a takeover after this peer was thought dead).
    fn stop_lost_builds(&self) {
        let me = self.shared.state.peer.as_str();
        for (id, a) in &self.active {
            let Ok(Some(row)) = self.shared.state.deployment(id) else {
                continue;
            };
            let lost = row.epoch != a.epoch || row.builder.as_deref() != Some(me);
            if lost && row.status == Status::Canceled && !*a.cancel.borrow() {
                info!(deployment = %id, "canceled; stopping this build");
                Logger::new(self.shared.state.clone(), id, "build").line(
                    Level::Warn,
                    &format!("peer {me} stops the build: the deployment was canceled"),
                );
                let _ = a.cancel.send(true);
            } else if lost && !*a.cancel.borrow() {
                let winner = row.builder.unwrap_or_default();
                info!(deployment = %id, %winner, epoch = row.epoch, "claim lost; stopping this build");
                Logger::new(self.shared.state.clone(), id, "queue").line(
                    Level::Warn,
                    &format!(
                        "peer {me} stops: peer {winner} holds the claim (epoch {})",
                        row.epoch
                    ),
                );
                let _ = a.cancel.send(true);
            }
        }
    }

    /// The live peers that could build, as this peer sees them.
    fn candidates(&self) -> Vec<Candidate> {
        self.shared
            .live_peers()
            .into_iter()
            // A peer with no free build slot cannot take a build: leaving it
            // out lets the next peer claim at once instead of after a stagger.
            .filter(|p| p.free_slots > 0)
            .map(|p| Candidate {
                id: p.id,
                load: p.load,
                capabilities: p.capabilities,
            })
            .collect()
    }

    /// The settle time: none for a peer that is, and always was, alone.
    fn settle_ms(&self) -> u64 {
        if self.shared.members.alone() {
            0
        } else {
            SETTLE.as_millis() as u64
        }
    }

    /// Whether this peer should claim `rec` now: its rank among live
    /// eligible peers, and how long the deployment has waited for a claim.
    fn my_turn(&mut self, rec: &DeploymentRecord, candidates: &[Candidate], now: u64) -> bool {
        let mut needs = vec![BUILD.to_owned()];
        needs.extend(rec.requires.iter().cloned());
        // Ranked by project, not by deployment: a project's builds go to
        // the same few peers, where its build cache is.
        let ranked = election::rank(&rec.name, candidates, &needs);
        let Some(pos) = ranked.iter().position(|p| *p == self.shared.state.peer) else {
            return false;
        };
        let stagger = SUCCESSOR_STAGGER.as_millis() as u64;
        let lease = self.shared.lease.as_millis() as u64;
        let due = match rec.status {
            // The winner claims once the submission had time to reach every
            // peer (so a twin submitted elsewhere at the same moment is seen
            // and only one of the two is built); if it does not claim within
            // a lease, the successors follow, each a little later.
            Status::Queued if pos == 0 => rec.created_at_ms + self.settle_ms(),
            Status::Queued => rec.stamp.wall_ms + lease + (pos as u64 - 1) * stagger,
            // An expired claim: the first live peer by rank takes over.
            _ => rec.lease_until_ms + pos as u64 * stagger,
        };
        if now < due {
            // Come back exactly when it is due, not at the next tick.
            let wait = Duration::from_millis(due - now);
            let at = tokio::time::Instant::now() + wait;
            self.next_due = Some(self.next_due.map_or(at, |d| d.min(at)));
        }
        now >= due
    }

    /// Claims what this peer should build, within its build slots.
    fn schedule(&mut self) -> Result<(), p2p::StoreError> {
        let state = self.shared.state.clone();
        let now = state.now_ms();
        let mut rows = state.deployments()?;
        rows.reverse(); // oldest first
        let candidates = self.candidates();
        let rows_snapshot = rows.clone();
        for rec in rows {
            if self.active.contains_key(&rec.id) {
                continue;
            }
            let mine = rec.builder.as_deref() == Some(state.peer.as_str());
            let runnable = match rec.status {
                Status::Queued => self.my_turn(&rec, &candidates, now),
                // Ours but not running here: this peer restarted mid-build
                // and, having caught up, still holds the newest claim.
                Status::Building if mine => true,
                Status::Building => {
                    rec.lease_until_ms < now && self.my_turn(&rec, &candidates, now)
                }
                _ => false,
            };
            if !runnable || self.active.len() >= self.max_builds {
                continue;
            }
            if rec.status == Status::Queued {
                if let Some(original) = rows_snapshot.iter().find(|e| rec.repeats(e)) {
                    self.cancel_repeat(&rec, &original.id);
                    continue;
                }
            }
            self.claim_and_build(rec);
        }
        Ok(())
    }

    /// Ends a deployment that repeats one already under way.
    fn cancel_repeat(&self, rec: &DeploymentRecord, original: &str) {
        let state = &self.shared.state;
        let reason = format!("the same request as deployment {original}, submitted at the same time; that one is built instead");
        Logger::new(state.clone(), &rec.id, "queue").line(Level::Warn, &reason);
        let _ = state.update(&rec.id, |r| {
            if r.status == Status::Queued {
                r.status = Status::Canceled;
                r.error = Some(reason.clone());
            }
        });
    }

    fn claim_and_build(&mut self, rec: DeploymentRecord) {
        let state = self.shared.state.clone();
        let restarted = rec.status != Status::Queued;
        let epoch = rec.epoch + 1;
        let until = state.now_ms() + self.shared.lease.as_millis() as u64;
        let claimed = state.clone().update(&rec.id, |r| {
            r.builder = Some(state.peer.clone());
            r.epoch = epoch;
            r.lease_until_ms = until;
            r.status = Status::Building;
            r.error = None;
            r.artifact = None;
        });
        match claimed {
            Ok(Some(r))
                if r.epoch == epoch && r.builder.as_deref() == Some(state.peer.as_str()) => {}
            Ok(_) => return,
            Err(err) => {
                warn!(error = %err, deployment = %rec.id, "claim failed");
                return;
            }
        }
        let log = Logger::new(state.clone(), &rec.id, "queue");
        if restarted {
            log.line(Level::Warn, &format!("the previous build did not finish (peer restarted or lease lost); building again (epoch {epoch})"));
        }
        log.info(&format!("claimed by peer {} (epoch {epoch})", state.peer));
        let (cancel, cancel_rx) = watch::channel(false);
        self.active.insert(rec.id.clone(), Active { epoch, cancel });
        self.shared
            .active_builds
            .store(self.active.len(), Ordering::Relaxed);
        let shared = self.shared.clone();
        let span = info_span!("deployment", id = %rec.id, name = %rec.name, epoch);
        self.tasks.spawn(
            async move {
                let id = rec.id.clone();
                build_and_publish(&shared, rec, epoch, log, cancel_rx).await;
                id
            }
            .instrument(span),
        );
    }
}

async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

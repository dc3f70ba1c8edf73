//! One claimed deployment carried through its build on this peer: clone,
//! build, pack into blocks, or fail with the reason in the log. Every
//! write is fenced by the claim (epoch and builder), so a peer that lost its
//! claim changes nothing.

use crate::build::{self, BuildError, Job, Logger};
use crate::context::Shared;
use crate::model::DeploymentRecord;
use crate::state::{Level, State};
use crate::validate;
use std::time::Instant;
use tokio::sync::watch;
use tracing::{info, warn};
use web::Status;

/// How long a fresh claim waits for competing claims before building:
/// well above gossip latency (`scripts/bench/mesh.sh propagation` measures
/// it).
const CONFIRM: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether this peer holds the claim of `epoch` on deployment `id`.
fn holds_claim(state: &State, id: &str, epoch: u64) -> bool {
    matches!(state.deployment(id), Ok(Some(r))
        if r.epoch == epoch && r.builder.as_deref() == Some(state.peer.as_str()))
}

/// Applies `change` only if this peer still holds the claim of `epoch`
/// (fencing): a stale builder's writes are dropped here, and would lose the
/// merge everywhere else.
pub fn fenced(
    state: &State,
    id: &str,
    epoch: u64,
    change: impl FnOnce(&mut DeploymentRecord),
) -> Result<bool, p2p::StoreError> {
    if !holds_claim(state, id, epoch) {
        return Ok(false);
    }
    let mut ok = false;
    state.update(id, |r| {
        if r.epoch == epoch {
            change(r);
            ok = true;
        }
    })?;
    Ok(ok)
}

pub async fn build_and_publish(
    shared: &Shared,
    rec: DeploymentRecord,
    epoch: u64,
    log: Logger,
    cancel: watch::Receiver<bool>,
) {
    let state = &shared.state;
    // Peers whose views differ a little can claim the same deployment at
    // once; the merge keeps one claim everywhere. Wait for competing claims
    // to arrive before doing any work, and yield if ours lost.
    if !shared.members.alone() {
        tokio::time::sleep(CONFIRM).await;
    }
    if !holds_claim(state, &rec.id, epoch) {
        if *cancel.borrow() {
            return; // the worker saw it first and said so
        }
        let winner = state
            .deployment(&rec.id)
            .ok()
            .flatten()
            .and_then(|r| r.builder)
            .unwrap_or_default();
        log.line(
            Level::Info,
            &format!("peer {} yields: peer {winner} holds the claim", state.peer),
        );
        return;
    }
    let started = Instant::now();
    let refuse = |step: &'static str, reason: &str| {
        fail(
            state,
            &rec.id,
            epoch,
            Status::BuildFailed,
            reason,
            &log.step(step),
        );
    };
    let url = match validate::repo_url(&rec.repo_url, shared.settings.allow_local) {
        Ok(u) => u,
        Err(e) => return refuse("clone", &e.to_string()),
    };
    let workdir = shared.builds_dir.join(&rec.id);
    let (credential, note) = shared.clone_credential(&rec.name, &rec.repo_url).await;
    if let Some(note) = note {
        log.step("clone").info(&note);
    }
    let crate::project_env::BuildEnv { vars: env, secrets } =
        match crate::project_env::for_build(state, &shared.keys, &rec.name) {
            Ok(found) => found,
            Err(e) => return refuse("detect", &e.to_string()),
        };
    let log = log.masking(secrets);
    let generation = state
        .project(&rec.name)
        .ok()
        .flatten()
        .map_or(0, |p| p.cache_generation);
    let job = Job {
        url,
        git_ref: rec.git_ref.as_deref(),
        commit: rec.commit.as_deref(),
        live_url: &rec.live_url,
        workdir: &workdir,
        blocks: &shared.blocks,
        credential,
        root: rec.root_dir.as_deref(),
        env,
        cache: Some(shared.caches.slot(&rec.name, generation)),
    };
    let result = build::run(&shared.settings, job, &log, cancel, |commit| {
        let _ = fenced(state, &rec.id, epoch, |r| {
            r.commit = Some(commit.to_owned())
        });
    })
    .await;
    let _ = tokio::fs::remove_dir_all(&workdir).await;
    shared.metrics.observe_build(started.elapsed());
    match result {
        Ok(built) => {
            info!(artifact = %built.artifact, secs = started.elapsed().as_secs_f64(), "built");
            log.step("build").info(&format!(
                "built in {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            // From here the distributor of every peer (this one included)
            // takes the artifact on: fetch, unpack, report, switch.
            let now = state.now_ms();
            let _ = fenced(state, &rec.id, epoch, |r| {
                r.status = Status::Built;
                r.artifact = Some(built.artifact.clone());
                r.commit = Some(built.commit.clone());
                r.built_at_ms = now;
            });
            let _ = state.flush().await;
        }
        Err(err) if err.is_cancel() => info!("build stopped"),
        Err(BuildError::MissingTool { tool, kind }) if someone_has(shared, &tool) => {
            hand_over(state, &rec.id, epoch, &tool, &kind, &log.step("detect"));
        }
        Err(err) => {
            warn!(error = %log.mask(&err.to_string()), "build failed");
            fail(
                state,
                &rec.id,
                epoch,
                Status::BuildFailed,
                &log.mask(&err.to_string()),
                &log.step(err.step()),
            );
            let _ = state.flush().await;
        }
    }
}

/// Whether a live peer reports `capability`.
fn someone_has(shared: &Shared, capability: &str) -> bool {
    shared
        .live_peers()
        .iter()
        .any(|p| p.capabilities.iter().any(|c| c == capability))
}

/// Gives a deployment back to the mesh (a new epoch, queued again) with a
/// requirement this peer cannot meet, so the election picks a peer that can.
fn hand_over(state: &State, id: &str, epoch: u64, tool: &str, kind: &str, log: &Logger) {
    if !holds_claim(state, id, epoch) {
        return;
    }
    let _ = state.update(id, |r| {
        r.epoch = epoch + 1;
        r.status = Status::Queued;
        r.builder = None;
        r.lease_until_ms = 0;
        if !r.requires.iter().any(|t| t == tool) {
            r.requires.push(tool.to_owned());
        }
    });
    log.line(
        Level::Warn,
        &format!(
            "{tool} is not installed on peer {}; handing the {kind} build to a peer that has it",
            state.peer
        ),
    );
}

/// Ends a deployment with `status`, if this peer still holds its claim. The
/// reason is logged before the status changes, so whoever sees the end also
/// finds the reason in the log.
pub fn fail(state: &State, id: &str, epoch: u64, status: Status, reason: &str, log: &Logger) {
    if !holds_claim(state, id, epoch) {
        return;
    }
    log.line(Level::Error, reason);
    let _ = fenced(state, id, epoch, |r| {
        r.status = status;
        r.error = Some(reason.to_owned());
    });
}

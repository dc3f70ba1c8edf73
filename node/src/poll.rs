//! Auto-deploy by polling, for repositories without webhooks (any git URL):
//! a project with `auto_deploy` and a poll interval is asked for the commit
//! its branch points to (`git ls-remote`), and a new commit becomes a
//! deployment. One live peer polls each project, chosen by rendezvous
//! hashing over the live peers, so the repository is not asked N times; if
//! two peers briefly both poll, the twin submissions are built once.

use crate::backend::NodeBackend;
use crate::build::clone::Credential;
use crate::context::Shared;
use crate::election;
use crate::state::Level;
use crate::validate;
use p2p::locks::LockExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use web::{Backend, NewDeployment};

const TICK: Duration = Duration::from_secs(1);
/// Bound on one `ls-remote`.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The branch a repository's `branch` (or default branch) points to: `(branch, commit)`.
fn ls_remote(
    url: &str,
    branch: Option<&str>,
    credential: Option<&Credential>,
) -> Result<Option<(String, String)>, git2::Error> {
    let mut remote = git2::Remote::create_detached(url)?;
    let remote = remote.connect_auth(
        git2::Direction::Fetch,
        Some(crate::build::clone::callbacks(credential)),
        None,
    )?;
    let wanted = match branch {
        Some(b) => format!("refs/heads/{b}"),
        None => remote
            .default_branch()?
            .as_str()
            .unwrap_or("refs/heads/main")
            .to_owned(),
    };
    let found = remote
        .list()?
        .iter()
        .find(|head| head.name() == wanted)
        .map(|head| {
            let name = wanted.trim_start_matches("refs/heads/").to_owned();
            (name, head.oid().to_string())
        });
    drop(remote);
    Ok(found)
}

pub struct Poller {
    backend: Arc<NodeBackend>,
    shared: Arc<Shared>,
    synced: watch::Receiver<bool>,
    allow_local: bool,
    last: HashMap<String, Instant>,
    running: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Poller {
    pub fn new(
        backend: Arc<NodeBackend>,
        shared: Arc<Shared>,
        synced: watch::Receiver<bool>,
        allow_local: bool,
    ) -> Self {
        Self {
            backend,
            shared,
            synced,
            allow_local,
            last: HashMap::new(),
            running: Arc::default(),
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            if *self.synced.borrow() {
                self.poll_due();
            }
        }
    }

    /// The live peer that polls `project`.
    fn poller_of(&self, project: &str) -> Option<String> {
        let key = format!("poll/{project}");
        self.shared
            .live_peers()
            .into_iter()
            .max_by_key(|p| (election::weight(&key, &p.id), p.id.clone()))
            .map(|p| p.id)
    }

    fn poll_due(&mut self) {
        let state = self.shared.state.clone();
        let Ok(projects) = state.projects() else {
            return;
        };
        for project in projects {
            if !project.auto_deploy || project.poll_interval_secs == 0 {
                continue;
            }
            if self.poller_of(&project.name).as_deref() != Some(state.peer.as_str()) {
                continue;
            }
            let every = Duration::from_secs(project.poll_interval_secs);
            if self
                .last
                .get(&project.name)
                .is_some_and(|t| t.elapsed() < every)
            {
                continue;
            }
            if !self.running.lock_unpoisoned().insert(project.name.clone()) {
                continue;
            }
            self.last.insert(project.name.clone(), Instant::now());
            let Ok(url) = validate::repo_url(&project.repo_url, self.allow_local) else {
                continue;
            };
            let (backend, running, shared) = (
                self.backend.clone(),
                self.running.clone(),
                self.shared.clone(),
            );
            tokio::spawn(async move {
                let name = project.name.clone();
                let (credential, note) = shared.clone_credential(&name, url.as_str()).await;
                if let Some(note) = note {
                    debug!(project = %name, "{note}");
                }
                check(&backend, project, url.as_str().to_owned(), credential).await;
                running.lock_unpoisoned().remove(&name);
            });
        }
    }
}

/// Asks the repository for the branch's commit and deploys it if no
/// deployment of the project has it yet.
async fn check(
    backend: &NodeBackend,
    project: crate::model::Project,
    url: String,
    credential: Option<Credential>,
) {
    let branch = project.branch.clone();
    let asked = tokio::time::timeout(
        LS_REMOTE_TIMEOUT,
        tokio::task::spawn_blocking(move || {
            ls_remote(&url, branch.as_deref(), credential.as_ref())
        }),
    )
    .await;
    let (branch, commit) = match asked {
        Ok(Ok(Ok(Some(found)))) => found,
        Ok(Ok(Ok(None))) => {
            debug!(project = %project.name, "branch not found while polling");
            return;
        }
        Ok(Ok(Err(err))) => {
            warn!(project = %project.name, error = %err, "polling the repository failed");
            return;
        }
        _ => {
            warn!(project = %project.name, "polling the repository timed out");
            return;
        }
    };
    let state = &backend.state;
    let Ok(rows) = state.deployments() else {
        return;
    };
    let known = rows
        .iter()
        .any(|r| r.name == project.name && r.commit.as_deref() == Some(commit.as_str()));
    if known {
        return;
    }
    let req = NewDeployment {
        repo_url: project.repo_url.clone(),
        name: Some(project.name.clone()),
        git_ref: project.branch.clone(),
        commit: Some(commit.clone()),
        ..Default::default()
    };
    match backend.create_deployment(req) {
        Ok(dep) => {
            info!(project = %project.name, %commit, "new commit found by polling");
            state.log(
                &dep.id,
                "queue",
                Level::Info,
                &format!(
                    "new commit {} on {branch}, found by polling on peer {}",
                    commit.get(..12).unwrap_or(&commit),
                    state.peer
                ),
            );
        }
        Err(err) => {
            warn!(project = %project.name, error = %err, "could not deploy a polled commit")
        }
    }
}

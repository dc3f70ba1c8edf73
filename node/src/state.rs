//! The peer's view of the replicated tables, and the one place that writes
//! them: every change is stamped with the clock and merged by the row's law.
//! Changes from this peer and from the mesh alike are turned into live
//! events (status changes, log lines) for the UI and the build worker.

use crate::model::{
    env_key, file_key, log_key, log_view, Delivery, DeploymentFile, DeploymentRecord, EnvVar,
    LogRecord, Project, Revoked,
};
use p2p::locks::LockExt;
use p2p::{Change, Clock, Store, StoreError, Table};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tracing::warn;
use web::{Event, LogLine, Status};

/// Most log lines a peer writes per deployment; the rest is dropped with one marker line.
pub const MAX_LOG_LINES: usize = 5_000;
/// Longest log message kept; longer ones are cut.
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;
/// Events buffered per live subscriber before it must resynchronise.
const EVENT_BUFFER: usize = 1024;

pub struct State {
    /// This peer's id, written into every row it stamps.
    pub peer: String,
    pub clock: Arc<Clock>,
    pub store: Store,
    deployments: Table<DeploymentRecord>,
    logs: Table<LogRecord>,
    /// What each peer holds of each deployment.
    files: Table<DeploymentFile>,
    /// Sites: repository, and which deployment is pinned as current.
    projects: Table<Project>,
    /// Projects' environment variables (secrets sealed).
    env: Table<EnvVar>,
    /// Webhook deliveries already handled.
    deliveries: Table<Delivery>,
    /// Signed-out sessions, by session id.
    revoked: Table<Revoked>,
    events: broadcast::Sender<Event>,
    /// Bumped on every change of a deployment or a replica (from anywhere).
    changes: tokio::sync::watch::Sender<u64>,
    /// Lines this peer logged per deployment (seeded from the table lazily).
    log_counts: Mutex<HashMap<String, usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Turns a stored change into a live event.
fn event_for(change: &Change, clock: &Clock) -> Option<Event> {
    match &*change.table {
        "deployments" => {
            let new: DeploymentRecord = cbor4ii::serde::from_slice(&change.new).ok()?;
            clock.observe(new.stamp);
            let old = change
                .old
                .as_deref()
                .and_then(|o| cbor4ii::serde::from_slice::<DeploymentRecord>(o).ok());
            (old.map(|o| o.status) != Some(new.status)).then(|| Event::Status {
                deployment: new.id.clone(),
                status: new.status,
            })
        }
        "deployment_logs" => {
            let rec: LogRecord = cbor4ii::serde::from_slice(&change.new).ok()?;
            let deployment = std::str::from_utf8(change.key.split(|b| *b == b'/').next()?)
                .ok()?
                .to_owned();
            Some(Event::Log {
                deployment,
                line: log_view(&change.key, &rec),
            })
        }
        _ => None,
    }
}

impl State {
    pub fn open(store: Store, peer: String, clock: Arc<Clock>) -> Result<Self, StoreError> {
        let events = broadcast::channel(EVENT_BUFFER).0;
        let changes = tokio::sync::watch::channel(0u64).0;
        let (tx, c, ch) = (events.clone(), clock.clone(), changes.clone());
        store.listen(Arc::new(move |change: &Change| {
            if matches!(
                &*change.table,
                "deployments" | "deployment_files" | "projects"
            ) {
                ch.send_modify(|n| *n = n.wrapping_add(1));
            }
            if let Some(ev) = event_for(change, &c) {
                let _ = tx.send(ev);
            }
        }));
        Ok(Self {
            peer,
            deployments: store.table("deployments")?,
            logs: store.table("deployment_logs")?,
            files: store.table("deployment_files")?,
            projects: store.table("projects")?,
            env: store.table("project_env")?,
            deliveries: store.table("hook_deliveries")?,
            revoked: store.table("revoked_sessions")?,
            clock,
            store,
            events,
            changes,
            log_counts: Mutex::new(HashMap::new()),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now().wall_ms
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Wakes on every change of a deployment, a replica or a project.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        self.projects.get(name.as_bytes())
    }

    /// Every project, by name.
    pub fn projects(&self) -> Result<Vec<Project>, StoreError> {
        Ok(self
            .projects
            .scan_prefix(b"")?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Writes a project row stamped by this peer, durably (it is desired
    /// state every peer reconciles towards).
    pub fn put_project(&self, mut project: Project) -> Result<Project, StoreError> {
        project.stamp = self.clock.now();
        project.writer = self.peer.clone();
        let key = project.name.clone();
        self.merge_durably(&self.projects, key.as_bytes(), project)
    }

    /// Project `name`'s variables, tombstones included, by key.
    pub fn env(&self, project: &str) -> Result<Vec<EnvVar>, StoreError> {
        let prefix = format!("{project}/");
        Ok(self
            .env
            .scan_prefix(prefix.as_bytes())?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Writes one variable (or its tombstone) stamped by this peer, durably.
    pub fn put_env(&self, mut var: EnvVar) -> Result<EnvVar, StoreError> {
        var.stamp = self.clock.now();
        var.writer = self.peer.clone();
        let key = env_key(&var.project, &var.key);
        self.merge_durably(&self.env, &key, var)
    }

    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.deliveries.get(id.as_bytes())
    }

    /// Records a handled webhook delivery; returns the row that wins (an
    /// earlier handling of the same delivery, if any).
    /// Whether session `id` was signed out.
    pub fn revoked(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.revoked.get(id.as_bytes())?.is_some())
    }

    /// Signs session `id` out on every peer.
    pub fn revoke(&self, id: &str, expires: u64) -> Result<(), StoreError> {
        self.revoked.merge(id.as_bytes(), Revoked { expires })?;
        Ok(())
    }

    pub fn put_delivery(&self, id: &str, mut row: Delivery) -> Result<Delivery, StoreError> {
        row.stamp = self.clock.now();
        row.writer = self.peer.clone();
        Ok(self.deliveries.merge(id.as_bytes(), row)?.0)
    }

    /// Writes this peer's replica row (stamped here; single writer).
    pub fn put_replica(&self, mut rec: DeploymentFile) -> Result<(), StoreError> {
        rec.stamp = self.clock.now();
        rec.peer = self.peer.clone();
        let key = file_key(&rec.deployment, &self.peer);
        self.files.merge(&key, rec)?;
        Ok(())
    }

    /// Every peer's replica of `deployment`.
    pub fn replicas(&self, deployment: &str) -> Result<Vec<DeploymentFile>, StoreError> {
        let prefix = format!("{deployment}/");
        Ok(self
            .files
            .scan_prefix(prefix.as_bytes())?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Every peer's replica of every deployment.
    pub fn all_replicas(&self) -> Result<Vec<DeploymentFile>, StoreError> {
        Ok(self
            .files
            .scan_prefix(b"")?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// This peer's replica of `deployment`.
    pub fn my_replica(&self, deployment: &str) -> Result<Option<DeploymentFile>, StoreError> {
        self.files.get(&file_key(deployment, &self.peer))
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// Writes a new row (or a new version of one) stamped by this peer, and
    /// makes it durable before returning: a deployment that was accepted, a
    /// claim or a status change must survive a crash.
    pub fn put(&self, mut rec: DeploymentRecord) -> Result<DeploymentRecord, StoreError> {
        rec.stamp = self.clock.now();
        rec.writer = self.peer.clone();
        let key = rec.id.clone();
        self.merge_durably(&self.deployments, key.as_bytes(), rec)
    }

    /// Merges `row` and, if that changed anything, flushes to disk before
    /// returning.
    fn merge_durably<T>(&self, table: &Table<T>, key: &[u8], row: T) -> Result<T, StoreError>
    where
        T: p2p::Merge
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let (merged, changed) = table.merge(key, row)?;
        if changed {
            // fsync can take a while: let this worker's other tasks (the
            // swarm, gossip) move to another thread meanwhile.
            tokio::task::block_in_place(|| self.store.flush_now())?;
        }
        Ok(merged)
    }

    /// Applies `change` to the current row and writes it; `None` if there is
    /// no such deployment. The change only sticks if it wins the merge.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut DeploymentRecord),
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        let Some(mut rec) = self.deployments.get(id.as_bytes())? else {
            return Ok(None);
        };
        change(&mut rec);
        self.put(rec).map(Some)
    }

    pub fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        self.deployments.get(id.as_bytes())
    }

    /// All deployments, newest first.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut rows: Vec<_> = self
            .deployments
            .scan_prefix(b"")?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        rows.reverse();
        Ok(rows)
    }

    /// Appends a log line to a deployment, within the per-deployment cap.
    pub fn log(&self, deployment: &str, step: &str, level: Level, message: &str) {
        let count = {
            let mut counts = self.log_counts.lock_unpoisoned();
            let n = counts
                .entry(deployment.to_owned())
                .or_insert_with(|| self.logs.count_prefix(format!("{deployment}/").as_bytes()));
            *n += 1;
            *n
        };
        let message = match count.cmp(&MAX_LOG_LINES) {
            std::cmp::Ordering::Less => truncate(message, MAX_LOG_LINE_BYTES),
            std::cmp::Ordering::Equal => "[log truncated: further lines were dropped]".to_owned(),
            std::cmp::Ordering::Greater => return,
        };
        let at = self.clock.now();
        let key = log_key(deployment, at, &self.peer);
        let rec = LogRecord {
            created_at_ms: at.wall_ms,
            step: step.into(),
            level: level.as_str().into(),
            message,
        };
        if let Err(err) = self.logs.merge(&key, rec) {
            warn!(error = %err, deployment, "could not store a log line");
        }
    }

    pub fn logs(&self, deployment: &str) -> Result<Vec<LogLine>, StoreError> {
        let prefix = format!("{deployment}/");
        Ok(self
            .logs
            .scan_prefix(prefix.as_bytes())?
            .iter()
            .map(|(k, r)| log_view(k, r))
            .collect())
    }

    /// Count of deployments by status.
    pub fn status_counts(&self) -> Result<HashMap<Status, usize>, StoreError> {
        let mut out = HashMap::new();
        for (_, d) in self.deployments.scan_prefix(b"")? {
            *out.entry(d.status).or_insert(0) += 1;
        }
        Ok(out)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut]", &s[..end])
}

//! The peer's view of the replicated tables, and the one place that writes
//! them: every change is stamped with the clock, merged by the row's law,
//! and announced to local subscribers (live logs, the build worker).

use crate::model::{log_key, log_view, DeploymentRecord, LogRecord};
use p2p::{Clock, Store, StoreError, Table};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::broadcast;
use tracing::warn;
use web::{Event, LogLine, Status};

/// Most log lines kept per deployment; the rest is dropped with one marker line.
pub const MAX_LOG_LINES: usize = 5_000;
/// Longest log message kept; longer ones are cut.
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;
/// Events buffered per live subscriber before it must resynchronise.
const EVENT_BUFFER: usize = 1024;

pub struct State {
    /// This peer's id, written into every row it stamps.
    pub peer: String,
    clock: Clock,
    store: Store,
    deployments: Table<DeploymentRecord>,
    logs: Table<LogRecord>,
    events: broadcast::Sender<Event>,
    /// Lines logged per deployment since start (seeded from the table lazily).
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

impl State {
    pub fn open(store: Store, peer: String) -> Result<Self, StoreError> {
        Ok(Self {
            peer,
            clock: Clock::new(),
            deployments: store.table("deployments")?,
            logs: store.table("deployment_logs")?,
            store,
            events: broadcast::channel(EVENT_BUFFER).0,
            log_counts: Mutex::new(HashMap::new()),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now().wall_ms
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// Writes a new row (or a new version of one) stamped by this peer, and
    /// makes it durable before returning: a deployment that was accepted, a
    /// claim or a status change must survive a crash.
    pub fn put(&self, mut rec: DeploymentRecord) -> Result<DeploymentRecord, StoreError> {
        let before = self.deployments.get(rec.id.as_bytes())?.map(|d| d.status);
        rec.stamp = self.clock.now();
        rec.writer = self.peer.clone();
        let key = rec.id.clone();
        let (merged, changed) = self.deployments.merge(key.as_bytes(), rec)?;
        if changed {
            self.store.flush_now()?;
        }
        if before != Some(merged.status) {
            let _ = self.events.send(Event::Status {
                deployment: merged.id.clone(),
                status: merged.status,
            });
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
            let mut counts = self.log_counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(deployment.to_owned()).or_insert_with(|| {
                let prefix = format!("{deployment}/");
                self.logs
                    .scan_prefix(prefix.as_bytes())
                    .map(|r| r.len())
                    .unwrap_or(0)
            });
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
        match self.logs.merge(&key, rec.clone()) {
            Ok(_) => {
                let line = log_view(&key, &rec);
                let _ = self.events.send(Event::Log {
                    deployment: deployment.to_owned(),
                    line,
                });
            }
            Err(err) => warn!(error = %err, deployment, "could not store a log line"),
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

//! The replicated rows and their merge laws.
//!
//! A deployment row is last-writer-wins by `(epoch, status rank, hlc, peer)`:
//! a higher epoch (a newer claim) always wins, and within an epoch a status
//! never moves backwards. Log rows are a grow-only set keyed by
//! `(deployment, hlc, peer)`. Both merges are a maximum over a total order,
//! hence commutative, associative and idempotent (property-tested below).

use p2p::{Hlc, Merge};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use web::{DeploymentView, LogLine, Status};

/// Position of a status in a deployment's life; a row with a higher rank
/// wins within the same epoch. Failures rank just after the step they end.
pub fn rank(s: Status) -> u8 {
    match s {
        Status::Queued => 0,
        Status::Building => 1,
        Status::BuildFailed => 2,
        Status::Built => 3,
        Status::Distributed => 4,
        Status::DistributionFailed => 5,
        Status::Success => 6,
        Status::Canceled => 7,
    }
}

/// One deployment, as every peer stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// ULID: sorts by creation time.
    pub id: String,
    pub name: String,
    pub repo_url: String,
    pub git_ref: Option<String>,
    /// The requested commit, replaced by the resolved one after cloning.
    pub commit: Option<String>,
    pub status: Status,
    /// Peer id of the peer that claimed the build.
    pub builder: Option<String>,
    /// Claim generation: each (re)claim increments it; stale writes lose.
    pub epoch: u64,
    /// The builder's claim is valid until then (ms since the Unix epoch).
    pub lease_until_ms: u64,
    /// Content id (sha256 hex) of the packed site.
    pub artifact: Option<String>,
    pub live_url: String,
    pub created_at_ms: u64,
    pub error: Option<String>,
    /// Capabilities the builder needs beyond building at all (a generator
    /// found missing on an earlier builder, e.g. `hugo`).
    #[serde(default)]
    pub requires: Vec<String>,
    /// When the build finished (ms since the Unix epoch; 0 before): the
    /// distribution deadline counts from here.
    #[serde(default)]
    pub built_at_ms: u64,
    /// The base directory the build runs in, when the deployment named one.
    #[serde(default)]
    pub root_dir: Option<String>,
    /// When and by whom this version of the row was written.
    pub stamp: Hlc,
    pub writer: String,
}

/// Submissions of the same request this close together count as one.
pub const SAME_TIME_MS: u64 = 5_000;

impl DeploymentRecord {
    /// Whether `self` repeats the older, still running `earlier`: the same
    /// site, repository, ref and commit, submitted at about the same time
    /// (typically on two peers at once, before either saw the other).
    pub fn repeats(&self, earlier: &DeploymentRecord) -> bool {
        earlier.id < self.id
            && matches!(earlier.status, Status::Queued | Status::Building)
            && earlier.name == self.name
            && earlier.repo_url == self.repo_url
            && earlier.git_ref == self.git_ref
            && (earlier.commit == self.commit
                || self.commit.is_none()
                    && self.created_at_ms.saturating_sub(earlier.created_at_ms) < SAME_TIME_MS)
    }

    fn order_key(&self) -> (u64, u8, Hlc, &str) {
        (self.epoch, rank(self.status), self.stamp, &self.writer)
    }

    pub fn to_view(&self) -> DeploymentView {
        DeploymentView {
            id: self.id.clone(),
            name: self.name.clone(),
            repo_url: self.repo_url.clone(),
            git_ref: self.git_ref.clone(),
            commit: self.commit.clone(),
            status: self.status,
            builder: self.builder.clone(),
            epoch: self.epoch,
            artifact: self.artifact.clone(),
            live_url: self.live_url.clone(),
            preview_url: None,
            created_at: rfc3339(self.created_at_ms),
            updated_at: rfc3339(self.stamp.wall_ms),
            built_at: (self.built_at_ms > 0).then(|| rfc3339(self.built_at_ms)),
            error: self.error.clone(),
            replicas: Vec::new(),
            timeline: Vec::new(),
        }
    }
}

impl Merge for DeploymentRecord {
    fn merge(self, other: Self) -> Self {
        match self.order_key().cmp(&other.order_key()) {
            Ordering::Greater => self,
            Ordering::Less => other,
            // Same writer and clock means the same write; compare the rest
            // anyway so that even malformed input merges deterministically.
            Ordering::Equal => {
                let a = cbor4ii::serde::to_vec(Vec::new(), &self).unwrap_or_default();
                let b = cbor4ii::serde::to_vec(Vec::new(), &other).unwrap_or_default();
                if a >= b {
                    self
                } else {
                    other
                }
            }
        }
    }
}

/// One log line, as every peer stores it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogRecord {
    pub created_at_ms: u64,
    pub step: String,
    pub level: String,
    pub message: String,
}

impl Merge for LogRecord {
    /// Rows of a grow-only set: the same key always carries the same line.
    fn merge(self, other: Self) -> Self {
        self.max(other)
    }
}

/// Where one peer is with one deployment's artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReplicaState {
    /// Blocks are arriving.
    Fetching,
    /// Every block is here and checked, and the site is unpacked.
    Complete,
    /// This peer could not fetch or unpack it (see `error`).
    Failed,
    /// Removed here by garbage collection.
    Evicted,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Fetching => "fetching",
            ReplicaState::Complete => "complete",
            ReplicaState::Failed => "failed",
            ReplicaState::Evicted => "evicted",
        }
    }
}

/// What one peer holds of one deployment (single writer: that peer). Key:
/// `<deployment>/<peer>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeploymentFile {
    pub deployment: String,
    pub peer: String,
    /// Where the site is unpacked on that peer.
    pub path: String,
    /// Bytes of the artifact held so far.
    pub bytes: u64,
    pub created_at_ms: u64,
    pub stamp: Hlc,
    #[serde(default = "complete")]
    pub state: ReplicaState,
    /// Size of the whole artifact (0 until known).
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub error: Option<String>,
}

fn complete() -> ReplicaState {
    ReplicaState::Complete
}

pub fn file_key(deployment: &str, peer: &str) -> Vec<u8> {
    format!("{deployment}/{peer}").into_bytes()
}

impl Merge for DeploymentFile {
    /// Single writer, newest wins (field order puts the stamp last, so the
    /// total order is deterministic).
    fn merge(self, other: Self) -> Self {
        if (self.stamp, &self) >= (other.stamp, &other) {
            self
        } else {
            other
        }
    }
}

/// A site: its name, repository and which deployment is current.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub repo_url: String,
    /// The deployment served when `pinned` (set by a rollback or a promote).
    pub current_deployment: Option<String>,
    pub auto_deploy: bool,
    pub stamp: Hlc,
    pub writer: String,
    /// Serve `current_deployment` even when newer successful deployments
    /// exist; otherwise the newest successful one is served.
    #[serde(default)]
    pub pinned: bool,
    /// With `auto_deploy`: how often the repository is asked for a new
    /// commit on `branch` (0: never; webhooks only).
    #[serde(default)]
    pub poll_interval_secs: u64,
    /// The branch auto-deploy follows (none: the repository's default).
    #[serde(default)]
    pub branch: Option<String>,
    /// The project's own webhook secret (replicated to every peer, so any
    /// peer can check a delivery; never shown by the API).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// The GitHub token private repositories are cloned with, sealed with
    /// the mesh's keys (see `web::session`): readable by every peer of the
    /// mesh, by nobody else, never shown by the API.
    #[serde(default)]
    pub credential: Option<RepoCredential>,
    /// The build cache's generation: clearing the cache moves it on and
    /// every peer drops entries of older generations.
    #[serde(default)]
    pub cache_generation: u64,
    /// The base directory builds run in (a monorepo's app).
    #[serde(default)]
    pub root_dir: Option<String>,
}

impl Project {
    /// A project with no deployment yet (its variables were set first).
    pub fn named(name: &str) -> Self {
        Project {
            name: name.to_owned(),
            repo_url: String::new(),
            current_deployment: None,
            auto_deploy: false,
            stamp: Hlc::default(),
            writer: String::new(),
            pinned: false,
            poll_interval_secs: 0,
            branch: None,
            webhook_secret: None,
            credential: None,
            cache_generation: 0,
            root_dir: None,
        }
    }
}

/// A sealed GitHub token and the user it belongs to.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RepoCredential {
    pub login: String,
    pub sealed: String,
}

impl std::fmt::Debug for RepoCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCredential")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// One environment variable of a project. Key: `<project>/<KEY>`. A
/// secret's value is sealed with the mesh's keys; a removed variable stays
/// as a tombstone so that the removal replicates.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EnvVar {
    pub project: String,
    pub key: String,
    /// Plain, or sealed (`secret`); empty once deleted.
    pub value: String,
    pub secret: bool,
    pub deleted: bool,
    pub stamp: Hlc,
    pub writer: String,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVar")
            .field("project", &self.project)
            .field("key", &self.key)
            .field("secret", &self.secret)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

pub fn env_key(project: &str, key: &str) -> Vec<u8> {
    format!("{project}/{key}").into_bytes()
}

impl Merge for EnvVar {
    /// Last writer wins by (clock, peer).
    fn merge(self, other: Self) -> Self {
        if (self.stamp, &self.writer, &self) >= (other.stamp, &other.writer, &other) {
            self
        } else {
            other
        }
    }
}

/// A signed-out session: refused by every peer until it would have expired.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Revoked {
    /// Unix seconds; after this the session is refused anyway.
    pub expires: u64,
}

impl Merge for Revoked {
    fn merge(self, other: Self) -> Self {
        self.max(other)
    }
}

impl Merge for Project {
    /// Last writer wins by (clock, peer).
    fn merge(self, other: Self) -> Self {
        if (self.stamp, &self.writer, &self) >= (other.stamp, &other.writer, &other) {
            self
        } else {
            other
        }
    }
}

/// A webhook delivery this mesh handled, so that a replay (or the same
/// delivery sent to another peer) deploys nothing more. Key: delivery id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Delivery {
    pub received_at_ms: u64,
    pub deployments: Vec<String>,
    pub stamp: Hlc,
    pub writer: String,
}

impl Merge for Delivery {
    /// The first handling wins; the rest are the same delivery seen twice.
    fn merge(self, other: Self) -> Self {
        if (other.stamp, &other.writer, &other) < (self.stamp, &self.writer, &self) {
            other
        } else {
            self
        }
    }
}

/// Key of a log row: deployment id, then clock, then peer, so that a prefix
/// scan by deployment returns lines in order.
pub fn log_key(deployment: &str, at: Hlc, peer: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(deployment.len() + 13 + peer.len());
    key.extend_from_slice(deployment.as_bytes());
    key.push(b'/');
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(peer.as_bytes());
    key
}

pub fn log_view(key: &[u8], rec: &LogRecord) -> LogLine {
    LogLine {
        created_at: rfc3339(rec.created_at_ms),
        step: rec.step.clone(),
        level: rec.level.clone(),
        message: rec.message.clone(),
        peer: log_peer(key).unwrap_or_default(),
        key: hex::encode(key),
    }
}

/// The peer that wrote a log row, from its key (see [`log_key`]).
fn log_peer(key: &[u8]) -> Option<String> {
    let slash = key.iter().position(|b| *b == b'/')?;
    let peer = key.get(slash + 1 + 12..)?;
    String::from_utf8(peer.to_vec()).ok()
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL.to_vec())
    }

    prop_compose! {
        fn record()(epoch in 0u64..3, status in status(), wall in 0u64..5, counter in 0u32..2,
                    writer in "[ab]", error in proptest::option::of("[xy]")) -> DeploymentRecord {
            DeploymentRecord {
                id: "01J0000000000000000000000".into(), name: "site".into(),
                repo_url: "https://example.com/site.git".into(), git_ref: None, commit: None,
                status, builder: Some(writer.clone()), epoch, lease_until_ms: 0, artifact: None,
                live_url: "http://site.localhost/".into(), created_at_ms: 0, error, requires: vec![], built_at_ms: 0, root_dir: None,
                stamp: Hlc { wall_ms: wall, counter }, writer,
            }
        }
    }

    proptest! {
        #[test]
        fn deployment_merge_is_a_semilattice(a in record(), b in record(), c in record()) {
            prop_assert_eq!(a.clone().merge(b.clone()), b.clone().merge(a.clone()));
            prop_assert_eq!(a.clone().merge(b.clone()).merge(c.clone()), a.clone().merge(b.clone().merge(c.clone())));
            prop_assert_eq!(a.clone().merge(a.clone()), a);
        }

        #[test]
        fn any_order_and_duplication_converges(rows in proptest::collection::vec(record(), 1..8), seed in any::<u64>()) {
            let forward = rows.iter().cloned().reduce(Merge::merge).unwrap();
            let mut shuffled: Vec<_> = rows.iter().chain(rows.iter()).cloned().collect();
            let n = shuffled.len();
            for i in 0..n { shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % n); }
            let other = shuffled.into_iter().reduce(Merge::merge).unwrap();
            prop_assert_eq!(forward, other);
        }

        #[test]
        fn status_never_moves_backwards_within_an_epoch(a in record(), b in record()) {
            let m = a.clone().merge(b.clone());
            if a.epoch == b.epoch {
                prop_assert!(rank(m.status) >= rank(a.status).max(rank(b.status)));
            } else {
                prop_assert_eq!(m.epoch, a.epoch.max(b.epoch));
            }
        }
    }

    /// The three laws, for any row type.
    fn laws<T: Merge + Clone + PartialEq + std::fmt::Debug>(
        a: T,
        b: T,
        c: T,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(a.clone().merge(b.clone()), b.clone().merge(a.clone()));
        prop_assert_eq!(
            a.clone().merge(b.clone()).merge(c.clone()),
            a.clone().merge(b.clone().merge(c.clone()))
        );
        prop_assert_eq!(a.clone().merge(a.clone()), a);
        Ok(())
    }

    prop_compose! {
        fn stamp()(wall in 0u64..4, counter in 0u32..2) -> Hlc { Hlc { wall_ms: wall, counter } }
    }
    prop_compose! {
        fn file()(peer in "[ab]", bytes in 0u64..3, stamp in stamp()) -> DeploymentFile {
            DeploymentFile { deployment: "d".into(), peer, path: "p".into(), bytes, created_at_ms: 0, stamp,
                             state: ReplicaState::Fetching, total: 3, error: None }
        }
    }
    prop_compose! {
        fn project()(current in proptest::option::of("[xy]"), auto in any::<bool>(), stamp in stamp(), writer in "[ab]") -> Project {
            Project { name: "n".into(), repo_url: "r".into(), current_deployment: current, auto_deploy: auto, stamp, writer, pinned: auto,
                      poll_interval_secs: 0, branch: None, webhook_secret: None, credential: None, cache_generation: 0, root_dir: None }
        }
    }
    prop_compose! {
        fn env_var()(value in "[xy]", secret in any::<bool>(), deleted in any::<bool>(), stamp in stamp(), writer in "[ab]") -> EnvVar {
            EnvVar { project: "n".into(), key: "K".into(), value, secret, deleted, stamp, writer }
        }
    }
    prop_compose! {
        fn log()(at in 0u64..3, step in "[ab]", message in "[xy]") -> LogRecord {
            LogRecord { created_at_ms: at, step, level: "info".into(), message }
        }
    }

    proptest! {
        #[test]
        fn every_table_merges_by_the_laws(
            f in proptest::array::uniform3(file()),
            p in proptest::array::uniform3(project()),
            l in proptest::array::uniform3(log()),
            e in proptest::array::uniform3(env_var()),
        ) {
            let [a, b, c] = e; laws(a, b, c)?;
            let [a, b, c] = f; laws(a, b, c)?;
            let [a, b, c] = p; laws(a, b, c)?;
            let [a, b, c] = l; laws(a, b, c)?;
        }
    }

    #[test]
    fn a_log_key_names_its_writer() {
        let at = Hlc {
            wall_ms: 7,
            counter: 1,
        };
        let key = log_key("01DEPLOY", at, "12D3KooPeer");
        assert_eq!(log_peer(&key).as_deref(), Some("12D3KooPeer"));
        assert_eq!(log_peer(b"no-slash"), None);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}

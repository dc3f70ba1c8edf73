//! The shapes that cross the HTTP boundary: what the API returns and accepts.

use serde::{Deserialize, Serialize};

/// Where a deployment is in its life. Serialised exactly as the API names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    Queued,
    Building,
    Built,
    Distributed,
    Success,
    BuildFailed,
    DistributionFailed,
    Canceled,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Building,
        Status::Built,
        Status::Distributed,
        Status::Success,
        Status::BuildFailed,
        Status::DistributionFailed,
        Status::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Building => "building",
            Status::Built => "built",
            Status::Distributed => "distributed",
            Status::Success => "success",
            Status::BuildFailed => "buildFailed",
            Status::DistributionFailed => "distributionFailed",
            Status::Canceled => "canceled",
        }
    }

    /// No further change will happen: live logs end here.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Success | Status::BuildFailed | Status::DistributionFailed | Status::Canceled
        )
    }
}

/// A deployment as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: String,
    pub name: String,
    pub repo_url: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub commit: Option<String>,
    pub status: Status,
    pub builder: Option<String>,
    /// Claim generation: increases each time a peer (re)claims the build.
    pub epoch: u64,
    pub artifact: Option<String>,
    pub live_url: String,
    /// This very deployment, served by every peer that holds it, whether or
    /// not it is live: `http://<first 8 of id>--<name>.<site-domain>/`.
    #[serde(default)]
    pub preview_url: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// RFC 3339 UTC: when the build finished (distribution starts here).
    #[serde(default)]
    pub built_at: Option<String>,
    pub error: Option<String>,
    /// What each peer holds of the artifact (only on `GET /api/deployments/{id}`).
    #[serde(default)]
    pub replicas: Vec<ReplicaView>,
    /// The steps so far, from the log (only on `GET /api/deployments/{id}`).
    #[serde(default)]
    pub timeline: Vec<StepView>,
}

/// One step of a deployment: consecutive log lines of one step by one peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub step: String,
    /// Peer id of the peer that did it.
    pub peer: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    pub ended_at: String,
    /// The step's last line (its outcome).
    pub summary: String,
    /// The worst level among its lines: `info`, `warn` or `error`.
    pub level: String,
}

/// Groups a deployment's log into steps.
pub fn timeline(lines: &[LogLine]) -> Vec<StepView> {
    let rank = |l: &str| match l {
        "error" => 2,
        "warn" => 1,
        _ => 0,
    };
    let mut out: Vec<StepView> = Vec::new();
    for line in lines {
        match out.last_mut() {
            Some(s) if s.step == line.step && s.peer == line.peer => {
                s.ended_at = line.created_at.clone();
                s.summary = line.message.clone();
                if rank(&line.level) > rank(&s.level) {
                    s.level = line.level.clone();
                }
            }
            _ => out.push(StepView {
                step: line.step.clone(),
                peer: line.peer.clone(),
                started_at: line.created_at.clone(),
                ended_at: line.created_at.clone(),
                summary: line.message.clone(),
                level: line.level.clone(),
            }),
        }
    }
    out
}

/// A site: its repository and the deployment it serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectView {
    pub name: String,
    pub repo_url: String,
    /// The deployment served now (the pinned one, or the newest successful one).
    pub current_deployment: Option<String>,
    /// Whether `current_deployment` was chosen by a rollback or a promote and
    /// stays served when newer deployments succeed.
    pub pinned: bool,
    /// Whether new commits are deployed by themselves (polling, if
    /// `poll_interval_secs` > 0; webhooks always deploy).
    pub auto_deploy: bool,
    pub poll_interval_secs: u64,
    /// The branch followed (none: the repository's default branch).
    pub branch: Option<String>,
    /// Whether the project has its own webhook secret (never shown).
    #[serde(default)]
    pub has_webhook_secret: bool,
    /// The build cache's generation: clearing the cache moves it on, and
    /// every peer drops older generations.
    #[serde(default)]
    pub cache_generation: u64,
    /// The base directory builds run in (none: the repository's top).
    #[serde(default)]
    pub root_dir: Option<String>,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// The body of `PATCH /api/projects/{name}`: the fields to change.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    #[serde(default)]
    pub auto_deploy: Option<bool>,
    #[serde(default)]
    pub poll_interval_secs: Option<u64>,
    #[serde(default)]
    pub branch: Option<String>,
    /// This project's own webhook secret (empty: none; the mesh's applies).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// The base directory builds run in (empty or ".": the repository's top).
    #[serde(default)]
    pub root_dir: Option<String>,
}

/// One of a project's environment variables, as the API shows it: a
/// secret's value is never shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVarView {
    pub key: String,
    pub secret: bool,
    /// The value, for a plain variable only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// The body of `PUT /api/projects/{name}/env/{key}`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetEnvVar {
    pub value: String,
    /// Sealed with the mesh secret, opened only inside the builds that use
    /// it, never shown again.
    #[serde(default)]
    pub secret: bool,
}

impl std::fmt::Debug for SetEnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetEnvVar")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// The body of `POST /api/projects/{name}/rollback` and `/promote`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetCurrent {
    pub deployment_id: String,
}

/// One peer's copy of a deployment's artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub peer: String,
    /// The peer's name, if known.
    pub name: Option<String>,
    /// `fetching`, `complete`, `failed` or `evicted`.
    pub state: String,
    /// Bytes of the artifact held so far.
    pub bytes: u64,
    /// Size of the whole artifact (0 until known).
    pub total: u64,
    /// RFC 3339 UTC.
    pub updated_at: String,
    pub error: Option<String>,
}

/// One log line of a deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 UTC with milliseconds.
    pub created_at: String,
    pub step: String,
    pub level: String,
    pub message: String,
    /// Peer id of the peer that wrote the line.
    #[serde(default)]
    pub peer: String,
    /// Unique key of the line within its deployment (not part of the API shape).
    #[serde(skip)]
    pub key: String,
}

/// The body of `POST /api/deployments`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    pub repo_url: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
    /// The base directory to build in (a monorepo's app), relative to the
    /// repository; wins over shoal.toml's `[build] root`.
    #[serde(default)]
    pub root_dir: Option<String>,
    /// The signed-in user's GitHub token, set by the API (never read from
    /// the request) when the repository is on the configured GitHub: the
    /// node seals it into the project so any builder can clone a private
    /// repository.
    #[serde(skip)]
    pub credential: Option<Credential>,
    /// The signed-in GitHub user who asked, set by the API.
    #[serde(skip)]
    pub requested_by: Option<String>,
}

/// A GitHub token and whose it is.
#[derive(Clone, PartialEq)]
pub struct Credential {
    pub login: String,
    pub token: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// A peer of the mesh, as `GET /api/peers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
    pub addresses: Vec<String>,
    pub region: String,
    pub load: f64,
    pub capabilities: Vec<String>,
    pub version: String,
    /// RFC 3339 UTC: when this peer last heard from it.
    pub last_seen: String,
    pub alive: bool,
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Deployments this peer holds a complete copy of.
    #[serde(default)]
    pub holds: Vec<String>,
}

/// Something happened to a deployment.
#[derive(Clone, Debug)]
pub enum Event {
    Log { deployment: String, line: LogLine },
    Status { deployment: String, status: Status },
}

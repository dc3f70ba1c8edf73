//! shoal's HTTP surface. It knows nothing of libp2p: the node hands it a
//! [`Backend`] and gets back two routers, one for the UI and JSON API and one
//! for the sites port. Both are plain values that tests can call without a
//! socket.

mod api;
pub mod auth;
mod error;
mod files;
pub mod github;
pub mod hooks;
mod login;
mod metrics;
pub mod model;
pub mod session;
mod sites;
mod ui;

pub use auth::Auth;
pub use error::ApiError;
pub use metrics::HttpMetrics;
pub use model::{
    DeploymentView, EnvVarView, Event, LogLine, NewDeployment, PeerInfo, ProjectSettings,
    ProjectView, ReplicaView, SetCurrent, SetEnvVar, Status,
};

use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast;

/// What the HTTP layer needs from the node. Calls are cheap and synchronous
/// (local state reads and writes); slow work happens behind them.
pub trait Backend: Send + Sync + 'static {
    /// Validates and records a new deployment; returns it queued.
    fn create_deployment(&self, req: NewDeployment) -> Result<DeploymentView, ApiError>;
    /// All deployments, newest first.
    fn deployments(&self) -> Result<Vec<DeploymentView>, ApiError>;
    fn deployment(&self, id: &str) -> Result<Option<DeploymentView>, ApiError>;
    /// Stops a queued or building deployment wherever it runs; `None` if
    /// there is no such deployment, a conflict if it is past building.
    fn cancel_deployment(&self, id: &str) -> Result<Option<DeploymentView>, ApiError>;
    /// Every project, by name.
    fn projects(&self) -> Result<Vec<ProjectView>, ApiError>;
    fn project(&self, name: &str) -> Result<Option<ProjectView>, ApiError>;
    /// Changes a project's auto-deploy settings; `None` if there is no such project.
    fn update_project(
        &self,
        name: &str,
        req: ProjectSettings,
    ) -> Result<Option<ProjectView>, ApiError>;
    /// Makes an earlier (rollback) or later (promote) successful deployment
    /// the one every peer serves for `name`; `None` if there is no such project.
    fn set_current(
        &self,
        name: &str,
        req: SetCurrent,
        verb: &str,
    ) -> Result<Option<ProjectView>, ApiError>;
    /// A project's environment variables by key (secret values never
    /// shown); `None` if there is no such project.
    fn project_env(&self, name: &str) -> Result<Option<Vec<EnvVarView>>, ApiError>;
    /// Sets one variable, creating the project if it has no deployment yet.
    fn set_project_env(
        &self,
        name: &str,
        key: &str,
        req: SetEnvVar,
    ) -> Result<EnvVarView, ApiError>;
    /// Removes one variable; whether it was there.
    fn delete_project_env(&self, name: &str, key: &str) -> Result<bool, ApiError>;
    /// Drops the project's build cache on every peer; `None` if there is
    /// no such project.
    fn clear_build_cache(&self, name: &str) -> Result<Option<ProjectView>, ApiError>;
    /// The log of one deployment in order, or `None` if there is no such deployment.
    fn logs(&self, id: &str) -> Result<Option<Vec<LogLine>>, ApiError>;
    /// Live log lines and status changes of every deployment.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
    /// Every known peer, this one first.
    fn peers(&self) -> Vec<PeerInfo>;
    /// The directory of the version of site `name` being served now.
    fn site_root(&self, name: &str) -> Option<PathBuf>;
    /// Who may write: the admin token, GitHub sign-in, the mesh's keys.
    fn auth(&self) -> &Auth;
    /// Whether a session was signed out (on any peer).
    fn session_revoked(&self, id: &str) -> bool;
    /// Signs a session out on every peer; `expires` (unix seconds) is when
    /// the record may be forgotten.
    fn revoke_session(&self, id: &str, expires: u64) -> Result<(), ApiError>;
    /// Whether the peer is ready to take traffic: started, caught up with
    /// the mesh, serving every live site; else why not.
    fn ready(&self) -> Result<(), String>;
    /// The domain that sites are served under (`<name>.<site_domain>`).
    fn site_domain(&self) -> &str;
    /// Prometheus text lines for the node's own figures.
    fn metrics(&self) -> String;
    /// The secrets GitHub may sign webhook deliveries with: the mesh's
    /// (scope `None`) and each project's own (scope: its name). Empty:
    /// webhooks are off.
    fn webhook_secrets(&self) -> Vec<(Option<String>, String)>;
    /// Deploys a verified push to every project that follows its
    /// repository and branch (only project `scope` if the delivery was
    /// signed with that project's secret), once per delivery.
    fn github_push(
        &self,
        push: hooks::Push,
        scope: Option<&str>,
    ) -> Result<hooks::PushOutcome, ApiError>;
}

/// The UI and JSON API router.
pub fn app<B: Backend>(backend: Arc<B>, metrics: Arc<HttpMetrics>) -> axum::Router {
    axum::Router::new()
        .merge(api::routes::<B>())
        .merge(login::routes::<B>())
        .merge(ui::routes::<B>())
        .route("/metrics", axum::routing::get(metrics::handler::<B>))
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .with_state(AppState::new(backend, metrics))
}

/// The router for the sites port.
pub fn sites_app<B: Backend>(backend: Arc<B>, metrics: Arc<HttpMetrics>) -> axum::Router {
    sites::router(AppState::new(backend, metrics))
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A user's repositories as fetched from GitHub, and whether there were more.
type RepoListing = Arc<(Vec<github::Repo>, bool)>;

/// State shared by every handler.
pub(crate) struct AppState<B> {
    pub backend: Arc<B>,
    pub metrics: Arc<HttpMetrics>,
    /// Repository lists by session id, briefly, for the picker's search.
    pub repos:
        Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, RepoListing)>>>,
}

impl<B> AppState<B> {
    fn new(backend: Arc<B>, metrics: Arc<HttpMetrics>) -> Self {
        Self {
            backend,
            metrics,
            repos: Arc::default(),
        }
    }
}

impl<B> Clone for AppState<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            metrics: self.metrics.clone(),
            repos: self.repos.clone(),
        }
    }
}

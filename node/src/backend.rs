//! What the HTTP layer calls: validation and recording of new deployments,
//! reads of the replicated tables, and the sites being served.

use crate::metrics::NodeMetrics;
use crate::model::{DeploymentRecord, Project, RepoCredential};
use crate::site::Sites;
use crate::state::{Level, State};
use crate::validate;
use p2p::Hlc;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tracing::warn;
use web::hooks::{Push, PushOutcome};
use web::session::Purpose;
use web::{ApiError, DeploymentView, Event, LogLine, NewDeployment, Status};

pub struct NodeBackend {
    pub members: Arc<p2p::members::Members>,
    pub info: tokio::sync::watch::Receiver<p2p::members::LocalInfo>,
    pub p2p: p2p::net::Client,
    pub state: Arc<State>,
    pub sites: Sites,
    pub metrics: Arc<NodeMetrics>,
    pub exchange: Arc<p2p::exchange::Exchange>,
    pub auth: web::Auth,
    pub site_domain: String,
    pub sites_port: u16,
    pub allow_local: bool,
    pub webhook_secret: Option<String>,
    /// Set once start-up recovery is done.
    pub ready: AtomicBool,
    /// True once this peer has caught up with the mesh.
    pub synced: tokio::sync::watch::Receiver<bool>,
    /// Nudges the build worker.
    pub wake: mpsc::Sender<()>,
}

fn internal(err: impl std::fmt::Display) -> ApiError {
    ApiError::internal(err.to_string())
}

/// A base directory from a request: relative, inside the repository.
fn root_dir(dir: &str) -> Result<String, ApiError> {
    crate::build::detect::check_dir("root_dir", dir)
        .map_err(|e| ApiError::bad_request("invalid_root_dir", e.to_string()))
}

fn env_error(e: crate::project_env::EnvError) -> ApiError {
    use crate::project_env::EnvError;
    match e {
        EnvError::Invalid(d) => ApiError::bad_request("invalid_env", d),
        e @ EnvError::TooMany(_) => ApiError::conflict("too_many_env_vars", e.to_string()),
        e => internal(e),
    }
}

fn invalid(e: validate::Invalid) -> ApiError {
    ApiError::bad_request(e.code(), e.to_string())
}

impl NodeBackend {
    pub fn live_url(&self, name: &str) -> String {
        match self.sites_port {
            80 => format!("http://{name}.{}/", self.site_domain),
            port => format!("http://{name}.{}:{port}/", self.site_domain),
        }
    }

    fn view(&self, rec: &DeploymentRecord) -> DeploymentView {
        let mut view = rec.to_view();
        // Derived from the stored live URL, so that every peer shows the same.
        view.preview_url = Some(rec.live_url.replacen(
            &format!("://{}.", rec.name),
            &format!("://{}--{}.", preview_prefix(&rec.id), rec.name),
            1,
        ));
        view
    }

    /// The unpacked version a preview label (`<prefix>--<name>`) names: the
    /// newest deployment of `name` whose id or commit starts with `prefix`
    /// (8 or more characters), if this peer holds it.
    fn preview_root(&self, label: &str) -> Option<PathBuf> {
        let (prefix, name) = label.split_once("--")?;
        validate::name(name).ok()?;
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < PREVIEW_PREFIX || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        self.state
            .deployments()
            .ok()?
            .into_iter()
            .filter(|r| r.name == name)
            .filter(|r| {
                r.id.to_ascii_lowercase().starts_with(&prefix)
                    || r.commit.as_deref().is_some_and(|c| c.starts_with(&prefix))
            })
            .map(|r| self.sites.version_dir(name, &r.id))
            .find(|dir| dir.is_dir())
    }
}

impl NodeBackend {
    /// Deployments with the same name belong to one project: the first
    /// creates it, a later one from another repository moves it there.
    /// Creates the deployment's project, or brings its repository (and the
    /// token it is cloned with, when one came with the request) up to date.
    fn ensure_project(
        &self,
        rec: &DeploymentRecord,
        credential: Option<RepoCredential>,
    ) -> Result<(), p2p::StoreError> {
        match self.state.project(&rec.name)? {
            Some(p)
                if p.repo_url == rec.repo_url
                    && credential.is_none()
                    && (rec.root_dir.is_none() || rec.root_dir == p.root_dir) =>
            {
                Ok(())
            }
            Some(mut p) => {
                if rec.root_dir.is_some() {
                    p.root_dir.clone_from(&rec.root_dir);
                }
                if p.repo_url != rec.repo_url {
                    // Another repository's token must not follow the name.
                    p.credential = None;
                }
                p.repo_url = rec.repo_url.clone();
                if credential.is_some() {
                    p.credential = credential;
                }
                self.state.put_project(p).map(|_| ())
            }
            None => self
                .state
                .put_project(Project {
                    name: rec.name.clone(),
                    repo_url: rec.repo_url.clone(),
                    current_deployment: None,
                    auto_deploy: false,
                    stamp: Hlc::default(),
                    writer: String::new(),
                    pinned: false,
                    poll_interval_secs: 0,
                    branch: rec.git_ref.clone(),
                    webhook_secret: None,
                    credential,
                    cache_generation: 0,
                    root_dir: rec.root_dir.clone(),
                })
                .map(|_| ()),
        }
    }

    /// A project's webhook secret in the clear (sealed ones; older rows
    /// kept it plain).
    fn open_secret(&self, stored: &str) -> Option<String> {
        if web::session::is_sealed(stored) {
            let plain = self.auth.keys.open(Purpose::WebhookSecret, stored);
            if plain.is_none() {
                warn!("a project's webhook secret was sealed with another mesh secret");
            }
            String::from_utf8(plain?).ok()
        } else {
            Some(stored.to_owned())
        }
    }

    fn project_view(&self, project: &Project, rows: &[DeploymentRecord]) -> web::ProjectView {
        web::ProjectView {
            name: project.name.clone(),
            repo_url: project.repo_url.clone(),
            current_deployment: crate::distribute::live_target(project, rows).map(|r| r.id.clone()),
            pinned: project.pinned,
            auto_deploy: project.auto_deploy,
            poll_interval_secs: project.poll_interval_secs,
            branch: project.branch.clone(),
            has_webhook_secret: project.webhook_secret.is_some(),
            cache_generation: project.cache_generation,
            root_dir: project.root_dir.clone(),
            updated_at: crate::model::rfc3339(project.stamp.wall_ms),
        }
    }
}

/// A repository URL reduced to what identifies the repository: no scheme
/// case, no credentials, no trailing `/` or `.git`.
fn same_repo(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    format!(
        "{}://{}/{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase(),
        path
    )
}

/// Shortest webhook secret accepted for a project.
const MIN_SECRET_LEN: usize = 16;

/// Bounds of a project's poll interval, in seconds.
pub const MIN_POLL_SECS: u64 = 1;
pub const MAX_POLL_SECS: u64 = 86_400;

/// Characters of a deployment id (or commit) in its preview host.
const PREVIEW_PREFIX: usize = 8;

fn preview_prefix(id: &str) -> String {
    id.chars()
        .take(PREVIEW_PREFIX)
        .collect::<String>()
        .to_ascii_lowercase()
}

impl web::Backend for NodeBackend {
    fn create_deployment(&self, req: NewDeployment) -> Result<DeploymentView, ApiError> {
        let url = validate::repo_url(&req.repo_url, self.allow_local).map_err(invalid)?;
        let name = match req.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => validate::name(n),
            None => validate::default_name(url.as_str()),
        }
        .map_err(invalid)?;
        let git_ref = req
            .git_ref
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(validate::git_ref)
            .transpose()
            .map_err(invalid)?;
        let commit = req
            .commit
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(validate::commit)
            .transpose()
            .map_err(invalid)?;
        let root_dir = match req
            .root_dir
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            Some(r) => Some(root_dir(r)?),
            None => self
                .state
                .project(&name)
                .map_err(internal)?
                .and_then(|p| p.root_dir),
        }
        .filter(|r| r != ".");
        // The same submission again while the first is still waiting or
        // building (a double click, a retried request) is the same deployment.
        let repo_url = url.as_str();
        let in_flight = self
            .state
            .deployments()
            .map_err(internal)?
            .into_iter()
            .find(|d| {
                matches!(d.status, Status::Queued | Status::Building)
                    && d.name == name
                    && d.repo_url == repo_url
                    && d.git_ref == git_ref
                    && d.commit == commit
            });
        if let Some(existing) = in_flight {
            return Ok(self.view(&existing));
        }
        let now = self.state.now_ms();
        let rec = DeploymentRecord {
            id: ulid::Ulid::new().to_string(),
            live_url: self.live_url(&name),
            name,
            repo_url: url.as_str().to_owned(),
            git_ref,
            commit,
            status: Status::Queued,
            builder: None,
            epoch: 0,
            lease_until_ms: 0,
            artifact: None,
            created_at_ms: now,
            error: None,
            requires: Vec::new(),
            built_at_ms: 0,
            root_dir,
            stamp: Hlc::default(),
            writer: String::new(),
        };
        let credential = req.credential.map(|c| RepoCredential {
            sealed: self.auth.keys.seal(Purpose::RepoToken, c.token.as_bytes()),
            login: c.login,
        });
        let rec = self.state.put(rec).map_err(internal)?;
        self.ensure_project(&rec, credential).map_err(internal)?;
        let by = req
            .requested_by
            .map(|login| format!(" for GitHub user {login}"))
            .unwrap_or_default();
        self.state.log(
            &rec.id,
            "queue",
            Level::Info,
            &format!("queued by peer {}{by}", self.state.peer),
        );
        let _ = self.wake.try_send(());
        Ok(self.view(&rec))
    }

    fn deployments(&self) -> Result<Vec<DeploymentView>, ApiError> {
        Ok(self
            .state
            .deployments()
            .map_err(internal)?
            .iter()
            .map(|r| self.view(r))
            .collect())
    }

    fn deployment(&self, id: &str) -> Result<Option<DeploymentView>, ApiError> {
        let Some(rec) = self.state.deployment(id).map_err(internal)? else {
            return Ok(None);
        };
        let mut view = self.view(&rec);
        let info = self.info.borrow().clone();
        let names: std::collections::HashMap<String, String> = self
            .members
            .view(&info, &[])
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect();
        view.replicas = self
            .state
            .replicas(id)
            .map_err(internal)?
            .into_iter()
            .map(|r| web::ReplicaView {
                name: names.get(&r.peer).cloned(),
                state: r.state.as_str().to_owned(),
                bytes: r.bytes,
                total: r.total,
                updated_at: crate::model::rfc3339(r.stamp.wall_ms),
                error: r.error,
                peer: r.peer,
            })
            .collect();
        Ok(Some(view))
    }

    fn cancel_deployment(&self, id: &str) -> Result<Option<DeploymentView>, ApiError> {
        let Some(rec) = self.state.deployment(id).map_err(internal)? else {
            return Ok(None);
        };
        if !matches!(rec.status, Status::Queued | Status::Building) {
            return Err(ApiError::conflict(
                "not_cancelable",
                format!(
                    "deployment {id} is {}; only queued or building deployments can be canceled",
                    rec.status.as_str()
                ),
            ));
        }
        let reason = format!("canceled by request on peer {}", self.state.peer);
        self.state
            .log(id, "queue", crate::state::Level::Warn, &reason);
        // A new epoch: the cancellation outranks the running claim and any
        // claim made at the same moment by a peer that has not seen it yet.
        let updated = self
            .state
            .update(id, |r| {
                if matches!(r.status, Status::Queued | Status::Building) {
                    r.epoch += 1;
                    r.status = Status::Canceled;
                    r.lease_until_ms = 0;
                    r.error = Some(reason.clone());
                }
            })
            .map_err(internal)?;
        Ok(updated.map(|r| self.view(&r)))
    }

    fn projects(&self) -> Result<Vec<web::ProjectView>, ApiError> {
        let rows = self.state.deployments().map_err(internal)?;
        Ok(self
            .state
            .projects()
            .map_err(internal)?
            .iter()
            .map(|p| self.project_view(p, &rows))
            .collect())
    }

    fn project(&self, name: &str) -> Result<Option<web::ProjectView>, ApiError> {
        let Some(project) = self.state.project(name).map_err(internal)? else {
            return Ok(None);
        };
        let rows = self.state.deployments().map_err(internal)?;
        Ok(Some(self.project_view(&project, &rows)))
    }

    fn update_project(
        &self,
        name: &str,
        req: web::ProjectSettings,
    ) -> Result<Option<web::ProjectView>, ApiError> {
        let Some(mut project) = self.state.project(name).map_err(internal)? else {
            return Ok(None);
        };
        if let Some(on) = req.auto_deploy {
            project.auto_deploy = on;
        }
        if let Some(secs) = req.poll_interval_secs {
            if secs != 0 && !(MIN_POLL_SECS..=MAX_POLL_SECS).contains(&secs) {
                return Err(ApiError::bad_request(
                    "invalid_poll_interval",
                    format!(
                        "poll_interval_secs must be 0 (off) or {MIN_POLL_SECS}..{MAX_POLL_SECS}"
                    ),
                ));
            }
            project.poll_interval_secs = secs;
        }
        if let Some(branch) = req.branch {
            let branch = branch.trim();
            project.branch = if branch.is_empty() {
                None
            } else {
                Some(validate::git_ref(branch).map_err(invalid)?)
            };
        }
        if let Some(root) = req.root_dir {
            let root = root_dir(&root)?;
            project.root_dir = (root != ".").then_some(root);
        }
        if let Some(secret) = req.webhook_secret {
            let secret = secret.trim();
            if !secret.is_empty() && secret.len() < MIN_SECRET_LEN {
                return Err(ApiError::bad_request(
                    "weak_webhook_secret",
                    format!("a webhook secret needs at least {MIN_SECRET_LEN} characters"),
                ));
            }
            project.webhook_secret = (!secret.is_empty()).then(|| {
                self.auth
                    .keys
                    .seal(Purpose::WebhookSecret, secret.as_bytes())
            });
        }
        let project = self.state.put_project(project).map_err(internal)?;
        let rows = self.state.deployments().map_err(internal)?;
        Ok(Some(self.project_view(&project, &rows)))
    }

    fn project_env(&self, name: &str) -> Result<Option<Vec<web::EnvVarView>>, ApiError> {
        if self.state.project(name).map_err(internal)?.is_none() {
            return Ok(None);
        }
        let vars = crate::project_env::current(&self.state, name).map_err(internal)?;
        Ok(Some(vars.iter().map(crate::project_env::view).collect()))
    }

    fn set_project_env(
        &self,
        name: &str,
        key: &str,
        req: web::SetEnvVar,
    ) -> Result<web::EnvVarView, ApiError> {
        let name = validate::name(name).map_err(invalid)?;
        if self.state.project(&name).map_err(internal)?.is_none() {
            // Secrets can be in place before the first build.
            self.state
                .put_project(Project::named(&name))
                .map_err(internal)?;
        }
        let var = crate::project_env::set(
            &self.state,
            &self.auth.keys,
            &name,
            key,
            &req.value,
            req.secret,
        )
        .map_err(env_error)?;
        Ok(crate::project_env::view(&var))
    }

    fn delete_project_env(&self, name: &str, key: &str) -> Result<bool, ApiError> {
        crate::project_env::remove(&self.state, name, key).map_err(env_error)
    }

    fn clear_build_cache(&self, name: &str) -> Result<Option<web::ProjectView>, ApiError> {
        let Some(mut project) = self.state.project(name).map_err(internal)? else {
            return Ok(None);
        };
        project.cache_generation += 1;
        let project = self.state.put_project(project).map_err(internal)?;
        let rows = self.state.deployments().map_err(internal)?;
        Ok(Some(self.project_view(&project, &rows)))
    }

    fn set_current(
        &self,
        name: &str,
        req: web::SetCurrent,
        verb: &str,
    ) -> Result<Option<web::ProjectView>, ApiError> {
        let Some(mut project) = self.state.project(name).map_err(internal)? else {
            return Ok(None);
        };
        let id = req.deployment_id.trim();
        let rows = self.state.deployments().map_err(internal)?;
        let Some(target) = rows.iter().find(|r| r.id == id && r.name == name) else {
            return Err(ApiError::not_found(format!(
                "project {name} has no deployment {id}"
            )));
        };
        if target.status != Status::Success {
            return Err(ApiError::conflict(
                "not_successful",
                format!(
                    "deployment {id} is {}; only successful deployments can be made current",
                    target.status.as_str()
                ),
            ));
        }
        let held = self
            .state
            .replicas(id)
            .map_err(internal)?
            .iter()
            .any(|r| r.state == crate::model::ReplicaState::Complete);
        if !held {
            return Err(ApiError::conflict(
                "not_held",
                format!("no peer holds deployment {id} any more (only the last deployments of each site are kept)"),
            ));
        }
        let before = crate::distribute::live_target(&project, &rows).map(|r| r.id.clone());
        let newest = rows
            .iter()
            .find(|r| r.name == name && r.status == Status::Success)
            .map(|r| r.id.clone());
        // Choosing the newest successful deployment resumes following new
        // ones; anything else stays put until the next rollback or promote.
        project.pinned = newest.as_deref() != Some(id);
        project.current_deployment = Some(id.to_owned());
        let project = self.state.put_project(project).map_err(internal)?;
        self.state.log(
            id,
            "live",
            Level::Info,
            &format!(
                "{verb} on peer {}: every peer switches from {} to this deployment{}",
                self.state.peer,
                before.as_deref().unwrap_or("nothing"),
                if project.pinned {
                    " (pinned: newer deployments will not replace it until promoted)"
                } else {
                    ""
                }
            ),
        );
        Ok(Some(self.project_view(&project, &rows)))
    }

    fn webhook_secrets(&self) -> Vec<(Option<String>, String)> {
        let mut out: Vec<(Option<String>, String)> = self
            .webhook_secret
            .iter()
            .map(|s| (None, s.clone()))
            .collect();
        for p in self.state.projects().unwrap_or_default() {
            if let Some(secret) = p
                .webhook_secret
                .as_deref()
                .and_then(|s| self.open_secret(s))
            {
                out.push((Some(p.name), secret));
            }
        }
        out
    }

    fn github_push(&self, push: Push, scope: Option<&str>) -> Result<PushOutcome, ApiError> {
        if let Some(seen) = self.state.delivery(&push.delivery).map_err(internal)? {
            return Ok(PushOutcome::Duplicate(seen.deployments));
        }
        let wanted: Vec<String> = push.repo_urls.iter().map(|u| same_repo(u)).collect();
        let projects: Vec<Project> = self
            .state
            .projects()
            .map_err(internal)?
            .into_iter()
            .filter(|p| wanted.contains(&same_repo(&p.repo_url)))
            .filter(|p| scope.is_none_or(|name| p.name == name))
            .collect();
        if projects.is_empty() {
            return Ok(PushOutcome::UnknownRepository);
        }
        let rows = self.state.deployments().map_err(internal)?;
        let mut ids = Vec::new();
        for project in projects {
            // The branch a project follows: that of its newest deployment
            // (no ref there means the repository's default branch).
            let Some(latest) = rows.iter().find(|r| r.name == project.name) else {
                continue;
            };
            let branch = latest
                .git_ref
                .clone()
                .or_else(|| push.default_branch.clone());
            if branch.as_deref() != Some(push.branch.as_str()) {
                continue;
            }
            let dep = self.create_deployment(NewDeployment {
                repo_url: project.repo_url.clone(),
                name: Some(project.name.clone()),
                git_ref: latest.git_ref.clone(),
                commit: Some(push.after.clone()),
                ..Default::default()
            })?;
            self.state.log(
                &dep.id,
                "queue",
                Level::Info,
                &format!(
                    "push to {} (delivery {}) on peer {}",
                    push.branch, push.delivery, self.state.peer
                ),
            );
            ids.push(dep.id);
        }
        if ids.is_empty() {
            return Ok(PushOutcome::OtherBranch);
        }
        let row = crate::model::Delivery {
            received_at_ms: self.state.now_ms(),
            deployments: ids.clone(),
            stamp: Hlc::default(),
            writer: String::new(),
        };
        self.state
            .put_delivery(&push.delivery, row)
            .map_err(internal)?;
        Ok(PushOutcome::Deployed(ids))
    }

    fn logs(&self, id: &str) -> Result<Option<Vec<LogLine>>, ApiError> {
        if self.state.deployment(id).map_err(internal)?.is_none() {
            return Ok(None);
        }
        self.state.logs(id).map(Some).map_err(internal)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.state.subscribe()
    }

    fn peers(&self) -> Vec<web::PeerInfo> {
        let info = self.info.borrow().clone();
        let addrs: Vec<String> = self
            .p2p
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut holds: std::collections::HashMap<String, Vec<String>> = Default::default();
        for r in self.state.all_replicas().unwrap_or_default() {
            if r.state == crate::model::ReplicaState::Complete {
                holds.entry(r.peer).or_default().push(r.deployment);
            }
        }
        self.members
            .view(&info, &addrs)
            .into_iter()
            .map(|p| web::PeerInfo {
                holds: holds.remove(&p.id).unwrap_or_default(),
                id: p.id,
                name: p.name,
                addresses: p.addresses,
                region: p.region,
                load: p.load,
                capabilities: p.capabilities,
                version: p.version,
                last_seen: crate::model::rfc3339(p.last_seen_ms),
                alive: p.alive,
                is_self: p.is_self,
            })
            .collect()
    }

    fn site_root(&self, name: &str) -> Option<PathBuf> {
        if name.contains("--") {
            return self.preview_root(name);
        }
        validate::name(name).ok()?;
        self.sites.current_dir(name)
    }

    fn auth(&self) -> &web::Auth {
        &self.auth
    }

    fn session_revoked(&self, id: &str) -> bool {
        // Fail closed: a session whose state cannot be read is refused.
        self.state.revoked(id).unwrap_or(true)
    }

    fn revoke_session(&self, id: &str, expires: u64) -> Result<(), ApiError> {
        self.state.revoke(id, expires).map_err(internal)
    }

    fn ready(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("starting up or shutting down".into());
        }
        if !*self.synced.borrow() {
            return Err("catching up with the mesh".into());
        }
        // Never take traffic without every live site: a version of each
        // (an older one while a new one spreads is fine).
        let rows = self.state.deployments().map_err(|e| e.to_string())?;
        for project in self.state.projects().map_err(|e| e.to_string())? {
            if crate::distribute::live_target(&project, &rows).is_some()
                && self.sites.current(&project.name).is_none()
            {
                return Err(format!("site {} is not here yet", project.name));
            }
        }
        Ok(())
    }

    fn site_domain(&self) -> &str {
        &self.site_domain
    }

    fn metrics(&self) -> String {
        let counts = self.state.status_counts().unwrap_or_default();
        let rows: Vec<_> = Status::ALL
            .iter()
            .map(|s| (s.as_str(), counts.get(s).copied().unwrap_or(0)))
            .collect();
        let mut out = self.metrics.render(&rows);
        crate::metrics::render_connections(&mut out, self.p2p.connection_counts());
        crate::metrics::render_exchange(&mut out, &self.exchange);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::same_repo;

    #[test]
    fn repository_urls_match_across_their_spellings() {
        let canonical = same_repo("https://github.com/octo/site");
        for url in [
            "https://github.com/octo/site.git",
            "https://GitHub.com/octo/site/",
            "HTTPS://github.com/octo/site",
            "https://token@github.com/octo/site.git",
        ] {
            assert_eq!(same_repo(url), canonical, "{url}");
        }
        assert_ne!(same_repo("https://github.com/octo/other"), canonical);
        assert_ne!(
            same_repo("https://github.com/OCTO/site"),
            canonical,
            "paths keep their case"
        );
        assert_eq!(same_repo("/tmp/repo/"), same_repo("/tmp/repo.git"));
    }
}

//! What the node's long-running parts share: the replicated state, the
//! build settings, the sites, the block store, the mesh's membership and
//! keys. The worker, each build job, the distributor and the poller hold it
//! behind an `Arc`; none of them owns it.

use crate::build::BuildSettings;
use crate::metrics::NodeMetrics;
use crate::site::Sites;
use crate::state::State;
use p2p::members::{LocalInfo, Members, PeerView};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Everything a build task needs, shared.
pub struct Shared {
    pub state: Arc<State>,
    pub settings: BuildSettings,
    pub sites: Sites,
    pub metrics: Arc<NodeMetrics>,
    pub builds_dir: PathBuf,
    /// Build caches, per project.
    pub caches: crate::build::cache::Caches,
    /// Built artifacts, as blocks (shared with the block exchange).
    pub blocks: Arc<p2p::blocks::BlockStore>,
    pub members: Arc<Members>,
    pub info: watch::Receiver<LocalInfo>,
    /// Builds running on this peer (part of its load).
    pub active_builds: Arc<AtomicUsize>,
    /// How long a claim holds without renewal (`--lease`).
    pub lease: Duration,
    /// The mesh's keys, to open tokens sealed into projects.
    pub keys: Arc<web::session::Keys>,
    /// The GitHub App private repositories are cloned as, if configured.
    pub github_app: Option<Arc<web::github::GitHubApp>>,
}

impl Shared {
    /// The token to clone project `name`'s repository with: a fresh
    /// read-only installation token of the GitHub App where it is
    /// installed, else the token sealed into the project when a signed-in
    /// user deployed it, else none. The note, if any, is for the log.
    pub async fn clone_credential(
        &self,
        name: &str,
        repo_url: &str,
    ) -> (Option<crate::build::clone::Credential>, Option<String>) {
        let mut notes = Vec::new();
        match self.app_credential(repo_url).await {
            Ok(Some(cred)) => {
                let note = "cloning with a read-only token of the GitHub App".to_owned();
                return (Some(cred), Some(note));
            }
            Ok(None) => {}
            Err(err) => notes.push(format!(
                "no GitHub App token ({err}); trying the deployer's"
            )),
        }
        let cred = self.repo_credential(name, repo_url).unwrap_or_else(|why| {
            notes.push(why);
            None
        });
        (cred, (!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// A fresh installation token of the GitHub App for `repo_url`, if the
    /// app is configured and installed there.
    async fn app_credential(
        &self,
        repo_url: &str,
    ) -> Result<Option<crate::build::clone::Credential>, web::github::GitHubError> {
        let (Some(app), Some(origin)) = (&self.github_app, web::github::origin(repo_url)) else {
            return Ok(None);
        };
        let Some((owner, repo)) = web::github::owner_repo(repo_url, &app.web_url) else {
            return Ok(None);
        };
        Ok(app
            .repo_token(&owner, &repo)
            .await?
            .map(|token| crate::build::clone::Credential { origin, token }))
    }

    /// The token sealed into project `name` for its repository, if any; an
    /// error (to log) if this peer cannot open it.
    fn repo_credential(
        &self,
        name: &str,
        repo_url: &str,
    ) -> Result<Option<crate::build::clone::Credential>, String> {
        let Some(sealed) = self
            .state
            .project(name)
            .ok()
            .flatten()
            .and_then(|p| p.credential)
        else {
            return Ok(None);
        };
        let Some(origin) = web::github::origin(repo_url) else {
            return Ok(None);
        };
        self.keys
            .open(web::session::Purpose::RepoToken, &sealed.sealed)
            .and_then(|t| String::from_utf8(t).ok())
            .map(|token| Some(crate::build::clone::Credential { origin, token }))
            .ok_or_else(|| {
                format!(
                    "peer {} cannot open the repository token of GitHub user {} (its mesh secret differs); trying without it",
                    self.state.peer, sealed.login
                )
            })
    }

    /// The live peers of the mesh as this peer sees them, itself included.
    pub fn live_peers(&self) -> Vec<PeerView> {
        let info = self.info.borrow().clone();
        self.members
            .view(&info, &[])
            .into_iter()
            .filter(|p| p.alive)
            .collect()
    }
}

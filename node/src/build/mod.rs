//! One build, end to end on the builder: clone, detect, install, build,
//! check, pack. Every step writes log lines; any failure becomes a
//! [`BuildError`] whose text is what the user sees.

pub mod cgroup;
pub mod clone;
pub mod confine;
pub mod detect;
pub mod pack;
pub mod sandbox;

use crate::state::{Level, State};
use crate::validate::RepoUrl;
use detect::{Output, RepoFiles};
use sandbox::{Isolation, SandboxError, Step};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Writes log lines for one deployment and one step.
#[derive(Clone)]
pub struct Logger {
    state: Arc<State>,
    deployment: Arc<str>,
    step: &'static str,
}

impl Logger {
    pub fn new(state: Arc<State>, deployment: &str, step: &'static str) -> Self {
        Self {
            state,
            deployment: deployment.into(),
            step,
        }
    }

    pub fn step(&self, step: &'static str) -> Self {
        Self {
            step,
            ..self.clone()
        }
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    pub fn line(&self, level: Level, message: &str) {
        self.state.log(&self.deployment, self.step, level, message);
    }

    pub fn info(&self, message: &str) {
        self.line(Level::Info, message);
    }
}

/// Settings shared by every build on this peer.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub isolation: Isolation,
    pub timeout: Duration,
    pub clone_timeout: Duration,
    pub memory_bytes: u64,
    pub pids: u64,
    pub tmp_bytes: u64,
    pub build_network: bool,
    pub max_repo_bytes: u64,
    pub max_site_bytes: u64,
    pub allow_local: bool,
}

/// Largest number of files in a checkout or a site.
pub const MAX_FILES: usize = 100_000;
/// Largest number of objects fetched.
pub const MAX_OBJECTS: usize = 2_000_000;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("clone failed: {0}")]
    Clone(#[from] clone::CloneError),
    #[error("{0}")]
    Detect(#[from] detect::DetectError),
    #[error("{tool} is not installed on this peer (needed to build a {kind} site)")]
    MissingTool { tool: String, kind: String },
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("build produced no index.html (looked in {0})")]
    NoIndex(String),
    #[error("build output directory {0} does not exist")]
    NoOutput(String),
    #[error("{0}")]
    Pack(#[from] pack::PackError),
    #[error("internal error: {0}")]
    Io(#[from] std::io::Error),
}

impl BuildError {
    /// The build was stopped on purpose (canceled, or its claim was lost).
    pub fn is_cancel(&self) -> bool {
        matches!(
            self,
            BuildError::Sandbox(SandboxError::Canceled)
                | BuildError::Clone(clone::CloneError::Canceled)
        )
    }

    /// The step the failure belongs to in the log.
    pub fn step(&self) -> &'static str {
        match self {
            BuildError::Clone(_) => "clone",
            BuildError::Detect(_) | BuildError::MissingTool { .. } => "detect",
            BuildError::Pack(_) => "pack",
            _ => "build",
        }
    }
}

/// What a successful build hands on.
#[derive(Debug)]
pub struct Built {
    pub commit: String,
    pub artifact: String,
}

/// A request for one build.
pub struct Job<'a> {
    pub url: RepoUrl,
    pub git_ref: Option<&'a str>,
    pub commit: Option<&'a str>,
    pub live_url: &'a str,
    /// Scratch space, removed afterwards by the caller.
    pub workdir: &'a Path,
    /// Where finished artifacts go, as blocks and a manifest.
    pub blocks: &'a std::sync::Arc<p2p::blocks::BlockStore>,
    /// A token for a private repository.
    pub credential: Option<clone::Credential>,
}

struct Checkout<'a>(&'a Path);

impl RepoFiles for Checkout<'_> {
    fn exists(&self, rel: &str) -> bool {
        self.0.join(rel).symlink_metadata().is_ok()
    }
    fn read(&self, rel: &str) -> Option<String> {
        let path = self.0.join(rel);
        let meta = path.symlink_metadata().ok()?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return None;
        }
        std::fs::read_to_string(path).ok()
    }
}

/// Runs the whole build. `on_commit` is told the resolved commit as soon as it is known.
pub async fn run(
    settings: &BuildSettings,
    job: Job<'_>,
    log: &Logger,
    cancel: watch::Receiver<bool>,
    on_commit: impl FnOnce(&str),
) -> Result<Built, BuildError> {
    let started = Instant::now();
    let src = job.workdir.join("src");
    let _ = tokio::fs::remove_dir_all(job.workdir).await;
    tokio::fs::create_dir_all(job.workdir).await?;

    let clog = log.step("clone");
    clog.info(&format!(
        "cloning {} at {}",
        job.url,
        job.commit.or(job.git_ref).unwrap_or("the default branch")
    ));
    let limits = clone::Limits {
        max_bytes: settings.max_repo_bytes,
        max_objects: MAX_OBJECTS,
        max_files: MAX_FILES,
        max_checkout_bytes: settings.max_repo_bytes,
        deadline: Instant::now() + settings.clone_timeout,
        allow_local: settings.allow_local,
        credential: job.credential.clone(),
    };
    let flag = Arc::new(AtomicBool::new(*cancel.borrow()));
    let watcher = {
        let (flag, mut cancel) = (flag.clone(), cancel.clone());
        tokio::spawn(async move {
            if cancel.wait_for(|c| *c).await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let (url, git_ref, commit, dest) = (
        job.url.clone(),
        job.git_ref.map(str::to_owned),
        job.commit.map(str::to_owned),
        src.clone(),
    );
    let stop = flag.clone();
    let cloning = tokio::task::spawn_blocking(move || {
        clone::clone(
            &url,
            git_ref.as_deref(),
            commit.as_deref(),
            &dest,
            &limits,
            &flag,
        )
    });
    // libgit2 only checks the deadline while data flows; a stalled server is
    // cut off here, and the flag makes the clone thread give up as soon as
    // libgit2 calls back.
    let grace = Duration::from_secs(5);
    let cloned = match tokio::time::timeout(settings.clone_timeout + grace, cloning).await {
        Ok(joined) => joined.map_err(|e| std::io::Error::other(e.to_string()))?,
        Err(_) => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            Err(clone::CloneError::TimedOut)
        }
    };
    watcher.abort();
    let cloned = cloned?;
    clog.info(&format!(
        "cloned commit {} in {:.1} s",
        cloned.commit,
        started.elapsed().as_secs_f64()
    ));
    for sub in &cloned.submodules {
        clog.info(&format!("checked out submodule {sub}"));
    }
    on_commit(&cloned.commit);

    let dlog = log.step("detect");
    let plan = detect::detect(&Checkout(&src), job.live_url)?;
    dlog.info(&format!("detected {}", plan.kind));
    for tool in &plan.tools {
        if sandbox::which(tool).is_none() {
            return Err(BuildError::MissingTool {
                tool: tool.clone(),
                kind: plan.kind.clone(),
            });
        }
    }

    let deadline = Instant::now() + settings.timeout;
    let limits = sandbox::Limits {
        memory_bytes: settings.memory_bytes,
        pids: settings.pids,
        tmp_bytes: settings.tmp_bytes,
        deadline,
    };
    let env = vec![
        ("SHOAL_LIVE_URL".to_owned(), job.live_url.to_owned()),
        ("SHOAL_COMMIT".to_owned(), cloned.commit.clone()),
        ("NODE_ENV".to_owned(), "production".to_owned()),
        ("JEKYLL_ENV".to_owned(), "production".to_owned()),
    ];
    for (name, cmd, network) in [
        ("install", plan.install.as_ref(), true),
        (
            "build",
            plan.build.as_ref(),
            plan.network || settings.build_network,
        ),
    ] {
        let Some(cmd) = cmd else { continue };
        let slog = log.step(if name == "install" {
            "install"
        } else {
            "build"
        });
        let t = Instant::now();
        let step = Step {
            name,
            cmd,
            workdir: &src,
            network,
            env: &env,
        };
        sandbox::run(&settings.isolation, step, &limits, &slog, cancel.clone()).await?;
        slog.info(&format!(
            "{name} finished in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }

    let out_dir = match &plan.output {
        Output::Dir(d) => src.join(d),
        Output::Probe(list) => list
            .iter()
            .map(|d| src.join(d))
            .find(|p| p.join("index.html").is_file())
            .ok_or_else(|| BuildError::NoIndex(list.join(", ")))?,
    };
    let shown = out_dir
        .strip_prefix(&src)
        .map_or_else(|_| ".".into(), |p| format!("{}/", p.display()));
    let shown = if shown == "/" { "./".to_owned() } else { shown };
    if !out_dir.is_dir() {
        return Err(BuildError::NoOutput(shown));
    }
    if !out_dir.join("index.html").is_file() {
        return Err(BuildError::NoIndex(shown));
    }

    let plog = log.step("pack");
    let tmp_zip = job.workdir.join("site.zip");
    let (out, zip) = (out_dir.clone(), tmp_zip.clone());
    let limits = pack::PackLimits {
        max_files: MAX_FILES,
        max_bytes: settings.max_site_bytes,
    };
    let packed = tokio::task::spawn_blocking(move || pack::pack(&out, &zip, limits))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    for skipped in &packed.skipped {
        plog.line(
            Level::Warn,
            &format!("left out {skipped}: not a regular file"),
        );
    }
    let (store, zip) = (job.blocks.clone(), tmp_zip.clone());
    let imported = tokio::task::spawn_blocking(move || store.import(&zip))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let _ = tokio::fs::remove_file(&tmp_zip).await;
    let (id, manifest) = imported.map_err(|e| std::io::Error::other(e.to_string()))?;
    let artifact = p2p::blocks::to_hex(&id);
    plog.info(&format!(
        "packed {} files, {} bytes into a {}-byte zip of {} blocks, artifact {artifact}",
        packed.files,
        packed.bytes,
        packed.zip_bytes,
        manifest.len()
    ));
    Ok(Built {
        commit: cloned.commit,
        artifact,
    })
}

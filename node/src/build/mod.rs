//! One build, end to end on the builder: clone, detect, install, build,
//! check, pack. Every step writes log lines; any failure becomes a
//! [`BuildError`] whose text is what the user sees.

pub mod cache;
pub mod cgroup;
pub mod clone;
pub mod confine;
pub mod detect;
pub mod hints;
pub mod js;
pub mod links;
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

/// Writes log lines for one deployment and one step, with the values of
/// the build's secrets replaced by `***`.
#[derive(Clone)]
pub struct Logger {
    state: Arc<State>,
    deployment: Arc<str>,
    step: &'static str,
    /// Secret values, longest first (so a secret containing another is
    /// masked whole).
    secrets: Arc<[String]>,
}

/// What a secret's value becomes in a log line.
pub const MASK: &str = "***";

impl Logger {
    pub fn new(state: Arc<State>, deployment: &str, step: &'static str) -> Self {
        Self {
            state,
            deployment: deployment.into(),
            step,
            secrets: Arc::new([]),
        }
    }

    /// This logger, masking `secrets` in every line.
    pub fn masking(&self, secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            secrets: secrets.into(),
            ..self.clone()
        }
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
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
        let message = self.mask(message);
        self.state.log(&self.deployment, self.step, level, &message);
    }

    pub fn warn(&self, message: &str) {
        self.line(Level::Warn, message);
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
    /// The npm registry corepack fetches yarn and pnpm from.
    pub npm_registry: String,
    /// Whether corepack checks the registry's signatures (off for a mirror
    /// that serves none).
    pub corepack_signatures: bool,
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
    /// An install or build step failed; `hint`, when its output shows a
    /// known cause, says what to change.
    #[error("{error}{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    Step {
        step: &'static str,
        error: SandboxError,
        hint: Option<String>,
    },
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
                | BuildError::Step {
                    error: SandboxError::Canceled,
                    ..
                }
        )
    }

    /// The step the failure belongs to in the log.
    pub fn step(&self) -> &'static str {
        match self {
            BuildError::Clone(_) => "clone",
            BuildError::Detect(_) | BuildError::MissingTool { .. } => "detect",
            BuildError::Pack(_) => "pack",
            BuildError::Step { step, .. } => step,
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
    /// The base directory asked for with the deployment (wins over
    /// shoal.toml's `[build] root`).
    pub root: Option<&'a str>,
    /// The project's environment variables, secrets opened (the logger
    /// masks their values).
    pub env: Vec<(String, String)>,
    /// The project's build cache on this peer.
    pub cache: Option<cache::Slot>,
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
    let plan = detect::detect(&Checkout(&src), job.live_url, job.root)?;
    let root = src.join(&plan.root);
    if !root.is_dir() {
        return Err(detect::DetectError::NoRoot(plan.root.clone()).into());
    }
    let in_root = if plan.root == "." {
        String::new()
    } else {
        format!(" in {}/", plan.root)
    };
    dlog.info(&format!("detected {}{in_root}", plan.kind));
    for note in &plan.notes {
        dlog.warn(note);
    }
    if !job.env.is_empty() {
        let names: Vec<&str> = job.env.iter().map(|(k, _)| k.as_str()).collect();
        dlog.info(&format!(
            "project environment: {} ({} secret)",
            names.join(", "),
            log.secrets.len()
        ));
    }
    let corepack = tools_available(&plan, &dlog)?;
    if let Some((source, wanted)) = &plan.node_wanted {
        check_node(source, wanted, &dlog);
    }

    let cache_dir = job.workdir.join("cache");
    tokio::fs::create_dir_all(&cache_dir).await?;
    let key = cache_key(&src, &plan);
    let mut warm_cache = false;
    if let (Some(slot), Some(key)) = (&job.cache, &key) {
        let (slot, key, dir) = (slot.clone(), key.clone(), cache_dir.clone());
        let restored = blocking(move || slot.restore(&key, &dir)).await?;
        match restored {
            Ok(r) => {
                dlog.info(&r.to_string());
                if matches!(r, cache::Restored::Exact { .. }) {
                    warm_cache = true;
                }
            }
            Err(e) => dlog.warn(&format!("could not restore the build cache: {e}")),
        }
    }
    let (_, cache_inside) = sandbox::inside(&settings.isolation, &src, &cache_dir);

    let deadline = Instant::now() + settings.timeout;
    let limits = sandbox::Limits {
        memory_bytes: settings.memory_bytes,
        pids: settings.pids,
        tmp_bytes: settings.tmp_bytes,
        deadline,
    };
    let mut env = vec![
        ("SHOAL_LIVE_URL".to_owned(), job.live_url.to_owned()),
        ("SHOAL_COMMIT".to_owned(), cloned.commit.clone()),
    ];
    env.extend(job.env.iter().cloned());
    for (var, dir) in &plan.cache_env {
        env.push((
            (*var).to_owned(),
            cache_inside.join(dir).display().to_string(),
        ));
    }
    if warm_cache && plan.tools.iter().any(|t| t == "npm" || t == "pnpm") {
        // Everything the lockfile names is in the cache: take it from there
        // without asking the registry again (the project's own setting wins).
        env.insert(2, ("npm_config_prefer_offline".into(), "true".into()));
    }
    let tools = cache_inside.join(".bin");
    if corepack.is_some() {
        tokio::fs::create_dir_all(cache_dir.join(".bin")).await?;
    }
    if corepack.is_some() {
        env.extend([
            (
                "PATH".to_owned(),
                format!("{}:{}", tools.display(), sandbox::SANDBOX_PATH),
            ),
            ("COREPACK_ENABLE_DOWNLOAD_PROMPT".into(), "0".into()),
            ("COREPACK_ENABLE_AUTO_PIN".into(), "0".into()),
            ("COREPACK_DEFAULT_TO_LATEST".into(), "0".into()),
            (
                "COREPACK_NPM_REGISTRY".into(),
                settings.npm_registry.clone(),
            ),
        ]);
        if !settings.corepack_signatures {
            env.push(("COREPACK_INTEGRITY_KEYS".into(), "0".into()));
        }
    }
    let mut build_env = env.clone();
    // The framework's defaults first, so the project's own values win.
    build_env.splice(2..2, plan.build_env.iter().cloned());
    let enable = corepack.map(|pm| {
        detect::Cmd::of(&[
            "corepack",
            "enable",
            "--install-directory",
            &tools.display().to_string(),
            pm,
        ])
    });
    let steps = [
        ("install", enable.as_ref(), &env, true),
        ("install", plan.install.as_ref(), &env, true),
        (
            "build",
            plan.build.as_ref(),
            &build_env,
            plan.network || settings.build_network,
        ),
    ];
    for (name, cmd, env, network) in steps {
        let Some(cmd) = cmd else { continue };
        let slog = log.step(name);
        let t = Instant::now();
        let step = Step {
            name,
            cmd,
            workdir: &src,
            cwd: &plan.root,
            cache: &cache_dir,
            network,
            env,
        };
        sandbox::run(&settings.isolation, step, &limits, &slog, cancel.clone())
            .await
            .map_err(|e| explain(name, e, &plan))?;
        slog.info(&format!(
            "{name} finished in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }

    let out_dir = match &plan.output {
        Output::Dir(d) => root.join(d),
        Output::Probe(list) => list
            .iter()
            .map(|d| root.join(d))
            .find(|p| p.join("index.html").is_file())
            .ok_or_else(|| {
                let shown: Vec<String> = list.iter().map(|d| plan.in_root(d)).collect();
                BuildError::NoIndex(shown.join(", "))
            })?,
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

    let report = {
        let out = out_dir.clone();
        blocking(move || links::check(&out)).await?
    };
    report.log(&log.step("check"));

    let plog = log.step("pack");
    let tmp_zip = job.workdir.join("site.zip");
    let (out, zip) = (out_dir.clone(), tmp_zip.clone());
    let limits = pack::PackLimits {
        max_files: MAX_FILES,
        max_bytes: settings.max_site_bytes,
    };
    let packed = blocking(move || pack::pack(&out, &zip, limits)).await??;
    for skipped in &packed.skipped {
        plog.line(
            Level::Warn,
            &format!("left out {skipped}: not a regular file"),
        );
    }
    let (store, zip) = (job.blocks.clone(), tmp_zip.clone());
    let imported = blocking(move || store.import(&zip)).await?;
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
    if let (Some(slot), Some(key)) = (&job.cache, &key) {
        let (slot, key, dir) = (slot.clone(), key.clone(), cache_dir.clone());
        let saved = blocking(move || slot.save(&key, &dir)).await?;
        match saved {
            Ok(bytes) => plog.info(&format!(
                "saved the build cache ({} MB)",
                (bytes + 500_000) / 1_000_000
            )),
            Err(e) => plog.warn(&format!("could not save the build cache: {e}")),
        }
    }
    Ok(Built {
        commit: cloned.commit,
        artifact,
    })
}

/// Runs `f` on a blocking thread; a panic there becomes an I/O error.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Checks that the plan's tools are on this peer; a package manager that
/// is missing comes from corepack (returned) when corepack is here.
fn tools_available(plan: &detect::Plan, log: &Logger) -> Result<Option<&'static str>, BuildError> {
    let mut corepack = None;
    for tool in &plan.tools {
        if sandbox::which(tool).is_some() {
            continue;
        }
        match plan.corepack {
            Some(pm) if pm == tool && sandbox::which("corepack").is_some() => {
                log.info(&format!(
                    "{pm} is not installed on this peer: corepack provides it"
                ));
                corepack = Some(pm);
            }
            _ => {
                return Err(BuildError::MissingTool {
                    tool: tool.clone(),
                    kind: plan.kind.clone(),
                })
            }
        }
    }
    Ok(corepack)
}

/// The peer's Node version (`v20.11.1`), asked once.
fn node_version() -> Option<&'static str> {
    static VERSION: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            let node = sandbox::which("node")?;
            let out = std::process::Command::new(node)
                .arg("--version")
                .env_clear()
                .stdin(std::process::Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .as_deref()
}

/// Warns when the Node the repository asks for is not the one that runs.
fn check_node(source: &str, wanted: &str, log: &Logger) {
    let Some(running) = node_version() else {
        return;
    };
    match js::node_satisfies(source, wanted, running) {
        Some(true) => log.info(&format!(
            "Node {running} (the repository asks for {wanted} in {source})"
        )),
        Some(false) => log.warn(&format!(
            "the repository asks for Node {wanted} ({source}), but this peer runs Node {running}; building with {running}"
        )),
        None => log.info(&format!(
            "the repository asks for Node {wanted} ({source}); this peer runs Node {running}"
        )),
    }
}

/// The build cache's key: the lockfile's hash (with the plan's kind, so
/// two package managers never share one).
fn cache_key(src: &Path, plan: &detect::Plan) -> Option<String> {
    use sha2::{Digest, Sha256};
    let file = plan.cache_key.as_deref()?;
    let bytes = std::fs::read(src.join(file)).ok()?;
    let mut h = Sha256::new();
    h.update(plan.kind.as_bytes());
    h.update([0]);
    h.update(&bytes);
    Some(hex::encode(&h.finalize()[..12]))
}

/// A failed step as an error that says what to do, when its output shows
/// a known cause.
fn explain(step: &'static str, error: SandboxError, plan: &detect::Plan) -> BuildError {
    let hint = match &error {
        SandboxError::Failed { tail, .. } => hints::explain(tail, plan.cache_key.as_deref()),
        _ => None,
    };
    BuildError::Step { step, error, hint }
}

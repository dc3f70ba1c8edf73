//! Running a build step in a sandbox, under a deadline: bubblewrap (new
//! namespaces, no capabilities, its own session, dies with the peer,
//! read-only system, only the checkout and a size-capped /tmp writable,
//! cleared environment) inside a cgroup that caps memory and processes; or,
//! where namespaces cannot be made (an unprivileged pod), a process that
//! confines itself with Landlock, seccomp and rlimits ([`super::confine`]).
//! Output lines go to the deployment log, each line and the total bounded.

use super::cgroup::{Cgroup, CgroupRoot};
use super::confine::{self, Confinement, Policy};
use super::detect::Cmd;
use super::Logger;
use crate::state::Level;
use p2p::locks::LockExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

/// System directories visible (read-only) inside the sandbox.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt",
];
/// PATH inside the sandbox.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest output line kept; longer lines are cut.
const MAX_LINE: usize = 4096;

/// Which sandbox to use (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxKind {
    /// bubblewrap and cgroups if they work here, else Landlock.
    Auto,
    Bubblewrap,
    Landlock,
}

/// How this peer runs builds.
#[derive(Debug, Clone)]
pub enum Isolation {
    Bwrap {
        bwrap: PathBuf,
        cgroups: CgroupRoot,
    },
    /// Self-confinement: Landlock, seccomp, rlimits (and cgroups if here).
    Landlock {
        cgroups: Option<CgroupRoot>,
        /// Paths a build never sees (the peer's data and secrets).
        deny: Vec<PathBuf>,
        /// The peer runs as root: builds drop every capability.
        root: bool,
    },
    /// `--unsafe-no-sandbox`: plain processes in their own process group.
    None,
    /// No sandbox here and unsafe builds not allowed: every build fails with this reason.
    Unavailable(String),
}

impl Isolation {
    /// Finds a sandbox that works here: bubblewrap with writable cgroups,
    /// else (unless bubblewrap was asked for) Landlock. `deny`: what a build
    /// must never see.
    pub fn probe(
        kind: SandboxKind,
        unsafe_no_sandbox: bool,
        peer: &str,
        deny: Vec<PathBuf>,
    ) -> Self {
        if unsafe_no_sandbox {
            return Isolation::None;
        }
        let fallback =
            " (or start the peer with --unsafe-no-sandbox, for trusted repositories only)";
        let bwrap = match kind {
            SandboxKind::Landlock => Err("not asked for".to_owned()),
            _ => probe_bwrap(peer),
        };
        let why_not_bwrap = match bwrap {
            Ok(iso) => return iso,
            Err(why) if kind == SandboxKind::Bubblewrap => {
                return Isolation::Unavailable(format!("{why}{fallback}"))
            }
            Err(why) => why,
        };
        let abi = confine::abi();
        if abi < confine::NEEDED_ABI {
            return Isolation::Unavailable(format!(
                "no bubblewrap sandbox ({why_not_bwrap}), and Landlock ABI {abi} is below the {} a build sandbox needs (Linux 6.12+){fallback}",
                confine::NEEDED_ABI
            ));
        }
        let root = nix::unistd::geteuid().is_root();
        Isolation::Landlock {
            cgroups: CgroupRoot::probe(peer).ok(),
            deny,
            root,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Isolation::Bwrap { .. } => "bubblewrap + cgroups".into(),
            Isolation::Landlock { cgroups, root, .. } => format!(
                "landlock + seccomp + rlimits{}{}",
                if cgroups.is_some() { " + cgroups" } else { "" },
                if *root {
                    ", root without capabilities"
                } else {
                    ""
                }
            ),
            Isolation::None => "none (--unsafe-no-sandbox)".into(),
            Isolation::Unavailable(why) => format!("unavailable: {why}"),
        }
    }
}

/// bubblewrap with cgroups, if both work here.
fn probe_bwrap(peer: &str) -> Result<Isolation, String> {
    let bwrap = which("bwrap").ok_or("bubblewrap (bwrap) is not installed")?;
    // Installed is not enough: in a pod it cannot make namespaces.
    let tried = std::process::Command::new(&bwrap)
        .args(["--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("bubblewrap does not start: {e}"))?;
    if !tried.status.success() {
        let err = String::from_utf8_lossy(&tried.stderr);
        return Err(format!(
            "bubblewrap cannot make namespaces here: {}",
            err.trim()
        ));
    }
    let cgroups = CgroupRoot::probe(peer)
        .map_err(|why| format!("cannot cap build memory and processes with cgroups ({why})"))?;
    Ok(Isolation::Bwrap { bwrap, cgroups })
}

/// Finds `program` on the sandbox's PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    SANDBOX_PATH
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// Limits of one sandboxed step.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub tmp_bytes: u64,
    pub deadline: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no build sandbox on this peer: {0}")]
    Unavailable(String),
    #[error("`{cmd}` exited with {status}")]
    Failed {
        cmd: String,
        status: String,
        /// The step's last output lines (masked like the log).
        tail: Vec<String>,
    },
    #[error("`{0}` ran out of memory (the build's memory cap)")]
    OutOfMemory(String),
    #[error("`{0}` failed: the build reached its process cap")]
    TooManyProcesses(String),
    #[error("the build exceeded its time limit and was killed")]
    TimedOut,
    #[error("the build was canceled")]
    Canceled,
    #[error("could not start the sandbox: {0}")]
    Spawn(#[from] std::io::Error),
}

/// One step to run.
pub struct Step<'a> {
    pub name: &'a str,
    pub cmd: &'a Cmd,
    /// The checkout: writable, and the sandbox's `/build`.
    pub workdir: &'a Path,
    /// Where under the checkout the step runs ("." for its top).
    pub cwd: &'a str,
    /// The build cache: writable, and the sandbox's `/cache`.
    pub cache: &'a Path,
    pub network: bool,
    pub env: &'a [(String, String)],
}

/// Where the checkout and the cache appear to a step under `iso`.
pub fn inside(iso: &Isolation, workdir: &Path, cache: &Path) -> (PathBuf, PathBuf) {
    match iso {
        Isolation::Bwrap { .. } => ("/build".into(), "/cache".into()),
        _ => (workdir.to_owned(), cache.to_owned()),
    }
}

/// Output lines kept for a failed step's explanation.
const TAIL_LINES: usize = 40;

/// A step's last output lines.
type Tail = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

fn bwrap_args(step: &Step, limits: &Limits) -> Vec<String> {
    let mut a: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        // The environment comes from the (cleared) parent's, so that no
        // value (a secret) shows in the command line of a process.
        "--unsetenv",
        "SHOAL_CGROUP_PROCS",
    ]
    .map(String::from)
    .to_vec();
    if step.network {
        a.push("--share-net".into());
    }
    for dir in SYSTEM_DIRS {
        a.extend(["--ro-bind-try".into(), (*dir).into(), (*dir).into()]);
    }
    a.extend(["--proc", "/proc", "--dev", "/dev"].map(String::from));
    a.extend([
        "--size".into(),
        limits.tmp_bytes.to_string(),
        "--tmpfs".into(),
        "/tmp".into(),
    ]);
    let cwd = if step.cwd == "." {
        "/build".to_owned()
    } else {
        format!("/build/{}", step.cwd)
    };
    a.extend([
        "--bind".into(),
        step.workdir.display().to_string(),
        "/build".into(),
        "--bind".into(),
        step.cache.display().to_string(),
        "/cache".into(),
        "--chdir".into(),
        cwd,
    ]);
    a.extend(["--hostname", "shoal-build"].map(String::from));
    a.push("--".into());
    a.extend(step.cmd.0.iter().cloned());
    a
}

/// The system's certificate authorities (Debian's bundle), which Node
/// does not read by itself.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn base_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PATH", SANDBOX_PATH),
        ("HOME", "/tmp/home"),
        ("CI", "true"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    // A build trusts the authorities the system trusts, Node's fetch
    // (corepack, frameworks' downloads) included, as curl and git do.
    if Path::new(SYSTEM_CA_BUNDLE).is_file() {
        env.push(("NODE_EXTRA_CA_CERTS".into(), SYSTEM_CA_BUNDLE.into()));
    }
    env
}

/// Runs `step` to completion, logging its output; kills everything it
/// started on deadline or cancel.
pub async fn run(
    iso: &Isolation,
    step: Step<'_>,
    limits: &Limits,
    log: &Logger,
    mut cancel: watch::Receiver<bool>,
) -> Result<(), SandboxError> {
    let display = step.cmd.display();
    let cgroup_name = format!("{}-{}", log.deployment(), step.name);
    let (mut command, cgroup): (Command, Option<Cgroup>) = match iso {
        Isolation::Unavailable(why) => return Err(SandboxError::Unavailable(why.clone())),
        Isolation::Bwrap { bwrap, cgroups } => {
            let cg = cgroups.create(&cgroup_name, limits.memory_bytes, limits.pids)?;
            let procs: Vec<String> = cg
                .procs_files()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            // The shell joins the cgroup before exec'ing bwrap, so no process escapes it.
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(r#"for p in $SHOAL_CGROUP_PROCS; do echo $$ > "$p" || exit 125; done; exec "$@""#)
                .arg("shoal-sandbox")
                .arg(bwrap)
                .args(bwrap_args(&step, limits))
                .env_clear()
                .envs(base_env())
                .envs(step.env.iter().cloned())
                .env("SHOAL_CGROUP_PROCS", procs.join(" "))
                .process_group(0);
            (c, Some(cg))
        }
        Isolation::Landlock {
            cgroups,
            deny,
            root,
        } => {
            let tmp = private_tmp(&step)?;
            let cg = match cgroups {
                Some(root) => Some(root.create(&cgroup_name, limits.memory_bytes, limits.pids)?),
                None => None,
            };
            let confinement = confinement(&step, limits, &tmp, deny, *root, cg.as_ref());
            let confinement = match confinement {
                Ok(c) => c,
                Err(e) => {
                    if let Some(cg) = cg {
                        cg.destroy().await;
                    }
                    return Err(e.into());
                }
            };
            // The confined step makes its own session (no process group here).
            let mut c = direct(&step, Some(&tmp));
            confine::confine(&mut c, confinement);
            (c, cg)
        }
        Isolation::None => {
            let mut c = direct(&step, None);
            c.process_group(0);
            (c, None)
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    log.info(&format!("$ {display}"));
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(cg) = cgroup {
                cg.destroy().await;
            }
            return Err(e.into());
        }
    };
    let pgid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let tail = Tail::default();
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(pump(s, log.clone(), Level::Info, tail.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(pump(s, log.clone(), Level::Warn, tail.clone())));
    let outcome = tokio::select! {
        status = child.wait() => Ok(status?),
        _ = tokio::time::sleep_until(limits.deadline.into()) => Err(SandboxError::TimedOut),
        _ = cancel.wait_for(|c| *c) => Err(SandboxError::Canceled),
    };
    if outcome.is_err() {
        let _ = child.start_kill();
        if let Some(pg) = pgid {
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let oom = cgroup.as_ref().is_some_and(Cgroup::oom_killed);
    let forks = cgroup.as_ref().is_some_and(Cgroup::pids_exhausted);
    if let Some(cg) = cgroup {
        cg.destroy().await;
    }
    let _ = child.wait().await;
    for task in [out, err].into_iter().flatten() {
        let _ = task.await;
    }
    let status = outcome?;
    if status.success() {
        Ok(())
    } else if oom {
        Err(SandboxError::OutOfMemory(display))
    } else if forks {
        Err(SandboxError::TooManyProcesses(display))
    } else {
        let status = match status.code() {
            Some(125) if matches!(iso, Isolation::Bwrap { .. }) => {
                "status 125 (could not enter the build cgroup)".into()
            }
            Some(code) => format!("status {code}"),
            None => "a signal".into(),
        };
        let tail = std::mem::take(&mut *tail.lock_unpoisoned());
        Err(SandboxError::Failed {
            cmd: display,
            status,
            tail: tail.into(),
        })
    }
}

/// The step's own command, run directly in the checkout with the sandbox's
/// environment (HOME and TMPDIR in `tmp`, if given).
fn direct(step: &Step, tmp: Option<&Path>) -> Command {
    let mut c = Command::new(step.cmd.program());
    c.args(&step.cmd.0[1..]).env_clear().envs(base_env());
    if let Some(tmp) = tmp {
        c.env("HOME", tmp.join("home")).env("TMPDIR", tmp);
    }
    c.envs(step.env.iter().cloned())
        .current_dir(step.workdir.join(step.cwd));
    c
}

/// A fresh private tmp (and HOME) for a confined step, beside the checkout.
fn private_tmp(step: &Step) -> std::io::Result<PathBuf> {
    let tmp = step
        .workdir
        .parent()
        .unwrap_or(step.workdir)
        .join(format!("tmp-{}", step.name));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("home"))?;
    Ok(tmp)
}

fn confinement(
    step: &Step,
    limits: &Limits,
    tmp: &Path,
    deny: &[PathBuf],
    root: bool,
    cgroup: Option<&Cgroup>,
) -> std::io::Result<Confinement> {
    let ruleset = confine::ruleset(&Policy {
        system: SYSTEM_DIRS,
        writable: &[step.workdir, step.cache, tmp],
        deny,
        network: step.network,
    })?;
    let cgroup_procs = cgroup
        .map(|cg| {
            cg.procs_files()
                .iter()
                .map(|p| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .map(std::os::fd::OwnedFd::from)
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    // RLIMIT_NPROC counts every task of the user, the peer's threads too
    // (and binds no root process: the cgroup does then).
    let nproc = confine::user_tasks() + limits.pids;
    Ok(Confinement {
        ruleset: Some(ruleset),
        filter: confine::seccomp_filter(step.network),
        cgroup_procs,
        memory_bytes: cgroup.is_none().then_some(limits.memory_bytes),
        nproc,
        drop_caps: root,
    })
}

/// Copies a pipe into the log line by line, cutting lines at [`MAX_LINE`]
/// bytes so a process that never prints a newline cannot grow memory.
async fn pump(pipe: impl AsyncRead + Unpin, log: Logger, level: Level, tail: Tail) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::with_capacity(256);
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (take, newline) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        reader.consume(take);
        if newline || line.len() >= MAX_LINE {
            emit(&log, level, &line, &tail);
            line.clear();
            if !newline {
                // Skip the rest of an overlong line.
                loop {
                    let buf = match reader.fill_buf().await {
                        Ok([]) | Err(_) => return,
                        Ok(buf) => buf,
                    };
                    match buf.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            reader.consume(i + 1);
                            break;
                        }
                        None => {
                            let n = buf.len();
                            reader.consume(n);
                        }
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&log, level, &line, &tail);
    }
}

fn emit(log: &Logger, level: Level, raw: &[u8], tail: &Tail) {
    let text = String::from_utf8_lossy(raw);
    let text = log.mask(text.trim_end_matches(['\n', '\r']));
    log.line(level, &text);
    let mut tail = tail.lock_unpoisoned();
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(text);
}

//! Memory and process caps for a build, through cgroups (v1 or v2). A
//! cgroup also lets us kill every process of a build, however it forked.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io;
use std::path::{Path, PathBuf};

/// Where build cgroups are created.
#[derive(Debug, Clone)]
pub enum CgroupRoot {
    /// Separate memory and pids hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
    /// One unified hierarchy.
    V2 { base: PathBuf },
}

/// One build's cgroup (a directory per hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

const FS: &str = "/sys/fs/cgroup";

/// This process's path in the hierarchy whose controller list contains `ctrl`.
fn own_path(ctrl: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        (ctrls.split(',').any(|c| c == ctrl) || (ctrl.is_empty() && ctrls.is_empty()))
            .then(|| path.to_owned())
    })
}

/// A writable place for this peer's build cgroups, `shoal-builds/<peer>`:
/// next to this process if allowed, else at the root of the hierarchy.
/// Peers sharing a machine never touch each other's cgroups.
fn writable_base(mount: &Path, own: Option<String>, peer: &str) -> Option<PathBuf> {
    let candidates = own
        .map(|p| mount.join(p.trim_start_matches('/')))
        .into_iter()
        .chain(std::iter::once(mount.to_path_buf()));
    for base in candidates {
        let dir = base.join("shoal-builds").join(peer);
        if std::fs::create_dir_all(&dir).is_ok() {
            let probe = dir.join(format!("probe-{}", std::process::id()));
            if std::fs::create_dir(&probe).is_ok() {
                let _ = std::fs::remove_dir(&probe);
                return Some(dir);
            }
        }
    }
    None
}

/// Kills what a previous run of this peer left in its build cgroups.
fn reap_leftovers(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let cg = Cgroup {
                dirs: vec![entry.path()],
            };
            cg.kill_all_blocking();
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

impl CgroupRoot {
    /// Finds where this peer may create build cgroups, or says why it can't.
    pub fn probe(peer: &str) -> Result<Self, String> {
        let fs = Path::new(FS);
        let root = if fs.join("cgroup.controllers").exists() {
            let ctrls = std::fs::read_to_string(fs.join("cgroup.controllers")).unwrap_or_default();
            if !(ctrls.contains("memory") && ctrls.contains("pids")) {
                return Err("cgroup v2 without the memory and pids controllers".into());
            }
            let base = writable_base(fs, own_path(""), peer).ok_or("cgroup v2 is not writable")?;
            // Children only get the controllers their parents delegate.
            if let Some(parent) = base.parent() {
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
            }
            let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids");
            CgroupRoot::V2 { base }
        } else {
            let (mem, pids) = (fs.join("memory"), fs.join("pids"));
            if !mem.join("cgroup.procs").exists() || !pids.join("cgroup.procs").exists() {
                return Err("no memory or pids cgroup controller is mounted".into());
            }
            let memory = writable_base(&mem, own_path("memory"), peer)
                .ok_or("the memory cgroup is not writable")?;
            let pids = writable_base(&pids, own_path("pids"), peer)
                .ok_or("the pids cgroup is not writable")?;
            CgroupRoot::V1 { memory, pids }
        };
        match &root {
            CgroupRoot::V1 { memory, pids } => {
                reap_leftovers(memory);
                reap_leftovers(pids);
            }
            CgroupRoot::V2 { base } => reap_leftovers(base),
        }
        Ok(root)
    }

    /// Creates the cgroup `name` with the given caps.
    pub fn create(&self, name: &str, memory_bytes: u64, max_pids: u64) -> io::Result<Cgroup> {
        let cg = match self {
            CgroupRoot::V1 { memory, pids } => {
                let (m, p) = (memory.join(name), pids.join(name));
                std::fs::create_dir_all(&m)?;
                std::fs::create_dir_all(&p)?;
                std::fs::write(m.join("memory.limit_in_bytes"), memory_bytes.to_string())?;
                // Swap counts too where the kernel accounts it.
                let _ = std::fs::write(
                    m.join("memory.memsw.limit_in_bytes"),
                    memory_bytes.to_string(),
                );
                std::fs::write(p.join("pids.max"), max_pids.to_string())?;
                Cgroup { dirs: vec![m, p] }
            }
            CgroupRoot::V2 { base } => {
                let d = base.join(name);
                std::fs::create_dir_all(&d)?;
                std::fs::write(d.join("memory.max"), memory_bytes.to_string())?;
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                std::fs::write(d.join("pids.max"), max_pids.to_string())?;
                Cgroup { dirs: vec![d] }
            }
        };
        Ok(cg)
    }
}

impl Cgroup {
    /// The `cgroup.procs` files a new process must write its pid into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel killed a process for hitting the memory cap
    /// (`oom_kill N` in v2's memory.events or v1's memory.oom_control).
    pub fn oom_killed(&self) -> bool {
        self.counter_above_zero(&["memory.events", "memory.oom_control"], "oom_kill ")
    }

    /// Whether a fork failed because of the process cap (`max N` in pids.events).
    pub fn pids_exhausted(&self) -> bool {
        self.counter_above_zero(&["pids.events"], "max ")
    }

    fn counter_above_zero(&self, files: &[&str], key: &str) -> bool {
        self.dirs.iter().any(|d| {
            files.iter().any(|file| {
                std::fs::read_to_string(d.join(file)).is_ok_and(|t| {
                    t.lines().any(|l| {
                        l.strip_prefix(key)
                            .is_some_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
                    })
                })
            })
        })
    }

    fn pids(&self) -> Vec<i32> {
        self.procs_files()
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Kills every process in the cgroup, without waiting for them to go.
    fn kill_all_blocking(&self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Kills every process in the cgroup and removes it.
    pub async fn destroy(self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            self.kill_all_blocking();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

//! The sandbox for where bubblewrap cannot run (an unprivileged Kubernetes
//! pod: no user namespaces, no cgroup delegation): a build step runs as a
//! plain child process that, between fork and exec, confines itself.
//!
//! - Landlock (ABI 6, Linux 6.12+): read and execute only in the system
//!   directories (minus the peer's data and secret directories), write only
//!   in the checkout and a private tmp; no TCP bind or connect unless the
//!   step has network; no signals to, no ptrace of, no abstract sockets
//!   shared with anything outside the build (so not the peer, though it runs
//!   as the same user).
//! - seccomp: no io_uring (it would get around the socket rule), no x32
//!   calls, and, without network, no socket but AF_UNIX (so no UDP either).
//! - A new session, killed with the peer; rlimits on memory (per process:
//!   RLIMIT_DATA), processes and core dumps; the build cgroup too if this
//!   peer can make one. Under a peer running as root, the step drops every
//!   capability (bounding set included), so it is root in name only.
//!
//! Everything the child runs is async-signal-safe: the ruleset and the
//! filter are made before the fork.
//!
//! The one module with `unsafe`: a child confining itself between fork and
//! exec needs raw system calls; each block says why it is sound.
#![allow(unsafe_code)]

use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, Scope, ABI,
};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The Landlock ABI needed: 6 scopes signals and abstract unix sockets.
pub const NEEDED_ABI: i64 = 6;
const TARGET: ABI = ABI::V6;

/// The Landlock ABI this kernel offers (0: none, or not allowed here).
pub fn abi() -> i64 {
    const VERSION: libc::c_uint = 1; // LANDLOCK_CREATE_RULESET_VERSION
                                     // SAFETY: asks for the ABI version only: no pointer is read.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            VERSION,
        )
    };
    v.max(0)
}

/// What a confined step may touch.
pub struct Policy<'a> {
    pub system: &'a [&'a str],
    pub writable: &'a [&'a Path],
    /// Never visible, even under a system directory.
    pub deny: &'a [PathBuf],
    pub network: bool,
}

fn landlock_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("landlock: {e}"))
}

/// The ruleset for `policy`, made in the parent.
pub fn ruleset(policy: &Policy) -> io::Result<RulesetCreated> {
    let mut rs = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET))
        .map_err(landlock_err)?
        .scope(Scope::from_all(TARGET))
        .map_err(landlock_err)?;
    if !policy.network {
        rs = rs
            .handle_access(AccessNet::from_all(TARGET))
            .map_err(landlock_err)?;
    }
    let mut rs = rs.create().map_err(landlock_err)?;
    let read = AccessFs::from_read(TARGET);
    let deny: Vec<PathBuf> = policy
        .deny
        .iter()
        .flat_map(|d| [d.clone(), d.canonicalize().unwrap_or_else(|_| d.clone())])
        .collect();
    for dir in policy.system.iter().chain(["/proc", "/sys"].iter()) {
        allow(&mut rs, Path::new(dir), read, &deny)?;
    }
    let device = AccessFs::ReadFile | AccessFs::WriteFile;
    for dev in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
    ] {
        allow(&mut rs, Path::new(dev), device, &deny)?;
    }
    for dir in policy.writable {
        allow(&mut rs, dir, AccessFs::from_all(TARGET), &[])?;
    }
    Ok(rs)
}

/// Allows `access` beneath `path`, except beneath any `deny` path: a
/// directory holding a denied path is allowed child by child instead.
fn allow(
    rs: &mut RulesetCreated,
    path: &Path,
    access: landlock::BitFlags<AccessFs>,
    deny: &[PathBuf],
) -> io::Result<()> {
    let Ok(real) = path.canonicalize() else {
        return Ok(()); // not on this system
    };
    if deny
        .iter()
        .any(|d| real.starts_with(d) || path.starts_with(d))
    {
        return Ok(());
    }
    let meta = std::fs::metadata(&real)?;
    if meta.is_dir() && deny.iter().any(|d| d.starts_with(&real)) {
        for entry in std::fs::read_dir(&real)?.flatten() {
            allow(rs, &entry.path(), access, deny)?;
        }
        return Ok(());
    }
    let access = if meta.is_dir() {
        access
    } else {
        access & AccessFs::from_file(TARGET)
    };
    let fd = PathFd::new(&real).map_err(landlock_err)?;
    rs.add_rule(PathBeneath::new(fd, access))
        .map_err(landlock_err)?;
    Ok(())
}

/// A classic BPF seccomp program: no io_uring, no x32, and without
/// `network` no sockets but AF_UNIX.
pub fn seccomp_filter(network: bool) -> Vec<libc::sock_filter> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    const KILL: u32 = 0x8000_0000; // SECCOMP_RET_KILL_PROCESS
    let errno = |e: i32| 0x0005_0000 | (e as u32 & 0xffff); // SECCOMP_RET_ERRNO
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    // seccomp_data: nr at 0, arch at 4, args[0] (low half) at 16.
    let mut p = vec![
        stmt(LD_W_ABS, 4),
        jump(JEQ_K, ARCH, 1, 0),
        stmt(RET_K, KILL),
        stmt(LD_W_ABS, 0),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([
        jump(JGE_K, 0x4000_0000, 0, 1), // __X32_SYSCALL_BIT
        stmt(RET_K, errno(libc::ENOSYS)),
    ]);
    p.extend([
        jump(JEQ_K, libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(RET_K, errno(libc::ENOSYS)),
    ]);
    if !network {
        p.extend([
            jump(JEQ_K, libc::SYS_socket as u32, 0, 4), // not socket(): allow
            stmt(LD_W_ABS, 16),
            jump(JEQ_K, libc::AF_UNIX as u32, 1, 0),
            stmt(RET_K, errno(libc::EACCES)),
            stmt(RET_K, ALLOW),
        ]);
    }
    p.push(stmt(RET_K, ALLOW));
    p
}

/// What the child does before exec. Built in the parent; `apply` only makes
/// system calls.
pub struct Confinement {
    pub ruleset: Option<RulesetCreated>,
    pub filter: Vec<libc::sock_filter>,
    /// cgroup.procs files to join (opened by the parent).
    pub cgroup_procs: Vec<OwnedFd>,
    /// RLIMIT_DATA, per process (`None`: a cgroup caps the whole step).
    pub memory_bytes: Option<u64>,
    pub nproc: u64,
    /// Drop every capability (the peer runs as root).
    pub drop_caps: bool,
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` (v3).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the bounding, ambient, inheritable, permitted and effective
/// capability sets of this process.
///
/// # Safety
/// Only system calls; for a forked child before exec.
unsafe fn drop_capabilities() -> io::Result<()> {
    for cap in 0..64 {
        // EINVAL past the last capability this kernel knows.
        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) < 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(io::Error::last_os_error());
        }
    }
    if libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0 as libc::c_ulong,
        0 as libc::c_ulong,
        0 as libc::c_ulong,
    ) < 0
    {
        return Err(io::Error::last_os_error());
    }
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Confinement {
    /// Runs in the forked child, before exec.
    pub fn apply(&mut self) -> io::Result<()> {
        // Join the build cgroup while still allowed to.
        if !self.cgroup_procs.is_empty() {
            let mut buf = [0u8; 20];
            let pid = itoa(std::process::id(), &mut buf);
            for fd in &self.cgroup_procs {
                // SAFETY: writes `pid` from a live buffer to an open fd.
                let n = unsafe { libc::write(fd.as_raw_fd(), pid.as_ptr().cast(), pid.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // SAFETY: plain system calls on this (single-threaded) child.
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            let limit = |res, v: u64| {
                let r = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(res, &r) < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            if let Some(bytes) = self.memory_bytes {
                limit(libc::RLIMIT_DATA, bytes)?;
            }
            limit(libc::RLIMIT_NPROC, self.nproc)?;
            limit(libc::RLIMIT_CORE, 0)?;
            if self.drop_caps {
                drop_capabilities()?;
            }
            // After any credential change, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Sets no_new_privs too.
        let ruleset = self
            .ruleset
            .take()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        ruleset
            .restrict_self()
            .map_err(|_| io::Error::from(io::ErrorKind::PermissionDenied))?;
        let prog = libc::sock_fprog {
            len: self.filter.len() as u16,
            filter: self.filter.as_mut_ptr(),
        };
        // SAFETY: `prog` points at the live filter for the call.
        if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Makes the child of `cmd` confine itself before exec.
pub fn confine(cmd: &mut tokio::process::Command, mut confinement: Confinement) {
    // SAFETY: `apply` makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || confinement.apply());
    }
}

/// Formats `n` in decimal into `buf` (no allocation: runs after fork).
fn itoa(mut n: u32, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Tasks (processes and threads) of this user now: RLIMIT_NPROC counts
/// them all, the peer's threads included.
pub fn user_tasks() -> u64 {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .is_some_and(|u| u == uid.to_string())
        })
        .map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|l| l.trim().parse::<u64>().ok())
                .unwrap_or(1)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_confined_step_sees_the_system_but_nothing_denied_and_cannot_reach_out() {
        assert!(
            abi() >= NEEDED_ABI,
            "this kernel offers Landlock ABI {}; the build sandbox needs {NEEDED_ABI}",
            abi()
        );
        let dir = tempfile::tempdir().unwrap();
        let (sys, work) = (dir.path().join("sys"), dir.path().join("work"));
        std::fs::create_dir_all(sys.join("secret")).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(sys.join("open.txt"), "open").unwrap();
        std::fs::write(sys.join("secret/key"), "key").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sys_s = sys.display().to_string();
        let system = ["/usr", "/bin", "/lib", "/lib64", "/etc", sys_s.as_str()];
        let deny = [sys.join("secret")];
        let policy = Policy {
            system: &system,
            writable: &[&work],
            deny: &deny,
            network: false,
        };
        let mut confinement = Confinement {
            ruleset: Some(ruleset(&policy).unwrap()),
            filter: seccomp_filter(false),
            cgroup_procs: Vec::new(),
            memory_bytes: Some(1 << 30),
            nproc: user_tasks() + 64,
            // SAFETY: geteuid cannot fail.
            drop_caps: unsafe { libc::geteuid() } == 0,
        };
        let script = format!(
            "cat {sys}/open.txt; echo; \
             cat {sys}/secret/key 2>/dev/null && echo LEAK-secret; \
             echo hi > {work}/w && echo wrote; \
             echo x > {sys}/new 2>/dev/null && echo LEAK-write; \
             kill -0 {peer} 2>/dev/null && echo LEAK-signal; \
             cat /proc/{peer}/environ >/dev/null 2>&1 && echo LEAK-environ; \
             perl -e 'use Socket; socket(S, PF_INET, SOCK_STREAM, 0) or exit 1; connect(S, pack_sockaddr_in({port}, inet_aton(\"127.0.0.1\"))) and print \"LEAK-tcp\\n\"'; \
             perl -e 'use Socket; socket(S, PF_INET, SOCK_DGRAM, 0) and print \"LEAK-udp\\n\"'; \
             perl -e 'use Socket; socket(S, PF_UNIX, SOCK_STREAM, 0) and print \"unix ok\\n\"'",
            sys = sys.display(),
            work = work.display(),
            peer = std::process::id(),
        );
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&script)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        // SAFETY: `apply` makes only async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || confinement.apply());
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout,
            "open\nwrote\nunix ok\n",
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(work.join("w")).unwrap(), "hi\n");
        assert!(!sys.join("new").exists());
    }

    #[test]
    fn itoa_writes_decimal() {
        let mut b = [0u8; 20];
        assert_eq!(itoa(0, &mut b), b"0");
        assert_eq!(itoa(4_294_967_295, &mut b), b"4294967295");
        assert_eq!(itoa(1203, &mut b), b"1203");
    }
}

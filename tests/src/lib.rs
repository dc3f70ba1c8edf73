//! Test harness: start real `shoal` peers (temp data dirs, HTTP ports chosen
//! by the OS, p2p ports from [`p2p_port`]), make real git repositories, and
//! wait on conditions with deadlines instead of sleeping.

// A test harness fails loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod github;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-admin-token";

/// Deadline for a deployment of a small site to end.
pub const BUILD: Duration = Duration::from_secs(60);

/// Deterministic pseudo-random bytes (xorshift), for incompressible files.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends a raw GET, bypassing any client-side path normalisation; returns
/// the whole response as text.
pub fn raw_get(addr: &str, target: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A free TCP and UDP port on 127.0.0.1 for a peer's p2p listeners, below the
/// kernel's ephemeral range (32768 and up by default).
///
/// A peer keeps its p2p port across a restart, as a real one would. A port
/// the OS handed out for `:0` could be handed to another socket while the
/// peer is down, and libp2p listens with `SO_REUSEPORT`, so the restarted
/// peer might share it with a stranger. Ports outside the ephemeral range
/// are never handed out by the OS; this process hands each out once.
pub fn p2p_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    // Test binaries run one after another; starting from the process id
    // keeps a binary clear of ports a previous one may still hold.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % u32::from(SPAN)) as u16 + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        // The peer listens over QUIC at the UDP port of the same number.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// The `shoal` binary next to this test executable (built by `scripts/test.sh`).
pub fn shoal_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    let bin = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("shoal"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no shoal binary near {}: run `cargo build -p node --bin shoal` (scripts/test.sh does)", exe.display()));
    bin
}

/// Runs the `shoal` CLI (with the admin token in its environment) and
/// returns what it printed; fails with both outputs if it fails.
pub async fn cli(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(shoal_bin())
        .args(args)
        .env("SHOAL_TOKEN", TOKEN)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "shoal {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Polls `check` until it returns `Some`, or fails after `within`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// One running peer.
pub struct Peer {
    pub data: tempfile::TempDir,
    pub args: Vec<String>,
    child: Option<Child>,
    pub http: String,
    pub sites: String,
    /// The peer's libp2p listen addresses.
    pub p2p: Vec<String>,
    /// The peer's libp2p id.
    pub id: String,
    client: reqwest::Client,
}

impl Peer {
    /// Starts a peer that accepts local repositories, plus `extra` flags.
    pub async fn start(extra: &[&str]) -> Result<Self> {
        let mut flags = vec!["--allow-local-repos"];
        flags.extend_from_slice(extra);
        Self::start_with(&flags).await
    }

    /// Starts a peer with the default policy (no local repositories).
    pub async fn start_without_local() -> Self {
        Self::start_with(&[]).await.expect("peer starts")
    }

    async fn start_with(extra: &[&str]) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let mut args: Vec<String> = [
            "node",
            "--listen",
            "127.0.0.1",
            "--http-port",
            "0",
            "--sites-port",
            "0",
            "--name",
            "test",
        ]
        .map(String::from)
        .to_vec();
        if !extra.contains(&"--p2p-port") {
            args.extend(["--p2p-port".to_owned(), p2p_port().to_string()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut peer = Peer {
            data,
            args,
            child: None,
            http: String::new(),
            sites: String::new(),
            p2p: Vec::new(),
            id: String::new(),
            client: reqwest::Client::new(),
        };
        peer.spawn().await?;
        Ok(peer)
    }

    async fn spawn(&mut self) -> Result<()> {
        // A crashed run leaves its endpoints behind; never read those.
        let _ = std::fs::remove_file(self.data.path().join("data/endpoints.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("peer.log"))?;
        let child = Command::new(shoal_bin())
            .args(&self.args)
            .arg("--data")
            .arg(self.data.path().join("data"))
            .env("SHOAL_ADMIN_TOKEN", TOKEN)
            .env("SHOAL_LOG", "info,shoal=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting shoal")?;
        self.child = Some(child);
        let path = self.data.path().join("data/endpoints.json");
        let ep: Value = wait_until("the peer to listen", Duration::from_secs(20), || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
            }
        })
        .await
        .with_context(|| self.log())?;
        self.http = format!("http://{}", ep["http"].as_str().unwrap_or_default());
        self.sites = format!("http://{}", ep["sites"].as_str().unwrap_or_default());
        self.id = ep["peer"].as_str().unwrap_or_default().to_owned();
        self.p2p = ep["p2p"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        // A restarted peer comes back on the same p2p port, as a real one
        // would: the others redial the address they know.
        if let Some(port) = self
            .p2p
            .first()
            .and_then(|a| a.rsplit('/').next())
            .map(str::to_owned)
        {
            if let Some(i) = self.args.iter().position(|a| a == "--p2p-port") {
                self.args[i + 1] = port;
            }
        }
        // Started and caught up with the mesh: ready, or only still
        // fetching sites (tests watch that part themselves).
        let ready = format!("{}/readyz", self.http);
        let client = self.client.clone();
        wait_until("readyz", Duration::from_secs(20), || {
            let (c, u) = (client.clone(), ready.clone());
            async move {
                let res = c.get(u).send().await.ok()?;
                let ok = res.status().is_success();
                let body = res.text().await.unwrap_or_default();
                (ok || body.contains("is not here yet")).then_some(())
            }
        })
        .await
        .with_context(|| self.log())?;
        Ok(())
    }

    /// The peer's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("peer.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the peer: SIGTERM (graceful) or SIGKILL (crash).
    pub fn stop(&mut self, graceful: bool) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let sig = if graceful {
                nix::sys::signal::Signal::SIGTERM
            } else {
                nix::sys::signal::Signal::SIGKILL
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
            // A peer that does not exit is a failure, not a hung test.
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("peer did not exit within 60 s of {sig}\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if graceful && !status.success() {
                bail!("peer exited with {status} after SIGTERM\n{}", self.log());
            }
        }
        Ok(())
    }

    /// Stops and starts the peer on the same data directory.
    pub async fn restart(&mut self, graceful: bool) -> Result<()> {
        self.stop(graceful)?;
        self.spawn().await
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `POST /api/deployments` with the admin token; returns status and body.
    pub async fn post_deployment(&self, body: &Value) -> Result<(u16, Value)> {
        let res = self
            .client
            .post(format!("{}/api/deployments", self.http))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    /// Deploys `repo` as `name` and returns the deployment id.
    pub async fn deploy(&self, repo: &Path, name: &str) -> Result<String> {
        let (status, body) = self
            .post_deployment(&json!({"repo_url": repo, "name": name}))
            .await?;
        if status != 202 {
            bail!("deploy returned {status}: {body}");
        }
        Ok(body["id"].as_str().context("id")?.to_owned())
    }

    /// The text of a page on the UI/API port (panics on a transport error).
    pub async fn page(&self, path: &str) -> String {
        let res = self
            .client
            .get(format!("{}{path}", self.http))
            .send()
            .await
            .expect("request");
        res.text().await.expect("body")
    }

    /// Deploys `repo` as `name`, waits until the deployment ends, and
    /// returns its id and final state.
    pub async fn deploy_and_wait(&self, repo: &Path, name: &str) -> Result<(String, Value)> {
        let id = self.deploy(repo, name).await?;
        let d = self.wait_final(&id, BUILD).await?;
        Ok((id, d))
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self
            .client
            .get(format!("{}{path}", self.http))
            .send()
            .await?
            .json()
            .await?)
    }

    pub async fn deployment(&self, id: &str) -> Result<Value> {
        self.get_json(&format!("/api/deployments/{id}")).await
    }

    pub async fn deployments(&self) -> Result<Vec<Value>> {
        Ok(self
            .get_json("/api/deployments")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Log messages of a deployment, one string per line.
    pub async fn log_text(&self, id: &str) -> Result<String> {
        let lines = self
            .get_json(&format!("/api/deployments/{id}/logs"))
            .await?;
        Ok(lines
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "[{}] {}",
                    l["step"].as_str().unwrap_or(""),
                    l["message"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Waits until the deployment reaches a final status and returns it.
    pub async fn wait_final(&self, id: &str, within: Duration) -> Result<Value> {
        let result = wait_until(&format!("deployment {id} to end"), within, || async {
            let d = self.deployment(id).await.ok()?;
            let s = d["status"].as_str()?;
            matches!(
                s,
                "success" | "buildFailed" | "distributionFailed" | "canceled"
            )
            .then_some(d)
        })
        .await;
        match result {
            Ok(d) => Ok(d),
            Err(e) => bail!(
                "{e}\nlog:\n{}\npeer log:\n{}",
                self.log_text(id).await.unwrap_or_default(),
                self.log()
            ),
        }
    }

    /// GET a path of site `name`, chosen by the Host header.
    pub async fn site(&self, name: &str, path: &str) -> Result<reqwest::Response> {
        Ok(self
            .client
            .get(format!("{}{path}", self.sites))
            .header("host", format!("{name}.localhost"))
            .send()
            .await?)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Peer {
    /// A figure from this peer's `/metrics` (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(res) = self
            .client
            .get(format!("{}/metrics", self.http))
            .send()
            .await
        else {
            return 0.0;
        };
        let text = res.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// The bytes this peer serves at `path` of site `name`, if it serves them (200).
    pub async fn site_bytes(&self, name: &str, path: &str) -> Option<Vec<u8>> {
        let res = self.site(name, path).await.ok()?;
        if res.status() != 200 {
            return None;
        }
        Some(res.bytes().await.ok()?.to_vec())
    }

    /// Waits until the log of deployment `id` contains `needle`; returns the
    /// deployment as it is then.
    pub async fn wait_log(&self, id: &str, needle: &str, within: Duration) -> Result<Value> {
        wait_until(
            &format!("'{needle}' in the log of {id}"),
            within,
            || async {
                let log = self.log_text(id).await.ok()?;
                let d = self.deployment(id).await.ok()?;
                log.contains(needle).then_some(d)
            },
        )
        .await
    }

    /// Waits until this peer shows deployment `id` with a status in `statuses`.
    pub async fn wait_status(
        &self,
        id: &str,
        statuses: &[&str],
        within: Duration,
    ) -> Result<Value> {
        let found = wait_until(
            &format!("deployment {id} to reach {statuses:?}"),
            within,
            || async {
                let d = self.deployment(id).await.ok()?;
                statuses.contains(&d["status"].as_str()?).then_some(d)
            },
        )
        .await;
        match found {
            Ok(d) => Ok(d),
            Err(e) => Err(anyhow::anyhow!(
                "{e}\nnow: {:?}\n{}",
                self.deployment(id).await.ok(),
                self.log_text(id).await.unwrap_or_default()
            )),
        }
    }

    /// `GET /api/peers`.
    pub async fn peers(&self) -> Result<Vec<Value>> {
        Ok(self
            .get_json("/api/peers")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// How many peers this one considers alive (itself included).
    pub async fn alive_peers(&self) -> usize {
        self.peers()
            .await
            .map(|p| p.iter().filter(|p| p["alive"] == true).count())
            .unwrap_or(0)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A mesh of real peers on loopback: peer 0 is the bootstrap of the others.
pub struct Mesh {
    pub peers: Vec<Peer>,
    /// Flags every peer of this mesh starts with.
    extra: Vec<String>,
}

impl Mesh {
    /// Starts `n` peers and waits until every one sees all of them alive.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_with(n, &[]).await
    }

    pub async fn start_with(n: usize, extra: &[&str]) -> Result<Self> {
        let first = Peer::start(extra).await?;
        let mut mesh = Mesh {
            peers: vec![first],
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        let joiners: Vec<_> = (1..n).map(|_| tokio::spawn(mesh.joiner())).collect();
        for j in joiners {
            mesh.peers.push(j.await??);
        }
        mesh.wait_all_alive(Duration::from_secs(30)).await?;
        Ok(mesh)
    }

    /// The bootstrap address of the mesh (peer 0's first p2p address).
    pub fn bootstrap(&self) -> String {
        self.peers[0].p2p.first().cloned().unwrap_or_default()
    }

    fn joiner(&self) -> impl Future<Output = Result<Peer>> + Send + 'static {
        self.joiner_with(&[])
    }

    fn joiner_with(&self, more: &[&str]) -> impl Future<Output = Result<Peer>> + Send + 'static {
        let mut flags: Vec<String> = self.extra.clone();
        flags.extend(more.iter().map(|s| (*s).to_owned()));
        flags.extend(["--bootstrap".to_owned(), self.bootstrap()]);
        async move {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            Peer::start(&flags).await
        }
    }

    /// Starts one more peer that joins through peer 0.
    pub async fn add_peer(&mut self) -> Result<&Peer> {
        self.add_peer_with(&[]).await
    }

    /// Like [`Mesh::add_peer`], with flags of its own besides the mesh's.
    pub async fn add_peer_with(&mut self, more: &[&str]) -> Result<&Peer> {
        let peer = self.joiner_with(more).await?;
        self.peers.push(peer);
        Ok(&self.peers[self.peers.len() - 1])
    }

    /// Waits until every running peer sees every running peer alive.
    pub async fn wait_all_alive(&self, within: Duration) -> Result<()> {
        let n = self.peers.iter().filter(|p| p.is_running()).count();
        for peer in self.peers.iter().filter(|p| p.is_running()) {
            wait_until(
                &format!("peer {} to see {n} live peers", peer.id),
                within,
                || async { (peer.alive_peers().await == n).then_some(()) },
            )
            .await?;
        }
        Ok(())
    }

    /// The peer whose id is `id`.
    pub fn by_id(&self, id: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// Waits until every running peer shows the same deployments and logs,
    /// and returns one peer's deployment list.
    pub async fn wait_converged(&self, within: Duration) -> Result<Vec<Value>> {
        wait_until(
            "every peer to show the same deployments and logs",
            within,
            || async {
                let mut first: Option<(Vec<Value>, Vec<String>)> = None;
                for peer in self.peers.iter().filter(|p| p.is_running()) {
                    let list = peer.deployments().await.ok()?;
                    let mut logs = Vec::new();
                    for d in &list {
                        logs.push(peer.log_text(d["id"].as_str()?).await.ok()?);
                    }
                    match &first {
                        None => first = Some((list, logs)),
                        Some(f) if *f == (list, logs) => {}
                        Some(_) => return None,
                    }
                }
                first.map(|f| f.0)
            },
        )
        .await
    }
}

/// A git repository made on the fly.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

/// Every file under `dir`, as (path relative to `root`, bytes); build
/// output and installed packages left out.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if ["node_modules", "dist", "build", "out", ".output"]
            .contains(&name.to_str().unwrap_or(""))
        {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&path)?));
        }
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=shoal-test",
            "-c",
            "user.email=test@shoal.invalid",
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Repo {
    /// A repository whose first commit holds `files`.
    pub fn new(files: &[(&str, &[u8])]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        git(dir.path(), &["init", "-q"])?;
        let repo = Repo { dir };
        repo.commit(files, "initial")?;
        Ok(repo)
    }

    /// A repository holding the files of `tests/fixtures/<name>` (a real
    /// project: package.json, lockfile, sources), committed once.
    pub fn fixture(name: &str) -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        let mut files = Vec::new();
        collect(&root, &root, &mut files)?;
        let borrowed: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        Self::new(&borrowed)
    }

    /// A site whose build prints `slow-start`, sleeps `seconds` (a unique
    /// figure lets a test find the process), then writes `page` as its
    /// index.html.
    pub fn slow_build(seconds: &str, page: &str) -> Result<Self> {
        let config = format!(
            "[build]\ncommand = \"echo slow-start; sleep {seconds}; mkdir -p o; echo {page} > o/index.html\"\noutput = \"o\"\n"
        );
        Self::new(&[("shoal.toml", config.as_bytes())])
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `files` and commits them; returns the commit id.
    pub fn commit(&self, files: &[(&str, &[u8])], message: &str) -> Result<String> {
        for (rel, data) in files {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().context("parent")?)?;
            std::fs::write(p, data)?;
        }
        git(self.dir.path(), &["add", "-A"])?;
        git(
            self.dir.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        )?;
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }

    pub fn git(&self, args: &[&str]) -> Result<String> {
        git(self.dir.path(), args)
    }
}

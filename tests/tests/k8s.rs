//! The Kubernetes StatefulSet, emulated: three "pods", each in a network
//! namespace this test creates (its own IP on a private bridge, its own
//! loopback), run `shoal` with exactly the command, arguments and
//! environment that `scripts/k8s/statefulset.yaml` gives a pod (with the
//! Secret's and ConfigMap's values, `$(POD_NAME)` expanded, volume mount
//! paths mapped to per-pod directories owned by the pod's user, and
//! `shoal-<i>.shoal` resolving to pod i through the namespace's hosts file),
//! as the pod's `runAsUser` with no capabilities, so builds run in the
//! sandbox a real pod gets (Landlock, no cgroups). They must form a mesh; then a
//! rolling restart (SIGTERM each pod in turn, highest ordinal first, and
//! start it again on the same volume) runs while a deployment builds and a
//! client keeps requesting a site: no request fails on the pods not being
//! restarted, the deployment ends in success, and no state is lost.
//!
//! Needs root (network namespaces); `scripts/test.sh` runs as root in CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tests::github::{FakeGitHub, FakeRepo};
use tests::{shoal_bin, wait_until, Repo};

const PODS: usize = 3;

fn k8s_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s")
}

/// The documents of a YAML file, as JSON (through PyYAML, which the
/// manifest validation installs).
fn yaml(path: &Path) -> Result<Vec<Value>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(path)
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!(
            "reading {} needs python3 with PyYAML (scripts/k8s/validate.sh installs it): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A private bridge in its own namespace, one namespace per pod, and a
/// link from this (the test's) namespace; all removed on drop.
struct Net {
    tag: String,
    subnet: String,
}

impl Net {
    fn new() -> Result<Self> {
        let id = std::process::id() % 200 + 20;
        let net = Self {
            tag: format!("sk{id}"),
            subnet: format!("10.79.{id}"),
        };
        net.cleanup();
        let (sw, host) = (net.switch(), format!("{}h", net.tag));
        run("ip", &["netns", "add", &sw])?;
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        run(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", "up0", "netns", &sw,
            ],
        )?;
        run(
            "ip",
            &["-n", &sw, "link", "set", "up0", "master", "br0", "up"],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{}.1/24", net.subnet), "dev", &host],
        )?;
        run("ip", &["link", "set", &host, "up"])?;
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for i in 0..PODS {
            hosts.push_str(&format!("{} shoal-{i}.shoal shoal-{i}\n", net.pod_ip(i)));
        }
        for i in 0..PODS {
            let ns = net.pod(i);
            run("ip", &["netns", "add", &ns])?;
            let port = format!("p{i}");
            run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &sw,
                ],
            )?;
            run(
                "ip",
                &["-n", &sw, "link", "set", &port, "master", "br0", "up"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", net.pod_ip(i)),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            // `ip netns exec` mounts these over /etc/hosts and /etc/resolv.conf.
            let etc = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc)?;
            std::fs::write(etc.join("hosts"), &hosts)?;
            std::fs::write(
                etc.join("resolv.conf"),
                "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n",
            )?;
        }
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.tag)
    }

    fn pod(&self, i: usize) -> String {
        format!("{}p{i}", self.tag)
    }

    fn pod_ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    fn cleanup(&self) {
        for i in 0..PODS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.pod(i)])
                .output();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(self.pod(i)));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h", self.tag)])
            .output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// What the StatefulSet gives pod `name`: the argument vector (command
/// first) and the environment, with mount paths mapped by `mounts`.
struct PodSpec {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    http_port: u16,
    sites_port: u16,
    ready_path: String,
    mounts: Vec<(String, String)>,
    /// The pod's `runAsUser` and `runAsGroup`.
    user: (u32, u32),
}

/// Gives a tree to `uid:gid`, as the kubelet does for `fsGroup` volumes.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(root, Some(uid), Some(gid))?;
    if root.is_dir() {
        for entry in std::fs::read_dir(root)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn pod_spec(name: &str, volumes: &Path) -> Result<PodSpec> {
    let dir = k8s_dir();
    let set = yaml(&dir.join("statefulset.yaml"))?.remove(0);
    let secret = yaml(&dir.join("secret.yaml"))?.remove(0);
    let config = yaml(&dir.join("configmap.yaml"))?.remove(0);
    assert_eq!(set["kind"], "StatefulSet");
    let c = &set["spec"]["template"]["spec"]["containers"][0];
    // Volume mounts → per-pod directories (the PVC persists across restarts).
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().context("volumeMounts")? {
        let (vol, path) = (
            m["name"].as_str().unwrap(),
            m["mountPath"].as_str().unwrap(),
        );
        let host = volumes.join(vol);
        std::fs::create_dir_all(&host)?;
        if vol == "secret" {
            for (k, v) in secret["stringData"].as_object().context("stringData")? {
                std::fs::write(host.join(k), v.as_str().unwrap_or(""))?;
            }
        }
        mounts.push((path.to_owned(), host.to_str().unwrap().to_owned()));
    }
    let map_paths = |s: &str| -> String {
        let mut out = s.to_owned();
        for (path, host) in &mounts {
            out = out.replace(&format!("{path}/"), &format!("{host}/"));
            if out.ends_with(path.as_str()) {
                out = format!("{}{host}", &out[..out.len() - path.len()]);
            }
        }
        out
    };
    let mut env = BTreeMap::new();
    for (k, v) in config["data"].as_object().context("configmap data")? {
        env.insert(k.clone(), v.as_str().unwrap_or("").to_owned());
    }
    for e in c["env"].as_array().context("env")? {
        let key = e["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            name.to_owned()
        } else if let Some(k) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            secret["stringData"][k].as_str().unwrap_or("").to_owned()
        } else {
            bail!("env {key}: a source this emulation does not know")
        };
        env.insert(key, map_paths(&value));
    }
    // $(VAR) in the arguments comes from the container's environment.
    let expand = |s: &str| -> String {
        let mut out = s.to_owned();
        for (k, v) in &env {
            out = out.replace(&format!("$({k})"), v);
        }
        map_paths(&out)
    };
    let mut argv: Vec<String> = c["command"]
        .as_array()
        .context("command")?
        .iter()
        .chain(c["args"].as_array().context("args")?)
        .map(|a| expand(a.as_str().unwrap()))
        .collect();
    assert_eq!(argv[0], "shoal");
    // The image's binary, where the pod user may run it.
    let image = volumes.join("shoal");
    if std::fs::hard_link(shoal_bin(), &image).is_err() {
        std::fs::copy(shoal_bin(), &image)?;
    }
    argv[0] = image.to_str().unwrap().to_owned();
    let security = &set["spec"]["template"]["spec"]["securityContext"];
    let id = |key: &str| -> Result<u32> {
        c["securityContext"][key]
            .as_u64()
            .or_else(|| security[key].as_u64())
            .map(|v| v as u32)
            .with_context(|| format!("securityContext.{key}"))
    };
    let user = (id("runAsUser")?, id("runAsGroup")?);
    for (_, host) in &mounts {
        chown_tree(Path::new(host), user.0, user.1)?;
    }
    std::fs::set_permissions(volumes, std::fs::Permissions::from_mode(0o755))?;
    let port = |name: &str| -> Result<u16> {
        c["ports"]
            .as_array()
            .context("ports")?
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .map(|p| p as u16)
            .context("port")
    };
    Ok(PodSpec {
        argv,
        env,
        http_port: port("http")?,
        sites_port: port("sites")?,
        ready_path: c["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .context("readinessProbe")?
            .to_owned(),
        mounts,
        user,
    })
}

struct Pod {
    name: String,
    ns: String,
    ip: String,
    spec: PodSpec,
    log: PathBuf,
    child: Option<Child>,
}

impl Pod {
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // As the pod's user, with no capabilities at all, as the
        // StatefulSet's security context has it.
        let (uid, gid) = self.spec.user;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
            ])
            .args([
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .args(&self.spec.argv)
            .env_clear()
            .envs(&self.spec.env)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.spec.mounts[0].1)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}:{port}{path}", self.ip)
    }

    /// SIGTERM, as the kubelet sends; waits for the exit.
    fn terminate(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        // `ip netns exec` execs shoal, so the pid is shoal's.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = child.wait()?;
        if !status.success() {
            bail!("{} exited with {status}", self.name);
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn get(client: &reqwest::Client, url: &str, host: Option<&str>) -> Option<reqwest::Response> {
    let mut req = client.get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    req.send().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_statefulset_forms_a_mesh_and_survives_a_rolling_restart() -> Result<()> {
    if !std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }) {
        bail!(
            "this test creates network namespaces and needs root (CI runs scripts/test.sh as root)"
        );
    }
    let net = Net::new()?;
    let volumes = tempfile::tempdir()?;
    std::fs::set_permissions(volumes.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut pods = Vec::new();
    for i in 0..PODS {
        let name = format!("shoal-{i}");
        let dir = volumes.path().join(&name);
        let spec = pod_spec(&name, &dir)?;
        pods.push(Pod {
            name,
            ns: net.pod(i),
            ip: net.pod_ip(i),
            log: dir.join("pod.log"),
            spec,
            child: None,
        });
    }
    let (http, sites, ready) = (
        pods[0].spec.http_port,
        pods[0].spec.sites_port,
        pods[0].spec.ready_path.clone(),
    );
    let admin = pods[0].spec.env["SHOAL_ADMIN_TOKEN"].clone();
    let domain = pods[0].spec.env["SHOAL_SITE_DOMAIN"].clone();
    // Parallel pod management: all at once.
    for p in &mut pods {
        p.start()?;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?;
    for p in &pods {
        wait_until(
            &format!("{} ready", p.name),
            Duration::from_secs(60),
            || async {
                let res = get(&client, &p.url(http, &ready), None).await?;
                (res.status() == 200).then_some(())
            },
        )
        .await
        .with_context(|| p.log_text())?;
    }
    for p in &pods {
        // Unprivileged as in a real pod: no namespaces, no cgroups.
        let log = p.log_text();
        let line = log.lines().find(|l| l.contains("builds are sandboxed"));
        assert!(
            line.is_some_and(|l| l.ends_with("isolation=landlock + seccomp + rlimits")),
            "{} does not build in the Landlock sandbox: {line:?}",
            p.name
        );
    }
    wait_until("a mesh of 3", Duration::from_secs(30), || async {
        let peers: Vec<Value> = get(&client, &pods[0].url(http, "/api/peers"), None)
            .await?
            .json()
            .await
            .ok()?;
        let names: Vec<&str> = peers
            .iter()
            .filter(|p| p["alive"] == true)
            .filter_map(|p| p["name"].as_str())
            .collect();
        (names.len() == PODS && (0..PODS).all(|i| names.contains(&format!("shoal-{i}").as_str())))
            .then_some(())
    })
    .await?;

    // Repositories served over git-HTTP from this namespace.
    let gh = FakeGitHub::start_at(&format!("{}:0", net.host_ip()), &[("team", &[])]).await?;
    let live = Repo::new(&[("index.html", b"<h1>always up</h1>")])?;
    let live_url = gh.add_repo(
        FakeRepo {
            owner: "team".into(),
            name: "live".into(),
            private: false,
            description: String::new(),
            pushed: 1,
            default_branch: "main".into(),
        },
        Some(live.path()),
    )?;
    let slow = Repo::slow_build("12", "built during the restart")?;
    let slow_url = gh.add_repo(
        FakeRepo {
            owner: "team".into(),
            name: "slow".into(),
            private: false,
            description: String::new(),
            pushed: 2,
            default_branch: "main".into(),
        },
        Some(slow.path()),
    )?;
    let apis: Vec<String> = pods.iter().map(|p| p.url(http, "/api")).collect();
    let deploy = |url: String, name: &'static str| {
        let (client, api, admin) = (
            client.clone(),
            format!("{}/deployments", apis[0]),
            admin.clone(),
        );
        async move {
            let res = client
                .post(api)
                .bearer_auth(admin)
                .json(&json!({"repo_url": url, "name": name}))
                .send()
                .await?;
            anyhow::ensure!(res.status() == 202, "deploy: {}", res.status());
            let body: Value = res.json().await?;
            Ok::<String, anyhow::Error>(body["id"].as_str().unwrap().to_owned())
        }
    };
    let status = |i: usize, id: String| {
        let (client, url) = (client.clone(), format!("{}/deployments/{id}", apis[i]));
        async move {
            let d: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            d["status"].as_str().map(str::to_owned)
        }
    };
    let live_id = deploy(live_url, "live").await?;
    wait_until("the live site succeeds", Duration::from_secs(60), || {
        let asked = status(0, live_id.clone());
        async move { (asked.await? == "success").then_some(()) }
    })
    .await?;
    let host = format!("live.{domain}");
    for p in &pods {
        let (url, host) = (p.url(sites, "/"), host.clone());
        wait_until(
            &format!("{} serves the site", p.name),
            Duration::from_secs(60),
            || {
                let (client, url, host) = (client.clone(), url.clone(), host.clone());
                async move {
                    let res = get(&client, &url, Some(&host)).await?;
                    let body = res.text().await.ok()?;
                    body.contains("always up").then_some(())
                }
            },
        )
        .await?;
    }

    // A client keeps asking every pod for the site; failures count against
    // the pods that are not being restarted.
    let restarting = Arc::new(AtomicUsize::new(usize::MAX));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = pods.iter().map(|p| p.url(sites, "/")).collect();
    let requester = {
        let (restarting, failures, served, stop, client, host) = (
            restarting.clone(),
            failures.clone(),
            served.clone(),
            stop.clone(),
            client.clone(),
            host.clone(),
        );
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (i, url) in urls.iter().enumerate() {
                    if restarting.load(Ordering::SeqCst) == i {
                        continue;
                    }
                    let ok = match get(&client, url, Some(&host)).await {
                        Some(r) if r.status() == 200 => {
                            r.text().await.is_ok_and(|b| b.contains("always up"))
                        }
                        _ => false,
                    };
                    // A restart that began while this request was out does not count.
                    if restarting.load(Ordering::SeqCst) == i {
                        continue;
                    }
                    if ok {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("pod {i}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            errors
        })
    };

    // A deployment builds while the pods restart, highest ordinal first.
    let slow_id = deploy(slow_url, "slow").await?;
    wait_until("the slow build starts", Duration::from_secs(30), || {
        let asked = status(0, slow_id.clone());
        async move { (asked.await? == "building").then_some(()) }
    })
    .await?;
    for i in (0..PODS).rev() {
        restarting.store(i, Ordering::SeqCst);
        pods[i].terminate()?;
        pods[i].start()?;
        let p = &pods[i];
        wait_until(
            &format!("{} ready again", p.name),
            Duration::from_secs(90),
            || async {
                let res = get(&client, &p.url(http, &ready), None).await?;
                (res.status() == 200).then_some(())
            },
        )
        .await
        .with_context(|| p.log_text())?;
        restarting.store(usize::MAX, Ordering::SeqCst);
    }
    let end = wait_until(
        "the slow deployment ends",
        Duration::from_secs(120),
        || async {
            let s = status(0, slow_id.clone()).await?;
            ["success", "buildFailed", "distributionFailed", "canceled"]
                .contains(&s.as_str())
                .then_some(s)
        },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    let errors = requester.await?;
    assert_eq!(end, "success", "{}", pods[0].log_text());
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests on pods not being restarted: {errors:?}"
    );
    let served = served.load(Ordering::Relaxed);
    let slow_log: Value = client
        .get(format!("{}/deployments/{slow_id}/logs", apis[0]))
        .send()
        .await?
        .json()
        .await?;
    let handovers = slow_log
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("is shutting down"))
        })
        .count();
    eprintln!(
        "rolling restart: {served} requests served by the pods not restarting, 0 failed; \
         builds handed over: {handovers}"
    );
    assert!(served > 50, "the client kept asking");

    // Nothing lost: every pod knows both deployments as successful and
    // serves both sites.
    for (i, p) in pods.iter().enumerate() {
        for id in [&live_id, &slow_id] {
            wait_until(
                &format!("{} knows {id}", p.name),
                Duration::from_secs(30),
                || async { (status(i, id.clone()).await? == "success").then_some(()) },
            )
            .await?;
        }
        let url = p.url(sites, "/");
        wait_until(
            &format!("{} serves the new site", p.name),
            Duration::from_secs(30),
            || async {
                let res = get(&client, &url, Some(&format!("slow.{domain}"))).await?;
                res.text()
                    .await
                    .ok()?
                    .contains("built during the restart")
                    .then_some(())
            },
        )
        .await?;
        assert!(
            p.log_text().contains("draining"),
            "{} drained on SIGTERM",
            p.name
        );
    }
    Ok(())
}

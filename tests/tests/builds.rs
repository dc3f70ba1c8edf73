//! Builds of real repositories in the real sandbox: custom commands, npm,
//! refs, commits and submodules, failures and the sandbox's limits.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use std::time::Duration;
use tests::{wait_until, Peer, Repo, BUILD, TOKEN};

#[tokio::test]
async fn shoal_toml_build_runs_in_the_sandbox_and_its_output_is_served() {
    let repo = Repo::new(&[(
        "shoal.toml",
        b"[build]\ncommand = \"mkdir -p out/a && echo \\\"built at $SHOAL_LIVE_URL\\\" > out/index.html && echo nested > out/a/b.txt && ln -s /etc/passwd out/passwd.txt && echo building-now && ls /root 2>&1; test ! -e /root\"\noutput = \"out\"\n",
    )])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let (id, d) = peer.deploy_and_wait(repo.path(), "custom").await.unwrap();
    let log = peer.log_text(&id).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(log.contains("[detect] detected shoal.toml"), "{log}");
    assert!(
        log.contains("[build] building-now"),
        "build output is captured:\n{log}"
    );
    assert!(log.contains("left out passwd.txt"), "{log}");
    let home = peer
        .site("custom", "/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        home.trim(),
        format!("built at {}", d["live_url"].as_str().unwrap())
    );
    assert_eq!(
        peer.site("custom", "/a/b.txt")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "nested\n"
    );
    assert_eq!(
        peer.site("custom", "/passwd.txt").await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn failing_builds_end_in_build_failed_with_the_reason_in_the_log() {
    let failing = Repo::new(&[(
        "shoal.toml",
        b"[build]\ncommand = \"echo compiling; echo boom-output >&2; exit 3\"\noutput = \"out\"\n",
    )])
    .unwrap();
    let no_index = Repo::new(&[(
        "shoal.toml",
        b"[build]\ncommand = \"mkdir -p out && echo x > out/page.html\"\noutput = \"out\"\n",
    )])
    .unwrap();
    let unknown = Repo::new(&[("README.md", b"nothing to build")]).unwrap();
    let no_tool = Repo::new(&[
        ("zola.toml", b"base_url = \"x\"\n"),
        ("content/_index.md", b"# hi"),
    ])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let cases = [
        (&failing, "failing", "exited with status 3", "boom-output"),
        (
            &no_index,
            "noindex",
            "build produced no index.html",
            "[pack]",
        ),
        (
            &unknown,
            "unknown",
            "could not tell how to build",
            "[detect]",
        ),
        (
            &no_tool,
            "notool",
            "zola is not installed on this peer",
            "[detect]",
        ),
    ];
    let mut ids = Vec::new();
    for (repo, name, _, _) in &cases {
        ids.push(peer.deploy(repo.path(), name).await.unwrap());
    }
    for (id, (_, name, error, in_log)) in ids.iter().zip(cases) {
        let d = peer.wait_final(id, BUILD).await.unwrap();
        let log = peer.log_text(id).await.unwrap();
        assert_eq!(d["status"], "buildFailed", "{name}: {d}");
        assert!(d["error"].as_str().unwrap().contains(error), "{name}: {d}");
        if in_log != "[pack]" {
            assert!(log.contains(in_log), "{name}: {in_log} not in\n{log}");
        }
        assert!(log.contains(error), "{name}: reason not logged\n{log}");
        assert_eq!(
            peer.site(name, "/").await.unwrap().status(),
            404,
            "{name} must not be served"
        );
    }
}

#[tokio::test]
async fn a_build_over_its_time_limit_is_killed() {
    // A sleep whose command line no other test uses.
    let marker = format!("sleep {}", 1000 + std::process::id() % 9000);
    let toml = format!("[build]\ncommand = \"echo started; {marker}\"\noutput = \".\"\n");
    let repo = Repo::new(&[("shoal.toml", toml.as_bytes()), ("index.html", b"x")]).unwrap();
    let peer = Peer::start(&["--build-timeout", "2s"]).await.unwrap();
    let id = peer.deploy(repo.path(), "slow").await.unwrap();
    let d = peer.wait_final(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(d["status"], "buildFailed");
    assert!(d["error"].as_str().unwrap().contains("time limit"), "{d}");
    // Nothing of the build survives.
    wait_until(
        "the sandboxed sleep to be gone",
        Duration::from_secs(10),
        || {
            let marker = marker.clone();
            async move {
                let ps = std::process::Command::new("ps")
                    .args(["-eo", "args"])
                    .output()
                    .ok()?;
                (!String::from_utf8_lossy(&ps.stdout)
                    .lines()
                    .any(|l| l.trim() == marker))
                .then_some(())
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn same_commit_packs_to_the_same_artifact_and_refs_and_commits_are_honoured() {
    let repo = Repo::new(&[("index.html", b"one"), ("a/b/c.txt", b"deep")]).unwrap();
    let first_commit = repo.git(&["rev-parse", "HEAD"]).unwrap();
    repo.git(&["checkout", "-q", "-b", "feature"]).unwrap();
    repo.commit(&[("index.html", b"feature")], "feature")
        .unwrap();
    repo.git(&["checkout", "-q", "main"]).unwrap();
    repo.commit(&[("index.html", b"two")], "second").unwrap();
    repo.git(&["tag", "v2"]).unwrap();
    let peer = Peer::start(&[]).await.unwrap();

    let deploy = |body: serde_json::Value| {
        let peer = &peer;
        async move {
            let (status, d) = peer.post_deployment(&body).await.unwrap();
            assert_eq!(status, 202, "{d}");
            peer.wait_final(d["id"].as_str().unwrap(), BUILD)
                .await
                .unwrap()
        }
    };
    let url = repo.path().to_str().unwrap();
    let a = deploy(json!({"repo_url": url, "name": "det", "commit": first_commit})).await;
    let b = deploy(json!({"repo_url": url, "name": "det", "commit": first_commit})).await;
    assert_eq!(a["status"], "success");
    assert_eq!(a["artifact"], b["artifact"], "same commit, same bytes");
    assert_eq!(
        peer.site("det", "/").await.unwrap().text().await.unwrap(),
        "one"
    );

    let f = deploy(json!({"repo_url": url, "name": "det", "ref": "feature"})).await;
    assert_eq!(f["status"], "success");
    assert_ne!(f["artifact"], a["artifact"]);
    assert_eq!(
        peer.site("det", "/").await.unwrap().text().await.unwrap(),
        "feature"
    );
    let t = deploy(json!({"repo_url": url, "name": "det", "ref": "v2"})).await;
    assert_eq!(
        peer.site("det", "/").await.unwrap().text().await.unwrap(),
        "two"
    );
    assert_eq!(
        t["commit"].as_str().unwrap(),
        repo.git(&["rev-parse", "HEAD"]).unwrap()
    );

    let missing = deploy(json!({"repo_url": url, "name": "det", "ref": "no-such-branch"})).await;
    assert_eq!(missing["status"], "buildFailed");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("'no-such-branch' does not exist"),
        "{missing}"
    );
    let gone = deploy(json!({"repo_url": url, "name": "det", "commit": "0".repeat(40)})).await;
    assert_eq!(gone["status"], "buildFailed");
    assert!(
        gone["error"]
            .as_str()
            .unwrap()
            .contains("is not in the repository"),
        "{gone}"
    );
    let nowhere = deploy(json!({"repo_url": "/nonexistent/repo", "name": "det"})).await;
    assert_eq!(nowhere["status"], "buildFailed");
    // A failed deployment leaves the live version alone.
    assert_eq!(
        peer.site("det", "/").await.unwrap().text().await.unwrap(),
        "two"
    );
}

#[tokio::test]
async fn submodules_are_checked_out_and_checked() {
    let theme = Repo::new(&[("style.css", b"theme-css")]).unwrap();
    let site = Repo::new(&[("index.html", b"with theme")]).unwrap();
    site.git(&[
        "submodule",
        "add",
        "-q",
        theme.path().to_str().unwrap(),
        "theme",
    ])
    .unwrap();
    site.commit(&[], "add theme").unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let (id, d) = peer.deploy_and_wait(site.path(), "themed").await.unwrap();
    assert_eq!(
        d["status"],
        "success",
        "{}",
        peer.log_text(&id).await.unwrap()
    );
    assert_eq!(
        peer.site("themed", "/theme/style.css")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "theme-css"
    );

    // A submodule pointing at a refused transport fails the build, clearly.
    let evil = Repo::new(&[
        ("index.html", b"evil"),
        (
            ".gitmodules",
            b"[submodule \"x\"]\n\tpath = x\n\turl = ext::sh -c touch% /tmp/shoal-pwned\n",
        ),
    ])
    .unwrap();
    let blob = theme.git(&["rev-parse", "HEAD"]).unwrap();
    evil.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{blob},x"),
    ])
    .unwrap();
    evil.git(&["commit", "-q", "-m", "gitlink"]).unwrap();
    let (_, d) = peer.deploy_and_wait(evil.path(), "evil").await.unwrap();
    assert_eq!(d["status"], "buildFailed");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("submodule 'x' refused"),
        "{d}"
    );
    assert!(!std::path::Path::new("/tmp/shoal-pwned").exists());
}

#[tokio::test]
async fn the_bubblewrap_sandbox_caps_processes_and_memory_and_hides_the_peer() {
    sandbox_caps_and_hides("bubblewrap").await;
}

/// The sandbox of unprivileged pods (no namespaces): Landlock, seccomp,
/// rlimits, and here cgroups too.
#[tokio::test]
async fn the_landlock_sandbox_caps_processes_and_memory_and_hides_the_peer() {
    sandbox_caps_and_hides("landlock").await;
}

async fn sandbox_caps_and_hides(kind: &str) {
    let peer = Peer::start(&[
        "--sandbox",
        kind,
        "--build-pids",
        "48",
        "--build-memory-mb",
        "96",
    ])
    .await
    .unwrap();
    assert!(
        peer.log().contains(&format!("isolation={kind}")),
        "{kind} is not in use:\n{}",
        peer.log()
    );
    let healthz = format!("{}/healthz", peer.http);
    let data = peer.data.path().join("data");
    let pid = peer.pid().unwrap();
    let probe = format!(
        "[build]\n\
         install = \"curl -s -m 5 -o /dev/null -w '%{{http_code}}' {healthz} > install-net.txt || true\"\n\
         command = \"mkdir -p out && mv install-net.txt out/ && (curl -s -m 5 -o /dev/null -w '%{{http_code}}' {healthz} || true) > out/build-net.txt && env > out/env.txt && (ls {data} >/dev/null 2>&1 && echo visible || echo hidden) > out/data.txt && (kill -0 {pid} 2>/dev/null && echo reached || echo safe) > out/signal.txt && (cat /proc/{pid}/environ >/dev/null 2>&1 && echo read || echo safe) > out/environ.txt && echo ok > out/index.html\"\n\
         output = \"out\"\n",
        data = data.display()
    );
    let probe = Repo::new(&[("shoal.toml", probe.as_bytes())]).unwrap();
    let forks = Repo::new(&[("shoal.toml", b"[build]\ncommand = \"i=0; while [ $i -lt 200 ]; do sleep 20 & i=$((i+1)); done; wait\"\noutput = \".\"\n"), ("index.html", b"x")]).unwrap();
    let hog = Repo::new(&[("shoal.toml", b"[build]\ncommand = \"perl -e '$x = 7 x (400*1024*1024); print length $x'\"\noutput = \".\"\n"), ("index.html", b"x")]).unwrap();

    let (id, d) = peer.deploy_and_wait(probe.path(), "probe").await.unwrap();
    assert_eq!(
        d["status"],
        "success",
        "{}",
        peer.log_text(&id).await.unwrap()
    );
    let peer_ref = &peer;
    let get = |path: &'static str| async move {
        peer_ref
            .site("probe", path)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert_eq!(
        get("/install-net.txt").await,
        "200",
        "the install step may use the network"
    );
    assert_eq!(
        get("/build-net.txt").await,
        "000",
        "the build step must not"
    );
    let env = get("/env.txt").await;
    assert!(
        !env.contains(TOKEN),
        "the admin token leaked into the build: {env}"
    );
    assert!(
        env.contains("SHOAL_LIVE_URL=http://probe.localhost:"),
        "{env}"
    );
    assert_eq!(
        get("/data.txt").await.trim(),
        "hidden",
        "the peer's data directory is visible in the sandbox"
    );
    assert_eq!(
        get("/signal.txt").await.trim(),
        "safe",
        "a build can signal the peer"
    );
    assert_eq!(
        get("/environ.txt").await.trim(),
        "safe",
        "a build can read the peer's environment"
    );

    let started = std::time::Instant::now();
    let (_, d) = peer.deploy_and_wait(forks.path(), "forks").await.unwrap();
    assert_eq!(
        d["status"], "buildFailed",
        "the process cap must stop a fork storm"
    );
    assert!(d["error"].as_str().unwrap().contains("process cap"), "{d}");
    assert!(
        started.elapsed() < Duration::from_secs(19),
        "the failed build must not wait for its children"
    );

    let (id, d) = peer.deploy_and_wait(hog.path(), "hog").await.unwrap();
    assert_eq!(
        d["status"],
        "buildFailed",
        "{}",
        peer.log_text(&id).await.unwrap()
    );
    assert!(
        d["error"].as_str().unwrap().contains("ran out of memory"),
        "{d}\n{}",
        peer.log()
    );
}

#[tokio::test]
async fn an_npm_project_installs_and_builds_with_its_scripts() {
    let repo = Repo::new(&[
        ("package.json", br#"{"name":"site","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}"#),
        (
            "build.js",
            b"const fs = require('fs');\nfs.mkdirSync('dist', { recursive: true });\nfs.writeFileSync('dist/index.html', 'node ' + process.version + ' for ' + process.env.SHOAL_LIVE_URL);\nconsole.log('wrote dist/index.html');\n",
        ),
    ])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let (id, d) = peer.deploy_and_wait(repo.path(), "npm-site").await.unwrap();
    let log = peer.log_text(&id).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(log.contains("[detect] detected npm (node)"), "{log}");
    assert!(
        log.contains("[install] $ npm install --include=dev --no-audit"),
        "{log}"
    );
    assert!(log.contains("[build] wrote dist/index.html"), "{log}");
    let page = peer
        .site("npm-site", "/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.starts_with("node v") && page.ends_with(d["live_url"].as_str().unwrap()),
        "{page}"
    );
}

/// A monorepo: the base directory comes from the deployment (API), else
/// from the repository's shoal.toml; the project keeps it for its next
/// deployments; one outside the repository is refused.
/// Deploys `repo` as `name` built in base directory `root`; waits until
/// it ends.
async fn deploy_in(
    peer: &Peer,
    repo: &std::path::Path,
    name: &str,
    root: &str,
) -> serde_json::Value {
    let (status, body) = peer
        .post_deployment(&json!({"repo_url": repo, "name": name, "root_dir": root}))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    peer.wait_final(body["id"].as_str().unwrap(), BUILD)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_base_directory_builds_one_app_of_a_monorepo() {
    let repo = Repo::new(&[
        ("index.html", b"the repository's top".as_slice()),
        ("apps/docs/index.html", b"the docs app"),
        (
            "apps/web/shoal.toml",
            b"[build]\ncommand = \"mkdir -p out && echo built in $(basename $PWD) > out/index.html\"\noutput = \"out\"\n",
        ),
    ])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let d = deploy_in(&peer, repo.path(), "docs", "apps/docs").await;
    let log = peer.log_text(d["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(
        log.contains("[detect] detected static HTML in apps/docs/"),
        "{log}"
    );
    let page = peer.site("docs", "/").await.unwrap().text().await.unwrap();
    assert_eq!(page, "the docs app");
    // The project remembers it: a redeploy without root_dir builds the same app.
    let project = peer.get_json("/api/projects/docs").await.unwrap();
    assert_eq!(project["root_dir"], "apps/docs");
    let (_, again) = peer.deploy_and_wait(repo.path(), "docs").await.unwrap();
    assert_eq!(again["status"], "success");
    assert_eq!(
        peer.site("docs", "/").await.unwrap().text().await.unwrap(),
        "the docs app"
    );

    // The base directory's own shoal.toml, its command run there.
    let d = deploy_in(&peer, repo.path(), "web", "apps/web").await;
    assert_eq!(d["status"], "success");
    let page = peer.site("web", "/").await.unwrap().text().await.unwrap();
    assert_eq!(page.trim(), "built in web");

    // Outside the repository, or not there: refused, or a clear failure.
    for bad in ["../etc", "/etc", "apps/../../x"] {
        let (status, body) = peer
            .post_deployment(&json!({"repo_url": repo.path(), "name": "bad", "root_dir": bad}))
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_root_dir", "{body}");
    }
    let d = deploy_in(&peer, repo.path(), "missing", "apps/nope").await;
    assert_eq!(d["status"], "buildFailed");
    assert_eq!(
        d["error"],
        "the base directory apps/nope is not a directory of the repository"
    );
}

//! One real peer, real git repositories, real builds, real HTTP: the path
//! from a git URL to a live site, and everything that must go wrong safely.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use std::io::{Read, Write};
use std::time::Duration;
use tests::{wait_until, Peer, Repo, TOKEN};

const BUILD: Duration = Duration::from_secs(60);

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
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

#[tokio::test]
async fn plain_html_site_goes_live_and_is_served_byte_for_byte() {
    let blob = random_bytes(300_000, 7);
    let long_page = "<p>the same paragraph, again and again</p>\n".repeat(400);
    let repo = Repo::new(&[
        ("index.html", b"<h1>home</h1>"),
        ("about.html", b"<h1>about</h1>"),
        ("docs/index.html", b"<h1>docs</h1>"),
        ("404.html", b"<h1>custom 404</h1>"),
        ("assets/app.css", b"body { color: red }"),
        ("assets/blob.bin", &blob),
        ("long.html", long_page.as_bytes()),
        (".env", b"SECRET=1"),
    ])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let (status, body) = peer
        .post_deployment(&json!({"repo_url": repo.path()}))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["id"].as_str().unwrap().to_owned();
    let name = body["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with(".tmp") || !name.is_empty());
    let d = peer.wait_final(&id, BUILD).await.unwrap();
    assert_eq!(
        d["status"],
        "success",
        "{d}\n{}",
        peer.log_text(&id).await.unwrap()
    );
    assert_eq!(
        d["commit"].as_str().unwrap(),
        repo.git(&["rev-parse", "HEAD"]).unwrap()
    );
    assert_eq!(d["artifact"].as_str().unwrap().len(), 64);
    assert!(d["builder"].is_string());
    let port = peer.sites.rsplit(':').next().unwrap();
    assert_eq!(d["live_url"], format!("http://{name}.localhost:{port}/"));

    // Every step left a line.
    let log = peer.log_text(&id).await.unwrap();
    for step in [
        "[queue]", "[clone]", "[detect]", "[pack]", "[unpack]", "[live]",
    ] {
        assert!(log.contains(step), "no {step} line in\n{log}");
    }

    // By Host header and by /d/<name>/, byte for byte.
    for (path, want) in [
        ("/", &b"<h1>home</h1>"[..]),
        ("/assets/blob.bin", &blob[..]),
        ("/about", b"<h1>about</h1>"),
    ] {
        let res = peer.site(&name, path).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(&res.bytes().await.unwrap()[..], want, "{path} by host");
        let res = peer
            .client()
            .get(format!("{}/d/{name}{path}", peer.sites))
            .send()
            .await
            .unwrap();
        assert_eq!(&res.bytes().await.unwrap()[..], want, "{path} by prefix");
    }
    let css = peer.site(&name, "/assets/app.css").await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css");

    // Directories get their slash, missing pages the site's own 404, dotfiles nothing.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_redirect
        .get(format!("{}/docs?x=1", peer.sites))
        .header("host", format!("{name}.localhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 301);
    assert_eq!(res.headers()["location"], "/docs/?x=1");
    assert_eq!(
        peer.site(&name, "/docs/")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "<h1>docs</h1>"
    );
    let res = peer.site(&name, "/missing").await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), "<h1>custom 404</h1>");
    assert_eq!(peer.site(&name, "/.env").await.unwrap().status(), 404);
    assert_eq!(peer.site("nosuchsite", "/").await.unwrap().status(), 404);

    // Conditional and partial requests.
    let res = peer.site(&name, "/assets/blob.bin").await.unwrap();
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(res.headers().contains_key("last-modified"));
    let res = peer
        .client()
        .get(format!("{}/assets/blob.bin", peer.sites))
        .header("host", format!("{name}.localhost"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    let res = peer
        .client()
        .get(format!("{}/assets/blob.bin", peer.sites))
        .header("host", format!("{name}.localhost"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(&res.bytes().await.unwrap()[..], &blob[100..200]);

    // Text is compressed for clients that ask.
    for encoding in ["gzip", "br"] {
        let page = peer
            .client()
            .get(format!("{}/long.html", peer.sites))
            .header("host", format!("{name}.localhost"))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-encoding"], encoding);
        assert!(page.bytes().await.unwrap().len() < long_page.len() / 5);
    }

    // Metrics count what was served.
    let metrics = peer
        .client()
        .get(format!("{}/metrics", peer.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shoal_deployments{status=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_build_duration_seconds_count 1"),
        "{metrics}"
    );
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_site_bytes_served_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(served >= blob.len() as u64 * 2, "{served}");
}

/// Sends a raw request line, bypassing any client-side path normalisation.
fn raw_get(addr: &str, target: &str, host: &str) -> String {
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

#[tokio::test]
async fn path_traversal_on_the_sites_port_finds_nothing() {
    let repo = Repo::new(&[("index.html", b"home"), ("sub/page.html", b"page")]).unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let id = peer.deploy(repo.path(), "trav").await.unwrap();
    assert_eq!(
        peer.wait_final(&id, BUILD).await.unwrap()["status"],
        "success"
    );
    let sites = peer.sites.clone();
    for target in [
        "/../../../../etc/passwd",
        "/sub/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/sub/%2e%2e%2f%2e%2e%2fetc/passwd",
        "/..%2f..%2fetc/passwd",
        "/%00",
        "/sub/..\\..\\etc\\passwd",
    ] {
        for host in ["trav.localhost", "127.0.0.1"] {
            let path = if host == "127.0.0.1" {
                format!("/d/trav{target}")
            } else {
                target.to_owned()
            };
            let res = tokio::task::spawn_blocking({
                let (s, p, h) = (sites.clone(), path.clone(), host.to_owned());
                move || raw_get(&s, &p, &h)
            })
            .await
            .unwrap();
            let status = res.lines().next().unwrap_or_default().to_owned();
            assert!(
                status.contains(" 404 ") || status.contains(" 400 "),
                "{path} via {host}: {status}"
            );
            assert!(!res.contains("root:"), "{path} leaked /etc/passwd");
        }
    }
    // And the data directory next to the site is out of reach too.
    let res = raw_get(&sites, "/d/trav/../../../admin-token", "127.0.0.1");
    assert!(!res.contains(TOKEN));
}

#[tokio::test]
async fn bad_input_is_refused_with_400_and_nothing_is_stored() {
    let peer = Peer::start(&[]).await.unwrap();
    let strict = Peer::start_without_local().await;
    let cases = [
        json!({"repo_url": "ext::sh -c touch% /tmp/pwned"}),
        json!({"repo_url": "fd::17"}),
        json!({"repo_url": "-u/tmp/x"}),
        json!({"repo_url": "ssh://git@example.com/a/b.git"}),
        json!({"repo_url": "git@example.com:a/b.git"}),
        json!({"repo_url": "ftp://example.com/a.git"}),
        json!({"repo_url": "https://user:secret@example.com/a.git"}),
        json!({"repo_url": "https://example.com/a.git", "name": "Bad_Name"}),
        json!({"repo_url": "https://example.com/a.git", "name": "-x"}),
        json!({"repo_url": "https://example.com/a.git", "name": "a".repeat(64)}),
        json!({"repo_url": "https://example.com/a.git", "ref": "--upload-pack=x"}),
        json!({"repo_url": "https://example.com/a.git", "ref": "a..b"}),
        json!({"repo_url": "https://example.com/a.git", "commit": "abc"}),
        json!({"repo_url": ""}),
        json!({"name": "x"}),
        json!({"repo_url": 5}),
    ];
    for body in &cases {
        let (status, res) = peer.post_deployment(body).await.unwrap();
        assert_eq!(status, 400, "{body} -> {res}");
        assert!(
            res["error"].is_string() && res["detail"].is_string(),
            "{res}"
        );
    }
    // Local repositories need --allow-local-repos.
    for url in ["/srv/repo", "file:///srv/repo"] {
        let (status, res) = strict
            .post_deployment(&json!({"repo_url": url}))
            .await
            .unwrap();
        assert_eq!(status, 400, "{url}: {res}");
        assert!(res["detail"]
            .as_str()
            .unwrap()
            .contains("--allow-local-repos"));
    }
    // Not JSON at all.
    let res = peer
        .client()
        .post(format!("{}/api/deployments", peer.http))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Too large.
    let huge = "x".repeat(70_000);
    let res = peer
        .client()
        .post(format!("{}/api/deployments", peer.http))
        .bearer_auth(TOKEN)
        .json(&json!({"repo_url": huge}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // No token, or a wrong one.
    let res = peer
        .client()
        .post(format!("{}/api/deployments", peer.http))
        .json(&json!({"repo_url": "https://example.com/a.git"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = peer
        .client()
        .post(format!("{}/api/deployments", peer.http))
        .bearer_auth("wrong")
        .json(&json!({"repo_url": "https://example.com/a.git"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(peer.deployments().await.unwrap().is_empty());
    assert!(strict.deployments().await.unwrap().is_empty());
    // Unknown ids are 404 with the error shape.
    let res = peer
        .client()
        .get(format!("{}/api/deployments/nope", peer.http))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let spec = peer.get_json("/api/openapi.json").await.unwrap();
    assert!(spec["paths"]["/api/deployments"]["post"].is_object());
}

#[tokio::test]
async fn shoal_toml_build_runs_in_the_sandbox_and_its_output_is_served() {
    let repo = Repo::new(&[(
        "shoal.toml",
        b"[build]\ncommand = \"mkdir -p out/a && echo \\\"built at $SHOAL_LIVE_URL\\\" > out/index.html && echo nested > out/a/b.txt && ln -s /etc/passwd out/passwd.txt && echo building-now && ls /root 2>&1; test ! -e /root\"\noutput = \"out\"\n",
    )])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let id = peer.deploy(repo.path(), "custom").await.unwrap();
    let d = peer.wait_final(&id, BUILD).await.unwrap();
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
async fn deployments_survive_a_restart_and_an_interrupted_build_is_redone() {
    let done = Repo::new(&[("index.html", b"v1")]).unwrap();
    let slow = Repo::new(&[
        ("shoal.toml", b"[build]\ncommand = \"echo slow-build-started; sleep 4; mkdir -p out; echo slow > out/index.html\"\noutput = \"out\"\n"),
    ])
    .unwrap();
    let mut peer = Peer::start(&[]).await.unwrap();
    let first = peer.deploy(done.path(), "kept").await.unwrap();
    assert_eq!(
        peer.wait_final(&first, BUILD).await.unwrap()["status"],
        "success"
    );

    // Graceful restart: everything is still there and served.
    peer.restart(true).await.unwrap();
    let d = peer.deployment(&first).await.unwrap();
    assert_eq!(d["status"], "success");
    assert_eq!(
        peer.site("kept", "/").await.unwrap().text().await.unwrap(),
        "v1"
    );
    assert!(!peer.log_text(&first).await.unwrap().is_empty());

    // Crash in the middle of a build: the build is picked up again.
    let id = peer.deploy(slow.path(), "slow").await.unwrap();
    wait_until("the slow build to start", BUILD, || async {
        peer.log_text(&id)
            .await
            .ok()
            .filter(|l| l.contains("slow-build-started"))
    })
    .await
    .unwrap();
    peer.restart(false).await.unwrap();
    let d = peer.wait_final(&id, BUILD).await.unwrap();
    let log = peer.log_text(&id).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(log.contains("building again (epoch 2)"), "{log}");
    assert_eq!(
        peer.site("slow", "/").await.unwrap().text().await.unwrap(),
        "slow\n"
    );
    assert_eq!(peer.deployments().await.unwrap().len(), 2);
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
    let id = peer.deploy(site.path(), "themed").await.unwrap();
    let d = peer.wait_final(&id, BUILD).await.unwrap();
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
    let id = peer.deploy(evil.path(), "evil").await.unwrap();
    let d = peer.wait_final(&id, BUILD).await.unwrap();
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
async fn live_logs_stream_until_the_deployment_ends() {
    let repo = Repo::new(&[("shoal.toml", b"[build]\ncommand = \"for i in 1 2 3; do echo tick-$i; sleep 0.3; done; mkdir -p o; echo ok > o/index.html\"\noutput = \"o\"\n")]).unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let id = peer.deploy(repo.path(), "stream").await.unwrap();
    let res = peer
        .client()
        .get(format!("{}/api/deployments/{id}/logs", peer.http))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    // The stream closes by itself when the deployment ends.
    let body = tokio::time::timeout(BUILD, res.text())
        .await
        .expect("stream must end")
        .unwrap();
    for needle in [
        "tick-1",
        "tick-3",
        "\"status\":\"success\"",
        "event: end",
        "live at",
    ] {
        assert!(body.contains(needle), "{needle} missing from\n{body}");
    }
    assert_eq!(body.matches("tick-2").count(), 1, "no duplicates");
}

#[tokio::test]
async fn the_cli_deploys_and_waits() {
    let repo = Repo::new(&[("index.html", b"cli")]).unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let out = tokio::process::Command::new(tests::shoal_bin())
        .args([
            "deploy",
            repo.path().to_str().unwrap(),
            "--name",
            "cli",
            "--wait",
            "--peer",
            &peer.http,
        ])
        .env("SHOAL_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("live at http://cli.localhost:"), "{stdout}");
    assert!(stdout.contains("[clone]"), "the log is followed: {stdout}");
    let status = tokio::process::Command::new(tests::shoal_bin())
        .args(["status", "--peer", &peer.http])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("success"));
    let bad = tokio::process::Command::new(tests::shoal_bin())
        .args(["deploy", "ext::sh", "--peer", &peer.http])
        .env("SHOAL_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_repo_url"));
}

#[tokio::test]
async fn the_ui_lists_deployments_and_shows_one() {
    let repo = Repo::new(&[("index.html", b"ui")]).unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let id = peer.deploy(repo.path(), "ui-site").await.unwrap();
    peer.wait_final(&id, BUILD).await.unwrap();
    let home = peer
        .client()
        .get(&peer.http)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        home.contains("ui-site") && home.contains("badge success"),
        "{home}"
    );
    let page = peer
        .client()
        .get(format!("{}/deployments/{id}", peer.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("data-deployment='{id}'")), "{page}");
    let health = peer
        .client()
        .get(format!("{}/healthz", peer.http))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_sandbox_caps_processes_and_memory_and_hides_the_peer() {
    let peer = Peer::start(&["--build-pids", "48", "--build-memory-mb", "96"])
        .await
        .unwrap();
    let healthz = format!("{}/healthz", peer.http);
    let data = peer.data.path().join("data");
    let probe = format!(
        "[build]\n\
         install = \"curl -s -m 5 -o /dev/null -w '%{{http_code}}' {healthz} > install-net.txt || true\"\n\
         command = \"mkdir -p out && mv install-net.txt out/ && (curl -s -m 5 -o /dev/null -w '%{{http_code}}' {healthz} || true) > out/build-net.txt && env > out/env.txt && (test -e {data} && echo visible || echo hidden) > out/data.txt && echo ok > out/index.html\"\n\
         output = \"out\"\n",
        data = data.display()
    );
    let probe = Repo::new(&[("shoal.toml", probe.as_bytes())]).unwrap();
    let forks = Repo::new(&[("shoal.toml", b"[build]\ncommand = \"i=0; while [ $i -lt 200 ]; do sleep 20 & i=$((i+1)); done; wait\"\noutput = \".\"\n"), ("index.html", b"x")]).unwrap();
    let hog = Repo::new(&[("shoal.toml", b"[build]\ncommand = \"perl -e '$x = 7 x (400*1024*1024); print length $x'\"\noutput = \".\"\n"), ("index.html", b"x")]).unwrap();

    let id = peer.deploy(probe.path(), "probe").await.unwrap();
    let d = peer.wait_final(&id, BUILD).await.unwrap();
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

    let started = std::time::Instant::now();
    let id = peer.deploy(forks.path(), "forks").await.unwrap();
    let d = peer.wait_final(&id, BUILD).await.unwrap();
    assert_eq!(
        d["status"], "buildFailed",
        "the process cap must stop a fork storm"
    );
    assert!(d["error"].as_str().unwrap().contains("process cap"), "{d}");
    assert!(
        started.elapsed() < Duration::from_secs(19),
        "the failed build must not wait for its children"
    );

    let id = peer.deploy(hog.path(), "hog").await.unwrap();
    let d = peer.wait_final(&id, BUILD).await.unwrap();
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

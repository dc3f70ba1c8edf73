//! The API, CLI and UI as a client sees them: refusals, live logs, pages.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use tests::{Peer, Repo, BUILD, TOKEN};

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

    // A client that lost the connection after the line with tick-2 resumes
    // right after it.
    let ids: Vec<(&str, &str)> = body
        .split("\n\n")
        .filter_map(|ev| {
            let id = ev.lines().find_map(|l| l.strip_prefix("id: "))?;
            Some((id, ev))
        })
        .collect();
    let (after, _) = ids
        .iter()
        .find(|(_, ev)| ev.contains("tick-2"))
        .unwrap_or_else(|| panic!("{body}"));
    let res = peer
        .client()
        .get(format!("{}/api/deployments/{id}/logs", peer.http))
        .header("accept", "text/event-stream")
        .header("last-event-id", *after)
        .send()
        .await
        .unwrap();
    let resumed = tokio::time::timeout(BUILD, res.text())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !resumed.contains("tick-1") && !resumed.contains("tick-2"),
        "{resumed}"
    );
    assert!(
        resumed.contains("tick-3") && resumed.contains("event: end"),
        "{resumed}"
    );
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
    let page = peer.page(&format!("/deployments/{id}")).await;
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
async fn the_same_submission_twice_is_one_deployment() {
    let repo = Repo::new(&[(
        "shoal.toml",
        b"[build]\ncommand = \"sleep 1; mkdir -p o; echo once > o/index.html\"\noutput = \"o\"\n",
    )])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let body = json!({"repo_url": repo.path(), "name": "twice"});
    let (s1, first) = peer.post_deployment(&body).await.unwrap();
    let (s2, second) = peer.post_deployment(&body).await.unwrap();
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(
        first["id"], second["id"],
        "a retried submission must not start a second build"
    );
    assert_eq!(peer.deployments().await.unwrap().len(), 1);
    let d = peer
        .wait_final(first["id"].as_str().unwrap(), BUILD)
        .await
        .unwrap();
    assert_eq!(d["status"], "success");
    // Once it has ended, the same submission is a new deployment (a redeploy).
    let (_, third) = peer.post_deployment(&body).await.unwrap();
    assert_ne!(third["id"], first["id"]);
}

#[tokio::test]
async fn a_queued_deployment_is_canceled_before_it_is_built() {
    let peer = Peer::start(&["--max-builds", "1"]).await.unwrap();
    let slow = Repo::slow_build("29.3", "x").unwrap();
    let other = Repo::new(&[("index.html", b"never")]).unwrap();
    let first = peer.deploy(slow.path(), "busy").await.unwrap();
    peer.wait_log(&first, "slow-start", BUILD).await.unwrap();
    // The only build slot is taken: the second one waits in the queue.
    let second = peer.deploy(other.path(), "waiting").await.unwrap();
    let d = peer.deployment(&second).await.unwrap();
    assert_eq!(d["status"], "queued", "{d}");
    let page = peer.page(&format!("/deployments/{second}")).await;
    assert!(page.contains("id=cancel"), "a cancel button: {page}");
    let res = peer
        .client()
        .post(format!("{}/api/deployments/{second}/cancel", peer.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The running one through the CLI.
    let stdout = tests::cli(&["cancel", &first, "--peer", &peer.http])
        .await
        .unwrap();
    assert!(stdout.contains("canceled"), "{stdout}");
    for id in [&second, &first] {
        let d = peer.wait_final(id, BUILD).await.unwrap();
        assert_eq!(d["status"], "canceled", "{d}");
    }
    let log = peer.log_text(&second).await.unwrap();
    assert!(!log.contains("[clone]"), "never started: {log}");
    let page = peer.page(&format!("/deployments/{second}")).await;
    assert!(
        !page.contains("id=cancel"),
        "no cancel button once it ended"
    );
    assert!(peer.site_bytes("waiting", "/").await.is_none());
}

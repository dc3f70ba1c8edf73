//! Projects, rollback and promote: replicated desired state that every peer
//! reconciles towards, without rebuilding.

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::{json, Value};
use std::time::Duration;
use tests::{wait_until, Mesh, Peer, Repo, TOKEN};

async fn post(peer: &Peer, path: &str, body: &Value) -> (u16, Value) {
    let res = peer
        .client()
        .post(format!("{}{path}", peer.http))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn wait_serving(peer: &Peer, want: &[u8]) {
    wait_until(
        &format!(
            "peer {} to serve {:?}",
            peer.id,
            String::from_utf8_lossy(want)
        ),
        Duration::from_secs(15),
        || async { (peer.site_bytes("roll", "/").await? == want).then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_and_promote_switch_every_peer_without_a_rebuild() {
    let mut mesh = Mesh::start(3).await.unwrap();
    let repo = Repo::new(&[("index.html", b"v1")]).unwrap();
    let (v1, d) = mesh.peers[0]
        .deploy_and_wait(repo.path(), "roll")
        .await
        .unwrap();
    assert_eq!(d["status"], "success", "{d}");
    repo.commit(&[("index.html", b"v2")], "v2").unwrap();
    let (v2, d) = mesh.peers[1]
        .deploy_and_wait(repo.path(), "roll")
        .await
        .unwrap();
    assert_eq!(d["status"], "success", "{d}");
    for peer in &mesh.peers {
        wait_serving(peer, b"v2").await;
    }
    let project = mesh.peers[2].get_json("/api/projects/roll").await.unwrap();
    assert_eq!(project["current_deployment"], v2.as_str());
    assert_eq!(project["pinned"], false);
    assert_eq!(project["repo_url"], repo.path().to_str().unwrap());

    // Peer 2 is down while the site is rolled back; it catches up later.
    mesh.peers[2].stop(true).unwrap();
    let (status, project) = post(
        &mesh.peers[0],
        "/api/projects/roll/rollback",
        &json!({"deployment_id": v1}),
    )
    .await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["current_deployment"], v1.as_str());
    assert_eq!(project["pinned"], true);
    for peer in &mesh.peers[..2] {
        wait_serving(peer, b"v1").await;
    }
    mesh.peers[2].restart(true).await.unwrap();
    wait_serving(&mesh.peers[2], b"v1").await;

    // A new deployment succeeds but stays off while the project is pinned.
    repo.commit(&[("index.html", b"v3")], "v3").unwrap();
    let (v3, d) = mesh.peers[2]
        .deploy_and_wait(repo.path(), "roll")
        .await
        .unwrap();
    assert_eq!(d["status"], "success", "{d}");
    // The log reaches peer 0 through replication, a moment later.
    mesh.peers[0]
        .wait_log(
            &v3,
            "not made live: site roll is pinned",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    for peer in &mesh.peers {
        assert_eq!(peer.site_bytes("roll", "/").await.unwrap(), b"v1");
    }
    // The deployment page offers to promote it.
    let page = mesh.peers[1].page(&format!("/deployments/{v3}")).await;
    assert!(page.contains("data-verb=promote"), "{page}");
    let page = mesh.peers[1].page(&format!("/deployments/{v2}")).await;
    assert!(page.contains("data-verb=promote"), "{page}");

    // Promoting the newest unpins: later deployments go live again (here
    // through the CLI).
    let stdout = tests::cli(&["promote", "roll", &v3, "--peer", &mesh.peers[1].http])
        .await
        .unwrap();
    assert!(
        stdout.contains(&format!("deployment {v3} is now current;")),
        "{stdout}"
    );
    assert!(!stdout.contains("pinned"), "{stdout}");
    let project = mesh.peers[1].get_json("/api/projects/roll").await.unwrap();
    assert_eq!(project["pinned"], false, "{project}");
    // The other peers learn it through replication, a moment later.
    wait_until(
        "peer 0 sees the project unpinned",
        Duration::from_secs(10),
        || async {
            let project = mesh.peers[0].get_json("/api/projects/roll").await.ok()?;
            (project["pinned"] == false).then_some(())
        },
    )
    .await
    .unwrap();
    for peer in &mesh.peers {
        wait_serving(peer, b"v3").await;
    }
    // Nothing was built again: three deployments, three builds (logs may
    // take a moment to reach peer 0 from the restarted peer).
    let built = wait_until(
        "three builds in the logs",
        Duration::from_secs(10),
        || async {
            let logs = logs_of(&mesh.peers[0], [&v1, &v2, &v3]).await;
            let packs: usize = logs
                .iter()
                .map(|l| l.matches("[pack] packed").count())
                .sum();
            (packs == 3).then_some(())
        },
    )
    .await;
    if let Err(e) = built {
        // Say which: a build too many, or a log that has not arrived.
        let logs = logs_of(&mesh.peers[0], [&v1, &v2, &v3]).await;
        panic!("{e}:\n{}", logs.join("\n---\n"));
    }
    let log = mesh.peers[0].log_text(&v1).await.unwrap();
    assert!(log.contains("rollback on peer"), "{log}");

    // Only successful deployments of this project can be made current.
    let bad = Repo::new(&[("shoal.toml", b"[build]\ncommand = \"exit 3\"\n")]).unwrap();
    let (failed, d) = mesh.peers[0]
        .deploy_and_wait(bad.path(), "roll")
        .await
        .unwrap();
    assert_eq!(d["status"], "buildFailed");
    let (status, body) = post(
        &mesh.peers[0],
        "/api/projects/roll/rollback",
        &json!({"deployment_id": failed}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_successful"))
    );
    let (status, _) = post(
        &mesh.peers[0],
        "/api/projects/roll/rollback",
        &json!({"deployment_id": "nope"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &mesh.peers[0],
        "/api/projects/none/rollback",
        &json!({"deployment_id": v1}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &mesh.peers[0],
        "/api/projects/roll/rollback",
        &json!({"x": 1}),
    )
    .await;
    assert_eq!(status, 400);
    let res = mesh.peers[0]
        .client()
        .post(format!("{}/api/projects/roll/rollback", mesh.peers[0].http))
        .json(&json!({"deployment_id": v1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let stdout = tests::cli(&["peers", "--peer", &mesh.peers[1].http])
        .await
        .unwrap();
    assert_eq!(stdout.matches(" alive").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("(this peer)").count(), 1, "{stdout}");
    // The projects pages (peer 2 learns of the failed deployment, made
    // through peer 0, by replication).
    wait_until(
        "peer 2 to list four deployments of the project",
        Duration::from_secs(10),
        || async {
            let page = mesh.peers[2].page("/projects/roll").await;
            (page.matches("<tr data-id=").count() == 4).then_some(())
        },
    )
    .await
    .unwrap();
    let page = mesh.peers[2].page("/projects").await;
    assert!(page.contains("<tr data-project='roll'>"), "{page}");
    let page = mesh.peers[2].page("/projects/roll").await;
    assert!(
        page.contains("id=settings") && page.contains("Webhooks are off"),
        "{page}"
    );
    assert_eq!(page.matches("<tr data-id=").count(), 4, "{page}");
    assert_eq!(page.matches("<strong>live</strong>").count(), 1, "{page}");
    let all = mesh.peers[1].get_json("/api/projects").await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
}

async fn logs_of(peer: &Peer, ids: [&String; 3]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(peer.log_text(id).await.unwrap());
    }
    out
}

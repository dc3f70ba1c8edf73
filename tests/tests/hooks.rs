//! GitHub webhooks against real peers: deliveries signed the way GitHub
//! signs them (HMAC-SHA256 of the raw body, `X-Hub-Signature-256`).

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::{json, Value};
use std::time::Duration;
use tests::github::{deliver, push_body};
use tests::{wait_until, Mesh, Peer, Repo, BUILD};

const SECRET: &str = "It's a Secret to Everybody";

/// Two peers taking webhooks, site `name` live at v1 from a repository
/// that has a new commit, v2, not deployed yet: (mesh, repo, repo URL,
/// commit before, commit after).
async fn pushed_mesh(name: &str) -> (Mesh, Repo, String, String, String) {
    let mesh = Mesh::start_with(2, &["--webhook-secret", SECRET])
        .await
        .unwrap();
    let repo = Repo::new(&[("index.html", b"v1")]).unwrap();
    let url = repo.path().to_str().unwrap().to_owned();
    let (_, first) = mesh.peers[0]
        .deploy_and_wait(repo.path(), name)
        .await
        .unwrap();
    assert_eq!(first["status"], "success", "{first}");
    let before = repo.git(&["rev-parse", "HEAD"]).unwrap();
    let after = repo.commit(&[("index.html", b"v2")], "v2").unwrap();
    (mesh, repo, url, before, after)
}

async fn count(p: &Peer) -> usize {
    p.deployments().await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_deploys_exactly_the_pushed_commit_once() {
    let (mesh, repo, url, before, after) = pushed_mesh("hooked").await;
    // A newer commit exists on the branch by the time the delivery lands:
    // the deployment is of the pushed commit, not of the branch tip.
    let tip = repo.commit(&[("index.html", b"v3")], "v3").unwrap();

    // The project page tells how to set the webhook up.
    let page = mesh.peers[1].page("/projects/hooked").await;
    assert!(page.contains("/api/hooks/github</code>"), "{page}");

    // Ping.
    let (status, body) = deliver(
        &mesh.peers[1],
        "ping",
        "d-0",
        &json!({"zen": "Keep it logically awesome."}),
        SECRET,
    )
    .await;
    assert_eq!((status, body["ok"].as_bool()), (200, Some(true)));

    // Bad signature, wrong event, unknown repository: refused, nothing stored.
    let push = push_body(&url, "main", &before, &after);
    let (status, body) = deliver(&mesh.peers[1], "push", "d-1", &push, "wrong secret").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("bad_signature"))
    );
    let (status, _) = deliver(&mesh.peers[1], "issues", "d-2", &push, SECRET).await;
    assert_eq!(status, 400);
    let elsewhere = push_body("https://example.com/octo/other", "main", &before, &after);
    let (status, _) = deliver(&mesh.peers[1], "push", "d-3", &elsewhere, SECRET).await;
    assert_eq!(status, 404);
    // A branch nobody follows, and a deleted branch: ignored.
    let (status, body) = deliver(
        &mesh.peers[1],
        "push",
        "d-4",
        &push_body(&url, "feature", &before, &after),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, body["deployments"].as_array().unwrap().len()),
        (200, 0),
        "{body}"
    );
    let zero = "0".repeat(40);
    let (status, body) = deliver(
        &mesh.peers[1],
        "push",
        "d-5",
        &push_body(&url, "main", &before, &zero),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, body["deployments"].as_array().unwrap().len()),
        (200, 0),
        "{body}"
    );
    assert_eq!(count(&mesh.peers[0]).await, 1, "nothing was deployed");

    // The real push.
    let (status, body) = deliver(&mesh.peers[1], "push", "d-6", &push, SECRET).await;
    assert_eq!(status, 202, "{body}");
    let ids = body["deployments"].as_array().unwrap();
    assert_eq!(ids.len(), 1);
    let id = ids[0].as_str().unwrap().to_owned();
    let d = mesh.peers[0]
        .wait_status(&id, &["success"], BUILD)
        .await
        .unwrap();
    assert_eq!(d["commit"], after.as_str());
    assert_ne!(d["commit"], tip.as_str());
    for peer in &mesh.peers {
        wait_until(
            "the pushed commit to be live",
            Duration::from_secs(10),
            || async { (peer.site_bytes("hooked", "/").await? == b"v2").then_some(()) },
        )
        .await
        .unwrap();
    }
    // The same delivery again, here or at the other peer: nothing new.
    for peer in &mesh.peers {
        let (status, body) = deliver(peer, "push", "d-6", &push, SECRET).await;
        assert_eq!(
            (status, body["duplicate"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
        assert_eq!(body["deployments"][0], id.as_str());
    }
    assert_eq!(count(&mesh.peers[0]).await, 2);
}

#[tokio::test]
async fn without_a_secret_webhooks_are_refused() {
    let peer = Peer::start(&[]).await.unwrap();
    let (status, body) = deliver(&peer, "ping", "d", &json!({}), SECRET).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("webhooks_disabled"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_deploys_new_commits_of_repositories_without_webhooks() {
    let mesh = Mesh::start(3).await.unwrap();
    let repo = Repo::new(&[("index.html", b"v1")]).unwrap();
    let (_, first) = mesh.peers[0]
        .deploy_and_wait(repo.path(), "polled")
        .await
        .unwrap();
    assert_eq!(first["status"], "success", "{first}");
    let patch = |peer: &Peer, body: Value, token: bool| {
        let mut req = peer
            .client()
            .patch(format!("{}/api/projects/polled", peer.http))
            .json(&body);
        if token {
            req = req.bearer_auth(tests::TOKEN);
        }
        req.send()
    };
    let res = patch(&mesh.peers[1], json!({"auto_deploy": true}), false)
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = patch(
        &mesh.peers[1],
        json!({"poll_interval_secs": 10_000_000}),
        true,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    let res = patch(
        &mesh.peers[1],
        json!({"auto_deploy": true, "poll_interval_secs": 1}),
        true,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let project: Value = res.json().await.unwrap();
    assert_eq!(
        (
            project["auto_deploy"].as_bool(),
            project["poll_interval_secs"].as_u64()
        ),
        (Some(true), Some(1))
    );

    let after = repo.commit(&[("index.html", b"v2")], "v2").unwrap();
    let observer = &mesh.peers[2];
    let d = wait_until(
        "a deployment of the new commit",
        Duration::from_secs(20),
        || async {
            let list = observer.deployments().await.ok()?;
            list.into_iter()
                .find(|d| d["commit"] == after.as_str() && d["status"] == "success")
        },
    )
    .await
    .unwrap();
    for peer in &mesh.peers {
        wait_until(
            "the new commit to be live",
            Duration::from_secs(10),
            || async { (peer.site_bytes("polled", "/").await? == b"v2").then_some(()) },
        )
        .await
        .unwrap();
    }
    let log = observer.log_text(d["id"].as_str().unwrap()).await.unwrap();
    assert!(log.contains("found by polling on peer"), "{log}");
    // One deployment of it was built, however many peers saw the commit.
    let list = observer.deployments().await.unwrap();
    let built: Vec<_> = list
        .iter()
        .filter(|d| d["commit"] == after.as_str() && d["status"] != "canceled")
        .collect();
    assert_eq!(built.len(), 1, "{list:?}");
}

#[tokio::test]
async fn a_project_secret_signs_for_that_project_only() {
    // No mesh-wide secret: only projects with their own take webhooks.
    let peer = Peer::start(&[]).await.unwrap();
    let mine = Repo::new(&[("index.html", b"mine v1")]).unwrap();
    let theirs = Repo::new(&[("index.html", b"theirs v1")]).unwrap();
    for (repo, name) in [(&mine, "mine"), (&theirs, "theirs")] {
        let (_, d) = peer.deploy_and_wait(repo.path(), name).await.unwrap();
        assert_eq!(d["status"], "success", "{d}");
    }
    let secret = "a project's own secret, long enough";
    let set = |body: Value| {
        peer.client()
            .patch(format!("{}/api/projects/mine", peer.http))
            .bearer_auth(tests::TOKEN)
            .json(&body)
            .send()
    };
    assert_eq!(
        set(json!({"webhook_secret": "short"}))
            .await
            .unwrap()
            .status(),
        400
    );
    let res = set(json!({"webhook_secret": secret})).await.unwrap();
    assert_eq!(res.status(), 200);
    let project: Value = res.json().await.unwrap();
    assert_eq!(project["has_webhook_secret"], true);
    assert!(
        !project.to_string().contains(secret),
        "the secret is never shown"
    );

    let mine_url = mine.path().to_str().unwrap().to_owned();
    let theirs_url = theirs.path().to_str().unwrap().to_owned();
    let before = mine.git(&["rev-parse", "HEAD"]).unwrap();
    let after = mine.commit(&[("index.html", b"mine v2")], "v2").unwrap();
    let push = push_body(&mine_url, "main", &before, &after);
    let (status, _) = deliver(&peer, "push", "p-1", &push, SECRET).await;
    assert_eq!(status, 401, "another secret");
    // Signed with mine's secret but about the other repository: not mine to deploy.
    let other = theirs
        .commit(&[("index.html", b"theirs v2")], "v2")
        .unwrap();
    let (status, _) = deliver(
        &peer,
        "push",
        "p-2",
        &push_body(&theirs_url, "main", &before, &other),
        secret,
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = deliver(&peer, "push", "p-3", &push, secret).await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployments"][0].as_str().unwrap().to_owned();
    let d = peer.wait_status(&id, &["success"], BUILD).await.unwrap();
    assert_eq!(d["commit"], after.as_str());
    assert_eq!(peer.site_bytes("theirs", "/").await.unwrap(), b"theirs v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_delivery_at_two_peers_at_once_is_built_once() {
    let (mesh, _repo, url, before, after) = pushed_mesh("twice").await;
    let push = push_body(&url, "main", &before, &after);
    // GitHub retried the delivery, and the retry landed on the other peer
    // before the first one had been replicated.
    let (a, b) = tokio::join!(
        deliver(&mesh.peers[0], "push", "twin", &push, SECRET),
        deliver(&mesh.peers[1], "push", "twin", &push, SECRET)
    );
    assert!(a.0 == 202 || a.0 == 200, "{a:?}");
    assert!(b.0 == 202 || b.0 == 200, "{b:?}");
    let observer = &mesh.peers[1];
    let live = wait_until(
        "the pushed commit to be live",
        Duration::from_secs(30),
        || async {
            let list = observer.deployments().await.ok()?;
            let ended = list
                .iter()
                .filter(|d| d["commit"] == after.as_str())
                .all(|d| d["status"] == "success" || d["status"] == "canceled");
            (ended && observer.site_bytes("twice", "/").await? == b"v2").then_some(list)
        },
    )
    .await
    .unwrap();
    let of_commit: Vec<&Value> = live
        .iter()
        .filter(|d| d["commit"] == after.as_str())
        .collect();
    let succeeded = of_commit
        .iter()
        .filter(|d| d["status"] == "success")
        .count();
    assert_eq!(succeeded, 1, "{of_commit:?}");
    let mut packs = 0;
    for d in &of_commit {
        packs += observer
            .log_text(d["id"].as_str().unwrap())
            .await
            .unwrap()
            .matches("[pack] packed")
            .count();
    }
    assert_eq!(packs, 1, "built once: {of_commit:?}");
}

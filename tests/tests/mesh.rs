//! Several real peers on loopback forming one mesh: replicated state,
//! exactly-once builds chosen by the election, failover, catch-up, PSK.

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tests::{wait_until, Mesh, Peer, Repo, BUILD};

/// Waits until `peer` shows deployment `id` with a status in `statuses`.
async fn wait_status(peer: &Peer, id: &str, statuses: &[&str], within: Duration) -> Value {
    peer.wait_status(id, statuses, within)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a future to completion from a sync context inside the test runtime.
fn futures_now<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn a_deployment_on_any_peer_is_built_once_and_seen_everywhere() {
    let mesh = Mesh::start(5).await.unwrap();
    let repo = Repo::new(&[("index.html", b"<h1>mesh</h1>")]).unwrap();
    let id = mesh.peers[4].deploy(repo.path(), "meshsite").await.unwrap();
    let d = wait_status(&mesh.peers[4], &id, &["success"], BUILD).await;
    let builder = d["builder"].as_str().unwrap().to_owned();
    let list = mesh.wait_converged(Duration::from_secs(20)).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["builder"], builder.as_str());
    // Exactly one peer built it: a competing claim, if any, yields before cloning.
    let log = mesh.peers[0].log_text(&id).await.unwrap();
    assert_eq!(count(&log, "[clone] cloning"), 1, "{log}");
    assert_eq!(count(&log, "[pack] packed"), 1, "{log}");
    assert!(
        log.contains(&format!("queued by peer {}", mesh.peers[4].id)),
        "{log}"
    );
    // Every peer serves it.
    for peer in &mesh.peers {
        wait_until(
            "every peer to serve the site",
            Duration::from_secs(10),
            || async {
                (peer.site_bytes("meshsite", "/").await? == b"<h1>mesh</h1>").then_some(())
            },
        )
        .await
        .unwrap();
    }
    // Every peer lists every peer, itself marked, in the API and on the peers page.
    for peer in &mesh.peers {
        let page = peer.page("/peers").await;
        assert_eq!(page.matches("<tr data-peer=").count(), 5, "{page}");
        assert_eq!(page.matches("(this peer)").count(), 1);
        let peers = peer.peers().await.unwrap();
        assert_eq!(peers.len(), 5);
        let me: Vec<_> = peers.iter().filter(|p| p["self"] == true).collect();
        assert_eq!(me.len(), 1);
        assert_eq!(me[0]["id"], peer.id.as_str());
        assert!(peers.iter().all(|p| p["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "build")));
    }
}

#[tokio::test]
async fn concurrent_deployments_spread_over_several_builders() {
    let mesh = Mesh::start(5).await.unwrap();
    let repo = Repo::new(&[(
        "shoal.toml",
        b"[build]\ncommand = \"sleep 3; mkdir -p o; echo ok > o/index.html\"\noutput = \"o\"\n",
    )])
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        let peer = &mesh.peers[i % 5];
        let (status, body) = peer
            .post_deployment(&json!({"repo_url": repo.path(), "name": format!("spread-{i}")}))
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let mut builders = HashSet::new();
    for id in &ids {
        let d = wait_status(&mesh.peers[0], id, &["success"], Duration::from_secs(120)).await;
        builders.insert(d["builder"].as_str().unwrap().to_owned());
        // Two peers may claim at once; the merge keeps one and the other
        // stops, so exactly one build runs to completion.
        let log = mesh.peers[0].log_text(id).await.unwrap();
        assert_eq!(count(&log, "[build] built in"), 1, "built once: {log}");
        assert_eq!(count(&log, "[pack] packed"), 1, "built once: {log}");
    }
    assert!(
        builders.len() >= 3,
        "10 deployments landed on only {} builder(s)",
        builders.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_builder_is_replaced_and_does_not_resume_when_it_returns() {
    let mut mesh = Mesh::start(4).await.unwrap();
    let repo = Repo::slow_build("6", "failover").unwrap();
    let id = mesh.peers[0].deploy(repo.path(), "failover").await.unwrap();
    let started = mesh.peers[0]
        .wait_log(&id, "slow-start", BUILD)
        .await
        .unwrap();
    let first = started["builder"].as_str().unwrap().to_owned();
    let victim = mesh.peers.iter().position(|p| p.id == first).unwrap();
    // Watch from a peer that survives.
    let observer = (victim + 1) % mesh.peers.len();
    mesh.peers[victim].stop(false).unwrap();
    let killed_at = Instant::now();
    let obs = &mesh.peers[observer];
    let second = wait_until("another peer to claim", Duration::from_secs(15), || async {
        let d = obs.deployment(&id).await.ok()?;
        (d["builder"].as_str()? != first && d["epoch"].as_u64()? >= 2)
            .then(|| d["builder"].as_str().unwrap().to_owned())
    })
    .await
    .unwrap();
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    let d = wait_status(obs, &id, &["success"], BUILD).await;
    assert_eq!(d["builder"], second.as_str());
    let builder = mesh.by_id(&second).unwrap();
    assert_eq!(
        builder
            .site("failover", "/")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "failover\n"
    );

    // The killed peer comes back, catches up, and leaves the build alone.
    mesh.peers[victim].restart(false).await.unwrap();
    let back = &mesh.peers[victim];
    wait_until(
        "the returning peer to catch up",
        Duration::from_secs(20),
        || async {
            let d = back.deployment(&id).await.ok()?;
            (d["builder"] == second.as_str() && d["status"] == "success").then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}",
            futures_now(back.deployment(&id)),
            back.log()
        )
    });
    mesh.wait_converged(Duration::from_secs(20)).await.unwrap();
    let log = back.log_text(&id).await.unwrap();
    assert_eq!(
        count(&log, &format!("claimed by peer {first}")),
        1,
        "the old builder must not claim again:\n{log}"
    );
    // Successors may claim at once (the merge keeps one); one build completes.
    assert_eq!(count(&log, "[pack] packed"), 1, "{log}");
    // It fetches the site it missed and serves it too.
    wait_until(
        "the returning peer to serve the site",
        Duration::from_secs(20),
        || async { (back.site_bytes("failover", "/").await? == b"failover\n").then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn late_and_restarted_peers_catch_up() {
    let mut mesh = Mesh::start(3).await.unwrap();
    let a = Repo::new(&[("index.html", b"a")]).unwrap();
    let b = Repo::new(&[("index.html", b"b")]).unwrap();
    let id_a = mesh.peers[0].deploy(a.path(), "site-a").await.unwrap();
    wait_status(&mesh.peers[0], &id_a, &["success"], BUILD).await;

    // Peer 2 misses an update while it is down.
    mesh.peers[2].stop(true).unwrap();
    let id_b = mesh.peers[1].deploy(b.path(), "site-b").await.unwrap();
    wait_status(&mesh.peers[1], &id_b, &["success"], BUILD).await;
    mesh.peers[2].restart(true).await.unwrap();

    // And a new peer joins after all of it.
    mesh.add_peer().await.unwrap();
    mesh.wait_all_alive(Duration::from_secs(20)).await.unwrap();
    let list = mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
    let ids: Vec<_> = list.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![id_b.as_str(), id_a.as_str()]);
    // Every peer, the restarted and the new one too, serves both sites.
    for peer in &mesh.peers {
        for (site, want) in [("site-a", b"a"), ("site-b", b"b")] {
            wait_until(
                "every peer to serve every site",
                Duration::from_secs(20),
                || async { (peer.site_bytes(site, "/").await? == want).then_some(()) },
            )
            .await
            .unwrap();
        }
    }
    for d in &list {
        assert_eq!(
            d["status"], "success",
            "a joining peer keeps success true: {d}"
        );
    }
}

fn psk_file(dir: &std::path::Path, name: &str, hex: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_private_mesh_keeps_out_peers_with_another_key() {
    let keys = tempfile::tempdir().unwrap();
    let good = psk_file(keys.path(), "good", &"ab".repeat(32));
    let bad = psk_file(keys.path(), "bad", &"cd".repeat(32));
    let mesh = Mesh::start_with(2, &["--psk-file", &good]).await.unwrap();
    let boot = mesh.bootstrap();
    // Both try to join at the same time; only the one with the key gets in.
    let bad_flags = ["--psk-file", &bad, "--bootstrap", &boot];
    let good_flags = ["--psk-file", &good, "--bootstrap", &boot];
    let (intruder, member) = tokio::join!(Peer::start(&bad_flags), Peer::start(&good_flags));
    let (intruder, member) = (intruder.unwrap(), member.unwrap());
    wait_until(
        "the member with the key to join",
        Duration::from_secs(20),
        || async { (member.alive_peers().await == 3).then_some(()) },
    )
    .await
    .unwrap();
    // By now the intruder has had as long as the member to join.
    for _ in 0..3 {
        assert_eq!(
            intruder.alive_peers().await,
            1,
            "the intruder sees the mesh"
        );
        for p in mesh.peers.iter().chain([&member]) {
            assert!(
                p.peers()
                    .await
                    .unwrap()
                    .iter()
                    .all(|x| x["id"] != intruder.id.as_str()),
                "the mesh sees the intruder"
            );
        }
        tokio::task::yield_now().await;
    }
    assert!(intruder.log().contains("bootstrap dial failed") || !intruder.log().is_empty());
}

#[tokio::test]
async fn the_same_deployment_submitted_on_two_peers_at_once_is_built_once() {
    let mesh = Mesh::start(3).await.unwrap();
    let repo = Repo::new(&[("index.html", b"once")]).unwrap();
    let body = json!({"repo_url": repo.path(), "name": "once"});
    let (a, b) = tokio::join!(
        mesh.peers[0].post_deployment(&body),
        mesh.peers[2].post_deployment(&body)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.0, b.0), (202, 202));
    let ids = [
        a.1["id"].as_str().unwrap().to_owned(),
        b.1["id"].as_str().unwrap().to_owned(),
    ];
    let mut ended = Vec::new();
    for id in &ids {
        ended.push(wait_status(&mesh.peers[1], id, &["success", "canceled"], BUILD).await);
    }
    let statuses: HashSet<_> = ended
        .iter()
        .map(|d| d["status"].as_str().unwrap().to_owned())
        .collect();
    if ids[0] != ids[1] {
        assert_eq!(
            statuses,
            HashSet::from(["success".to_owned(), "canceled".to_owned()]),
            "{ended:?}"
        );
        let canceled = ended.iter().find(|d| d["status"] == "canceled").unwrap();
        assert!(
            canceled["error"]
                .as_str()
                .unwrap()
                .contains("the same request as deployment"),
            "{canceled}"
        );
    }
    let mut builds = 0;
    let mut logs = String::new();
    for id in &ids {
        let log = mesh.peers[1].log_text(id).await.unwrap();
        builds += count(&log, "[pack] packed");
        logs.push_str(&format!("--- {id}\n{log}\n"));
    }
    assert_eq!(
        builds,
        if ids[0] == ids[1] { 2 } else { 1 },
        "built exactly once: {ended:?}\n{logs}"
    );
}

#[tokio::test]
async fn peers_that_start_in_any_order_find_each_other_by_name() {
    // A port nobody listens on yet: the joiner starts first and keeps trying.
    let port = tests::p2p_port().to_string();
    let joiner = Peer::start(&["--bootstrap", &format!("/dns4/localhost/tcp/{port}")])
        .await
        .unwrap();
    assert_eq!(joiner.alive_peers().await, 1);
    let first = Peer::start(&["--p2p-port", &port]).await.unwrap();
    for peer in [&joiner, &first] {
        wait_until(
            "the two peers to find each other",
            Duration::from_secs(20),
            || async { (peer.alive_peers().await == 2).then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\njoiner:\n{}\nfirst:\n{}", joiner.log(), first.log()));
    }
}

/// Whether a process whose command line contains `pattern` runs.
fn process_running(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_canceled_on_any_peer_stops_on_its_builder() {
    let mesh = Mesh::start(3).await.unwrap();
    let repo = Repo::slow_build("31.7", "x").unwrap();
    let id = mesh.peers[0].deploy(repo.path(), "stopme").await.unwrap();
    let started = mesh.peers[0]
        .wait_log(&id, "slow-start", BUILD)
        .await
        .unwrap();
    let builder = started["builder"].as_str().unwrap().to_owned();
    assert!(process_running("sleep 31.7"));
    // Canceled through a peer that is not the builder.
    let other = mesh.peers.iter().find(|p| p.id != builder).unwrap();
    let url = format!("{}/api/deployments/{id}/cancel", other.http);
    let res = other.client().post(&url).send().await.unwrap();
    assert_eq!(res.status(), 401, "cancel needs the admin token");
    let res = other
        .client()
        .post(&url)
        .bearer_auth(tests::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "canceled");
    let b = mesh.by_id(&builder).unwrap();
    wait_status(b, &id, &["canceled"], Duration::from_secs(10)).await;
    wait_until(
        "the build's processes to be killed",
        Duration::from_secs(10),
        || async { (!process_running("sleep 31.7")).then_some(()) },
    )
    .await
    .unwrap();
    let log = b.log_text(&id).await.unwrap();
    assert!(log.contains("canceled by request on peer"), "{log}");
    assert!(log.contains("the deployment was canceled"), "{log}");
    assert!(!log.contains("[build] built in"), "{log}");
    // Only queued or building deployments can be canceled.
    let res = other
        .client()
        .post(&url)
        .bearer_auth(tests::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let missing = format!("{}/api/deployments/nope/cancel", other.http);
    let res = other
        .client()
        .post(&missing)
        .bearer_auth(tests::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Every peer agrees, and nobody picks it up again.
    let list = mesh.wait_converged(Duration::from_secs(20)).await.unwrap();
    assert_eq!(list[0]["status"], "canceled");
    assert!(!process_running("sleep 31.7"));
}

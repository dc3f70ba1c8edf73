//! Artifact distribution across real peers: every peer ends up serving the
//! same bytes, fetched block by block from every peer that has them.

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::Value;
use std::time::Duration;
use tests::{random_bytes, wait_until, Mesh, Peer, Repo, BUILD};

/// A site with many small pages and one large random file.
fn big_site(big: usize, seed: u64) -> Repo {
    let blob = random_bytes(big, seed);
    let pages: Vec<(String, Vec<u8>)> = (0..120)
        .map(|i| {
            (
                format!("pages/p{i:03}.html"),
                format!("<h1>page {i}</h1>{}", "<p>text</p>".repeat(50 + i)).into_bytes(),
            )
        })
        .collect();
    let mut files: Vec<(&str, &[u8])> = vec![
        ("index.html", b"<h1>big site</h1>"),
        ("assets/big.bin", &blob),
    ];
    files.extend(pages.iter().map(|(p, d)| (p.as_str(), d.as_slice())));
    Repo::new(&files).unwrap()
}

/// Waits until every running peer serves `want` at `path` of `site`.
async fn wait_served(mesh: &Mesh, site: &str, path: &str, want: &[u8], within: Duration) {
    for peer in mesh.peers.iter().filter(|p| p.is_running()) {
        wait_until(
            &format!("peer {} to serve {site}{path}", peer.id),
            within,
            || async { (peer.site_bytes(site, path).await? == want).then_some(()) },
        )
        .await
        .unwrap();
    }
}

fn replicas(d: &Value) -> Vec<(String, String)> {
    d["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["peer"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn position(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("no '{needle}' in\n{log}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn five_peers_serve_identical_bytes_through_distributed_to_success() {
    let mesh = Mesh::start(5).await.unwrap();
    let repo = big_site(50 << 20, 21);
    let blob = std::fs::read(repo.path().join("assets/big.bin")).unwrap();
    let id = mesh.peers[1].deploy(repo.path(), "big").await.unwrap();
    let d = mesh.peers[1]
        .wait_status(&id, &["success"], Duration::from_secs(120))
        .await
        .unwrap();
    let builder = d["builder"].as_str().unwrap().to_owned();
    let page = b"<h1>page 7</h1>".to_vec();
    wait_served(
        &mesh,
        "big",
        "/assets/big.bin",
        &blob,
        Duration::from_secs(10),
    )
    .await;
    for peer in &mesh.peers {
        let got = peer.site_bytes("big", "/pages/p007.html").await.unwrap();
        assert!(got.starts_with(&page));
    }
    // The status went through distributed to success, and the API shows
    // every peer's complete copy.
    let log = mesh.peers[1].log_text(&id).await.unwrap();
    assert!(position(&log, "distributed:") < position(&log, "every live peer holds it"));
    let d = mesh.peers[3].deployment(&id).await.unwrap();
    let reps = replicas(&d);
    assert_eq!(reps.len(), 5, "{d}");
    assert!(reps.iter().all(|(_, s)| s == "complete"), "{d}");
    let page = mesh.peers[2].page(&format!("/deployments/{id}")).await;
    assert_eq!(page.matches("<tr data-peer=").count(), 5, "{page}");
    assert_eq!(
        page.matches("value=100").count(),
        5,
        "every copy at 100 %: {page}"
    );
    // The artifact travelled between peers, not only from the builder:
    // the builder uploaded less than every other peer downloaded.
    let mut fetched = 0.0;
    let mut served_by_others = 0.0;
    for peer in &mesh.peers {
        if peer.id == builder {
            continue;
        }
        fetched += peer.metric("shoal_blocks_fetched_bytes_total").await;
        served_by_others += peer.metric("shoal_blocks_served_bytes_total").await;
    }
    let size = blob.len() as f64;
    assert!(
        fetched >= 4.0 * size,
        "each of 4 peers fetched the artifact: {fetched}"
    );
    assert!(
        fetched <= 4.0 * size * 1.1,
        "few duplicates: {fetched} for 4 × {size}"
    );
    assert!(
        served_by_others > 0.0,
        "peers other than the builder served blocks"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_complete_among_themselves_when_the_builder_dies_after_one_copy() {
    // Uploads capped at 4 MiB/s per peer, so distribution takes seconds.
    let mut mesh = Mesh::start_with(4, &["--upload-limit-kib", "4096"])
        .await
        .unwrap();
    let repo = big_site(30 << 20, 22);
    let blob = std::fs::read(repo.path().join("assets/big.bin")).unwrap();
    let id = mesh.peers[0].deploy(repo.path(), "survivor").await.unwrap();
    let d = mesh.peers[0]
        .wait_status(&id, &["distributed", "success"], Duration::from_secs(120))
        .await
        .unwrap();
    let builder = d["builder"].as_str().unwrap().to_owned();
    // A fifth peer joins, and once it has started fetching, the builder dies:
    // at least one peer other than the builder holds a whole copy, and the
    // newcomer holds part of one.
    let joiner = mesh.add_peer().await.unwrap().id.clone();
    let obs = mesh.peers.iter().position(|p| p.id != builder).unwrap();
    let observer = &mesh.peers[obs];
    let partial = wait_until(
        "the new peer to start fetching",
        Duration::from_secs(30),
        || async {
            let d = observer.deployment(&id).await.ok()?;
            d["replicas"]
                .as_array()?
                .iter()
                .find(|r| r["peer"] == joiner.as_str() && r["state"] == "fetching")
                .cloned()
        },
    )
    .await
    .unwrap();
    let victim = mesh.peers.iter().position(|p| p.id == builder).unwrap();
    mesh.peers[victim].stop(false).unwrap();
    let observer = &mesh.peers[obs];
    let holders = replicas(&observer.deployment(&id).await.unwrap())
        .iter()
        .filter(|(p, s)| *p != builder && s == "complete")
        .count();
    assert!(holders >= 1, "a peer other than the builder holds a copy");
    assert!(partial["bytes"].as_u64().unwrap() < partial["total"].as_u64().unwrap().max(1));
    let end = observer
        .wait_status(
            &id,
            &["success", "distributionFailed"],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert_eq!(end["status"], "success", "{end}");
    assert_eq!(end["builder"], builder.as_str(), "no rebuild was needed");
    assert_eq!(end["epoch"], d["epoch"]);
    wait_served(
        &mesh,
        "survivor",
        "/assets/big.bin",
        &blob,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_builder_that_dies_before_anyone_has_a_copy_is_replaced_by_a_rebuild() {
    // Uploads capped at 1 MiB/s: nobody can hold a copy soon after `built`.
    let mut mesh = Mesh::start_with(4, &["--upload-limit-kib", "1024"])
        .await
        .unwrap();
    let repo = big_site(6 << 20, 23);
    let blob = std::fs::read(repo.path().join("assets/big.bin")).unwrap();
    let id = mesh.peers[0].deploy(repo.path(), "phoenix").await.unwrap();
    let watcher = &mesh.peers[0];
    let built = wait_until("the deployment to be built", BUILD, || async {
        let d = watcher.deployment(&id).await.ok()?;
        (d["status"] != "queued" && d["status"] != "building").then_some(d)
    })
    .await
    .unwrap();
    assert_eq!(
        built["status"], "built",
        "too late to kill the builder: {built}"
    );
    let first = built["builder"].as_str().unwrap().to_owned();
    let victim = mesh.peers.iter().position(|p| p.id == first).unwrap();
    mesh.peers[victim].stop(false).unwrap();
    let observer = &mesh.peers[(victim + 1) % 4];
    let end = observer
        .wait_status(
            &id,
            &["success", "distributionFailed"],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert_eq!(end["status"], "success", "{end}");
    assert_ne!(
        end["builder"],
        first.as_str(),
        "another peer rebuilt it: {end}"
    );
    assert!(end["epoch"].as_u64().unwrap() > built["epoch"].as_u64().unwrap());
    assert_eq!(
        end["artifact"], built["artifact"],
        "the same commit packs to the same artifact"
    );
    let log = observer.log_text(&id).await.unwrap();
    assert!(
        log.contains("is gone and no live peer holds a whole copy"),
        "{log}"
    );
    wait_served(
        &mesh,
        "phoenix",
        "/assets/big.bin",
        &blob,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_copy_is_detected_and_fetched_from_another_peer() {
    let mut mesh = Mesh::start(3).await.unwrap();
    let repo = big_site(20 << 20, 24);
    let blob = std::fs::read(repo.path().join("assets/big.bin")).unwrap();
    let (id, d) = mesh.peers[0]
        .deploy_and_wait(repo.path(), "rotten")
        .await
        .unwrap();
    assert_eq!(d["status"], "success", "{d}");
    // One peer's blocks rot on disk (every one of them).
    let builder = d["builder"].as_str().unwrap();
    let bad = mesh.peers.iter().find(|p| p.id != builder).unwrap();
    let mut rotted = 0;
    for dir in std::fs::read_dir(bad.data.path().join("data/blocks/blocks")).unwrap() {
        for block in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            std::fs::write(block.unwrap().path(), b"rotten").unwrap();
            rotted += 1;
        }
    }
    assert!(rotted > 50, "{rotted} blocks");
    // A new peer fetches from all three; the rotten blocks are refused.
    let joiner = mesh.add_peer().await.unwrap();
    wait_until(
        "the new peer to serve the site",
        Duration::from_secs(60),
        || async { (joiner.site_bytes("rotten", "/assets/big.bin").await? == blob).then_some(()) },
    )
    .await
    .unwrap();
    let corrupt = joiner.metric("shoal_blocks_corrupt_total").await;
    assert!(corrupt >= 1.0, "the rotten peer was asked and caught");
    assert!(joiner.log().contains("corrupt block"), "{}", joiner.log());
    let d = joiner.deployment(&id).await.unwrap();
    assert_eq!(d["status"], "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_after_a_one_page_change_moves_only_a_few_percent() {
    let mesh = Mesh::start(3).await.unwrap();
    let repo = big_site(20 << 20, 25);
    let blob = std::fs::read(repo.path().join("assets/big.bin")).unwrap();
    let (_, first) = mesh.peers[0]
        .deploy_and_wait(repo.path(), "delta")
        .await
        .unwrap();
    assert_eq!(first["status"], "success", "{first}");
    wait_served(
        &mesh,
        "delta",
        "/assets/big.bin",
        &blob,
        Duration::from_secs(10),
    )
    .await;
    let mut before = Vec::new();
    for peer in &mesh.peers {
        before.push(peer.metric("shoal_blocks_fetched_bytes_total").await);
    }
    repo.commit(
        &[("pages/p050.html", b"<h1>page 50, edited</h1>")],
        "edit one page",
    )
    .unwrap();
    let (id, second) = mesh.peers[1]
        .deploy_and_wait(repo.path(), "delta")
        .await
        .unwrap();
    assert_eq!(second["status"], "success", "{second}");
    assert_ne!(first["artifact"], second["artifact"]);
    wait_served(
        &mesh,
        "delta",
        "/pages/p050.html",
        b"<h1>page 50, edited</h1>",
        Duration::from_secs(10),
    )
    .await;
    let size = mesh.peers[0].deployment(&id).await.unwrap()["replicas"][0]["total"]
        .as_f64()
        .unwrap();
    for (peer, was) in mesh.peers.iter().zip(before) {
        let moved = peer.metric("shoal_blocks_fetched_bytes_total").await - was;
        assert!(
            moved <= size * 0.03,
            "peer {} fetched {moved} bytes of a {size}-byte artifact",
            peer.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_peer_serves_every_site_soon_after_joining() {
    let mut mesh = Mesh::start(2).await.unwrap();
    let mut repos = Vec::new();
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        let blob = random_bytes(2 << 20, 30 + i as u64);
        repos.push(deploy_blob(&mesh.peers[i % 2], name, &blob).await);
    }
    let joiner: &Peer = mesh.add_peer().await.unwrap();
    for (name, repo) in ["one", "two", "three"].iter().zip(&repos) {
        let want = std::fs::read(repo.path().join("data.bin")).unwrap();
        wait_until(
            &format!("the new peer to serve {name}"),
            Duration::from_secs(20),
            || async { (joiner.site_bytes(name, "/data.bin").await? == want).then_some(()) },
        )
        .await
        .unwrap();
    }
    for d in joiner.deployments().await.unwrap() {
        assert_eq!(d["status"], "success", "{d}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_over_tcp_only_shares_sites_with_peers_over_quic() {
    let mut mesh = Mesh::start(2).await.unwrap();
    mesh.add_peer_with(&["--no-quic"]).await.unwrap();
    mesh.wait_all_alive(Duration::from_secs(30)).await.unwrap();
    let blob = random_bytes(4 << 20, 50);
    let _repo = deploy_blob(&mesh.peers[2], "mixed", &blob).await;
    wait_served(&mesh, "mixed", "/data.bin", &blob, Duration::from_secs(20)).await;
    // The two that run QUIC talk over it; each keeps TCP with the third.
    for peer in &mesh.peers[..2] {
        wait_until(
            "a QUIC peer to hold one QUIC and one TCP connection",
            Duration::from_secs(10),
            || async {
                let quic = peer.metric(QUIC_CONNECTIONS).await;
                let tcp = peer.metric(TCP_CONNECTIONS).await;
                (quic >= 1.0 && tcp >= 1.0).then_some(())
            },
        )
        .await
        .unwrap();
    }
    let tcp_only = &mesh.peers[2];
    assert_eq!(tcp_only.metric(QUIC_CONNECTIONS).await, 0.0);
    assert!(tcp_only.metric(TCP_CONNECTIONS).await >= 2.0);
    // Each of the two that did not build fetched the whole artifact.
    let served: Vec<f64> =
        futures_util::future::join_all(mesh.peers.iter().map(|p| p.metric(SERVED))).await;
    assert!(
        served.iter().sum::<f64>() >= 2.0 * blob.len() as f64,
        "{served:?}"
    );
}

const QUIC_CONNECTIONS: &str = "shoal_p2p_connections{transport=\"quic\"}";
const TCP_CONNECTIONS: &str = "shoal_p2p_connections{transport=\"tcp\"}";

/// Block bytes a peer sent, and those it fetched from another region.
const SERVED: &str = "shoal_blocks_served_bytes_total";
const FAR: &str = "shoal_blocks_fetched_far_bytes_total";

/// Deploys, through `peer`, site `name` of a page and `data.bin` holding
/// `blob`, and waits for it to succeed; returns its repository.
async fn deploy_blob(peer: &Peer, name: &str, blob: &[u8]) -> Repo {
    let page = format!("<h1>{name}</h1>");
    let repo = Repo::new(&[("index.html", page.as_bytes()), ("data.bin", blob)]).unwrap();
    let (_, d) = peer.deploy_and_wait(repo.path(), name).await.unwrap();
    assert_eq!(d["status"], "success", "{d}");
    repo
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_peer_fetches_nothing_from_another_region_that_its_own_holds() {
    let mut mesh = Mesh::start(1).await.unwrap(); // region "default"
    mesh.add_peer_with(&["--region", "eu"]).await.unwrap();
    mesh.wait_all_alive(Duration::from_secs(30)).await.unwrap();
    let blob = random_bytes(4 << 20, 40);
    let _repo = deploy_blob(&mesh.peers[0], "regions", &blob).await;
    // Whichever did not build it fetched it across regions.
    let crossed = mesh.peers[0].metric(FAR).await + mesh.peers[1].metric(FAR).await;
    assert!(
        crossed >= blob.len() as f64,
        "{crossed} bytes counted as from afar"
    );
    let far_before = mesh.peers[0].metric(SERVED).await;
    let near_before = mesh.peers[1].metric(SERVED).await;

    // A second peer in "eu": both others hold the whole site; only the one
    // in its region is asked.
    mesh.add_peer_with(&["--region", "eu"]).await.unwrap();
    wait_served(
        &mesh,
        "regions",
        "/data.bin",
        &blob,
        Duration::from_secs(20),
    )
    .await;
    let far = mesh.peers[0].metric(SERVED).await - far_before;
    let near = mesh.peers[1].metric(SERVED).await - near_before;
    assert_eq!(far, 0.0, "the peer in another region sent {far} bytes");
    let joiner = &mesh.peers[2];
    assert_eq!(joiner.metric(FAR).await, 0.0);
    assert!(
        near >= blob.len() as f64,
        "the peer in the same region sent {near} bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_fetching_together_takes_each_block_across_about_once() {
    // Every link paced (4 MiB/s up), so the three peers in "eu" fetch at
    // the same time; only the peer in "default" builds.
    let mut mesh = Mesh::start_with(1, &["--upload-limit-kib", "4096"])
        .await
        .unwrap();
    for _ in 0..3 {
        mesh.add_peer_with(&["--region", "eu", "--max-builds", "0"])
            .await
            .unwrap();
    }
    mesh.wait_all_alive(Duration::from_secs(30)).await.unwrap();
    let blob = random_bytes(16 << 20, 41);
    let _repo = deploy_blob(&mesh.peers[1], "crew", &blob).await;
    wait_served(&mesh, "crew", "/data.bin", &blob, Duration::from_secs(20)).await;
    // Each peer in "eu" asked the builder only for its share of what none
    // of the others held: the artifact crossed about once, not three times.
    let mut crossed = 0.0;
    for peer in &mesh.peers[1..] {
        crossed += peer.metric(FAR).await;
    }
    let size = blob.len() as f64;
    assert!(
        crossed >= size && crossed <= 1.15 * size,
        "{:.2} x the artifact crossed into eu",
        crossed / size
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_copy_nearby_does_not_hold_up_a_fetch_that_a_peer_afar_can_feed() {
    let mut mesh = Mesh::start(1).await.unwrap(); // region "default"

    // The only other copy in "eu" sends blocks at 128 KiB/s: 8 MiB from it
    // alone would take over a minute.
    mesh.add_peer_with(&[
        "--region",
        "eu",
        "--max-builds",
        "0",
        "--upload-limit-kib",
        "128",
    ])
    .await
    .unwrap();
    mesh.wait_all_alive(Duration::from_secs(30)).await.unwrap();
    let blob = random_bytes(8 << 20, 42);
    let _repo = deploy_blob(&mesh.peers[0], "slow", &blob).await;

    let joiner = mesh
        .add_peer_with(&["--region", "eu", "--max-builds", "0"])
        .await
        .unwrap();
    wait_until(
        "the new peer to serve the site",
        Duration::from_secs(30),
        || async { (joiner.site_bytes("slow", "/data.bin").await? == blob).then_some(()) },
    )
    .await
    .unwrap();
    let far = joiner.metric(FAR).await;
    assert!(
        far >= blob.len() as f64 / 2.0,
        "only {far} bytes came from afar"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn old_versions_beyond_the_kept_ones_are_collected_everywhere() {
    let flags = ["--keep-deployments", "2", "--gc-interval", "1s"];
    let mesh = Mesh::start_with(2, &flags).await.unwrap();
    let repo = Repo::new(&[
        ("index.html", b"v0"),
        ("data.bin", &random_bytes(1 << 20, 40)),
    ])
    .unwrap();
    let mut ids = Vec::new();
    for v in 0..4u64 {
        if v > 0 {
            let data = random_bytes(1 << 20, 40 + v);
            repo.commit(
                &[
                    ("index.html", format!("v{v}").as_bytes()),
                    ("data.bin", &data),
                ],
                "next",
            )
            .unwrap();
        }
        let (id, d) = mesh.peers[0]
            .deploy_and_wait(repo.path(), "gc")
            .await
            .unwrap();
        assert_eq!(d["status"], "success", "{d}");
        ids.push(id);
    }
    wait_served(&mesh, "gc", "/", b"v3", Duration::from_secs(10)).await;
    // Each peer keeps the last two versions and drops the two before, with
    // their blocks: about 2 MiB of blocks are left of 4.
    for peer in &mesh.peers {
        let versions = peer.data.path().join("data/sites/gc/versions");
        wait_until(
            "old versions to be collected",
            Duration::from_secs(20),
            || async {
                let mut left: Vec<String> = std::fs::read_dir(&versions)
                    .ok()?
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                left.sort();
                let bytes = peer.metric("shoal_block_store_bytes").await;
                (left == ids[2..] && bytes < 3.0 * 1048576.0).then_some(())
            },
        )
        .await
        .unwrap();
        let d = peer.deployment(&ids[0]).await.unwrap();
        assert!(
            replicas(&d).iter().all(|(_, s)| s == "evicted"),
            "the oldest copy is reported gone: {d}"
        );
    }
    wait_served(&mesh, "gc", "/", b"v3", Duration::from_secs(1)).await;
    // Kept versions stay reachable at their preview hosts on every peer
    // (by id or by commit); collected ones are gone.
    let previous = mesh.peers[0].deployment(&ids[2]).await.unwrap();
    let latest = mesh.peers[0].deployment(&ids[3]).await.unwrap();
    let oldest = mesh.peers[0].deployment(&ids[0]).await.unwrap();
    let label = |url: &Value| {
        let url = url.as_str().unwrap();
        url["http://".len()..url.find(".localhost").unwrap()].to_owned()
    };
    let by_commit = |d: &Value| format!("{}--gc", &d["commit"].as_str().unwrap()[..10]);
    for peer in &mesh.peers {
        assert_eq!(
            peer.site_bytes(&label(&latest["preview_url"]), "/")
                .await
                .unwrap(),
            b"v3"
        );
        assert_eq!(
            peer.site_bytes(&by_commit(&previous), "/").await.unwrap(),
            b"v2"
        );
        assert!(peer.site_bytes(&by_commit(&oldest), "/").await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_that_cannot_reach_every_peer_in_time_fails_and_is_not_switched_to() {
    // Uploads of 64 KiB/s and a 4 s deadline: a small site makes it, a 3 MiB
    // one cannot.
    let flags = ["--upload-limit-kib", "64", "--distribution-timeout", "4s"];
    let mesh = Mesh::start_with(2, &flags).await.unwrap();
    let repo = Repo::new(&[("index.html", b"v1")]).unwrap();
    let (_, first) = mesh.peers[0]
        .deploy_and_wait(repo.path(), "slow")
        .await
        .unwrap();
    assert_eq!(first["status"], "success", "{first}");
    wait_served(&mesh, "slow", "/", b"v1", Duration::from_secs(10)).await;
    repo.commit(
        &[
            ("index.html", b"v2"),
            ("big.bin", &random_bytes(3 << 20, 50)),
        ],
        "too big for the deadline",
    )
    .unwrap();
    let (id, d) = mesh.peers[0]
        .deploy_and_wait(repo.path(), "slow")
        .await
        .unwrap();
    assert_eq!(d["status"], "distributionFailed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("did not finish within 4s") && error.contains("1 of 2 live peers"),
        "{error}"
    );
    assert!(mesh.peers[0]
        .log_text(&id)
        .await
        .unwrap()
        .contains("missing on"));
    // Every peer, the builder too, keeps serving the previous version.
    for peer in &mesh.peers {
        assert_eq!(peer.site_bytes("slow", "/").await.unwrap(), b"v1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_restarted_mid_fetch_resumes_with_the_blocks_it_has() {
    let mut mesh = Mesh::start_with(3, &["--upload-limit-kib", "2048"])
        .await
        .unwrap();
    let repo = big_site(12 << 20, 60);
    let blob = std::fs::read(repo.path().join("assets/big.bin")).unwrap();
    let id = mesh.peers[0].deploy(repo.path(), "resume").await.unwrap();
    let watcher = &mesh.peers[0];
    // A peer other than the builder that holds part of the artifact.
    let (peer, partial, size) = wait_until(
        "a peer to hold part of it",
        Duration::from_secs(60),
        || async {
            let d = watcher.deployment(&id).await.ok()?;
            let builder = d["builder"].as_str()?.to_owned();
            d["replicas"].as_array()?.iter().find_map(|r| {
                let (bytes, total) = (r["bytes"].as_u64()?, r["total"].as_u64()?);
                (r["peer"] != builder.as_str()
                    && r["state"] == "fetching"
                    && bytes > total / 10
                    && bytes < total / 2)
                    .then(|| (r["peer"].as_str().unwrap().to_owned(), bytes, total))
            })
        },
    )
    .await
    .unwrap();
    let victim = mesh.peers.iter().position(|p| p.id == peer).unwrap();
    mesh.peers[victim].stop(true).unwrap();
    mesh.peers[victim].restart(true).await.unwrap();
    let back = &mesh.peers[victim];
    wait_until(
        "the restarted peer to serve it",
        Duration::from_secs(60),
        || async { (back.site_bytes("resume", "/assets/big.bin").await? == blob).then_some(()) },
    )
    .await
    .unwrap();
    // After the restart it fetched only what it lacked.
    let fetched = back.metric("shoal_blocks_fetched_bytes_total").await;
    let (partial, size) = (partial as f64, size as f64);
    assert!(
        fetched <= size - partial + size * 0.02,
        "fetched {fetched} after the restart, though it held {partial} of {size}"
    );
    let d = back.wait_status(&id, &["success"], BUILD).await.unwrap();
    assert_eq!(d["status"], "success");
}

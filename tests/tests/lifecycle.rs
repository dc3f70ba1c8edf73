//! A peer's life as Kubernetes drives it: on SIGTERM it stops being ready,
//! hands its builds to other peers at once (not after the lease), keeps
//! serving through its grace period, then stops; and it is only ready once
//! it serves every live site.

#![allow(clippy::unwrap_used, clippy::panic)]

use anyhow::Result;
use std::time::{Duration, Instant};
use tests::{random_bytes, wait_until, Mesh, Peer, Repo};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_builds_over_at_once_and_keeps_serving_through_the_grace() -> Result<()> {
    let mut mesh = Mesh::start_with(3, &["--shutdown-grace", "3s", "--lease", "6s"]).await?;
    mesh.wait_all_alive(Duration::from_secs(20)).await?;
    let site = Repo::new(&[("index.html", b"<h1>served</h1>")])?;
    let (_, done) = mesh.peers[0].deploy_and_wait(site.path(), "served").await?;
    assert_eq!(done["status"], "success");
    for p in &mesh.peers {
        wait_until("served everywhere", Duration::from_secs(20), || async {
            (p.site_bytes("served", "/").await? == b"<h1>served</h1>").then_some(())
        })
        .await?;
    }

    let slow = Repo::slow_build("20", "handed over")?;
    let id = mesh.peers[0].deploy(slow.path(), "slow").await?;
    let building = mesh.peers[0]
        .wait_status(&id, &["building"], Duration::from_secs(30))
        .await?;
    mesh.peers[0]
        .wait_log(&id, "slow-start", Duration::from_secs(30))
        .await?;
    let builder = building["builder"].as_str().unwrap().to_owned();
    let epoch = building["epoch"].as_u64().unwrap();
    let index = mesh.peers.iter().position(|p| p.id == builder).unwrap();
    let watcher = (index + 1) % 3;

    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mesh.peers[index].pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    // At once: not ready, but still serving sites.
    let leaving = &mesh.peers[index];
    wait_until(
        "the leaving peer is not ready",
        Duration::from_secs(2),
        || async {
            let res = leaving
                .client()
                .get(format!("{}/readyz", leaving.http))
                .send()
                .await
                .ok()?;
            (res.status() == 503).then_some(())
        },
    )
    .await?;
    assert_eq!(
        leaving.site_bytes("served", "/").await.as_deref(),
        Some(&b"<h1>served</h1>"[..]),
        "sites are served during the grace period"
    );
    // Another peer claims the build well before the 6 s lease would expire.
    let claimed = wait_until(
        "another peer claims the build",
        Duration::from_secs(5),
        || async {
            let d = mesh.peers[watcher].deployment(&id).await.ok()?;
            (d["epoch"].as_u64()? > epoch
                && d["builder"].as_str().is_some_and(|b| b != builder)
                && d["status"] == "building")
                .then_some(d)
        },
    )
    .await?;
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let log = mesh.peers[watcher].log_text(&id).await?;
    assert!(log.contains("is shutting down"), "{log}");
    // Still serving after the hand-over, within the grace.
    assert!(leaving.site_bytes("served", "/").await.is_some());
    mesh.peers[index].stop(true)?;
    assert!(
        stopped.elapsed() >= Duration::from_secs(3),
        "the grace period was kept"
    );

    let new_builder = claimed["builder"].as_str().unwrap().to_owned();
    let end = mesh.peers[watcher]
        .wait_status(&id, &["success"], Duration::from_secs(60))
        .await?;
    assert_eq!(end["builder"], new_builder.as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_is_ready_only_once_it_serves_every_live_site() -> Result<()> {
    // Uploads capped so that the joiner needs a few seconds per site.
    let first = Peer::start(&["--upload-limit-kib", "512"]).await?;
    let mut names = Vec::new();
    let mut repos = Vec::new();
    for i in 0..2u64 {
        let big = random_bytes(1_500_000, i);
        let repo = Repo::new(&[("index.html", b"<h1>hi</h1>"), ("big.bin", &big)])?;
        let name = format!("site{i}");
        let (_, d) = first.deploy_and_wait(repo.path(), &name).await?;
        assert_eq!(d["status"], "success");
        names.push((name, big));
        repos.push(repo);
    }
    let bootstrap = first.p2p[0].clone();
    let started = Instant::now();
    let joiner = Peer::start(&["--bootstrap", &bootstrap]).await?;
    // Caught up, but not ready while a site is missing; ready once it has
    // them all, and from then on it serves them.
    let mut saw_missing = false;
    let readyz = format!("{}/readyz", joiner.http);
    loop {
        let res = joiner.client().get(&readyz).send().await?;
        let status = res.status();
        let body = res.text().await?;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(body.contains("is not here yet"), "{body}");
        saw_missing = true;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = started.elapsed();
    for (name, big) in &names {
        assert_eq!(
            joiner.site_bytes(name, "/big.bin").await.as_deref(),
            Some(&big[..]),
            "ready before serving {name}"
        );
    }
    assert!(saw_missing, "the joiner was not ready while it fetched");
    // 3 MB at 512 KiB/s: readiness waited for the fetch.
    assert!(waited > Duration::from_secs(3), "ready after {waited:?}");
    Ok(())
}

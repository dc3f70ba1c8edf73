//! Nothing is lost when a peer stops, gracefully or not.

#![allow(clippy::unwrap_used)]

use tests::{wait_until, Peer, Repo, BUILD};

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

//! Real JavaScript projects, built the way Netlify and Vercel build them:
//! devDependencies installed, the package manager from the lockfile, the
//! framework's command and output, a build cache per project. Each project
//! lives in `tests/fixtures/` (package.json, lockfile, sources); the
//! install step fetches its packages from the npm registry.

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::json;
use std::time::Duration;
use tests::{Peer, Repo, TOKEN};

/// Deadline of one framework build, install included.
const FRAMEWORK_BUILD: Duration = Duration::from_secs(300);

/// Seconds a step took, from its "`<step>` finished in X s" line.
fn step_secs(log: &str, step: &str) -> f64 {
    let needle = format!("[{step}] {step} finished in ");
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&needle)?.strip_suffix(" s")?.parse().ok())
        .unwrap_or_else(|| panic!("no {step} time in\n{log}"))
}

async fn set_env(peer: &Peer, project: &str, key: &str, value: &str) {
    let res = peer
        .client()
        .put(format!("{}/api/projects/{project}/env/{key}", peer.http))
        .bearer_auth(TOKEN)
        .json(&json!({"value": value}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[tokio::test]
async fn a_vite_typescript_app_builds_and_its_redeploy_downloads_nothing() {
    let repo = Repo::fixture("vite-react-ts").unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    set_env(&peer, "vite-app", "VITE_GREETING", "hello from the mesh").await;

    let id = peer.deploy(repo.path(), "vite-app").await.unwrap();
    let d = peer.wait_final(&id, FRAMEWORK_BUILD).await.unwrap();
    let log = peer.log_text(&id).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(
        log.contains("[detect] detected npm (Vite + React)"),
        "{log}"
    );
    assert!(
        log.contains("[install] $ npm ci --include=dev --no-audit --no-fund"),
        "{log}"
    );
    assert!(!log.contains("NODE_ENV"), "{log}");
    assert!(log.contains("[detect] no build cache yet"), "{log}");
    assert!(
        log.contains("[check] link check: 1 local links in 1 pages, none missing"),
        "{log}"
    );
    assert!(log.contains("[pack] saved the build cache"), "{log}");
    let page = peer
        .site("vite-app", "/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let script = page
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no script in {page}"));
    assert!(
        script.starts_with("/assets/index-") && script.ends_with(".js"),
        "{page}"
    );
    let js = peer
        .site("vite-app", script)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        js.contains("hello from the mesh"),
        "the project's variable reached the build"
    );
    let (first_install, first_build) = (step_secs(&log, "install"), step_secs(&log, "build"));

    // The same lockfile again, with npm forbidden the network: everything
    // comes from the cache, or the install fails.
    set_env(&peer, "vite-app", "npm_config_offline", "true").await;
    let again = peer.deploy(repo.path(), "vite-app").await.unwrap();
    let d = peer.wait_final(&again, FRAMEWORK_BUILD).await.unwrap();
    let log = peer.log_text(&again).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(
        log.contains("[detect] restored the build cache for this lockfile"),
        "{log}"
    );
    let (second_install, second_build) = (step_secs(&log, "install"), step_secs(&log, "build"));
    eprintln!(
        "vite-react-ts: install {first_install:.1} s then {second_install:.1} s from the cache; build {first_build:.1} s then {second_build:.1} s"
    );

    // Cleared on the API: the next build starts cold.
    let res = peer
        .client()
        .delete(format!("{}/api/projects/vite-app/cache", peer.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let cold = peer.deploy(repo.path(), "vite-app").await.unwrap();
    let d = peer.wait_final(&cold, FRAMEWORK_BUILD).await.unwrap();
    let log = peer.log_text(&cold).await.unwrap();
    assert_eq!(
        d["status"], "buildFailed",
        "offline without a cache cannot install:\n{log}"
    );
    assert!(log.contains("[detect] no build cache yet"), "{log}");
}

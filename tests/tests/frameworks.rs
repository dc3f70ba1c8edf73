//! Real JavaScript projects, built the way Netlify and Vercel build them:
//! devDependencies installed, the package manager from the lockfile, the
//! framework's command and output, a build cache per project. Each project
//! lives in `tests/fixtures/` (package.json, lockfile, sources); the
//! install step fetches its packages from the npm registry.

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::json;
use std::time::Duration;
use tests::{wait_until, Mesh, Peer, Repo, TOKEN};

/// Deadline of one framework build, install included.
const FRAMEWORK_BUILD: Duration = Duration::from_secs(420);

/// Framework builds at once: each wants both cores for a while.
static BUILDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// This machine's registry (a mirror) serves no signatures for corepack.
const PEER_FLAGS: &[&str] = &["--corepack-no-signatures"];

/// Deploys fixture `fixture` as `name` on a 3-peer mesh, waits for
/// `success`, and checks that every peer serves each page with its text.
/// Returns the build log.
async fn deploys_everywhere(fixture: &str, name: &str, pages: &[(&str, &str)]) -> String {
    let _slot = BUILDS.acquire().await.unwrap();
    let repo = Repo::fixture(fixture).unwrap();
    let mesh = Mesh::start_with(3, PEER_FLAGS).await.unwrap();
    let id = mesh.peers[0].deploy(repo.path(), name).await.unwrap();
    let d = mesh.peers[0]
        .wait_final(&id, FRAMEWORK_BUILD)
        .await
        .unwrap();
    let log = mesh.peers[0].log_text(&id).await.unwrap();
    assert_eq!(d["status"], "success", "{fixture}:\n{log}");
    for peer in &mesh.peers {
        for (path, text) in pages {
            let body = wait_until(
                &format!("{path} of {name} on every peer"),
                Duration::from_secs(30),
                || async {
                    let res = peer.site(name, path).await.ok()?;
                    res.status().is_success().then_some(())?;
                    res.text().await.ok()
                },
            )
            .await
            .unwrap();
            assert!(body.contains(text), "{fixture} {path}: {body}\n{log}");
        }
    }
    eprintln!(
        "{fixture}: install {:.1} s, build {:.1} s",
        step_secs(&log, "install"),
        step_secs(&log, "build")
    );
    log
}

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
    let _slot = BUILDS.acquire().await.unwrap();
    let repo = Repo::fixture("vite-react-ts").unwrap();
    let peer = Peer::start(PEER_FLAGS).await.unwrap();
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
    assert!(
        log.contains("(the repository asks for >=18 in engines.node)"),
        "{log}"
    );
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

    // Built for a sub-path (the GitHub Pages habit) but served at the root:
    // the log names the first missing asset.
    repo.commit(
        &[(
            "vite.config.ts",
            b"import { defineConfig } from \"vite\";\nimport react from \"@vitejs/plugin-react\";\n\nexport default defineConfig({ base: \"/vite-react-ts/\", plugins: [react()] });\n",
        )],
        "build for GitHub Pages",
    )
    .unwrap();
    let sub = peer.deploy(repo.path(), "vite-app").await.unwrap();
    let d = peer.wait_final(&sub, FRAMEWORK_BUILD).await.unwrap();
    let log = peer.log_text(&sub).await.unwrap();
    assert_eq!(d["status"], "success", "a warning, not a failure:\n{log}");
    assert!(
        log.contains(
            "[check] link check: 1 of 1 local links in 1 pages point to files that do not exist"
        ),
        "{log}"
    );
    assert!(
        log.contains("the assets are built for the sub-path /vite-react-ts/ but the site is served at the root: /vite-react-ts/assets/index-"),
        "{log}"
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

#[tokio::test]
async fn astro() {
    deploys_everywhere(
        "astro",
        "astro-site",
        &[
            ("/", "Astro on shoal"),
            ("/about/", "About this Astro site"),
        ],
    )
    .await;
}

#[tokio::test]
async fn next_static_export_with_a_yarn_lockfile() {
    let log = deploys_everywhere(
        "next",
        "next-site",
        &[
            ("/", "Next.js on shoal"),
            ("/about", "About this Next.js site"),
        ],
    )
    .await;
    assert!(
        log.contains("[detect] detected yarn classic (Next.js static export)"),
        "{log}"
    );
    assert!(
        log.contains("yarn is not installed on this peer: corepack provides it"),
        "{log}"
    );
    assert!(
        log.contains(
            "[install] $ yarn install --frozen-lockfile --production=false --non-interactive"
        ),
        "{log}"
    );
}

#[tokio::test]
async fn sveltekit_with_adapter_static() {
    deploys_everywhere(
        "sveltekit",
        "kit-site",
        &[
            ("/", "SvelteKit on shoal"),
            ("/about", "About this SvelteKit site"),
        ],
    )
    .await;
}

#[tokio::test]
async fn nuxt_generate() {
    let log = deploys_everywhere(
        "nuxt",
        "nuxt-site",
        &[("/", "Nuxt on shoal"), ("/about", "About this Nuxt site")],
    )
    .await;
    assert!(log.contains("[build] $ npm run generate"), "{log}");
}

#[tokio::test]
async fn docusaurus() {
    deploys_everywhere(
        "docusaurus",
        "docs-site",
        &[("/", "Docusaurus on shoal"), ("/guide", "The guide")],
    )
    .await;
}

#[tokio::test]
async fn eleventy_with_pnpm_from_the_package_manager_field() {
    let log = deploys_everywhere(
        "eleventy",
        "eleventy-site",
        &[
            ("/", "Eleventy on shoal"),
            ("/posts/first/", "The first post"),
        ],
    )
    .await;
    assert!(
        log.contains("[detect] detected pnpm 9.15.9 (Eleventy)"),
        "{log}"
    );
    assert!(
        log.contains("[install] $ pnpm install --frozen-lockfile --prod=false"),
        "{log}"
    );
    assert!(log.contains("none missing"), "{log}");
}

/// Fails fast, before any install: detection and the frozen lockfile.
#[tokio::test]
async fn what_cannot_build_says_what_to_change() {
    let peer = Peer::start(PEER_FLAGS).await.unwrap();
    // Next.js without `output: 'export'` builds a server.
    let next = Repo::fixture("next").unwrap();
    next.commit(
        &[("next.config.mjs", b"export default {};\n")],
        "server output",
    )
    .unwrap();
    let (id, d) = peer
        .deploy_and_wait(next.path(), "next-server")
        .await
        .unwrap();
    assert_eq!(d["status"], "buildFailed");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("set `output: 'export'` in next.config.js"),
        "{error}"
    );
    let log = peer.log_text(&id).await.unwrap();
    assert!(
        !log.contains("[install]"),
        "nothing installed for a build that cannot work:\n{log}"
    );

    // A dependency added to package.json but not to the lockfile, and a
    // Node version this peer does not run.
    let eleventy = Repo::fixture("eleventy").unwrap();
    let pkg = std::fs::read_to_string(eleventy.path().join("package.json")).unwrap();
    let pkg = pkg.replace(
        r#""@11ty/eleventy": "^3.0.0""#,
        r#""@11ty/eleventy": "^3.0.0", "left-pad": "^1.3.0""#,
    );
    eleventy
        .commit(
            &[("package.json", pkg.as_bytes()), (".nvmrc", b"16.20.2\n")],
            "drift",
        )
        .unwrap();
    let (id, d) = peer
        .deploy_and_wait(eleventy.path(), "drift")
        .await
        .unwrap();
    let log = peer.log_text(&id).await.unwrap();
    assert_eq!(d["status"], "buildFailed", "{log}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.ends_with("package.json and pnpm-lock.yaml disagree: run `pnpm install` and commit the updated pnpm-lock.yaml"),
        "{error}\n{log}"
    );
    assert!(
        log.contains("the repository asks for Node 16.20.2 (.nvmrc), but this peer runs Node v"),
        "{log}"
    );
}

/// Gatsby's own `sharp` (0.32) downloads libvips from GitHub at install,
/// which this machine cannot reach; the fixture pins the 0.33 that comes
/// from the npm registry (`overrides`), as a user behind a firewall would.
#[tokio::test]
async fn gatsby() {
    deploys_everywhere(
        "gatsby",
        "gatsby-site",
        &[
            ("/", "Gatsby on shoal"),
            ("/about/", "About this Gatsby site"),
        ],
    )
    .await;
}

#[tokio::test]
async fn create_react_app() {
    let log = deploys_everywhere("cra", "cra-site", &[("/", "<div id=\"root\"></div>")]).await;
    assert!(
        log.contains("[detect] detected npm (Create React App)"),
        "{log}"
    );
    assert!(log.contains("none missing"), "{log}");
}

#[tokio::test]
async fn vite_on_every_peer() {
    let log = deploys_everywhere(
        "vite-react-ts",
        "vite-mesh",
        &[("/", "<div id=\"root\"></div>")],
    )
    .await;
    assert!(
        log.contains("[check] link check: 1 local links in 1 pages, none missing"),
        "{log}"
    );
}

#[tokio::test]
async fn vite_with_vue() {
    let log = deploys_everywhere("vite-vue", "vue-site", &[("/", "<div id=\"app\"></div>")]).await;
    assert!(log.contains("[detect] detected npm (Vite + Vue)"), "{log}");
}

/// Yarn berry from the `packageManager` field, through corepack, with its
/// lockfile immutable.
#[tokio::test]
async fn vite_with_svelte_and_yarn_berry() {
    let log = deploys_everywhere(
        "vite-svelte-berry",
        "svelte-site",
        &[("/", "<div id=\"app\"></div>")],
    )
    .await;
    assert!(
        log.contains("[detect] detected yarn berry 4.5.3 (Vite + Svelte)"),
        "{log}"
    );
    assert!(
        log.contains("[install] $ yarn install --immutable"),
        "{log}"
    );
}

//! The web UI in a real headless Chromium, driven over WebDriver
//! (chromedriver), against a 3-peer mesh and the fake GitHub: sign in with
//! the web flow, sign out, sign in with a device code, pick a private
//! repository, watch it reach success, open the live site, redeploy a new
//! commit, roll back, and see every peer serve each version. Saves
//! screenshots of the main pages to `target/screenshots` (or
//! `$SHOAL_SCREENSHOTS`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use anyhow::{Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tests::github::{FakeGitHub, FakeRepo};
use tests::{wait_until, Mesh, Repo};

const WAIT: Duration = Duration::from_secs(60);

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver on a free port and a headless Chromium session.
async fn browser() -> Result<(Driver, Client)> {
    let driver = which("chromedriver").context(
        "chromedriver is not installed: scripts/test.sh installs Debian's chromium and chromium-driver",
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    wait_until("chromedriver", Duration::from_secs(20), || async {
        reqwest::get(format!("{url}/status"))
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await?;
    let mut caps = serde_json::Map::new();
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--lang=en-US"],
    });
    if let Some(bin) = which("chromium") {
        options["binary"] = json!(bin);
    }
    caps.insert("goog:chromeOptions".into(), options);
    let client = ClientBuilder::native()
        .capabilities(caps)
        .connect(&url)
        .await
        .context("starting Chromium through chromedriver")?;
    Ok((driver, client))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn screenshots_dir() -> PathBuf {
    std::env::var_os("SHOAL_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"),
        PathBuf::from,
    )
}

async fn screenshot(c: &Client, name: &str) -> Result<()> {
    let png = c.screenshot().await?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.png")), png)?;
    Ok(())
}

async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Waits until the element's text satisfies `ok`.
async fn wait_text(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
    wait_until(what, WAIT, || async {
        let t = text_of(c, css).await?;
        ok(&t).then_some(t)
    })
    .await
}

async fn wait_url(c: &Client, what: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
    wait_until(what, WAIT, || async {
        let u = c.current_url().await.ok()?.to_string();
        ok(&u).then_some(u)
    })
    .await
}

/// Waits until every peer serves `needle` for site `name`.
async fn all_serve(mesh: &Mesh, name: &str, needle: &str) -> Result<()> {
    for p in &mesh.peers {
        wait_until(&format!("{} serves {needle}", p.id), WAIT, || async {
            let body = p.site(name, "/").await.ok()?.text().await.ok()?;
            body.contains(needle).then_some(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_pick_a_repo_deploy_redeploy_and_roll_back_in_a_real_browser() -> Result<()> {
    let gh = FakeGitHub::start(&[("octocat", &[])]).await?;
    let source = Repo::new(&[("index.html", b"<h1>blog v1</h1>")])?;
    gh.add_repo(
        FakeRepo {
            owner: "octocat".into(),
            name: "blog".into(),
            private: true,
            description: "my private blog".into(),
            pushed: 100,
            default_branch: "main".into(),
        },
        Some(source.path()),
    )?;
    gh.add_repo(
        FakeRepo {
            owner: "octocat".into(),
            name: "docs".into(),
            private: false,
            description: "documentation".into(),
            pushed: 50,
            default_branch: "main".into(),
        },
        None,
    )?;
    let mut flags = gh.flags();
    flags.extend(["--allowed-users".to_owned(), "octocat".to_owned()]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mesh = Mesh::start_with(3, &refs).await?;
    mesh.wait_all_alive(Duration::from_secs(30)).await?;
    let a = &mesh.peers[0];
    let (_driver, c) = browser().await?;

    // The web flow: GitHub's authorize page, then back, signed in.
    c.goto(&format!("{}/login", a.http)).await?;
    screenshot(&c, "login").await?;
    c.find(Locator::Css("a[href='/auth/github']"))
        .await?
        .click()
        .await?;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#authorize"))
        .await?
        .click()
        .await?;
    wait_text(&c, ".account", "signed in (web flow)", |t| {
        t.contains("@octocat")
    })
    .await?;

    // Sign out from the header.
    c.find(Locator::Css("form.inline button"))
        .await?
        .click()
        .await?;
    wait_url(&c, "signed out", |u| u.ends_with("/login")).await?;
    wait_text(&c, ".account", "signed out", |t| t.contains("Sign in")).await?;

    // The device flow: the page shows a code; the user enters it on GitHub
    // in another tab; the page notices and moves on.
    c.find(Locator::Css("#device-login")).await?.click().await?;
    let code = wait_text(&c, "#device-code", "device code", |t| t.len() >= 8).await?;
    let link = c
        .find(Locator::Css("#device-link"))
        .await?
        .attr("href")
        .await?
        .context("verification link")?;
    assert!(link.starts_with(&gh.url));
    screenshot(&c, "device-code").await?;
    let shoal_tab = c.window().await?;
    let tab = c.new_window(true).await?;
    c.switch_to_window(tab.handle).await?;
    c.goto(&link).await?;
    c.find(Locator::Css("#user_code"))
        .await?
        .send_keys(&code)
        .await?;
    c.find(Locator::Css("#authorize")).await?.click().await?;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#done"))
        .await?;
    c.close_window().await?;
    c.switch_to_window(shoal_tab).await?;
    wait_url(&c, "the picker after sign-in", |u| u.ends_with("/new")).await?;

    // The picker lists the user's repositories; search, then deploy.
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("li[data-repo='octocat/docs']"))
        .await?;
    c.find(Locator::Css("#repo-search"))
        .await?
        .send_keys("blog")
        .await?;
    wait_until("search narrows the list", WAIT, || async {
        let items = c
            .find_all(Locator::Css("#repos li[data-repo]"))
            .await
            .ok()?;
        (items.len() == 1).then_some(())
    })
    .await?;
    screenshot(&c, "new-project").await?;
    c.find(Locator::Css("li[data-repo='octocat/blog'] button"))
        .await?
        .click()
        .await?;
    let first_url = wait_url(&c, "the deployment page", |u| u.contains("/deployments/")).await?;
    wait_text(&c, "[data-status]", "success in the page", |t| {
        t == "success"
    })
    .await?;
    all_serve(&mesh, "blog", "blog v1").await?;
    c.refresh().await?;
    wait_text(&c, "#replicas", "3 replicas shown", |t| {
        t.matches("complete").count() >= 3
    })
    .await?;
    screenshot(&c, "deployment").await?;

    // The live site, in the browser (*.localhost is loopback to Chromium).
    let site = format!(
        "http://blog.localhost:{}/",
        a.sites.rsplit(':').next().unwrap()
    );
    c.goto(&site).await?;
    wait_text(&c, "h1", "the live site", |t| t == "blog v1").await?;

    // A new commit, redeployed from the deployment page.
    source.commit(&[("index.html", b"<h1>blog v2</h1>")], "v2")?;
    gh.push("octocat", "blog", source.path())?;
    c.goto(&first_url).await?;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#redeploy"))
        .await?
        .click()
        .await?;
    wait_url(&c, "the new deployment's page", |u| {
        u.contains("/deployments/") && u != first_url
    })
    .await?;
    wait_text(&c, "[data-status]", "the redeploy succeeds", |t| {
        t == "success"
    })
    .await?;
    all_serve(&mesh, "blog", "blog v2").await?;

    // Roll back to the first deployment: every peer serves v1 again.
    c.goto(&first_url).await?;
    let button = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#make-live"))
        .await?;
    assert_eq!(button.attr("data-verb").await?.as_deref(), Some("rollback"));
    button.click().await?;
    wait_text(&c, "#make-live-result", "rollback accepted", |t| {
        t.contains("switches")
    })
    .await?;
    all_serve(&mesh, "blog", "blog v1").await?;

    c.goto(&format!("{}/projects", a.http)).await?;
    wait_text(&c, "tr[data-project='blog']", "project listed", |t| {
        t.contains("blog")
    })
    .await?;
    screenshot(&c, "projects").await?;
    // The project's history: two versions went live, then the rollback.
    c.goto(&format!("{}/projects/blog", a.http)).await?;
    let history = wait_text(&c, "#history", "the project's history", |t| {
        t.contains("rollback")
    })
    .await?;
    assert_eq!(
        history.matches("every live peer holds it").count(),
        2,
        "{history}"
    );
    let first_id = first_url.rsplit('/').next().unwrap();
    assert!(history.contains(&first_id[..10]));

    // Environment variables on the project page: a secret is listed by
    // name only, a plain one with its value, and one can be removed.
    const SECRET: &str = "browser-secret-5f1c9a";
    for (key, value, secret) in [
        ("API_KEY", SECRET, true),
        ("PUBLIC_URL", "https://blog.example", false),
    ] {
        let form = c.find(Locator::Css("#env-form")).await?;
        form.find(Locator::Css("input[name=key]"))
            .await?
            .send_keys(key)
            .await?;
        form.find(Locator::Css("input[name=value]"))
            .await?
            .send_keys(value)
            .await?;
        if secret {
            form.find(Locator::Css("input[name=secret]"))
                .await?
                .click()
                .await?;
        }
        form.find(Locator::Css("button")).await?.click().await?;
        wait_text(
            &c,
            &format!("#env-vars tr[data-key='{key}']"),
            "the variable listed",
            |t| t.contains(key),
        )
        .await?;
    }
    let secret_row = text_of(&c, "#env-vars tr[data-key='API_KEY']")
        .await
        .unwrap_or_default();
    assert!(secret_row.contains("secret (hidden)"), "{secret_row}");
    let plain_row = text_of(&c, "#env-vars tr[data-key='PUBLIC_URL']")
        .await
        .unwrap_or_default();
    assert!(plain_row.contains("https://blog.example"), "{plain_row}");
    screenshot(&c, "project-env").await?;
    assert!(
        !c.source().await?.contains(SECRET),
        "the page shows the secret"
    );
    c.refresh().await?;
    wait_text(
        &c,
        "#env-vars tr[data-key='API_KEY']",
        "the variables after a reload",
        |t| t.contains("secret (hidden)"),
    )
    .await?;
    assert!(
        !c.source().await?.contains(SECRET),
        "the page shows the secret"
    );
    c.find(Locator::Css("#env-vars tr[data-key='PUBLIC_URL'] button"))
        .await?
        .click()
        .await?;
    wait_until("the removed variable gone", WAIT, || async {
        c.find(Locator::Css("#env-vars tr[data-key='PUBLIC_URL']"))
            .await
            .is_err()
            .then_some(())
    })
    .await?;
    c.goto(&format!("{}/peers", a.http)).await?;
    let rows = c.find_all(Locator::Css("#peers tbody tr")).await?;
    assert_eq!(rows.len(), 3);
    for row in rows {
        let text = row.text().await?;
        assert!(text.contains("alive") && text.contains("blog"), "{text}");
    }
    screenshot(&c, "peers").await?;

    // Phone width: the dashboard fits without sideways scrolling.
    c.set_window_size(390, 844).await?;
    c.goto(&format!("{}/", a.http)).await?;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await?;
    assert_eq!(
        fits,
        json!(true),
        "the dashboard overflows a phone-width screen"
    );
    screenshot(&c, "phone").await?;
    c.close().await?;
    Ok(())
}

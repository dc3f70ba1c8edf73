//! Signing in with GitHub, against the fake GitHub: the device flow through
//! any peer (with `slow_down` honoured), the web flow with its `state`
//! check, sessions and CSRF accepted mesh-wide, sign-out revoking
//! everywhere, the allow-list, the repository picker's pagination, and a
//! private repository built by another peer with a sealed token that never
//! shows up in the API, the logs or the state on disk.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::Duration;
use tests::github::{deliver, push_body, FakeGitHub, FakeRepo};

const HOOK_SECRET: &str = "a webhook secret for the mesh";
use tests::{wait_until, Mesh, Peer, Repo, TOKEN};

/// A signed-in user: the sealed session and the cookie that carries it.
struct SignedIn {
    session: String,
    cookie: String,
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` part of the `Set-Cookie` header for `name`.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<(String, String)> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().unwrap_or("").to_owned();
            (pair, v.to_owned())
        })
}

async fn post_json(peer: &Peer, path: &str, body: &Value) -> Result<reqwest::Response> {
    Ok(no_redirects()
        .post(format!("{}{path}", peer.http))
        .json(body)
        .send()
        .await?)
}

/// The device flow, started on `start` and polled through `finish` at the
/// interval the peer asks for, approved on the fake GitHub by its browser
/// user. Returns the final answer (done, or refused).
async fn device_flow(gh: &FakeGitHub, start: &Peer, finish: &Peer) -> Result<reqwest::Response> {
    let res = no_redirects()
        .post(format!("{}/auth/device", start.http))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "device start: {}", res.status());
    let started: Value = res.json().await?;
    assert!(started["verification_uri"]
        .as_str()
        .unwrap()
        .starts_with(&gh.url));
    let mut handle = started["handle"].as_str().context("handle")?.to_owned();
    let mut interval = started["interval"].as_u64().unwrap_or(1);
    gh.approve_device(started["user_code"].as_str().context("user_code")?)
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let res = post_json(finish, "/auth/device/poll", &json!({ "handle": handle })).await?;
        if res.status() != 200 || set_cookie(&res, "shoal_session").is_some() {
            return Ok(res);
        }
        let body: Value = res.json().await?;
        handle = body["handle"].as_str().context("handle")?.to_owned();
        interval = body["interval"].as_u64().unwrap_or(1);
        if tokio::time::Instant::now() > deadline {
            bail!("device sign-in did not finish");
        }
    }
}

/// Signs in through the device flow and returns the session.
async fn sign_in(gh: &FakeGitHub, start: &Peer, finish: &Peer) -> Result<SignedIn> {
    let res = device_flow(gh, start, finish).await?;
    anyhow::ensure!(res.status() == 200, "sign-in refused: {}", res.status());
    let (cookie, raw) = set_cookie(&res, "shoal_session").context("session cookie")?;
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Lax"),
        "{raw}"
    );
    let body: Value = res.json().await?;
    assert_eq!(body["state"], "done");
    Ok(SignedIn {
        session: body["session"].as_str().context("session")?.to_owned(),
        cookie,
    })
}

/// `POST /api/deployments` with a session cookie and, maybe, a CSRF token.
async fn cookie_deploy(
    peer: &Peer,
    cookie: &str,
    csrf: Option<&str>,
    body: &Value,
) -> Result<reqwest::Response> {
    let mut req = no_redirects()
        .post(format!("{}/api/deployments", peer.http))
        .header("cookie", cookie)
        .json(body);
    if let Some(csrf) = csrf {
        req = req.header("x-csrf-token", csrf);
    }
    Ok(req.send().await?)
}

fn args(gh: &FakeGitHub, extra: &[&str]) -> Vec<String> {
    let mut v = gh.flags();
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

/// Polls the device sign-in every 100 ms through both peers in turn, until
/// GitHub has seen `polls` device polls and `then_ms` more have passed.
/// Every answer must be "pending". Returns how many answers came and the last.
async fn poll_often(
    gh: &FakeGitHub,
    peers: [&Peer; 2],
    handle: &mut String,
    polls: usize,
    then_ms: u64,
) -> Result<(usize, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stop = None;
    let mut answers = 0;
    loop {
        let peer = peers[answers % 2];
        let answer: Value = post_json(peer, "/auth/device/poll", &json!({ "handle": *handle }))
            .await?
            .json()
            .await?;
        anyhow::ensure!(answer["state"] == "pending", "{answer}");
        *handle = answer["handle"].as_str().context("handle")?.to_owned();
        answers += 1;
        let now = tokio::time::Instant::now();
        if stop.is_none() && gh.device_polls() >= polls {
            stop = Some(now + Duration::from_millis(then_ms));
        }
        if stop.is_some_and(|s| now >= s) {
            return Ok((answers, answer));
        }
        anyhow::ensure!(now < deadline, "GitHub saw no device poll");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_sign_in_works_through_any_peer_and_sign_out_is_mesh_wide() -> Result<()> {
    let gh = FakeGitHub::start(&[("octocat", &[]), ("mallory", &[])]).await?;
    let flags = args(&gh, &["--allowed-users", "octocat"]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mesh = Mesh::start_with(2, &refs).await?;
    mesh.wait_all_alive(Duration::from_secs(20)).await?;
    let (a, b) = (&mesh.peers[0], &mesh.peers[1]);
    let interval = 2;
    gh.set_device_interval(interval);

    // Started on A; polled through B (the handle carries the sign-in).
    let started: Value = no_redirects()
        .post(format!("{}/auth/device", a.http))
        .send()
        .await?
        .json()
        .await?;
    let mut handle = started["handle"].as_str().unwrap().to_owned();
    assert!(!handle.contains(started["user_code"].as_str().unwrap()));

    // Clients ask every 100 ms, through either peer; GitHub is asked once
    // per interval, never too soon (it would answer slow_down), and the
    // peers answer "pending" in between.
    let polls = gh.device_polls();
    // One poll reaches GitHub once the interval is up, then none for a while.
    let (answers, last) = poll_often(&gh, [b, a], &mut handle, polls + 1, 1000).await?;
    assert_eq!(gh.device_polls(), polls + 1, "one poll per interval");
    assert!(answers > 10, "{answers} answers");
    assert_eq!(last["interval"], interval);
    assert_eq!(gh.slow_downs(), 0, "never polled too soon");

    // GitHub says slow_down: the interval grows by 5 s and every peer keeps it.
    gh.force_slow_down();
    let (_, last) = poll_often(&gh, [a, b], &mut handle, polls + 2, 2500).await?;
    assert_eq!(
        gh.device_polls(),
        polls + 2,
        "slow_down is honoured on every peer"
    );
    assert!(last["interval"].as_u64().unwrap() >= interval + 5, "{last}");
    assert_eq!(gh.slow_downs(), 1, "only the forced one");
    gh.set_device_interval(1);

    // A forged or foreign handle is refused.
    let forged = post_json(a, "/auth/device/poll", &json!({"handle": "s1.00ff"})).await?;
    assert_eq!(forged.status(), 400);

    let user = sign_in(&gh, a, b).await?;
    let token = gh.token_of("octocat");
    assert!(!user.session.contains(&token) && !user.cookie.contains(&token));

    // The session made through B works on A, as a cookie and as a bearer.
    let me: Value = no_redirects()
        .get(format!("{}/api/me", a.http))
        .header("cookie", &user.cookie)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["login"], "octocat");
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    let page = no_redirects()
        .get(format!("{}/", a.http))
        .header("cookie", &user.cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(page.contains("@octocat") && page.contains(&csrf));

    // Cookie writes need the CSRF token; bearer sessions do not.
    let site = Repo::new(&[("index.html", b"<h1>signed in</h1>")])?;
    let body = json!({"repo_url": site.path(), "name": "signed"});
    let res = cookie_deploy(a, &user.cookie, None, &body).await?;
    assert_eq!(res.status(), 403, "no CSRF token");
    let res = cookie_deploy(a, &user.cookie, Some("0000"), &body).await?;
    assert_eq!(res.status(), 403, "wrong CSRF token");
    let res = cookie_deploy(a, &user.cookie, Some(&csrf), &body).await?;
    assert_eq!(res.status(), 202);
    let dep: Value = res.json().await?;
    let log = b
        .wait_log(
            dep["id"].as_str().unwrap(),
            "for GitHub user octocat",
            Duration::from_secs(20),
        )
        .await?;
    assert!(!log.to_string().contains(&token));
    let res = no_redirects()
        .post(format!("{}/api/deployments", b.http))
        .bearer_auth(&user.session)
        .json(&json!({"repo_url": site.path(), "name": "signed-cli"}))
        .send()
        .await?;
    assert_eq!(res.status(), 202);

    // Not allowed: mallory signs in to GitHub but gets no session.
    gh.sign_in_browser_as("mallory");
    let refused = device_flow(&gh, a, b).await?;
    assert_eq!(refused.status(), 403);
    assert!(set_cookie(&refused, "shoal_session").is_none());
    let why: Value = refused.json().await?;
    assert!(
        why["detail"]
            .as_str()
            .unwrap()
            .contains("mallory is not allowed"),
        "{why}"
    );

    // Signing out on B (a form post) refuses the session on A too.
    let res = no_redirects()
        .post(format!("{}/auth/logout", b.http))
        .header("cookie", &user.cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    assert_eq!(res.status(), 303);
    let (cleared, raw) = set_cookie(&res, "shoal_session").unwrap();
    assert_eq!(cleared, "shoal_session=");
    assert!(raw.contains("Max-Age=0"));
    wait_until(
        "sign-out reaches peer A",
        Duration::from_secs(10),
        || async {
            let res = no_redirects()
                .get(format!("{}/api/me", a.http))
                .bearer_auth(&user.session)
                .send()
                .await
                .ok()?;
            (res.status() == 401).then_some(())
        },
    )
    .await?;
    let res = cookie_deploy(a, &user.cookie, Some(&csrf), &body).await?;
    assert_eq!(res.status(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn web_sign_in_checks_state() -> Result<()> {
    let gh = FakeGitHub::start(&[("octocat", &["acme"])]).await?;
    let flags = args(&gh, &["--allowed-orgs", "acme"]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let peer = Peer::start(&refs).await?;
    let http = no_redirects();

    let res = http
        .get(format!("{}/auth/github", peer.http))
        .send()
        .await?;
    assert_eq!(res.status(), 303);
    let location = res.headers()["location"].to_str()?.to_owned();
    assert!(
        location.starts_with(&format!("{}/login/oauth/authorize?", gh.url)),
        "{location}"
    );
    let (state_cookie, raw) = set_cookie(&res, "shoal_oauth").context("state cookie")?;
    assert!(raw.contains("HttpOnly") && raw.contains("SameSite=Lax"));
    let url = reqwest::Url::parse(&location)?;
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(
        q["redirect_uri"],
        format!("{}/auth/github/callback", peer.http)
    );
    assert!(
        !state_cookie.contains(&q["state"]),
        "the state is sealed in the cookie"
    );

    // The user authorizes on GitHub, which redirects back with code and state.
    let page = http.get(&location).send().await?.text().await?;
    assert!(page.contains("Authorize"));
    let res = http
        .post(format!("{}/login/oauth/authorize", gh.url))
        .form(&[
            ("client_id", q["client_id"].as_str()),
            ("redirect_uri", q["redirect_uri"].as_str()),
            ("state", q["state"].as_str()),
        ])
        .send()
        .await?;
    let callback = res.headers()["location"].to_str()?.to_owned();

    // Without the browser's state cookie (another browser): refused.
    let res = http.get(&callback).send().await?;
    assert_eq!(res.status(), 400);
    assert!(set_cookie(&res, "shoal_session").is_none());
    // A wrong state with the cookie: refused.
    let forged = callback.replace(&format!("state={}", q["state"]), "state=forged");
    let res = http
        .get(&forged)
        .header("cookie", &state_cookie)
        .send()
        .await?;
    assert_eq!(res.status(), 400);

    let res = http
        .get(&callback)
        .header("cookie", &state_cookie)
        .send()
        .await?;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
    let (session, raw) = set_cookie(&res, "shoal_session").context("session cookie")?;
    assert!(raw.contains("HttpOnly") && raw.contains("SameSite=Lax"));
    let me: Value = http
        .get(format!("{}/api/me", peer.http))
        .header("cookie", &session)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["login"], "octocat");
    // The code is single-use.
    let res = http
        .get(&callback)
        .header("cookie", &state_cookie)
        .send()
        .await?;
    assert_eq!(res.status(), 502);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_repo_picker_follows_github_pagination() -> Result<()> {
    let gh = FakeGitHub::start(&[("octocat", &["acme"]), ("mallory", &[])]).await?;
    for i in 0..130u64 {
        let description = if i % 40 == 7 { "has a needle" } else { "" };
        gh.add_repo(
            FakeRepo {
                owner: "octocat".into(),
                name: format!("site-{i:03}"),
                private: i % 2 == 0,
                description: description.into(),
                pushed: i * 60,
                default_branch: "main".into(),
            },
            None,
        )?;
    }
    for (owner, name, pushed) in [("acme", "org-site", 86_000), ("mallory", "theirs", 86_100)] {
        gh.add_repo(
            FakeRepo {
                owner: owner.into(),
                name: name.into(),
                private: true,
                description: String::new(),
                pushed,
                default_branch: "trunk".into(),
            },
            None,
        )?;
    }
    let flags = gh.flags();
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let peer = Peer::start(&refs).await?;
    let user = sign_in(&gh, &peer, &peer).await?;
    let get = |q: &str| {
        let url = format!("{}/api/github/repos?{q}", peer.http);
        let session = user.session.clone();
        async move {
            let res = no_redirects().get(url).bearer_auth(session).send().await?;
            anyhow::ensure!(res.status() == 200, "{}", res.status());
            Ok::<Value, anyhow::Error>(res.json().await?)
        }
    };
    let first = get("page=1").await?;
    assert_eq!(first["pages"], 5, "131 repositories, 30 a page");
    let names: Vec<&str> = first["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["full_name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "acme/org-site", "newest push first");
    assert_eq!(names[1], "octocat/site-129");
    assert_eq!(first["repos"][0]["default_branch"], "trunk");
    assert!(!names.iter().any(|n| n.starts_with("mallory/")));
    let last = get("page=5").await?;
    assert_eq!(last["repos"].as_array().unwrap().len(), 11);
    assert_eq!(last["repos"][10]["full_name"], "octocat/site-000");
    let found = get("q=NEEDLE").await?;
    let found: Vec<&str> = found["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["site-127", "site-087", "site-047", "site-007"]);
    // Two pages of 100 from GitHub, then the peer's short-lived cache.
    assert_eq!(gh.api_calls("/user/repos"), 2);

    // The admin token is not a GitHub user.
    let res = no_redirects()
        .get(format!("{}/api/github/repos", peer.http))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(res.status(), 403);
    let res = no_redirects()
        .get(format!("{}/api/github/repos", peer.http))
        .send()
        .await?;
    assert_eq!(res.status(), 401);
    Ok(())
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_repo_builds_on_another_peer_and_the_token_stays_sealed() -> Result<()> {
    let gh = FakeGitHub::start(&[("octocat", &[])]).await?;
    let source = Repo::new(&[("index.html", b"<h1>private content</h1>")])?;
    let clone_url = gh.add_repo(
        FakeRepo {
            owner: "octocat".into(),
            name: "secret-site".into(),
            private: true,
            description: "private".into(),
            pushed: 10,
            default_branch: "main".into(),
        },
        Some(source.path()),
    )?;
    let other_url = gh.add_repo(
        FakeRepo {
            owner: "octocat".into(),
            name: "other-secret".into(),
            private: true,
            description: String::new(),
            pushed: 5,
            default_branch: "main".into(),
        },
        Some(source.path()),
    )?;
    // Peer A only serves, so peer B must build.
    let mut flags = gh.flags();
    flags.extend(["--webhook-secret".to_owned(), HOOK_SECRET.to_owned()]);
    let serve_only: Vec<String> = flags
        .iter()
        .cloned()
        .chain(["--max-builds".to_owned(), "0".to_owned()])
        .collect();
    let mut mesh = Mesh::start_with(
        1,
        &serve_only.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let b = Peer::start(&[&refs[..], &["--bootstrap", &mesh.bootstrap()]].concat()).await?;
    mesh.peers.push(b);
    mesh.wait_all_alive(Duration::from_secs(20)).await?;
    let (a, b) = (&mesh.peers[0], &mesh.peers[1]);
    let user = sign_in(&gh, a, a).await?;
    let token = gh.token_of("octocat");

    let res = no_redirects()
        .post(format!("{}/api/deployments", a.http))
        .bearer_auth(&user.session)
        .json(&json!({"repo_url": clone_url, "ref": "main"}))
        .send()
        .await?;
    assert_eq!(res.status(), 202);
    let dep: Value = res.json().await?;
    let id = dep["id"].as_str().unwrap();
    let done = a.wait_final(id, Duration::from_secs(60)).await?;
    assert_eq!(done["status"], "success", "{}", a.log_text(id).await?);
    assert_eq!(done["builder"], b.id, "the serve-only peer did not build");
    for p in [a, b] {
        let body = p.site("secret-site", "/").await?.text().await?;
        assert!(body.contains("private content"));
    }
    // The builder cloned with the token, as basic auth.
    assert!(gh
        .git_auth("octocat/secret-site")
        .iter()
        .any(|h| h.as_deref().is_some_and(|h| h.starts_with("Basic "))));

    // A push webhook: B builds the pushed commit with the sealed token.
    let before = done["commit"].as_str().unwrap().to_owned();
    let after = source.commit(&[("index.html", b"<h1>private v2</h1>")], "v2")?;
    gh.push("octocat", "secret-site", source.path())?;
    let push = push_body(clone_url.trim_end_matches(".git"), "main", &before, &after);
    let (status, body) = deliver(a, "push", "private-1", &push, HOOK_SECRET).await;
    assert_eq!(status, 202, "{body}");
    let pushed = body["deployments"][0].as_str().unwrap().to_owned();
    let end = a.wait_final(&pushed, Duration::from_secs(60)).await?;
    assert_eq!(end["status"], "success", "{}", a.log_text(&pushed).await?);
    assert_eq!(end["commit"], after.as_str());
    for p in [a, b] {
        wait_until("v2 served", Duration::from_secs(20), || async {
            let body = p.site("secret-site", "/").await.ok()?.text().await.ok()?;
            body.contains("private v2").then_some(())
        })
        .await?;
    }

    // Without a signed-in user's token, a private repository is refused
    // with a clear reason.
    let res = no_redirects()
        .post(format!("{}/api/deployments", a.http))
        .bearer_auth(TOKEN)
        .json(&json!({"repo_url": other_url}))
        .send()
        .await?;
    assert_eq!(res.status(), 202);
    let failed: Value = res.json().await?;
    let failed_id = failed["id"].as_str().unwrap();
    let end = a.wait_final(failed_id, Duration::from_secs(60)).await?;
    assert_eq!(end["status"], "buildFailed");
    let why = a.log_text(failed_id).await?;
    assert!(why.contains("credentials"), "{why}");

    // The token is nowhere: not in the API, the logs, the processes'
    // output or the files of either peer.
    for p in [a, b] {
        for path in [
            "/api/deployments".to_owned(),
            "/api/projects".to_owned(),
            "/api/projects/secret-site".to_owned(),
            format!("/api/deployments/{id}"),
            format!("/api/deployments/{id}/logs"),
            "/projects/secret-site".to_owned(),
        ] {
            let text = p
                .client()
                .get(format!("{}{path}", p.http))
                .send()
                .await?
                .text()
                .await?;
            assert!(!text.contains(&token), "{path} shows the token");
        }
        assert!(!p.log().contains(&token), "the peer's log shows the token");
        let mut files = Vec::new();
        files_under(p.data.path(), &mut files);
        assert!(files.len() > 5);
        for (path, bytes) in files {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{} holds the token in the clear",
                path.display()
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_signs_in_by_device_code_deploys_and_signs_out() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncBufReadExt;
    let gh = FakeGitHub::start(&[("octocat", &[])]).await?;
    let flags = gh.flags();
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let peer = Peer::start(&refs).await?;
    let home = tempfile::tempdir()?;
    let session_file = home.path().join("session");
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(tests::shoal_bin());
        cmd.args(args)
            .env_remove("SHOAL_TOKEN")
            .env("SHOAL_PEER", &peer.http)
            .env("SHOAL_SESSION_FILE", &session_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let mut login = run(&["login"]).spawn()?;
    let mut lines = tokio::io::BufReader::new(login.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await??
        .context("login prints the code")?;
    assert!(
        first.contains(&format!("{}/login/device", gh.url)),
        "{first}"
    );
    let code = first.rsplit(' ').next().unwrap().to_owned();
    gh.approve_device(&code).await?;
    let status = tokio::time::timeout(Duration::from_secs(30), login.wait()).await??;
    let rest = lines.next_line().await?.unwrap_or_default();
    assert!(status.success(), "login failed: {rest}");
    assert!(rest.contains("Signed in as @octocat"), "{rest}");
    let mode = std::fs::metadata(&session_file)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the session file is private");
    assert!(!std::fs::read_to_string(&session_file)?.contains(&gh.token_of("octocat")));

    // Writes use the kept session.
    let site = Repo::new(&[("index.html", b"<h1>from the cli</h1>")])?;
    let out = run(&[
        "deploy",
        site.path().to_str().unwrap(),
        "--name",
        "cli-site",
        "--wait",
    ])
    .output()
    .await?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let body = peer.site("cli-site", "/").await?.text().await?;
    assert!(body.contains("from the cli"));

    let session = serde_json::from_str::<Value>(&std::fs::read_to_string(&session_file)?)?
        ["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run(&["logout"]).output().await?;
    assert!(out.status.success());
    assert!(!session_file.exists());
    let res = no_redirects()
        .get(format!("{}/api/me", peer.http))
        .bearer_auth(&session)
        .send()
        .await?;
    assert_eq!(res.status(), 401, "the session is revoked");
    // Without a session or token, writes say how to get one.
    let out = run(&["cancel", "nothing"]).output().await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoal login"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_github_app_clones_private_repos_with_read_only_installation_tokens() -> Result<()> {
    let gh = FakeGitHub::start(&[("octocat", &[]), ("other", &[])]).await?;
    let source = Repo::new(&[("index.html", b"<h1>cloned as the app</h1>")])?;
    let mut urls = Vec::new();
    for owner in ["octocat", "other"] {
        urls.push(gh.add_repo(
            FakeRepo {
                owner: owner.into(),
                name: "app-site".into(),
                private: true,
                description: String::new(),
                pushed: 1,
                default_branch: "main".into(),
            },
            Some(source.path()),
        )?);
    }
    let key = gh.enable_app(&["octocat"])?;
    let mut flags = gh.flags();
    flags.extend([
        "--github-app-id".to_owned(),
        tests::github::APP_ID.to_owned(),
        "--github-app-key-file".to_owned(),
        key.to_str().unwrap().to_owned(),
    ]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let peer = Peer::start(&refs).await?;

    // Deployed with the admin token: no user token is involved at all.
    let (status, dep) = peer
        .post_deployment(&json!({"repo_url": urls[0], "name": "app-site"}))
        .await?;
    assert_eq!(status, 202);
    let id = dep["id"].as_str().unwrap();
    let done = peer.wait_final(id, Duration::from_secs(60)).await?;
    let log = peer.log_text(id).await?;
    assert_eq!(done["status"], "success", "{log}");
    assert!(log.contains("read-only token of the GitHub App"), "{log}");
    let body = peer.site("app-site", "/").await?.text().await?;
    assert!(body.contains("cloned as the app"));
    // The token asked for: this repository only, contents read-only.
    let asked = gh.token_requests();
    assert_eq!(
        asked.first(),
        Some(
            &json!({"repositories": ["app-site"], "permissions": {"contents": "read", "metadata": "read"}})
        )
    );
    assert!(gh
        .git_auth("octocat/app-site")
        .iter()
        .any(|h| h.as_deref().is_some_and(|h| h.starts_with("Basic "))));

    // Where the app is not installed, the clone is refused, with the reason.
    let (status, dep) = peer
        .post_deployment(&json!({"repo_url": urls[1], "name": "not-installed"}))
        .await?;
    assert_eq!(status, 202);
    let id = dep["id"].as_str().unwrap();
    let done = peer.wait_final(id, Duration::from_secs(60)).await?;
    assert_eq!(done["status"], "buildFailed");
    assert!(peer.log_text(id).await?.contains("needs credentials"));
    Ok(())
}

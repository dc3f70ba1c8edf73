//! A fake GitHub on loopback, laid out like GitHub Enterprise Server (web at
//! `/`, REST API at `/api/v3`), following GitHub's published shapes for the
//! endpoints shoal uses:
//!
//! - OAuth device flow: `POST /login/device/code`, the user's page
//!   `GET/POST /login/device`, and `POST /login/oauth/access_token` with
//!   `authorization_pending`, `slow_down` (interval + 5 s), `expired_token`;
//! - OAuth web flow: `GET/POST /login/oauth/authorize` → redirect with
//!   `code` and `state`; the code exchange checks the client secret and
//!   `redirect_uri`;
//! - `GET /api/v3/user`, `/api/v3/user/orgs`, `/api/v3/user/repos` (pages
//!   with a `Link` header);
//! - git smart HTTP for real repositories through `git http-backend`;
//!   private ones need basic auth with a token of their owner
//!   (`x-access-token:<token>`), like GitHub's.

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "Iv1.fake0client";
pub const CLIENT_SECRET: &str = "fake-client-secret";

#[derive(Clone, Debug)]
pub struct FakeRepo {
    pub owner: String,
    pub name: String,
    pub private: bool,
    pub description: String,
    /// Seconds after 2026-01-01T00:00:00Z (below a day): when it was last
    /// pushed to, the order of `sort=pushed`.
    pub pushed: u64,
    pub default_branch: String,
}

struct Device {
    user_code: String,
    interval: u64,
    expires: Instant,
    approved_by: Option<String>,
    denied: bool,
    /// The last poll, or the code's issue before the first.
    last_poll: Instant,
    used: bool,
}

#[derive(Default)]
struct Inner {
    /// login → token.
    tokens: HashMap<String, String>,
    /// login → organisations.
    orgs: HashMap<String, Vec<String>>,
    repos: Vec<FakeRepo>,
    devices: HashMap<String, Device>,
    /// code → (login, redirect_uri).
    codes: HashMap<String, (String, String)>,
    /// The user "signed in to GitHub" in the browser.
    browser_user: String,
    device_interval: u64,
    /// How often a client polled too fast and was told to slow down.
    pub slow_downs: usize,
    /// `Authorization` headers git requests arrived with, by repository.
    git_auth: Vec<(String, Option<String>)>,
    /// Every token-bearing API request: (path, ok).
    api_calls: Vec<(String, bool)>,
    /// Device-flow polls of the token endpoint.
    device_polls: usize,
    /// Answer the next device poll with `slow_down`.
    force_slow_down: bool,
    /// The GitHub App: its public key (PEM) and the owners it is installed on.
    app: Option<(Vec<u8>, Vec<String>)>,
    /// Installation tokens: token → (owner, repositories).
    installation_tokens: HashMap<String, (String, Vec<String>)>,
    /// Bodies of access-token requests (what the app asked for).
    pub token_requests: Vec<Value>,
}

/// The fake GitHub App's id.
pub const APP_ID: &str = "4242";

#[derive(Clone)]
struct Fake {
    inner: Arc<Mutex<Inner>>,
    root: Arc<std::path::PathBuf>,
    base: Arc<String>,
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake.
pub struct FakeGitHub {
    /// Web URL (`--github-url`).
    pub url: String,
    /// API URL (`--github-api-url`).
    pub api_url: String,
    fake: Fake,
    _root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
        .collect()
}

impl FakeGitHub {
    /// Starts the fake with users (login → organisations); the first user
    /// is the one signed in to "GitHub" in the browser.
    pub async fn start(users: &[(&str, &[&str])]) -> Result<Self> {
        Self::start_at("127.0.0.1:0", users).await
    }

    /// Like [`FakeGitHub::start`], listening on `addr`.
    pub async fn start_at(addr: &str, users: &[(&str, &[&str])]) -> Result<Self> {
        let root = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut inner = Inner {
            browser_user: users.first().map(|u| u.0.to_owned()).unwrap_or_default(),
            device_interval: 1,
            ..Default::default()
        };
        for (login, orgs) in users {
            inner
                .tokens
                .insert((*login).to_owned(), format!("gho_{}", random_hex(36)));
            inner.orgs.insert(
                (*login).to_owned(),
                orgs.iter().map(|o| (*o).to_owned()).collect(),
            );
        }
        let fake = Fake {
            inner: Arc::new(Mutex::new(inner)),
            root: Arc::new(root.path().to_owned()),
            base: Arc::new(url.clone()),
        };
        let app = Router::new()
            .route("/login/device/code", post(device_code))
            .route("/login/device", get(device_page).post(device_approve))
            .route("/login/oauth/access_token", post(access_token))
            .route(
                "/login/oauth/authorize",
                get(authorize_page).post(authorize),
            )
            .route("/api/v3/user", get(user))
            .route("/api/v3/user/orgs", get(orgs))
            .route("/api/v3/user/repos", get(repos))
            .route(
                "/api/v3/repos/{owner}/{repo}/installation",
                get(installation),
            )
            .route(
                "/api/v3/app/installations/{id}/access_tokens",
                post(installation_token),
            )
            .route("/{owner}/{repo}/info/refs", get(git_refs))
            .route("/{owner}/{repo}/git-upload-pack", post(git_upload))
            .with_state(fake.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            api_url: format!("{url}/api/v3"),
            url,
            fake,
            _root: root,
            task,
        })
    }

    /// The flags that point a peer at this fake.
    pub fn flags(&self) -> Vec<String> {
        [
            "--github-client-id",
            CLIENT_ID,
            "--github-client-secret",
            CLIENT_SECRET,
            "--github-url",
            &self.url,
            "--github-api-url",
            &self.api_url,
        ]
        .map(String::from)
        .to_vec()
    }

    /// The token GitHub issues to `login`.
    pub fn token_of(&self, login: &str) -> String {
        self.fake
            .lock()
            .tokens
            .get(login)
            .cloned()
            .unwrap_or_default()
    }

    /// Switches who is signed in to "GitHub" in the browser.
    pub fn sign_in_browser_as(&self, login: &str) {
        self.fake.lock().browser_user = login.to_owned();
    }

    pub fn slow_downs(&self) -> usize {
        self.fake.lock().slow_downs
    }

    /// Device-flow polls GitHub has seen.
    pub fn device_polls(&self) -> usize {
        self.fake.lock().device_polls
    }

    /// The polling interval GitHub hands out with new device codes.
    pub fn set_device_interval(&self, secs: u64) {
        self.fake.lock().device_interval = secs;
    }

    /// Makes GitHub answer the next device poll with `slow_down`.
    pub fn force_slow_down(&self) {
        self.fake.lock().force_slow_down = true;
    }

    /// How many token-bearing API requests hit `path` (e.g. `/user/repos`).
    pub fn api_calls(&self, path: &str) -> usize {
        self.fake
            .lock()
            .api_calls
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    /// `Authorization` headers the git endpoints saw for `owner/name`.
    pub fn git_auth(&self, full_name: &str) -> Vec<Option<String>> {
        self.fake
            .lock()
            .git_auth
            .iter()
            .filter(|(r, _)| r == full_name)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// Registers a GitHub App installed on `owners`' accounts; returns the
    /// path of its private key (PEM), made with `openssl genrsa`.
    pub fn enable_app(&self, owners: &[&str]) -> Result<std::path::PathBuf> {
        let key = self.fake.root.join("app-key.pem");
        let run = |args: &[&str]| -> Result<Vec<u8>> {
            let out = std::process::Command::new("openssl").args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(out.stdout)
        };
        let key_str = key.to_str().context("utf-8 path")?;
        run(&["genrsa", "-out", key_str, "2048"])?;
        let public = run(&["rsa", "-in", key_str, "-pubout"])?;
        self.fake.lock().app = Some((public, owners.iter().map(|o| (*o).to_owned()).collect()));
        Ok(key)
    }

    /// What the app asked for in its access-token requests.
    pub fn token_requests(&self) -> Vec<Value> {
        self.fake.lock().token_requests.clone()
    }

    /// Adds a repository listed for its owner; with `source`, it is also a
    /// real git repository cloned from that directory (bare copy).
    pub fn add_repo(&self, repo: FakeRepo, source: Option<&std::path::Path>) -> Result<String> {
        if let Some(src) = source {
            let dest = self
                .fake
                .root
                .join(&repo.owner)
                .join(format!("{}.git", repo.name));
            std::fs::create_dir_all(dest.parent().context("parent")?)?;
            let out = std::process::Command::new("git")
                .args(["clone", "--bare", "--quiet"])
                .arg(src)
                .arg(&dest)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "git clone --bare: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let url = format!("{}/{}/{}.git", self.url, repo.owner, repo.name);
        self.fake.lock().repos.push(repo);
        Ok(url)
    }

    /// Refreshes the bare copy of `owner/name` from `source` (a push).
    pub fn push(&self, owner: &str, name: &str, source: &std::path::Path) -> Result<()> {
        let dest = self.fake.root.join(owner).join(format!("{name}.git"));
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(source)
            .args(["push", "--quiet", "--force", "--all"])
            .arg(&dest)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "git push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The user enters `user_code` on GitHub's device page (as the browser user).
    pub async fn approve_device(&self, user_code: &str) -> Result<()> {
        let res = reqwest::Client::new()
            .post(format!("{}/login/device", self.url))
            .form(&[("user_code", user_code)])
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "approve: {}", res.status());
        Ok(())
    }
}

fn error_json(error: &str, description: &str) -> Json<Value> {
    Json(json!({
        "error": error,
        "error_description": description,
        "error_uri": "https://docs.github.com/developers/apps/authorizing-oauth-apps",
    }))
}

async fn device_code(State(f): State<Fake>, Form(form): Form<HashMap<String, String>>) -> Response {
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return error_json(
            "incorrect_client_credentials",
            "The client_id is not valid.",
        )
        .into_response();
    }
    let device_code = random_hex(40);
    let user_code = format!(
        "{}-{}",
        &random_hex(4).to_uppercase(),
        &random_hex(4).to_uppercase()
    );
    let mut inner = f.lock();
    let interval = inner.device_interval;
    inner.devices.insert(
        device_code.clone(),
        Device {
            user_code: user_code.clone(),
            interval,
            expires: Instant::now() + Duration::from_secs(900),
            approved_by: None,
            denied: false,
            last_poll: Instant::now(),
            used: false,
        },
    );
    Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{}/login/device", f.base),
        "expires_in": 900,
        "interval": interval,
    }))
    .into_response()
}

async fn device_page() -> Html<&'static str> {
    Html(
        "<!doctype html><title>Device activation</title><h1>Device activation</h1>\
         <form method=post action=/login/device><label>Code <input id=user_code name=user_code></label>\
         <button id=authorize>Continue</button></form>",
    )
}

async fn device_approve(
    State(f): State<Fake>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let code = form.get("user_code").cloned().unwrap_or_default();
    let mut inner = f.lock();
    let user = inner.browser_user.clone();
    match inner
        .devices
        .values_mut()
        .find(|d| d.user_code.eq_ignore_ascii_case(code.trim()))
    {
        Some(d) => {
            if form.contains_key("deny") {
                d.denied = true;
            } else {
                d.approved_by = Some(user);
            }
            Html("<!doctype html><h1 id=done>Congratulations, you're all set!</h1>").into_response()
        }
        None => (StatusCode::NOT_FOUND, Html("<h1>Incorrect code</h1>")).into_response(),
    }
}

async fn access_token(
    State(f): State<Fake>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return error_json(
            "incorrect_client_credentials",
            "The client_id is not valid.",
        )
        .into_response();
    }
    let mut inner = f.lock();
    if form.get("grant_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:grant-type:device_code")
    {
        let code = form.get("device_code").cloned().unwrap_or_default();
        let now = Instant::now();
        let Some(d) = inner.devices.get_mut(&code) else {
            return error_json(
                "incorrect_device_code",
                "The device_code provided is not valid.",
            )
            .into_response();
        };
        if now >= d.expires || d.used {
            return error_json("expired_token", "The device_code has expired.").into_response();
        }
        let too_fast = now.duration_since(d.last_poll) < Duration::from_secs(d.interval);
        d.last_poll = now;
        inner.device_polls += 1;
        let forced = std::mem::take(&mut inner.force_slow_down);
        let Some(d) = inner.devices.get_mut(&code) else {
            return error_json("incorrect_device_code", "gone").into_response();
        };
        if too_fast || forced {
            d.interval += 5;
            let interval = d.interval;
            inner.slow_downs += 1;
            return Json(json!({
                "error": "slow_down",
                "error_description": "Too many requests have been made in the same timeframe.",
                "interval": interval,
            }))
            .into_response();
        }
        if d.denied {
            return error_json("access_denied", "The authorization request was denied.")
                .into_response();
        }
        let Some(login) = d.approved_by.clone() else {
            return error_json(
                "authorization_pending",
                "The authorization request is still pending.",
            )
            .into_response();
        };
        d.used = true;
        let token = inner.tokens.get(&login).cloned().unwrap_or_default();
        return Json(
            json!({"access_token": token, "token_type": "bearer", "scope": "repo,read:org"}),
        )
        .into_response();
    }
    if form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return error_json(
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
        )
        .into_response();
    }
    let code = form.get("code").cloned().unwrap_or_default();
    match inner.codes.remove(&code) {
        Some((login, redirect)) if form.get("redirect_uri") == Some(&redirect) => {
            let token = inner.tokens.get(&login).cloned().unwrap_or_default();
            Json(json!({"access_token": token, "token_type": "bearer", "scope": "repo,read:org"}))
                .into_response()
        }
        Some(_) => error_json(
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
        )
        .into_response(),
        None => error_json(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        )
        .into_response(),
    }
}

fn attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('\'', "&#39;")
        .replace('<', "&lt;")
}

async fn authorize_page(Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return (StatusCode::NOT_FOUND, Html("<h1>Unknown application</h1>")).into_response();
    }
    let field = |k: &str| {
        format!(
            "<input type=hidden name={k} value='{}'>",
            attr(q.get(k).map(String::as_str).unwrap_or(""))
        )
    };
    Html(format!(
        "<!doctype html><title>Authorize application</title><h1>Authorize shoal</h1>\
         <form method=post action=/login/oauth/authorize>{}{}{}\
         <button id=authorize>Authorize</button></form>",
        field("client_id"),
        field("redirect_uri"),
        field("state"),
    ))
    .into_response()
}

async fn authorize(State(f): State<Fake>, Form(form): Form<HashMap<String, String>>) -> Response {
    let redirect = form.get("redirect_uri").cloned().unwrap_or_default();
    let state = form.get("state").cloned().unwrap_or_default();
    let code = random_hex(20);
    {
        let mut inner = f.lock();
        let user = inner.browser_user.clone();
        inner.codes.insert(code.clone(), (user, redirect.clone()));
    }
    let sep = if redirect.contains('?') { '&' } else { '?' };
    (
        StatusCode::FOUND,
        [(
            header::LOCATION,
            format!("{redirect}{sep}code={code}&state={state}"),
        )],
    )
        .into_response()
}

/// The login a request's token belongs to.
fn token_user(f: &Fake, headers: &HeaderMap, path: &str) -> Option<String> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })?
        .trim()
        .to_owned();
    let mut inner = f.lock();
    let login = inner
        .tokens
        .iter()
        .find(|(_, t)| **t == given)
        .map(|(l, _)| l.clone());
    inner.api_calls.push((path.to_owned(), login.is_some()));
    login
}

fn bad_credentials() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"})),
    )
        .into_response()
}

async fn user(State(f): State<Fake>, headers: HeaderMap) -> Response {
    let Some(login) = token_user(&f, &headers, "/user") else {
        return bad_credentials();
    };
    let id = login.bytes().map(u64::from).sum::<u64>() * 1000;
    Json(json!({
        "login": login,
        "id": id,
        "node_id": "MDQ6VXNlcjE=",
        "avatar_url": format!("{}/avatars/{login}", f.base),
        "html_url": format!("{}/{login}", f.base),
        "type": "User",
        "site_admin": false,
        "name": format!("The {login}"),
    }))
    .into_response()
}

async fn orgs(State(f): State<Fake>, headers: HeaderMap) -> Response {
    let Some(login) = token_user(&f, &headers, "/user/orgs") else {
        return bad_credentials();
    };
    let orgs = f.lock().orgs.get(&login).cloned().unwrap_or_default();
    Json(
        orgs.iter()
            .enumerate()
            .map(|(i, o)| json!({"login": o, "id": i + 1, "url": format!("{}/api/v3/orgs/{o}", f.base)}))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

fn repo_json(f: &Fake, r: &FakeRepo) -> Value {
    let full = format!("{}/{}", r.owner, r.name);
    json!({
        "id": r.pushed,
        "name": r.name,
        "full_name": full,
        "private": r.private,
        "owner": {"login": r.owner, "type": "User"},
        "html_url": format!("{}/{full}", f.base),
        "description": r.description,
        "fork": false,
        "clone_url": format!("{}/{full}.git", f.base),
        "default_branch": r.default_branch,
        "pushed_at": format!(
            "2026-01-01T{:02}:{:02}:{:02}Z",
            r.pushed / 3600 % 24,
            r.pushed / 60 % 60,
            r.pushed % 60
        ),
        "visibility": if r.private { "private" } else { "public" },
        "permissions": {"admin": true, "push": true, "pull": true},
    })
}

async fn repos(
    State(f): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(login) = token_user(&f, &headers, "/user/repos") else {
        return bad_credentials();
    };
    let per_page: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let inner = f.lock();
    let orgs = inner.orgs.get(&login).cloned().unwrap_or_default();
    let mut mine: Vec<&FakeRepo> = inner
        .repos
        .iter()
        .filter(|r| r.owner == login || orgs.contains(&r.owner))
        .collect();
    mine.sort_by_key(|r| std::cmp::Reverse(r.pushed));
    let last = mine.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = mine
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| repo_json(&f, r))
        .collect();
    let link_to = |p: usize| {
        format!(
            "<{}/api/v3/user/repos?per_page={per_page}&sort=pushed&page={p}>",
            f.base
        )
    };
    let mut links = Vec::new();
    if page < last {
        links.push(format!("{}; rel=\"next\"", link_to(page + 1)));
        links.push(format!("{}; rel=\"last\"", link_to(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", link_to(page - 1)));
        links.push(format!("{}; rel=\"first\"", link_to(1)));
    }
    let mut res = Json(items).into_response();
    if !links.is_empty() {
        if let Ok(v) = links.join(", ").parse() {
            res.headers_mut().insert(header::LINK, v);
        }
    }
    res
}

/// The repository a git URL names, if the caller may read it.
#[allow(clippy::result_large_err)]
fn git_access(f: &Fake, owner: &str, repo: &str, headers: &HeaderMap) -> Result<String, Response> {
    let name = repo.strip_suffix(".git").unwrap_or(repo);
    let full = format!("{owner}/{name}");
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut inner = f.lock();
    inner.git_auth.push((full.clone(), auth.clone()));
    let Some(r) = inner
        .repos
        .iter()
        .find(|r| r.owner == owner && r.name == name)
        .cloned()
    else {
        return Err((StatusCode::NOT_FOUND, "Repository not found.\n").into_response());
    };
    if r.private {
        let login = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| base64_decode(b.trim()))
            .and_then(|userpass| {
                let (_, password) = userpass.split_once(':')?;
                inner
                    .tokens
                    .iter()
                    .find(|(_, t)| t.as_str() == password)
                    .map(|(l, _)| l.clone())
            });
        let password = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| base64_decode(b.trim()))
            .and_then(|userpass| userpass.split_once(':').map(|(_, p)| p.to_owned()))
            .unwrap_or_default();
        let by_app = inner
            .installation_tokens
            .get(&password)
            .is_some_and(|(owner, repos)| *owner == r.owner && repos.contains(&r.name));
        let orgs = login
            .as_ref()
            .and_then(|l| inner.orgs.get(l).cloned())
            .unwrap_or_default();
        let allowed = by_app || login.is_some_and(|l| l == r.owner || orgs.contains(&r.owner));
        if !allowed {
            return Err((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"GitHub\"")],
                "Invalid username or token.\n",
            )
                .into_response());
        }
    }
    Ok(format!("/{owner}/{name}.git"))
}

fn base64_decode(s: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

async fn git_refs(
    State(f): State<Fake>,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = match git_access(&f, &owner, &repo, &headers) {
        Ok(p) => p,
        Err(res) => return res,
    };
    let query = q
        .get("service")
        .map(|s| format!("service={s}"))
        .unwrap_or_default();
    http_backend(
        &f,
        "GET",
        &format!("{path}/info/refs"),
        &query,
        &headers,
        Bytes::new(),
    )
    .await
}

async fn git_upload(
    State(f): State<Fake>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = match git_access(&f, &owner, &repo, &headers) {
        Ok(p) => p,
        Err(res) => return res,
    };
    http_backend(
        &f,
        "POST",
        &format!("{path}/git-upload-pack"),
        "",
        &headers,
        body,
    )
    .await
}

/// Runs `git http-backend` as a CGI program.
async fn http_backend(
    f: &Fake,
    method: &str,
    path_info: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    use tokio::io::AsyncWriteExt;
    let header_str = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &*f.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header_str(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header_str(header::CONTENT_ENCODING),
        )
        .env(
            "GIT_PROTOCOL",
            headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let out = match child.wait_with_output().await {
        Ok(o) => o.stdout,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let Some(split) = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
    else {
        return (StatusCode::BAD_GATEWAY, "no CGI headers").into_response();
    };
    let (head, rest) = out.split_at(split.0);
    let mut res = Response::new(axum::body::Body::from(rest[split.1..].to_vec()));
    for line in String::from_utf8_lossy(head).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            if let Some(code) = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
            {
                *res.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            }
        } else if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(k.trim().as_bytes()),
            header::HeaderValue::from_str(v),
        ) {
            res.headers_mut().append(name, value);
        }
    }
    res
}

/// `X-Hub-Signature-256` of a delivery body.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(secret.as_bytes()).unwrap();
    hmac::Mac::update(&mut mac, body);
    format!(
        "sha256={}",
        hex::encode(hmac::Mac::finalize(mac).into_bytes())
    )
}

/// Sends a webhook delivery to a peer like GitHub does (signed with
/// `secret`); returns the status and JSON body.
pub async fn deliver(
    peer: &crate::Peer,
    event: &str,
    delivery: &str,
    body: &Value,
    secret: &str,
) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let res = peer
        .client()
        .post(format!("{}/api/hooks/github", peer.http))
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/test")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(secret, &raw))
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A `push` event payload in GitHub's shape.
pub fn push_body(repo: &str, branch: &str, before: &str, after: &str) -> Value {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before,
        "after": after,
        "created": false,
        "deleted": after.bytes().all(|b| b == b'0'),
        "forced": false,
        "repository": {
            "id": 1296269,
            "name": "site",
            "full_name": "octo/site",
            "private": false,
            "html_url": repo,
            "clone_url": format!("{repo}.git"),
            "default_branch": "main"
        },
        "pusher": {"name": "octo", "email": "octo@example.com"},
        "sender": {"login": "octo", "id": 1},
        "head_commit": {"id": after, "message": "change"},
        "commits": []
    })
}

/// The app a request's JWT signs in as, checked like GitHub does (RS256 with
/// the app's key, `iss` = app id, not expired, at most 10 minutes long).
fn app_jwt_ok(f: &Fake, headers: &HeaderMap) -> bool {
    let Some(jwt) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let Some((public, _)) = f.lock().app.clone() else {
        return false;
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(&public) else {
        return false;
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[APP_ID]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
        Ok(data) => {
            let (iat, exp) = (data.claims["iat"].as_u64(), data.claims["exp"].as_u64());
            matches!((iat, exp), (Some(i), Some(e)) if e > i && e - i <= 600)
        }
        Err(_) => false,
    }
}

async fn installation(
    State(f): State<Fake>,
    Path((owner, _repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !app_jwt_ok(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "A JSON web token could not be decoded"})),
        )
            .into_response();
    }
    let installed = f
        .lock()
        .app
        .as_ref()
        .and_then(|(_, owners)| owners.iter().position(|o| *o == owner));
    match installed {
        Some(i) => Json(json!({
            "id": 1000 + i,
            "account": {"login": owner},
            "app_id": APP_ID.parse::<u64>().unwrap_or(0),
            "repository_selection": "all",
            "permissions": {"contents": "read", "metadata": "read"},
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response(),
    }
}

async fn installation_token(
    State(f): State<Fake>,
    Path(id): Path<usize>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !app_jwt_ok(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let mut inner = f.lock();
    let Some(owner) = inner
        .app
        .as_ref()
        .and_then(|(_, owners)| owners.get(id.wrapping_sub(1000)).cloned())
    else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    };
    let repos: Vec<String> = body["repositories"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let token = format!("ghs_{}", random_hex(36));
    inner
        .installation_tokens
        .insert(token.clone(), (owner, repos));
    inner.token_requests.push(body.clone());
    (
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": "2099-01-01T00:00:00Z",
            "permissions": body["permissions"],
            "repository_selection": "selected",
        })),
    )
        .into_response()
}

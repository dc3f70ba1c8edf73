//! Signing in with GitHub, on any peer.
//!
//! - Device flow (`POST /auth/device`, then `POST /auth/device/poll`): no
//!   callback URL and no client secret. The pending sign-in is sealed into a
//!   handle the browser (or `shoal login`) holds, so whichever peer the next
//!   poll lands on can continue it; the handle also carries the interval
//!   GitHub asked for, so no peer polls GitHub faster than allowed.
//! - Web flow (`GET /auth/github` → GitHub → `GET /auth/github/callback`),
//!   when the client secret is configured: `state` is checked against a
//!   sealed, short-lived cookie.
//!
//! Either way the user must be allowed (`--allowed-users`/`--allowed-orgs`),
//! and gets a sealed session: a cookie for browsers, a bearer token for the
//! CLI. `POST /auth/logout` revokes it on every peer.

use crate::auth::{self, require_write, SESSION_COOKIE, STATE_COOKIE};
use crate::github::{DevicePoll, GitHub, Repo};
use crate::session::{now_millis, now_secs, Purpose, Session};
use crate::{ApiError, AppState, Backend};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a web-flow `state` cookie lives.
const STATE_TTL_SECS: u64 = 600;
/// How long a peer keeps a user's repository list.
const REPO_CACHE: Duration = Duration::from_secs(60);
/// Repositories per page of `GET /api/github/repos`.
const PER_PAGE: usize = 30;

pub fn routes<B: Backend>() -> Router<AppState<B>> {
    Router::new()
        .route("/auth/device", post(device_start::<B>))
        .route("/auth/device/poll", post(device_poll::<B>))
        .route("/auth/github", get(web_start::<B>))
        .route("/auth/github/callback", get(web_callback::<B>))
        .route("/auth/logout", post(logout::<B>))
        .route("/api/me", get(me::<B>))
        .route("/api/github/repos", get(repos::<B>))
}

fn github<B: Backend>(s: &AppState<B>) -> Result<&GitHub, ApiError> {
    s.backend.auth().github.as_ref().ok_or_else(|| {
        ApiError::not_found("GitHub sign-in is not configured on this mesh (--github-client-id)")
    })
}

/// A device-flow sign-in in progress, sealed into the handle the client holds.
#[derive(Serialize, Deserialize)]
struct Pending {
    device_code: String,
    expires: u64,
    interval: u64,
    /// Unix milliseconds before which GitHub is not asked again. Whole
    /// seconds would let a poll through up to a second early, which GitHub
    /// answers with `slow_down` and five more seconds of waiting.
    #[serde(default)]
    next_poll_ms: u64,
}

impl Pending {
    fn wait_from(&mut self, now_ms: u64) {
        self.next_poll_ms = now_ms.saturating_add(self.interval.saturating_mul(1000));
    }
}

async fn device_start<B: Backend>(State(s): State<AppState<B>>) -> Result<Response, ApiError> {
    let gh = github(&s)?;
    let code = gh.device_code().await?;
    let now_ms = now_millis();
    let mut pending = Pending {
        device_code: code.device_code,
        expires: now_ms / 1000 + code.expires_in,
        interval: code.interval.max(1),
        next_poll_ms: 0,
    };
    pending.wait_from(now_ms);
    let handle = s.backend.auth().keys.seal_json(Purpose::Device, &pending);
    Ok(Json(json!({
        "user_code": code.user_code,
        "verification_uri": code.verification_uri,
        "expires_in": code.expires_in,
        "interval": pending.interval,
        "handle": handle,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct PollRequest {
    handle: String,
}

async fn device_poll<B: Backend>(
    State(s): State<AppState<B>>,
    body: Result<Json<PollRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let gh = github(&s)?;
    let auth = s.backend.auth();
    let mut pending: Pending = auth
        .keys
        .open_json(Purpose::Device, &req.handle)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_handle", "not a sign-in handle of this mesh")
        })?;
    let now_ms = now_millis();
    if now_ms / 1000 >= pending.expires {
        return Err(expired());
    }
    let wait = |pending: &Pending| {
        Json(json!({
            "state": "pending",
            "interval": pending.interval,
            "handle": auth.keys.seal_json(Purpose::Device, pending),
        }))
        .into_response()
    };
    if now_ms < pending.next_poll_ms {
        return Ok(wait(&pending));
    }
    match gh.poll_device(&pending.device_code).await? {
        // Counted from GitHub's answer, which is no earlier than the moment it
        // saw this poll.
        DevicePoll::Pending => {
            pending.wait_from(now_millis());
            Ok(wait(&pending))
        }
        DevicePoll::SlowDown(interval) => {
            pending.interval = interval.max(pending.interval + 5);
            pending.wait_from(now_millis());
            Ok(wait(&pending))
        }
        DevicePoll::Expired => Err(expired()),
        DevicePoll::Denied => Err(ApiError::forbidden("the sign-in was denied on GitHub")),
        DevicePoll::Token(token) => {
            let started = start_session(&s, gh, token).await?;
            Ok((
                [(header::SET_COOKIE, started.cookie)],
                Json(json!({
                    "state": "done",
                    "login": started.login,
                    "expires_in": auth.session_ttl_secs,
                    "session": started.sealed,
                })),
            )
                .into_response())
        }
    }
}

fn expired() -> ApiError {
    ApiError {
        status: StatusCode::GONE,
        error: "expired",
        detail: "the sign-in code expired; start again".into(),
    }
}

/// A session just opened: whose, sealed, and as a `Set-Cookie` value.
struct Started {
    login: String,
    sealed: String,
    cookie: String,
}

/// Checks the user behind a fresh token and opens a session for them.
async fn start_session<B: Backend>(
    s: &AppState<B>,
    gh: &GitHub,
    token: String,
) -> Result<Started, ApiError> {
    let auth = s.backend.auth();
    let user = gh.user(&token).await?;
    let orgs = if auth.allowed_orgs.is_empty() {
        Vec::new()
    } else {
        gh.orgs(&token).await?
    };
    if !auth.allowed(&user.login, &orgs) {
        warn!(login = %user.login, "GitHub user not allowed to sign in");
        return Err(ApiError::forbidden(format!(
            "GitHub user {} is not allowed to deploy on this mesh; ask its operator to add you to --allowed-users or one of --allowed-orgs",
            user.login
        )));
    }
    info!(login = %user.login, "signed in with GitHub");
    let session = Session::new(user.login, token, auth.session_ttl_secs);
    let sealed = auth.keys.seal_json(Purpose::Session, &session);
    Ok(Started {
        cookie: auth.cookie(SESSION_COOKIE, &sealed, auth.session_ttl_secs),
        login: session.login,
        sealed,
    })
}

/// Where GitHub sends the browser back to.
fn redirect_uri<B: Backend>(s: &AppState<B>, headers: &HeaderMap) -> String {
    let base = s.backend.auth().public_url.clone().unwrap_or_else(|| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    });
    format!("{}/auth/github/callback", base.trim_end_matches('/'))
}

#[derive(Serialize, Deserialize)]
struct WebState {
    state: String,
    expires: u64,
}

async fn web_start<B: Backend>(
    State(s): State<AppState<B>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gh = github(&s)?;
    if !gh.web_flow() {
        return Err(ApiError::not_found(
            "the web sign-in needs --github-client-secret; use the device code sign-in",
        ));
    }
    let auth = s.backend.auth();
    let state = hex::encode(rand::random::<[u8; 16]>());
    let sealed = auth.keys.seal_json(
        Purpose::OAuthState,
        &WebState {
            state: state.clone(),
            expires: now_secs() + STATE_TTL_SECS,
        },
    );
    let url = gh.authorize_url(&state, &redirect_uri(&s, &headers));
    Ok((
        [(
            header::SET_COOKIE,
            auth.cookie(STATE_COOKIE, &sealed, STATE_TTL_SECS),
        )],
        Redirect::to(&url),
    )
        .into_response())
}

#[derive(Deserialize)]
struct Callback {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

async fn web_callback<B: Backend>(
    State(s): State<AppState<B>>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Result<Response, ApiError> {
    let gh = github(&s)?;
    let auth = s.backend.auth();
    if let Some(why) = q.error_description {
        return Err(ApiError::forbidden(format!(
            "GitHub did not sign you in: {why}"
        )));
    }
    let expected: Option<WebState> = auth::cookie(&headers, STATE_COOKIE)
        .and_then(|c| auth.keys.open_json(Purpose::OAuthState, c));
    let state_ok = match (&expected, &q.state) {
        (Some(e), Some(given)) => {
            e.expires > now_secs() && auth::constant_time_eq(e.state.as_bytes(), given.as_bytes())
        }
        _ => false,
    };
    if !state_ok {
        return Err(ApiError::bad_request(
            "invalid_state",
            "the sign-in's state does not match this browser's (expired, or started elsewhere); sign in again",
        ));
    }
    let code = q
        .code
        .ok_or_else(|| ApiError::bad_request("invalid_callback", "GitHub sent no code"))?;
    let token = gh.exchange_code(&code, &redirect_uri(&s, &headers)).await?;
    let started = start_session(&s, gh, token).await?;
    let mut res = Redirect::to("/").into_response();
    let h = res.headers_mut();
    for cookie in [started.cookie, auth.cookie(STATE_COOKIE, "", 0)] {
        if let Ok(v) = cookie.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    Ok(res)
}

#[derive(Deserialize, Default)]
struct LogoutForm {
    #[serde(default)]
    csrf: Option<String>,
}

async fn logout<B: Backend>(
    State(s): State<AppState<B>>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let form = form.map(|f| f.0).unwrap_or_default();
    let caller = require_write(&*s.backend, &headers, form.csrf.as_deref())?;
    if let Some(session) = caller.session() {
        s.backend.revoke_session(&session.id, session.expires)?;
        info!(login = %session.login, "signed out");
    }
    let auth = s.backend.auth();
    let clear = auth.cookie(SESSION_COOKIE, "", 0);
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        Ok((
            [(header::SET_COOKIE, clear)],
            Json(json!({"signed_out": true})),
        )
            .into_response())
    } else {
        Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
    }
}

async fn me<B: Backend>(
    State(s): State<AppState<B>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match auth::caller(&*s.backend, &headers) {
        Some(auth::Caller::Admin) => Ok(Json(json!({"admin": true})).into_response()),
        Some(auth::Caller::User(session)) => Ok(Json(json!({
            "login": session.login,
            "expires_at": session.expires,
            "csrf": s.backend.auth().keys.csrf(&session.id),
        }))
        .into_response()),
        None => Err(ApiError::unauthorized()),
    }
}

#[derive(Deserialize)]
struct RepoQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    page: Option<usize>,
}

/// One page of the signed-in user's repositories, filtered by `q`.
async fn repos<B: Backend>(
    State(s): State<AppState<B>>,
    headers: HeaderMap,
    Query(query): Query<RepoQuery>,
) -> Result<Response, ApiError> {
    let gh = github(&s)?;
    let session = match auth::caller(&*s.backend, &headers) {
        Some(auth::Caller::User(session)) => session,
        Some(auth::Caller::Admin) => {
            return Err(ApiError::forbidden(
                "the repository list belongs to a GitHub user: sign in with GitHub",
            ))
        }
        None => return Err(ApiError::unauthorized()),
    };
    let cached = s.repos.lock().ok().and_then(|c| {
        c.get(&session.id)
            .filter(|(at, _)| at.elapsed() < REPO_CACHE)
            .map(|(_, r)| r.clone())
    });
    let listing = match cached {
        Some(listing) => listing,
        None => {
            let fetched = std::sync::Arc::new(gh.repos(&session.token).await?);
            if let Ok(mut c) = s.repos.lock() {
                c.retain(|_, (at, _)| at.elapsed() < REPO_CACHE);
                c.insert(session.id.clone(), (Instant::now(), fetched.clone()));
            }
            fetched
        }
    };
    let (all, truncated) = (&listing.0, listing.1);
    let q = query.q.unwrap_or_default().trim().to_lowercase();
    let matching: Vec<&Repo> = all
        .iter()
        .filter(|r| {
            q.is_empty()
                || r.full_name.to_lowercase().contains(&q)
                || r.description
                    .as_deref()
                    .is_some_and(|d| d.to_lowercase().contains(&q))
        })
        .collect();
    let pages = matching.len().div_ceil(PER_PAGE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let items: Vec<&Repo> = matching
        .into_iter()
        .skip((page - 1) * PER_PAGE)
        .take(PER_PAGE)
        .collect();
    Ok(Json(json!({
        "repos": items,
        "page": page,
        "pages": pages,
        "truncated": truncated,
    }))
    .into_response())
}

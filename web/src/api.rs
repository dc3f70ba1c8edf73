//! The JSON API under `/api`, plus the health endpoints. Described for
//! clients by `/api/openapi.json`.

use crate::auth::{require_write, Caller};
use crate::model::{Event, LogLine};
use crate::{ApiError, AppState, Backend, DeploymentView, NewDeployment};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use tokio::sync::broadcast;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const OPENAPI: &str = include_str!("openapi.json");

pub fn routes<B: Backend>() -> Router<AppState<B>> {
    Router::new()
        .route("/api/deployments", post(create::<B>).get(list::<B>))
        .route("/api/deployments/{id}", get(show::<B>))
        .route("/api/deployments/{id}/cancel", post(cancel::<B>))
        .route("/api/deployments/{id}/logs", get(logs::<B>))
        .route("/api/projects", get(projects::<B>))
        .route(
            "/api/projects/{name}",
            get(project::<B>).patch(update_project::<B>),
        )
        .route("/api/projects/{name}/env", get(env_list::<B>))
        .route(
            "/api/projects/{name}/env/{key}",
            axum::routing::put(env_set::<B>).delete(env_delete::<B>),
        )
        .route(
            "/api/projects/{name}/cache",
            axum::routing::delete(cache_clear::<B>),
        )
        .route("/api/projects/{name}/rollback", post(rollback::<B>))
        .route("/api/projects/{name}/promote", post(promote::<B>))
        .route(
            "/api/hooks/github",
            post(crate::hooks::github::<B>).layer(axum::extract::DefaultBodyLimit::max(
                crate::hooks::MAX_HOOK_BYTES,
            )),
        )
        .route("/api/peers", get(peers::<B>))
        .route("/api/events", get(events::<B>))
        .route("/api/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<B>))
        .fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn ready<B: Backend>(State(s): State<AppState<B>>) -> Response {
    match s.backend.ready() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Status changes of every deployment, live (server-sent events named
/// `status`, data `{"deployment", "status"}`), as this peer learns of them.
async fn events<B: Backend>(
    State(s): State<AppState<B>>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    let rx = s.backend.subscribe();
    let stream = stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(Event::Status { deployment, status }) => {
                    let data =
                        serde_json::json!({"deployment": deployment, "status": status.as_str()});
                    return Some((
                        Ok(sse::Event::default().event("status").data(data.to_string())),
                        rx,
                    ));
                }
                Ok(Event::Log { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn peers<B: Backend>(State(s): State<AppState<B>>) -> Json<Vec<crate::PeerInfo>> {
    Json(s.backend.peers())
}

async fn create<B: Backend>(
    State(s): State<AppState<B>>,
    headers: HeaderMap,
    body: Result<Json<NewDeployment>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = require_write(&*s.backend, &headers, None)?;
    let Json(mut req) = body?;
    if let Caller::User(session) = &caller {
        req.requested_by = Some(session.login.clone());
        let on_github = s
            .backend
            .auth()
            .github
            .as_ref()
            .is_some_and(|gh| same_host(&req.repo_url, &gh.config.web_url));
        if on_github {
            req.credential = Some(crate::model::Credential {
                login: session.login.clone(),
                token: session.token.clone(),
            });
        }
    }
    let dep = s.backend.create_deployment(req)?;
    let location = format!("/api/deployments/{}", dep.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(dep),
    )
        .into_response())
}

/// Whether `url` is on the same host (and scheme) as `base`.
fn same_host(url: &str, base: &str) -> bool {
    use crate::github::origin;
    matches!((origin(url), origin(base)), (Some(a), Some(b)) if a == b)
}

async fn list<B: Backend>(
    State(s): State<AppState<B>>,
) -> Result<Json<Vec<DeploymentView>>, ApiError> {
    Ok(Json(s.backend.deployments()?))
}

async fn show<B: Backend>(
    State(s): State<AppState<B>>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    let mut d = s
        .backend
        .deployment(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id}")))?;
    d.timeline = crate::model::timeline(&s.backend.logs(&id)?.unwrap_or_default());
    Ok(Json(d))
}

async fn projects<B: Backend>(
    State(s): State<AppState<B>>,
) -> Result<Json<Vec<crate::ProjectView>>, ApiError> {
    Ok(Json(s.backend.projects()?))
}

async fn project<B: Backend>(
    State(s): State<AppState<B>>,
    Path(name): Path<String>,
) -> Result<Json<crate::ProjectView>, ApiError> {
    s.backend
        .project(&name)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no project {name}")))
}

async fn update_project<B: Backend>(
    State(s): State<AppState<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<crate::ProjectSettings>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::ProjectView>, ApiError> {
    require_write(&*s.backend, &headers, None)?;
    let Json(req) = body?;
    s.backend
        .update_project(&name, req)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no project {name}")))
}

async fn env_list<B: Backend>(
    State(s): State<AppState<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::EnvVarView>>, ApiError> {
    require_write(&*s.backend, &headers, None)?;
    s.backend
        .project_env(&name)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no project {name}")))
}

async fn env_set<B: Backend>(
    State(s): State<AppState<B>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<crate::SetEnvVar>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::EnvVarView>, ApiError> {
    require_write(&*s.backend, &headers, None)?;
    let Json(req) = body?;
    Ok(Json(s.backend.set_project_env(&name, &key, req)?))
}

async fn env_delete<B: Backend>(
    State(s): State<AppState<B>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    require_write(&*s.backend, &headers, None)?;
    if s.backend.delete_project_env(&name, &key)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "project {name} has no variable {key}"
        )))
    }
}

async fn cache_clear<B: Backend>(
    State(s): State<AppState<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<crate::ProjectView>, ApiError> {
    require_write(&*s.backend, &headers, None)?;
    s.backend
        .clear_build_cache(&name)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no project {name}")))
}

async fn rollback<B: Backend>(
    state: State<AppState<B>>,
    path: Path<String>,
    headers: HeaderMap,
    body: Result<Json<crate::SetCurrent>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::ProjectView>, ApiError> {
    set_current(state, path, headers, body, "rollback")
}

async fn promote<B: Backend>(
    state: State<AppState<B>>,
    path: Path<String>,
    headers: HeaderMap,
    body: Result<Json<crate::SetCurrent>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::ProjectView>, ApiError> {
    set_current(state, path, headers, body, "promote")
}

fn set_current<B: Backend>(
    State(s): State<AppState<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<crate::SetCurrent>, axum::extract::rejection::JsonRejection>,
    verb: &str,
) -> Result<Json<crate::ProjectView>, ApiError> {
    require_write(&*s.backend, &headers, None)?;
    let Json(req) = body?;
    s.backend
        .set_current(&name, req, verb)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no project {name}")))
}

async fn cancel<B: Backend>(
    State(s): State<AppState<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DeploymentView>, ApiError> {
    require_write(&*s.backend, &headers, None)?;
    s.backend
        .cancel_deployment(&id)?
        .map(Json)
        .ok_or_else(|| no_deployment(&id))
}

async fn logs<B: Backend>(
    State(s): State<AppState<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        let lines = s.backend.logs(&id)?.ok_or_else(|| no_deployment(&id))?;
        return Ok(Json(lines).into_response());
    }
    // A reconnecting client has seen every line up to `Last-Event-ID`.
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 512 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned);
    // Subscribe before reading the backlog so nothing falls between the two.
    let rx = s.backend.subscribe();
    let mut backlog = s.backend.logs(&id)?.ok_or_else(|| no_deployment(&id))?;
    if let Some(last) = &resume_after {
        backlog.retain(|line| line.key.as_str() > last.as_str());
    }
    let status = s
        .backend
        .deployment(&id)?
        .ok_or_else(|| no_deployment(&id))?
        .status;
    let stream = log_stream(s.backend.clone(), id, rx, backlog, status.is_final());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn no_deployment(id: &str) -> ApiError {
    ApiError::not_found(format!("no deployment {id}"))
}

/// What the live log stream does next.
struct Tail<B> {
    backend: std::sync::Arc<B>,
    id: String,
    rx: broadcast::Receiver<Event>,
    /// Events ready to send.
    queue: VecDeque<sse::Event>,
    /// Keys of lines already sent, to drop duplicates after a resync.
    seen: HashSet<String>,
    /// The deployment has ended: send what is queued, then close.
    ended: bool,
}

fn log_event(line: &LogLine) -> sse::Event {
    // The id lets a client that lost the connection resume after this line
    // (browsers send it back as `Last-Event-ID`).
    sse::Event::default()
        .event("log")
        .id(line.key.clone())
        .data(serde_json::to_string(line).unwrap_or_default())
}

fn log_stream<B: Backend>(
    backend: std::sync::Arc<B>,
    id: String,
    rx: broadcast::Receiver<Event>,
    backlog: Vec<LogLine>,
    ended: bool,
) -> impl Stream<Item = Result<sse::Event, Infallible>> {
    let mut tail = Tail {
        backend,
        id,
        rx,
        queue: VecDeque::new(),
        seen: HashSet::new(),
        ended,
    };
    tail.enqueue(backlog);
    if ended {
        tail.queue
            .push_back(sse::Event::default().event("end").data("end"));
    }
    stream::unfold(tail, |mut tail| async move {
        loop {
            if let Some(ev) = tail.queue.pop_front() {
                return Some((Ok(ev), tail));
            }
            if tail.ended {
                return None;
            }
            match tail.rx.recv().await {
                Ok(Event::Log { deployment, line }) if deployment == tail.id => {
                    tail.enqueue(vec![line]);
                }
                Ok(Event::Status { deployment, status }) if deployment == tail.id => {
                    tail.queue.push_back(
                        sse::Event::default()
                            .event("status")
                            .data(format!("{{\"status\":\"{}\"}}", status.as_str())),
                    );
                    if status.is_final() {
                        // Lines may still be in flight behind the status: resync once.
                        if let Ok(Some(lines)) = tail.backend.logs(&tail.id) {
                            tail.enqueue(lines);
                        }
                        tail.queue
                            .push_back(sse::Event::default().event("end").data("end"));
                        tail.ended = true;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(Some(lines)) = tail.backend.logs(&tail.id) {
                        tail.enqueue(lines);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

impl<B> Tail<B> {
    fn enqueue(&mut self, lines: Vec<LogLine>) {
        for line in lines {
            if self.seen.insert(line.key.clone()) {
                self.queue.push_back(log_event(&line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_host;

    #[test]
    fn same_host_compares_scheme_and_host() {
        assert!(same_host(
            "https://github.com/a/b.git",
            "https://github.com"
        ));
        assert!(same_host("https://GitHub.com/a/b", "https://github.com/"));
        assert!(!same_host(
            "https://github.com.evil/a/b",
            "https://github.com"
        ));
        assert!(!same_host("http://github.com/a/b", "https://github.com"));
        assert!(!same_host(
            "https://evil/github.com/a",
            "https://github.com"
        ));
        assert!(!same_host("file:///x", "https://github.com"));
    }
}

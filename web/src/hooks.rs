//! GitHub webhooks: `POST /api/hooks/github`. The signature
//! (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the shared
//! secret) is checked, in constant time, before anything is parsed; a `push`
//! to a project's branch becomes a deployment of exactly the pushed commit.
//! The same delivery (`X-GitHub-Delivery`) arriving twice, or at two peers,
//! deploys once.

use crate::{ApiError, AppState, Backend};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;

/// Largest delivery accepted (GitHub caps payloads at 25 MB; pushes with
/// thousands of commits are the big ones, and we need none of their lists).
pub const MAX_HOOK_BYTES: usize = 25 * 1024 * 1024;

/// What a `push` delivery says, as far as a deployment needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `X-GitHub-Delivery`.
    pub delivery: String,
    /// The branch pushed to (`refs/heads/` removed).
    pub branch: String,
    /// The commit the branch points to now.
    pub after: String,
    /// The repository's URLs (clone, HTML, SSH), to match projects by.
    pub repo_urls: Vec<String>,
    pub default_branch: Option<String>,
}

/// What the node did with a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// New deployments (ids).
    Deployed(Vec<String>),
    /// This delivery was handled before: the deployments it made then.
    Duplicate(Vec<String>),
    /// No project follows this repository.
    UnknownRepository,
    /// Projects follow this repository, but not this branch.
    OtherBranch,
}

#[derive(Deserialize)]
struct PushBody {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
}

#[derive(Deserialize)]
struct Repository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_ok(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn github<B: Backend>(
    State(s): State<AppState<B>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let secrets = s.backend.webhook_secrets();
    if secrets.is_empty() {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            error: "webhooks_disabled",
            detail: "this mesh takes no webhooks: start its peers with --webhook-secret, \
                     or give a project its own secret"
                .into(),
        });
    }
    let signature = header(&headers, "x-hub-signature-256").unwrap_or("");
    // Which secret signed it decides what it may deploy: the mesh's, any
    // project; a project's, that project only.
    let Some((scope, _)) = secrets
        .iter()
        .find(|(_, secret)| signature_ok(secret.as_bytes(), &body, signature))
    else {
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "bad_signature",
            detail:
                "X-Hub-Signature-256 is missing or does not match the body and the webhook secret"
                    .into(),
        });
    };
    let event = header(&headers, "x-github-event").unwrap_or("");
    let delivery = header(&headers, "x-github-delivery").unwrap_or("").trim();
    match event {
        "ping" => return Ok(Json(json!({"ok": true, "event": "ping"})).into_response()),
        "push" => {}
        other => {
            return Err(ApiError::bad_request(
                "unsupported_event",
                format!("event '{other}' is not handled; subscribe the webhook to push events"),
            ))
        }
    }
    if delivery.is_empty() || delivery.len() > 128 {
        return Err(ApiError::bad_request(
            "bad_delivery",
            "X-GitHub-Delivery is missing or too long",
        ));
    }
    let push: PushBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_payload", format!("not a push payload: {e}")))?;
    let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
        return Ok(ignored("not a branch (tags are not deployed)"));
    };
    if push.deleted || push.after.bytes().all(|b| b == b'0') {
        return Ok(ignored("the branch was deleted"));
    }
    let repo = push.repository;
    let push = Push {
        delivery: delivery.to_owned(),
        branch: branch.to_owned(),
        after: push.after,
        repo_urls: [repo.clone_url, repo.html_url, repo.ssh_url]
            .into_iter()
            .flatten()
            .collect(),
        default_branch: repo.default_branch,
    };
    match s.backend.github_push(push, scope.as_deref())? {
        PushOutcome::Deployed(ids) => {
            Ok((StatusCode::ACCEPTED, Json(json!({"deployments": ids}))).into_response())
        }
        PushOutcome::Duplicate(ids) => {
            Ok(Json(json!({"duplicate": true, "deployments": ids})).into_response())
        }
        PushOutcome::OtherBranch => Ok(ignored("no project follows this branch")),
        PushOutcome::UnknownRepository => Err(ApiError::not_found(
            "no project follows this repository; deploy it once first",
        )),
    }
}

fn ignored(why: &str) -> Response {
    Json(json!({"ignored": why, "deployments": []})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_against_the_body_and_secret() {
        // The example from GitHub's documentation on validating deliveries.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_ok(secret, body, good));
        assert!(!signature_ok(secret, b"Hello, World?", good));
        assert!(!signature_ok(b"another secret", body, good));
        assert!(!signature_ok(
            secret,
            body,
            &good.replace("sha256=", "sha1=")
        ));
        assert!(!signature_ok(secret, body, "sha256=zz"));
        assert!(!signature_ok(secret, body, ""));
    }
}

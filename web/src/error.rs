//! Every API failure becomes a response here, and only here:
//! JSON `{"error", "detail"}` with the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    /// A short machine-readable name, e.g. `invalid_repo_url`.
    pub error: &'static str,
    /// What was wrong and what to do about it.
    pub detail: String,
}

impl ApiError {
    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            detail: detail.into(),
        }
    }

    /// The request is understood but the resource is not in a state that allows it.
    pub fn conflict(error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            error,
            detail: detail.into(),
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "unauthorized",
            detail: "sign in, or send `Authorization: Bearer <admin token or session>`".into(),
        }
    }

    /// Authenticated, but not allowed to do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            error: "forbidden",
            detail: detail.into(),
        }
    }

    /// GitHub (or the network to it) failed; the detail says how.
    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            error: "github_unavailable",
            detail: detail.into(),
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal",
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

/// GitHub (or the way to it) failed: a bad gateway, in GitHub's words.
impl From<crate::github::GitHubError> for ApiError {
    fn from(err: crate::github::GitHubError) -> Self {
        Self::bad_gateway(err.to_string())
    }
}

/// Turns axum's own rejections (bad JSON, wrong content type, too large) into our shape.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        // Malformed or mistyped JSON is a plain bad request; keep 413 and 415.
        let status = match &r {
            J::JsonDataError(_) | J::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
            _ => r.status(),
        };
        Self {
            status,
            error: "invalid_body",
            detail: r.body_text(),
        }
    }
}

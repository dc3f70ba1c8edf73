//! Who may write. Two kinds of callers:
//!
//! - the admin token, `Authorization: Bearer <token>` (API and CLI), compared
//!   in constant time;
//! - a signed-in GitHub user: the session cookie (browsers; writes also need
//!   the CSRF token in `X-CSRF-Token` or a `csrf` form field), or the same
//!   sealed session as a bearer token (`shoal login` for the CLI).

use crate::github::GitHub;
use crate::session::{Keys, Purpose, Session};
use crate::{ApiError, Backend};
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "shoal_session";
/// Name of the cookie holding a web-flow sign-in's `state`.
pub const STATE_COOKIE: &str = "shoal_oauth";
/// Header that carries the CSRF token with cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How callers authenticate on this mesh.
pub struct Auth {
    pub admin_token: String,
    /// Derived from the mesh secret: the same on every peer.
    pub keys: std::sync::Arc<Keys>,
    /// GitHub sign-in; `None` if no client id is configured.
    pub github: Option<GitHub>,
    /// GitHub logins allowed to sign in (lowercase). Empty, with
    /// `allowed_orgs` empty too: every GitHub user may.
    pub allowed_users: Vec<String>,
    /// Members of these organisations may sign in (lowercase).
    pub allowed_orgs: Vec<String>,
    pub session_ttl_secs: u64,
    /// The URL users reach the mesh at (behind one public domain), used for
    /// the web flow's callback; otherwise taken from the request's `Host`.
    pub public_url: Option<String>,
}

impl Auth {
    /// Mark cookies `Secure` when the mesh is reached over https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    /// Whether a GitHub user (and their organisations) may sign in.
    pub fn allowed(&self, login: &str, orgs: &[String]) -> bool {
        if self.allowed_users.is_empty() && self.allowed_orgs.is_empty() {
            return true;
        }
        let login = login.to_ascii_lowercase();
        self.allowed_users.contains(&login)
            || orgs
                .iter()
                .any(|o| self.allowed_orgs.contains(&o.to_ascii_lowercase()))
    }

    /// A `Set-Cookie` value.
    pub fn cookie(&self, name: &str, value: &str, max_age_secs: u64) -> String {
        let secure = if self.secure_cookies() {
            "; Secure"
        } else {
            ""
        };
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}")
    }
}

/// Who made a request.
#[derive(Debug)]
pub enum Caller {
    Admin,
    User(Session),
}

impl Caller {
    pub fn session(&self) -> Option<&Session> {
        match self {
            Self::Admin => None,
            Self::User(s) => Some(s),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A live session sealed in `sealed`, if any.
fn open_session<B: Backend>(backend: &B, sealed: &str) -> Option<Session> {
    let auth = backend.auth();
    let session: Session = auth.keys.open_json(Purpose::Session, sealed)?;
    (!session.expired() && !backend.session_revoked(&session.id)).then_some(session)
}

/// The signed-in user of a browser request (session cookie), if any.
pub fn viewer<B: Backend>(backend: &B, headers: &HeaderMap) -> Option<Session> {
    open_session(backend, cookie(headers, SESSION_COOKIE)?)
}

/// Who sent the request, without the CSRF check: for reads.
pub fn caller<B: Backend>(backend: &B, headers: &HeaderMap) -> Option<Caller> {
    if let Some(given) = bearer(headers) {
        if constant_time_eq(given.as_bytes(), backend.auth().admin_token.as_bytes()) {
            return Some(Caller::Admin);
        }
        return open_session(backend, given).map(Caller::User);
    }
    viewer(backend, headers).map(Caller::User)
}

/// Succeeds for the admin token, a bearer session, or the session cookie
/// with its CSRF token in `X-CSRF-Token` (or `form_csrf`, from a form).
pub fn require_write<B: Backend>(
    backend: &B,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<Caller, ApiError> {
    if bearer(headers).is_some() {
        return caller(backend, headers).ok_or_else(ApiError::unauthorized);
    }
    let session = viewer(backend, headers).ok_or_else(ApiError::unauthorized)?;
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(form_csrf)
        .unwrap_or_default();
    let expected = backend.auth().keys.csrf(&session.id);
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(Caller::User(session))
    } else {
        Err(ApiError::forbidden(
            "the CSRF token is missing or wrong; reload the page and try again",
        ))
    }
}

/// Compares digests so neither the length nor the first differing byte leaks.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; shoal_session=s1.abc"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        h.append(
            header::COOKIE,
            "b=2".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("s1.abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn allow_lists() {
        let mut auth = Auth {
            admin_token: "t".into(),
            keys: std::sync::Arc::new(Keys::derive(b"k")),
            github: None,
            allowed_users: vec![],
            allowed_orgs: vec![],
            session_ttl_secs: 60,
            public_url: None,
        };
        assert!(auth.allowed("anyone", &[]));
        auth.allowed_users = vec!["octocat".into()];
        auth.allowed_orgs = vec!["acme".into()];
        assert!(auth.allowed("OctoCat", &[]));
        assert!(auth.allowed("other", &["ACME".into()]));
        assert!(!auth.allowed("other", &["evil".into()]));
        assert!(!auth.cookie("n", "v", 1).contains("Secure"));
        auth.public_url = Some("https://deploy.example".into());
        assert!(auth.cookie("n", "v", 1).contains("; Secure"));
    }
}

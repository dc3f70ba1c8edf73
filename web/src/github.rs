//! A small client for the GitHub endpoints sign-in and the repository
//! picker use: the OAuth device and web flows, `GET /user`, `GET /user/orgs`
//! and `GET /user/repos` (following the `Link` header). Base URLs are
//! configuration, so GitHub Enterprise Server (and the test suite's fake
//! GitHub) work the same way.
//!
//! Tokens travel only in `Authorization` headers to the configured API
//! host, never in URLs, logs or errors.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Pages of `GET /user/repos` followed at most (100 repositories each).
const MAX_PAGES: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("GitHub could not be reached: {0}")]
    Unreachable(String),
    #[error("GitHub answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("GitHub sent an answer shoal does not understand: {0}")]
    Malformed(String),
    #[error("GitHub refused: {0}")]
    Refused(String),
}

impl From<reqwest::Error> for GitHubError {
    fn from(err: reqwest::Error) -> Self {
        // reqwest's message names the URL; ours never carry tokens.
        if err.is_decode() {
            Self::Malformed(err.to_string())
        } else {
            Self::Unreachable(err.without_url().to_string())
        }
    }
}

/// Where GitHub is and which OAuth (or GitHub App) client shoal signs in as.
#[derive(Clone)]
pub struct GitHubConfig {
    /// `https://github.com`, or a GitHub Enterprise Server's URL.
    pub web_url: String,
    /// `https://api.github.com`, or `https://<host>/api/v3`.
    pub api_url: String,
    pub client_id: String,
    /// Only the web flow needs it; the device flow works without.
    pub client_secret: Option<String>,
    /// OAuth scopes asked for (ignored for GitHub Apps, whose permissions
    /// are set on the app).
    pub scope: String,
}

impl std::fmt::Debug for GitHubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubConfig")
            .field("web_url", &self.web_url)
            .field("api_url", &self.api_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| ".."))
            .field("scope", &self.scope)
            .finish()
    }
}

/// The answer to `POST /login/device/code`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub expires_in: u64,
    #[serde(default = "default_interval")]
    pub interval: u64,
}

fn default_interval() -> u64 {
    5
}

/// One poll of a device-flow sign-in.
#[derive(Debug, PartialEq)]
pub enum DevicePoll {
    /// The user has not entered the code yet.
    Pending,
    /// Polled too fast: wait this many seconds between polls from now on.
    SlowDown(u64),
    Denied,
    Expired,
    Token(String),
}

/// The signed-in user, from `GET /user`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct User {
    pub login: String,
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
}

/// A repository, as `GET /user/repos` lists it (the fields the picker uses).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Repo {
    pub full_name: String,
    pub name: String,
    pub private: bool,
    #[serde(default)]
    pub description: Option<String>,
    pub clone_url: String,
    pub html_url: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub pushed_at: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct Org {
    login: String,
}

/// The GitHub client.
pub struct GitHub {
    pub config: GitHubConfig,
    http: reqwest::Client,
}

impl GitHub {
    pub fn new(mut config: GitHubConfig) -> Result<Self, GitHubError> {
        for url in [&mut config.web_url, &mut config.api_url] {
            while url.ends_with('/') {
                url.pop();
            }
        }
        Ok(Self {
            config,
            http: http_client()?,
        })
    }

    /// Whether the web flow (which needs the client secret) is available.
    pub fn web_flow(&self) -> bool {
        self.config.client_secret.is_some()
    }

    /// Starts a device-flow sign-in.
    pub async fn device_code(&self) -> Result<DeviceCode, GitHubError> {
        let res = self
            .http
            .post(format!("{}/login/device/code", self.config.web_url))
            .header("accept", "application/json")
            .form(&[
                ("client_id", self.config.client_id.as_str()),
                ("scope", self.config.scope.as_str()),
            ])
            .send()
            .await?;
        let res = check(res).await?;
        let text = res.text().await?;
        if let Ok(code) = serde_json::from_str::<DeviceCode>(&text) {
            return Ok(code);
        }
        match serde_json::from_str::<TokenAnswer>(&text) {
            Ok(TokenAnswer {
                error: Some(error),
                error_description,
                ..
            }) => Err(GitHubError::Refused(describe(&error, error_description))),
            _ => Err(GitHubError::Malformed(
                "no device code in the answer".into(),
            )),
        }
    }

    /// Asks once whether the user has entered the device code.
    pub async fn poll_device(&self, device_code: &str) -> Result<DevicePoll, GitHubError> {
        let answer = self
            .token_request(&[
                ("client_id", self.config.client_id.as_str()),
                ("device_code", device_code),
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ])
            .await?;
        if let Some(token) = answer.access_token.filter(|t| !t.is_empty()) {
            return Ok(DevicePoll::Token(token));
        }
        match answer.error.as_deref() {
            Some("authorization_pending") => Ok(DevicePoll::Pending),
            Some("slow_down") => Ok(DevicePoll::SlowDown(answer.interval.unwrap_or(10))),
            Some("expired_token") => Ok(DevicePoll::Expired),
            Some("access_denied") => Ok(DevicePoll::Denied),
            Some(other) => Err(GitHubError::Refused(describe(
                other,
                answer.error_description,
            ))),
            None => Err(GitHubError::Malformed(
                "neither a token nor an error".into(),
            )),
        }
    }

    /// Where the web flow sends the browser.
    pub fn authorize_url(&self, state: &str, redirect_uri: &str) -> String {
        let query = [
            ("client_id", self.config.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", self.config.scope.as_str()),
            ("state", state),
            ("allow_signup", "false"),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        format!("{}/login/oauth/authorize?{query}", self.config.web_url)
    }

    /// Exchanges a web-flow code for a token.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<String, GitHubError> {
        let secret = self.config.client_secret.as_deref().ok_or_else(|| {
            GitHubError::Refused("the web flow needs --github-client-secret".into())
        })?;
        let answer = self
            .token_request(&[
                ("client_id", self.config.client_id.as_str()),
                ("client_secret", secret),
                ("code", code),
                ("redirect_uri", redirect_uri),
            ])
            .await?;
        match (answer.access_token, answer.error) {
            (Some(token), _) if !token.is_empty() => Ok(token),
            (_, Some(error)) => Err(GitHubError::Refused(describe(
                &error,
                answer.error_description,
            ))),
            _ => Err(GitHubError::Malformed(
                "neither a token nor an error".into(),
            )),
        }
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenAnswer, GitHubError> {
        let res = self
            .http
            .post(format!("{}/login/oauth/access_token", self.config.web_url))
            .header("accept", "application/json")
            .form(form)
            .send()
            .await?;
        Ok(check(res).await?.json().await?)
    }

    fn api(&self, token: &str, url: &str) -> reqwest::RequestBuilder {
        self.http
            .get(url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .bearer_auth(token)
    }

    /// The user a token belongs to.
    pub async fn user(&self, token: &str) -> Result<User, GitHubError> {
        let url = format!("{}/user", self.config.api_url);
        Ok(check(self.api(token, &url).send().await?)
            .await?
            .json()
            .await?)
    }

    /// The logins of the organisations the user belongs to.
    pub async fn orgs(&self, token: &str) -> Result<Vec<String>, GitHubError> {
        let url = format!("{}/user/orgs?per_page=100", self.config.api_url);
        let orgs: Vec<Org> = check(self.api(token, &url).send().await?)
            .await?
            .json()
            .await?;
        Ok(orgs.into_iter().map(|o| o.login).collect())
    }

    /// The user's repositories (own, collaborator and organisation ones),
    /// most recently pushed first, following `Link: rel="next"` for up to
    /// 1000 repositories. Returns them and whether there were more.
    pub async fn repos(&self, token: &str) -> Result<(Vec<Repo>, bool), GitHubError> {
        let mut url = format!(
            "{}/user/repos?per_page=100&sort=pushed&direction=desc&affiliation=owner,collaborator,organization_member",
            self.config.api_url
        );
        let mut repos = Vec::new();
        for _ in 0..MAX_PAGES {
            let res = check(self.api(token, &url).send().await?).await?;
            let next = res
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let page: Vec<Repo> = res.json().await?;
            repos.extend(page);
            match next {
                // Only ever send the token back to the API host.
                Some(n) if n.starts_with(&format!("{}/", self.config.api_url)) => url = n,
                Some(n) => {
                    return Err(GitHubError::Malformed(format!(
                        "the next page is on another host: {n}"
                    )))
                }
                None => return Ok((repos, false)),
            }
        }
        Ok((repos, true))
    }
}

/// A GitHub App that shoal clones private repositories as: each build
/// mints a short-lived installation token for just that repository, with
/// read-only `contents` (and `metadata`), signed in as the app with an
/// RS256 JWT. Nothing is stored.
pub struct GitHubApp {
    /// `https://github.com`: the origin clone URLs must have.
    pub web_url: String,
    api_url: String,
    app_id: String,
    key: jsonwebtoken::EncodingKey,
    http: reqwest::Client,
}

impl std::fmt::Debug for GitHubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubApp")
            .field("api_url", &self.api_url)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct AppClaims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct InstallationToken {
    token: String,
}

impl GitHubApp {
    /// `key_pem`: the app's private key (PKCS#1 or PKCS#8 PEM), as GitHub
    /// downloads it.
    pub fn new(
        web_url: &str,
        api_url: &str,
        app_id: &str,
        key_pem: &[u8],
    ) -> Result<Self, GitHubError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).map_err(|e| {
            GitHubError::Refused(format!("the GitHub App key is not an RSA PEM key: {e}"))
        })?;
        let http = http_client()?;
        Ok(Self {
            web_url: web_url.trim_end_matches('/').to_owned(),
            api_url: api_url.trim_end_matches('/').to_owned(),
            app_id: app_id.to_owned(),
            key,
            http,
        })
    }

    /// A JWT that authenticates as the app for 9 minutes (GitHub allows
    /// 10; issued a minute in the past against clock drift).
    fn jwt(&self) -> Result<String, GitHubError> {
        let now = crate::session::now_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &AppClaims {
                iat: now.saturating_sub(60),
                exp: now + 540,
                iss: &self.app_id,
            },
            &self.key,
        )
        .map_err(|e| GitHubError::Refused(format!("signing the app's JWT: {e}")))
    }

    /// A read-only token for `owner/repo`, or `None` if the app is not
    /// installed there.
    pub async fn repo_token(&self, owner: &str, repo: &str) -> Result<Option<String>, GitHubError> {
        let jwt = self.jwt()?;
        let res = self
            .http
            .get(format!(
                "{}/repos/{owner}/{repo}/installation",
                self.api_url
            ))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .bearer_auth(&jwt)
            .send()
            .await?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let installation: Installation = check(res).await?.json().await?;
        let res = self
            .http
            .post(format!(
                "{}/app/installations/{}/access_tokens",
                self.api_url, installation.id
            ))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .bearer_auth(&jwt)
            .json(&serde_json::json!({
                "repositories": [repo],
                "permissions": {"contents": "read", "metadata": "read"},
            }))
            .send()
            .await?;
        let token: InstallationToken = check(res).await?.json().await?;
        Ok(Some(token.token))
    }
}

/// `scheme://host[:port]` of a URL, lowercased; `None` without a host or
/// with credentials in it.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains('@')).then(|| {
        format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        )
    })
}

/// `(owner, repo)` of a clone URL on `web_url`'s host.
pub fn owner_repo(url: &str, web_url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix(web_url.trim_end_matches('/'))?
        .strip_prefix('/')?;
    let mut parts = rest.trim_end_matches('/').split('/');
    let owner = parts.next().filter(|o| !o.is_empty())?;
    let repo = parts.next()?;
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    (parts.next().is_none() && !repo.is_empty()).then(|| (owner.to_owned(), repo.to_owned()))
}

/// The HTTP client for GitHub: bounded in time, never following redirects
/// (a token must not follow one to another host).
fn http_client() -> Result<reqwest::Client, GitHubError> {
    reqwest::Client::builder()
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| GitHubError::Unreachable(e.to_string()))
}

/// Fails with GitHub's own message on any status but 2xx.
async fn check(res: reqwest::Response) -> Result<reqwest::Response, GitHubError> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    #[derive(Deserialize)]
    struct Message {
        message: Option<String>,
        error_description: Option<String>,
    }
    let text = res.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Message>(&text)
        .ok()
        .and_then(|m| m.message.or(m.error_description))
        .unwrap_or_else(|| text.chars().take(200).collect());
    Err(GitHubError::Status {
        status: status.as_u16(),
        message,
    })
}

fn describe(error: &str, description: Option<String>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!("{error}: {d}"),
        _ => error.to_owned(),
    }
}

/// The `rel="next"` URL of a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| url.to_owned())
    })
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_link() {
        let h = r#"<https://api.github.com/user/repos?page=2>; rel="next", <https://api.github.com/user/repos?page=5>; rel="last""#;
        assert_eq!(
            next_link(h).as_deref(),
            Some("https://api.github.com/user/repos?page=2")
        );
        let last = r#"<https://api.github.com/user/repos?page=1>; rel="prev", <https://api.github.com/user/repos?page=1>; rel="first""#;
        assert_eq!(next_link(last), None);
        assert_eq!(next_link("garbage"), None);
        assert_eq!(next_link(""), None);
    }

    #[test]
    fn owner_and_repo_of_clone_urls() {
        let gh = "https://github.com";
        assert_eq!(
            owner_repo("https://github.com/octo/site.git", gh),
            Some(("octo".into(), "site".into()))
        );
        assert_eq!(
            owner_repo("https://github.com/octo/site", "https://github.com/"),
            Some(("octo".into(), "site".into()))
        );
        assert_eq!(owner_repo("https://github.com.evil/octo/site", gh), None);
        assert_eq!(owner_repo("https://github.com/octo", gh), None);
        assert_eq!(owner_repo("https://github.com/octo/site/extra", gh), None);
        assert_eq!(owner_repo("https://gitlab.com/octo/site", gh), None);
    }

    #[test]
    fn authorize_url_encodes_its_parameters() {
        let gh = GitHub::new(GitHubConfig {
            web_url: "https://ghe.example/".into(),
            api_url: "https://ghe.example/api/v3".into(),
            client_id: "Iv1.abc".into(),
            client_secret: None,
            scope: "repo read:org".into(),
        })
        .unwrap_or_else(|e| unreachable!("{e}"));
        let url = gh.authorize_url("s t&x", "http://peer:8080/auth/github/callback");
        assert!(url.starts_with("https://ghe.example/login/oauth/authorize?client_id=Iv1.abc&"));
        assert!(url.contains("state=s%20t%26x"));
        assert!(url.contains("redirect_uri=http%3A%2F%2Fpeer%3A8080%2Fauth%2Fgithub%2Fcallback"));
        assert!(url.contains("scope=repo%20read%3Aorg"));
        assert!(!gh.web_flow());
    }
}

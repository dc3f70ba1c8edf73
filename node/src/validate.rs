//! Checks on what users submit: repository URLs, site names, refs and
//! commits. Untrusted input never reaches git unless it passed these.

use std::fmt;

/// Why a submission was refused; `error` is a stable code, `Display` the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    RepoUrl(String),
    #[error("{0}")]
    Name(String),
    #[error("{0}")]
    Ref(String),
    #[error("{0}")]
    Commit(String),
}

impl Invalid {
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::RepoUrl(_) => "invalid_repo_url",
            Invalid::Name(_) => "invalid_name",
            Invalid::Ref(_) => "invalid_ref",
            Invalid::Commit(_) => "invalid_commit",
        }
    }
}

/// A repository location that passed [`repo_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    /// `https://`, `http://` or `git://`.
    Remote(String),
    /// A local path or `file://` URL (only with `--allow-local-repos`).
    Local(String),
}

impl RepoUrl {
    pub fn as_str(&self) -> &str {
        match self {
            RepoUrl::Remote(s) | RepoUrl::Local(s) => s,
        }
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest repository URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Accepts only transports that cannot run commands: `https`, `http`, `git`,
/// and local repositories when allowed. `ext::`, `fd::`, ssh (whose option
/// injection has bitten git before), URLs starting with `-`, credentials in
/// URLs and control characters are refused.
pub fn repo_url(input: &str, allow_local: bool) -> Result<RepoUrl, Invalid> {
    let bad = |m: &str| Err(Invalid::RepoUrl(m.to_owned()));
    let url = input.trim();
    if url.is_empty() {
        return bad("repo_url is empty");
    }
    if url.len() > MAX_URL_LEN {
        return bad("repo_url is longer than 2048 characters");
    }
    if url.starts_with('-') {
        return bad("repo_url must not start with '-'");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("repo_url must not contain spaces or control characters");
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("ext::") || lower.starts_with("fd::") || lower.contains("::") {
        return bad("git remote helpers (ext::, fd::, ...) are not allowed");
    }
    if let Some((scheme, rest)) = lower.split_once("://") {
        return match scheme {
            "https" | "http" | "git" => {
                let authority = rest.split('/').next().unwrap_or_default();
                if authority.contains('@') {
                    bad("credentials in the URL are not accepted; shoal keeps tokens out of URLs")
                } else if authority.is_empty() || authority.starts_with('-') {
                    bad("repo_url has no valid host")
                } else if rest.split('/').skip(1).all(str::is_empty) {
                    bad("repo_url has no repository path")
                } else {
                    Ok(RepoUrl::Remote(url.to_owned()))
                }
            }
            "file" if allow_local => Ok(RepoUrl::Local(url.to_owned())),
            "file" => bad(
                "local repositories are disabled on this peer (start it with --allow-local-repos)",
            ),
            "ssh" | "git+ssh" | "ssh+git" => bad("ssh URLs are not supported; use the https URL"),
            other => Err(Invalid::RepoUrl(format!(
                "unsupported URL scheme '{other}'; use https://"
            ))),
        };
    }
    let is_path = url.starts_with('/') || url.starts_with("./") || url.starts_with("../");
    if is_path {
        return if allow_local {
            Ok(RepoUrl::Local(url.to_owned()))
        } else {
            bad("local repositories are disabled on this peer (start it with --allow-local-repos)")
        };
    }
    if url.contains(':') {
        return bad("scp-style (ssh) URLs are not supported; use the https URL");
    }
    bad("repo_url must be an https://, http:// or git:// URL")
}

/// Longest DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// A site name is one DNS label: lowercase letters, digits and inner dashes,
/// without `--` (reserved for preview hosts).
pub fn name(input: &str) -> Result<String, Invalid> {
    let ok = !input.is_empty()
        && input.len() <= MAX_NAME_LEN
        && input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !input.starts_with('-')
        && !input.ends_with('-')
        && !input.contains("--");
    if ok {
        Ok(input.to_owned())
    } else {
        Err(Invalid::Name(format!(
            "'{input}' is not a valid site name: use 1-63 lowercase letters, digits and single dashes, \
             not at the start or end"
        )))
    }
}

/// The DNS-label form of a repository's name: `https://x/My_Site.git` → `my-site`.
pub fn default_name(url: &str) -> Result<String, Invalid> {
    let last = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default()
        .trim_end_matches(".git");
    let mut out = String::new();
    for c in last.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(MAX_NAME_LEN).collect();
    name(out.trim_end_matches('-')).map_err(|_| {
        Invalid::Name(format!(
            "cannot derive a site name from '{url}'; pass \"name\""
        ))
    })
}

/// A branch or tag name as git accepts it, never starting with `-`.
pub fn git_ref(input: &str) -> Result<String, Invalid> {
    let r = input
        .strip_prefix("refs/heads/")
        .or(input.strip_prefix("refs/tags/"))
        .unwrap_or(input);
    let ok = !r.is_empty()
        && r.len() <= 255
        && !r.starts_with('-')
        && !r.starts_with('/')
        && git2::Reference::is_valid_name(&format!("refs/heads/{r}"));
    if ok {
        Ok(input.to_owned())
    } else {
        Err(Invalid::Ref(format!(
            "'{input}' is not a valid branch or tag name"
        )))
    }
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn commit(input: &str) -> Result<String, Invalid> {
    let lower = input.to_ascii_lowercase();
    if matches!(lower.len(), 40 | 64) && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(lower)
    } else {
        Err(Invalid::Commit(format!(
            "'{input}' is not a full commit SHA (40 hex digits)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_remotes() {
        for u in [
            "https://github.com/a/b.git",
            "http://git.local/x",
            "git://host/repo",
        ] {
            assert_eq!(repo_url(u, false), Ok(RepoUrl::Remote(u.into())), "{u}");
        }
    }

    #[test]
    fn refuses_dangerous_or_unsupported_urls() {
        for u in [
            "",
            "-uhttps://x",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "ssh://git@github.com/a/b",
            "git@github.com:a/b.git",
            "ftp://x/y",
            "https://user:tok@github.com/a/b",
            "https://",
            "https://host",
            "/srv/repo",
            "file:///srv/repo",
            "https://a/b c",
            "https://-oProxyCommand=x/y",
            "transport::https://x/y",
        ] {
            assert!(repo_url(u, false).is_err(), "{u} should be refused");
        }
    }

    #[test]
    fn local_paths_need_permission() {
        assert_eq!(
            repo_url("/srv/repo", true),
            Ok(RepoUrl::Local("/srv/repo".into()))
        );
        assert_eq!(
            repo_url("file:///srv/repo", true),
            Ok(RepoUrl::Local("file:///srv/repo".into()))
        );
        assert!(repo_url("ext::sh", true).is_err());
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(name("my-site-2").is_ok());
        for n in ["", "-a", "a-", "A", "a_b", "a.b", "a--b", &"a".repeat(64)] {
            assert!(name(n).is_err(), "{n}");
        }
        assert_eq!(
            default_name("https://github.com/me/My_Site.git").unwrap(),
            "my-site"
        );
        assert_eq!(default_name("/tmp/x/repo/").unwrap(), "repo");
        assert!(default_name("https://github.com/me/___.git").is_err());
    }

    #[test]
    fn refs_and_commits() {
        assert!(git_ref("main").is_ok());
        assert!(git_ref("release/v1.2").is_ok());
        for r in ["-main", "a..b", "a b", "", "x~1", "refs/heads/-x"] {
            assert!(git_ref(r).is_err(), "{r}");
        }
        assert!(commit(&"a".repeat(40)).is_ok());
        assert!(commit("abc123").is_err());
        assert!(commit(&"g".repeat(40)).is_err());
    }

    proptest! {
        #[test]
        fn default_names_are_valid_or_refused(s in ".{0,80}") {
            if let Ok(n) = default_name(&s) { prop_assert!(name(&n).is_ok()); }
        }
    }
}

//! Serving one site's files: a chain of small steps from a request path to a
//! file. Dotfiles and `..` are never served; `x` falls back to `x.html`, a
//! directory to its `index.html` (with a redirect that adds the slash), and
//! anything else to the site's own `404.html`. Ranges, content types and
//! `Last-Modified` come from tower-http; ETags are added here.

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// Where a request path leads inside a site.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    File(PathBuf),
    /// A directory asked for without its trailing slash.
    AddSlash,
    NotFound,
}

/// Decodes a URL path into its segments, refusing anything that could leave
/// the site root or reveal a dotfile.
pub fn safe_segments(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let seg = percent_decode(raw)?;
        if seg.starts_with('.') || seg.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Maps a request path to a file under `root`.
pub fn resolve(root: &Path, path: &str) -> Resolved {
    let Some(segments) = safe_segments(path) else {
        return Resolved::NotFound;
    };
    let mut target = root.to_path_buf();
    target.extend(&segments);
    if path.ends_with('/') || segments.is_empty() {
        let index = target.join("index.html");
        return if is_file(&index) {
            Resolved::File(index)
        } else {
            Resolved::NotFound
        };
    }
    if is_file(&target) {
        return Resolved::File(target);
    }
    if is_dir(&target) {
        return Resolved::AddSlash;
    }
    let mut html = target.into_os_string();
    html.push(".html");
    let html = PathBuf::from(html);
    if is_file(&html) {
        Resolved::File(html)
    } else {
        Resolved::NotFound
    }
}

/// A validator that changes whenever the file does. Weak, because the
/// compression layer may serve the same file in several encodings.
fn etag(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let mut h = Sha256::new();
    h.update(path.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_be_bytes());
    h.update(modified.as_nanos().to_be_bytes());
    Some(format!("W/\"{}\"", hex::encode(&h.finalize()[..12])))
}

fn if_none_match_hits(req: &Request<Body>, tag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().trim_start_matches("W/"))
        .any(|v| v == tag.trim_start_matches("W/") || v == "*")
}

/// Serves `path` for `req` with ETag, conditional and range handling.
pub async fn serve_file(path: &Path, req: Request<Body>, status: StatusCode) -> Response<Body> {
    let tag = etag(path);
    if status == StatusCode::OK {
        if let Some(tag) = &tag {
            if if_none_match_hits(&req, tag) {
                let mut res = Response::new(Body::empty());
                *res.status_mut() = StatusCode::NOT_MODIFIED;
                if let Ok(v) = HeaderValue::from_str(tag) {
                    res.headers_mut().insert(header::ETAG, v);
                }
                return res;
            }
        }
    }
    let mut req = req;
    if status != StatusCode::OK {
        // An error page is never partial or "not modified".
        for h in [
            header::RANGE,
            header::IF_MODIFIED_SINCE,
            header::IF_NONE_MATCH,
        ] {
            req.headers_mut().remove(h);
        }
    }
    let res = match ServeFile::new(path).oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    };
    let mut res = res;
    if status != StatusCode::OK && res.status() == StatusCode::OK {
        *res.status_mut() = status;
    }
    if let Some(v) = tag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        if res.status().is_success() {
            res.headers_mut().insert(header::ETAG, v);
        }
    }
    // Like most static hosts: caches may keep a copy but must revalidate,
    // so a new deployment shows up at once.
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=0, must-revalidate"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("docs")).unwrap();
        std::fs::write(r.join("index.html"), "home").unwrap();
        std::fs::write(r.join("about.html"), "about").unwrap();
        std::fs::write(r.join("docs/index.html"), "docs").unwrap();
        std::fs::write(r.join(".secret"), "no").unwrap();
        dir
    }

    #[test]
    fn resolves_like_a_static_host() {
        let d = site();
        let r = d.path();
        assert_eq!(resolve(r, "/"), Resolved::File(r.join("index.html")));
        assert_eq!(resolve(r, "/about"), Resolved::File(r.join("about.html")));
        assert_eq!(
            resolve(r, "/about.html"),
            Resolved::File(r.join("about.html"))
        );
        assert_eq!(resolve(r, "/docs"), Resolved::AddSlash);
        assert_eq!(
            resolve(r, "/docs/"),
            Resolved::File(r.join("docs/index.html"))
        );
        assert_eq!(resolve(r, "/missing"), Resolved::NotFound);
    }

    #[test]
    fn refuses_dotfiles_and_traversal() {
        let d = site();
        let r = d.path();
        for p in [
            "/.secret",
            "/../etc/passwd",
            "/%2e%2e/x",
            "/docs/%2E%2E/.secret",
            "/a%2fb",
            "/%00",
        ] {
            assert_eq!(resolve(r, p), Resolved::NotFound, "{p}");
        }
        assert_eq!(safe_segments("/%zz"), None);
    }
}

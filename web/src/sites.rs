//! The sites port: picks the site by `Host: <name>.<site-domain>` or by the
//! `/d/<name>/` prefix, then serves its current version.

use crate::files::{resolve, serve_file, Resolved};
use crate::{AppState, Backend};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use axum::Router;
use http::uri::PathAndQuery;
use std::path::Path;
use std::sync::atomic::Ordering;
use tower_http::compression::CompressionLayer;

pub fn router<B: Backend>(state: AppState<B>) -> Router {
    Router::new()
        .fallback(handle::<B>)
        .layer(CompressionLayer::new().gzip(true).br(true))
        .with_state(state)
}

/// The site a request is for, and the path within that site.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    site: String,
    path: String,
    /// Prefix to put back in front of redirects (`/d/<name>` or empty).
    prefix: String,
}

fn host_site(host: &str, domain: &str) -> Option<String> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
}

fn target(uri: &Uri, host: Option<&str>, domain: &str) -> Option<Target> {
    let path = uri.path();
    if let Some(site) = host.and_then(|h| host_site(h, domain)) {
        return Some(Target {
            site,
            path: path.to_owned(),
            prefix: String::new(),
        });
    }
    let rest = path.strip_prefix("/d/")?;
    // `/d/<name>` without a slash keeps an empty path, which redirects.
    let (site, path) = rest
        .split_once('/')
        .map_or((rest, String::new()), |(s, t)| (s, format!("/{t}")));
    (!site.is_empty()).then(|| Target {
        site: site.to_owned(),
        path,
        prefix: format!("/d/{site}"),
    })
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::from(text));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

async fn handle<B: Backend>(State(s): State<AppState<B>>, req: Request<Body>) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(str::to_owned);
    let res = match target(req.uri(), host.as_deref(), s.backend.site_domain()) {
        None => plain(StatusCode::NOT_FOUND, "no site here\n"),
        Some(t) => match s.backend.site_root(&t.site) {
            None => plain(StatusCode::NOT_FOUND, "no such site\n"),
            Some(root) => serve_site(&root, t, req).await,
        },
    };
    let counter = if res.status().is_success() || res.status().is_redirection() {
        &s.metrics.site_requests_ok
    } else {
        &s.metrics.site_requests_not_found
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let length = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(n) = length {
        s.metrics.site_bytes_served.fetch_add(n, Ordering::Relaxed);
    }
    res
}

async fn serve_site(root: &Path, t: Target, req: Request<Body>) -> Response<Body> {
    if !matches!(req.method(), &http::Method::GET | &http::Method::HEAD) {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let resolved = if t.path.is_empty() {
        Resolved::AddSlash
    } else {
        resolve(root, &t.path)
    };
    match resolved {
        Resolved::File(file) => serve_file(&file, req, StatusCode::OK).await,
        Resolved::AddSlash => {
            let query = req.uri().path_and_query().and_then(PathAndQuery::query);
            let to = match query {
                Some(q) => format!("{}{}/?{q}", t.prefix, t.path),
                None => format!("{}{}/", t.prefix, t.path),
            };
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = HeaderValue::from_str(&to) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
        Resolved::NotFound => {
            let page = root.join("404.html");
            if std::fs::symlink_metadata(&page).is_ok_and(|m| m.is_file()) {
                serve_file(&page, req, StatusCode::NOT_FOUND).await
            } else {
                plain(StatusCode::NOT_FOUND, "not found\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_site_by_host_then_prefix() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let t = target(&uri, Some("blog.localhost:8000"), "localhost").unwrap();
        assert_eq!((t.site.as_str(), t.path.as_str()), ("blog", "/a/b"));
        let t = target(&uri, Some("BLOG.Localhost."), "localhost").unwrap();
        assert_eq!(t.site, "blog");
        assert!(target(&uri, Some("a.b.localhost"), "localhost").is_none());
        assert!(target(&uri, Some("localhost"), "localhost").is_none());
        let uri: Uri = "/d/blog/x/y".parse().unwrap();
        let t = target(&uri, Some("127.0.0.1:8000"), "localhost").unwrap();
        assert_eq!(
            (t.site.as_str(), t.path.as_str(), t.prefix.as_str()),
            ("blog", "/x/y", "/d/blog")
        );
        let uri: Uri = "/d/blog".parse().unwrap();
        let t = target(&uri, None, "localhost").unwrap();
        assert_eq!(t.path, "");
    }
}

//! `/metrics` in Prometheus text format: the HTTP layer's own counters plus
//! whatever the node reports through [`Backend::metrics`].

use crate::{AppState, Backend};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by the HTTP layer.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Body bytes of site responses (before compression).
    pub site_bytes_served: AtomicU64,
    /// Site requests answered, by outcome.
    pub site_requests_ok: AtomicU64,
    pub site_requests_not_found: AtomicU64,
}

impl HttpMetrics {
    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP shoal_site_bytes_served_total Body bytes served on the sites port."
        );
        let _ = writeln!(out, "# TYPE shoal_site_bytes_served_total counter");
        let _ = writeln!(
            out,
            "shoal_site_bytes_served_total {}",
            self.site_bytes_served.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP shoal_site_requests_total Requests answered on the sites port."
        );
        let _ = writeln!(out, "# TYPE shoal_site_requests_total counter");
        let _ = writeln!(
            out,
            "shoal_site_requests_total{{outcome=\"ok\"}} {}",
            self.site_requests_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "shoal_site_requests_total{{outcome=\"not_found\"}} {}",
            self.site_requests_not_found.load(Ordering::Relaxed)
        );
        out
    }
}

pub async fn handler<B: Backend>(State(s): State<AppState<B>>) -> impl IntoResponse {
    let mut body = s.backend.metrics();
    body.push_str(&s.metrics.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

//! `GET /metrics`: the Prometheus text format of
//! [`postoffice_core::metrics::Metrics`], plus the directory's size read
//! at scrape time. With `[http] metrics_token` set, only a request with
//! `Authorization: Bearer <token>` gets it (401 otherwise).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::Web;
use crate::auth::tokens_match;

/// The media type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the request may read the metrics.
fn allowed(web: &Web, headers: &HeaderMap) -> bool {
    let token = &web.app().config.http.metrics_token;
    if token.is_empty() {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| tokens_match(t.trim(), token))
}

/// The `/metrics` handler.
pub async fn scrape(State(web): State<Web>, headers: HeaderMap) -> Response {
    if !allowed(&web, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"postoffice metrics\"",
            )],
            "a bearer token is required\n",
        )
            .into_response();
    }
    let app = web.app();
    let m = &app.metrics;
    let dir = app.directory.snapshot();
    m.domains.set([], dir.domains().count() as i64);
    let disabled = dir.users().filter(|u| u.disabled).count() as i64;
    m.users
        .set(["enabled"], dir.users().count() as i64 - disabled);
    m.users.set(["disabled"], disabled);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render()).into_response()
}

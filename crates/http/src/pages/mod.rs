//! The HTML pages: sign-in, the administrators' pages and the users'
//! pages. Each handler checks the session first (its extractor), then
//! calls the core or the queue on the blocking pool, then renders.

pub(crate) mod admin;
pub(crate) mod layout;
pub(crate) mod signin;
pub(crate) mod user;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::Web;
use crate::auth::{Role, session_of};
use crate::error::WebError;

/// `GET /`: the home of whoever is signed in, else the sign-in page.
pub(crate) async fn index(State(web): State<Web>, headers: HeaderMap) -> Response {
    match session_of(&web, &headers).map(|s| s.role) {
        Some(Role::Admin) => Redirect::to("/admin").into_response(),
        Some(Role::User) => Redirect::to("/me").into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

/// Any other path (JSON under `/api/`).
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        WebError::NotFound.json()
    } else {
        WebError::NotFound.page()
    }
}

/// The `?done=` of a page shown after an action.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Done {
    #[serde(default)]
    pub done: Option<String>,
}

/// A form with only the CSRF token (checked by the guard).
#[derive(Debug, Deserialize)]
pub(crate) struct Empty {}

/// 303 to `path` (after a POST).
pub(crate) fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// A path segment, percent-encoded (addresses may hold `+`, `&`...).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

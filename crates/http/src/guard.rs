//! What every request goes through before and after its handler.
//!
//! [`outer`]: a deadline for the whole request (`request_timeout_secs`,
//! 408), refusal of a state-changing request whose `Origin` is another
//! site (or `null`), the security headers on every response (a
//! Content-Security-Policy that allows no script, no framing, no sniffing,
//! no referrer to other sites, no caching of pages) and the response
//! counter of `/metrics`.
//!
//! [`csrf`]: a state-changing request (anything but GET/HEAD/OPTIONS)
//! carries the CSRF token of its session, in the form field `csrf` or the
//! header `X-CSRF-Token`; the sign-in form the token of its pre-session
//! cookie. A wrong or missing token is 403 before any handler runs. A
//! request without a session goes on to its handler, which refuses it
//! with 401 or a redirect to the sign-in page. Exempt: the autodiscover
//! endpoint (clients post XML to it; it changes nothing) and the JSON
//! sign-in `/api/login` (it takes only `application/json`, which no form
//! on another site can send without a CORS preflight this server never
//! answers).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Web;
use crate::auth::{PRE_COOKIE, cookie, session_of, tokens_match};
use crate::error::WebError;

/// The header that carries the CSRF token of API requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn error_for(path: &str, e: WebError) -> Response {
    if path.starts_with("/api/") {
        e.json()
    } else {
        e.page()
    }
}

/// The host part of an `Origin` or `Host` value, lower case, without the
/// scheme.
fn host_of(value: &str) -> String {
    let v = value
        .split_once("://")
        .map_or(value, |(_, rest)| rest)
        .trim_end_matches('/');
    v.to_ascii_lowercase()
}

/// Deadline, cross-site refusal, security headers, response counter.
pub async fn outer(State(web): State<Web>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !is_safe(req.method())
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("");
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if origin == "null" || host_of(origin) != host_of(host) {
            tracing::info!(origin = %postoffice_common::text::printable(origin, 100), %path, "cross-site request refused");
            return finish(&web, error_for(&path, WebError::CrossSite), &path);
        }
    }
    let limit = std::time::Duration::from_secs(web.app().config.http.request_timeout_secs);
    let response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error_for(&path, WebError::Timeout),
    };
    finish(&web, response, &path)
}

fn finish(web: &Web, mut response: Response, path: &str) -> Response {
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    web.app().metrics.http_responses.inc([class]);
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // "same-origin": a same-origin form post carries its Origin (with
    // "no-referrer" browsers send "Origin: null", which is refused).
    set(h, header::REFERRER_POLICY, "same-origin");
    if path != "/static/app.css" {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// Requests that change nothing a session owns, or carry their own
/// protection (see the module docs).
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/autodiscover/autodiscover.xml" | "/Autodiscover/Autodiscover.xml" | "/api/login"
    )
}

/// The CSRF check (see the module docs).
pub async fn csrf(State(web): State<Web>, req: Request, next: Next) -> Response {
    if is_safe(req.method()) || exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let expected = if path == "/login" {
        match cookie(req.headers(), PRE_COOKIE).and_then(|c| web.keys().pre_csrf(c)) {
            Some(t) => t,
            None => return error_for(&path, WebError::Csrf),
        }
    } else {
        match session_of(&web, req.headers()) {
            Some(s) => web.keys().csrf(&s),
            // No session: the route itself answers 401 or redirects.
            None => return next.run(req).await,
        }
    };
    if let Some(token) = req.headers().get(CSRF_HEADER) {
        let ok = token.to_str().is_ok_and(|t| tokens_match(t, &expected));
        return if ok {
            next.run(req).await
        } else {
            error_for(&path, WebError::Csrf)
        };
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return error_for(&path, WebError::Csrf);
    }
    // A form: read it (bounded) to find the token, then hand it on.
    let (parts, body) = req.into_parts();
    let limit = web.app().config.http.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return error_for(&path, WebError::TooLarge),
    };
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    if !token.is_some_and(|t| tokens_match(&t, &expected)) {
        return error_for(&path, WebError::Csrf);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_hosts() {
        assert_eq!(
            host_of("https://Mail.Example.test:8443"),
            "mail.example.test:8443"
        );
        assert_eq!(host_of("mail.example.test:8443"), "mail.example.test:8443");
        assert_ne!(host_of("https://evil.test"), host_of("mail.example.test"));
    }
}

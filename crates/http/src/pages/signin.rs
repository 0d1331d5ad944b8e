//! Sign-in and sign-out. One form for both kinds of account: a name with
//! an `@` is a mail user (the mail password, through the same throttle as
//! POP3), a name without is an administrator. A failure says the same
//! whatever went wrong.

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::layout::page;
use crate::auth::{
    PRE_COOKIE, Role, SESSION_COOKIE, clear_cookie, cookie, max_age, new_session, session_of,
    set_cookie,
};
use crate::{Client, Web};

fn form_page(web: &Web, headers: &HeaderMap, client: &Client, failed: bool) -> Response {
    // The pre-session cookie whose token protects the form.
    let existing = cookie(headers, PRE_COOKIE)
        .and_then(|c| web.keys().pre_csrf(c).map(|t| (c.to_string(), t)));
    let (pre, token, fresh) = match existing {
        Some((c, t)) => (c, t, false),
        None => {
            let c = web.keys().issue_pre();
            let t = web.keys().pre_csrf(&c).unwrap_or_default();
            (c, t, true)
        }
    };
    let body = html! {
        div.signin {
            h1 { "Sign in" }
            @if failed {
                p.error #signin-error { "Sign-in failed. Check the name and the password; after several failures, wait a few minutes." }
            }
            form.box method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                label for="name" { "Mail address, or administrator name" }
                input type="text" id="name" name="name" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input type="password" id="password" name="password" autocomplete="current-password" required;
                button type="submit" id="signin" { "Sign in" }
            }
            p.muted { "Mail users sign in with their mail address and mail password." }
        }
    };
    let status = if failed {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut r = (status, page("Sign in", None, body)).into_response();
    if fresh && let Ok(v) = set_cookie(PRE_COOKIE, &pre, 3600, client.secure).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `GET /login`.
pub(crate) async fn form(
    State(web): State<Web>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if let Some(s) = session_of(&web, &headers) {
        return super::see_other(match s.role {
            Role::Admin => "/admin",
            Role::User => "/me",
        });
    }
    form_page(&web, &headers, &client, false)
}

/// The sign-in form.
#[derive(Deserialize)]
pub(crate) struct SignIn {
    name: String,
    password: String,
}

/// Verify a sign-in through the core (throttled), counting it. The role
/// follows from the name: an address is a user.
pub(crate) async fn authenticate(
    web: &Web,
    client: &Client,
    name: &str,
    password: &str,
) -> Option<(Role, String)> {
    let app = web.app();
    let ip = client.peer.ip();
    let pw = password.as_bytes().to_vec();
    let result = if name.contains('@') {
        app.authenticate(name, pw, ip)
            .await
            .map(|n| (Role::User, n))
    } else {
        app.authenticate_admin(name, pw, ip)
            .await
            .map(|n| (Role::Admin, n))
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    app.metrics
        .logins
        .inc([postoffice_core::metrics::protocol::WEB, outcome]);
    result.ok()
}

/// `POST /login` (the guard has checked the form's CSRF token).
pub(crate) async fn submit(
    State(web): State<Web>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    let Some((role, name)) = authenticate(&web, &client, &f.name, &f.password).await else {
        return form_page(&web, &headers, &client, true);
    };
    let Some((value, session)) = new_session(&web, role, &name) else {
        return form_page(&web, &headers, &client, true);
    };
    tracing::info!(ip = %client.peer.ip(), user = %name, role = role.as_str(), "web sign-in");
    let mut r = super::see_other(match role {
        Role::Admin => "/admin",
        Role::User => "/me",
    });
    let h = r.headers_mut();
    for c in [
        set_cookie(SESSION_COOKIE, &value, max_age(&session), client.secure),
        clear_cookie(PRE_COOKIE, client.secure),
    ] {
        if let Ok(v) = c.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    r
}

/// `POST /logout`: the session ends here and now (its cookie is revoked,
/// not only removed from this browser).
pub(crate) async fn logout(
    State(web): State<Web>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if let Some(s) = session_of(&web, &headers) {
        web.keys().revoke(&s);
    }
    let mut r = super::see_other("/login");
    if let Ok(v) = clear_cookie(SESSION_COOKIE, client.secure).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

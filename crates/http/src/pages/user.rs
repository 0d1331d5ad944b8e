//! The users' page: what their mailbox holds against its quota, the
//! retention and login-delay policy, their quarantine (release or
//! delete), and a password change (the current password is checked
//! through the same throttle as every login).

use axum::extract::{Form, Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use postoffice_core::admin;
use serde::Deserialize;

use super::layout::{Viewer, bytes, date, meter, notice, page};
use super::{Done, Empty, see_other, seg};
use crate::auth::{Role, SESSION_COOKIE, UserSession, max_age, new_session, set_cookie};
use crate::error::{PageError, WebError};
use crate::{Web, blocking};

fn viewer(s: &UserSession) -> Viewer<'_> {
    Viewer {
        role: Role::User,
        name: &s.session.name,
        csrf: &s.csrf,
    }
}

fn csrf(s: &UserSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// `GET /me`.
pub(crate) async fn home(
    s: UserSession,
    State(web): State<Web>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let app = web.app().clone();
    let address = s.session.name.clone();
    let (info, quarantined) = blocking(move || {
        let info = admin::user_info(&app.config, &app.directory, &*app.store, &address)?;
        let q = admin::quarantine_list(&*app.store, &info.address)?;
        Ok::<_, admin::AdminError>((info, q))
    })
    .await?;
    let p = &info.policy;
    let body = html! {
        h1 { "My mailbox" }
        (notice(done.done.as_deref()))
        div.box {
            p { "Stored: " strong #usage-bytes { (bytes(info.usage.bytes)) } " in " strong #usage-messages { (info.usage.messages) } " message(s)" }
            p { "Quota: " span #quota-bytes { (p.quota_bytes.map_or("unlimited".to_string(), bytes)) }
                @if let Some(m) = p.quota_messages { " or " (m) " messages" } }
            (meter(info.usage.bytes, p.quota_bytes))
            p #retention { "Messages are kept on the server "
                (p.retention_days.map_or("until you delete them".to_string(), |d| if d == 0 { "until you download them".to_string() } else { format!("for {d} days") }))
                "." }
            p #login-delay { @if p.login_delay_secs > 0 { "Your mail program may check for mail every " (p.login_delay_secs) " seconds at most." } @else { "Your mail program may check for mail as often as it likes." } }
        }
        h2 { "Quarantine" }
        p.muted { "Messages the server held back as suspicious. Your mail program does not see them; release the ones you want." }
        @if quarantined.is_empty() {
            p.muted #quarantine-empty { "Nothing is quarantined." }
        } @else {
            table #quarantine {
                tr { th { "Received" } th { "From" } th { "Subject" } th { "Why" } th.num { "Size" } th {} }
                @for m in &quarantined {
                    @let base = format!("/me/quarantine/{}", seg(&m.uid));
                    tr {
                        td { (date(m.received)) }
                        td { (m.from) }
                        td { a href=(base) { @if m.subject.is_empty() { "(no subject)" } @else { (m.subject) } } }
                        td.reason { (m.reason) }
                        td.num { (bytes(m.size)) }
                        td {
                            form.inline method="post" action={ (base) "/release" } { (csrf(&s)) button type="submit" class="release" { "Release" } }
                            " "
                            form.inline method="post" action={ (base) "/delete" } { (csrf(&s)) button.danger type="submit" { "Delete" } }
                        }
                    }
                }
            }
        }
        h2 { "Password" }
        form.box method="post" action="/me/password" #password-form {
            (csrf(&s))
            label { "Current password " input type="password" name="current" id="current-password" autocomplete="current-password" required; }
            label { "New password " input type="password" name="new" id="new-password" autocomplete="new-password" required; }
            label { "Again " input type="password" name="confirm" id="confirm-password" autocomplete="new-password" required; }
            button type="submit" id="change-password" { "Change password" }
            p.muted { "Your mail program needs the new password too." }
        }
    };
    Ok(page("My mailbox", Some(&viewer(&s)), body))
}

/// The password form.
#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    current: String,
    new: String,
    confirm: String,
}

/// Change the signed-in user's password after checking the current one;
/// returns the new session cookie (the old one ended with the old
/// password).
pub(crate) async fn change_password(
    web: &Web,
    s: &UserSession,
    current: &str,
    new: &str,
) -> Result<String, WebError> {
    admin::check_password(new).map_err(|e| WebError::BadRequest(e.to_string()))?;
    let app = web.app().clone();
    let ip = s.client.peer.ip();
    if app
        .authenticate(&s.session.name, current.as_bytes().to_vec(), ip)
        .await
        .is_err()
    {
        return Err(WebError::BadRequest(
            "the current password is not right".into(),
        ));
    }
    let (address, new) = (s.session.name.clone(), new.to_string());
    let a = address.clone();
    blocking(move || admin::set_password(&app.directory, &a, &new)).await?;
    tracing::info!(user = %address, ip = %ip, "web: password changed by its user");
    let (value, session) = new_session(web, Role::User, &address)
        .ok_or_else(|| WebError::Internal("the user vanished".into()))?;
    Ok(set_cookie(
        SESSION_COOKIE,
        &value,
        max_age(&session),
        s.client.secure,
    ))
}

/// `POST /me/password`.
pub(crate) async fn password(
    s: UserSession,
    State(web): State<Web>,
    Form(f): Form<PasswordForm>,
) -> Result<Response, PageError> {
    if f.new != f.confirm {
        return Err(PageError(WebError::BadRequest(
            "the two new passwords differ".into(),
        )));
    }
    let cookie = change_password(&web, &s, &f.current, &f.new).await?;
    let mut r = see_other("/me?done=password-changed");
    if let Ok(v) = cookie.parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `GET /me/quarantine/{uid}`: the header of one of the user's
/// quarantined messages.
pub(crate) async fn quarantine_message(
    s: UserSession,
    State(web): State<Web>,
    Path(uid): Path<String>,
) -> Result<Html<String>, PageError> {
    let app = web.app().clone();
    let (a, u) = (s.session.name.clone(), uid.clone());
    let headers = blocking(move || admin::quarantine_headers(&*app.store, &a, &u)).await?;
    let base = format!("/me/quarantine/{}", seg(&uid));
    let body = html! {
        h1 { "Quarantined message" }
        div.box {
            form.inline method="post" action={ (base) "/release" } { (csrf(&s)) button type="submit" id="release" { "Release into my mailbox" } }
            " "
            form.inline method="post" action={ (base) "/delete" } { (csrf(&s)) button.danger type="submit" id="delete" { "Delete" } }
        }
        h2 { "Header" }
        pre.headers #headers { (headers) }
    };
    Ok(page("Quarantined message", Some(&viewer(&s)), body))
}

/// `POST /me/quarantine/{uid}/release`.
pub(crate) async fn quarantine_release(
    s: UserSession,
    State(web): State<Web>,
    Path(uid): Path<String>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    let address = s.session.name.clone();
    blocking(move || admin::quarantine_release(&*app.store, &address, &uid)).await?;
    Ok(see_other("/me?done=released"))
}

/// `POST /me/quarantine/{uid}/delete`.
pub(crate) async fn quarantine_delete(
    s: UserSession,
    State(web): State<Web>,
    Path(uid): Path<String>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    let address = s.session.name.clone();
    blocking(move || admin::quarantine_delete(&*app.store, &address, &uid)).await?;
    Ok(see_other("/me?done=deleted").into_response())
}

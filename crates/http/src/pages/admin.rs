//! The administrators' pages: dashboard, domains, users, queue,
//! quarantine and live sessions. Every action is a POST form (with the
//! CSRF token, checked by the guard) that redirects back with a fixed
//! `?done=` notice; errors are a page of their own with the core's
//! message.

use axum::extract::{Form, Path, Query, State};
use axum::response::{Html, Response};
use maud::{Markup, html};
use postoffice_core::admin::{self, PolicyChange, PolicyText};
use postoffice_directory::{PolicyOverrides, Retention};
use serde::Deserialize;

use super::layout::{Viewer, age, bytes, date, meter, notice, page, page_with, since, sparkline};
use super::{Done, Empty, see_other, seg};
use crate::auth::{AdminSession, Role};
use crate::error::PageError;
use crate::stats::{Sample, series};
use crate::{Web, blocking};

/// Most rows a list page shows.
const MAX_ROWS: usize = 500;

fn viewer(s: &AdminSession) -> Viewer<'_> {
    Viewer {
        role: Role::Admin,
        name: &s.session.name,
        csrf: &s.csrf,
    }
}

/// The hidden CSRF field of a form.
fn csrf(s: &AdminSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

fn card(id: &str, label: &str, value: String, chart: Option<Vec<i64>>) -> Markup {
    html! {
        div.card {
            div.label { (label) }
            div.value id=(id) { (value) }
            @if let Some(c) = chart { (sparkline(&c)) }
        }
    }
}

/// `GET /admin`: the numbers that matter, live (the page reloads itself
/// every 10 seconds), with the last hour as small charts.
pub(crate) async fn dashboard(s: AdminSession, State(web): State<Web>) -> Html<String> {
    let app = web.app();
    let now = Sample::now(&app.metrics);
    let history = web.stats().all();
    let rate = |f: fn(&Sample) -> i64| Some(series(&history, &now, f, true));
    let gauge = |f: fn(&Sample) -> i64| Some(series(&history, &now, f, false));
    let dir = app.directory.snapshot();
    let uptime = since(app.metrics.started());
    let body = html! {
        h1 { "Dashboard" }
        p.muted { "Live: this page reloads every 10 seconds. Charts: the last hour, one point per 10 seconds. "
            a href="/metrics" { "Prometheus metrics" } }
        div.cards {
            (card("stat-sessions", "Sessions open", now.sessions_open.to_string(), gauge(|s| s.sessions_open)))
            (card("stat-pop3", "POP3 sessions open", now.pop3_open.to_string(), gauge(|s| s.pop3_open)))
            (card("stat-smtp", "SMTP sessions open", now.smtp_open.to_string(), gauge(|s| s.smtp_open)))
            (card("stat-delivered", "Messages received", now.delivered.to_string(), rate(|s| s.delivered)))
            (card("stat-submitted", "Messages sent by users", now.submitted.to_string(), rate(|s| s.submitted)))
            (card("stat-quarantined", "Quarantined", now.quarantined.to_string(), rate(|s| s.quarantined)))
            (card("stat-rejected", "Rejected after DATA", now.rejected.to_string(), rate(|s| s.rejected)))
            (card("stat-retrieved", "Retrieved (POP3)", now.retrieved.to_string(), rate(|s| s.retrieved)))
            (card("stat-deleted", "Deleted (POP3)", now.deleted.to_string(), rate(|s| s.deleted)))
            (card("stat-logins", "Logins", now.logins_ok.to_string(), rate(|s| s.logins_ok)))
            (card("stat-login-failures", "Failed logins", now.logins_failed.to_string(), rate(|s| s.logins_failed)))
            (card("stat-queue", "Outbound queue", now.queue_entries.to_string(), gauge(|s| s.queue_entries)))
            (card("stat-queue-pending", "Recipients waiting", now.queue_pending.to_string(), gauge(|s| s.queue_pending)))
            (card("stat-users", "Users", dir.users().count().to_string(), None))
            (card("stat-domains", "Domains", dir.domains().count().to_string(), None))
            (card("stat-uptime", "Up for", age(uptime), None))
        }
    };
    page_with("Dashboard", Some(&viewer(&s)), Some(10), body)
}

/// `GET /admin/sessions`.
pub(crate) async fn sessions(s: AdminSession, State(web): State<Web>) -> Html<String> {
    let list = web.app().sessions.list();
    let body = html! {
        h1 { "Live sessions" }
        p.muted { (list.len()) " connection(s) now." }
        table #sessions {
            tr { th { "Protocol" } th { "Client" } th { "User" } th { "TLS" } th.num { "For" } }
            @for x in &list {
                tr {
                    td { (x.protocol) }
                    td { (x.peer) }
                    td { (x.user.as_deref().unwrap_or("—")) }
                    td { @if x.tls { "yes" } @else { "no" } }
                    td.num { (age(since(x.started))) }
                }
            }
        }
    };
    page("Sessions", Some(&viewer(&s)), body)
}

fn show_retention(r: Option<Retention>) -> String {
    match r {
        None => String::new(),
        Some(Retention::Never) => "never".into(),
        Some(Retention::Days(d)) => d.to_string(),
    }
}

fn show<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The four policy fields of a form, holding the stored overrides
/// (blank: inherit).
fn policy_fields(p: &PolicyOverrides) -> Markup {
    html! {
        label { "Retention days " input type="text" name="retention_days" size="6" placeholder="inherit" value=(show_retention(p.retention_days)); }
        label { "Login delay (s) " input type="text" name="login_delay" size="6" placeholder="inherit" value=(show(p.login_delay_secs)); }
        label { "Quota (bytes) " input type="text" name="quota_bytes" size="12" placeholder="inherit" value=(show(p.quota_bytes)); }
        label { "Quota (messages) " input type="text" name="quota_messages" size="8" placeholder="inherit" value=(show(p.quota_messages)); }
    }
}

/// The policy fields as a form posts them. A blank field means inherit:
/// a form always shows (and sends) the whole policy.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PolicyForm {
    #[serde(default)]
    retention_days: String,
    #[serde(default)]
    login_delay: String,
    #[serde(default)]
    quota_bytes: String,
    #[serde(default)]
    quota_messages: String,
    /// Users only: "enabled" or "disabled".
    #[serde(default)]
    state: Option<String>,
    /// Users only: their own sending limits (blank: inherit).
    #[serde(default)]
    max_messages_per_hour: Option<String>,
    #[serde(default)]
    max_recipients_per_day: Option<String>,
}

impl PolicyForm {
    /// The user's sending limits; a field the form did not send is kept.
    fn send_limits(&self) -> Result<admin::SendLimitChange, PageError> {
        fn blank_inherits(v: &Option<String>) -> Option<&str> {
            v.as_deref()
                .map(|v| if v.trim().is_empty() { "inherit" } else { v })
        }
        Ok(admin::SendLimitChange::parse(
            blank_inherits(&self.max_messages_per_hour),
            blank_inherits(&self.max_recipients_per_day),
        )?)
    }

    fn change(&self) -> Result<PolicyChange, PageError> {
        fn or_inherit(s: &str) -> &str {
            if s.trim().is_empty() { "inherit" } else { s }
        }
        Ok(PolicyChange::parse(&PolicyText {
            retention_days: Some(or_inherit(&self.retention_days)),
            login_delay: Some(or_inherit(&self.login_delay)),
            quota_bytes: Some(or_inherit(&self.quota_bytes)),
            quota_messages: Some(or_inherit(&self.quota_messages)),
        })?)
    }
}

/// `GET /admin/domains`.
pub(crate) async fn domains(
    s: AdminSession,
    State(web): State<Web>,
    Query(done): Query<Done>,
) -> Html<String> {
    let list = admin::domains(&web.app().directory);
    let body = html! {
        h1 { "Domains" }
        (notice(done.done.as_deref()))
        form.box method="post" action="/admin/domains" {
            (csrf(&s))
            label { "New domain " input type="text" name="name" id="new-domain" required placeholder="example.org"; }
            button type="submit" id="add-domain" { "Add domain" }
        }
        p.muted { "A domain's policy overrides the configuration's [policy]; its users may override it. Blank: inherit." }
        table #domains {
            tr { th { "Domain" } th.num { "Users" } th { "Policy" } th {} }
            @for d in &list {
                tr {
                    td { a href={ "/admin/users?q=%40" (seg(&d.name)) } { (d.name) } }
                    td.num { (d.users) }
                    td {
                        form.inline method="post" action={ "/admin/domains/" (seg(&d.name)) "/policy" } {
                            (csrf(&s))
                            (policy_fields(&d.policy))
                            button.quiet type="submit" { "Save" }
                        }
                    }
                    td {
                        form.inline method="post" action={ "/admin/domains/" (seg(&d.name)) "/delete" } {
                            (csrf(&s))
                            button.danger type="submit" disabled[d.users > 0] title="a domain must have no users to be removed" { "Remove" }
                        }
                    }
                }
            }
        }
    };
    page("Domains", Some(&viewer(&s)), body)
}

/// The add-domain form.
#[derive(Deserialize)]
pub(crate) struct NameForm {
    name: String,
}

/// `POST /admin/domains`.
pub(crate) async fn add_domain(
    _s: AdminSession,
    State(web): State<Web>,
    Form(f): Form<NameForm>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    blocking(move || admin::add_domain(&app.directory, f.name.trim())).await?;
    Ok(see_other("/admin/domains?done=domain-added"))
}

/// `POST /admin/domains/{name}/delete`.
pub(crate) async fn remove_domain(
    _s: AdminSession,
    State(web): State<Web>,
    Path(name): Path<String>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    blocking(move || admin::remove_domain(&app.directory, &name)).await?;
    Ok(see_other("/admin/domains?done=domain-removed"))
}

/// `POST /admin/domains/{name}/policy`.
pub(crate) async fn domain_policy(
    _s: AdminSession,
    State(web): State<Web>,
    Path(name): Path<String>,
    Form(f): Form<PolicyForm>,
) -> Result<Response, PageError> {
    let change = f.change()?;
    let app = web.app().clone();
    blocking(move || admin::set_domain(&app.directory, &name, &change)).await?;
    Ok(see_other("/admin/domains?done=domain-updated"))
}

/// The users page's query.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsersQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

/// `GET /admin/users`.
pub(crate) async fn users(
    s: AdminSession,
    State(web): State<Web>,
    Query(query): Query<UsersQuery>,
) -> Html<String> {
    let app = web.app();
    let snap = app.directory.snapshot();
    let q = query.q.as_deref().unwrap_or("").trim().to_ascii_lowercase();
    let matching: Vec<_> = snap
        .users()
        .filter(|u| q.is_empty() || u.address.contains(&q))
        .collect();
    let defaults = app.policy_defaults();
    let body = html! {
        h1 { "Users" }
        (notice(query.done.as_deref()))
        form.box method="post" action="/admin/users" {
            (csrf(&s))
            label { "Address " input type="email" name="address" id="new-address" required placeholder="alice@example.org"; }
            label { "Password " input type="password" name="password" id="new-password" autocomplete="new-password" placeholder="blank: generate one"; }
            button type="submit" id="add-user" { "Add user" }
            p.muted { "The domain is added too if it is new." }
        }
        form method="get" action="/admin/users" {
            label { "Find " input type="text" name="q" value=(q) placeholder="part of an address"; }
            button.quiet type="submit" { "Search" }
        }
        p.muted { (matching.len()) " user(s)" @if matching.len() > MAX_ROWS { ", the first " (MAX_ROWS) " shown" } "." }
        table #users {
            tr { th { "Address" } th { "State" } th { "Retention" } th.num { "Quota" } th.num { "Login delay" } }
            @for u in matching.iter().take(MAX_ROWS) {
                @let p = snap.effective(&u.address, &defaults);
                tr {
                    td { a href={ "/admin/users/" (seg(&u.address)) } { (u.address) } }
                    td { @if u.disabled { "disabled" } @else { "active" } }
                    td { (p.retention_days.map_or("never".to_string(), |d| format!("{d} days"))) }
                    td.num { (p.quota_bytes.map_or("unlimited".to_string(), bytes)) }
                    td.num { (p.login_delay_secs) " s" }
                }
            }
        }
    };
    page("Users", Some(&viewer(&s)), body)
}

/// The add-user form.
#[derive(Deserialize)]
pub(crate) struct AddUserForm {
    address: String,
    #[serde(default)]
    password: String,
}

/// `POST /admin/users`. With a blank password one is generated and shown
/// once, on the page this returns.
pub(crate) async fn add_user(
    s: AdminSession,
    State(web): State<Web>,
    Form(f): Form<AddUserForm>,
) -> Result<Response, PageError> {
    let generated = f.password.is_empty().then(admin::generate_password);
    let password = generated.clone().unwrap_or(f.password);
    let app = web.app().clone();
    let address = f.address.trim().to_string();
    let added = blocking(move || admin::add_user(&app.directory, &address, &password)).await?;
    tracing::info!(admin = %s.session.name, user = %added.address, "web: user added");
    let link = format!("/admin/users/{}", seg(&added.address));
    let Some(pw) = generated else {
        return Ok(see_other(&format!("{link}?done=user-updated")));
    };
    let body = html! {
        h1 { "User added" }
        p.notice #notice {
            (added.address) " was added"
            @if let Some(d) = &added.domain_added { ", with the new domain " (d) }
            "."
        }
        p { "Its password (shown only now): " code #generated-password { (pw) } }
        p { a href=(link) { "Go to the user" } }
    };
    Ok(axum::response::IntoResponse::into_response(page(
        "User added",
        Some(&viewer(&s)),
        body,
    )))
}

/// `GET /admin/users/{address}`.
pub(crate) async fn user(
    s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let app = web.app().clone();
    let a = address.clone();
    let (info, quarantined) = blocking(move || {
        let info = admin::user_info(&app.config, &app.directory, &*app.store, &a)?;
        let q = admin::quarantine_list(&*app.store, &info.address)?;
        Ok::<_, admin::AdminError>((info, q))
    })
    .await?;
    let p = &info.policy;
    let base = format!("/admin/users/{}", seg(&info.address));
    let body = html! {
        h1 { (info.address) }
        (notice(done.done.as_deref()))
        div.box {
            p { "State: " strong #user-state { @if info.disabled { "disabled (logins refused)" } @else { "active" } } }
            p { "Stored: " span #usage-bytes { (bytes(info.usage.bytes)) } " in " span #usage-messages { (info.usage.messages) } " message(s)"
                " of " (p.quota_bytes.map_or("unlimited".to_string(), bytes))
                @if let Some(m) = p.quota_messages { " / " (m) " messages" } }
            (meter(info.usage.bytes, p.quota_bytes))
            p { "Retention: " (p.retention_days.map_or("never".to_string(), |d| format!("{d} days")))
                " · Login delay: " (p.login_delay_secs) " s"
                " · Quarantined: " (info.quarantined) }
            p #send-limits { "Sending limits: "
                (if info.send_limits.0 == 0 { "unlimited".to_string() } else { info.send_limits.0.to_string() }) " messages/hour · "
                (if info.send_limits.1 == 0 { "unlimited".to_string() } else { info.send_limits.1.to_string() }) " recipients/day" }
            p.muted { "Mailbox: " (info.mailbox) }
            @if !info.address_rules.is_empty() {
                p { "Also receives:" }
                ul #address-rules { @for r in &info.address_rules { li { (r) } } }
            }
        }
        h2 { "Policy" }
        form.box method="post" action={ (base) "/policy" } #user-policy {
            (csrf(&s))
            (policy_fields(&info.overrides))
            label { "Messages/hour " input type="text" name="max_messages_per_hour" size="6" placeholder="inherit" value=(show(info.send_limit_overrides.max_messages_per_hour)); }
            label { "Recipients/day " input type="text" name="max_recipients_per_day" size="6" placeholder="inherit" value=(show(info.send_limit_overrides.max_recipients_per_day)); }
            label { "Logins "
                select name="state" id="user-state-select" {
                    option value="enabled" selected[!info.disabled] { "enabled" }
                    option value="disabled" selected[info.disabled] { "disabled" }
                }
            }
            button type="submit" id="save-policy" { "Save" }
            p.muted { "Blank fields inherit from the domain, then from the configuration." }
        }
        h2 { "Password" }
        form.box method="post" action={ (base) "/password" } {
            (csrf(&s))
            label { "New password " input type="password" name="password" id="user-password" autocomplete="new-password" required; }
            button type="submit" id="set-password" { "Set password" }
        }
        h2 { "Quarantine" }
        (quarantine_table(&s, &quarantined, false))
        h2 { "Remove" }
        form.box method="post" action={ (base) "/delete" } {
            (csrf(&s))
            label { input type="checkbox" name="purge" value="yes"; " also delete the stored mail" }
            button.danger type="submit" id="remove-user" { "Remove user" }
        }
    };
    Ok(page(&info.address, Some(&viewer(&s)), body))
}

/// The set-password form.
#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    password: String,
}

/// `POST /admin/users/{address}/password`.
pub(crate) async fn user_password(
    s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
    Form(f): Form<PasswordForm>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    let address =
        blocking(move || admin::set_password(&app.directory, &address, &f.password)).await?;
    tracing::info!(admin = %s.session.name, user = %address, "web: password set");
    Ok(see_other(&format!(
        "/admin/users/{}?done=password-changed",
        seg(&address)
    )))
}

/// `POST /admin/users/{address}/policy`.
pub(crate) async fn user_policy(
    s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
    Form(f): Form<PolicyForm>,
) -> Result<Response, PageError> {
    let change = f.change()?;
    let limits = f.send_limits()?;
    let disabled = match f.state.as_deref() {
        None => None,
        Some("enabled") => Some(false),
        Some("disabled") => Some(true),
        Some(_) => {
            return Err(PageError(crate::WebError::BadRequest(
                "state must be enabled or disabled".into(),
            )));
        }
    };
    let app = web.app().clone();
    let address = blocking(move || {
        let address = admin::set_user(&app.directory, &address, &change, disabled)?;
        if limits.is_empty() {
            return Ok(address);
        }
        admin::set_user_send_limits(&app.directory, &address, &limits)
    })
    .await?;
    tracing::info!(admin = %s.session.name, user = %address, "web: user policy saved");
    Ok(see_other(&format!(
        "/admin/users/{}?done=user-updated",
        seg(&address)
    )))
}

/// The remove-user form.
#[derive(Deserialize)]
pub(crate) struct RemoveForm {
    #[serde(default)]
    purge: Option<String>,
}

/// `POST /admin/users/{address}/delete`.
pub(crate) async fn remove_user(
    s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
    Form(f): Form<RemoveForm>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    let purge = f.purge.is_some();
    let removed =
        blocking(move || admin::remove_user(&app.directory, &*app.store, &address, purge)).await?;
    tracing::info!(admin = %s.session.name, user = %removed.address, purge, "web: user removed");
    Ok(see_other("/admin/users?done=user-removed"))
}

/// `GET /admin/queue`.
pub(crate) async fn queue(
    s: AdminSession,
    State(web): State<Web>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let queue = web.queue().clone();
    let list = blocking(move || queue.list()).await?;
    let now = crate::auth::unix_now();
    let body = html! {
        h1 { "Outbound queue" }
        (notice(done.done.as_deref()))
        form.box method="post" action="/admin/queue/flush" {
            (csrf(&s))
            span { (list.len()) " message(s) waiting. " }
            button type="submit" id="flush" { "Try everything now" }
        }
        table #queue {
            tr { th { "ID" } th { "Sender" } th.num { "Size" } th.num { "Age" } th { "Recipients" } th { "Next attempt" } th { "Last error" } }
            @for e in list.iter().take(MAX_ROWS) {
                tr {
                    td { a href={ "/admin/queue/" (seg(&e.id)) } { (e.id) } @if e.held.is_some() { " (held)" } }
                    td { "<" (e.mail_from) ">" }
                    td.num { (bytes(e.size)) }
                    td.num { (age(e.age_secs)) }
                    td { @for r in &e.rcpts { (r.address) " (" (r.state) ")" br; } }
                    td { (e.next_attempt.map_or("—".to_string(), |t| if t <= now { "now".into() } else { format!("in {}", age(t - now)) })) }
                    td { (e.last_error.as_deref().unwrap_or("")) }
                }
            }
        }
    };
    Ok(page("Queue", Some(&viewer(&s)), body))
}

/// `GET /admin/queue/{id}`.
pub(crate) async fn queue_entry(
    s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let queue = web.queue().clone();
    let d = blocking(move || queue.show(&id)).await?;
    let e = &d.summary;
    let now = crate::auth::unix_now();
    let base = format!("/admin/queue/{}", seg(&e.id));
    let body = html! {
        h1 { "Queue entry " (e.id) }
        div.box {
            p { "Sender: <" (e.mail_from) ">" }
            p { "Size: " (bytes(e.size)) " · Arrived " (age(e.age_secs)) " ago · Delay warning sent: " @if e.delay_warned { "yes" } @else { "no" } }
            @if let Some(reason) = &e.held {
                p #held { "Held, not sent until released: " (reason) }
            }
        }
        table {
            tr { th { "Recipient" } th { "State" } th.num { "Attempts" } th { "Next attempt" } th { "Last reply" } th { "Remote" } }
            @for r in &e.rcpts {
                tr {
                    td { (r.address) }
                    td { (r.state) }
                    td.num { (r.attempts) }
                    td { @if r.next_attempt <= now { "now" } @else { "in " (age(r.next_attempt - now)) } }
                    td { (r.last_error) }
                    td { (r.remote_mta) }
                }
            }
        }
        div.box {
            @if e.held.is_some() {
                form.inline method="post" action={ (base) "/release" } { (csrf(&s)) button type="submit" id="release" { "Release (send it)" } }
                " "
            }
            form.inline method="post" action={ (base) "/retry" } { (csrf(&s)) button type="submit" id="retry" { "Try again now" } }
            " "
            form.inline method="post" action={ (base) "/delete" } { (csrf(&s)) button.danger type="submit" id="delete" { "Delete (no bounce)" } }
        }
        h2 { "Headers" }
        pre.headers { (d.headers) }
    };
    Ok(page("Queue entry", Some(&viewer(&s)), body))
}

/// `POST /admin/queue/{id}/retry`.
pub(crate) async fn queue_retry(
    _s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let queue = web.queue().clone();
    blocking(move || queue.retry(&id)).await?;
    Ok(see_other("/admin/queue?done=queue-retried"))
}

/// `POST /admin/queue/{id}/release`.
pub(crate) async fn queue_release(
    s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let queue = web.queue().clone();
    let i = id.clone();
    blocking(move || queue.release(&i)).await?;
    tracing::info!(admin = %s.session.name, id = %id, "web: held queue entry released");
    Ok(see_other("/admin/queue?done=queue-released"))
}

/// `POST /admin/queue/{id}/delete`.
pub(crate) async fn queue_delete(
    s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let queue = web.queue().clone();
    let i = id.clone();
    blocking(move || queue.delete(&i)).await?;
    tracing::info!(admin = %s.session.name, id = %id, "web: queue entry deleted");
    Ok(see_other("/admin/queue?done=queue-deleted"))
}

/// `POST /admin/queue/flush`.
pub(crate) async fn queue_flush(
    _s: AdminSession,
    State(web): State<Web>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let queue = web.queue().clone();
    blocking(move || queue.flush()).await?;
    Ok(see_other("/admin/queue?done=queue-flushed"))
}

/// A table of quarantined messages with their buttons; `with_user`: a
/// column for the user (the page of every quarantine).
pub(crate) fn quarantine_table(
    s: &AdminSession,
    list: &[admin::Quarantined],
    with_user: bool,
) -> Markup {
    if list.is_empty() {
        return html! { p.muted #quarantine-empty { "Nothing is quarantined." } };
    }
    html! {
        table #quarantine {
            tr {
                @if with_user { th { "User" } }
                th { "Received" } th { "From" } th { "Subject" } th { "Verdict" } th.num { "Size" } th {}
            }
            @for m in list {
                @let base = format!("/admin/quarantine/{}/{}", seg(&m.address), seg(&m.uid));
                tr {
                    @if with_user { td { a href={ "/admin/users/" (seg(&m.address)) } { (m.address) } } }
                    td { (date(m.received)) }
                    td { (m.from) }
                    td { a href=(base) { @if m.subject.is_empty() { "(no subject)" } @else { (m.subject) } } }
                    td { (m.verdict) }
                    td.num { (bytes(m.size)) }
                    td {
                        form.inline method="post" action={ (base) "/release" } { (csrf(s)) button type="submit" class="release" { "Release" } }
                        " "
                        form.inline method="post" action={ (base) "/delete" } { (csrf(s)) button.danger type="submit" { "Delete" } }
                    }
                }
            }
        }
    }
}

/// `GET /admin/quarantine`: every user's quarantine.
pub(crate) async fn quarantine(
    s: AdminSession,
    State(web): State<Web>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let app = web.app().clone();
    let (list, total) =
        blocking(move || admin::quarantine_all(&app.directory, &*app.store, MAX_ROWS)).await?;
    let body = html! {
        h1 { "Quarantine" }
        (notice(done.done.as_deref()))
        p.muted { (total) " message(s) held by the verification pipeline; POP3 does not show them until they are released."
            @if total > list.len() { " The oldest " (list.len()) " are shown." } }
        (quarantine_table(&s, &list, true))
    };
    Ok(page("Quarantine", Some(&viewer(&s)), body))
}

/// `GET /admin/quarantine/{address}/{uid}`: its header.
pub(crate) async fn quarantine_message(
    s: AdminSession,
    State(web): State<Web>,
    Path((address, uid)): Path<(String, String)>,
) -> Result<Html<String>, PageError> {
    let app = web.app().clone();
    let (a, u) = (address.clone(), uid.clone());
    let headers = blocking(move || admin::quarantine_headers(&*app.store, &a, &u)).await?;
    let base = format!("/admin/quarantine/{}/{}", seg(&address), seg(&uid));
    let body = html! {
        h1 { "Quarantined message" }
        p { "For " (address) " · " (uid) }
        div.box {
            form.inline method="post" action={ (base) "/release" } { (csrf(&s)) button type="submit" id="release" { "Release into the mailbox" } }
            " "
            form.inline method="post" action={ (base) "/delete" } { (csrf(&s)) button.danger type="submit" id="delete" { "Delete" } }
        }
        h2 { "Header" }
        pre.headers #headers { (headers) }
    };
    Ok(page("Quarantined message", Some(&viewer(&s)), body))
}

/// `POST /admin/quarantine/{address}/{uid}/release`.
pub(crate) async fn quarantine_release(
    s: AdminSession,
    State(web): State<Web>,
    Path((address, uid)): Path<(String, String)>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    let u = uid.clone();
    let address = blocking(move || admin::quarantine_release(&*app.store, &address, &u)).await?;
    tracing::info!(admin = %s.session.name, user = %address, uid = %uid, "web: quarantined message released");
    Ok(see_other("/admin/quarantine?done=released"))
}

/// `POST /admin/quarantine/{address}/{uid}/delete`.
pub(crate) async fn quarantine_delete(
    s: AdminSession,
    State(web): State<Web>,
    Path((address, uid)): Path<(String, String)>,
    Form(_f): Form<Empty>,
) -> Result<Response, PageError> {
    let app = web.app().clone();
    let u = uid.clone();
    let address = blocking(move || admin::quarantine_delete(&*app.store, &address, &u)).await?;
    tracing::info!(admin = %s.session.name, user = %address, uid = %uid, "web: quarantined message deleted");
    Ok(see_other("/admin/quarantine?done=deleted"))
}

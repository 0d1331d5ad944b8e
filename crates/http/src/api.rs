//! The JSON API under `/api/`: what the pages do, for scripts. The same
//! sessions and the same authorization as the pages: sign in with
//! `POST /api/login` (`{"name": ..., "password": ...}`), keep the
//! `po_session` cookie it sets, and send the `csrf` it returns in the
//! `X-CSRF-Token` header of every POST and DELETE. No session is 401; a
//! user's session on an administrator's route is 403; a wrong token 403.
//! Errors are `{"error": "..."}` with a 4xx or 5xx status. The README's
//! "Web interface and API" section lists every route.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use postoffice_core::admin::{self, PolicyChange, PolicyText};
use postoffice_directory::{PolicyOverrides, Retention};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{
    AdminSession, SESSION_COOKIE, UserSession, clear_cookie, max_age, new_session, session_of,
    set_cookie,
};
use crate::error::{ApiError, WebError};
use crate::stats::Sample;
use crate::{Client, Web, blocking};

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

/// The sign-in body.
#[derive(Debug, Deserialize)]
pub struct LoginBody {
    /// An administrator's name or a user's address.
    pub name: String,
    /// The password.
    pub password: String,
}

/// `POST /api/login`: `{"role", "name", "csrf"}` and the session cookie;
/// 401 `{"error": "sign-in failed"}` for any failure.
pub async fn login(
    State(web): State<Web>,
    Extension(client): Extension<Client>,
    Json(body): Json<LoginBody>,
) -> ApiResult {
    let Some((role, name)) =
        crate::pages::signin::authenticate(&web, &client, &body.name, &body.password).await
    else {
        return Err(WebError::SignInFailed.into());
    };
    let (value, session) =
        new_session(&web, role, &name).ok_or(ApiError(WebError::SignInFailed))?;
    let csrf = web.keys().csrf(&session);
    let mut r = Json(
        json!({ "role": role.as_str(), "name": name, "csrf": csrf, "expires": session.expires }),
    )
    .into_response();
    if let Ok(v) = set_cookie(SESSION_COOKIE, &value, max_age(&session), client.secure).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `POST /api/logout`.
pub async fn logout(
    State(web): State<Web>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> ApiResult {
    if let Some(s) = session_of(&web, &headers) {
        web.keys().revoke(&s);
    }
    let mut r = Json(json!({ "signed_out": true })).into_response();
    if let Ok(v) = clear_cookie(SESSION_COOKIE, client.secure).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `GET /api/session`: who is signed in, and the CSRF token.
pub async fn session(State(web): State<Web>, headers: HeaderMap) -> ApiResult {
    let s = session_of(&web, &headers).ok_or(ApiError(WebError::Unauthenticated))?;
    ok(json!({
        "role": s.role.as_str(),
        "name": s.name,
        "csrf": web.keys().csrf(&s),
        "expires": s.expires,
    }))
}

/// `GET /api/admin/stats`: the dashboard's numbers and their last hour.
pub async fn stats(_s: AdminSession, State(web): State<Web>) -> ApiResult {
    let app = web.app();
    let dir = app.directory.snapshot();
    ok(json!({
        "now": Sample::now(&app.metrics),
        "history": web.stats().all(),
        "users": dir.users().count(),
        "domains": dir.domains().count(),
        "uptime_secs": app.metrics.started().elapsed().map_or(0, |d| d.as_secs()),
    }))
}

/// `GET /api/admin/sessions`.
pub async fn sessions(_s: AdminSession, State(web): State<Web>) -> ApiResult {
    let list: Vec<Value> = web
        .app()
        .sessions
        .list()
        .into_iter()
        .map(|x| {
            json!({
                "id": x.id,
                "protocol": x.protocol,
                "peer": x.peer.to_string(),
                "user": x.user,
                "tls": x.tls,
                "secs": x.started.elapsed().map_or(0, |d| d.as_secs()),
            })
        })
        .collect();
    ok(json!({ "sessions": list }))
}

fn retention_json(r: Option<Retention>) -> Value {
    match r {
        None => Value::Null,
        Some(Retention::Never) => json!("never"),
        Some(Retention::Days(d)) => json!(d),
    }
}

fn overrides_json(p: &PolicyOverrides) -> Value {
    json!({
        "retention_days": retention_json(p.retention_days),
        "login_delay_secs": p.login_delay_secs,
        "quota_bytes": p.quota_bytes,
        "quota_messages": p.quota_messages,
    })
}

/// A policy change: each field absent (keep), `null` or `"inherit"`
/// (inherit), a number, or for the retention `"never"`; users also
/// `disabled`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    #[serde(default, with = "keep_or_value")]
    retention_days: Option<Value>,
    #[serde(default, with = "keep_or_value")]
    login_delay_secs: Option<Value>,
    #[serde(default, with = "keep_or_value")]
    quota_bytes: Option<Value>,
    #[serde(default, with = "keep_or_value")]
    quota_messages: Option<Value>,
    #[serde(default)]
    disabled: Option<bool>,
    /// Users only: their own sending limits (a number, 0 = none, or
    /// `null`/`"inherit"`).
    #[serde(default, with = "keep_or_value")]
    max_messages_per_hour: Option<Value>,
    #[serde(default, with = "keep_or_value")]
    max_recipients_per_day: Option<Value>,
}

/// Absent is `None` (keep), present (even `null`) is `Some`.
mod keep_or_value {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Value::deserialize(d).map(Some)
    }
}

fn text_of(v: &Option<Value>) -> Result<Option<String>, WebError> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some("inherit".into())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(WebError::BadRequest(format!(
            "policy values are numbers, \"never\", \"inherit\" or null, not {other}"
        ))),
    }
}

impl PolicyBody {
    fn send_limits(&self) -> Result<admin::SendLimitChange, WebError> {
        let (h, d) = (
            text_of(&self.max_messages_per_hour)?,
            text_of(&self.max_recipients_per_day)?,
        );
        Ok(admin::SendLimitChange::parse(h.as_deref(), d.as_deref())?)
    }

    fn change(&self) -> Result<PolicyChange, WebError> {
        let (r, l, qb, qm) = (
            text_of(&self.retention_days)?,
            text_of(&self.login_delay_secs)?,
            text_of(&self.quota_bytes)?,
            text_of(&self.quota_messages)?,
        );
        Ok(PolicyChange::parse(&PolicyText {
            retention_days: r.as_deref(),
            login_delay: l.as_deref(),
            quota_bytes: qb.as_deref(),
            quota_messages: qm.as_deref(),
        })?)
    }
}

/// `GET /api/admin/domains`.
pub async fn domains(_s: AdminSession, State(web): State<Web>) -> ApiResult {
    let list: Vec<Value> = admin::domains(&web.app().directory)
        .into_iter()
        .map(|d| json!({ "name": d.name, "users": d.users, "policy": overrides_json(&d.policy) }))
        .collect();
    ok(json!({ "domains": list }))
}

/// `{"name": ...}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// A domain name.
    pub name: String,
}

/// `POST /api/admin/domains`.
pub async fn add_domain(
    s: AdminSession,
    State(web): State<Web>,
    Json(b): Json<NameBody>,
) -> ApiResult {
    let app = web.app().clone();
    let name = blocking(move || admin::add_domain(&app.directory, &b.name)).await?;
    tracing::info!(admin = %s.session.name, domain = %name, "api: domain added");
    ok(json!({ "name": name }))
}

/// `DELETE /api/admin/domains/{name}`.
pub async fn remove_domain(
    s: AdminSession,
    State(web): State<Web>,
    Path(name): Path<String>,
) -> ApiResult {
    let app = web.app().clone();
    let name = blocking(move || admin::remove_domain(&app.directory, &name)).await?;
    tracing::info!(admin = %s.session.name, domain = %name, "api: domain removed");
    ok(json!({ "removed": name }))
}

/// `POST /api/admin/domains/{name}/policy`.
pub async fn domain_policy(
    _s: AdminSession,
    State(web): State<Web>,
    Path(name): Path<String>,
    Json(b): Json<PolicyBody>,
) -> ApiResult {
    if b.disabled.is_some() {
        return Err(WebError::BadRequest("a domain cannot be disabled".into()).into());
    }
    if !b.send_limits()?.is_empty() {
        return Err(WebError::BadRequest("sending limits are set per user".into()).into());
    }
    let change = b.change()?;
    let app = web.app().clone();
    let name = blocking(move || admin::set_domain(&app.directory, &name, &change)).await?;
    let snap = web.app().directory.snapshot();
    let policy = snap.domain(&name).map(|d| overrides_json(&d.policy));
    ok(json!({ "name": name, "policy": policy }))
}

/// The users list's query.
#[derive(Debug, Default, Deserialize)]
pub struct UsersQuery {
    /// Only addresses containing this.
    #[serde(default)]
    pub q: Option<String>,
}

/// `GET /api/admin/users`.
pub async fn users(
    _s: AdminSession,
    State(web): State<Web>,
    Query(q): Query<UsersQuery>,
) -> ApiResult {
    let snap = web.app().directory.snapshot();
    let q = q.q.unwrap_or_default().to_ascii_lowercase();
    let list: Vec<Value> = snap
        .users()
        .filter(|u| q.is_empty() || u.address.contains(&q))
        .map(|u| json!({ "address": u.address, "disabled": u.disabled }))
        .collect();
    ok(json!({ "users": list }))
}

/// `{"address": ..., "password": ...}` (no password: one is generated
/// and returned).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUserBody {
    /// The new user's address.
    pub address: String,
    /// Its password.
    #[serde(default)]
    pub password: Option<String>,
}

/// `POST /api/admin/users`.
pub async fn add_user(
    s: AdminSession,
    State(web): State<Web>,
    Json(b): Json<AddUserBody>,
) -> ApiResult {
    let generated = b.password.is_none().then(admin::generate_password);
    let password = generated.clone().or(b.password).unwrap_or_default();
    let app = web.app().clone();
    let added = blocking(move || admin::add_user(&app.directory, &b.address, &password)).await?;
    tracing::info!(admin = %s.session.name, user = %added.address, "api: user added");
    ok(json!({
        "address": added.address,
        "domain_added": added.domain_added,
        "password": generated,
    }))
}

#[derive(Serialize)]
struct UserJson {
    address: String,
    disabled: bool,
    messages: u64,
    bytes: u64,
    quarantined: usize,
    policy: Value,
    overrides: Value,
    /// Aliases, catch-alls, domain aliases... that reach the mailbox.
    address_rules: Vec<String>,
    send_limits: Value,
    forward: Vec<String>,
    forward_keep_copy: bool,
    vacation: Value,
}

fn user_json(info: admin::UserInfo) -> UserJson {
    let p = &info.policy;
    UserJson {
        address: info.address,
        disabled: info.disabled,
        messages: info.usage.messages,
        bytes: info.usage.bytes,
        quarantined: info.quarantined,
        policy: json!({
            "retention_days": p.retention_days.map_or(json!("never"), |d| json!(d)),
            "login_delay_secs": p.login_delay_secs,
            "quota_bytes": p.quota_bytes,
            "quota_messages": p.quota_messages,
        }),
        overrides: overrides_json(&info.overrides),
        address_rules: info.address_rules,
        send_limits: json!({
            "max_messages_per_hour": info.send_limits.0,
            "max_recipients_per_day": info.send_limits.1,
            "overrides": {
                "max_messages_per_hour": info.send_limit_overrides.max_messages_per_hour,
                "max_recipients_per_day": info.send_limit_overrides.max_recipients_per_day,
            },
        }),
        forward: info.forward,
        forward_keep_copy: info.forward_keep_copy,
        vacation: info.vacation.map_or(
            Value::Null,
            |v| json!({ "subject": v.subject, "until": v.until, "body": v.body }),
        ),
    }
}

/// `GET /api/admin/users/{address}`.
pub async fn user(
    _s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
) -> ApiResult {
    let app = web.app().clone();
    let info =
        blocking(move || admin::user_info(&app.config, &app.directory, &*app.store, &address))
            .await?;
    Ok(Json(user_json(info)).into_response())
}

/// The remove query.
#[derive(Debug, Default, Deserialize)]
pub struct RemoveQuery {
    /// Also delete the stored mail.
    #[serde(default)]
    pub purge: bool,
}

/// `DELETE /api/admin/users/{address}[?purge=true]`.
pub async fn remove_user(
    s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult {
    let app = web.app().clone();
    let removed =
        blocking(move || admin::remove_user(&app.directory, &*app.store, &address, q.purge))
            .await?;
    tracing::info!(admin = %s.session.name, user = %removed.address, purge = q.purge, "api: user removed");
    ok(json!({ "removed": removed.address, "mail_kept": removed.kept.is_some() }))
}

/// `{"password": ...}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The new password.
    pub password: String,
}

/// `POST /api/admin/users/{address}/password`.
pub async fn user_password(
    s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
    Json(b): Json<PasswordBody>,
) -> ApiResult {
    let app = web.app().clone();
    let address =
        blocking(move || admin::set_password(&app.directory, &address, &b.password)).await?;
    tracing::info!(admin = %s.session.name, user = %address, "api: password set");
    ok(json!({ "address": address }))
}

/// `POST /api/admin/users/{address}/policy`.
pub async fn user_policy(
    _s: AdminSession,
    State(web): State<Web>,
    Path(address): Path<String>,
    Json(b): Json<PolicyBody>,
) -> ApiResult {
    let change = b.change()?;
    let limits = b.send_limits()?;
    let disabled = b.disabled;
    let app = web.app().clone();
    let info = blocking(move || {
        let mut address = address;
        if limits.is_empty() || !change.is_empty() || disabled.is_some() {
            address = admin::set_user(&app.directory, &address, &change, disabled)?;
        }
        if !limits.is_empty() {
            address = admin::set_user_send_limits(&app.directory, &address, &limits)?;
        }
        admin::user_info(&app.config, &app.directory, &*app.store, &address)
    })
    .await?;
    Ok(Json(user_json(info)).into_response())
}

fn entry_json(e: &postoffice_queue::EntrySummary) -> Value {
    json!({
        "id": e.id,
        "sender": e.mail_from,
        "size": e.size,
        "created_at": e.created_at,
        "age_secs": e.age_secs,
        "next_attempt": e.next_attempt,
        "last_error": e.last_error,
        "delay_warned": e.delay_warned,
        "held": e.held,
        "recipients": e.rcpts.iter().map(|r| json!({
            "address": r.address,
            "state": r.state.to_string(),
            "attempts": r.attempts,
            "next_attempt": r.next_attempt,
            "last_error": r.last_error,
            "status": r.status,
            "remote_mta": r.remote_mta,
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/admin/queue`.
pub async fn queue(_s: AdminSession, State(web): State<Web>) -> ApiResult {
    let q = web.queue().clone();
    let list = blocking(move || q.list()).await?;
    ok(json!({ "entries": list.iter().map(entry_json).collect::<Vec<_>>() }))
}

/// `GET /api/admin/queue/{id}`.
pub async fn queue_entry(
    _s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
) -> ApiResult {
    let q = web.queue().clone();
    let d = blocking(move || q.show(&id)).await?;
    let mut v = entry_json(&d.summary);
    v["headers"] = json!(d.headers);
    ok(v)
}

/// `POST /api/admin/queue/{id}/retry`.
pub async fn queue_retry(
    _s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
) -> ApiResult {
    let q = web.queue().clone();
    let i = id.clone();
    blocking(move || q.retry(&i)).await?;
    ok(json!({ "retry": id }))
}

/// `POST /api/admin/queue/{id}/release`: send an entry held by
/// `scan_outbound` (409 when it is not held).
pub async fn queue_release(
    s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
) -> ApiResult {
    let q = web.queue().clone();
    let i = id.clone();
    blocking(move || q.release(&i)).await?;
    tracing::info!(admin = %s.session.name, id = %id, "api: held queue entry released");
    ok(json!({ "released": id }))
}

/// `DELETE /api/admin/queue/{id}`.
pub async fn queue_delete(
    s: AdminSession,
    State(web): State<Web>,
    Path(id): Path<String>,
) -> ApiResult {
    let q = web.queue().clone();
    let i = id.clone();
    blocking(move || q.delete(&i)).await?;
    tracing::info!(admin = %s.session.name, id = %id, "api: queue entry deleted");
    ok(json!({ "deleted": id }))
}

/// `POST /api/admin/queue/flush`.
pub async fn queue_flush(_s: AdminSession, State(web): State<Web>) -> ApiResult {
    let q = web.queue().clone();
    let n = blocking(move || q.flush()).await?;
    ok(json!({ "scheduled": n }))
}

fn quarantined_json(m: &admin::Quarantined) -> Value {
    json!({
        "address": m.address,
        "uid": m.uid,
        "size": m.size,
        "received": m.received.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "subject": m.subject,
        "from": m.from,
        "verdict": m.verdict,
        "reason": m.reason,
    })
}

/// `GET /api/admin/quarantine`: every user's (the oldest 1000).
pub async fn quarantine(_s: AdminSession, State(web): State<Web>) -> ApiResult {
    let app = web.app().clone();
    let (list, total) =
        blocking(move || admin::quarantine_all(&app.directory, &*app.store, 1000)).await?;
    ok(json!({ "total": total, "messages": list.iter().map(quarantined_json).collect::<Vec<_>>() }))
}

/// `GET /api/admin/quarantine/{address}/{uid}`: the header section.
pub async fn quarantine_message(
    _s: AdminSession,
    State(web): State<Web>,
    Path((address, uid)): Path<(String, String)>,
) -> ApiResult {
    let app = web.app().clone();
    let u = uid.clone();
    let headers = blocking(move || admin::quarantine_headers(&*app.store, &address, &u)).await?;
    ok(json!({ "uid": uid, "headers": headers }))
}

/// `POST /api/admin/quarantine/{address}/{uid}/release`.
pub async fn quarantine_release(
    s: AdminSession,
    State(web): State<Web>,
    Path((address, uid)): Path<(String, String)>,
) -> ApiResult {
    let app = web.app().clone();
    let u = uid.clone();
    let address = blocking(move || admin::quarantine_release(&*app.store, &address, &u)).await?;
    tracing::info!(admin = %s.session.name, user = %address, uid = %uid, "api: quarantined message released");
    ok(json!({ "released": uid, "address": address }))
}

/// `DELETE /api/admin/quarantine/{address}/{uid}`.
pub async fn quarantine_delete(
    s: AdminSession,
    State(web): State<Web>,
    Path((address, uid)): Path<(String, String)>,
) -> ApiResult {
    let app = web.app().clone();
    let u = uid.clone();
    let address = blocking(move || admin::quarantine_delete(&*app.store, &address, &u)).await?;
    tracing::info!(admin = %s.session.name, user = %address, uid = %uid, "api: quarantined message deleted");
    ok(json!({ "deleted": uid, "address": address }))
}

/// `GET /api/me`: the signed-in user's usage and policy.
pub async fn me(s: UserSession, State(web): State<Web>) -> ApiResult {
    let app = web.app().clone();
    let address = s.session.name.clone();
    let info =
        blocking(move || admin::user_info(&app.config, &app.directory, &*app.store, &address))
            .await?;
    let mut v = serde_json::to_value(user_json(info))
        .map_err(|e| ApiError(WebError::Internal(e.to_string())))?;
    // Users see their policy, not the mailbox's place on disk nor the
    // overrides' origin.
    if let Some(o) = v.as_object_mut() {
        o.remove("overrides");
    }
    ok(v)
}

/// `{"current": ..., "new": ...}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyPasswordBody {
    /// The password now.
    pub current: String,
    /// The password to come.
    pub new: String,
}

/// `POST /api/me/password`: sets a new session cookie (the old session
/// ended with the old password) and returns its CSRF token.
pub async fn my_password(
    s: UserSession,
    State(web): State<Web>,
    Json(b): Json<MyPasswordBody>,
) -> ApiResult {
    let cookie = crate::pages::user::change_password(&web, &s, &b.current, &b.new).await?;
    let new = cookie
        .split_once('=')
        .and_then(|(_, rest)| rest.split(';').next())
        .and_then(|v| {
            web.keys()
                .verify_session(v, &web.app().directory.snapshot())
        })
        .ok_or(ApiError(WebError::Internal("no new session".into())))?;
    let mut r = Json(json!({ "changed": true, "csrf": web.keys().csrf(&new) })).into_response();
    if let Ok(v) = cookie.parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `GET /api/me/quarantine`.
pub async fn my_quarantine(s: UserSession, State(web): State<Web>) -> ApiResult {
    let app = web.app().clone();
    let address = s.session.name.clone();
    let list = blocking(move || admin::quarantine_list(&*app.store, &address)).await?;
    ok(json!({ "messages": list.iter().map(quarantined_json).collect::<Vec<_>>() }))
}

/// `GET /api/me/quarantine/{uid}`.
pub async fn my_quarantine_message(
    s: UserSession,
    State(web): State<Web>,
    Path(uid): Path<String>,
) -> ApiResult {
    let app = web.app().clone();
    let (a, u) = (s.session.name.clone(), uid.clone());
    let headers = blocking(move || admin::quarantine_headers(&*app.store, &a, &u)).await?;
    ok(json!({ "uid": uid, "headers": headers }))
}

/// `POST /api/me/quarantine/{uid}/release`.
pub async fn my_quarantine_release(
    s: UserSession,
    State(web): State<Web>,
    Path(uid): Path<String>,
) -> ApiResult {
    let app = web.app().clone();
    let (a, u) = (s.session.name.clone(), uid.clone());
    blocking(move || admin::quarantine_release(&*app.store, &a, &u)).await?;
    ok(json!({ "released": uid }))
}

/// `DELETE /api/me/quarantine/{uid}`.
pub async fn my_quarantine_delete(
    s: UserSession,
    State(web): State<Web>,
    Path(uid): Path<String>,
) -> ApiResult {
    let app = web.app().clone();
    let (a, u) = (s.session.name.clone(), uid.clone());
    blocking(move || admin::quarantine_delete(&*app.store, &a, &u)).await?;
    ok(json!({ "deleted": uid }))
}

//! Web sessions: signed cookies, CSRF tokens and the extractors that
//! admit an administrator or a user to a route.
//!
//! A session is a cookie, `po_session`, holding
//! `v1|<role>|<name>|<expiry>|<nonce>` and an HMAC-SHA256 over it *and
//! over the principal's current password hash*, with a key kept in
//! `<data_dir>/http/cookie.key` (created on first start, mode 0600). So:
//!
//! - nothing on the server has to remember a session, and a restart does
//!   not sign anybody out;
//! - a changed password, a removed account or a disabled user ends every
//!   session of that account at once (the MAC no longer matches);
//! - the cookie expires (`Max-Age` and the expiry inside the MAC), is
//!   `HttpOnly`, `SameSite=Strict` and, on HTTPS, `Secure`;
//! - signing out revokes the session's nonce in memory until it expires.
//!
//! CSRF: every state-changing request needs a token derived from the
//! session's nonce (a form field `csrf` or the header `X-CSRF-Token`); the
//! sign-in form has its own, derived from a pre-session cookie
//! (`po_pre`). [`crate::guard`] checks them before any handler runs, so a
//! handler cannot forget to.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postoffice_directory::DirectoryData;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::WebError;
use crate::{Client, Web};

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "po_session";
/// The pre-session cookie (CSRF protection of the sign-in form).
pub(crate) const PRE_COOKIE: &str = "po_pre";
/// How long a pre-session cookie lives.
const PRE_SECS: u64 = 3600;

/// Who a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// An administrator (`postoffice admin add`).
    Admin,
    /// A mail user.
    User,
}

impl Role {
    fn code(self) -> &'static str {
        match self {
            Role::Admin => "a",
            Role::User => "u",
        }
    }

    /// The word the API uses.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub role: Role,
    /// The administrator's name or the user's address.
    pub name: String,
    /// Unix seconds.
    pub expires: u64,
    nonce: String,
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing `<data_dir>/http/cookie.key` failed.
    #[error("cookie key {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The system's random number generator failed.
    #[error("no randomness for the cookie key")]
    Random,
}

/// The signing key and the revoked sessions.
pub(crate) struct Keys {
    key: hmac::Key,
    rng: SystemRandom,
    /// Nonces of signed-out sessions, with their expiry.
    revoked: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Keys {
    /// Load `<data_dir>/http/cookie.key`, creating it on first start.
    pub(crate) fn load(data_dir: &Path) -> Result<Keys, KeyError> {
        let dir = data_dir.join("http");
        let path = dir.join("cookie.key");
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let rng = SystemRandom::new();
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => decode_hex(text.trim()).filter(|b| b.len() == 32),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let bytes = match bytes {
            Some(b) => b,
            None => {
                let mut b = vec![0u8; 32];
                rng.fill(&mut b).map_err(|_| KeyError::Random)?;
                postoffice_common::durable::create_dir_all(&dir).map_err(io)?;
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                postoffice_common::durable::write(&path, format!("{hex}\n").as_bytes())
                    .map_err(io)?;
                b
            }
        };
        Ok(Keys {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            rng,
            revoked: Mutex::new(HashMap::new()),
        })
    }

    /// Keys from fixed bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Keys {
        Keys {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            rng: SystemRandom::new(),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    fn nonce(&self) -> String {
        let mut b = [0u8; 16];
        // On the (theoretical) failure of the system RNG, a time-based
        // nonce still keeps sessions apart; the MAC keeps them unforgeable.
        if self.rng.fill(&mut b).is_err() {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            b.copy_from_slice(&t.to_le_bytes());
        }
        b64(&b)
    }

    fn mac(&self, parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        ctx.sign()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let expected = self.mac(parts);
        ct_eq(expected.as_ref(), tag)
    }

    /// A new session cookie value for `name` in `role`, whose current
    /// password hash is `hash`.
    pub(crate) fn issue(&self, role: Role, name: &str, hash: &str, secs: u64) -> (String, Session) {
        let expires = unix_now() + secs;
        let nonce = self.nonce();
        let payload = format!("v1|{}|{name}|{expires}|{nonce}", role.code());
        let tag = self.mac(&[b"session", payload.as_bytes(), hash.as_bytes()]);
        let value = format!("{}.{}", b64(payload.as_bytes()), b64(tag.as_ref()));
        (
            value,
            Session {
                role,
                name: name.to_string(),
                expires,
                nonce,
            },
        )
    }

    /// The session a cookie value stands for, if it is genuine, current
    /// and its account still exists with the same password (and, for a
    /// user, is not disabled).
    pub(crate) fn verify_session(&self, value: &str, dir: &DirectoryData) -> Option<Session> {
        let (payload_b64, tag_b64) = value.split_once('.')?;
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload_b64).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag_b64).ok()?;
        let mut fields = payload.split('|');
        let (v, role, name, expires, nonce) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if v != "v1" || fields.next().is_some() {
            return None;
        }
        let role = match role {
            "a" => Role::Admin,
            "u" => Role::User,
            _ => return None,
        };
        let hash = match role {
            Role::Admin => dir.admin(name)?.password_hash.as_str(),
            Role::User => {
                let u = dir.user(name)?;
                if u.disabled {
                    return None;
                }
                u.password_hash.as_str()
            }
        };
        if !self.verify(&[b"session", payload.as_bytes(), hash.as_bytes()], &tag) {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        if expires <= unix_now() {
            return None;
        }
        if self
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(nonce)
        {
            return None;
        }
        Some(Session {
            role,
            name: name.to_string(),
            expires,
            nonce: nonce.to_string(),
        })
    }

    /// End a session before its expiry.
    pub(crate) fn revoke(&self, session: &Session) {
        let now = unix_now();
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(session.nonce.clone(), session.expires);
    }

    /// The CSRF token of a session.
    pub(crate) fn csrf(&self, session: &Session) -> String {
        b64(self.mac(&[b"csrf", session.nonce.as_bytes()]).as_ref())
    }

    /// A new pre-session cookie value.
    pub(crate) fn issue_pre(&self) -> String {
        let payload = format!("{}|{}", self.nonce(), unix_now() + PRE_SECS);
        let tag = self.mac(&[b"pre", payload.as_bytes()]);
        format!("{}.{}", b64(payload.as_bytes()), b64(tag.as_ref()))
    }

    /// The sign-in form's CSRF token for a genuine, current pre-session
    /// cookie value.
    pub(crate) fn pre_csrf(&self, value: &str) -> Option<String> {
        let (payload_b64, tag_b64) = value.split_once('.')?;
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload_b64).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag_b64).ok()?;
        if !self.verify(&[b"pre", payload.as_bytes()], &tag) {
            return None;
        }
        let (nonce, expires) = payload.split_once('|')?;
        if expires.parse::<u64>().ok()? <= unix_now() {
            return None;
        }
        Some(b64(self.mac(&[b"precsrf", nonce.as_bytes()]).as_ref()))
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether two byte strings are equal, in time that depends only on
/// their lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Constant-time comparison of two tokens.
pub(crate) fn tokens_match(a: &str, b: &str) -> bool {
    ct_eq(a.as_bytes(), b.as_bytes())
}

/// The value of cookie `name` in the request's headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/`, with
/// `Max-Age`, and `Secure` on HTTPS.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A `Set-Cookie` value that removes the cookie.
pub(crate) fn clear_cookie(name: &str, secure: bool) -> String {
    set_cookie(name, "", 0, secure)
}

/// The request's verified session, if any.
pub(crate) fn session_of(web: &Web, headers: &HeaderMap) -> Option<Session> {
    let value = cookie(headers, SESSION_COOKIE)?;
    web.keys()
        .verify_session(value, &web.app().directory.snapshot())
}

/// Whether the request is for the JSON API (errors as JSON, 401 instead
/// of a redirect to the sign-in page).
pub(crate) fn is_api(parts: &Parts) -> bool {
    parts.uri.path().starts_with("/api/")
}

/// A route for administrators: no session is 401 (API) or a redirect to
/// the sign-in page; a user's session is 403.
#[derive(Debug, Clone)]
pub(crate) struct AdminSession {
    pub session: Session,
    pub csrf: String,
}

/// A route for mail users: no session is 401 or a redirect; an
/// administrator's session is 403 (administrators have no mailbox).
#[derive(Debug, Clone)]
pub(crate) struct UserSession {
    pub session: Session,
    pub csrf: String,
    pub client: Client,
}

/// Why a route refused a request: the error, answered as JSON under
/// `/api/` and as a page (or a redirect to the sign-in page) elsewhere.
#[derive(Debug)]
pub(crate) struct Refusal {
    error: WebError,
    api: bool,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if self.api {
            self.error.json()
        } else {
            self.error.page()
        }
    }
}

/// The session of a request for `role`, or why not.
fn extract(parts: &Parts, web: &Web, role: Role) -> Result<(Session, String, Client), Refusal> {
    let api = is_api(parts);
    let refuse = |error: WebError| Refusal { error, api };
    let client = parts
        .extensions
        .get::<Client>()
        .copied()
        .ok_or_else(|| refuse(WebError::Internal("no client information".into())))?;
    let Some(session) = session_of(web, &parts.headers) else {
        return Err(refuse(if api {
            WebError::Unauthenticated
        } else {
            WebError::SignIn
        }));
    };
    if session.role != role {
        return Err(refuse(WebError::Forbidden));
    }
    let csrf = web.keys().csrf(&session);
    Ok((session, csrf, client))
}

impl FromRequestParts<Web> for AdminSession {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Refusal> {
        let (session, csrf, _) = extract(parts, web, Role::Admin)?;
        Ok(AdminSession { session, csrf })
    }
}

impl FromRequestParts<Web> for UserSession {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Refusal> {
        let (session, csrf, client) = extract(parts, web, Role::User)?;
        Ok(UserSession {
            session,
            csrf,
            client,
        })
    }
}

/// How long a session lives, from the configuration.
pub(crate) fn session_secs(web: &Web) -> u64 {
    web.app().config.http.session_secs
}

/// The `Max-Age` of a session cookie.
pub(crate) fn max_age(session: &Session) -> u64 {
    session.expires.saturating_sub(unix_now())
}

/// A fresh session cookie for `role`/`name` (after sign-in or a password
/// change), with the session it stands for. `None` when the account is
/// gone.
pub(crate) fn new_session(web: &Web, role: Role, name: &str) -> Option<(String, Session)> {
    let dir = web.app().directory.snapshot();
    let hash = match role {
        Role::Admin => dir.admin(name)?.password_hash.clone(),
        Role::User => dir.user(name)?.password_hash.clone(),
    };
    Some(web.keys().issue(role, name, &hash, session_secs(web)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postoffice_directory::Directory;

    const HASH: &str = "{SHA512-CRYPT}$6$rounds=5000$saltsalt$CPgxBHZBXfhC6lX1yxpdEsbQfXmg3WXVj8AoVwyNFLfb5AtbfM8k6A8yehv1z6sgzoH/DUIs7YK9hVnGhTjhW/";
    const HASH256: &str = "$5$saltsalt$3hGFMknrJ4ZpFPe7XZe397oIMEp7sbvqrcsX/ONJ3i.";

    #[test]
    fn sessions_are_signed_bound_to_the_password_and_revocable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Directory::open(tmp.path()).unwrap();
        dir.add_domain("example.test").unwrap();
        dir.add_user("alice@example.test", HASH).unwrap();
        dir.add_admin("root", HASH).unwrap();
        let keys = Keys::from_bytes(&[7; 32]);
        let (cookie, s) = keys.issue(Role::User, "alice@example.test", HASH, 3600);
        assert_eq!(
            keys.verify_session(&cookie, &dir.snapshot()),
            Some(s.clone())
        );
        // Another key, a changed byte, a role swap: nothing verifies.
        assert_eq!(
            Keys::from_bytes(&[8; 32]).verify_session(&cookie, &dir.snapshot()),
            None
        );
        let (p, t) = cookie.split_once('.').unwrap();
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        let forged = format!(
            "{}.{t}",
            b64(payload
                .replace("|u|", "|a|")
                .replace("alice@example.test", "root")
                .as_bytes())
        );
        assert_eq!(keys.verify_session(&forged, &dir.snapshot()), None);
        assert_eq!(keys.verify_session("garbage", &dir.snapshot()), None);
        // Expired.
        let (old, _) = keys.issue(Role::User, "alice@example.test", HASH, 0);
        assert_eq!(keys.verify_session(&old, &dir.snapshot()), None);
        // CSRF tokens differ per session.
        let (_, s2) = keys.issue(Role::User, "alice@example.test", HASH, 3600);
        assert_ne!(keys.csrf(&s), keys.csrf(&s2));
        // Disabled user, then a new password: the session ends.
        dir.set_user_disabled("alice@example.test", true).unwrap();
        assert_eq!(keys.verify_session(&cookie, &dir.snapshot()), None);
        dir.set_user_disabled("alice@example.test", false).unwrap();
        assert!(keys.verify_session(&cookie, &dir.snapshot()).is_some());
        dir.set_password("alice@example.test", HASH256).unwrap();
        assert_eq!(keys.verify_session(&cookie, &dir.snapshot()), None);
        // Revoked.
        let (admin, a) = keys.issue(Role::Admin, "root", HASH, 3600);
        assert!(keys.verify_session(&admin, &dir.snapshot()).is_some());
        keys.revoke(&a);
        assert_eq!(keys.verify_session(&admin, &dir.snapshot()), None);
    }

    #[test]
    fn pre_session_tokens() {
        let keys = Keys::from_bytes(&[7; 32]);
        let pre = keys.issue_pre();
        let token = keys.pre_csrf(&pre).unwrap();
        assert!(tokens_match(&token, &keys.pre_csrf(&pre).unwrap()));
        assert_ne!(Some(token), keys.pre_csrf(&keys.issue_pre()));
        assert_eq!(keys.pre_csrf("x.y"), None);
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let a = Keys::load(tmp.path()).unwrap();
        let path = tmp.path().join("http/cookie.key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Keys::load(tmp.path()).unwrap();
        let pre = a.issue_pre();
        assert_eq!(
            a.pre_csrf(&pre),
            b.pre_csrf(&pre),
            "same key after a restart"
        );
    }

    #[test]
    fn cookies_are_parsed_and_set_strictly() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; po_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie(SESSION_COOKIE, "v", 60, true);
        assert_eq!(
            c,
            "po_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!set_cookie(SESSION_COOKIE, "v", 60, false).contains("Secure"));
    }
}

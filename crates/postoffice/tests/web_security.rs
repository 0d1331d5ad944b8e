//! The web interface's security battery, against the real binary: no
//! session, forged CSRF tokens, cross-site requests, a user on an
//! administrator's route, 1,000 wrong sign-ins, oversized and malformed
//! bodies, cookie attributes, and sessions that end.

mod common;

use std::io::{Read, Write};

use common::*;
use serde_json::Value;

const OFFLINE: &str = "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
                       [filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n";
const ADMIN_PW: &str = "admin-pw-1";

fn env(extra: &str) -> Env {
    let env = Env::new(BIN, &format!("{extra}{OFFLINE}"));
    env.cli_stdin(
        &["admin", "add", "root", "--password-stdin"],
        format!("{ADMIN_PW}\n").as_bytes(),
    )
    .ok();
    env.add_user("alice@example.test", "alice-pw");
    env
}

fn json(r: &HttpResponse) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.text()))
}

fn sign_in(server: &Server, name: &str, password: &str) -> (HttpClient, String) {
    let mut c = HttpClient::new(server.http_addr());
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    let r = c.json("POST", "/api/login", &body, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let csrf = json(&r)["csrf"].as_str().expect("csrf").to_string();
    (c, csrf)
}

/// The sign-in form's token (and the pre-session cookie in the jar).
fn form_token(c: &mut HttpClient) -> String {
    let page = c.get("/login").text();
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_string()
}

fn directory(env: &Env) -> String {
    env.directory_document()
}

/// Without a session: pages redirect to the sign-in page, the API says
/// 401, and an action changes nothing. An anonymous visitor cannot tell a
/// user that exists from one that does not.
#[test]
fn no_session_is_a_redirect_or_401_and_reveals_nothing() {
    let env = env("");
    let server = env.start();
    let before = directory(&env);
    let mut c = HttpClient::new(server.http_addr());
    for path in [
        "/admin",
        "/admin/users",
        "/admin/users/alice@example.test",
        "/admin/users/nobody@example.test",
        "/admin/queue",
        "/admin/quarantine",
        "/me",
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location"), Some("/login"), "{path}");
    }
    for path in [
        "/api/admin/users",
        "/api/admin/users/alice@example.test",
        "/api/admin/users/nobody@example.test",
        "/api/me",
        "/api/session",
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(json(&r)["error"], "sign in first", "{path}");
    }
    let r = c.json(
        "POST",
        "/api/admin/users",
        "{\"address\":\"mallory@example.test\",\"password\":\"x\"}",
        None,
    );
    assert_eq!(r.status, 401);
    let r = c.post_form(
        "/admin/users",
        &[("address", "mallory@example.test"), ("password", "x")],
    );
    assert_eq!(r.status, 303);
    let r = c.json("DELETE", "/api/admin/users/alice@example.test", "", None);
    assert_eq!(r.status, 401);
    assert_eq!(directory(&env), before, "nothing changed");

    // A failed sign-in reads the same whether the address exists or not.
    let mut answers = Vec::new();
    for name in ["alice@example.test", "nobody@example.test", "nosuchadmin"] {
        let body = serde_json::json!({ "name": name, "password": "wrong" }).to_string();
        let r = c.json("POST", "/api/login", &body, None);
        answers.push((r.status, r.text()));
        let token = form_token(&mut c);
        let r = c.post_form(
            "/login",
            &[("csrf", &token), ("name", name), ("password", "wrong")],
        );
        assert_eq!(r.status, 401);
        let text = r.text();
        // The form is shown again with one fixed sentence; nothing names
        // the account.
        let failure = text
            .split("id=\"signin-error\">")
            .nth(1)
            .and_then(|t| t.split('<').next())
            .unwrap_or_else(|| panic!("{text}"))
            .to_string();
        answers.push((r.status, failure));
    }
    assert_eq!(answers[0], answers[2]);
    assert_eq!(answers[0], answers[4]);
    assert_eq!(answers[1], answers[3]);
    assert_eq!(answers[1], answers[5]);
    assert_eq!(answers[0].1, "{\"error\":\"sign-in failed\"}");
}

/// A wrong, missing or other session's CSRF token is 403 before anything
/// happens, on forms and on the API; so is a request from another site.
#[test]
fn forged_csrf_and_cross_site_requests_are_403_and_change_nothing() {
    let env = env("");
    let server = env.start();
    let (mut admin, csrf) = sign_in(&server, "root", ADMIN_PW);
    let (_other, other_csrf) = sign_in(&server, "root", ADMIN_PW);
    assert_ne!(csrf, other_csrf, "each session has its own token");
    let before = directory(&env);
    for token in [None, Some("forged"), Some(other_csrf.as_str()), Some("")] {
        let mut fields = vec![("name", "evil.test")];
        if let Some(t) = token {
            fields.push(("csrf", t));
        }
        let r = admin.post_form("/admin/domains", &fields);
        assert_eq!(r.status, 403, "form with {token:?}: {}", r.text());
        let r = admin.json(
            "POST",
            "/api/admin/domains",
            "{\"name\":\"evil.test\"}",
            token,
        );
        assert_eq!(r.status, 403, "API with {token:?}: {}", r.text());
        assert!(json(&r)["error"].as_str().unwrap().contains("CSRF"));
        let r = admin.json("DELETE", "/api/admin/users/alice@example.test", "", token);
        assert_eq!(r.status, 403);
        let r = admin.post_form(
            "/admin/users/alice@example.test/password",
            &[("password", "owned"), ("csrf", token.unwrap_or(""))],
        );
        assert_eq!(r.status, 403);
    }
    // The sign-in form has its token too (from the pre-session cookie).
    let mut anon = HttpClient::new(server.http_addr());
    let r = anon.post_form(
        "/login",
        &[("csrf", "forged"), ("name", "root"), ("password", ADMIN_PW)],
    );
    assert_eq!(r.status, 403);
    assert!(anon.cookie("po_session").is_none());
    // Another site's page posting with the victim's cookie (and even the
    // right token) is refused by its Origin.
    let r = admin.request(
        "POST",
        "/api/admin/domains",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
            ("Origin", "https://evil.test"),
        ],
        b"{\"name\":\"evil.test\"}",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = admin.request(
        "POST",
        "/api/admin/domains",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
            ("Origin", "null"),
        ],
        b"{\"name\":\"evil.test\"}",
    );
    assert_eq!(r.status, 403);
    assert_eq!(directory(&env), before, "nothing changed");
    // With the right token (and its own Origin) the same request works.
    let origin = format!("http://{}", server.http_addr());
    let r = admin.request(
        "POST",
        "/api/admin/domains",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
            ("Origin", &origin),
        ],
        b"{\"name\":\"good.test\"}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = csrf.clone();
    let r = admin.post_form("/admin/domains", &[("name", "form.test"), ("csrf", &token)]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/admin/domains?done=domain-added")
    );
    let d = directory(&env);
    assert!(
        d.contains("good.test") && d.contains("form.test") && !d.contains("evil.test"),
        "{d}"
    );
}

/// A user's session on an administrator's page or API is 403 and changes
/// nothing; an administrator has no mailbox page.
#[test]
fn user_session_on_admin_routes_is_403() {
    let env = env("");
    let server = env.start();
    let (mut user, csrf) = sign_in(&server, "alice@example.test", "alice-pw");
    let before = directory(&env);
    for path in ["/admin", "/admin/users", "/admin/queue", "/admin/sessions"] {
        assert_eq!(user.get(path).status, 403, "{path}");
    }
    for path in [
        "/api/admin/users",
        "/api/admin/stats",
        "/api/admin/quarantine",
    ] {
        let r = user.get(path);
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(json(&r)["error"], "not allowed");
    }
    let r = user.json(
        "POST",
        "/api/admin/users",
        "{\"address\":\"mallory@example.test\",\"password\":\"x\"}",
        Some(&csrf),
    );
    assert_eq!(r.status, 403);
    let r = user.json(
        "POST",
        "/api/admin/users/alice@example.test/policy",
        "{\"quota_bytes\":0}",
        Some(&csrf),
    );
    assert_eq!(r.status, 403);
    let r = user.post_form(
        "/admin/users/alice@example.test/delete",
        &[("csrf", &csrf), ("purge", "yes")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(directory(&env), before);
    assert_eq!(user.get("/api/me").status, 200);
    // And the other way round.
    let (mut admin, _) = sign_in(&server, "root", ADMIN_PW);
    assert_eq!(admin.get("/me").status, 403);
    assert_eq!(admin.get("/api/me").status, 403);
    // A user cannot become an administrator by name: "alice" is no admin.
    let r = HttpClient::new(server.http_addr()).json(
        "POST",
        "/api/login",
        "{\"name\":\"alice\",\"password\":\"alice-pw\"}",
        None,
    );
    assert_eq!(r.status, 401);
}

/// 1,000 wrong sign-ins: after `lockout_after` failures the network is
/// locked out, the rest are refused without a password check, the right
/// password is refused too while locked, and so is POP3 from the same
/// address: it is the same throttle.
#[test]
fn a_thousand_wrong_sign_ins_are_throttled() {
    let env = env(
        "[auth]\nfree_failures = 3\nbase_delay_ms = 1\nmax_delay_ms = 4\nlockout_after = 10\nlockout_secs = 600\n",
    );
    let server = env.start();
    let mut c = HttpClient::new(server.http_addr());
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        // Users and an administrator, as a password sprayer would.
        let name = match i % 3 {
            0 => "alice@example.test",
            1 => "root",
            _ => "nobody@example.test",
        };
        let body = serde_json::json!({ "name": name, "password": format!("guess-{i}") });
        let r = c.json("POST", "/api/login", &body.to_string(), None);
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 1000)].into());
    // Locked: the right passwords do not get in either.
    for (name, pw) in [("alice@example.test", "alice-pw"), ("root", ADMIN_PW)] {
        let body = serde_json::json!({ "name": name, "password": pw }).to_string();
        assert_eq!(
            c.json("POST", "/api/login", &body, None).status,
            401,
            "{name}"
        );
    }
    let mut p = server.connect();
    assert_eq!(p.login("alice@example.test", "alice-pw"), AUTH_FAILED);
    // Only the failures before the lockout cost a password check; every
    // other attempt was refused by the throttle at once.
    let log = env.log_contents();
    let checked = log.matches("login failed").count();
    let locked = log.matches("locked out after repeated failures").count();
    assert!(checked <= 10, "{checked} password checks");
    assert!(locked >= 990, "{locked} refusals by the lockout");
    // The metrics counted them.
    let m = c.get("/metrics").text();
    assert!(
        m.contains("postoffice_logins_total{protocol=\"web\",result=\"failed\"} 1002"),
        "{m}"
    );
}

/// Bodies over `max_body_bytes` get 413, malformed or mistyped JSON a 4xx,
/// and none of them changes anything.
#[test]
fn oversized_and_malformed_bodies_get_4xx_and_change_nothing() {
    let env = env("http.max_body_bytes = 4096\n");
    let server = env.start();
    let (mut admin, csrf) = sign_in(&server, "root", ADMIN_PW);
    let before = directory(&env);
    let big = format!(
        "{{\"address\":\"big@example.test\",\"password\":\"{}\"}}",
        "x".repeat(100_000)
    );
    let r = admin.json("POST", "/api/admin/users", &big, Some(&csrf));
    assert_eq!(r.status, 413, "{}", r.text());
    let big_form = "x".repeat(100_000);
    let r = admin.post_form(
        "/admin/users",
        &[
            ("csrf", &csrf),
            ("address", "big@example.test"),
            ("password", &big_form),
        ],
    );
    assert_eq!(r.status, 413);
    for (body, ctype, want) in [
        (
            "{\"address\": \"bad@example.test\"",
            "application/json",
            400,
        ),
        ("not json at all", "application/json", 400),
        ("{\"address\": 42}", "application/json", 422),
        (
            "{\"address\":\"u@example.test\",\"extra\":1}",
            "application/json",
            422,
        ),
        ("[]", "application/json", 422),
        ("{\"address\":\"u@example.test\"}", "text/plain", 415),
        ("\u{0}\u{1}\u{2}", "application/json", 400),
    ] {
        let r = admin.request(
            "POST",
            "/api/admin/users",
            &[("Content-Type", ctype), ("X-CSRF-Token", &csrf)],
            body.as_bytes(),
        );
        assert_eq!(r.status, want, "{body:?} as {ctype}: {}", r.text());
    }
    // Bad values the JSON shape allows: 400 with the reason.
    for body in [
        "{\"address\":\"not an address\",\"password\":\"x\"}",
        "{\"address\":\"../../etc@example.test\",\"password\":\"x\"}",
        "{\"address\":\"ok@example.test\",\"password\":\"\"}",
        "{\"address\":\"ok@example.test\",\"password\":\"a\\nb\"}",
    ] {
        let r = admin.json("POST", "/api/admin/users", body, Some(&csrf));
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    let r = admin.json(
        "POST",
        "/api/admin/users/alice@example.test/policy",
        "{\"quota_bytes\": [1]}",
        Some(&csrf),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A header that is too big, and garbage instead of HTTP.
    let huge = format!(
        "GET /admin HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let raw = http_raw(server.http_addr(), huge.as_bytes());
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    let raw = http_raw(server.http_addr(), b"\x16\x03\x01garbage\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert_eq!(directory(&env), before, "nothing changed");
    // The server is still fine.
    assert_eq!(admin.get("/api/admin/users").status, 200);
}

/// Session cookies: HttpOnly, SameSite=Strict, a Max-Age, Secure on HTTPS
/// only; signing out and a changed password end a session for good (a
/// copy of the old cookie no longer works).
#[test]
fn cookies_are_strict_and_sessions_end() {
    let env = env("http.listen_tls = [\"127.0.0.1:0\"]\nhttp.session_secs = 600\n");
    let server = env.start();
    let mut c = HttpClient::new(server.http_addr());
    let r = c.json(
        "POST",
        "/api/login",
        &serde_json::json!({ "name": "alice@example.test", "password": "alice-pw" }).to_string(),
        None,
    );
    assert_eq!(r.status, 200);
    let set = r.header("set-cookie").expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Max-Age=600", "Path=/"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(
        r.header("content-security-policy")
            .is_some_and(|v| v.contains("default-src 'none'"))
    );

    // Over HTTPS (the server's certificate) the cookie is Secure.
    let tcp = tcp_connect(server.https_addr());
    let mut tls = env.tls_wrap(tcp);
    let body = "{\"name\":\"alice@example.test\",\"password\":\"alice-pw\"}";
    write!(
        tls,
        "POST /api/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let r = parse_response(&raw);
    assert_eq!(r.status, 200, "{}", r.text());
    let set_tls = r.header("set-cookie").unwrap();
    assert!(set_tls.contains("; Secure"), "{set_tls}");

    // Sign out: the cookie is removed, and a copy of it is dead.
    let copy = c.cookie("po_session").unwrap().to_string();
    let csrf = json(&c.get("/api/session"))["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c.json("POST", "/api/logout", "", Some(&csrf));
    assert_eq!(r.status, 200);
    assert!(c.cookie("po_session").is_none());
    let mut thief = HttpClient::new(server.http_addr());
    thief.set_cookie("po_session", &copy);
    assert_eq!(thief.get("/api/me").status, 401);

    // A password changed by the administrator ends the user's sessions.
    let (mut user, _) = sign_in(&server, "alice@example.test", "alice-pw");
    assert_eq!(user.get("/api/me").status, 200);
    env.cli_stdin(
        &["user", "passwd", "alice@example.test", "--password-stdin"],
        b"new-pw\n",
    )
    .ok();
    env.wait_for_directory(&server);
    assert_eq!(user.get("/api/me").status, 401);
    // So does disabling the user.
    let (mut user, _) = sign_in(&server, "alice@example.test", "new-pw");
    env.cli(&["user", "set", "alice@example.test", "--disabled", "true"])
        .ok();
    env.wait_for_directory(&server);
    assert_eq!(user.get("/api/me").status, 401);
    // A tampered cookie is no session.
    let (admin, _) = sign_in(&server, "root", ADMIN_PW);
    let mut forged = HttpClient::new(server.http_addr());
    let value = admin.cookie("po_session").unwrap();
    let (payload, mac) = value.split_once('.').unwrap();
    let flipped: String = mac
        .chars()
        .enumerate()
        .map(|(i, ch)| {
            if i == 0 {
                if ch == 'A' { 'B' } else { 'A' }
            } else {
                ch
            }
        })
        .collect();
    forged.set_cookie("po_session", &format!("{payload}.{flipped}"));
    assert_eq!(forged.get("/api/admin/users").status, 401);
}

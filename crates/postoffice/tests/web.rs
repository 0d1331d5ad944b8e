//! The HTTP listener of the real binary: /metrics (checked by Prometheus'
//! own promtool), client autoconfiguration, and the JSON API used by an
//! administrator and a user. The security battery is in web_security.rs;
//! the browser scenario in tests/clients/browser.py.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Checks that need DNS are off, and the resolver is a dead loopback port.
pub const OFFLINE: &str = "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
                           [filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n";

const ADMIN_PW: &str = "admin-pw-1";

fn env(extra: &str) -> Env {
    let env = Env::new(BIN, &format!("{extra}{OFFLINE}"));
    env.cli_stdin(
        &["admin", "add", "root", "--password-stdin"],
        format!("{ADMIN_PW}\n").as_bytes(),
    )
    .ok();
    env
}

fn json(r: &HttpResponse) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.text()))
}

/// A client signed in through the API; its CSRF token.
fn sign_in(server: &Server, name: &str, password: &str) -> (HttpClient, String) {
    let mut c = HttpClient::new(server.http_addr());
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    let r = c.json("POST", "/api/login", &body, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let csrf = json(&r)["csrf"].as_str().expect("csrf").to_string();
    (c, csrf)
}

/// The samples of /metrics: `name{labels}` -> value.
fn scrape(c: &mut HttpClient) -> BTreeMap<String, f64> {
    let r = c.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

fn send_mail(server: &Server, to: &str, subject: &str) {
    let mut c = smtp_connect(server.smtp_addr());
    for (line, want) in [
        ("MAIL FROM:<friend@elsewhere.test>".to_string(), 250),
        (format!("RCPT TO:<{to}>"), 250),
        ("DATA".to_string(), 354),
    ] {
        let (code, text) = smtp_cmd(&mut c, &line);
        assert_eq!(code, want, "{line}: {text}");
    }
    c.send_raw(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    let (code, text) = smtp_reply(&mut c);
    assert_eq!(code, 250, "{text}");
    smtp_cmd(&mut c, "QUIT");
}

fn promtool_check(text: &str) {
    let promtool = program("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// promtool accepts the exposition, and the counters move with SMTP and
/// POP3 traffic by exactly what was done.
#[test]
fn metrics_parse_with_promtool_and_move_with_smtp_and_pop3() {
    let env = env("");
    env.add_user("alice@example.test", "pw-alice");
    let server = env.start();
    let mut http = HttpClient::new(server.http_addr());
    let r = http.get("/metrics");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_check(&r.text());
    let before = scrape(&mut http);

    send_mail(&server, "alice@example.test", "one");
    send_mail(&server, "alice@example.test", "two");
    // A relay attempt and an unknown user: rejections by reason.
    let mut c = smtp_connect(server.smtp_addr());
    smtp_cmd(&mut c, "MAIL FROM:<x@elsewhere.test>");
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<someone@far.test>").0, 554);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<nobody@example.test>").0, 550);
    smtp_cmd(&mut c, "QUIT");
    // POP3: one failed login, then retrieve both and delete one.
    let mut failed = server.connect();
    assert!(
        failed
            .login("alice@example.test", "wrong")
            .starts_with("-ERR")
    );
    assert!(failed.quit().starts_with("+OK"));
    let mut p = server.login_when_free("alice@example.test", "pw-alice");
    assert!(p.cmd("RETR 1").starts_with("+OK"));
    p.read_multiline();
    assert!(p.cmd("RETR 2").starts_with("+OK"));
    p.read_multiline();
    assert!(p.cmd("DELE 1").starts_with("+OK"));
    assert!(p.quit().starts_with("+OK"));

    let text = http.get("/metrics").text();
    promtool_check(&text);
    let after = scrape(&mut http);
    let moved =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let want = [
        (
            "postoffice_smtp_transactions_total{service=\"mx\",outcome=\"delivered\"}",
            2.0,
        ),
        (
            "postoffice_smtp_rejections_total{service=\"mx\",reason=\"relay\"}",
            1.0,
        ),
        (
            "postoffice_smtp_rejections_total{service=\"mx\",reason=\"unknown_user\"}",
            1.0,
        ),
        ("postoffice_sessions_total{protocol=\"smtp\"}", 3.0),
        (
            "postoffice_logins_total{protocol=\"pop3\",result=\"ok\"}",
            1.0,
        ),
        (
            "postoffice_logins_total{protocol=\"pop3\",result=\"failed\"}",
            1.0,
        ),
        ("postoffice_pop3_retrieved_messages_total", 2.0),
        ("postoffice_pop3_deleted_messages_total", 1.0),
        (
            "postoffice_delivery_duration_seconds_count{path=\"inbound\"}",
            2.0,
        ),
    ];
    for (k, v) in want {
        assert_eq!(moved(k), v, "{k} in\n{text}");
    }
    assert!(moved("postoffice_sessions_total{protocol=\"pop3\"}") >= 2.0);
    // The POP3 sessions ended, so none is open any more.
    assert!(
        eventually_blocking(|| scrape(&mut http)
            .get("postoffice_sessions_open{protocol=\"pop3\"}")
            .copied()
            == Some(0.0)),
        "{text}"
    );
    assert_eq!(after.get("postoffice_users{state=\"enabled\"}"), Some(&1.0));
    assert_eq!(after.get("postoffice_domains"), Some(&1.0));
    assert!(text.contains("postoffice_build_info{version=\""), "{text}");
    // No address, host name or client text ever becomes a label.
    assert!(
        !text.contains("example.test") && !text.contains("far.test"),
        "{text}"
    );
}

fn eventually_blocking(mut f: impl FnMut() -> bool) -> bool {
    poll_until(START_TIMEOUT, &mut f)
}

/// With `metrics_token`, /metrics needs the bearer token.
#[test]
fn metrics_token_is_required_when_set() {
    let env = env("http.metrics_token = \"s3cret-token\"\n");
    let server = env.start();
    let mut c = HttpClient::new(server.http_addr());
    let r = c.get("/metrics");
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    assert!(!r.text().contains("postoffice_"));
    let r = c.request("GET", "/metrics", &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(r.status, 401);
    let r = c.request(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cret-token")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("postoffice_build_info"));
    // The token is a secret: `config check` does not print it.
    let out = env.cli(&["config", "check"]).ok();
    assert!(!out.stdout.contains("s3cret-token"), "{}", out.stdout);
}

/// Thunderbird's autoconfig (both URLs) and Outlook's autodiscover answer
/// for a local domain with the listeners' ports and TLS modes; another
/// domain gets 404; whether the address exists makes no difference.
#[test]
fn autoconfig_answers_for_local_domains_only() {
    let env = env("");
    env.add_user("alice@example.test", "pw");
    env.cli(&["domain", "add", "second.test"]).ok();
    let server = env.start();
    let mut c = HttpClient::new(server.http_addr());
    let alice =
        c.get("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.test");
    assert_eq!(alice.status, 200, "{}", alice.text());
    assert_eq!(
        alice.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    let x = alice.text();
    for want in [
        "<clientConfig version=\"1.1\">".to_string(),
        "<emailProvider id=\"example.test\">".to_string(),
        "<domain>example.test</domain>".to_string(),
        "<hostname>test.local</hostname>".to_string(),
        format!(
            "<incomingServer type=\"pop3\">\n      <hostname>test.local</hostname>\n      <port>{}</port>\n      <socketType>SSL</socketType>",
            server.pop3s_addr().port()
        ),
        format!(
            "<port>{}</port>\n      <socketType>STARTTLS</socketType>",
            server.pop3_addr().port()
        ),
        format!(
            "<outgoingServer type=\"smtp\">\n      <hostname>test.local</hostname>\n      <port>{}</port>\n      <socketType>SSL</socketType>",
            server.submits_addr().port()
        ),
        format!(
            "<port>{}</port>\n      <socketType>STARTTLS</socketType>",
            server.submit_addr().port()
        ),
        "<username>%EMAILADDRESS%</username>".to_string(),
        "<authentication>password-cleartext</authentication>".to_string(),
    ] {
        assert!(x.contains(&want), "{want} in\n{x}");
    }
    assert!(!x.contains("<socketType>plain</socketType>"), "{x}");
    // The other URL, the other local domain, the Host name instead of the
    // address; an address that does not exist gets the same answer.
    let nobody = c.get("/mail/config-v1.1.xml?emailaddress=nobody%40example.test");
    assert_eq!(nobody.status, 200);
    assert_eq!(nobody.body, alice.body);
    let second = c.get("/mail/config-v1.1.xml?emailaddress=x%40second.test");
    assert_eq!(second.status, 200);
    assert!(second.text().contains("<domain>second.test</domain>"));
    let mut by_host = HttpClient::new(server.http_addr());
    by_host.host = "autoconfig.example.test".into();
    assert_eq!(by_host.get("/mail/config-v1.1.xml").body, alice.body);
    // Not ours: 404, saying nothing.
    for path in [
        "/mail/config-v1.1.xml?emailaddress=alice%40other.test",
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=no-at-sign",
        "/mail/config-v1.1.xml",
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.text(), "not found\n", "{path}");
    }

    // Outlook posts XML.
    let req = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>alice@example.test</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
    let r = c.request(
        "POST",
        "/autodiscover/autodiscover.xml",
        &[("Content-Type", "text/xml")],
        req.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let x = r.text();
    assert!(x.contains("<Type>POP3</Type>"), "{x}");
    assert!(
        x.contains(&format!("<Port>{}</Port>", server.pop3s_addr().port())),
        "{x}"
    );
    assert!(
        x.contains(&format!("<Port>{}</Port>", server.submits_addr().port())),
        "{x}"
    );
    assert!(
        x.contains("<LoginName>alice@example.test</LoginName>"),
        "{x}"
    );
    let r = c.request(
        "POST",
        "/Autodiscover/Autodiscover.xml",
        &[("Content-Type", "text/xml")],
        req.replace("example.test", "other.test").as_bytes(),
    );
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("other.test"));
}

/// An administrator manages domains, users, policies, the queue and the
/// quarantine through the API; a user sees their mailbox and changes
/// their password, which then works over POP3.
#[test]
fn api_for_administrators_and_users() {
    let env = env("");
    let server = env.start();
    let (mut admin, csrf) = sign_in(&server, "root", ADMIN_PW);
    let post = |c: &mut HttpClient, path: &str, body: Value| {
        let r = c.json("POST", path, &body.to_string(), Some(&csrf));
        (r.status, json(&r))
    };
    let r = admin.get("/api/session");
    assert_eq!(json(&r)["role"], "admin");

    // A domain, a user in a new domain (added with it), a policy.
    let (s, v) = post(
        &mut admin,
        "/api/admin/domains",
        serde_json::json!({"name": "Example.test"}),
    );
    assert_eq!((s, &v["name"]), (200, &Value::from("example.test")));
    let (s, v) = post(
        &mut admin,
        "/api/admin/users",
        serde_json::json!({"address": "bob@new.test"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["domain_added"], "new.test");
    let generated = v["password"]
        .as_str()
        .expect("a generated password")
        .to_string();
    let (s, v) = post(
        &mut admin,
        "/api/admin/users",
        serde_json::json!({"address": "alice@example.test", "password": "alice-pw-1"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["password"], Value::Null);
    let (s, _) = post(
        &mut admin,
        "/api/admin/users",
        serde_json::json!({"address": "alice@example.test", "password": "x"}),
    );
    assert_eq!(s, 409);
    let (s, v) = post(
        &mut admin,
        "/api/admin/users/alice@example.test/policy",
        serde_json::json!({"quota_bytes": 1_000_000, "retention_days": "never", "login_delay_secs": 0}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"]["quota_bytes"], 1_000_000);
    assert_eq!(v["overrides"]["retention_days"], "never");
    let (s, v) = post(
        &mut admin,
        "/api/admin/domains/example.test/policy",
        serde_json::json!({"quota_messages": 500}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"]["quota_messages"], 500);
    let (s, _) = post(
        &mut admin,
        "/api/admin/users/alice@example.test/policy",
        serde_json::json!({"quota_bytes": "lots"}),
    );
    assert_eq!(s, 400);
    // The user's own sending limits.
    let (s, v) = post(
        &mut admin,
        "/api/admin/users/alice@example.test/policy",
        serde_json::json!({"max_messages_per_hour": 7}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["send_limits"]["max_messages_per_hour"], 7, "{v}");
    assert_eq!(
        v["send_limits"]["overrides"]["max_recipients_per_day"],
        Value::Null,
        "{v}"
    );
    assert_eq!(v["policy"]["quota_bytes"], 1_000_000, "the policy is kept");
    // The CLI sees the same directory.
    let info = env.cli(&["user", "info", "alice@example.test"]).ok().stdout;
    assert!(info.contains("messages/hour:  7 (user setting)"), "{info}");
    assert!(info.contains("quota bytes:    1000000"), "{info}");
    assert!(info.contains("quota messages: 500"), "{info}");
    let list = json(&admin.get("/api/admin/users"));
    assert_eq!(list["users"].as_array().unwrap().len(), 2, "{list}");
    let domains = json(&admin.get("/api/admin/domains"));
    assert_eq!(domains["domains"].as_array().unwrap().len(), 2, "{domains}");

    // The generated password works over POP3.
    let mut p = server.login("bob@new.test", &generated);
    p.quit();

    // Mail arrives; the admin sees it in the user's usage and the stats.
    send_mail(&server, "alice@example.test", "hello");
    let v = json(&admin.get("/api/admin/users/alice@example.test"));
    assert_eq!(v["messages"], 1, "{v}");
    assert_eq!(v["vacation"], Value::Null, "{v}");
    // Forwarding set with the CLI shows in the API.
    env.cli(&[
        "user",
        "set",
        "alice@example.test",
        "--forward",
        "alice@far.test",
        "--keep-copy",
        "false",
    ])
    .ok();
    // At once on Maildir; on PostgreSQL once the node has re-read the
    // shared directory (every second).
    let v = wait_for(
        std::time::Duration::from_secs(30),
        "the CLI's forward in the API",
        || {
            let v = json(&admin.get("/api/admin/users/alice@example.test"));
            (v["forward"] != serde_json::json!([]) || !env.on_postgres()).then_some(v)
        },
    );
    assert_eq!(v["forward"], serde_json::json!(["alice@far.test"]), "{v}");
    assert_eq!(v["forward_keep_copy"], false, "{v}");
    env.cli(&["user", "set", "alice@example.test", "--forward", "off"])
        .ok();
    let v = json(&admin.get("/api/admin/stats"));
    assert_eq!(v["now"]["delivered"], 1, "{v}");
    let v = json(&admin.get("/api/admin/sessions"));
    assert!(v["sessions"].is_array(), "{v}");

    // The queue: a message for another domain waits (nothing answers on
    // its MX), the admin sees, retries and deletes it.
    let id = {
        let mut c = smtp_connect(server.submit_addr());
        let auth = base64(b"\0alice@example.test\0alice-pw-1");
        assert_eq!(smtp_cmd(&mut c, &format!("AUTH PLAIN {auth}")).0, 235);
        assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<alice@example.test>").0, 250);
        assert_eq!(smtp_cmd(&mut c, "RCPT TO:<carol@remote.test>").0, 250);
        assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
        c.send_raw(b"From: alice@example.test\r\nSubject: out\r\n\r\nbody\r\n.\r\n");
        let (code, text) = smtp_reply(&mut c);
        assert_eq!(code, 250, "{text}");
        text.rsplit("queued as ").next().unwrap().trim().to_string()
    };
    let q = json(&admin.get("/api/admin/queue"));
    assert_eq!(q["entries"][0]["id"], id.as_str(), "{q}");
    let e = json(&admin.get(&format!("/api/admin/queue/{id}")));
    assert!(
        e["headers"].as_str().unwrap().contains("Subject: out"),
        "{e}"
    );
    assert_eq!(
        post(
            &mut admin,
            &format!("/api/admin/queue/{id}/retry"),
            Value::Null
        )
        .0,
        200
    );
    assert_eq!(
        post(&mut admin, "/api/admin/queue/flush", Value::Null).0,
        200
    );
    let r = admin.json("DELETE", &format!("/api/admin/queue/{id}"), "", Some(&csrf));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json(&admin.get("/api/admin/queue"))["entries"],
        serde_json::json!([])
    );
    assert_eq!(admin.get("/api/admin/queue/NOSUCHID").status, 404);

    // A quarantined message (as the pipeline stores it), released by the
    // user.
    let held = env.cli(&["quarantine", "list", "alice@example.test"]).ok();
    assert_eq!(held.stdout, "", "nothing quarantined yet");
    env.cli_stdin(
        &["deliver", "alice@example.test"],
        b"Subject: x\r\n\r\ny\r\n",
    )
    .ok();
    let (mut user, user_csrf) = sign_in(&server, "alice@example.test", "alice-pw-1");
    let me = json(&user.get("/api/me"));
    assert_eq!(me["address"], "alice@example.test");
    assert_eq!(me["messages"], 2, "{me}");
    assert_eq!(me["policy"]["quota_bytes"], 1_000_000, "{me}");
    assert_eq!(me["policy"]["retention_days"], "never", "{me}");
    assert!(me.get("overrides").is_none(), "{me}");

    // The user changes the password: the new one works over POP3, the old
    // one no longer does, and the user's session goes on with the new
    // cookie.
    let r = user.json(
        "POST",
        "/api/me/password",
        &serde_json::json!({"current": "wrong", "new": "alice-pw-2"}).to_string(),
        Some(&user_csrf),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = user.json(
        "POST",
        "/api/me/password",
        &serde_json::json!({"current": "alice-pw-1", "new": "alice-pw-2"}).to_string(),
        Some(&user_csrf),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(user.get("/api/me").status, 200);
    let mut p = server.login_when_free("alice@example.test", "alice-pw-2");
    assert_eq!(p.stat().0, 2);
    p.quit();
    let mut p = server.connect();
    assert_eq!(p.login("alice@example.test", "alice-pw-1"), AUTH_FAILED);

    // Removing a user with its mail.
    let r = admin.json(
        "DELETE",
        "/api/admin/users/bob@new.test?purge=true",
        "",
        Some(&csrf),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["mail_kept"], false);
    let r = admin.json("DELETE", "/api/admin/domains/new.test", "", Some(&csrf));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin.json("DELETE", "/api/admin/domains/example.test", "", Some(&csrf));
    assert_eq!(r.status, 409, "a domain with users stays: {}", r.text());
}

/// The quarantine through the API: listed for the administrator with its
/// verdict, its header shown, released and deleted; the user sees only
/// their own.
#[test]
fn quarantine_through_the_api() {
    let env = env("");
    env.add_user("alice@example.test", "pw-a");
    env.add_user("bob@example.test", "pw-b");
    let server = env.start();
    // Quarantine two messages for alice the way the pipeline does: through
    // the store, Maildir or PostgreSQL (the pipeline itself is exercised in
    // browser.py).
    use postoffice_store::MailStore;
    let store: std::sync::Arc<dyn MailStore> = if env.on_postgres() {
        let config = postoffice_config::Config::load(&env.config).unwrap();
        postoffice_core::app::store(&config).unwrap()
    } else {
        std::sync::Arc::new(postoffice_store::Maildir::new(
            env.data_dir().join("mail"),
            "test.local",
        ))
    };
    for s in ["first", "second"] {
        let msg = format!(
            "X-Postoffice-Verdict: quarantine; spf=fail\r\nFrom: x@bad.test\r\nSubject: {s}\r\n\r\nbody\r\n"
        );
        store
            .deliver_quarantine("alice@example.test", &mut msg.as_bytes())
            .unwrap();
    }
    let (mut admin, csrf) = sign_in(&server, "root", ADMIN_PW);
    let all = json(&admin.get("/api/admin/quarantine"));
    assert_eq!(all["total"], 2, "{all}");
    let first = &all["messages"][0];
    assert_eq!(first["subject"], "first");
    assert_eq!(first["verdict"], "quarantine");
    assert_eq!(first["reason"], "SPF check failed");
    let uid = first["uid"].as_str().unwrap().to_string();
    let h = json(&admin.get(&format!("/api/admin/quarantine/alice@example.test/{uid}")));
    assert!(
        h["headers"].as_str().unwrap().contains("Subject: first"),
        "{h}"
    );
    let r = admin.json(
        "POST",
        &format!("/api/admin/quarantine/alice@example.test/{uid}/release"),
        "",
        Some(&csrf),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        admin
            .json(
                "POST",
                &format!("/api/admin/quarantine/alice@example.test/{uid}/release"),
                "",
                Some(&csrf)
            )
            .status,
        404
    );
    let mut p = server.login_when_free("alice@example.test", "pw-a");
    assert_eq!(p.stat().0, 1);
    p.quit();

    // Bob sees none of alice's; alice deletes hers.
    let (mut bob, bob_csrf) = sign_in(&server, "bob@example.test", "pw-b");
    assert_eq!(
        json(&bob.get("/api/me/quarantine"))["messages"],
        serde_json::json!([])
    );
    let second = json(&admin.get("/api/admin/quarantine"))["messages"][0]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = bob.json(
        "DELETE",
        &format!("/api/me/quarantine/{second}"),
        "",
        Some(&bob_csrf),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let (mut alice, alice_csrf) = sign_in(&server, "alice@example.test", "pw-a");
    let mine = json(&alice.get("/api/me/quarantine"));
    assert_eq!(mine["messages"][0]["uid"], second.as_str(), "{mine}");
    let r = alice.json(
        "DELETE",
        &format!("/api/me/quarantine/{second}"),
        "",
        Some(&alice_csrf),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&admin.get("/api/admin/quarantine"))["total"], 0);
}

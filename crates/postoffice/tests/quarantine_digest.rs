//! The quarantine digest run by `serve` (`[filter] quarantine_digest_hours`):
//! a user with a held message finds one digest in their maildrop over
//! POP3, listing it with the command that releases it, and the listing is
//! remembered (the CLI then finds nothing new). The poplib check in
//! tests/clients/pipeline.py covers `postoffice quarantine digest` with
//! messages quarantined by a real clamd.

mod common;

use std::time::Duration;

use common::{BIN, Env, wait_for};

const USER: &str = "alice@example.test";

/// A held message, written where the backend keeps the quarantine (as
/// the delivery would): a file in Maildir's `.Quarantine` with the size in
/// the name, or a quarantined row of `messages` in PostgreSQL.
fn hold(env: &Env, name: &str, subject: &str) {
    let body = format!(
        "X-Postoffice-Verdict: quarantine; dnsbl=off spf=fail dkim=off dmarc=off virus=off\r\n\
         From: Mallory <mallory@example.net>\r\nSubject: {subject}\r\n\r\nbuy now\r\n"
    );
    if let Some(url) = env.storage_url() {
        let hex: String = body.bytes().map(|b| format!("{b:02x}")).collect();
        common::pg_query(
            &url,
            &format!(
                "WITH b AS (INSERT INTO mailboxes (name) VALUES ('{USER}') \
                   ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id), \
                 m AS (INSERT INTO messages (mailbox_id, uid, size, received, quarantined) \
                   SELECT id, '{name}', {}, now(), true FROM b RETURNING id) \
                 INSERT INTO message_chunks (message_id, seq, data) \
                   SELECT id, 0, decode('{hex}', 'hex') FROM m",
                body.len()
            ),
        );
        return;
    }
    let q = env.maildir(USER).join(".Quarantine");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(q.join(sub)).unwrap();
    }
    let file = format!("{name},S={}", body.len());
    std::fs::write(q.join("new").join(file), body).unwrap();
}

#[test]
fn serve_delivers_the_digest_once() {
    let env = Env::new(
        BIN,
        "[filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\nquarantine_digest_hours = 24\n",
    );
    env.add_user(USER, "pw-alice");
    env.deliver(USER, b"Subject: ordinary\r\n\r\nhello\r\n");
    hold(&env, "1764900000.M1P1.test", "held for the digest");

    let server = env.start();
    let digest = wait_for(
        Duration::from_secs(60),
        "the digest in the maildrop",
        || {
            let mut c = server.login_when_free(USER, "pw-alice");
            let msgs = c.retr_all();
            c.cmd("QUIT");
            msgs.into_iter()
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .find(|m| m.contains("X-Postoffice-Notice: quarantine-digest"))
        },
    );
    assert!(
        digest.contains("\r\n   Subject: held for the digest\r\n"),
        "{digest}"
    );
    assert!(
        digest.contains("\r\n   Reason:  SPF check failed\r\n"),
        "{digest}"
    );
    assert!(
        digest.contains(
            "\r\n   Release: postoffice quarantine release alice@example.test 1764900000.M1P1.test\r\n"
        ),
        "{digest}"
    );
    assert!(
        !digest.contains("buy now"),
        "never the held content: {digest}"
    );

    // Remembered durably: nothing new for the CLI to list.
    let out = env.cli(&["quarantine", "digest", "--user", USER]).ok();
    assert!(
        out.stdout.contains("no quarantined messages"),
        "{}",
        out.stdout
    );
    // And the release command the digest gave works.
    env.cli(&[
        "quarantine",
        "release",
        "alice@example.test",
        "1764900000.M1P1.test",
    ])
    .ok();
    let mut c = server.login_when_free(USER, "pw-alice");
    let msgs = c.retr_all();
    c.cmd("QUIT");
    assert_eq!(msgs.len(), 3, "ordinary, digest, released");
    assert!(
        msgs.iter()
            .any(|m| String::from_utf8_lossy(m).contains("Subject: held for the digest"))
    );
}

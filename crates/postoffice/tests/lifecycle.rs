//! The server's life: shutdown, crash and restart on the same data, live
//! directory changes, and the provider policies (LOGIN-DELAY, retention).

mod common;

use std::path::{Path, PathBuf};

use common::*;

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice secret";

fn env_with_messages(extra: &str, n: usize) -> (Env, Vec<Vec<u8>>) {
    let env = Env::new(BIN, extra);
    env.add_user(ALICE, ALICE_PW);
    let msgs: Vec<Vec<u8>> = (1..=n)
        .map(|i| simple_message(&format!("m{i}"), &format!("body {i}")))
        .collect();
    for m in &msgs {
        env.deliver(ALICE, m);
    }
    (env, msgs)
}

/// Message files in a maildir's new/ and cur/.
fn message_files(maildir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(maildir.join(sub)) {
            out.extend(rd.map(|e| e.expect("dir entry").path()));
        }
    }
    out.sort();
    out
}

#[test]
fn sigterm_is_graceful_and_pending_deletions_are_dropped() {
    let (env, msgs) = env_with_messages("shutdown_timeout_secs = 5\n", 2);
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    let mut server = env.start();
    let mut c = server.login(ALICE, ALICE_PW);
    let uids = c.uidl();
    assert!(c.cmd("DELE 1").starts_with("+OK"));

    let status = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\n{}",
        env.log_contents()
    );
    // The idle session was told, and closed; nothing claims success.
    let lines = c.read_until_closed();
    assert!(lines.iter().all(|l| l.starts_with("-ERR")), "{lines:?}");
    drop(c);

    let server = env.start();
    let mut c = server.login(ALICE, ALICE_PW);
    assert_eq!(c.stat(), (2, total), "no QUIT, so nothing may be deleted");
    assert_eq!(c.uidl(), uids);
    c.quit();
}

#[test]
fn crash_leaves_no_stale_lock_and_deletes_nothing() {
    let (env, msgs) = env_with_messages("", 2);
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    let mut server = env.start();
    let mut c = server.login(ALICE, ALICE_PW);
    let uids = c.uidl();
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    server.kill(); // SIGKILL, reaped
    let _ = c.read_until_closed();
    drop(c);

    let server = env.start();
    // Straight in: a dead process holds no lock. On PostgreSQL the dead
    // node's session lease (lease_secs = 5) runs out instead: the maildrop
    // is free again within a bounded wait.
    let mut c = if env.on_postgres() {
        server.login_when_free(ALICE, ALICE_PW)
    } else {
        server.login(ALICE, ALICE_PW)
    };
    assert_eq!(c.stat(), (2, total));
    assert_eq!(c.uidl(), uids);
    c.quit();
}

#[test]
fn directory_changes_apply_without_restart() {
    let env = Env::new(BIN, "");
    let server = env.start();
    let mut c = server.connect();
    assert_eq!(
        c.login("bob@example.test", "bob pw 1"),
        AUTH_FAILED,
        "no such user yet"
    );
    c.cmd("QUIT");

    env.add_user("bob@example.test", "bob pw 1");
    env.wait_for_directory(&server);
    let mut c = server.login("bob@example.test", "bob pw 1");
    assert_eq!(c.stat(), (0, 0));
    c.quit();

    env.cli_stdin(
        &["user", "passwd", "bob@example.test", "--password-stdin"],
        b"bob pw 2\n",
    )
    .ok();
    env.wait_for_directory(&server);
    let mut c = server.connect();
    assert_eq!(
        c.login("bob@example.test", "bob pw 1"),
        AUTH_FAILED,
        "old password"
    );
    let reply = c.login("bob@example.test", "bob pw 2");
    assert!(reply.starts_with("+OK"), "new password: {reply:?}");
    c.quit();
}

#[test]
fn login_delay_is_advertised_and_enforced() {
    let (env, _) = env_with_messages("", 1);
    env.cli(&["user", "set", ALICE, "--login-delay", "3600"])
        .ok();
    let server = env.start();
    let mut c = server.connect();
    let capa = c.multi_lines("CAPA");
    assert!(
        capa.iter().any(|l| l == "LOGIN-DELAY 3600"),
        "pre-login CAPA: {capa:?}"
    );
    let reply = c.login(ALICE, ALICE_PW);
    assert!(reply.starts_with("+OK"), "first login: {reply:?}");
    let capa = c.multi_lines("CAPA");
    assert!(
        capa.iter().any(|l| l == "LOGIN-DELAY 3600"),
        "CAPA after login: {capa:?}"
    );
    c.quit();

    let mut c = server.connect();
    let reply = c.login(ALICE, ALICE_PW);
    assert!(
        reply.starts_with("-ERR [LOGIN-DELAY]"),
        "second login: {reply:?}"
    );
    c.cmd("QUIT");
}

/// Alice's stored messages, each by a name of its own: the file names in
/// new/ and cur/ of her maildir, or her messages' UIDs in PostgreSQL.
fn alice_messages(env: &Env) -> Vec<String> {
    match env.storage_url() {
        Some(url) => pg_query(
            &url,
            "SELECT m.uid FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id \
             WHERE b.name = 'alice@example.test' ORDER BY m.uid",
        )
        .into_iter()
        .map(|row| row.concat())
        .collect(),
        None => message_files(&env.maildir(ALICE))
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    }
}

/// An old message in alice's maildrop, received at `secs` (Unix time),
/// with `content` (CRLF): on Maildir a file planted in cur/ as another
/// Maildir agent would; on PostgreSQL delivered, then back-dated. Returns
/// its name as [`alice_messages`] lists it, and its stored size.
fn plant(env: &Env, secs: u64, tag: &str, content: &[u8]) -> (String, usize) {
    let Some(url) = env.storage_url() else {
        let n = content.len();
        let path = env
            .maildir(ALICE)
            .join("cur")
            .join(format!("{secs}.M1P1Q1.{tag},S={n},W={n}:2,S"));
        std::fs::write(&path, content).expect("plant message");
        return (path.display().to_string(), n);
    };
    env.deliver(ALICE, content);
    let row = pg_query(
        &url,
        &format!(
            "UPDATE messages SET received = to_timestamp({secs}) \
             WHERE id = (SELECT max(id) FROM messages) RETURNING uid, size"
        ),
    )
    .concat();
    let [uid, size] = &row[..] else {
        panic!("{row:?}")
    };
    (uid.clone(), size.parse().expect("size"))
}

#[test]
fn retention_expires_old_mail_but_not_under_a_session() {
    let (env, _) = env_with_messages("", 1);
    let new_messages = alice_messages(&env);
    assert_eq!(new_messages.len(), 1);
    env.cli(&["domain", "set", "example.test", "--retention-days", "7"])
        .ok();

    let old = b"From: old@example.net\r\nSubject: ancient\r\n\r\nfrom 2001\r\n";
    let (old1, size) = plant(&env, 1_000_000_000, "old", old);

    let out = env.cli(&["expire", "--dry-run"]).ok();
    assert!(
        out.stdout
            .contains(&format!("{ALICE}: would expire 1 message(s), {size} bytes")),
        "{out:#?}"
    );
    assert!(
        alice_messages(&env).contains(&old1),
        "a dry run deletes nothing"
    );

    let out = env.cli(&["expire"]).ok();
    assert!(
        out.stdout
            .contains(&format!("{ALICE}: expired 1 message(s)")),
        "{out:#?}"
    );
    assert_eq!(
        alice_messages(&env),
        new_messages,
        "the old message is expired, the new one stays"
    );

    // With the server: EXPIRE is advertised, and a session's maildrop is
    // not touched.
    let server = env.start();
    let mut c = server.connect();
    let capa = c.multi_lines("CAPA");
    assert!(
        capa.iter().any(|l| l == "EXPIRE 7"),
        "pre-login CAPA: {capa:?}"
    );
    // The server's own sweeper may hold the lock for a moment at start.
    c.cmd("QUIT");
    let mut c = server.login_when_free(ALICE, ALICE_PW);
    let capa = c.multi_lines("CAPA");
    assert!(
        capa.iter().any(|l| l == "EXPIRE 7"),
        "CAPA after login: {capa:?}"
    );
    let (old2, _) = plant(&env, 1_000_000_000, "old2", old);
    let out = env.cli(&["expire"]).ok();
    assert!(
        out.stdout.contains(&format!(
            "{ALICE}: skipped, a POP3 session holds the maildrop"
        )),
        "{out:#?}"
    );
    assert!(
        alice_messages(&env).contains(&old2),
        "expire must skip a maildrop held by a session"
    );
    assert_eq!(c.stat().0, 1, "the session's snapshot is unchanged");
    c.quit();
    drop(c);

    // Once the session is over, the next run expires it.
    let out = env.cli(&["expire"]).ok();
    assert!(
        out.stdout
            .contains(&format!("{ALICE}: expired 1 message(s)")),
        "{out:#?}"
    );
    assert_eq!(alice_messages(&env), new_messages);
}

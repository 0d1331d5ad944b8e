//! Greylisting (RFC 6647) on the MX port, end to end with the real binary:
//! first attempt 451 4.7.1, a retry after the delay 250, the state kept
//! across a restart, allow-listed clients never greylisted.

mod common;

use std::time::Duration;

use common::{BIN, Env, Server, smtp_cmd as cmd, smtp_connect, wait_for};

const FILTER: &str = "[filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\ngreylist = true\n";

fn env_with(extra: &str) -> Env {
    let env = Env::new(BIN, &format!("{FILTER}{extra}"));
    env.add_user("alice@example.test", "pw-alice");
    env.add_user("bob@example.test", "pw-bob");
    env
}

/// The reply to RCPT TO:<to> in a transaction from bob@example.net.
fn rcpt(server: &Server, to: &str) -> (u16, String) {
    let mut c = smtp_connect(server.smtp_addr());
    let (code, text) = cmd(&mut c, "MAIL FROM:<bob@example.net>");
    assert_eq!(code, 250, "{text}");
    let out = cmd(&mut c, &format!("RCPT TO:<{to}>"));
    cmd(&mut c, "QUIT");
    out
}

#[test]
fn first_attempt_and_early_retry_are_greylisted() {
    let env = env_with("greylist_delay_secs = 3600\n");
    let server = env.start();
    let (code, text) = rcpt(&server, "alice@example.test");
    assert_eq!(code, 451, "{text}");
    assert!(
        text.starts_with("451 4.7.1 Greylisted, please try again in "),
        "{text}"
    );
    let (code, text) = rcpt(&server, "alice@example.test");
    assert_eq!(code, 451, "an early retry is greylisted too: {text}");
}

#[test]
fn retry_after_the_delay_passes_and_is_remembered_after_a_restart() {
    let env = env_with("greylist_delay_secs = 1\n");
    let server = env.start();
    let (code, text) = rcpt(&server, "alice@example.test");
    assert_eq!(code, 451, "{text}");
    // Retry as a real MTA would, until the delay has passed.
    let (_, text) = wait_for(Duration::from_secs(30), "the retry to be accepted", || {
        let r = rcpt(&server, "alice@example.test");
        (r.0 == 250).then_some(r)
    });
    assert!(text.starts_with("250"), "{text}");
    drop(server);

    // After a restart the client that retried is still known: even a new
    // recipient is accepted at the first attempt.
    let server = env.start();
    let (code, text) = rcpt(&server, "bob@example.test");
    assert_eq!(code, 250, "{text}");
}

#[test]
fn allow_listed_client_is_never_greylisted() {
    let env = env_with("greylist_delay_secs = 3600\ngreylist_allow = [\"127.0.0.0/8\"]\n");
    let server = env.start();
    let (code, text) = rcpt(&server, "alice@example.test");
    assert_eq!(code, 250, "{text}");
}

/// A real client, swaks: its first attempt is greylisted (451 4.7.1); run
/// again as an MTA's retry would be, it gets through once the delay has
/// passed, and the message is delivered.
#[test]
fn swaks_is_greylisted_then_gets_through_on_a_retry_after_the_delay() {
    let swaks = common::program("swaks", "swaks");
    let env = env_with("greylist_delay_secs = 2\n");
    let server = env.start();
    let addr = server.smtp_addr();
    let run = || {
        let out = std::process::Command::new(&swaks)
            .args(["--server", &addr.ip().to_string()])
            .args(["--port", &addr.port().to_string()])
            .args(["--from", "bob@example.net", "--to", "alice@example.test"])
            .args(["--helo", "mx.example.net", "--timeout", "20"])
            .args(["--header", "Subject: greylisted hello"])
            .args(["--body", "Hello Alice"])
            .output()
            .expect("run swaks");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, first) = run();
    assert!(!ok, "{first}");
    assert!(
        first.contains("<** 451 4.7.1 Greylisted, please try again in "),
        "{first}"
    );
    let last = wait_for(
        Duration::from_secs(60),
        "a swaks retry to get through",
        || {
            let (ok, out) = run();
            ok.then_some(out)
        },
    );
    assert!(last.contains("<-  250 "), "{last}");
    let mut c = server.login_when_free("alice@example.test", "pw-alice");
    let got = c.retr_all();
    c.cmd("QUIT");
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: greylisted hello"));
}

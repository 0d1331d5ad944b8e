//! Inbound rate limits per client on the MX port, over real sockets:
//! `421 4.7.0` and a closed connection beyond `max_connections_per_minute`,
//! `451 4.7.1` at MAIL FROM beyond `max_messages_per_minute`; exempt
//! networks are never limited.

mod common;

use std::io::Read;

use common::{BIN, Env, smtp_cmd as cmd, smtp_connect, smtp_reply as reply, tcp_connect};

fn env_with(extra: &str) -> Env {
    let env = Env::new(
        BIN,
        &format!("{extra}[filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n"),
    );
    env.add_user("alice@example.test", "pw-alice");
    env
}

/// The first `max_connections_per_minute` connections get the greeting;
/// the next gets 421 4.7.0 instead and is closed by the server.
#[test]
fn connections_beyond_the_rate_get_421_and_are_closed() {
    let env = env_with("smtp.max_connections_per_minute = 3\nsmtp.rate_limit_exempt = []\n");
    let server = env.start();
    for _ in 0..3 {
        let mut c = smtp_connect(server.smtp_addr());
        assert_eq!(cmd(&mut c, "QUIT").0, 221);
    }
    let mut tcp = tcp_connect(server.smtp_addr());
    let mut got = Vec::new();
    // read_to_end returns only when the server closes the connection.
    tcp.read_to_end(&mut got)
        .expect("read until the server closes");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("421 4.7.0 Too many connections from your address"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    // Submission is not the MX port: not limited.
    let mut c = common::Client::new(tcp_connect(server.submit_addr()));
    assert_eq!(reply(&mut c).0, 220);
}

/// Transactions beyond `max_messages_per_minute` get 451 4.7.1 at MAIL
/// FROM, in this connection and in a new one.
#[test]
fn messages_beyond_the_rate_get_451_at_mail_from() {
    let env = env_with("smtp.max_messages_per_minute = 2\nsmtp.rate_limit_exempt = []\n");
    let server = env.start();
    let mut c = smtp_connect(server.smtp_addr());
    for _ in 0..2 {
        let (code, text) = cmd(&mut c, "MAIL FROM:<bob@example.net>");
        assert_eq!(code, 250, "{text}");
        assert_eq!(cmd(&mut c, "RSET").0, 250);
    }
    let (code, text) = cmd(&mut c, "MAIL FROM:<bob@example.net>");
    assert_eq!(code, 451, "{text}");
    assert!(
        text.starts_with("451 4.7.1 Too many messages from your address"),
        "{text}"
    );
    let (code, _) = cmd(&mut c, "RCPT TO:<alice@example.test>");
    assert_eq!(code, 503, "no transaction was started");
    let mut c2 = smtp_connect(server.smtp_addr());
    assert_eq!(cmd(&mut c2, "MAIL FROM:<bob@example.net>").0, 451);
}

/// By default loopback is exempt: a low limit does not apply to it.
#[test]
fn exempt_clients_are_never_limited() {
    let env = env_with("smtp.max_connections_per_minute = 1\nsmtp.max_messages_per_minute = 1\n");
    let server = env.start();
    for _ in 0..3 {
        let mut c = smtp_connect(server.smtp_addr());
        assert_eq!(cmd(&mut c, "MAIL FROM:<bob@example.net>").0, 250);
        assert_eq!(cmd(&mut c, "QUIT").0, 221);
    }
}

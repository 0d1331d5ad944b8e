//! Every reply and error path of the session, without a socket.

use super::*;
use crate::line::Frame;

struct Drop3 {
    sizes: Vec<u64>,
    uids: Vec<String>,
}

impl Listing for Drop3 {
    fn count(&self) -> usize {
        self.sizes.len()
    }
    fn size(&self, i: usize) -> u64 {
        self.sizes[i]
    }
    fn uid(&self, i: usize) -> &str {
        &self.uids[i]
    }
}

fn listing() -> Arc<dyn Listing> {
    Arc::new(Drop3 {
        sizes: vec![100, 200, 300],
        uids: vec!["u1".into(), "u2".into(), "u3".into()],
    })
}

fn policy() -> UserPolicy {
    UserPolicy {
        expire: Expire::Days(30),
        login_delay: 0,
    }
}

/// Feed a line, return (reply text, action).
fn send(s: &mut ServerSession, line: &str) -> (String, Action) {
    let mut out = Vec::new();
    let a = s.handle(Frame::Line(line.as_bytes()), &mut out);
    (String::from_utf8(out).unwrap(), a)
}

fn logged_in() -> ServerSession {
    let mut s = ServerSession::new(SessionConfig::default());
    send(&mut s, "USER alice@example.test");
    let (_, a) = send(&mut s, "PASS secret");
    assert!(matches!(a, Action::Authenticate { .. }));
    let mut out = Vec::new();
    s.login_succeeded("alice@example.test".into(), listing(), policy(), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "+OK Maildrop locked and ready, 3 messages (600 octets).\r\n"
    );
    s
}

#[test]
fn greeting() {
    let s = ServerSession::new(SessionConfig::default());
    let mut out = Vec::new();
    s.greeting(&mut out);
    assert!(out.starts_with(b"+OK "));
    assert!(out.ends_with(b"\r\n"));
}

#[test]
fn user_pass_yields_authenticate() {
    let mut s = ServerSession::new(SessionConfig::default());
    assert_eq!(send(&mut s, "USER bob@x").0, "+OK\r\n");
    let (r, a) = send(&mut s, "PASS pw with spaces");
    assert_eq!(r, "");
    assert_eq!(
        a,
        Action::Authenticate {
            user: "bob@x".into(),
            password: b"pw with spaces".to_vec(),
            mechanism: "USER"
        }
    );
}

#[test]
fn pass_without_user_is_refused() {
    let mut s = ServerSession::new(SessionConfig::default());
    let (r, a) = send(&mut s, "PASS x");
    assert!(r.starts_with("-ERR"));
    assert_eq!(a, Action::None);
}

#[test]
fn failed_login_returns_to_authorization_with_auth_code() {
    let mut s = ServerSession::new(SessionConfig::default());
    send(&mut s, "USER a@b");
    send(&mut s, "PASS wrong");
    let mut out = Vec::new();
    s.login_failed(AuthFailure::Credentials, &mut out);
    assert_eq!(out, b"-ERR [AUTH] Authentication failed.\r\n");
    // USER must be given again: PASS alone is refused.
    assert!(send(&mut s, "PASS again").0.starts_with("-ERR"));
    assert!(matches!(send(&mut s, "USER a@b").1, Action::None));
    assert!(matches!(
        send(&mut s, "PASS x").1,
        Action::Authenticate { .. }
    ));
}

#[test]
fn failure_codes() {
    for (why, code) in [
        (AuthFailure::InUse, "[IN-USE]"),
        (AuthFailure::LoginDelay, "[LOGIN-DELAY]"),
        (AuthFailure::TempFail, "[SYS/TEMP]"),
        (AuthFailure::PermFail, "[SYS/PERM]"),
    ] {
        let mut s = ServerSession::new(SessionConfig::default());
        send(&mut s, "USER a@b");
        send(&mut s, "PASS x");
        let mut out = Vec::new();
        s.login_failed(why, &mut out);
        let r = String::from_utf8(out).unwrap();
        assert!(r.starts_with(&format!("-ERR {code} ")), "{r}");
    }
}

#[test]
fn plaintext_auth_refused_without_tls() {
    let cfg = SessionConfig {
        plaintext_auth: false,
        stls_available: true,
        ..SessionConfig::default()
    };
    let mut s = ServerSession::new(cfg);
    let (capa, _) = send(&mut s, "CAPA");
    assert!(!capa.contains("\r\nUSER\r\n"));
    assert!(!capa.contains("SASL"));
    assert!(capa.contains("\r\nSTLS\r\n"));
    for cmd in ["USER a@b", "PASS x", "AUTH PLAIN AGFAYgB4"] {
        let (r, a) = send(&mut s, cmd);
        assert!(r.starts_with("-ERR [AUTH] "), "{cmd}: {r}");
        assert_eq!(a, Action::None);
    }
    // After STLS the same commands work and STLS is no longer offered.
    assert_eq!(send(&mut s, "STLS").1, Action::StartTls);
    s.tls_started();
    let (capa, _) = send(&mut s, "CAPA");
    assert!(capa.contains("\r\nUSER\r\n"));
    assert!(capa.contains("\r\nSASL PLAIN LOGIN\r\n"));
    assert!(!capa.contains("STLS"));
    assert!(send(&mut s, "STLS").0.starts_with("-ERR"));
    assert_eq!(send(&mut s, "USER a@b").0, "+OK\r\n");
}

#[test]
fn stls_forgets_user_and_is_refused_when_unavailable() {
    let mut s = ServerSession::new(SessionConfig {
        stls_available: true,
        ..SessionConfig::default()
    });
    send(&mut s, "USER a@b");
    assert_eq!(send(&mut s, "STLS").1, Action::StartTls);
    s.tls_started();
    assert!(send(&mut s, "PASS x").0.starts_with("-ERR"));

    let mut s = ServerSession::new(SessionConfig::default());
    let (r, a) = send(&mut s, "STLS");
    assert!(r.starts_with("-ERR"));
    assert_eq!(a, Action::None);
}

#[test]
fn capa_lists_everything_advertised() {
    let mut s = ServerSession::new(SessionConfig {
        stls_available: true,
        expire: Advertised {
            value: Expire::Days(7),
            per_user: true,
        },
        login_delay: Advertised {
            value: 60,
            per_user: false,
        },
        ..SessionConfig::default()
    });
    let (capa, _) = send(&mut s, "CAPA");
    assert!(capa.starts_with("+OK"));
    assert!(capa.ends_with("\r\n.\r\n"));
    for cap in [
        "TOP",
        "USER",
        "SASL PLAIN LOGIN",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "UIDL",
        "EXPIRE 7 USER",
        "LOGIN-DELAY 60",
        "IMPLEMENTATION postoffice",
        "STLS",
        "UTF8 USER",
    ] {
        assert!(
            capa.contains(&format!("\r\n{cap}\r\n")),
            "missing {cap} in {capa}"
        );
    }
}

#[test]
fn capa_after_login_shows_user_policy() {
    let mut s = logged_in();
    let (capa, _) = send(&mut s, "CAPA");
    assert!(capa.contains("\r\nEXPIRE 30\r\n"), "{capa}");
    assert!(!capa.contains("EXPIRE 30 USER"), "{capa}");
    // Not offered on this connection before login, so not after it either.
    assert!(!capa.contains("STLS"), "{capa}");
}

/// RFC 2449 section 5: every capability available in the AUTHORIZATION
/// state is announced in both states.
#[test]
fn capa_before_login_is_announced_after_login() {
    let cfg = SessionConfig {
        stls_available: true,
        ..SessionConfig::default()
    };
    let mut s = ServerSession::new(cfg);
    let (before, _) = send(&mut s, "CAPA");
    send(&mut s, "USER alice@example.test");
    let (_, a) = send(&mut s, "PASS secret");
    assert!(matches!(a, Action::Authenticate { .. }));
    let mut out = Vec::new();
    s.login_succeeded("alice@example.test".into(), listing(), policy(), &mut out);
    let (after, _) = send(&mut s, "CAPA");
    let names = |capa: &str| -> Vec<String> {
        capa.lines()
            .skip(1)
            .take_while(|l| *l != ".")
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    };
    let after_names = names(&after);
    for cap in names(&before) {
        assert!(
            after_names.contains(&cap),
            "{cap} missing after login:\n{after}"
        );
    }
    assert!(after.contains("\r\nSTLS\r\n") && after.contains("\r\nUTF8 USER\r\n"));
    assert!(after.contains("\r\nUSER\r\n") && after.contains("\r\nSASL PLAIN LOGIN\r\n"));
}

#[test]
fn expire_never() {
    let mut s = ServerSession::new(SessionConfig::default());
    assert!(send(&mut s, "CAPA").0.contains("\r\nEXPIRE NEVER\r\n"));
}

#[test]
fn sasl_plain_initial_and_continuation() {
    let mut s = ServerSession::new(SessionConfig::default());
    let ir = sasl::encode(b"\0alice@x\0pw");
    let (_, a) = send(&mut s, &format!("AUTH PLAIN {ir}"));
    assert_eq!(
        a,
        Action::Authenticate {
            user: "alice@x".into(),
            password: b"pw".to_vec(),
            mechanism: "PLAIN"
        }
    );

    let mut s = ServerSession::new(SessionConfig::default());
    assert_eq!(send(&mut s, "AUTH PLAIN").0, "+ \r\n");
    let (_, a) = send(&mut s, &ir);
    assert!(matches!(a, Action::Authenticate { .. }));
}

#[test]
fn sasl_login() {
    let mut s = ServerSession::new(SessionConfig::default());
    assert_eq!(send(&mut s, "AUTH LOGIN").0, "+ VXNlcm5hbWU6\r\n");
    assert_eq!(
        send(&mut s, &sasl::encode(b"alice@x")).0,
        "+ UGFzc3dvcmQ6\r\n"
    );
    let (_, a) = send(&mut s, &sasl::encode(b"pw"));
    assert_eq!(
        a,
        Action::Authenticate {
            user: "alice@x".into(),
            password: b"pw".to_vec(),
            mechanism: "LOGIN"
        }
    );
}

#[test]
fn sasl_cancel_bad_base64_and_unknown_mechanism() {
    let mut s = ServerSession::new(SessionConfig::default());
    send(&mut s, "AUTH PLAIN");
    let (r, a) = send(&mut s, "*");
    assert!(r.starts_with("-ERR"));
    assert_eq!(a, Action::None);
    // Back in AUTHORIZATION: commands work again.
    assert!(send(&mut s, "CAPA").0.starts_with("+OK"));

    send(&mut s, "AUTH LOGIN");
    let (r, _) = send(&mut s, "!!!!");
    assert!(r.starts_with("-ERR Invalid base64"), "{r}");

    let (r, _) = send(&mut s, "AUTH PLAIN %%%%");
    assert!(r.starts_with("-ERR Invalid base64"), "{r}");

    let (r, _) = send(&mut s, "AUTH CRAM-MD5");
    assert!(r.starts_with("-ERR"), "{r}");

    // Malformed PLAIN (no NULs) is an auth failure, not a crash.
    let (r, _) = send(&mut s, &format!("AUTH PLAIN {}", sasl::encode(b"junk")));
    assert!(r.starts_with("-ERR [AUTH]"), "{r}");
}

#[test]
fn auth_without_mechanism_lists_them() {
    let mut s = ServerSession::new(SessionConfig::default());
    assert_eq!(send(&mut s, "AUTH").0, "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n");
}

#[test]
fn transaction_commands_before_login_are_refused() {
    let mut s = ServerSession::new(SessionConfig::default());
    for c in [
        "STAT", "LIST", "RETR 1", "DELE 1", "RSET", "TOP 1 1", "UIDL",
    ] {
        let (r, a) = send(&mut s, c);
        assert!(r.starts_with("-ERR"), "{c}");
        assert_eq!(a, Action::None);
    }
}

#[test]
fn stat_list_uidl() {
    let mut s = logged_in();
    assert_eq!(send(&mut s, "STAT").0, "+OK 3 600\r\n");
    assert_eq!(
        send(&mut s, "LIST").0,
        "+OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n"
    );
    assert_eq!(send(&mut s, "LIST 2").0, "+OK 2 200\r\n");
    assert!(send(&mut s, "LIST 4").0.starts_with("-ERR"));
    assert_eq!(
        send(&mut s, "UIDL").0,
        "+OK Unique-ID listing follows\r\n1 u1\r\n2 u2\r\n3 u3\r\n.\r\n"
    );
    assert_eq!(send(&mut s, "UIDL 3").0, "+OK 3 u3\r\n");
}

#[test]
fn dele_hides_message_and_rset_restores() {
    let mut s = logged_in();
    assert!(send(&mut s, "DELE 2").0.starts_with("+OK"));
    assert!(send(&mut s, "DELE 2").0.starts_with("-ERR"));
    assert_eq!(send(&mut s, "STAT").0, "+OK 2 400\r\n");
    assert_eq!(
        send(&mut s, "LIST").0,
        "+OK 2 messages (400 octets)\r\n1 100\r\n3 300\r\n.\r\n"
    );
    assert!(send(&mut s, "LIST 2").0.starts_with("-ERR"));
    assert!(send(&mut s, "UIDL 2").0.starts_with("-ERR"));
    assert!(send(&mut s, "RETR 2").0.starts_with("-ERR"));
    assert!(send(&mut s, "TOP 2 0").0.starts_with("-ERR"));
    assert_eq!(
        send(&mut s, "RSET").0,
        "+OK Maildrop has 3 messages (600 octets).\r\n"
    );
    assert_eq!(send(&mut s, "STAT").0, "+OK 3 600\r\n");
}

#[test]
fn retr_and_top_request_streaming() {
    let mut s = logged_in();
    let (r, a) = send(&mut s, "RETR 3");
    assert_eq!(r, "", "the +OK waits until the message is open");
    assert_eq!(
        a,
        Action::Retrieve {
            index: 2,
            top: None
        }
    );
    let mut out = Vec::new();
    s.retrieve_started(2, None, &mut out);
    assert_eq!(out, b"+OK 300 octets\r\n");
    let (r, a) = send(&mut s, "TOP 1 5");
    assert_eq!(r, "");
    assert_eq!(
        a,
        Action::Retrieve {
            index: 0,
            top: Some(5)
        }
    );
    let mut out = Vec::new();
    s.retrieve_started(0, Some(5), &mut out);
    assert!(out.starts_with(b"+OK"));
    assert!(send(&mut s, "RETR 0").0.starts_with("-ERR"));
    assert!(send(&mut s, "RETR 9").0.starts_with("-ERR"));
    assert_eq!(s.stats().retr, 1);
    assert_eq!(s.stats().retr_bytes, 300);
}

#[test]
fn a_message_that_cannot_be_opened_gets_one_err_and_the_session_goes_on() {
    let mut s = logged_in();
    let (r, a) = send(&mut s, "RETR 1");
    assert_eq!(
        (r.as_str(), &a),
        (
            "",
            &Action::Retrieve {
                index: 0,
                top: None
            }
        )
    );
    let mut out = Vec::new();
    s.retrieve_failed(&mut out);
    assert_eq!(
        out,
        b"-ERR [SYS/TEMP] Message is unavailable; try again later.\r\n"
    );
    assert_eq!(s.stats().retr, 0, "nothing was retrieved");
    assert_eq!(send(&mut s, "NOOP").0, "+OK\r\n");
}

#[test]
fn timeout_and_shutdown_close_with_their_own_reply() {
    let mut s = logged_in();
    let mut out = Vec::new();
    s.timed_out(&mut out);
    assert_eq!(out, b"-ERR Autologout; idle for too long.\r\n");
    assert!(s.is_closed());
    let mut s = logged_in();
    let mut out = Vec::new();
    s.shutting_down(&mut out);
    assert_eq!(out, b"-ERR [SYS/TEMP] Server shutting down.\r\n");
    assert!(s.is_closed());
    assert_eq!(send(&mut s, "QUIT").1, Action::Close, "no UPDATE after it");
}

#[test]
fn quit_in_transaction_updates_only_deleted() {
    let mut s = logged_in();
    send(&mut s, "DELE 1");
    send(&mut s, "DELE 3");
    let (r, a) = send(&mut s, "QUIT");
    assert_eq!(r, "");
    assert_eq!(
        a,
        Action::Update {
            deleted: vec![0, 2]
        }
    );
    let mut out = Vec::new();
    assert_eq!(s.update_finished(Ok(()), &mut out), Action::Close);
    assert!(out.starts_with(b"+OK"));
    assert!(s.is_closed());
}

#[test]
fn update_failure_reports_sys_temp() {
    let mut s = logged_in();
    send(&mut s, "DELE 1");
    send(&mut s, "QUIT");
    let mut out = Vec::new();
    s.update_finished(Err(()), &mut out);
    assert!(out.starts_with(b"-ERR [SYS/TEMP]"));
}

#[test]
fn quit_in_authorization_closes_without_update() {
    let mut s = ServerSession::new(SessionConfig::default());
    let (r, a) = send(&mut s, "QUIT");
    assert!(r.starts_with("+OK"));
    assert_eq!(a, Action::Close);
}

#[test]
fn auth_commands_after_login_are_refused() {
    let mut s = logged_in();
    for c in [
        "USER x@y",
        "PASS z",
        "AUTH PLAIN",
        "STLS",
        "UTF8",
        "APOP a b",
    ] {
        let (r, a) = send(&mut s, c);
        assert!(r.starts_with("-ERR"), "{c}");
        assert_eq!(a, Action::None);
    }
    assert_eq!(send(&mut s, "STAT").0, "+OK 3 600\r\n");
}

#[test]
fn junk_and_too_long_keep_the_session_alive() {
    let mut s = logged_in();
    let mut out = Vec::new();
    assert_eq!(s.handle(Frame::TooLong, &mut out), Action::None);
    assert!(out.starts_with(b"-ERR"));
    let mut out = Vec::new();
    s.handle(Frame::Line(b"\0\xff\xfe junk"), &mut out);
    assert!(out.starts_with(b"-ERR"));
    assert_eq!(send(&mut s, "NOOP").0, "+OK\r\n");
}

#[test]
fn too_many_bad_commands_close() {
    let mut s = ServerSession::new(SessionConfig {
        max_bad_commands: 3,
        ..SessionConfig::default()
    });
    assert_eq!(send(&mut s, "FOO").1, Action::None);
    assert_eq!(send(&mut s, "BAR").1, Action::None);
    assert_eq!(send(&mut s, "BAZ").1, Action::Close);
    assert!(s.is_closed());
}

#[test]
fn utf8_command() {
    let mut s = ServerSession::new(SessionConfig::default());
    assert!(send(&mut s, "UTF8").0.starts_with("+OK"));
    assert_eq!(send(&mut s, "USER jösé@example.test").0, "+OK\r\n");
    let (_, a) = send(&mut s, "PASS pässwörd");
    assert_eq!(
        a,
        Action::Authenticate {
            user: "jösé@example.test".into(),
            password: "pässwörd".as_bytes().to_vec(),
            mechanism: "USER"
        }
    );
}

#[test]
fn input_while_pending_is_refused() {
    let mut s = ServerSession::new(SessionConfig::default());
    send(&mut s, "USER a@b");
    send(&mut s, "PASS x");
    let (r, a) = send(&mut s, "STAT");
    assert!(r.starts_with("-ERR"));
    assert_eq!(a, Action::None);
}

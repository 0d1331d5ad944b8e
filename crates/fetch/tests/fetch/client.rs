//! The client against scripted fake servers: APOP, response codes,
//! pipelining, hostile servers, servers without UIDL.

use std::time::Duration;

use postoffice_fetch::error::Limit;
use postoffice_fetch::{
    Account, AuthMethod, Client, ConnectOptions, Destination, Error, FetchError, Policy, Secret,
    TlsMode, fetch_account,
};

use crate::common::*;

fn plain(addr: std::net::SocketAddr) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", TlsMode::None);
    o.port = addr.port();
    o.io_timeout = Duration::from_secs(5);
    o
}

const CAPA: &str = "+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\nRESP-CODES\r\n.\r\n";

#[tokio::test]
async fn apop_is_used_when_the_greeting_has_a_timestamp() {
    let (addr, seen) = fake_server(
        "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n",
        |line| match line {
            "CAPA" => Some(CAPA.into()),
            "APOP mrose c4c9334bac560ecc979e58001b3e22fb" => Some("+OK maildrop has 0\r\n".into()),
            "STAT" => Some("+OK 0 0\r\n".into()),
            "QUIT" => Some("+OK bye\r\n".into()),
            _ => Some("-ERR no\r\n".into()),
        },
    )
    .await;
    let mut c = Client::connect(&plain(addr)).await.unwrap();
    c.login("mrose", "tanstaaf", AuthMethod::Auto)
        .await
        .unwrap();
    assert_eq!(c.stat().await.unwrap(), (0, 0));
    c.quit().await.unwrap();
    assert!(!seen.lines().iter().any(|l| l.contains("tanstaaf")));
}

#[tokio::test]
async fn apop_without_timestamp_is_unsupported() {
    let (addr, _) = fake_server("+OK ready\r\n", |line| match line {
        "CAPA" => Some(CAPA.into()),
        _ => Some("-ERR no\r\n".into()),
    })
    .await;
    let mut c = Client::connect(&plain(addr)).await.unwrap();
    let e = c.login("u", "p", AuthMethod::Apop).await.unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn response_codes_become_typed_errors() {
    for (reply, check, temporary) in [
        ("-ERR [IN-USE] locked\r\n", "InUse", true),
        ("-ERR [LOGIN-DELAY] wait\r\n", "LoginDelay", true),
        ("-ERR [SYS/TEMP] disk\r\n", "SysTemp", true),
        ("-ERR [SYS/PERM] gone\r\n", "SysPerm", false),
        ("-ERR [AUTH] bad password\r\n", "Auth", false),
        ("-ERR nope\r\n", "Auth", false),
    ] {
        let (addr, _) = fake_server("+OK ready\r\n", move |line| {
            Some(match line {
                "CAPA" => CAPA.into(),
                l if l.starts_with("USER") => "+OK\r\n".into(),
                l if l.starts_with("PASS") => reply.into(),
                _ => "-ERR what\r\n".into(),
            })
        })
        .await;
        let mut c = Client::connect(&plain(addr)).await.unwrap();
        let e = c.login("u", "p", AuthMethod::User).await.unwrap_err();
        let name = format!("{e:?}");
        assert!(name.starts_with(check), "{reply:?} gave {name}");
        assert_eq!(e.is_temporary(), temporary, "{reply:?}");
        assert!(!c.is_poisoned(), "an -ERR does not poison the session");
    }
}

#[tokio::test]
async fn greeting_with_sys_temp_is_temporary() {
    let (addr, _) = fake_server("-ERR [SYS/TEMP] Server is busy\r\n", |_| None).await;
    let e = Client::connect(&plain(addr)).await.unwrap_err();
    assert!(matches!(e, Error::SysTemp(_)), "{e:?}");
}

#[tokio::test]
async fn list_and_uidl_are_pipelined_and_deles_batched() {
    // The fake answers LIST only once UIDL has arrived too, and the DELEs
    // only once all three are in: a client waiting for each reply would
    // time out.
    let mut deles = 0;
    let (addr, _) = fake_server("+OK ready\r\n", move |line| {
        Some(match line {
            "CAPA" => CAPA.into(),
            "LIST" => String::new(),
            "UIDL" => {
                "+OK 2 messages\r\n1 10\r\n2 20\r\n.\r\n+OK\r\n1 uid-a\r\n2 uid-b\r\n.\r\n".into()
            }
            l if l.starts_with("DELE") => {
                deles += 1;
                if deles < 3 {
                    String::new()
                } else {
                    "+OK\r\n-ERR [SYS/TEMP] busy\r\n+OK\r\n".into()
                }
            }
            "QUIT" => "+OK\r\n".into(),
            _ => "-ERR what\r\n".into(),
        })
    })
    .await;
    let mut o = plain(addr);
    o.io_timeout = Duration::from_secs(2);
    let mut c = Client::connect(&o).await.unwrap();
    let l = c.list_and_uidl().await.unwrap();
    assert!(l.uidl);
    assert_eq!(l.messages.len(), 2);
    assert_eq!(l.messages[1].uid.as_deref(), Some("uid-b"));
    assert_eq!(l.messages[1].size, 20);
    let r = c.dele_many(&[1, 2, 1]).await.unwrap();
    assert!(r[0].is_ok() && r[2].is_ok());
    assert!(matches!(r[1], Err(Error::SysTemp(_))));
    c.quit().await.unwrap();
}

#[tokio::test]
async fn overlong_lines_and_silence_are_errors() {
    let (addr, _) = fake_server("+OK ready\r\n", |line| match line {
        "CAPA" => Some(format!("+OK {}\r\n", "x".repeat(100_000))),
        _ => Some("-ERR\r\n".into()),
    })
    .await;
    let e = Client::connect(&plain(addr)).await.unwrap_err();
    assert!(matches!(e, Error::LineTooLong(_)), "{e:?}");

    let (addr, _) = fake_server("+OK ready\r\n", |line| match line {
        "CAPA" => Some(CAPA.into()),
        _ => Some(String::new()), // never answers
    })
    .await;
    let mut o = plain(addr);
    o.io_timeout = Duration::from_millis(300);
    let mut c = Client::connect(&o).await.unwrap();
    let e = c.stat().await.unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
    assert!(c.is_poisoned());
    assert!(matches!(c.noop().await.unwrap_err(), Error::Poisoned));
}

#[tokio::test]
async fn retr_unstuffs_and_enforces_the_size_limit() {
    let (addr, _) = fake_server("+OK ready\r\n", |line| match line {
        "CAPA" => Some(CAPA.into()),
        "RETR 1" => Some("+OK\r\nA: b\r\n\r\n..dot\r\n.\r\n".into()),
        "RETR 2" => Some(format!("+OK\r\n{}\r\n.\r\n", "y".repeat(5000))),
        _ => Some("-ERR\r\n".into()),
    })
    .await;
    let mut o = plain(addr);
    o.max_message_size = 1000;
    let mut c = Client::connect(&o).await.unwrap();
    let mut out = Vec::new();
    assert_eq!(c.retr(1, &mut out).await.unwrap(), 14);
    assert_eq!(out, b"A: b\r\n\r\n.dot\r\n");
    let e = c.retr(2, &mut Vec::new()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit: Limit::MessageBytes { limit: 1000, .. },
                ..
            }
        ),
        "{e:?}"
    );
}

/// A fake server without UIDL, for whole-account runs.
async fn no_uidl_server() -> std::net::SocketAddr {
    let (addr, _) = fake_server("+OK ready\r\n", |line| {
        Some(match line {
            "CAPA" => "+OK\r\nUSER\r\nTOP\r\n.\r\n".into(),
            l if l.starts_with("USER") || l.starts_with("PASS") => "+OK\r\n".into(),
            "LIST" => "+OK\r\n1 5\r\n.\r\n".into(),
            "UIDL" => "-ERR not supported\r\n".into(),
            "RETR 1" => "+OK\r\nA: b\r\n.\r\n".into(),
            "DELE 1" => "+OK\r\n".into(),
            "QUIT" => "+OK\r\n".into(),
            _ => "-ERR what\r\n".into(),
        })
    })
    .await;
    addr
}

fn fake_account(dir: &std::path::Path, addr: std::net::SocketAddr, policy: Policy) -> Account {
    let mut a = Account::new(
        "fake",
        "127.0.0.1",
        "u",
        Secret::new("p"),
        Destination::Maildir(dir.join("md")),
        dir.join("fake.state"),
    );
    a.tls = TlsMode::None;
    a.port = addr.port();
    a.policy = policy;
    a
}

#[tokio::test]
async fn keep_policies_need_uidl_but_delete_works_without() {
    let dir = tempfile::tempdir().unwrap();
    let addr = no_uidl_server().await;
    let r = fetch_account(&fake_account(dir.path(), addr, Policy::Keep), &opts()).await;
    let Some(FetchError::Local(msg)) = &r.error else {
        panic!("{:?}", r.error)
    };
    assert!(msg.contains("does not support UIDL"), "{msg}");
    assert_eq!(r.fetched, 0);

    let addr = no_uidl_server().await;
    let r = fetch_account(&fake_account(dir.path(), addr, Policy::Delete), &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.deleted), (1, 1));
    assert_eq!(
        maildir_messages(&dir.path().join("md")),
        [b"A: b\n".to_vec()]
    );
}

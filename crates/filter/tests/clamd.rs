//! Virus scanning against a real clamd: a private instance with its own
//! configuration and a signature database written by the test (no
//! freshclam download), on a free loopback TCP port and a unix socket.
//!
//! Needs the Debian package `clamav-daemon`: without it the test fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use postoffice_common::content::Content;
use postoffice_config::{Dns, FailMode, Filter, StageMode};
use postoffice_filter::{Filters, MessageAction, MessageContext, MessageVerdict};
use postoffice_smtp::Reply;
use postoffice_testkit::{Daemon, free_port, program, read_log};

/// A string found in no real mail, detected by the test's own signature.
const MARKER: &str = "POSTOFFICE-TEST-VIRUS-MARKER-3f9a1c07";

/// The 68-byte EICAR test file, assembled at run time so that this source
/// file is not itself flagged by scanners.
fn eicar() -> String {
    let s = [
        "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
        "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ]
    .concat();
    assert_eq!(s.len(), 68);
    s
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

struct TestClamd {
    daemon: Daemon,
    tcp: String,
    socket: String,
    _dir: tempfile::TempDir,
}

/// How long clamd may take to load its (tiny) database and answer.
const CLAMD_START_LIMIT: Duration = Duration::from_secs(45);

/// Starts clamd and waits (bounded) until it answers PING on TCP.
fn start_clamd() -> TestClamd {
    let clamd = program("clamd", "clamav-daemon");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("db")).unwrap();
    // The whole database: clamd refuses to start with an empty one.
    std::fs::write(
        d.join("db/test.ndb"),
        format!(
            "Postoffice.Test.Signature:0:*:{}\nEicar-Test-Signature:0:*:{}\n",
            hex(MARKER),
            hex(&eicar())
        ),
    )
    .unwrap();

    for _attempt in 0..3 {
        let port = free_port();
        let conf = d.join("clamd.conf");
        let log = d.join("clamd.log");
        let _ = std::fs::remove_file(&log);
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {dir}/clamd.sock\n\
                 TCPSocket {port}\n\
                 TCPAddr 127.0.0.1\n\
                 DatabaseDirectory {dir}/db\n\
                 Foreground yes\n\
                 LogFile {dir}/clamd.log\n\
                 PidFile {dir}/clamd.pid\n\
                 StreamMaxLength 1M\n\
                 MaxThreads 4\n",
                dir = d.display()
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(&clamd);
        cmd.arg("-c").arg(&conf);
        let mut daemon = Daemon::spawn("clamd", cmd, &d.join("clamd.out"));
        let tcp = format!("127.0.0.1:{port}");
        if daemon.wait_until(CLAMD_START_LIMIT, || pong(&tcp)) {
            return TestClamd {
                daemon,
                tcp,
                socket: format!("{}/clamd.sock", d.display()),
                _dir: dir,
            };
        }
        daemon.kill();
        eprintln!(
            "clamd on port {port} did not come up:\n{}\n{}",
            read_log(&log),
            daemon.output()
        );
    }
    panic!("clamd did not start");
}

/// Whether clamd at `tcp` answers PING with PONG.
fn pong(tcp: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(tcp) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = Vec::new();
    s.write_all(b"zPING\0").is_ok()
        && s.read_to_end(&mut reply).is_ok()
        && reply.starts_with(b"PONG")
}

fn filters(addr: &str, virus: StageMode, failure: FailMode) -> Filters {
    Filters::new(
        &Filter {
            clamd: addr.into(),
            virus,
            clamd_failure: failure,
            clamd_timeout_secs: 10,
            dnsbl: StageMode::Off,
            spf: StageMode::Off,
            dkim: StageMode::Off,
            dmarc: StageMode::Off,
            ..Filter::default()
        },
        &Dns::default(),
    )
    .unwrap()
}

fn message(body: &str) -> Vec<u8> {
    format!(
        "From: alice@sender.test\r\nTo: bob@postoffice.test\r\nSubject: scan me\r\n\
         Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

async fn scan(f: &Filters, message: &[u8]) -> MessageVerdict {
    let tags = Vec::new();
    let ctx = MessageContext {
        rcpt_to: &[],
        auth_user: None,
        ip: "192.0.2.1".parse().unwrap(),
        helo: "mail.sender.test",
        mail_from: "alice@sender.test",
        receiver_hostname: "mx.postoffice.test",
        connect_tags: &tags,
    };
    f.check_message(&ctx, &Content::from_vec(message.to_vec()))
        .await
}

#[tokio::test]
async fn real_clamd() {
    let mut clamd = start_clamd();
    let started = Instant::now();
    let clean = message("Nothing to see here.");
    let marked = message(&format!("Before the marker {MARKER} and after it."));
    let eicar_mail = message(&eicar());

    for addr in [clamd.tcp.clone(), clamd.socket.clone()] {
        let f = filters(&addr, StageMode::Reject, FailMode::Closed);

        let v = scan(&f, &clean).await;
        assert_eq!(v.action, MessageAction::Accept, "{addr}: {v:?}");
        assert!(v.summary.ends_with("virus=clean"), "{}", v.summary);
        assert!(!v.headers.contains("X-Virus-Scan"));

        let v = scan(&f, &marked).await;
        match &v.action {
            // clamd names unofficial signatures "<name>.UNOFFICIAL".
            MessageAction::Reject { reply } => assert!(
                reply
                    .to_string()
                    .starts_with("554 5.7.1 Message rejected: virus Postoffice.Test.Signature")
                    && reply.to_string().ends_with(" found"),
                "{reply}"
            ),
            other => panic!("{addr}: marker not rejected: {other:?}"),
        }

        let v = scan(&f, &eicar_mail).await;
        match &v.action {
            MessageAction::Reject { reply } => {
                assert!(
                    reply.to_string().contains("virus Eicar-Test-Signature"),
                    "{reply}"
                )
            }
            other => panic!("{addr}: EICAR not rejected: {other:?}"),
        }
    }

    // A message bigger than several INSTREAM chunks, marker at the end.
    let big = message(&format!("{}\r\n{MARKER}", "x".repeat(70).repeat(3000)));
    assert!(big.len() > 3 * 64 * 1024);
    let f = filters(&clamd.tcp, StageMode::Quarantine, FailMode::Closed);
    match scan(&f, &big).await.action {
        MessageAction::Quarantine { reason } => {
            assert!(reason.contains("Postoffice.Test.Signature"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(scan(&f, &clean).await.action, MessageAction::Accept);

    // Tag mode: delivered, but marked.
    let f = filters(&clamd.tcp, StageMode::Tag, FailMode::Closed);
    let v = scan(&f, &marked).await;
    assert_eq!(v.action, MessageAction::Accept);
    assert!(
        v.headers.starts_with("X-Postoffice-Verdict: suspect;"),
        "{}",
        v.headers
    );
    assert!(
        v.summary.contains("virus=found:Postoffice.Test.Signature"),
        "{}",
        v.summary
    );

    // Over StreamMaxLength (1 MiB here): clamd refuses, a scanner failure.
    let huge = message(&"y".repeat(1536 * 1024));
    let f = filters(&clamd.tcp, StageMode::Reject, FailMode::Closed);
    assert_eq!(
        scan(&f, &huge).await.action,
        MessageAction::TempFail {
            reply: Reply::parse("451 4.7.1 Virus scanner unavailable, try again later").unwrap()
        }
    );
    let f = filters(&clamd.tcp, StageMode::Reject, FailMode::Open);
    let v = scan(&f, &huge).await;
    assert_eq!(v.action, MessageAction::Accept);
    assert!(
        v.headers.contains("X-Virus-Scan: skipped ("),
        "{}",
        v.headers
    );

    // clamd gone.
    clamd.daemon.kill();
    for addr in [clamd.tcp.clone(), clamd.socket.clone()] {
        let f = filters(&addr, StageMode::Reject, FailMode::Closed);
        assert_eq!(
            scan(&f, &marked).await.action,
            MessageAction::TempFail {
                reply: Reply::parse("451 4.7.1 Virus scanner unavailable, try again later")
                    .unwrap()
            },
            "{addr}"
        );
        let f = filters(&addr, StageMode::Reject, FailMode::Open);
        let v = scan(&f, &marked).await;
        assert_eq!(v.action, MessageAction::Accept, "{addr}");
        let unfolded = v.headers.replace("\r\n\t", " ");
        let scan_header = unfolded
            .split("\r\n")
            .find(|l| l.starts_with("X-Virus-Scan:"))
            .unwrap_or_else(|| panic!("no X-Virus-Scan in {:?}", v.headers));
        assert!(
            scan_header.starts_with("X-Virus-Scan: skipped (cannot connect to clamd at "),
            "{scan_header}"
        );
        assert!(v.summary.ends_with("virus=skipped"), "{}", v.summary);
    }
    eprintln!("clamd scans took {:?}", started.elapsed());
}

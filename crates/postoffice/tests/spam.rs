//! Spam scoring through a real rspamd (Debian package `rspamd`): a private
//! instance on a loopback port, started from a config in a temp dir (no
//! Redis, no network lookups), in front of the real `postoffice` binary.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{
    BIN, Client, Daemon, Env, Server, find_program, free_port, poll_until, program,
    smtp_cmd as cmd, smtp_connect, smtp_reply as reply, wait_for_port,
};

/// rspamd loads its Lua rules before it listens: several seconds.
const RSPAMD_START: Duration = Duration::from_secs(90);

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// The rspamd binary. In CI (`CI=true`) it must be installed; elsewhere a
/// missing rspamd skips the test with a loud note, since it is a large
/// package a developer may not have.
fn rspamd_binary() -> Option<PathBuf> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return Some(program("rspamd", "rspamd"));
    }
    let found = find_program("rspamd");
    if found.is_none() {
        eprintln!(
            "\n*** SKIPPED: rspamd is not installed, so the spam tests did not run. \
             apt-get install -y --no-install-recommends rspamd ***\n"
        );
    }
    found
}

/// A private rspamd on a loopback port. Stopped on drop with SIGTERM: a
/// SIGKILL of the main process would leave its workers running.
struct Rspamd {
    daemon: Daemon,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Rspamd {
    fn start(bin: &PathBuf) -> Rspamd {
        let dir = tempfile::Builder::new()
            .prefix("postoffice-rspamd-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        // No Redis-backed module is configured; DNS points at a closed port
        // so that nothing leaves the machine. GTUBE scores `reject` (15).
        let conf = format!(
            "options {{\n  pidfile = \"{d}/rspamd.pid\";\n  dbdir = \"{d}/db\";\n  \
             tempdir = \"{d}\";\n  local_addrs = [];\n  \
             dns {{ nameserver = [\"127.0.0.1:9\"]; timeout = 0.1s; retransmits = 1; }}\n}}\n\
             logging {{ type = \"console\"; level = \"warning\"; }}\n\
             actions {{ reject = 15; add_header = 6; greylist = null; }}\n\
             worker \"normal\" {{ bind_socket = \"{addr}\"; count = 1; task_timeout = 8s; }}\n"
        );
        let conf_path = dir.path().join("rspamd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut command = Command::new(bin);
        command.arg("-f").arg("-i").arg("-c").arg(&conf_path);
        let mut daemon = Daemon::spawn("rspamd", command, &dir.path().join("rspamd.log"));
        let up = daemon.wait_until(RSPAMD_START, || {
            wait_for_port(addr, Duration::from_millis(200))
        });
        assert!(up, "rspamd did not start: {}", daemon.output());
        Rspamd {
            daemon,
            addr,
            _dir: dir,
        }
    }
}

impl Rspamd {
    /// Stops rspamd and its workers (SIGTERM to the main process, which
    /// takes its workers down) and waits until nothing listens any more.
    fn stop(&mut self) {
        if self.daemon.exited() {
            return;
        }
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.daemon.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let addr = self.addr;
        let gone = poll_until(RSPAMD_START, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
        });
        assert!(gone, "rspamd still listens: {}", self.daemon.output());
        self.daemon.kill();
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
            return;
        }
        // Unwinding from a failed assertion: no second panic, just the
        // signal and a bounded wait.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.daemon.id().to_string())
            .status();
        let addr = self.addr;
        poll_until(RSPAMD_START, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
        });
    }
}

fn env_with(rspamd: SocketAddr, extra: &str) -> (Env, Server) {
    let env = Env::new(
        BIN,
        &format!(
            "[filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n\
             rspamd = \"{rspamd}\"\nrspamd_timeout_secs = 20\n{extra}"
        ),
    );
    env.add_user("alice@example.test", "pw-alice");
    let server = env.start();
    (env, server)
}

fn send(server: &Server, body: &str) -> (u16, String) {
    let mut c: Client<TcpStream> = smtp_connect(server.smtp_addr());
    let (code, text) = cmd(&mut c, "MAIL FROM:<bob@example.net>");
    assert_eq!(code, 250, "{text}");
    let (code, text) = cmd(&mut c, "RCPT TO:<alice@example.test>");
    assert_eq!(code, 250, "{text}");
    let (code, text) = cmd(&mut c, "DATA");
    assert_eq!(code, 354, "{text}");
    c.send_raw(body.as_bytes());
    c.send_raw(b".\r\n");
    let out = reply(&mut c);
    cmd(&mut c, "QUIT");
    out
}

fn message(body: &str) -> String {
    format!(
        "From: Bob <bob@example.net>\r\nTo: alice@example.test\r\nSubject: hello\r\n\
         Date: Sat, 05 Dec 2026 03:00:00 +0000\r\nMessage-ID: <t1@example.net>\r\n\
         X-Spam-Status: No, forged\r\n\r\n{body}\r\n"
    )
}

fn pop_all(server: &Server) -> Vec<String> {
    let mut c = server.login_when_free("alice@example.test", "pw-alice");
    let out = c.retr_all();
    c.cmd("QUIT");
    out.into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .collect()
}

/// The quarantined messages of alice, as `quarantine list` shows them
/// and `quarantine show` prints them (either backend).
fn quarantined(env: &Env) -> Vec<String> {
    env.cli(&["quarantine", "list", "alice@example.test"])
        .ok()
        .stdout
        .lines()
        .map(|l| {
            let uid = l.split('\t').next().unwrap_or_default();
            env.cli(&["quarantine", "show", "alice@example.test", uid])
                .ok()
                .stdout
        })
        .collect()
}

#[test]
fn gtube_is_rejected_at_spam_reject() {
    let Some(bin) = rspamd_binary() else { return };
    let rspamd = Rspamd::start(&bin);
    let (env, server) = env_with(rspamd.addr, "");
    let (code, text) = send(&server, &message(GTUBE));
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1") && text.contains("spam"), "{text}");
    assert!(pop_all(&server).is_empty());
    assert!(quarantined(&env).is_empty());
}

#[test]
fn gtube_between_the_thresholds_is_quarantined() {
    let Some(bin) = rspamd_binary() else { return };
    let rspamd = Rspamd::start(&bin);
    // GTUBE scores 15: above spam_quarantine, below spam_reject.
    let (env, server) = env_with(rspamd.addr, "spam_quarantine = 10.0\nspam_reject = 20.0\n");
    let (code, text) = send(&server, &message(GTUBE));
    assert_eq!(code, 250, "{text}");
    assert!(text.contains("quarantined"), "{text}");
    assert!(pop_all(&server).is_empty(), "nothing in the maildrop");
    assert_eq!(
        env.stored_messages(),
        ["alice@example.test"],
        "one copy, held"
    );
    let held = quarantined(&env);
    assert_eq!(held.len(), 1, "{held:?}");
    let stored = &held[0];
    assert!(
        stored.contains("X-Spam-Status: Yes, score=15.00"),
        "{stored}"
    );
}

#[test]
fn clean_message_passes_with_headers_and_a_stopped_rspamd_fails_closed() {
    let Some(bin) = rspamd_binary() else { return };
    let mut rspamd = Rspamd::start(&bin);
    let (_env, server) = env_with(rspamd.addr, "rspamd_failure = \"closed\"\n");
    let (code, text) = send(&server, &message("Hello Alice, lunch tomorrow?"));
    assert_eq!(code, 250, "{text}");
    let stored = pop_all(&server);
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert!(m.contains("\r\nX-Spam-Score: "), "{m}");
    assert!(m.contains("\r\nX-Spam-Status: No, score="), "{m}");
    assert!(
        !m.contains("forged"),
        "the sender's X-Spam-Status is removed: {m}"
    );
    assert!(m.contains("spam=ham"), "{m}");

    rspamd.stop();
    let (code, text) = send(&server, &message("Hello again"));
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("4.7.1"), "{text}");
}

#[test]
fn unreachable_rspamd_fails_open_with_a_header() {
    // Nothing listens on this port: the same as a stopped rspamd, and
    // runs without the rspamd package.
    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_env, server) = env_with(nobody, "rspamd_failure = \"open\"\n");
    let (code, text) = send(&server, &message("Hello Alice"));
    assert_eq!(code, 250, "{text}");
    let stored = pop_all(&server);
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].contains("\r\nX-Spam-Status: Unknown (cannot connect to rspamd"),
        "{}",
        stored[0]
    );
    assert!(!stored[0].contains("forged"));
}

// ------------------------------------------------ outbound (scan_outbound)

/// What an HTTP GET of /metrics says a series is (0 when absent).
fn metric(server: &Server, series: &str) -> f64 {
    let r = common::HttpClient::new(server.http_addr()).get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A remote MX for example.net: another postoffice with carol's maildrop.
fn remote_sink() -> (Env, Server) {
    let env = Env::new(
        BIN,
        "[filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n",
    );
    env.add_user("carol@example.net", "pw-carol");
    let server = env.start();
    (env, server)
}

/// A postoffice whose users' mail goes to `sink` (its relayhost), with
/// rspamd scanning submissions.
fn sender_with(rspamd: SocketAddr, sink: &Server, thresholds: &str) -> (Env, Server) {
    let env = Env::new(
        BIN,
        &format!(
            "queue.relayhost = \"{}\"\n[filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n\
             rspamd = \"{rspamd}\"\nrspamd_timeout_secs = 20\nscan_outbound = true\n{thresholds}",
            sink.smtp_addr()
        ),
    );
    env.add_user("alice@example.test", "pw-alice");
    let server = env.start();
    (env, server)
}

/// alice submits `body` to carol@example.net (AUTH PLAIN on loopback).
fn submit(server: &Server, body: &str) -> (u16, String) {
    let mut c: Client<TcpStream> = smtp_connect(server.submit_addr());
    let auth = common::base64(b"\0alice@example.test\0pw-alice");
    let (code, text) = cmd(&mut c, &format!("AUTH PLAIN {auth}"));
    assert_eq!(code, 235, "{text}");
    let (code, text) = cmd(&mut c, "MAIL FROM:<alice@example.test>");
    assert_eq!(code, 250, "{text}");
    let (code, text) = cmd(&mut c, "RCPT TO:<carol@example.net>");
    assert_eq!(code, 250, "{text}");
    let (code, text) = cmd(&mut c, "DATA");
    assert_eq!(code, 354, "{text}");
    c.send_raw(body.as_bytes());
    c.send_raw(b".\r\n");
    let out = reply(&mut c);
    cmd(&mut c, "QUIT");
    out
}

fn outgoing(subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@example.test>\r\nTo: carol@example.net\r\nSubject: {subject}\r\n\
         Date: Sat, 05 Dec 2026 03:00:00 +0000\r\n\r\n{body}\r\n"
    )
}

/// carol's messages at the remote sink.
fn at_sink(sink: &Server) -> Vec<String> {
    let mut c = sink.login_when_free("carol@example.net", "pw-carol");
    let out = c.retr_all();
    c.cmd("QUIT");
    out.into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .collect()
}

/// `scan_outbound`: GTUBE from an authenticated user is refused at
/// `spam_reject` (550 5.7.1, nothing queued) or, between the thresholds,
/// held in the queue and not delivered to the remote MX, while a clean
/// message is; `queue release` then sends the held one.
#[test]
fn outbound_spam_is_refused_or_held_and_clean_mail_is_delivered() {
    let Some(bin) = rspamd_binary() else { return };
    let rspamd = Rspamd::start(&bin);
    let (_sink_env, sink) = remote_sink();

    // Default thresholds: GTUBE (15) is refused, nothing is queued.
    let (strict_env, strict) = sender_with(rspamd.addr, &sink, "");
    let (code, text) = submit(&strict, &outgoing("offer", GTUBE));
    assert_eq!(code, 550, "{text}");
    assert!(
        text.starts_with("550 5.7.1 Message not sent: it was classified as spam"),
        "{text}"
    );
    assert!(strict_env.queued_messages().is_empty());
    assert_eq!(
        metric(
            &strict,
            "postoffice_smtp_rejections_total{service=\"submission\",reason=\"outbound_spam\"}"
        ),
        1.0
    );

    // Between the thresholds: held in the queue.
    let (env, server) = sender_with(
        rspamd.addr,
        &sink,
        "spam_quarantine = 10.0\nspam_reject = 20.0\n",
    );
    let (code, text) = submit(&server, &outgoing("offer", GTUBE));
    assert_eq!(code, 250, "{text}");
    let held_id = text
        .split("queued as ")
        .nth(1)
        .expect("a queue id")
        .trim()
        .to_string();
    let list = env.cli(&["queue", "list"]).ok().stdout;
    assert!(
        list.contains(&format!(
            "HELD: spam score 15.00 (postoffice queue release {held_id})"
        )),
        "{list}"
    );
    assert_eq!(
        metric(
            &server,
            "postoffice_smtp_transactions_total{service=\"submission\",outcome=\"held\"}"
        ),
        1.0
    );

    assert!(
        common::poll_until(Duration::from_secs(30), || metric(
            &server,
            "postoffice_queue_recipients{state=\"held\"}"
        ) == 1.0),
        "the held recipient is counted"
    );

    // A clean message goes out; the held one, queued before it, does not.
    let (code, text) = submit(&server, &outgoing("lunch", "Lunch tomorrow, Carol?"));
    assert_eq!(code, 250, "{text}");
    let delivered = common::wait_for(
        Duration::from_secs(60),
        "the clean message at the sink",
        || {
            let m = at_sink(&sink);
            (!m.is_empty()).then_some(m)
        },
    );
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].contains("Subject: lunch"), "{}", delivered[0]);
    assert!(!delivered[0].contains("GTUBE"));
    // The clean one is gone from the queue, the held one is still there.
    let list = env.cli(&["queue", "list"]).ok().stdout;
    assert!(
        list.contains(&held_id) && list.contains("1 entry"),
        "{list}"
    );

    // Released by the administrator: it is sent.
    let out = env.cli(&["queue", "release", &held_id]).ok().stdout;
    assert!(out.contains("released"), "{out}");
    let delivered = common::wait_for(
        Duration::from_secs(60),
        "the released message at the sink",
        || {
            let m = at_sink(&sink);
            (m.len() == 2).then_some(m)
        },
    );
    assert!(delivered[1].contains("GTUBE"), "{}", delivered[1]);
}

/// Mail rspamd marks as spam (`X-Spam-Status: Yes`) is never forwarded
/// (issue 12): it stays in the maildrop of a user who forwards without
/// keeping a copy; clean mail is forwarded (queued) as usual.
#[test]
fn spam_is_never_forwarded() {
    let Some(bin) = rspamd_binary() else { return };
    let rspamd = Rspamd::start(&bin);
    // GTUBE scores 15: above spam_tag, below quarantine and reject.
    let (env, server) = env_with(
        rspamd.addr,
        "spam_tag = 5.0\nspam_quarantine = 50.0\nspam_reject = 60.0\n",
    );
    env.cli(&[
        "user",
        "set",
        "alice@example.test",
        "--forward",
        "alice@elsewhere.test",
        "--keep-copy",
        "false",
    ])
    .ok();
    let (code, text) = send(&server, &message(GTUBE));
    assert_eq!(code, 250, "{text}");
    let stored = pop_all(&server);
    assert_eq!(stored.len(), 1, "kept, not forwarded");
    assert!(stored[0].contains("X-Spam-Status: Yes"), "{}", stored[0]);
    assert!(
        env.queued_messages().is_empty(),
        "{:?}",
        env.queued_messages()
    );

    let (code, text) = send(&server, &message("Hello Alice, lunch tomorrow?"));
    assert_eq!(code, 250, "{text}");
    assert_eq!(pop_all(&server).len(), 1, "no copy of the clean message");
    assert!(
        !env.queued_messages().is_empty(),
        "the clean message is queued"
    );
}

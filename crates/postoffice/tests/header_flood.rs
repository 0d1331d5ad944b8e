//! A header flood (security issue): a 20 MB message made of millions of
//! tiny header fields took the server's RSS from 31 MB to 428 MB on the MX
//! port and to 1.06 GB on submission, because every stage parses the
//! header. Both ports now refuse it with `552 5.3.4` once it is read,
//! keep nothing of it, and go on serving.

mod common;

use std::io::Write;

use common::*;

const ALICE: &str = "alice@example.test";
/// The bound on the server's peak RSS for the whole test, in KiB. The
/// flood is 20 MiB on the wire; holding it once would already exceed this.
const MAX_RSS_KIB: u64 = 120 * 1024;

/// About 20 MiB of `Xn: y` fields, then a body and the terminator.
fn flood() -> Vec<u8> {
    let mut m = Vec::with_capacity(21 << 20);
    let mut i = 0u64;
    while m.len() < 20 << 20 {
        write!(m, "X{i}: y\r\n").unwrap();
        i += 1;
    }
    m.extend_from_slice(b"\r\nbody\r\n.\r\n");
    m
}

fn send_flood(c: &mut Client<std::net::TcpStream>, from: &str) -> (u16, String) {
    assert_eq!(smtp_cmd(c, &format!("MAIL FROM:<{from}>")).0, 250);
    assert_eq!(smtp_cmd(c, &format!("RCPT TO:<{ALICE}>")).0, 250);
    assert_eq!(smtp_cmd(c, "DATA").0, 354);
    c.send_raw(&flood());
    smtp_reply(c)
}

#[test]
fn header_floods_are_refused_on_mx_and_submission_with_bounded_memory() {
    let env = Env::new(
        BIN,
        "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
         [filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n",
    );
    env.add_user(ALICE, "pw-alice");
    let server = env.start();

    let mut mx = smtp_connect(server.smtp_addr());
    assert_eq!(smtp_cmd(&mut mx, "EHLO client.test").0, 250);
    let (code, text) = send_flood(&mut mx, "bob@sender.test");
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4 Message header too large"), "{text}");
    assert_eq!(smtp_cmd(&mut mx, "NOOP").0, 250, "the session goes on");

    let mut sub = smtp_connect(server.submit_addr());
    assert_eq!(smtp_cmd(&mut sub, "EHLO client.test").0, 250);
    let auth = base64(b"\0alice@example.test\0pw-alice");
    assert_eq!(smtp_cmd(&mut sub, &format!("AUTH PLAIN {auth}")).0, 235);
    let (code, text) = send_flood(&mut sub, ALICE);
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4 Message header too large"), "{text}");

    let kib = peak_rss_kib(server.pid());
    println!("header floods: server peak RSS (VmHWM) = {kib} kB");
    assert!(kib < MAX_RSS_KIB, "peak RSS {kib} kB");
    // Nothing was stored, and a normal message still goes through.
    assert!(
        !all_files(&env.maildir(ALICE))
            .iter()
            .any(|p| p.to_string_lossy().contains("/new/"))
    );
    assert_eq!(smtp_cmd(&mut mx, "MAIL FROM:<bob@sender.test>").0, 250);
    assert_eq!(smtp_cmd(&mut mx, &format!("RCPT TO:<{ALICE}>")).0, 250);
    assert_eq!(smtp_cmd(&mut mx, "DATA").0, 354);
    mx.send_raw(b"Subject: fine\r\n\r\nx\r\n.\r\n");
    assert_eq!(smtp_reply(&mut mx).0, 250);
}

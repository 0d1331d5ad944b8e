//! A private dnsmasq serving the records one test needs.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::net::free_port;
use crate::program::program;

/// The name every [`Dnsmasq`] answers (127.0.0.1), to see it is up.
const READY_NAME: &str = "ready.test";

/// How long dnsmasq may take to answer its first query.
const START_LIMIT: Duration = Duration::from_secs(10);

/// dnsmasq on a free loopback port, authoritative for `.test` (names it
/// does not know get NXDOMAIN; there is no upstream). Killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    daemon: Daemon,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records`, lines of a dnsmasq.conf such as
    /// `mx-host=dest.test,mx.dest.test,10` or `txt-record=a.test,"v=spf1 -all"`
    /// (they go into a config file, where dnsmasq unquotes strings), and
    /// waits (bounded) until it answers. Panics when dnsmasq is not
    /// installed or does not start.
    #[track_caller]
    pub fn start(records: &[impl AsRef<str>]) -> Dnsmasq {
        let dnsmasq = program("dnsmasq", "dnsmasq");
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("dnsmasq.conf");
        let mut lines: Vec<&str> = records.iter().map(AsRef::as_ref).collect();
        let ready = format!("host-record={READY_NAME},127.0.0.1");
        lines.push(&ready);
        std::fs::write(&conf, lines.join("\n") + "\n").expect("write dnsmasq.conf");
        let mut failures = String::new();
        // Another process may take the port between free_port and bind.
        for attempt in 1..=3 {
            let port = free_port();
            let mut cmd = Command::new(&dnsmasq);
            cmd.args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                &format!("--conf-file={}", conf.display()),
                "--pid-file=",
                "--log-facility=-",
                "--log-queries",
                // Names under .test that are not defined here get NXDOMAIN
                // instead of REFUSED (there is no upstream).
                "--local=/test/",
            ]);
            let output = dir.path().join(format!("dnsmasq-{attempt}.log"));
            let mut daemon = Daemon::spawn("dnsmasq", cmd, &output);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if daemon.wait_until(START_LIMIT, || answers(addr, READY_NAME)) {
                return Dnsmasq {
                    daemon,
                    addr,
                    _dir: dir,
                };
            }
            daemon.kill();
            failures.push_str(&format!(
                "dnsmasq on port {port} did not answer:\n{}\n",
                daemon.output()
            ));
        }
        panic!("dnsmasq did not start:\n{failures}");
    }

    /// What it logged so far (every query, with `--log-queries`).
    pub fn log(&self) -> String {
        self.daemon.output()
    }
}

/// Whether the server at `addr` answers an A query for `name` with at
/// least one record (one UDP query, a short timeout).
fn answers(addr: SocketAddr, name: &str) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    if sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .is_err()
    {
        return false;
    }
    let id = 0x5054;
    if sock.send_to(&a_query(id, name), addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => has_answer(&buf[..n], id),
        Err(_) => false,
    }
}

/// A DNS query (RFC 1035 4.1) for the A records of `name`, recursion
/// desired.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    // Flags: RD. One question, no other records.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).expect("DNS label of at most 63 octets"));
        q.extend_from_slice(label.as_bytes());
    }
    // Root label, QTYPE A, QCLASS IN.
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `reply` answers query `id`: a response, RCODE NOERROR, at least
/// one answer record.
fn has_answer(reply: &[u8], id: u16) -> bool {
    reply.len() >= 12
        && reply[..2] == id.to_be_bytes()
        && reply[2] & 0x80 != 0
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding() {
        assert_eq!(
            a_query(0x1234, "ready.test."),
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x04test\x00\x00\x01\x00\x01"
        );
        let mut reply = a_query(7, "a.test");
        reply[2] |= 0x80;
        assert!(!has_answer(&reply, 7), "no answer records");
        reply[7] = 1;
        assert!(has_answer(&reply, 7));
        assert!(!has_answer(&reply, 8), "another query's reply");
        reply[3] = 3; // NXDOMAIN
        assert!(!has_answer(&reply, 7));
    }

    /// Needs dnsmasq (Debian package `dnsmasq`); fails without it.
    #[test]
    fn serves_the_given_records_and_nothing_else_under_test() {
        let dns = Dnsmasq::start(&["host-record=x.test,127.0.0.9"]);
        assert!(answers(dns.addr, "x.test"));
        assert!(!answers(dns.addr, "nothing.test"), "NXDOMAIN");
        let log = dns.log();
        assert!(log.contains("x.test"), "{log}");
    }
}

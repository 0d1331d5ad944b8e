//! A 50 MB message streams through in bounded chunks. A test binary of its
//! own, so that the peak-memory check sees no other test's allocations.

#[path = "fetch/common.rs"]
mod common;

use std::io::{Read, Write};

use postoffice_fetch::deliver::{Delivery, MaildirDelivery};
use postoffice_fetch::{AuthMethod, Client, Destination, Policy};

use common::*;

const SIZE: u64 = 50 * 1024 * 1024;
/// Lines of the generated message (about 72 bytes each with CRLF).
const LINES: u64 = 750_000;

/// A deterministic message of a bit more than `SIZE` bytes (with CRLF),
/// generated on the fly.
/// Every 37th line starts with a dot and every 41st with "From ".
struct Gen {
    line: u64,
    buf: Vec<u8>,
    pos: usize,
    crlf: bool,
    done: bool,
}

impl Gen {
    fn new(crlf: bool) -> Self {
        Gen {
            line: 0,
            buf: Vec::new(),
            pos: 0,
            crlf,
            done: false,
        }
    }

    fn refill(&mut self) {
        self.buf.clear();
        self.pos = 0;
        if self.done {
            return;
        }
        let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        if self.line == 0 {
            self.buf.extend_from_slice(b"Subject: big");
            self.buf.extend_from_slice(eol);
            self.buf.extend_from_slice(eol);
        }
        for _ in 0..100 {
            self.line += 1;
            let l = self.line;
            if l.is_multiple_of(37) {
                self.buf
                    .extend_from_slice(format!(".dot line {l}").as_bytes());
            } else if l.is_multiple_of(41) {
                self.buf
                    .extend_from_slice(format!("From line {l}").as_bytes());
            } else {
                self.buf.extend_from_slice(
                    format!(
                        "line {l} abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    )
                    .as_bytes(),
                );
            }
            self.buf.extend_from_slice(eol);
        }
        if self.line >= LINES {
            self.done = true;
        }
    }
}

impl Read for Gen {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            self.refill();
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Records the largest single write.
struct Instrumented<W: Write> {
    inner: W,
    max_write: usize,
    writes: u64,
    total: u64,
}

impl<W: Write> Write for Instrumented<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.max_write = self.max_write.max(buf.len());
        self.writes += 1;
        let n = self.inner.write(buf)?;
        self.total += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Compare a file with the generator's LF output without loading either.
fn same_as_generated(path: &std::path::Path) -> (bool, u64) {
    let mut f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut g = Gen::new(false);
    let mut a = vec![0u8; 1 << 16];
    let mut b = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut f, &mut a);
        let m = read_full(&mut g, &mut b);
        if n != m || a[..n] != b[..m] {
            let at = a[..n]
                .iter()
                .zip(&b[..m])
                .position(|(x, y)| x != y)
                .unwrap_or(n.min(m));
            eprintln!(
                "mismatch: file chunk {n} bytes, expected {m}; first difference at +{at}: file {:?} expected {:?}",
                String::from_utf8_lossy(&a[at.saturating_sub(20)..(at + 40).min(n)]),
                String::from_utf8_lossy(&b[at.saturating_sub(20)..(at + 40).min(m)])
            );
            return (false, total);
        }
        total += n as u64;
        if n == 0 {
            return (true, total);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_in_small_chunks_into_a_maildir() {
    let srv = TestServer::start().await;
    srv.deliver_from(&mut Gen::new(true));
    let root = srv.path().join("big-maildir");
    let acct = srv.account_to(
        "big",
        Policy::Delete,
        Destination::Maildir(root.clone()),
        srv.plain,
    );
    let mut c = Client::connect(&acct.connect_options(false)).await.unwrap();
    // After the login: Argon2 alone takes 19 MiB.
    c.login(USER, PW, AuthMethod::Auto).await.unwrap();
    let before = peak_rss_kb();
    let listing = c.list_and_uidl().await.unwrap();
    assert_eq!(listing.messages.len(), 1);
    assert!(listing.messages[0].size > SIZE);
    let mut sink = Instrumented {
        inner: MaildirDelivery::begin(&root).unwrap(),
        max_write: 0,
        writes: 0,
        total: 0,
    };
    let n = c.retr(1, &mut sink).await.unwrap();
    assert_eq!(n, listing.messages[0].size, "RETR returns the CRLF size");
    assert!(
        sink.max_write <= 1024 * 1024,
        "a write of {} bytes: the message was not streamed",
        sink.max_write
    );
    assert!(sink.writes > 50, "only {} writes", sink.writes);
    Box::new(sink.inner).commit().unwrap();
    c.quit().await.unwrap();

    let files: Vec<_> = std::fs::read_dir(root.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let (same, len) = same_as_generated(&files[0]);
    assert!(same, "content differs at or after byte {len}");
    assert!(len > SIZE);
    if let (Some(b), Some(a)) = (before, peak_rss_kb()) {
        // The message is never held whole: the peak grows by far less
        // than its 50 MB (server and client both stream).
        eprintln!("peak RSS grew by {} kB", a.saturating_sub(b));
        assert!(
            a.saturating_sub(b) < 16 * 1024,
            "peak RSS grew by {} kB",
            a - b
        );
    }
}

//! `smtp`: C concurrent clients send S messages of a fixed size to local
//! users, one transaction after the other (no PIPELINING, like
//! `smtp-source`), and the run is timed twice: until the last `250` after
//! DATA (accepted) and, with `--wait-new`, until every accepted message is
//! a file in some Maildir `new/` (end to end: a server that queues first,
//! like Postfix, delivers after its `250`; postoffice delivers before it).
//!
//! With `--verify-delivered`, every file that appeared in a `new/` is then
//! read back and matched to what was sent: each accepted message must be
//! there exactly once, in its recipient's Maildir, with the headers sent
//! and the body octet for octet (line ends compared as LF, since Postfix
//! stores LF). With `--sample-memory` the servers' RSS is sampled during
//! the run and its peak reported (and, for `--server-pids`, the kernel's
//! exact peak, `VmHWM`, reset before the run).
//!
//! Bodies are one shared buffer of identical lines: a message is its own
//! header block, a prefix of that buffer and a short last line, so 40
//! concurrent 20 MiB messages cost the generator one copy, not 40.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::conn::Conn;
use crate::procinfo::{self, Memory, Sampler, ServerSel};
use crate::report::{ErrKind, Errors, ResultLine, SessErr, Summary};

/// One body line (76 characters and CRLF); every body is made of these.
const LINE: &[u8] =
    b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklm\r\n";
/// Messages up to this size are sent with one write (header and body
/// copied into one buffer); larger ones in three (header, body, last line).
const ONE_WRITE_MAX: usize = 1024 * 1024;
/// How often `--sample-memory` samples the servers' RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub messages: usize,
    /// Octets of each message as sent (headers + body + CRLFs, before the
    /// final `.`).
    pub size: usize,
    /// Messages per connection before QUIT.
    pub per_connection: usize,
    pub sender: String,
    pub helo: String,
    pub timeout: Duration,
    pub wait_new: Option<PathBuf>,
    pub wait_timeout: Duration,
    pub servers: ServerSel,
    /// After the end-to-end wait, read every new file back (needs
    /// `wait_new`).
    pub verify_delivered: bool,
    /// Sample the servers' RSS during the run; reset and read `VmHWM`.
    pub sample_memory: bool,
    /// A 4xx reply (try again later) is retried this many times, on a new
    /// connection, before it counts as an error.
    pub retries: usize,
}

/// What one connection reported for one message.
enum Event {
    Accepted {
        seq: usize,
        latency: Duration,
    },
    /// A 4xx reply that will be retried.
    TempFail(String, SessErr),
    Failed(String, SessErr),
}

pub async fn run(opts: Options, rcpts: Vec<String>) -> anyhow::Result<bool> {
    if opts.concurrency == 0 || opts.messages == 0 || opts.per_connection == 0 {
        anyhow::bail!("--concurrency, --messages and --per-connection must be at least 1");
    }
    if rcpts.is_empty() {
        anyhow::bail!("no recipients");
    }
    if opts.verify_delivered && opts.wait_new.is_none() {
        anyhow::bail!("--verify-delivered needs --wait-new DIR");
    }
    if opts.sample_memory && opts.servers.is_empty() {
        anyhow::bail!("--sample-memory needs --server-pids or --server-tree");
    }
    // The files already there (their names, with --verify-delivered).
    let baseline = match &opts.wait_new {
        Some(dir) => Some(new_files(dir)?),
        None => None,
    };
    let body = Arc::new(Body::new(opts.size));
    let rcpts = Arc::new(rcpts);
    let opts = Arc::new(opts);
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut hwm_reset = false;
    let mut sampler = None;
    let mut before = Memory::default();
    if opts.sample_memory {
        before = opts.servers.memory();
        hwm_reset = opts.servers.reset_hwm();
        sampler = Some(Sampler::start(opts.servers.clone(), SAMPLE_EVERY)?);
    }
    let cpu0 = procinfo::self_cpu();
    let srv0 = opts.servers.cpu_ticks();
    let t0 = Instant::now();
    for _ in 0..opts.concurrency.min(opts.messages) {
        let (rcpts, opts, next, tx) = (rcpts.clone(), opts.clone(), next.clone(), tx.clone());
        let body = body.clone();
        tokio::spawn(async move { client(&opts, &rcpts, &body, &next, &tx).await });
    }
    drop(tx);
    let mut errors = Errors::default();
    let mut lat = Vec::with_capacity(opts.messages);
    let mut accepted_seqs = Vec::with_capacity(opts.messages);
    let mut tempfails = 0usize;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Accepted { seq, latency } => {
                lat.push(latency);
                accepted_seqs.push(seq);
            }
            Event::TempFail(ctx, e) => {
                tempfails += 1;
                eprintln!("  temporary failure, retrying: {ctx}: {e}");
            }
            Event::Failed(ctx, e) => errors.record(&e, &ctx),
        }
    }
    let accepted_at = t0.elapsed();
    let accepted = lat.len();
    let mut delivered_at = None;
    let mut undelivered = 0usize;
    if let (Some(dir), Some(base)) = (&opts.wait_new, &baseline) {
        let want = base.len() + accepted;
        let deadline = Instant::now() + opts.wait_timeout;
        loop {
            let n = count_new(dir)?;
            if n >= want {
                delivered_at = Some(t0.elapsed());
                break;
            }
            if Instant::now() >= deadline {
                undelivered = want - n;
                errors.record(
                    &SessErr::new(
                        ErrKind::Verify,
                        format!(
                            "{undelivered} accepted messages not in any new/ after {:?}",
                            opts.wait_timeout
                        ),
                    ),
                    &dir.display().to_string(),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let elapsed = delivered_at.unwrap_or(accepted_at);
    let cpu = procinfo::self_cpu().saturating_sub(cpu0);
    let srv_cpu = procinfo::ticks_to_duration(opts.servers.cpu_ticks().saturating_sub(srv0));
    let peak = sampler.map(Sampler::finish);
    let hwm = if opts.sample_memory {
        opts.servers.hwm_kib()
    } else {
        None
    };
    // Read back what was delivered (after the clock and the CPU figures).
    let mut verified = None;
    if let (true, Some(dir), Some(base)) = (opts.verify_delivered, &opts.wait_new, &baseline) {
        let v = verify_delivered(dir, base, &accepted_seqs, &rcpts, &opts, &body)?;
        for (ctx, e) in &v.problems {
            errors.record(e, ctx);
        }
        verified = Some(v);
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let acc_secs = accepted_at.as_secs_f64().max(1e-9);
    let s = Summary::of(lat);

    println!(
        "smtp: {accepted}/{} messages of {} octets accepted in {acc_secs:.2} s, concurrency {}, {} per connection",
        opts.messages, opts.size, opts.concurrency, opts.per_connection
    );
    println!(
        "  accepted {:.1} msgs/s ({:.1} MB/s)",
        accepted as f64 / acc_secs,
        (accepted * opts.size) as f64 / acc_secs / 1e6
    );
    match delivered_at {
        Some(d) => println!(
            "  end to end (all in new/ after {:.2} s): {:.1} msgs/s",
            d.as_secs_f64(),
            accepted as f64 / d.as_secs_f64().max(1e-9)
        ),
        None if opts.wait_new.is_some() => println!("  end to end: {undelivered} never arrived"),
        None => {}
    }
    crate::report::print_latency("transaction latency ms (MAIL to 250 after DATA)", &s);
    let server = (!opts.servers.is_empty()).then_some(srv_cpu);
    crate::report::print_cpu(cpu, secs, server.map(|d| (d, accepted, "message")));
    if let Some(v) = &verified {
        println!(
            "  read back: {} of {accepted} accepted messages verified in their recipients' new/ (headers and body as sent){}",
            v.verified,
            if v.unacked > 0 {
                format!(", {} more delivered without a 250 seen", v.unacked)
            } else {
                String::new()
            }
        );
    }
    if let Some(p) = peak {
        println!(
            "  servers' memory: peak RSS {:.1} MiB over {} samples every {} ms ({} processes at the peak), peak PSS {:.1} MiB (read every {} samples); before: RSS {:.1} MiB, PSS {:.1} MiB{}",
            mib(p.rss.rss_kib),
            p.samples,
            SAMPLE_EVERY.as_millis(),
            p.rss.processes,
            mib(p.pss_kib),
            procinfo::PSS_EVERY,
            mib(before.rss_kib),
            mib(before.pss_kib),
            match hwm {
                Some(h) => format!(
                    "; VmHWM {:.1} MiB ({})",
                    mib(h),
                    if hwm_reset {
                        "reset before the run"
                    } else {
                        "NOT reset: peak since the process started"
                    }
                ),
                None => String::new(),
            }
        );
    }
    let mut r = ResultLine::new("smtp");
    r.kv("messages", opts.messages)
        .kv("accepted", accepted)
        .kv("concurrency", opts.concurrency)
        .kv("size", opts.size)
        .f("accept_s", acc_secs, 3)
        .f("accept_msgs_per_s", accepted as f64 / acc_secs, 2);
    if let Some(d) = delivered_at {
        r.f("e2e_s", d.as_secs_f64(), 3).f(
            "e2e_msgs_per_s",
            accepted as f64 / d.as_secs_f64().max(1e-9),
            2,
        );
    }
    r.latency(&s).cpu(cpu, secs, server);
    r.kv("tempfail_retried", tempfails);
    if let Some(v) = &verified {
        r.kv("verified", v.verified).kv("unacked", v.unacked);
    }
    if let Some(p) = peak {
        r.f("peak_rss_mib", mib(p.rss.rss_kib), 1)
            .kv("peak_processes", p.rss.processes)
            .f("peak_pss_mib", mib(p.pss_kib), 1)
            .f("rss_before_mib", mib(before.rss_kib), 1)
            .f("pss_before_mib", mib(before.pss_kib), 1)
            .kv("rss_samples", p.samples);
        if let Some(h) = hwm {
            r.f("hwm_mib", mib(h), 1)
                .kv("hwm_reset", u8::from(hwm_reset));
        }
    }
    errors.report(&mut r);
    r.print();
    let all_verified = verified.is_none_or(|v| v.verified == accepted);
    Ok(errors.total() == 0 && accepted == opts.messages && all_verified)
}

/// One client: connections of up to `per_connection` transactions each,
/// taking message numbers from `next` until all are taken.
async fn client(
    opts: &Options,
    rcpts: &[String],
    body: &Body,
    next: &AtomicUsize,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let mut conn: Option<(Conn, usize)> = None;
    let mut attempt = 0usize;
    let mut seq = usize::MAX;
    loop {
        if attempt == 0 {
            seq = next.fetch_add(1, Ordering::Relaxed);
            if seq >= opts.messages {
                break;
            }
        }
        let rcpt = &rcpts[seq % rcpts.len()];
        let r = tokio::time::timeout(opts.timeout, async {
            if conn.is_none() {
                conn = Some((open(opts).await?, 0));
            }
            let (c, used) = conn.as_mut().expect("opened above");
            let start = Instant::now();
            transaction(c, opts, body, rcpt, seq).await?;
            *used += 1;
            Ok::<_, SessErr>(start.elapsed())
        })
        .await
        .unwrap_or_else(|_| {
            Err(SessErr::new(
                ErrKind::Timeout,
                format!("no reply within {:?}", opts.timeout),
            ))
        });
        let ev = match r {
            Ok(latency) => {
                attempt = 0;
                Event::Accepted { seq, latency }
            }
            Err(e) => {
                // State unknown: start over on a new connection.
                // A 4xx leaves the session usable: say goodbye.
                if let Some((mut c, _)) = conn.take()
                    && e.kind == ErrKind::TempFail
                {
                    let _ = quit(&mut c).await;
                }
                let ctx = format!("message {seq} to {rcpt}");
                if e.kind == ErrKind::TempFail && attempt < opts.retries {
                    attempt += 1;
                    // A short pause (an MTA would wait minutes), longer
                    // with each attempt.
                    tokio::time::sleep(Duration::from_millis(100) * attempt as u32).await;
                    Event::TempFail(ctx, e)
                } else {
                    attempt = 0;
                    Event::Failed(ctx, e)
                }
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
        if let Some((mut c, _)) = conn.take_if(|(_, used)| *used >= opts.per_connection) {
            let _ = quit(&mut c).await;
        }
    }
    if let Some((mut c, _)) = conn.take() {
        let _ = quit(&mut c).await;
    }
}

async fn open(opts: &Options) -> Result<Conn, SessErr> {
    let mut c = Conn::connect(opts.addr).await?;
    match reply(&mut c).await {
        Ok(220) => {}
        Ok(code) => return Err(SessErr::new(ErrKind::Greeting, format!("greeting {code}"))),
        Err(e) => return Err(SessErr::new(ErrKind::Greeting, e)),
    }
    command(
        &mut c,
        format!("EHLO {}\r\n", opts.helo).as_bytes(),
        250,
        "EHLO",
    )
    .await?;
    Ok(c)
}

async fn transaction(
    c: &mut Conn,
    opts: &Options,
    body: &Body,
    rcpt: &str,
    seq: usize,
) -> Result<(), SessErr> {
    command(
        c,
        format!("MAIL FROM:<{}>\r\n", opts.sender).as_bytes(),
        250,
        "MAIL",
    )
    .await?;
    command(c, format!("RCPT TO:<{rcpt}>\r\n").as_bytes(), 250, "RCPT").await?;
    command(c, b"DATA\r\n", 354, "DATA").await?;
    let msg = Message::new(opts, body, rcpt, seq);
    if opts.size <= ONE_WRITE_MAX {
        command(c, &msg.to_bytes(body), 250, "end of DATA").await
    } else {
        c.send(&msg.header).await?;
        c.send(msg.body(body)).await?;
        command(c, &msg.tail(), 250, "end of DATA").await
    }
}

async fn quit(c: &mut Conn) -> Result<(), SessErr> {
    command(c, b"QUIT\r\n", 221, "QUIT").await
}

async fn command(c: &mut Conn, line: &[u8], want: u16, what: &str) -> Result<(), SessErr> {
    c.send(line).await?;
    let code = reply(c).await?;
    if code == want {
        Ok(())
    } else {
        // 4xx: "try again later", which a client retries (--retries).
        let kind = if (400..500).contains(&code) {
            ErrKind::TempFail
        } else {
            ErrKind::Protocol
        };
        Err(SessErr::new(
            kind,
            format!("{what}: {code}, expected {want}"),
        ))
    }
}

/// Read one (possibly multi-line) SMTP reply; its code.
async fn reply(c: &mut Conn) -> Result<u16, SessErr> {
    loop {
        let line = c.line().await?;
        let code = line
            .get(..3)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u16>().ok())
            .filter(|&n| (200..600).contains(&n))
            .ok_or_else(|| {
                SessErr::new(
                    ErrKind::Protocol,
                    format!("bad reply line {:?}", String::from_utf8_lossy(line)),
                )
            })?;
        match line.get(3) {
            Some(b'-') => continue,
            None | Some(b' ') => return Ok(code),
            Some(_) => {
                return Err(SessErr::new(
                    ErrKind::Protocol,
                    format!("bad reply line {:?}", String::from_utf8_lossy(line)),
                ));
            }
        }
    }
}

/// The shared body lines: enough [`LINE`]s for the largest body.
struct Body {
    lines: Vec<u8>,
}

impl Body {
    fn new(size: usize) -> Body {
        Body {
            lines: LINE.repeat(size / LINE.len() + 1),
        }
    }
}

/// One message: its header block, then `lines` × [`LINE`], then a last
/// line of `pad` × `x` (if the size leaves room for one), then the
/// terminating `.`. `header + lines × LINE + pad + CRLF` is the message's
/// size (a remainder of 1 or 2 octets is dropped: it cannot be a line).
/// No line starts with `.`, so nothing is dot-stuffed.
struct Message {
    header: Vec<u8>,
    lines: usize,
    pad: Option<usize>,
}

impl Message {
    fn new(opts: &Options, body: &Body, rcpt: &str, seq: usize) -> Message {
        let header = header(opts, rcpt, seq);
        let lines = (opts.size.saturating_sub(header.len()) / LINE.len())
            .min(body.lines.len() / LINE.len());
        let rest = opts.size.saturating_sub(header.len() + lines * LINE.len());
        Message {
            header,
            lines,
            pad: (rest >= 3).then(|| rest - 2),
        }
    }

    fn body<'b>(&self, body: &'b Body) -> &'b [u8] {
        &body.lines[..self.lines * LINE.len()]
    }

    /// The last line and the terminator.
    fn tail(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(self.pad.unwrap_or(0) + 5);
        if let Some(pad) = self.pad {
            t.extend(std::iter::repeat_n(b'x', pad));
            t.extend_from_slice(b"\r\n");
        }
        t.extend_from_slice(b".\r\n");
        t
    }

    /// The whole message as sent after DATA, terminator included.
    fn to_bytes(&self, body: &Body) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.header.len() + self.lines * LINE.len() + 80);
        m.extend_from_slice(&self.header);
        m.extend_from_slice(self.body(body));
        m.extend_from_slice(&self.tail());
        m
    }
}

/// The header block (and the empty line after it) of message `seq`.
fn header(opts: &Options, rcpt: &str, seq: usize) -> Vec<u8> {
    format!(
        "From: <{}>\r\nTo: <{rcpt}>\r\nSubject: bench message {seq}\r\nMessage-ID: <{}>\r\nDate: Fri, 27 Nov 2026 12:00:00 +0000\r\nX-Bench-Seq: {seq}\r\n\r\n",
        opts.sender,
        message_id(seq, &opts.helo),
    )
    .into_bytes()
}

/// `bench.<seq>.<our pid>@<helo>`: unique to this run.
fn message_id(seq: usize, helo: &str) -> String {
    format!("bench.{seq}.{}@{helo}", std::process::id())
}

// ---------------------------------------------------------------- read back

/// What [`verify_delivered`] found.
struct Verified {
    /// Accepted messages found once, in the right Maildir, as sent.
    verified: usize,
    /// Messages of this run delivered although their 250 was never seen
    /// (a timeout or a dropped connection after the server stored it).
    unacked: usize,
    problems: Vec<(String, SessErr)>,
}

/// Read every file that appeared in a `new/` under `root` since
/// `baseline` and match it to the accepted messages: each must be there
/// once, under `<domain>/<local>/new/` of its recipient, its header block
/// must end with the headers sent (servers prepend trace headers) and its
/// body must be the body sent (CRLF and LF compared alike).
fn verify_delivered(
    root: &Path,
    baseline: &HashSet<PathBuf>,
    accepted: &[usize],
    rcpts: &[String],
    opts: &Options,
    body: &Body,
) -> anyhow::Result<Verified> {
    let bad = |ctx: String, what: String| (ctx, SessErr::new(ErrKind::Verify, what));
    let mut v = Verified {
        verified: 0,
        unacked: 0,
        problems: Vec::new(),
    };
    let accepted: HashSet<usize> = accepted.iter().copied().collect();
    let mut seen: HashMap<usize, PathBuf> = HashMap::new();
    let mut files: Vec<PathBuf> = new_files(root)?
        .into_iter()
        .filter(|p| !baseline.contains(p))
        .collect();
    files.sort();
    let pid_tag = format!(".{}@", std::process::id());
    for path in files {
        let ctx = path.display().to_string();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                v.problems.push(bad(ctx, format!("cannot read: {e}")));
                continue;
            }
        };
        let (head, stored_body) = split_message(&data);
        let head = lf(head);
        let Some(seq) = header_value(&head, b"X-Bench-Seq:")
            .and_then(|s| std::str::from_utf8(s).ok()?.trim().parse::<usize>().ok())
            .filter(|_| {
                header_value(&head, b"Message-ID:")
                    .is_some_and(|m| memchr::memmem::find(m, pid_tag.as_bytes()).is_some())
            })
        else {
            v.problems
                .push(bad(ctx, "not a message of this run".into()));
            continue;
        };
        if let Some(first) = seen.insert(seq, path.clone()) {
            v.problems.push(bad(
                ctx,
                format!("message {seq} delivered twice (also {})", first.display()),
            ));
            continue;
        }
        if seq >= opts.messages {
            v.problems
                .push(bad(ctx, format!("message {seq} was never sent")));
            continue;
        }
        if !accepted.contains(&seq) {
            v.unacked += 1;
            continue;
        }
        let rcpt = &rcpts[seq % rcpts.len()];
        let msg = Message::new(opts, body, rcpt, seq);
        if let Err(why) = check_place(&path, rcpt) {
            v.problems.push(bad(ctx, format!("message {seq}: {why}")));
            continue;
        }
        // The header block sent, without its empty line, in LF form.
        let sent_head = lf(&msg.header[..msg.header.len() - 2]);
        if !head.ends_with(&sent_head) {
            v.problems.push(bad(
                ctx,
                format!("message {seq}: the headers sent are not the last ones stored"),
            ));
            continue;
        }
        if !body_matches(stored_body, &msg) {
            v.problems.push(bad(
                ctx,
                format!(
                    "message {seq}: body differs from what was sent ({} octets stored)",
                    stored_body.len()
                ),
            ));
            continue;
        }
        v.verified += 1;
    }
    let missing = accepted.iter().filter(|s| !seen.contains_key(s)).count();
    if missing > 0 {
        v.problems.push(bad(
            root.display().to_string(),
            format!("{missing} accepted messages not found in any new/"),
        ));
    }
    Ok(v)
}

/// The header block (up to and including the line end of its last line)
/// and the body after the empty line.
fn split_message(data: &[u8]) -> (&[u8], &[u8]) {
    let mut at = 0;
    while at < data.len() {
        let end = memchr::memchr(b'\n', &data[at..]).map_or(data.len(), |p| at + p + 1);
        let line = &data[at..end];
        if line == b"\n" || line == b"\r\n" {
            return (&data[..at], &data[end..]);
        }
        at = end;
    }
    (data, &[])
}

/// CRLF as LF.
fn lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(p) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..p]);
        out.push(b'\n');
        rest = &rest[p + 2..];
    }
    out.extend_from_slice(rest);
    out
}

/// The value of the first header `name` (unfolded headers only).
fn header_value<'h>(head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    head.split(|&b| b == b'\n').find_map(|l| {
        (l.len() >= name.len() && l[..name.len()].eq_ignore_ascii_case(name))
            .then(|| &l[name.len()..])
    })
}

/// The stored body is `msg`'s: its lines, then its last line, with CRLF
/// or LF line ends (one convention for the whole body), and nothing else.
fn body_matches(stored: &[u8], msg: &Message) -> bool {
    let nl: &[u8] = if stored.ends_with(b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    let text = &LINE[..LINE.len() - 2];
    let line_len = text.len() + nl.len();
    let pad_len = msg.pad.map_or(0, |p| p + nl.len());
    if stored.len() != msg.lines * line_len + pad_len {
        return false;
    }
    let (lines, last) = stored.split_at(msg.lines * line_len);
    let lines_ok = lines
        .chunks(line_len)
        .all(|l| &l[..text.len()] == text && &l[text.len()..] == nl);
    let last_ok = match msg.pad {
        None => last.is_empty(),
        Some(p) => last[..p].iter().all(|&b| b == b'x') && &last[p..] == nl,
    };
    lines_ok && last_ok
}

/// The file is in `<domain>/<local>/new/` of `rcpt`.
fn check_place(path: &Path, rcpt: &str) -> Result<(), String> {
    let (local, domain) = rcpt.rsplit_once('@').unwrap_or((rcpt, ""));
    let new = path.parent();
    let user = new.and_then(Path::parent);
    let dom = user.and_then(Path::parent);
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if name(new) == "new"
        && name(user).eq_ignore_ascii_case(local)
        && name(dom).eq_ignore_ascii_case(domain)
    {
        Ok(())
    } else {
        Err(format!("stored outside {domain}/{local}/new/"))
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Files in every directory named `new` under `root`, up to 5 levels deep
/// (postoffice: data_dir/mail/DOMAIN/USER/new; Postfix virtual:
/// base/DOMAIN/USER/new).
fn count_new(root: &Path) -> anyhow::Result<usize> {
    let mut total = 0;
    walk_new(root, &mut |dir| {
        total += std::fs::read_dir(dir)?.count();
        Ok(())
    })?;
    Ok(total)
}

/// The paths of the files in those `new/` directories.
fn new_files(root: &Path) -> anyhow::Result<HashSet<PathBuf>> {
    let mut files = HashSet::new();
    walk_new(root, &mut |dir| {
        for e in std::fs::read_dir(dir)? {
            files.insert(e?.path());
        }
        Ok(())
    })?;
    Ok(files)
}

/// Call `each` for every directory named `new` under `root` (up to 5
/// levels deep, not inside `cur` or `tmp`).
fn walk_new(root: &Path, each: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> anyhow::Result<()> {
    fn walk(
        dir: &Path,
        depth: usize,
        each: &mut dyn FnMut(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if !e.file_type()?.is_dir() {
                continue;
            }
            if e.file_name() == "new" {
                each(&e.path())?;
            } else if depth > 0 && !matches!(e.file_name().to_str(), Some("cur" | "tmp")) {
                walk(&e.path(), depth - 1, each)?;
            }
        }
        Ok(())
    }
    walk(root, 5, each).map_err(|e| anyhow::anyhow!("listing new/ under {}: {e}", root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: usize) -> Options {
        Options {
            addr: "127.0.0.1:25".parse().unwrap(),
            concurrency: 1,
            messages: 1,
            size,
            per_connection: 1,
            sender: "bench@bench.test".into(),
            helo: "bench.test".into(),
            timeout: Duration::from_secs(1),
            wait_new: None,
            wait_timeout: Duration::from_secs(1),
            servers: ServerSel::default(),
            verify_delivered: false,
            sample_memory: false,
            retries: 0,
        }
    }

    fn message(opts: &Options, rcpt: &str, seq: usize) -> Vec<u8> {
        let body = Body::new(opts.size);
        Message::new(opts, &body, rcpt, seq).to_bytes(&body)
    }

    #[test]
    fn message_has_the_asked_size_and_one_terminator() {
        for size in [400, 1000, 10_240, 10_241, 65_536, 3 * 1024 * 1024 + 1] {
            let m = message(&opts(size), "u@x", 7);
            assert_eq!(m.len(), size + 3, "size {size}");
            assert!(m.ends_with(b"\r\n.\r\n"));
            // No dot at a line start apart from the terminator, no bare LF.
            let body = &m[..m.len() - 3];
            assert!(!body.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));
            assert!(
                body.windows(2)
                    .filter(|w| w[1] == b'\n')
                    .all(|w| w[0] == b'\r')
            );
        }
    }

    #[test]
    fn pieces_are_the_whole_message() {
        // Large messages are sent as header, shared body and tail.
        let o = opts(2 * 1024 * 1024 + 77);
        let body = Body::new(o.size);
        let m = Message::new(&o, &body, "someone@x.test", 12);
        let mut pieces = m.header.clone();
        pieces.extend_from_slice(m.body(&body));
        pieces.extend_from_slice(&m.tail());
        assert_eq!(pieces, m.to_bytes(&body));
        assert_eq!(pieces.len(), o.size + 3);
    }

    #[test]
    fn counts_files_in_new_directories_only() {
        let root = std::env::temp_dir().join(format!("po-bench-count-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (d, n) in [
            ("a.test/u1/new", 2),
            ("a.test/u1/cur", 5),
            ("b.test/u2/Maildir/new", 3),
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            for i in 0..n {
                std::fs::write(root.join(d).join(format!("m{i}")), b"x").unwrap();
            }
        }
        assert_eq!(count_new(&root).unwrap(), 5);
        assert_eq!(new_files(&root).unwrap().len(), 5);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// What a server stores for message `seq`: trace headers prepended,
    /// then the message as sent without the terminator, CRLF or LF.
    fn stored(o: &Options, rcpt: &str, seq: usize, crlf: bool) -> Vec<u8> {
        let m = message(o, rcpt, seq);
        let mut f = b"Return-Path: <bench@bench.test>\r\nReceived: from bench.test\r\n".to_vec();
        f.extend_from_slice(&m[..m.len() - 3]);
        if crlf { f } else { lf(&f) }
    }

    #[test]
    fn read_back_finds_every_problem() {
        let root = std::env::temp_dir().join(format!("po-bench-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut o = opts(5000);
        o.messages = 7;
        let rcpts: Vec<String> = vec!["u1@d.test".into(), "u2@d.test".into()];
        let body = Body::new(o.size);
        for u in ["u1", "u2"] {
            std::fs::create_dir_all(root.join(format!("d.test/{u}/new"))).unwrap();
        }
        let put = |user: &str, name: &str, data: &[u8]| {
            std::fs::write(root.join(format!("d.test/{user}/new/{name}")), data).unwrap();
        };
        // A file from before the run is ignored.
        put("u1", "old", b"Subject: old\n\nold\n");
        let baseline = new_files(&root).unwrap();
        // 0 (u1) as Postfix stores it (LF), 1 (u2) as postoffice (CRLF).
        put("u1", "m0", &stored(&o, "u1@d.test", 0, false));
        put("u2", "m1", &stored(&o, "u2@d.test", 1, true));
        // 2 (u1) delivered twice.
        put("u1", "m2a", &stored(&o, "u1@d.test", 2, true));
        put("u1", "m2b", &stored(&o, "u1@d.test", 2, true));
        // 3 (u2) in u1's maildrop.
        put("u1", "m3", &stored(&o, "u2@d.test", 3, true));
        // 4 (u1) with one body octet changed.
        let mut m4 = stored(&o, "u1@d.test", 4, true);
        let n = m4.len() - 10;
        m4[n] = b'#';
        put("u1", "m4", &m4);
        // 5 (u2) truncated by one line.
        let m5 = stored(&o, "u2@d.test", 5, true);
        put("u2", "m5", &m5[..m5.len() - LINE.len()]);
        // 6 accepted but never stored.
        let accepted = [0, 1, 2, 3, 4, 5, 6];
        let v = verify_delivered(&root, &baseline, &accepted, &rcpts, &o, &body).unwrap();
        // 0, 1 and the first copy of 2.
        assert_eq!(v.verified, 3, "{:?}", v.problems);
        let text: Vec<String> = v.problems.iter().map(|(_, e)| e.detail.clone()).collect();
        assert_eq!(v.problems.len(), 5, "{text:?}");
        for want in [
            "delivered twice",
            "stored outside d.test/u2/new/",
            "message 4: body differs",
            "message 5: body differs",
            "1 accepted messages not found",
        ] {
            assert!(text.iter().any(|t| t.contains(want)), "{want}: {text:?}");
        }
        // Everything right: all verified, no problems.
        let accepted = [0, 1];
        let _ = std::fs::remove_dir_all(&root);
        for u in ["u1", "u2"] {
            std::fs::create_dir_all(root.join(format!("d.test/{u}/new"))).unwrap();
        }
        put("u1", "m0", &stored(&o, "u1@d.test", 0, false));
        put("u2", "m1", &stored(&o, "u2@d.test", 1, true));
        let v = verify_delivered(&root, &HashSet::new(), &accepted, &rcpts, &o, &body).unwrap();
        assert_eq!((v.verified, v.unacked, v.problems.len()), (2, 0, 0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

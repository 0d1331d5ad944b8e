//! `smtp`: C concurrent clients send S messages of a fixed size to local
//! users, one transaction after the other (no PIPELINING, like
//! `smtp-source`), and the run is timed twice: until the last `250` after
//! DATA (accepted) and, with `--wait-new`, until every accepted message is
//! a file in some Maildir `new/` (end to end: a server that queues first,
//! like Postfix, delivers after its `250`; postoffice delivers before it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::conn::Conn;
use crate::procinfo::{self, ServerSel};
use crate::report::{ErrKind, Errors, ResultLine, SessErr, Summary};

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
}

/// What one connection reported for one message.
enum Event {
    Accepted(Duration),
    Failed(String, SessErr),
}

pub async fn run(opts: Options, rcpts: Vec<String>) -> anyhow::Result<bool> {
    if opts.concurrency == 0 || opts.messages == 0 || opts.per_connection == 0 {
        anyhow::bail!("--concurrency, --messages and --per-connection must be at least 1");
    }
    if rcpts.is_empty() {
        anyhow::bail!("no recipients");
    }
    let baseline = match &opts.wait_new {
        Some(dir) => Some(count_new(dir)?),
        None => None,
    };
    let rcpts = Arc::new(rcpts);
    let opts = Arc::new(opts);
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let cpu0 = procinfo::self_cpu();
    let srv0 = opts.servers.cpu_ticks();
    let t0 = Instant::now();
    for _ in 0..opts.concurrency.min(opts.messages) {
        let (rcpts, opts, next, tx) = (rcpts.clone(), opts.clone(), next.clone(), tx.clone());
        tokio::spawn(async move { client(&opts, &rcpts, &next, &tx).await });
    }
    drop(tx);
    let mut errors = Errors::default();
    let mut lat = Vec::with_capacity(opts.messages);
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Accepted(d) => lat.push(d),
            Event::Failed(ctx, e) => errors.record(&e, &ctx),
        }
    }
    let accepted_at = t0.elapsed();
    let accepted = lat.len();
    let mut delivered_at = None;
    let mut undelivered = 0usize;
    if let (Some(dir), Some(base)) = (&opts.wait_new, baseline) {
        let want = base + accepted;
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
    errors.report(&mut r);
    r.print();
    Ok(errors.total() == 0 && accepted == opts.messages)
}

/// One client: connections of up to `per_connection` transactions each,
/// taking message numbers from `next` until all are taken.
async fn client(
    opts: &Options,
    rcpts: &[String],
    next: &AtomicUsize,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let mut conn: Option<(Conn, usize)> = None;
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= opts.messages {
            break;
        }
        let rcpt = &rcpts[seq % rcpts.len()];
        let r = tokio::time::timeout(opts.timeout, async {
            if conn.is_none() {
                conn = Some((open(opts).await?, 0));
            }
            let (c, used) = conn.as_mut().expect("opened above");
            let start = Instant::now();
            transaction(c, opts, rcpt, seq).await?;
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
            Ok(d) => Event::Accepted(d),
            Err(e) => {
                conn = None; // state unknown: start over on a new connection
                Event::Failed(format!("message {seq} to {rcpt}"), e)
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

async fn transaction(c: &mut Conn, opts: &Options, rcpt: &str, seq: usize) -> Result<(), SessErr> {
    command(
        c,
        format!("MAIL FROM:<{}>\r\n", opts.sender).as_bytes(),
        250,
        "MAIL",
    )
    .await?;
    command(c, format!("RCPT TO:<{rcpt}>\r\n").as_bytes(), 250, "RCPT").await?;
    command(c, b"DATA\r\n", 354, "DATA").await?;
    let msg = message(opts, rcpt, seq);
    command(c, &msg, 250, "end of DATA").await
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
        Err(SessErr::new(
            ErrKind::Protocol,
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

/// The message: headers, then 76-character body lines filling up to
/// `size` octets, then the terminating `.` line. No line starts with `.`.
fn message(opts: &Options, rcpt: &str, seq: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(opts.size + 8);
    m.extend_from_slice(
        format!(
            "From: <{}>\r\nTo: <{rcpt}>\r\nSubject: bench message {seq}\r\nMessage-ID: <bench.{seq}.{}@{}>\r\nDate: Fri, 27 Nov 2026 12:00:00 +0000\r\nX-Bench-Seq: {seq}\r\n\r\n",
            opts.sender,
            std::process::id(),
            opts.helo
        )
        .as_bytes(),
    );
    const LINE: &[u8] =
        b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklm\r\n";
    while m.len() + LINE.len() <= opts.size {
        m.extend_from_slice(LINE);
    }
    let rest = opts.size.saturating_sub(m.len());
    if rest >= 3 {
        m.extend(std::iter::repeat_n(b'x', rest - 2));
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// Files in every directory named `new` under `root`, up to 5 levels deep
/// (postoffice: data_dir/mail/DOMAIN/USER/new; Postfix virtual:
/// base/DOMAIN/USER/new).
fn count_new(root: &Path) -> anyhow::Result<usize> {
    fn walk(dir: &Path, depth: usize, total: &mut usize) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if !e.file_type()?.is_dir() {
                continue;
            }
            if e.file_name() == "new" {
                *total += std::fs::read_dir(e.path())?.count();
            } else if depth > 0 && !matches!(e.file_name().to_str(), Some("cur" | "tmp")) {
                walk(&e.path(), depth - 1, total)?;
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, 5, &mut total)
        .map_err(|e| anyhow::anyhow!("counting new/ under {}: {e}", root.display()))?;
    Ok(total)
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
        }
    }

    #[test]
    fn message_has_the_asked_size_and_one_terminator() {
        for size in [400, 1000, 10_240, 10_241, 65_536] {
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
        std::fs::remove_dir_all(&root).unwrap();
    }
}

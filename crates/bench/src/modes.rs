//! The single-purpose POP3 modes: `hold` (idle sessions and server memory),
//! `bigbox` (login on a huge maildrop), `pipeline` (many pipelined
//! commands) and `retr-big` (one large RETR).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::conn::{Conn, nums};
use crate::procinfo::{self, Memory, ServerSel};
use crate::report::{self, ErrKind, Errors, ResultLine, SessErr, Summary, ms};

/// Where and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub password: String,
    pub timeout: Duration,
}

async fn timed<T>(
    t: Duration,
    f: impl std::future::Future<Output = Result<T, SessErr>>,
) -> Result<T, SessErr> {
    tokio::time::timeout(t, f)
        .await
        .unwrap_or_else(|_| Err(SessErr::new(ErrKind::Timeout, format!("no reply in {t:?}"))))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------- hold

pub struct HoldOptions {
    pub target: Target,
    pub seconds: f64,
    pub connect_concurrency: usize,
    pub servers: ServerSel,
}

/// Open one logged-in session per user, keep them all idle for
/// `seconds`, measure the servers' memory while they are held, then QUIT.
pub async fn hold(opts: HoldOptions, users: Vec<String>) -> anyhow::Result<bool> {
    let k = users.len();
    let before = opts.servers.memory();
    let cpu0 = procinfo::self_cpu();
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let (release_tx, release_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(String, Result<(), SessErr>)>();
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<(String, Result<(), SessErr>)>();
    let t0 = Instant::now();
    for user in users {
        let (gate, mut release, ready, end) = (
            gate.clone(),
            release_rx.clone(),
            ready_tx.clone(),
            end_tx.clone(),
        );
        let target = opts.target.clone();
        tokio::spawn(async move {
            let opened = {
                let _permit = gate.acquire().await;
                timed(target.timeout, async {
                    let mut c = Conn::open(target.addr).await?;
                    c.login(&user, &target.password).await?;
                    c.command("STAT").await?;
                    Ok(c)
                })
                .await
            };
            let mut c = match opened {
                Ok(c) => {
                    let _ = ready.send((user.clone(), Ok(())));
                    c
                }
                Err(e) => {
                    let _ = ready.send((user, Err(e)));
                    return;
                }
            };
            let _ = release.wait_for(|r| *r).await;
            let r = timed(target.timeout, c.quit()).await;
            let _ = end.send((user, r));
        });
    }
    drop((ready_tx, end_tx));
    let mut errors = Errors::default();
    let mut held = 0usize;
    let mut login_lat = Vec::with_capacity(k);
    // Exactly one readiness report per session (the senders stay alive in
    // the held sessions, so the channel does not close here).
    for _ in 0..k {
        let Some((user, r)) = ready_rx.recv().await else {
            break;
        };
        match r {
            Ok(()) => {
                held += 1;
                login_lat.push(t0.elapsed());
            }
            Err(e) => errors.record(&e, &user),
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    println!(
        "pop3 hold: {held}/{k} sessions logged in and idle after {open_secs:.2} s; holding {:.1} s",
        opts.seconds
    );
    // Let the servers settle (Dovecot's pop3 processes finish starting),
    // then sample memory a few times during the hold and keep the peak.
    let hold = Duration::from_secs_f64(opts.seconds.max(0.0));
    let hold_start = Instant::now();
    let mut peak = Memory::default();
    let samples = 3u32;
    for i in 1..=samples {
        let at = hold.mul_f64(f64::from(i) / f64::from(samples));
        tokio::time::sleep(at.saturating_sub(hold_start.elapsed())).await;
        if !opts.servers.is_empty() {
            let m = opts.servers.memory();
            if m.pss_kib >= peak.pss_kib {
                peak = m;
            }
        }
    }
    let _ = release_tx.send(true);
    let mut quit_ok = 0usize;
    while let Some((user, r)) = end_rx.recv().await {
        match r {
            Ok(()) => quit_ok += 1,
            Err(e) => errors.record(&e, &user),
        }
    }
    let cpu = procinfo::self_cpu().saturating_sub(cpu0);
    let mut r = ResultLine::new("hold");
    r.kv("sessions", k)
        .kv("held", held)
        .kv("quit_ok", quit_ok)
        .f("open_s", open_secs, 3)
        .f("hold_s", opts.seconds, 1)
        .f("gen_cpu_s", cpu.as_secs_f64(), 3);
    if !opts.servers.is_empty() {
        let per = (peak.pss_kib.saturating_sub(before.pss_kib)) as f64 / held.max(1) as f64;
        println!(
            "  servers while held: {} processes, RSS {:.1} MiB, PSS {:.1} MiB (before: {} processes, PSS {:.1} MiB); {:.1} KiB PSS per held session",
            peak.processes,
            mib(peak.rss_kib),
            mib(peak.pss_kib),
            before.processes,
            mib(before.pss_kib),
            per
        );
        r.kv("server_processes", peak.processes)
            .f("rss_mib", mib(peak.rss_kib), 1)
            .f("pss_mib", mib(peak.pss_kib), 1)
            .f("pss_before_mib", mib(before.pss_kib), 1)
            .f("pss_per_session_kib", per, 1);
    }
    let s = Summary::of(login_lat);
    println!(
        "  all logged in by {} ms; {quit_ok} QUIT ok; generator CPU {:.2} s",
        ms(s.max),
        cpu.as_secs_f64()
    );
    errors.report(&mut r);
    r.print();
    Ok(errors.total() == 0 && held == k && quit_ok == k)
}

// ---------------------------------------------------------------- bigbox

/// Login + STAT + UIDL on one (big) maildrop, timed, `repeat` times.
pub async fn bigbox(target: Target, user: String, repeat: usize) -> anyhow::Result<bool> {
    let mut times = Vec::new();
    let mut errors = Errors::default();
    let mut count = 0;
    let cpu0 = procinfo::self_cpu();
    for _ in 0..repeat.max(1) {
        let r = timed(target.timeout, async {
            let t = Instant::now();
            let mut c = Conn::open(target.addr).await?;
            c.login(&user, &target.password).await?;
            let stat = c.command("STAT").await?;
            let (n, _) = nums(&stat)
                .ok_or_else(|| SessErr::new(ErrKind::Protocol, format!("STAT: {stat:?}")))?;
            c.command("UIDL").await?;
            let mut uids = 0u64;
            c.multiline(|_| uids += 1).await?;
            let took = t.elapsed();
            if uids != n {
                return Err(SessErr::new(
                    ErrKind::Verify,
                    format!("UIDL listed {uids}, STAT said {n}"),
                ));
            }
            c.quit().await?;
            Ok((took, n))
        })
        .await;
        match r {
            Ok((t, n)) => {
                times.push(t);
                count = n;
            }
            Err(e) => errors.record(&e, &user),
        }
    }
    let cpu = procinfo::self_cpu().saturating_sub(cpu0);
    let first = times.first().copied().unwrap_or_default();
    let all = Summary::of(times.clone());
    let warm = Summary::of(times.iter().skip(1).copied().collect());
    println!(
        "pop3 bigbox: {} messages; login+STAT+UIDL first {} ms, median {} ms, warm median (without the first) {} ms, min {} ms, max {} ms over {} runs",
        count,
        ms(first),
        ms(all.p50),
        ms(if warm.count > 0 { warm.p50 } else { first }),
        ms(all.min),
        ms(all.max),
        all.count
    );
    let mut r = ResultLine::new("bigbox");
    r.kv("messages", count)
        .kv("runs", all.count)
        .kv("first_ms", ms(first))
        .kv("median_ms", ms(all.p50))
        .kv(
            "warm_median_ms",
            ms(if warm.count > 0 { warm.p50 } else { first }),
        )
        .kv("min_ms", ms(all.min))
        .kv("max_ms", ms(all.max))
        .f("gen_cpu_s", cpu.as_secs_f64(), 3);
    errors.report(&mut r);
    r.print();
    Ok(errors.total() == 0)
}

// ---------------------------------------------------------------- pipeline

/// After login, send `count` × `LIST 1` in one write and time until every
/// reply has been read. One session per repetition.
pub async fn pipeline(
    target: Target,
    user: String,
    count: usize,
    repeat: usize,
) -> anyhow::Result<bool> {
    let mut times = Vec::new();
    let mut errors = Errors::default();
    let burst: Vec<u8> = b"LIST 1\r\n".repeat(count);
    let cpu0 = procinfo::self_cpu();
    for _ in 0..repeat.max(1) {
        let r = timed(target.timeout, async {
            let mut c = Conn::open(target.addr).await?;
            c.login(&user, &target.password).await?;
            let t = Instant::now();
            // Write and read concurrently so neither side's socket buffer
            // can stall the other.
            let (mut rd, mut wr) = c
                .tcp_mut()
                .ok_or_else(|| SessErr::new(ErrKind::Protocol, "pipeline needs plain TCP"))?
                .split();
            let write = async {
                wr.write_all(&burst)
                    .await
                    .map_err(|e| SessErr::new(ErrKind::Io, e))
            };
            let read = read_replies(&mut rd, count);
            let (w, rr) = tokio::join!(write, read);
            w?;
            let leftover = rr?;
            let took = t.elapsed();
            if !leftover.is_empty() {
                return Err(SessErr::new(
                    ErrKind::Protocol,
                    "more replies than commands",
                ));
            }
            c.quit().await?;
            Ok(took)
        })
        .await;
        match r {
            Ok(t) => times.push(t),
            Err(e) => errors.record(&e, &user),
        }
    }
    let cpu = procinfo::self_cpu().saturating_sub(cpu0);
    let s = Summary::of(times);
    println!(
        "pop3 pipeline: {count} x LIST 1 in one write: median {} ms, min {} ms, max {} ms over {} runs ({:.0} commands/s at the median)",
        ms(s.p50),
        ms(s.min),
        ms(s.max),
        s.count,
        count as f64 / s.p50.as_secs_f64().max(1e-9)
    );
    let mut r = ResultLine::new("pipeline");
    r.kv("count", count)
        .kv("runs", s.count)
        .kv("median_ms", ms(s.p50))
        .kv("min_ms", ms(s.min))
        .kv("max_ms", ms(s.max))
        .f("gen_cpu_s", cpu.as_secs_f64(), 3);
    errors.report(&mut r);
    r.print();
    Ok(errors.total() == 0)
}

/// Read `count` `+OK` lines from a raw read half; returns whatever
/// followed the last one (should be nothing).
async fn read_replies(
    rd: &mut tokio::net::tcp::ReadHalf<'_>,
    count: usize,
) -> Result<Vec<u8>, SessErr> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    while seen < count {
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| SessErr::new(ErrKind::Io, e))?;
        if n == 0 {
            return Err(SessErr::new(
                ErrKind::Io,
                format!("closed after {seen} of {count} replies"),
            ));
        }
        partial.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while seen < count {
            let Some(pos) = memchr::memchr(b'\n', &partial[start..]) else {
                break;
            };
            let line = &partial[start..start + pos];
            if !line.starts_with(b"+OK") {
                return Err(SessErr::new(
                    ErrKind::Protocol,
                    format!(
                        "reply {} of {count}: {}",
                        seen + 1,
                        String::from_utf8_lossy(line).trim_end()
                    ),
                ));
            }
            seen += 1;
            start += pos + 1;
        }
        partial.drain(..start);
    }
    Ok(partial)
}

// ---------------------------------------------------------------- retr-big

/// RETR of one (big) message, timed from the command to the final `.`.
pub async fn retr_big(
    target: Target,
    user: String,
    msg: u64,
    repeat: usize,
    verify_hash: bool,
) -> anyhow::Result<bool> {
    let mut rates = Vec::new();
    let mut times = Vec::new();
    let mut errors = Errors::default();
    let mut size = 0;
    let cpu0 = procinfo::self_cpu();
    let t_all = Instant::now();
    for _ in 0..repeat.max(1) {
        let r = timed(target.timeout, async {
            let mut c = Conn::open(target.addr).await?;
            c.login(&user, &target.password).await?;
            let list = c.command(&format!("LIST {msg}")).await?;
            let (_, listed) = nums(&list)
                .ok_or_else(|| SessErr::new(ErrKind::Protocol, format!("LIST: {list:?}")))?;
            let t = Instant::now();
            c.command(&format!("RETR {msg}")).await?;
            let body = c.retr_body(verify_hash).await?;
            let took = t.elapsed();
            if body.octets != listed {
                return Err(SessErr::new(
                    ErrKind::Verify,
                    format!("RETR: {} octets, LIST said {listed}", body.octets),
                ));
            }
            if verify_hash && body.hash_ok != Some(true) {
                return Err(SessErr::new(ErrKind::Verify, "body hash mismatch"));
            }
            c.quit().await?;
            Ok((took, listed))
        })
        .await;
        match r {
            Ok((t, n)) => {
                size = n;
                times.push(t);
                rates.push(n as f64 / t.as_secs_f64().max(1e-9));
            }
            Err(e) => errors.record(&e, &user),
        }
    }
    let cpu = procinfo::self_cpu().saturating_sub(cpu0);
    let cpu_share = cpu.as_secs_f64() / t_all.elapsed().as_secs_f64().max(1e-9);
    rates.sort_by(f64::total_cmp);
    let median_rate = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let s = Summary::of(times);
    println!(
        "pop3 retr-big: {size} octets; median {} ms = {:.1} MB/s ({:.2} GB/s); best {} ms over {} runs",
        report::ms(s.p50),
        median_rate / 1e6,
        median_rate / 1e9,
        report::ms(s.min),
        s.count
    );
    let mut r = ResultLine::new("retr-big");
    r.kv("octets", size)
        .kv("runs", s.count)
        .kv("median_ms", ms(s.p50))
        .kv("min_ms", ms(s.min))
        .f("mb_per_s", median_rate / 1e6, 1)
        .f("gb_per_s", median_rate / 1e9, 3)
        .f("gen_cpu_s", cpu.as_secs_f64(), 3)
        .f("gen_cpu_pct", cpu_share * 100.0, 1);
    errors.report(&mut r);
    r.print();
    Ok(errors.total() == 0)
}

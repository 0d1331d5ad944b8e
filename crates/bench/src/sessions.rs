//! `pop3 sessions`: a fixed number of complete POP3 sessions from many
//! concurrent clients.
//!
//! Each session: connect, greeting, USER, PASS, STAT, [LIST], UIDL,
//! RETR 1..k (each checked against LIST; optionally hashed), [DELE], QUIT.
//! Latency is measured per session, from before `connect` to QUIT's reply.
//!
//! With TLS (implicit, as on port 995) the handshake is part of every
//! session, and so of its latency. Full handshakes: all sessions share one
//! client configuration that never resumes. Resumption: every user is a
//! simulated client with its own session store, primed (before the clock
//! starts) by one connection per user that only reads the greeting and
//! QUITs, as a returning client would have connected before; each
//! measured session then offers the ticket its client was given last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::conn::{Conn, nums};
use crate::procinfo::{self, ServerSel};
use crate::report::{ErrKind, Errors, ResultLine, SessErr, Summary};
use crate::tls::{Handshake, TlsClient, TlsSetup};
use crate::users::UserPool;

/// How many messages each session retrieves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retr {
    All,
    None,
    First(u64),
}

impl std::str::FromStr for Retr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Retr::All),
            "none" => Ok(Retr::None),
            n => n
                .parse()
                .map(Retr::First)
                .map_err(|_| format!("expected all, none or a number, not {n:?}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub password: String,
    pub concurrency: usize,
    pub sessions: usize,
    pub retr: Retr,
    pub dele: bool,
    pub verify_hash: bool,
    pub timeout: Duration,
    pub servers: ServerSel,
    /// Implicit TLS (POP3S).
    pub tls: Option<TlsOptions>,
}

/// POP3S: who to trust, and whether clients resume their sessions.
#[derive(Clone)]
pub struct TlsOptions {
    pub setup: TlsSetup,
    /// One session store per user (returning clients), primed before the
    /// run; otherwise a full handshake for every session.
    pub resume: bool,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsOptions {{ resume: {} }}", self.resume)
    }
}

/// The TLS clients of a run: one shared (full handshakes) or one per user.
enum Clients {
    Shared(TlsClient),
    PerUser(Vec<TlsClient>),
}

impl Clients {
    fn get(&self, user: usize) -> &TlsClient {
        match self {
            Clients::Shared(c) => c,
            Clients::PerUser(v) => &v[user],
        }
    }
}

/// What one successful session did.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    latency: Duration,
    messages: u64,
    octets: u64,
    hashed: u64,
    handshake: Option<Handshake>,
}

pub async fn run(opts: Options, pool: UserPool) -> anyhow::Result<bool> {
    let pool = Arc::new(pool);
    let opts = Arc::new(opts);
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Result<Done, SessErr>)>();
    if opts.concurrency > pool.len() {
        eprintln!(
            "note: concurrency {} > {} users: some users get concurrent sessions (IN-USE on servers that lock)",
            opts.concurrency,
            pool.len()
        );
    }
    let mut errors = Errors::default();
    let clients = match &opts.tls {
        None => None,
        Some(t) if !t.resume => Some(Arc::new(Clients::Shared(t.setup.full()))),
        Some(t) => {
            let clients = Arc::new(Clients::PerUser(
                (0..pool.len()).map(|_| t.setup.resuming()).collect(),
            ));
            let primed = prime(&opts, &pool, &clients, &mut errors).await;
            println!(
                "pop3 sessions: TLS session stores of {} clients primed ({primed} connected)",
                pool.len()
            );
            Some(clients)
        }
    };
    let cpu0 = procinfo::self_cpu();
    let srv0 = opts.servers.cpu_ticks();
    let t0 = Instant::now();
    for _ in 0..opts.concurrency.min(opts.sessions) {
        let (pool, opts, next, tx) = (pool.clone(), opts.clone(), next.clone(), tx.clone());
        let clients = clients.clone();
        tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < opts.sessions {
                let (idx, user) = pool.acquire();
                let user = user.to_string();
                let tls = clients.as_deref().map(|c| c.get(idx));
                let r = match tokio::time::timeout(opts.timeout, session(&opts, &user, tls)).await {
                    Ok(r) => r,
                    Err(_) => Err(SessErr::new(
                        ErrKind::Timeout,
                        format!("no end after {:?}", opts.timeout),
                    )),
                };
                pool.release(idx);
                if tx.send((user, r)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(opts.sessions);
    let (mut messages, mut octets, mut hashed) = (0u64, 0u64, 0u64);
    let (mut resumed, mut full, mut negotiated) = (0u64, 0u64, None);
    while let Some((user, r)) = rx.recv().await {
        match r {
            Ok(d) => {
                lat.push(d.latency);
                messages += d.messages;
                octets += d.octets;
                hashed += d.hashed;
                if let Some(h) = d.handshake {
                    if h.resumed {
                        resumed += 1;
                    } else {
                        full += 1;
                    }
                    negotiated.get_or_insert(h);
                }
            }
            Err(e) => errors.record(&e, &user),
        }
    }
    let elapsed = t0.elapsed();
    let cpu = procinfo::self_cpu().saturating_sub(cpu0);
    let srv_cpu = procinfo::ticks_to_duration(opts.servers.cpu_ticks().saturating_sub(srv0));
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ok = lat.len();
    let s = Summary::of(lat);

    println!(
        "pop3 sessions: {ok}/{} ok in {:.2} s, concurrency {}, retr {:?}{}",
        opts.sessions,
        secs,
        opts.concurrency,
        opts.retr,
        if opts.dele { ", DELE" } else { "" }
    );
    println!(
        "  {:.1} sessions/s, {:.1} messages/s, {:.1} MB/s of message data ({} messages, {} octets{})",
        ok as f64 / secs,
        messages as f64 / secs,
        octets as f64 / secs / 1e6,
        messages,
        octets,
        if opts.verify_hash {
            format!(", {hashed} hashes checked")
        } else {
            String::new()
        }
    );
    if let Some(t) = &opts.tls {
        println!(
            "  TLS ({}): {full} full handshakes, {resumed} resumed{}",
            negotiated.map_or_else(|| "-".to_string(), |h| h.describe()),
            if t.resume {
                " (each user a returning client with its own session store)"
            } else {
                " (resumption off)"
            }
        );
    }
    crate::report::print_latency("session latency ms", &s);
    let server = (!opts.servers.is_empty()).then_some(srv_cpu);
    crate::report::print_cpu(cpu, secs, server.map(|d| (d, ok, "session")));
    let mut r = ResultLine::new("sessions");
    r.kv("sessions", opts.sessions)
        .kv("ok", ok)
        .kv("concurrency", opts.concurrency)
        .f("elapsed_s", secs, 3)
        .f("sessions_per_s", ok as f64 / secs, 2)
        .f("messages_per_s", messages as f64 / secs, 2)
        .f("mb_per_s", octets as f64 / secs / 1e6, 2)
        .kv("messages", messages)
        .kv("octets", octets)
        .kv("hashes_checked", hashed)
        .latency(&s)
        .cpu(cpu, secs, server);
    if let Some(t) = &opts.tls {
        r.kv("tls_resume", u8::from(t.resume))
            .kv("tls_full", full)
            .kv("tls_resumed", resumed)
            .kv(
                "tls",
                negotiated.map_or_else(|| "-".to_string(), |h| h.describe()),
            );
    }
    errors.report(&mut r);
    r.print();
    Ok(errors.total() == 0 && ok == opts.sessions)
}

/// Connect each user's client once (handshake, greeting, QUIT) so that
/// its session store holds what the server issued; `concurrency` at a
/// time. Returns how many connected; failures are recorded.
async fn prime(
    opts: &Arc<Options>,
    pool: &Arc<UserPool>,
    clients: &Arc<Clients>,
    errors: &mut Errors,
) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<(), SessErr>)>();
    for _ in 0..opts.concurrency.min(pool.len()) {
        let (opts, pool, clients, next, tx) = (
            opts.clone(),
            pool.clone(),
            clients.clone(),
            next.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pool.len() {
                    return;
                }
                let r = tokio::time::timeout(opts.timeout, async {
                    let (mut c, _) = Conn::open_tls(opts.addr, clients.get(i)).await?;
                    c.quit().await
                })
                .await
                .unwrap_or_else(|_| Err(SessErr::new(ErrKind::Timeout, "priming connection")));
                if tx.send((i, r)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut ok = 0;
    while let Some((i, r)) = rx.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => errors.record(&e, &format!("priming the TLS client of {}", pool.name(i))),
        }
    }
    ok
}

async fn session(opts: &Options, user: &str, tls: Option<&TlsClient>) -> Result<Done, SessErr> {
    let start = Instant::now();
    let mut handshake = None;
    let mut c = match tls {
        None => Conn::open(opts.addr).await?,
        Some(t) => {
            let (c, h) = Conn::open_tls(opts.addr, t).await?;
            handshake = Some(h);
            c
        }
    };
    c.login(user, &opts.password).await?;
    let stat = c.command("STAT").await?;
    let (count, total) =
        nums(&stat).ok_or_else(|| SessErr::new(ErrKind::Protocol, format!("STAT: {stat:?}")))?;
    let want = match opts.retr {
        Retr::All => count,
        Retr::None => 0,
        Retr::First(k) => k.min(count),
    };
    // LIST gives the sizes RETR is checked against; a login-only session
    // (retr none) skips it and does just STAT + UIDL.
    let mut sizes = Vec::new();
    if want > 0 {
        c.command("LIST").await?;
        let mut bad = false;
        c.multiline(|l| match std::str::from_utf8(l).ok().and_then(nums) {
            Some((n, size)) if n == sizes.len() as u64 + 1 => sizes.push(size),
            _ => bad = true,
        })
        .await?;
        if bad || sizes.len() as u64 != count || sizes.iter().sum::<u64>() != total {
            return Err(SessErr::new(
                ErrKind::Verify,
                format!(
                    "LIST: {} entries totalling {} octets, STAT said {count} / {total}",
                    sizes.len(),
                    sizes.iter().sum::<u64>()
                ),
            ));
        }
    }
    c.command("UIDL").await?;
    let mut uids = 0u64;
    c.multiline(|_| uids += 1).await?;
    if uids != count {
        return Err(SessErr::new(
            ErrKind::Verify,
            format!("UIDL listed {uids} messages, STAT said {count}"),
        ));
    }
    let mut done = Done {
        handshake,
        ..Done::default()
    };
    for n in 1..=want {
        c.command(&format!("RETR {n}")).await?;
        let body = c.retr_body(opts.verify_hash).await?;
        let listed = sizes[(n - 1) as usize];
        if body.octets != listed {
            return Err(SessErr::new(
                ErrKind::Verify,
                format!("RETR {n}: {} octets, LIST said {listed}", body.octets),
            ));
        }
        match body.hash_ok {
            Some(true) => done.hashed += 1,
            Some(false) => {
                return Err(SessErr::new(
                    ErrKind::Verify,
                    format!("RETR {n}: body does not match its X-Bench-Body-SHA256"),
                ));
            }
            None if opts.verify_hash => {
                return Err(SessErr::new(
                    ErrKind::Verify,
                    format!("RETR {n}: no X-Bench-Body-SHA256 header to check"),
                ));
            }
            None => {}
        }
        done.messages += 1;
        done.octets += body.octets;
        if opts.dele {
            c.command(&format!("DELE {n}")).await?;
        }
    }
    c.quit().await?;
    done.latency = start.elapsed();
    Ok(done)
}

//! The scheduler: picks due entries and delivers them.
//!
//! It keeps no state of its own that matters: every decision is read from
//! the envelopes, and every result is written back (atomically) before the
//! next step, so a crash at any point loses nothing. It re-scans the spool
//! every [`RESCAN`] (so `postoffice queue retry|flush|delete` from another
//! process takes effect without signals), whenever [`Queue::wake`] is called
//! (enqueue, retry, flush in this process) and when a delivery finishes.
//!
//! Per entry: the due pending recipients are grouped by domain; each group
//! goes to its destination (a transport, the relayhost, or the MX hosts) in
//! one SMTP transaction, under the limits `max_concurrency_per_domain` (per
//! destination: the domain, or the relay) and `max_concurrency` (overall).
//! Then:
//!
//! * delivered: done; 5xx: failed; 4xx or no connection: retried after the
//!   next step of `retry_schedule_secs`, until `max_age_secs`, then failed;
//! * failed recipients are reported to the sender in one DSN (RFC 3464),
//!   delivered through [`LocalDeliver`] when the sender's domain is local,
//!   otherwise queued as a new entry with the null sender. A message from
//!   the null sender is never bounced (logged and dropped);
//! * once per entry, after `delay_warning_secs`, a delay warning (same
//!   format, `Action: delayed`);
//! * the entry is removed when every recipient is delivered or failed and
//!   reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use postoffice_smtp::EnhancedCode;
use postoffice_smtp::client::{RcptResult, Status, TlsMode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::backoff;
use crate::dsn::{self, Dsn, DsnAction, DsnRecipient};
use crate::route::{self, Relay, Target};
use crate::spool::{RcptState, SpoolEnvelope, unix_now};
use crate::transport::{self, Attempt, TlsClients};
use crate::{LocalDeliver, Queue, QueueError, Signer};

/// How often the spool is re-read even without a wake-up.
pub const RESCAN: Duration = Duration::from_secs(5);

/// DNS answers the resolver keeps.
const RESOLVER_CACHE: u64 = 1024;

/// How long shutdown waits for deliveries in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Least time between two scans (wake-ups in between are merged).
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(200);

/// An entry whose processing hit an error (say, its envelope could not be
/// written) is left alone this long, so that a persistent local problem
/// does not turn into a loop of deliveries.
const ERROR_HOLD_SECS: u64 = 60;

/// What delivery needs besides the queue.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// Our name: EHLO argument, Reporting-MTA, MAILER-DAEMON's domain.
    pub hostname: String,
    pub queue: postoffice_config::Queue,
    pub dns: postoffice_config::Dns,
    /// Whether a domain is ours (a bounce to it is delivered locally).
    pub local_domains: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("hostname", &self.hostname)
            .field("queue", &self.queue)
            .field("dns", &self.dns)
            .finish_non_exhaustive()
    }
}

struct Ctx {
    queue: Arc<Queue>,
    cfg: DeliveryConfig,
    local: LocalDeliver,
    signer: Option<Signer>,
    resolver: Option<TokioResolver>,
    tls: Option<TlsClients>,
    global: Arc<Semaphore>,
    per_dest: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Mutex<HashSet<String>>,
    /// Entries held after an error: ID -> unix seconds.
    held: Mutex<HashMap<String, u64>>,
}

/// Envelopes read by the last scan, with the file's modification time,
/// inode and length: unchanged files are not parsed again (every rewrite
/// is a new file renamed into place).
type ScanCache = HashMap<String, ((std::time::SystemTime, u64, u64), SpoolEnvelope)>;

/// Removes the entry from the in-flight set however its task ends.
struct InFlight(Arc<Ctx>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.in_flight.lock() {
            set.remove(&self.1);
        }
    }
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// Run the scheduler until `shutdown` resolves. See the module docs.
pub async fn run(
    queue: Arc<Queue>,
    cfg: DeliveryConfig,
    local: LocalDeliver,
    signer: Option<Signer>,
    shutdown: impl Future<Output = ()>,
) {
    let resolver = match postoffice_common::resolver::build(&cfg.dns, RESOLVER_CACHE) {
        Ok(r) => Some(r),
        Err(e) => {
            error!(error = %e, "no DNS resolver: MX delivery will fail temporarily");
            None
        }
    };
    let tls = match TlsClients::new(cfg.queue.ca_file.as_deref()) {
        Ok(t) => Some(t),
        Err(e) => {
            error!(error = %e, "outbound TLS unavailable: opportunistic TLS is off and \
                   require_tls_domains will wait");
            None
        }
    };
    let ctx = Arc::new(Ctx {
        global: Arc::new(Semaphore::new(cfg.queue.max_concurrency.max(1))),
        queue,
        cfg,
        local,
        signer,
        resolver,
        tls,
        per_dest: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashSet::new()),
        held: Mutex::new(HashMap::new()),
    });
    info!(dir = %ctx.queue.dir().display(), "outbound queue running");
    let mut tasks = JoinSet::new();
    let mut cache = ScanCache::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let scanned = tokio::time::Instant::now();
        let (next_wake, c) = schedule_due(&ctx, &mut tasks, cache).await;
        cache = c;
        let sleep = tokio::time::sleep(next_wake);
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ctx.queue.notified() => {}
            _ = sleep => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(scanned + MIN_SCAN_INTERVAL) => {}
        }
    }
    if !tasks.is_empty() {
        info!(
            deliveries = tasks.len(),
            "queue stopping; waiting briefly for deliveries in progress"
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }
    info!("outbound queue stopped");
}

/// Read every envelope (re-parsing only changed files).
fn scan(queue: &Queue, mut cache: ScanCache) -> Result<ScanCache, QueueError> {
    let spool = queue.spool();
    let ids = spool.ids()?;
    let live: HashSet<&String> = ids.iter().collect();
    cache.retain(|id, _| live.contains(id));
    for id in &ids {
        let Ok(meta) = std::fs::metadata(spool.env_path(id)) else {
            cache.remove(id);
            continue;
        };
        let stamp = (
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            std::os::unix::fs::MetadataExt::ino(&meta),
            meta.len(),
        );
        if cache.get(id).is_some_and(|(s, _)| *s == stamp) {
            continue;
        }
        match spool.read_env(id) {
            Ok(Some(env)) => {
                cache.insert(id.clone(), (stamp, env));
            }
            Ok(None) => {
                cache.remove(id);
            }
            Err(e) => {
                cache.remove(id);
                warn!(id, error = %e, "skipping an unreadable queue entry");
            }
        }
    }
    Ok(cache)
}

/// Scan the spool, start tasks for due entries; how long to sleep.
async fn schedule_due(
    ctx: &Arc<Ctx>,
    tasks: &mut JoinSet<()>,
    cache: ScanCache,
) -> (Duration, ScanCache) {
    let queue = Arc::clone(&ctx.queue);
    let scanned = tokio::task::spawn_blocking(move || scan(&queue, cache)).await;
    let cache = match scanned {
        Ok(Ok(cache)) => cache,
        Ok(Err(e)) => {
            error!(error = %e, "cannot scan the queue");
            return (RESCAN, ScanCache::new());
        }
        Err(e) => {
            error!(error = %e, "queue scan failed");
            return (RESCAN, ScanCache::new());
        }
    };
    let now = unix_now();
    let warn_after = ctx.cfg.queue.delay_warning_secs;
    let mut due: Vec<(u64, String)> = Vec::new();
    let mut next: Option<u64> = None;
    {
        let in_flight = ctx.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = ctx.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, until| *until > now);
        for (id, (_, env)) in &cache {
            if in_flight.contains(id) {
                continue;
            }
            let due_at = match env.next_due(warn_after) {
                Some(t) => held.get(id).map_or(t, |&h| t.max(h)),
                None => continue,
            };
            if due_at <= now {
                due.push((due_at, id.clone()));
            } else {
                next = Some(next.map_or(due_at, |n| n.min(due_at)));
            }
        }
    }
    due.sort();
    // Bound the entries in progress (each holds its message in memory).
    let max_entries = ctx.cfg.queue.max_concurrency.max(1) * 2;
    let mut started_all = true;
    for (_, id) in due {
        let guard = {
            let mut in_flight = ctx.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if in_flight.len() >= max_entries {
                started_all = false;
                break;
            }
            in_flight.insert(id.clone());
            InFlight(Arc::clone(ctx), id.clone())
        };
        let ctx = Arc::clone(ctx);
        tasks.spawn(async move {
            let _guard = guard;
            process_entry(&ctx, &id).await;
        });
    }
    if !started_all {
        // A finishing task wakes the loop (join_next) anyway.
        return (RESCAN, cache);
    }
    let wait = match next {
        Some(t) => Duration::from_secs(t.saturating_sub(now).max(1)).min(RESCAN),
        None => RESCAN,
    };
    (wait, cache)
}

/// The outcome of one recipient in one attempt.
struct RcptOutcome {
    address: String,
    result: RcptResult,
    remote_mta: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(QueueError::Io {
            context: "queue I/O task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

async fn process_entry(ctx: &Arc<Ctx>, id: &str) {
    let mut failed = false;
    if let Err(e) = deliver_entry(ctx, id).await {
        error!(id, error = %e, "queue entry delivery failed");
        failed = true;
    }
    if let Err(e) = notify_and_cleanup(ctx, id).await {
        error!(id, error = %e, "queue entry bookkeeping failed");
        failed = true;
    }
    if failed {
        warn!(
            id,
            secs = ERROR_HOLD_SECS,
            "holding the queue entry after an error"
        );
        ctx.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), unix_now() + ERROR_HOLD_SECS);
    }
}

/// Deliver the due recipients of one entry, recording each destination's
/// results as they come.
async fn deliver_entry(ctx: &Arc<Ctx>, id: &str) -> Result<(), QueueError> {
    let queue = Arc::clone(&ctx.queue);
    let id_owned = id.to_string();
    let Some(env) = blocking(move || queue.spool().read_env(&id_owned)).await? else {
        return Ok(());
    };
    let now = unix_now();
    let due: Vec<String> = env
        .rcpts
        .iter()
        .filter(|r| r.state == RcptState::Pending && r.next_attempt <= now)
        .map(|r| r.address.clone())
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let queue = Arc::clone(&ctx.queue);
    let id_owned = id.to_string();
    let message = match blocking(move || queue.spool().read_message(&id_owned)).await {
        Ok(m) => m,
        Err(e) => {
            // Postpone instead of spinning on it.
            let delay = backoff::retry_delay(&ctx.cfg.queue.retry_schedule_secs, 1);
            let queue = Arc::clone(&ctx.queue);
            let id_owned = id.to_string();
            let _ = blocking(move || {
                queue.spool().update(&id_owned, |env| {
                    for r in &mut env.rcpts {
                        if r.state == RcptState::Pending {
                            r.next_attempt = now + delay;
                        }
                    }
                })
            })
            .await;
            return Err(e);
        }
    };
    let message = match &ctx.signer {
        Some(sign) => match sign(&env.mail_from, &message) {
            Some(headers) => {
                let mut signed = headers.into_bytes();
                signed.extend_from_slice(&message);
                signed
            }
            None => message,
        },
        None => message,
    };
    let message = Arc::new(message);
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for address in due {
        groups.entry(domain_of(&address)).or_default().push(address);
    }
    let mut set = JoinSet::new();
    for (domain, rcpts) in groups {
        let ctx = Arc::clone(ctx);
        let message = Arc::clone(&message);
        let mail_from = env.mail_from.clone();
        let id = id.to_string();
        set.spawn(async move {
            let results = deliver_group(&ctx, &id, &domain, &mail_from, &rcpts, &message).await;
            record(&ctx, &id, results).await
        });
    }
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => error!(id, error = %e, "delivery task failed"),
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn per_dest(ctx: &Ctx, key: &str) -> Arc<Semaphore> {
    let mut map = ctx.per_dest.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() > 1000 {
        map.retain(|_, s| Arc::strong_count(s) > 1);
    }
    Arc::clone(map.entry(key.to_string()).or_insert_with(|| {
        Arc::new(Semaphore::new(
            ctx.cfg.queue.max_concurrency_per_domain.max(1),
        ))
    }))
}

/// Where mail for `domain` goes.
enum Route {
    Relay(Relay),
    Mx,
}

fn route_for(cfg: &postoffice_config::Queue, domain: &str) -> Result<Route, String> {
    let spec = cfg
        .transports
        .iter()
        .find(|(d, _)| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
        .map(|(_, s)| s.as_str())
        .or(Some(cfg.relayhost.as_str()).filter(|s| !s.trim().is_empty()));
    match spec {
        None => Ok(Route::Mx),
        Some(spec) => route::parse_relay(spec)
            .map(Route::Relay)
            .ok_or_else(|| format!("invalid relay {spec:?} in the queue configuration")),
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs())
}

async fn deliver_group(
    ctx: &Arc<Ctx>,
    id: &str,
    domain: &str,
    mail_from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Vec<RcptOutcome> {
    let qcfg = &ctx.cfg.queue;
    let local_failure = |status: Status, enhanced: EnhancedCode, reason: String| {
        rcpts
            .iter()
            .map(|a| RcptOutcome {
                address: a.clone(),
                result: RcptResult {
                    status,
                    reply: None,
                    reason: reason.clone(),
                    enhanced,
                },
                remote_mta: String::new(),
            })
            .collect::<Vec<_>>()
    };
    if domain.is_empty() {
        return local_failure(
            Status::Permanent,
            EnhancedCode(5, 1, 3),
            "recipient address has no domain".into(),
        );
    }
    let route = match route_for(qcfg, domain) {
        Ok(r) => r,
        Err(e) => return local_failure(Status::Temporary, EnhancedCode(4, 3, 5), e),
    };
    let dest_key = match &route {
        Route::Relay(r) => format!("relay:{}:{}", r.host, r.port),
        Route::Mx => domain.to_string(),
    };
    let dest_sem = per_dest(ctx, &dest_key);
    let Ok(_dest_permit) = dest_sem.acquire_owned().await else {
        return local_failure(
            Status::Temporary,
            EnhancedCode(4, 3, 0),
            "shutting down".into(),
        );
    };
    let Ok(_permit) = Arc::clone(&ctx.global).acquire_owned().await else {
        return local_failure(
            Status::Temporary,
            EnhancedCode(4, 3, 0),
            "shutting down".into(),
        );
    };
    let dns_timeout = Duration::from_secs(ctx.cfg.dns.timeout_secs.max(1)) * 3;
    let require_tls = qcfg
        .require_tls_domains
        .iter()
        .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain));
    let credentials = (!qcfg.relay_user.is_empty())
        .then(|| (qcfg.relay_user.clone(), qcfg.relay_password.clone()));
    let (targets, credentials) = match &route {
        Route::Relay(relay) => (
            route::relay_targets(ctx.resolver.as_ref(), relay, dns_timeout).await,
            credentials,
        ),
        Route::Mx => (
            route::mx_targets(
                ctx.resolver.as_ref(),
                domain,
                qcfg.remote_port,
                seed(),
                dns_timeout,
            )
            .await,
            None,
        ),
    };
    let targets: Vec<Target> = match targets {
        Ok(t) => t,
        Err(e) => {
            let status = if e.permanent {
                Status::Permanent
            } else {
                Status::Temporary
            };
            for r in rcpts {
                info!(id, to = %r, status = if e.permanent { "bounced" } else { "deferred" },
                    reason = %e.reason, "delivery");
            }
            return local_failure(status, e.status, e.reason);
        }
    };
    // Credentials go only over verified TLS.
    let tls_mode = if require_tls || credentials.is_some() {
        TlsMode::Required
    } else {
        TlsMode::Opportunistic
    };
    let mut last = None;
    for target in &targets {
        let mut attempt = Attempt {
            host: &target.host,
            addr: target.addr,
            helo_name: &ctx.cfg.hostname,
            tls_mode,
            credentials: credentials.clone(),
            mail_from,
            rcpts,
            message,
            tls: ctx.tls.as_ref(),
            connect_timeout: Duration::from_secs(qcfg.connect_timeout_secs.max(1)),
            command_timeout: Duration::from_secs(qcfg.command_timeout_secs.max(1)),
        };
        let mut outcome = transport::deliver(&attempt).await;
        if outcome.tls_failed && tls_mode == TlsMode::Opportunistic {
            info!(id, host = %target.host, reason = %outcome.rcpts.first().map(|r| r.reason.as_str()).unwrap_or(""),
                "TLS handshake failed; trying again without TLS");
            attempt.tls_mode = TlsMode::Off;
            outcome = transport::deliver(&attempt).await;
        }
        let relay = format!(
            "{}[{}]:{}",
            target.host,
            target.addr.ip(),
            target.addr.port()
        );
        for (addr, r) in rcpts.iter().zip(&outcome.rcpts) {
            let status = match r.status {
                Status::Delivered => "sent",
                Status::Temporary => "deferred",
                Status::Permanent => "bounced",
            };
            info!(id, to = %addr, relay = %relay, tls = outcome.tls, status, reason = %r.reason, "delivery");
        }
        let done = !outcome.try_next_host;
        last = Some((outcome, target.host.clone()));
        if done {
            break;
        }
    }
    let Some((outcome, host)) = last else {
        return local_failure(
            Status::Temporary,
            EnhancedCode(4, 4, 3),
            "no destination address".into(),
        );
    };
    rcpts
        .iter()
        .zip(outcome.rcpts)
        .map(|(a, result)| RcptOutcome {
            address: a.clone(),
            remote_mta: if result.reply.is_some() {
                host.clone()
            } else {
                String::new()
            },
            result,
        })
        .collect()
}

/// Write one destination's results into the envelope.
async fn record(ctx: &Arc<Ctx>, id: &str, results: Vec<RcptOutcome>) -> Result<(), QueueError> {
    let queue = Arc::clone(&ctx.queue);
    let cfg = ctx.cfg.queue.clone();
    let id_owned = id.to_string();
    let finished = blocking(move || {
        let now = unix_now();
        queue.spool().update_or_finish(&id_owned, |env| {
            let created = env.created_at;
            for out in &results {
                let Some(r) = env
                    .rcpts
                    .iter_mut()
                    .find(|r| r.address == out.address && r.state == RcptState::Pending)
                else {
                    continue;
                };
                r.attempts = r.attempts.saturating_add(1);
                r.last_attempt = now;
                r.last_error = out.result.reason.clone();
                r.status = out.result.enhanced.to_string();
                r.remote_mta = out.remote_mta.clone();
                r.diagnostic = out
                    .result
                    .reply
                    .as_ref()
                    .map(|rep| rep.one_line())
                    .unwrap_or_default();
                match out.result.status {
                    Status::Delivered => {
                        r.state = RcptState::Delivered;
                        r.last_error = String::new();
                    }
                    Status::Permanent => {
                        r.state = RcptState::Failed;
                        r.next_attempt = now;
                    }
                    Status::Temporary => {
                        match backoff::next_attempt(&cfg, created, r.attempts, now) {
                            Some(t) => r.next_attempt = t,
                            None => {
                                r.state = RcptState::Failed;
                                r.next_attempt = now;
                                r.last_error =
                                    format!("delivery time expired; last error: {}", r.last_error);
                                info!(id = %env.id, to = %r.address, "giving up: delivery time expired");
                            }
                        }
                    }
                }
            }
        })
    })
    .await?;
    match finished {
        None => info!(id, "queue entry was removed during delivery"),
        Some(true) => info!(id, "removed (done)"),
        Some(false) => {}
    }
    Ok(())
}

/// Send `message` to the original sender: locally when the domain is ours,
/// otherwise through the queue with the null sender.
async fn send_notice(ctx: &Arc<Ctx>, to: &str, message: Vec<u8>) -> Result<String, String> {
    let domain = domain_of(to);
    if (ctx.cfg.local_domains)(&domain) {
        let local = Arc::clone(&ctx.local);
        let to = to.to_string();
        let mut full = b"Return-Path: <>\r\n".to_vec();
        full.extend_from_slice(&message);
        tokio::task::spawn_blocking(move || local(&to, &full).map(|()| "delivered locally".into()))
            .await
            .map_err(|e| e.to_string())?
    } else {
        let queue = Arc::clone(&ctx.queue);
        let to = to.to_string();
        tokio::task::spawn_blocking(move || {
            queue
                .enqueue("", &[to], &message)
                .map(|id| format!("queued as {id}"))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

fn dsn_recipient(r: &crate::Rcpt) -> DsnRecipient {
    DsnRecipient {
        address: r.address.clone(),
        status: r.status.clone(),
        remote_mta: r.remote_mta.clone(),
        diagnostic: r.diagnostic.clone(),
        reason: r.last_error.clone(),
        last_attempt: r.last_attempt,
    }
}

/// Bounces, the delay warning, and removal of a finished entry.
async fn notify_and_cleanup(ctx: &Arc<Ctx>, id: &str) -> Result<(), QueueError> {
    let queue = Arc::clone(&ctx.queue);
    let id_owned = id.to_string();
    let Some(env) = blocking(move || queue.spool().read_env(&id_owned)).await? else {
        return Ok(());
    };
    let now = unix_now();
    let qcfg = &ctx.cfg.queue;
    let to_bounce: Vec<&crate::Rcpt> = env
        .rcpts
        .iter()
        .filter(|r| r.state == RcptState::Failed && !r.notified && r.next_attempt <= now)
        .collect();
    let want_warning = qcfg.delay_warning_secs > 0
        && !env.delay_warned
        && !env.mail_from.is_empty()
        && now >= env.created_at.saturating_add(qcfg.delay_warning_secs)
        && env.rcpts.iter().any(|r| r.state == RcptState::Pending);
    let original = if (!to_bounce.is_empty() && !env.mail_from.is_empty()) || want_warning {
        let queue = Arc::clone(&ctx.queue);
        let id_owned = id.to_string();
        blocking(move || queue.spool().read_message(&id_owned))
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };

    if !to_bounce.is_empty() {
        let addresses: Vec<String> = to_bounce.iter().map(|r| r.address.clone()).collect();
        let mut retry_at = None;
        if env.mail_from.is_empty() {
            for r in &to_bounce {
                info!(id, to = %r.address, reason = %r.last_error,
                    "undeliverable message from the null sender: dropped, not bounced");
            }
        } else {
            let recipients: Vec<DsnRecipient> =
                to_bounce.iter().copied().map(dsn_recipient).collect();
            let message = dsn::build(&Dsn {
                hostname: &ctx.cfg.hostname,
                queue_id: id,
                to: &env.mail_from,
                action: DsnAction::Failed,
                arrival: env.created_at,
                now,
                retry_until: 0,
                recipients: &recipients,
                original: &original,
            });
            match send_notice(ctx, &env.mail_from, message).await {
                Ok(how) => info!(id, to = %env.mail_from, nrcpt = recipients.len(), how = %how,
                    "bounce sent"),
                Err(e) => {
                    // Give up on telling the sender after twice the queue
                    // lifetime.
                    let give_up = env
                        .created_at
                        .saturating_add(qcfg.max_age_secs.saturating_mul(2));
                    if now >= give_up {
                        error!(id, to = %env.mail_from, error = %e, "cannot deliver the bounce; giving up");
                    } else {
                        warn!(id, to = %env.mail_from, error = %e, "cannot deliver the bounce; will retry");
                        retry_at = Some(now + backoff::retry_delay(&qcfg.retry_schedule_secs, 1));
                    }
                }
            }
        }
        let queue = Arc::clone(&ctx.queue);
        let id_owned = id.to_string();
        blocking(move || {
            queue.spool().update(&id_owned, |env| {
                for r in env
                    .rcpts
                    .iter_mut()
                    .filter(|r| addresses.contains(&r.address))
                {
                    match retry_at {
                        Some(t) => r.next_attempt = t,
                        None => r.notified = true,
                    }
                }
            })
        })
        .await?;
    }

    if want_warning {
        let pending: Vec<DsnRecipient> = env
            .rcpts
            .iter()
            .filter(|r| r.state == RcptState::Pending)
            .map(dsn_recipient)
            .collect();
        let message = dsn::build(&Dsn {
            hostname: &ctx.cfg.hostname,
            queue_id: id,
            to: &env.mail_from,
            action: DsnAction::Delayed,
            arrival: env.created_at,
            now,
            retry_until: backoff::expires_at(qcfg, env.created_at),
            recipients: &pending,
            original: &original,
        });
        // Sent once; a failure to send a mere warning is only logged.
        match send_notice(ctx, &env.mail_from, message).await {
            Ok(how) => info!(id, to = %env.mail_from, how = %how, "delay warning sent"),
            Err(e) => {
                warn!(id, to = %env.mail_from, error = %e, "cannot deliver the delay warning")
            }
        }
        let queue = Arc::clone(&ctx.queue);
        let id_owned = id.to_string();
        blocking(move || {
            queue
                .spool()
                .update(&id_owned, |env| env.delay_warned = true)
        })
        .await?;
    }

    let queue = Arc::clone(&ctx.queue);
    let id_owned = id.to_string();
    if blocking(move || queue.spool().remove_if_complete(&id_owned)).await? {
        info!(id, "removed (done)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_override_the_relayhost() {
        let mut cfg = postoffice_config::Queue::default();
        assert!(matches!(route_for(&cfg, "example.org"), Ok(Route::Mx)));
        cfg.relayhost = "smarthost.test:587".into();
        cfg.transports
            .insert("Example.ORG".into(), "[relay.example.net]:2525".into());
        match route_for(&cfg, "example.org") {
            Ok(Route::Relay(r)) => {
                assert_eq!((r.host.as_str(), r.port), ("relay.example.net", 2525))
            }
            _ => panic!("transport not used"),
        }
        match route_for(&cfg, "other.test") {
            Ok(Route::Relay(r)) => assert_eq!((r.host.as_str(), r.port), ("smarthost.test", 587)),
            _ => panic!("relayhost not used"),
        }
        cfg.relayhost = "bad host".into();
        assert!(route_for(&cfg, "other.test").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("Bob@Dest.Test."), "dest.test");
        assert_eq!(domain_of("a@b@c.test"), "c.test");
        assert_eq!(domain_of("postmaster"), "");
    }
}

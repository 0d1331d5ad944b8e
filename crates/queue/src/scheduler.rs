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
//! goes to its destination ([`crate::routing`]: a transport, the relayhost,
//! or the MX hosts) in one attempt ([`crate::attempt`]), under the limits
//! `max_concurrency_per_domain` (per destination: the domain, or the relay)
//! and `max_concurrency` (overall). Each group's results are written to the
//! envelope as soon as it ends. Then [`crate::bounce`] tells the sender
//! about failures and long delays, and removes the finished entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postoffice_core::dkim::Signer;
use postoffice_core::metrics::Metrics;
use postoffice_smtp::EnhancedCode;
use postoffice_smtp::client::Status;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::attempt::{self, RcptOutcome, Remote};
use crate::bounce::Notifier;
use crate::routing::{Route, Routing};
use crate::spool::{RcptState, SpoolEnvelope, unix_now};
use crate::transport::{OutMessage, TlsClients};
use crate::{LocalMail, Queue, QueueError, backoff, domain_of, spool_io};

/// How often the spool is re-read even without a wake-up.
pub(crate) const RESCAN: Duration = Duration::from_secs(5);

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
    /// The `[queue]` section.
    pub queue: postoffice_config::Queue,
    /// The `[dns]` section (MX lookups).
    pub dns: postoffice_config::Dns,
    /// Local domains and delivery, for bounces to local senders.
    pub local: Arc<dyn LocalMail>,
    /// DKIM signer for the bounces and delay warnings queued to remote
    /// senders (signed for the domain of `MAILER-DAEMON@<hostname>` when
    /// it has a key); `None` sends them unsigned.
    pub signer: Option<Arc<Signer>>,
    /// Where to count queue size, attempts and their duration (the
    /// server's metrics); `None` counts nothing.
    pub metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("hostname", &self.hostname)
            .field("queue", &self.queue)
            .field("dns", &self.dns)
            .field("signer", &self.signer.is_some())
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

struct Ctx {
    queue: Arc<Queue>,
    /// The `[queue]` section.
    config: postoffice_config::Queue,
    routing: Routing,
    remote: Remote,
    notifier: Notifier,
    global: Arc<Semaphore>,
    per_dest: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Mutex<HashSet<String>>,
    /// Entries held after an error: ID -> unix seconds.
    held: Mutex<HashMap<String, u64>>,
    metrics: Option<Arc<Metrics>>,
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

/// Run the scheduler until `shutdown` resolves. See the module docs.
pub async fn run(queue: Arc<Queue>, cfg: DeliveryConfig, shutdown: impl Future<Output = ()>) {
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
    let qcfg = &cfg.queue;
    let ctx = Arc::new(Ctx {
        global: Arc::new(Semaphore::new(qcfg.max_concurrency.max(1))),
        config: qcfg.clone(),
        routing: Routing::new(qcfg),
        remote: Remote {
            hostname: cfg.hostname.clone(),
            queue: qcfg.clone(),
            resolver,
            tls,
            dns_timeout: Duration::from_secs(cfg.dns.timeout_secs.max(1)) * 3,
        },
        notifier: Notifier {
            queue: Arc::clone(&queue),
            hostname: cfg.hostname.clone(),
            config: qcfg.clone(),
            local: Arc::clone(&cfg.local),
            signer: cfg.signer.clone(),
        },
        queue,
        per_dest: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashSet::new()),
        held: Mutex::new(HashMap::new()),
        metrics: cfg.metrics.clone(),
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

/// The queue's size, as the last scan read it, into the gauges.
fn publish_size(m: &Metrics, cache: &ScanCache, now: u64) {
    let (mut pending, mut held, mut delivered, mut failed) = (0, 0, 0, 0);
    let mut oldest = now;
    for (_, env) in cache.values() {
        oldest = oldest.min(env.created_at);
        for r in &env.rcpts {
            match r.state {
                RcptState::Pending if env.held.is_some() => held += 1,
                RcptState::Pending => pending += 1,
                RcptState::Delivered => delivered += 1,
                RcptState::Failed => failed += 1,
            }
        }
    }
    m.queue_entries.set([], cache.len() as i64);
    m.queue_recipients.set(["pending"], pending);
    m.queue_recipients.set(["held"], held);
    m.queue_recipients.set(["delivered"], delivered);
    m.queue_recipients.set(["failed"], failed);
    m.queue_oldest_seconds
        .set([], now.saturating_sub(oldest) as i64);
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
    if let Some(m) = &ctx.metrics {
        publish_size(m, &cache, now);
    }
    let warn_after = ctx.config.delay_warning_secs;
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
    let max_entries = ctx.config.max_concurrency.max(1) * 2;
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

async fn process_entry(ctx: &Arc<Ctx>, id: &str) {
    let mut failed = false;
    if let Err(e) = deliver_entry(ctx, id).await {
        error!(id, error = %e, "queue entry delivery failed");
        failed = true;
    }
    if let Err(e) = ctx.notifier.notify_and_cleanup(id).await {
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
    let id_owned = id.to_string();
    let Some(env) = spool_io(&ctx.queue, move |s| s.read_env(&id_owned)).await? else {
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
    let id_owned = id.to_string();
    let message = match spool_io(&ctx.queue, move |s| s.open_message(&id_owned)).await {
        Ok(m) => m,
        Err(e) => {
            // Postpone instead of spinning on it.
            let delay = backoff::retry_delay(&ctx.config.retry_schedule_secs, 1);
            let id_owned = id.to_string();
            let _ = spool_io(&ctx.queue, move |s| {
                s.update(&id_owned, |env| {
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
    let message = Arc::new(OutMessage::new(message, env.eight_bit));
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

/// The concurrency limit of one destination.
fn per_dest(ctx: &Ctx, key: &str) -> Arc<Semaphore> {
    let mut map = ctx.per_dest.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() > 1000 {
        map.retain(|_, s| Arc::strong_count(s) > 1);
    }
    Arc::clone(
        map.entry(key.to_string()).or_insert_with(|| {
            Arc::new(Semaphore::new(ctx.config.max_concurrency_per_domain.max(1)))
        }),
    )
}

/// Wait for room under both limits for `route`'s destination; `None` when
/// shutting down.
async fn permits(
    ctx: &Ctx,
    route: &Route,
    domain: &str,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let dest = per_dest(ctx, &route.destination_key(domain))
        .acquire_owned()
        .await
        .ok()?;
    let global = Arc::clone(&ctx.global).acquire_owned().await.ok()?;
    Some((dest, global))
}

/// Route one domain's recipients and, within the limits, attempt them.
async fn deliver_group(
    ctx: &Ctx,
    id: &str,
    domain: &str,
    mail_from: &str,
    rcpts: &[String],
    message: &OutMessage,
) -> Vec<RcptOutcome> {
    let route = match ctx.routing.route_for(domain) {
        Ok(r) => r,
        Err(e) => {
            return RcptOutcome::all_local(rcpts, e.status(), e.enhanced(), &e.to_string());
        }
    };
    let Some(_permits) = permits(ctx, &route, domain).await else {
        return RcptOutcome::all_local(
            rcpts,
            Status::Temporary,
            EnhancedCode(4, 3, 0),
            "shutting down",
        );
    };
    let started = std::time::Instant::now();
    let results =
        attempt::deliver(&ctx.remote, id, domain, &route, mail_from, rcpts, message).await;
    if let Some(m) = &ctx.metrics {
        m.delivery_seconds.observe(["outbound"], started.elapsed());
        for r in &results {
            m.queue_attempts.inc([match r.result.status {
                Status::Delivered => "delivered",
                Status::Temporary => "deferred",
                Status::Permanent => "bounced",
            }]);
        }
    }
    results
}

/// Write one destination's results into the envelope.
async fn record(ctx: &Ctx, id: &str, results: Vec<RcptOutcome>) -> Result<(), QueueError> {
    let cfg = ctx.config.clone();
    let id_owned = id.to_string();
    let finished = spool_io(&ctx.queue, move |s| {
        s.update_or_finish(&id_owned, |env| {
            attempt::apply(env, &results, &cfg, unix_now())
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

//! The scheduler: picks due entries and delivers them.
//!
//! It keeps no state of its own that matters: every decision is read from
//! the envelopes, and every result is written back (atomically) before the
//! next step, so a crash at any point loses nothing. Each scan claims the
//! due entries ([`crate::backend::SpoolBackend::claim_due`]) and each
//! entry's task releases its claim when it ends; with a shared spool
//! (PostgreSQL) claims expire, so those of entries in progress are renewed
//! three times per lease, and several nodes' schedulers never attempt one
//! entry at the same time. It re-scans the spool
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
use crate::backend::QueueSizes;
use crate::bounce::Notifier;
use crate::routing::{Route, Routing};
use crate::spool::{RcptState, unix_now};
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
    /// Entries this process is delivering (it holds their claims).
    in_flight: Mutex<HashSet<String>>,
    metrics: Option<Arc<Metrics>>,
}

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
        metrics: cfg.metrics.clone(),
    });
    info!(spool = %ctx.queue.spool().location(), "outbound queue running");
    // Claims that expire are renewed three times per lease.
    let renew_every = ctx
        .queue
        .spool()
        .lease()
        .map(|l| (l / 3).max(MIN_SCAN_INTERVAL));
    let mut renewed = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let scanned = tokio::time::Instant::now();
        if let Some(every) = renew_every
            && scanned >= renewed + every
        {
            renewed = scanned;
            renew_claims(&ctx).await;
        }
        let mut next_wake = schedule_due(&ctx, &mut tasks).await;
        if let Some(every) = renew_every {
            next_wake = next_wake.min((renewed + every).saturating_duration_since(scanned));
        }
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

/// The queue's size, as the last scan found it, into the gauges.
fn publish_size(m: &Metrics, sizes: &QueueSizes, now: u64) {
    m.queue_entries.set([], sizes.entries);
    m.queue_recipients.set(["pending"], sizes.pending);
    m.queue_recipients.set(["held"], sizes.held);
    m.queue_recipients.set(["delivered"], sizes.delivered);
    m.queue_recipients.set(["failed"], sizes.failed);
    m.queue_oldest_seconds.set(
        [],
        now.saturating_sub(sizes.oldest.unwrap_or(now).min(now)) as i64,
    );
}

/// Keep the claims of the entries in progress alive; log those lost.
async fn renew_claims(ctx: &Arc<Ctx>) {
    let ids: Vec<String> = ctx
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    if ids.is_empty() {
        return;
    }
    match spool_io(&ctx.queue, move |s| s.renew(&ids)).await {
        Ok(lost) => {
            for id in lost {
                warn!(
                    id,
                    "the claim of a queue entry in delivery was lost (taken over \
                    by another node, or the entry is gone); its results will not be written"
                );
            }
        }
        Err(e) => error!(error = %e, "cannot renew the claims of queue entries in delivery"),
    }
}

/// Claim due entries and start a task for each; how long to sleep.
async fn schedule_due(ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) -> Duration {
    // Bound the entries in progress (each holds its message in memory).
    let max_entries = ctx.config.max_concurrency.max(1) * 2;
    let room = max_entries.saturating_sub(
        ctx.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len(),
    );
    let now = unix_now();
    let warn_after = ctx.config.delay_warning_secs;
    let due = match spool_io(&ctx.queue, move |s| s.claim_due(now, room, warn_after)).await {
        Ok(due) => due,
        Err(e) => {
            error!(error = %e, "cannot scan the queue");
            return RESCAN;
        }
    };
    if let Some(m) = &ctx.metrics {
        publish_size(m, &due.sizes, now);
    }
    for id in due.ids {
        let guard = {
            let mut in_flight = ctx.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            // Our own claim, lapsed and taken again: already in progress.
            if !in_flight.insert(id.clone()) {
                continue;
            }
            InFlight(Arc::clone(ctx), id.clone())
        };
        let ctx = Arc::clone(ctx);
        tasks.spawn(async move {
            let _guard = guard;
            process_entry(&ctx, &id).await;
        });
    }
    if due.more {
        // A finishing task wakes the loop (join_next) anyway.
        return RESCAN;
    }
    match due.next {
        Some(t) => Duration::from_secs(t.saturating_sub(now).max(1)).min(RESCAN),
        None => RESCAN,
    }
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
    let hold = if failed {
        warn!(
            id,
            secs = ERROR_HOLD_SECS,
            "holding the queue entry after an error"
        );
        ERROR_HOLD_SECS
    } else {
        0
    };
    let id_owned = id.to_string();
    if let Err(e) = spool_io(&ctx.queue, move |s| s.release_claim(&id_owned, hold)).await {
        // It expires by itself after the lease.
        warn!(id, error = %e, "cannot release the claim of a queue entry");
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
                s.update_claimed(&id_owned, |env| {
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

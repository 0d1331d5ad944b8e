//! Fetching one account: connect, list, download what is new, deliver it
//! durably, record it, delete what the policy says, QUIT.
//!
//! The order of events is what keeps mail safe:
//!
//! 1. A message is streamed to the destination, which gets everything
//!    short of the step that makes it count there
//!    ([`Delivery::prepare`](crate::deliver::Delivery::prepare)).
//! 2. An *intent* — the UIDL and a receipt saying how the destination will
//!    recognise the message — is appended to the state file and fsynced.
//! 3. The destination makes the message count and durable
//!    ([`Delivery::commit`](crate::deliver::Delivery::commit)).
//! 4. The UIDL is recorded as delivered in the state file (for a Maildir
//!    or an mbox in the next write of the file; for a command at once).
//! 5. Only once every record is fsynced are DELE commands sent, and only
//!    the server's `+OK` to QUIT makes them happen.
//!
//! A run interrupted anywhere (network cut, `kill -9`, full disk, a limit
//! below) loses nothing: undelivered messages are still on the server, and
//! delivered ones are in the state file, so the next run skips them (and
//! deletes them, under `policy = "delete"`). A run killed between 3 and 4
//! leaves an intent without its record; the next run asks the destination
//! ([`Destination::recognise`](crate::config::Destination)): a Maildir
//! holds the file named in the receipt or not, an mbox holds the message
//! (downloaded again and compared) at the recorded offset or not. So for
//! these two nothing is ever delivered twice either. A command cannot be
//! asked: the next run gives it the message again with
//! `POSTOFFICE_FETCH_REPEAT=1` and the `POSTOFFICE_FETCH_UIDL`, so that a
//! command which keeps track can skip it (one that does not delivers a
//! second copy: never a loss, possibly a duplicate). An mbox killed in the
//! middle of a message larger than 64 KiB keeps the part already appended
//! (a torn copy, not a complete one), and the next run appends the whole
//! message after it. State entries for messages the server no longer has
//! are pruned after a successful QUIT.
//!
//! Without UIDL (only allowed with `policy = "delete"`) there is no way to
//! recognise a message again: if the connection dies after a delivery but
//! before QUIT's `+OK`, that message is delivered again on the next run.
//!
//! A broken or hostile server cannot make the run take unbounded memory or
//! time: every listing reply has a byte budget, every message a budget
//! derived from the size LIST announced (capped by `max_message_size`),
//! and the session a deadline, besides the per-read timeout
//! ([`ConnectOptions`](crate::client::ConnectOptions)). Going past one
//! ends the session with [`Error::LimitExceeded`] before anything is
//! deleted; what was delivered until then is recorded.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pop3_proto::client_codec::Expire;

use crate::client::{Client, MessageEntry, Trace};
use crate::config::{Account, Policy};
use crate::deliver::{MessageInfo, Recognition};
use crate::error::Error;
use crate::state::{State, StateLock};

/// Progress and log output of a run. All methods have empty defaults.
pub trait Progress: Send + Sync {
    /// Downloading starts: this many messages, this many bytes in all.
    fn start(&self, _account: &str, _messages: u64, _bytes: u64) {}
    /// Message `index` (1-based) of `total`, `size` bytes, starts.
    fn message(&self, _account: &str, _index: u64, _total: u64, _size: u64) {}
    /// `n` more bytes arrived.
    fn bytes(&self, _n: u64) {}
    /// A message was delivered (or not).
    fn delivered(&self, _account: &str, _number: u32, _bytes: u64, _ok: bool) {}
    /// Downloading for the account is over.
    fn finish(&self, _account: &str) {}
    /// A line worth showing (notes, warnings, dry-run listings).
    fn log(&self, _line: &str) {}
}

/// Options for [`fetch_account`].
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Connect and list, but fetch, deliver, delete and record nothing.
    pub dry_run: bool,
    /// Accept any TLS certificate, for every account (dangerous).
    pub insecure: bool,
    /// Protocol trace receiver.
    pub trace: Option<Trace>,
    /// Progress receiver.
    pub progress: Option<Arc<dyn Progress>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("dry_run", &self.dry_run)
            .field("insecure", &self.insecure)
            .field("trace", &self.trace.is_some())
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Why an account run failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server or the network.
    #[error(transparent)]
    Pop3(#[from] Error),
    /// Something local: state file, destination, password command.
    #[error("{0}")]
    Local(String),
}

impl FetchError {
    /// Whether trying again later may help (network, server busy).
    pub fn is_temporary(&self) -> bool {
        matches!(self, FetchError::Pop3(e) if e.is_temporary())
    }
}

fn local(what: &str, e: impl std::fmt::Display) -> FetchError {
    FetchError::Local(format!("{what}: {e}"))
}

/// What happened in one account run.
#[derive(Debug, Default)]
pub struct AccountReport {
    /// The account's name.
    pub account: String,
    /// Messages on the server when the session started.
    pub on_server: u64,
    /// Messages downloaded and delivered.
    pub fetched: u64,
    /// Their size (as received, before line-end conversion).
    pub fetched_bytes: u64,
    /// Messages skipped because the state file says they were delivered.
    pub already_delivered: u64,
    /// Messages an interrupted run delivered without recording them, found
    /// at the destination (and recorded now) instead of delivered again.
    pub recovered: u64,
    /// Messages deleted on the server (committed by QUIT).
    pub deleted: u64,
    /// Messages left on the server.
    pub kept: u64,
    /// Messages whose delivery failed (they stay on the server).
    pub failed: u64,
    /// The server's LOGIN-DELAY for this user, if it announced one.
    pub login_delay: Option<Duration>,
    /// The server's EXPIRE policy for this user, if it announced one.
    pub expire: Option<Expire>,
    /// Dry run: the messages that would be fetched.
    pub would_fetch: Vec<MessageEntry>,
    /// Dry run: the messages that would be deleted.
    pub would_delete: Vec<MessageEntry>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// The failure that ended the run early, if any.
    pub error: Option<FetchError>,
}

impl AccountReport {
    /// True if everything went well (no error, no failed delivery).
    pub fn is_ok(&self) -> bool {
        self.error.is_none() && self.failed == 0
    }

    /// The summary line, e.g.
    /// `work: 12 messages (3.4 MB) fetched, 12 deleted, 0 kept`.
    pub fn summary(&self) -> String {
        if self.dry_run {
            let bytes: u64 = self.would_fetch.iter().map(|m| m.size).sum();
            return format!(
                "{}: would fetch {} message{} ({}), would delete {}, would keep {} (dry run)",
                self.account,
                self.would_fetch.len(),
                plural(self.would_fetch.len() as u64),
                human_bytes(bytes),
                self.would_delete.len(),
                self.on_server
                    .saturating_sub(self.would_delete.len() as u64)
            );
        }
        let mut s = format!(
            "{}: {} message{} ({}) fetched, {} deleted, {} kept",
            self.account,
            self.fetched,
            plural(self.fetched),
            human_bytes(self.fetched_bytes),
            self.deleted,
            self.kept
        );
        if self.failed > 0 {
            s.push_str(&format!(", {} failed", self.failed));
        }
        if self.already_delivered > 0 {
            s.push_str(&format!(
                " ({} already delivered earlier)",
                self.already_delivered
            ));
        }
        if self.recovered > 0 {
            s.push_str(&format!(
                " ({} found delivered by an interrupted run)",
                self.recovered
            ));
        }
        s
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Decimal units, one decimal: `3.4 MB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counts bytes for the progress display on their way to the delivery.
struct Counting<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    progress: Option<&'a dyn Progress>,
}

impl<W: Write + ?Sized> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(p) = self.progress {
            p.bytes(n as u64);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Run one account once. Never panics on server behaviour; all failures
/// end up in [`AccountReport::error`] (or [`AccountReport::failed`] for
/// single messages that could not be delivered).
pub async fn fetch_account(account: &Account, opts: &RunOptions) -> AccountReport {
    let mut report = AccountReport {
        account: account.name.clone(),
        dry_run: opts.dry_run,
        ..AccountReport::default()
    };
    if let Err(e) = run(account, opts, &mut report).await {
        report.error = Some(e);
    }
    if let Some(p) = &opts.progress {
        p.finish(&account.name);
    }
    report
}

/// Stop downloading after this many failed deliveries in a row (a full
/// disk or a broken command would fail for every message).
const MAX_FAILURES_IN_A_ROW: u32 = 3;

async fn run(
    account: &Account,
    opts: &RunOptions,
    report: &mut AccountReport,
) -> Result<(), FetchError> {
    let progress = opts.progress.as_deref();
    let log = |line: String| {
        if let Some(p) = progress {
            p.log(&line);
        }
    };
    // Local preparations first: no point in logging in if they fail.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(StateLock::acquire(&account.state_file).map_err(|e| local("state file", e))?)
    };
    let mut state = State::load(&account.state_file).map_err(|e| local("state file", e))?;
    let password = account
        .password()
        .map_err(|e| FetchError::Local(format!("password: {e}")))?;

    let mut connect = account.connect_options(opts.insecure);
    if let Some(t) = &opts.trace {
        let t = Arc::clone(t);
        let name = account.name.clone();
        connect.trace = Some(Arc::new(move |line: &str| t(&format!("{name}: {line}"))));
    }
    let mut client = Client::connect(&connect).await?;
    client
        .login(&account.user, password.expose(), account.auth)
        .await?;
    // After login CAPA tells the per-user EXPIRE and LOGIN-DELAY.
    if let Some(caps) = client.capa().await? {
        report.login_delay = caps.login_delay.map(Duration::from_secs);
        report.expire = caps.expire;
        if caps.expire == Some(Expire::Days(0)) {
            log(format!(
                "{}: note: the server deletes messages once they have been retrieved (EXPIRE 0){}",
                account.name,
                if account.policy == Policy::Delete {
                    ""
                } else {
                    "; they will not stay on the server whatever the policy"
                }
            ));
        }
    }
    let listing = client.list_and_uidl().await?;
    if !listing.uidl && account.policy.needs_uidl() {
        let _ = client.quit().await;
        return Err(FetchError::Local(format!(
            "the server does not support UIDL, which policy = \"{}\" needs to recognise messages it has already fetched; use policy = \"delete\"",
            account.policy.name()
        )));
    }
    let messages = listing.messages;
    report.on_server = messages.len() as u64;
    let on_server: HashSet<&str> = messages.iter().filter_map(|m| m.uid.as_deref()).collect();
    let known = |m: &MessageEntry| m.uid.as_deref().is_some_and(|u| state.contains(u));
    let to_fetch: Vec<MessageEntry> = messages.iter().filter(|m| !known(m)).cloned().collect();
    report.already_delivered = (messages.len() - to_fetch.len()) as u64;

    if opts.dry_run {
        let assume: HashSet<u32> = messages.iter().map(|m| m.number).collect();
        let now = unix_now();
        let dele = plan_deletions(account.policy, &messages, &assume, &state, now);
        for m in &to_fetch {
            log(format!(
                "{}: would fetch message {} ({}, uid {})",
                account.name,
                m.number,
                human_bytes(m.size),
                m.uid.as_deref().unwrap_or("-")
            ));
        }
        for m in &dele {
            log(format!(
                "{}: would delete message {} (uid {})",
                account.name,
                m.number,
                m.uid.as_deref().unwrap_or("-")
            ));
        }
        report.would_fetch = to_fetch;
        report.would_delete = dele;
        report.kept = report.on_server;
        client.quit().await?;
        return Ok(());
    }

    // Fetch and deliver.
    let total_bytes: u64 = to_fetch.iter().map(|m| m.size).sum();
    if let Some(p) = progress {
        p.start(&account.name, to_fetch.len() as u64, total_bytes);
    }
    let mut delivered: HashSet<u32> = messages
        .iter()
        .filter(|m| known(m))
        .map(|m| m.number)
        .collect();
    let mut failures_in_a_row = 0;
    for (i, m) in to_fetch.iter().enumerate() {
        if let Some(p) = progress {
            p.message(&account.name, i as u64 + 1, to_fetch.len() as u64, m.size);
        }
        // A delivery an interrupted run began but did not record?
        let mut repeat = false;
        if let Some(uid) = m.uid.as_deref()
            && let Some(receipt) = state.pending(uid).map(str::to_owned)
        {
            let found = match account.destination.recognise(&receipt) {
                Recognition::Delivered => true,
                Recognition::Absent => false,
                Recognition::Unknown => {
                    repeat = true;
                    false
                }
                Recognition::Compare(mut check) => {
                    match client.retr_listed(m.number, m.size, &mut check).await {
                        Ok(_) => check.matches(),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if found {
                state
                    .delivered(uid, unix_now())
                    .map_err(|e| local("state file", e))?;
                delivered.insert(m.number);
                report.recovered += 1;
                log(format!(
                    "{}: message {} (uid {uid}) was delivered by an interrupted run; not delivering it again",
                    account.name, m.number
                ));
                continue;
            }
            if repeat {
                log(format!(
                    "{}: message {} (uid {uid}) was handed to {} by an interrupted run, which may have delivered it; handing it over again with POSTOFFICE_FETCH_REPEAT=1",
                    account.name,
                    m.number,
                    account.destination.describe()
                ));
            }
        }
        let info = MessageInfo {
            account: &account.name,
            uid: m.uid.as_deref(),
            repeat,
        };
        let mut delivery = account
            .destination
            .begin_message(&info)
            .map_err(|e| local(&account.destination.describe(), e))?;
        let got = {
            let mut sink = Counting {
                inner: &mut *delivery,
                progress,
            };
            client.retr_listed(m.number, m.size, &mut sink).await
        };
        let outcome = match got {
            Ok(n) => match delivery.prepare() {
                Ok(receipt) => {
                    if let (Some(uid), Some(receipt)) = (m.uid.as_deref(), receipt.as_deref())
                        && let Err(e) = state.intend(uid, receipt)
                    {
                        delivery.abort();
                        return Err(local("state file", e));
                    }
                    delivery.commit().map(|()| n)
                }
                Err(e) => {
                    delivery.abort();
                    Err(e)
                }
            },
            Err(Error::Sink(e)) => {
                delivery.abort();
                Err(e)
            }
            Err(e) => {
                delivery.abort();
                if let Some(p) = progress {
                    p.delivered(&account.name, m.number, 0, false);
                }
                return Err(e.into());
            }
        };
        match outcome {
            Ok(n) => {
                if let Some(uid) = &m.uid {
                    // A destination that can be asked is asked after a
                    // crash: its record may wait for the next write.
                    let r = if account.destination.answers_for_itself() {
                        state.delivered(uid, unix_now())
                    } else {
                        state.record(uid, unix_now())
                    };
                    r.map_err(|e| local("state file", e))?;
                }
                delivered.insert(m.number);
                report.fetched += 1;
                report.fetched_bytes += n;
                failures_in_a_row = 0;
                if let Some(p) = progress {
                    p.delivered(&account.name, m.number, n, true);
                }
            }
            Err(e) => {
                // A command's exit status is its final word; a Maildir or
                // an mbox that failed half-way is asked next time.
                if let Some(uid) = &m.uid
                    && !account.destination.answers_for_itself()
                {
                    state.withdraw(uid);
                }
                report.failed += 1;
                failures_in_a_row += 1;
                if let Some(p) = progress {
                    p.delivered(&account.name, m.number, 0, false);
                }
                log(format!(
                    "{}: message {} not delivered to {}: {e}; it stays on the server",
                    account.name,
                    m.number,
                    account.destination.describe()
                ));
                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                    log(format!(
                        "{}: {failures_in_a_row} deliveries failed in a row; not trying the rest now",
                        account.name
                    ));
                    break;
                }
            }
        }
    }

    // Every delivery recorded durably before any DELE.
    state.flush().map_err(|e| local("state file", e))?;
    // Delete what the policy says, among what is safely delivered.
    let dele = plan_deletions(account.policy, &messages, &delivered, &state, unix_now());
    let numbers: Vec<u32> = dele.iter().map(|m| m.number).collect();
    let answers = client.dele_many(&numbers).await?;
    let mut marked: Vec<&MessageEntry> = Vec::new();
    for (m, r) in dele.iter().zip(answers) {
        match r {
            Ok(()) => marked.push(m),
            Err(e) => log(format!(
                "{}: server refused to delete message {}: {e}",
                account.name, m.number
            )),
        }
    }
    client.quit().await?;
    // QUIT's +OK: the deletions happened.
    report.deleted = marked.len() as u64;
    report.kept = report.on_server - report.deleted;
    if listing.uidl {
        let gone: HashSet<&str> = marked.iter().filter_map(|m| m.uid.as_deref()).collect();
        state.retain(|uid, _| on_server.contains(uid) && !gone.contains(uid));
        state.save().map_err(|e| local("state file", e))?;
    }
    Ok(())
}

/// Which messages to delete under `policy`, given which are delivered
/// (now or in an earlier run).
fn plan_deletions(
    policy: Policy,
    messages: &[MessageEntry],
    delivered: &HashSet<u32>,
    state: &State,
    now: u64,
) -> Vec<MessageEntry> {
    let is_delivered = |m: &&MessageEntry| delivered.contains(&m.number);
    match policy {
        Policy::Delete => messages.iter().filter(is_delivered).cloned().collect(),
        Policy::Keep => Vec::new(),
        Policy::DeleteAfterDays(days) => {
            let limit = u64::from(days) * 86_400;
            messages
                .iter()
                .filter(is_delivered)
                .filter(|m| {
                    m.uid
                        .as_deref()
                        .and_then(|u| state.first_seen(u))
                        .is_some_and(|seen| now.saturating_sub(seen) > limit)
                })
                .cloned()
                .collect()
        }
        Policy::KeepNewest(n) => {
            let excess = messages.len().saturating_sub(n as usize);
            messages[..excess]
                .iter()
                .filter(is_delivered)
                .cloned()
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u32) -> Vec<MessageEntry> {
        (1..=n)
            .map(|i| MessageEntry {
                number: i,
                size: 10,
                uid: Some(format!("u{i}")),
            })
            .collect()
    }

    #[test]
    fn deletion_plans() {
        let msgs = entries(5);
        let all: HashSet<u32> = (1..=5).collect();
        let some: HashSet<u32> = [1, 2, 5].into();
        let mut state = State::empty("/nonexistent");
        state.set_first_seen("u1", 0);
        state.set_first_seen("u2", 1_000_000);
        let now = 1_000_000 + 3 * 86_400 + 1;
        let nums = |v: Vec<MessageEntry>| v.into_iter().map(|m| m.number).collect::<Vec<_>>();
        assert_eq!(
            nums(plan_deletions(Policy::Delete, &msgs, &some, &state, now)),
            [1, 2, 5]
        );
        assert!(plan_deletions(Policy::Keep, &msgs, &all, &state, now).is_empty());
        assert_eq!(
            nums(plan_deletions(
                Policy::DeleteAfterDays(3),
                &msgs,
                &all,
                &state,
                now
            )),
            [1, 2]
        );
        assert_eq!(
            nums(plan_deletions(
                Policy::DeleteAfterDays(4),
                &msgs,
                &all,
                &state,
                now
            )),
            [1]
        );
        assert_eq!(
            nums(plan_deletions(
                Policy::KeepNewest(2),
                &msgs,
                &all,
                &state,
                now
            )),
            [1, 2, 3]
        );
        assert_eq!(
            nums(plan_deletions(
                Policy::KeepNewest(2),
                &msgs,
                &some,
                &state,
                now
            )),
            [1, 2]
        );
        assert!(plan_deletions(Policy::KeepNewest(9), &msgs, &all, &state, now).is_empty());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(3_400_000), "3.4 MB");
        assert_eq!(human_bytes(1_000), "1.0 kB");
        assert_eq!(human_bytes(999_999), "1.0 MB");
    }
}

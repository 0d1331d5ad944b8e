//! Provider policy: the retention sweeper (old mail is deleted, after a
//! notice) and tmp/ cleanup. Runs periodically inside `serve` and on demand
//! as `postoffice expire`.
//!
//! When a message is deleted depends on `[policy] retention_from`:
//!
//! - `"delivery"`: `retention_days` after it arrived;
//! - `"retrieval"`: `retention_days` after a POP3 client first retrieved it
//!   (what RFC 2449's EXPIRE announces), and a message nobody retrieved
//!   `retention_unretrieved_days` after it arrived (0: never).
//!
//! `retention_notice_days` before that deadline the user gets one notice
//! (see [`crate::notices`]) listing the messages due (date, sender,
//! subject); which messages were listed is kept in the mailbox state
//! (`retention-noticed`), so each is listed once. A "day" is
//! `retention_day_secs` seconds — 86400, except in tests. The time itself
//! is a parameter of [`sweep_at`], so tests can also move the clock.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::time::{Duration, SystemTime};

use postoffice_config::{Config, RetentionFrom};
use postoffice_directory::Directory;
use postoffice_store::{MailStore, Maildrop, StoreError};
use tracing::{info, warn};

use crate::app::policy_defaults;
use crate::notices::{self, Listed, NOTICE_HEADER};

/// The mailbox state key of the UIDs a retention notice already listed.
const NOTICED_KEY: &str = "retention-noticed";

/// How much of a message's start is read for its Date, From and Subject.
const HEAD_BYTES: u64 = 64 * 1024;

/// What one sweep did.
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    /// (user, messages, bytes) expired per user.
    pub expired: Vec<(String, usize, u64)>,
    /// (user, messages listed) per retention notice delivered (dry run:
    /// that would be delivered).
    pub notices: Vec<(String, usize)>,
    /// Users skipped because a session holds their maildrop.
    pub skipped_locked: Vec<String>,
    /// Stale tmp/ files removed.
    pub tmp_removed: usize,
    /// What went wrong, per user or mailbox (the sweep goes on).
    pub errors: Vec<String>,
}

/// [`sweep_at`] now.
pub fn sweep(
    config: &Config,
    directory: &Directory,
    store: &dyn MailStore,
    dry_run: bool,
) -> SweepReport {
    sweep_at(config, directory, store, dry_run, SystemTime::now())
}

/// Expire old messages (and send notices about the ones due soon) for every
/// user with a retention policy, as of `now`, and remove stale tmp/ files
/// from every maildrop. Never touches a maildrop that is locked by a POP3
/// session: it is skipped and retried next time.
pub fn sweep_at(
    config: &Config,
    directory: &Directory,
    store: &dyn MailStore,
    dry_run: bool,
    now: SystemTime,
) -> SweepReport {
    let mut report = SweepReport::default();
    let defaults = policy_defaults(config);
    let dir = directory.snapshot();
    let stored: HashSet<String> = match store.mailboxes() {
        Ok(b) => b.into_iter().collect(),
        Err(e) => {
            report.errors.push(format!("listing mailboxes: {e}"));
            HashSet::new()
        }
    };
    for user in dir.users() {
        let Some(days) = dir.effective(&user.address, &defaults).retention_days else {
            continue;
        };
        if !stored.contains(&user.address) {
            continue;
        }
        match sweep_user(config, store, &user.address, days, dry_run, now) {
            Ok((expired, bytes, noticed)) => {
                if expired > 0 {
                    report.expired.push((user.address.clone(), expired, bytes));
                }
                if noticed > 0 {
                    report.notices.push((user.address.clone(), noticed));
                }
            }
            Err(StoreError::Locked) => report.skipped_locked.push(user.address.clone()),
            Err(e) => report.errors.push(format!("{}: {e}", user.address)),
        }
    }
    if !dry_run {
        let max_age = Duration::from_secs(config.policy.tmp_max_age_secs);
        for mb in &stored {
            match store.cleanup(mb, max_age) {
                Ok(n) => report.tmp_removed += n,
                Err(e) => report.errors.push(format!("{mb}: tmp cleanup: {e}")),
            }
        }
    }
    for (user, n, bytes) in &report.expired {
        info!(user = %user, messages = n, bytes, dry_run, "retention expired messages");
    }
    for (user, n) in &report.notices {
        info!(user = %user, messages = n, dry_run, "retention notice");
    }
    for e in &report.errors {
        warn!(error = %e, "sweep");
    }
    report
}

/// When each message of `maildrop` is due for deletion (`None`: never).
fn deadlines(
    config: &Config,
    maildrop: &dyn Maildrop,
    days: u32,
) -> Result<Vec<Option<SystemTime>>, StoreError> {
    let day = config.policy.retention_day_secs;
    let span = |d: u32| Duration::from_secs(u64::from(d).saturating_mul(day));
    Ok(match config.policy.retention_from {
        RetentionFrom::Delivery => maildrop
            .messages()
            .iter()
            .map(|m| m.received.checked_add(span(days)))
            .collect(),
        RetentionFrom::Retrieval => {
            let unretrieved = config.policy.retention_unretrieved_days;
            maildrop
                .retrieved()?
                .into_iter()
                .zip(maildrop.messages())
                .map(|(r, m)| match r {
                    Some(first) => first.checked_add(span(days)),
                    None if unretrieved > 0 => m.received.checked_add(span(unretrieved)),
                    None => None,
                })
                .collect()
        }
    })
}

/// One user's sweep: (messages expired, their bytes, messages noticed).
fn sweep_user(
    config: &Config,
    store: &dyn MailStore,
    address: &str,
    days: u32,
    dry_run: bool,
    now: SystemTime,
) -> Result<(usize, u64, usize), StoreError> {
    let maildrop = store.open(address)?;
    let due = deadlines(config, &*maildrop, days)?;
    let messages = maildrop.messages();
    let expired: Vec<usize> = due
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_some_and(|d| d <= now))
        .map(|(i, _)| i)
        .collect();
    let bytes = expired.iter().map(|&i| messages[i].size).sum();

    // The notice: messages due within the notice window, not listed yet.
    let notice_days = config.policy.retention_notice_days;
    let mut noticed_count = 0;
    if notice_days > 0 {
        let window = now
            + Duration::from_secs(
                u64::from(notice_days).saturating_mul(config.policy.retention_day_secs),
            );
        let mut noticed: HashSet<String> = store
            .state_get(address, NOTICED_KEY)?
            .map(|v| {
                String::from_utf8_lossy(&v)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut listed = Vec::new();
        let mut newly = Vec::new();
        for (i, (m, d)) in messages.iter().zip(&due).enumerate() {
            let Some(deadline) = *d else { continue };
            if deadline <= now || deadline > window || noticed.contains(m.uid.as_str()) {
                continue;
            }
            let head = read_head(&*maildrop, i);
            newly.push(m.uid.to_string());
            if head.contains_key(&NOTICE_HEADER.to_ascii_lowercase()) {
                continue; // our own notices are not listed
            }
            let field = |name: &str| {
                head.get(name)
                    .map(|v| notices::one_line(v, 120))
                    .unwrap_or_default()
            };
            let date = match field("date") {
                d if d.is_empty() => postoffice_common::date::rfc5322(m.received),
                d => d,
            };
            listed.push(Listed {
                deletion: deadline,
                date,
                from: field("from"),
                subject: decode_subject(&field("subject")),
            });
        }
        noticed_count = listed.len();
        if !dry_run && !newly.is_empty() {
            if !listed.is_empty() {
                match notices::deliver_retention_notice(
                    config,
                    store,
                    address,
                    notice_days,
                    &listed,
                ) {
                    Ok(d) => newly.push(d.uid),
                    Err(e) => {
                        warn!(user = %address, error = %e, "retention notice not delivered");
                        newly.clear();
                        noticed_count = 0;
                    }
                }
            }
            // Remember what was listed, forgetting messages that are gone.
            let present: HashSet<&str> = messages.iter().map(|m| m.uid.as_str()).collect();
            noticed.retain(|u| present.contains(u.as_str()));
            noticed.extend(newly);
            let mut value = noticed.into_iter().collect::<Vec<_>>();
            value.sort();
            let mut text = value.join("\n");
            text.push('\n');
            store.state_put(address, NOTICED_KEY, Some(text.as_bytes()))?;
        }
    }

    if !dry_run && !expired.is_empty() {
        maildrop.commit(&expired)?;
    }
    Ok((expired.len(), bytes, noticed_count))
}

/// The header fields of message `index` (lower-case names, unfolded
/// values; the first of each name); empty if it cannot be read.
fn read_head(maildrop: &dyn Maildrop, index: usize) -> HashMap<String, String> {
    let mut buf = Vec::new();
    if let Ok(r) = maildrop.open_message(index) {
        let _ = r.take(HEAD_BYTES).read_to_end(&mut buf);
    }
    let end = memchr_find(&buf, b"\r\n\r\n").unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut out = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = &mut current {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = current.take() {
            out.entry(k).or_insert(v);
        }
        if let Some((k, v)) = line.split_once(':') {
            current = Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    if let Some((k, v)) = current {
        out.entry(k).or_insert(v);
    }
    out
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A subject with RFC 2047 encoded words decoded (what a person reads).
pub(crate) fn decode_subject(raw: &str) -> String {
    if !raw.contains("=?") {
        return raw.to_owned();
    }
    let header = format!("Subject: {raw}\r\n\r\n");
    mail_parser::MessageParser::default()
        .parse(header.as_bytes())
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_else(|| raw.to_owned())
}

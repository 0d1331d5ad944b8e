//! Provider policy: the retention sweeper (old mail is deleted) and tmp/
//! cleanup. Runs periodically inside `serve` and on demand as
//! `postoffice expire`.

use std::time::{Duration, SystemTime};

use postoffice_config::Config;
use postoffice_directory::Directory;
use postoffice_store::{MailStore, StoreError};
use tracing::{info, warn};

use crate::app::policy_defaults;

/// What one sweep did.
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    /// (user, messages, bytes) expired per user.
    pub expired: Vec<(String, usize, u64)>,
    /// Users skipped because a session holds their maildrop.
    pub skipped_locked: Vec<String>,
    /// Stale tmp/ files removed.
    pub tmp_removed: usize,
    /// What went wrong, per user or mailbox (the sweep goes on).
    pub errors: Vec<String>,
}

/// Expire old messages for every user with a retention policy, and remove
/// stale tmp/ files from every maildrop. Never touches a maildrop that is
/// locked by a POP3 session: it is skipped and retried next time.
pub fn sweep(
    config: &Config,
    directory: &Directory,
    store: &dyn MailStore,
    dry_run: bool,
) -> SweepReport {
    let mut report = SweepReport::default();
    let defaults = policy_defaults(config);
    let dir = directory.snapshot();
    let now = SystemTime::now();
    for user in dir.users() {
        let Some(days) = dir.effective(&user.address, &defaults).retention_days else {
            continue;
        };
        let cutoff = now - Duration::from_secs(u64::from(days) * 86_400);
        match store.expire(&user.address, cutoff, dry_run) {
            Ok(r) => {
                if !r.expired.is_empty() {
                    report
                        .expired
                        .push((user.address.clone(), r.expired.len(), r.bytes));
                }
            }
            Err(StoreError::Locked) => report.skipped_locked.push(user.address.clone()),
            Err(e) => report.errors.push(format!("{}: {e}", user.address)),
        }
    }
    if !dry_run {
        let max_age = Duration::from_secs(config.policy.tmp_max_age_secs);
        match store.mailboxes() {
            Ok(boxes) => {
                for mb in boxes {
                    match store.cleanup(&mb, max_age) {
                        Ok(n) => report.tmp_removed += n,
                        Err(e) => report.errors.push(format!("{mb}: tmp cleanup: {e}")),
                    }
                }
            }
            Err(e) => report.errors.push(format!("listing mailboxes: {e}")),
        }
    }
    for (user, n, bytes) in &report.expired {
        info!(user = %user, messages = n, bytes, dry_run, "retention expired messages");
    }
    for e in &report.errors {
        warn!(error = %e, "sweep");
    }
    report
}

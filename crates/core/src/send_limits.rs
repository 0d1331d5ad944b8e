//! Outbound limits per authenticated user: messages per hour and
//! recipients per day (`[submission] max_messages_per_hour`,
//! `max_recipients_per_day`, or the user's own from the directory), so
//! that a stolen password cannot turn the server into a spam cannon; and
//! the count of refusals that `disable_after_limit_hits` acts on.
//!
//! Kept in memory; [`SendLimits::save`] writes them to
//! `data_dir/send_limits.txt` (the server does at shutdown) and
//! [`SendLimits::open`] reads them back, so a restart does not reset a
//! spammer's counts. A crash loses what was counted since the last save.
//!
//! With the PostgreSQL backend ([`SendLimits::shared`]) the counts are in
//! the database (`postoffice_pg::PgSendLog`), one per user across every
//! node: a user's limit is not multiplied by the number of nodes. If the
//! database cannot be asked, the node counts in memory meanwhile (the
//! message cannot be stored or queued without the database anyway).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Which limit a message would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `max_messages_per_hour`.
    MessagesPerHour(u32),
    /// `max_recipients_per_day`.
    RecipientsPerDay(u32),
}

/// The messages each user sent in the last day: (when, recipients).
#[derive(Debug, Default)]
pub struct SendLimits {
    /// Where [`SendLimits::save`] writes; `None`: nowhere.
    path: Option<PathBuf>,
    sent: Mutex<HashMap<String, VecDeque<(Instant, u32)>>>,
    /// When each user was refused for a limit, within the last day.
    hits: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// The counts every node shares, when there is a database.
    shared: Option<postoffice_pg::PgSendLog>,
}

/// The file in `data_dir`.
pub const FILE: &str = "send_limits.txt";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SendLimits {
    /// The counts saved in `data_dir` (none when the file is missing;
    /// unreadable lines and entries older than a day are skipped).
    pub fn open(data_dir: &Path) -> SendLimits {
        let path = data_dir.join(FILE);
        let limits = SendLimits {
            path: Some(path.clone()),
            ..SendLimits::default()
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return limits;
        };
        let (now, unix) = (Instant::now(), unix_now());
        // A Unix time as an Instant of this process; None when older than
        // a day (or than the process's clock can express).
        let when = |t: u64| {
            let age = unix.saturating_sub(t);
            (age < DAY.as_secs())
                .then(|| now.checked_sub(Duration::from_secs(age)))
                .flatten()
        };
        {
            let mut sent = limits.sent.lock().unwrap_or_else(|e| e.into_inner());
            let mut hits = limits.hits.lock().unwrap_or_else(|e| e.into_inner());
            for line in text.lines() {
                let words: Vec<&str> = line.split(' ').collect();
                match words.as_slice() {
                    ["s", t, n, user] => {
                        if let (Some(t), Ok(n)) = (t.parse().ok().and_then(when), n.parse()) {
                            sent.entry(user.to_string()).or_default().push_back((t, n));
                        }
                    }
                    ["h", t, user] => {
                        if let Some(t) = t.parse().ok().and_then(when) {
                            hits.entry(user.to_string()).or_default().push_back(t);
                        }
                    }
                    _ => {}
                }
            }
        }
        limits
    }

    /// The counts of every node, in the database (nothing is saved to
    /// data_dir).
    pub fn shared(log: postoffice_pg::PgSendLog) -> SendLimits {
        SendLimits {
            shared: Some(log),
            ..SendLimits::default()
        }
    }

    /// Writes the counts of the last day durably (see the module docs).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let (now, unix) = (Instant::now(), unix_now());
        let at = |t: &Instant| unix.saturating_sub(now.duration_since(*t).as_secs());
        let fresh = |t: &Instant| now.duration_since(*t) < DAY;
        let mut out = String::new();
        {
            let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            for (user, log) in sent.iter() {
                for (t, n) in log.iter().filter(|(t, _)| fresh(t)) {
                    out.push_str(&format!("s {} {n} {user}\n", at(t)));
                }
            }
            let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
            for (user, log) in hits.iter() {
                for t in log.iter().filter(|t| fresh(t)) {
                    out.push_str(&format!("h {} {user}\n", at(t)));
                }
            }
        }
        postoffice_common::durable::write(path, out.as_bytes())
    }

    /// Records that `user` was refused for a limit; returns how often that
    /// happened within the last 24 hours (this time included).
    pub fn record_hit(&self, user: &str) -> u32 {
        if let Some(log) = &self.shared {
            let user = user.to_ascii_lowercase();
            match crate::inbound::blocking(|| log.record_hit(&user)) {
                Ok(n) => return n,
                Err(e) => {
                    tracing::warn!(error = %e, %user, "cannot record a sending-limit hit in the database; counting on this node");
                }
            }
        }
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        let log = hits.entry(user.to_ascii_lowercase()).or_default();
        while log.front().is_some_and(|t| now.duration_since(*t) >= DAY) {
            log.pop_front();
        }
        log.push_back(now);
        u32::try_from(log.len()).unwrap_or(u32::MAX)
    }

    /// Records a message of `user` to `rcpts` recipients when it stays
    /// within both limits (0 = no limit); otherwise records nothing and
    /// says which limit it would pass.
    pub fn admit(
        &self,
        user: &str,
        rcpts: usize,
        max_per_hour: u32,
        max_rcpts_per_day: u32,
    ) -> Result<(), Exceeded> {
        if max_per_hour == 0 && max_rcpts_per_day == 0 {
            return Ok(());
        }
        let rcpts = u32::try_from(rcpts).unwrap_or(u32::MAX);
        if let Some(log) = &self.shared {
            use postoffice_pg::SendCheck;
            let user = user.to_ascii_lowercase();
            match crate::inbound::blocking(|| {
                log.admit(&user, rcpts, max_per_hour, max_rcpts_per_day)
            }) {
                Ok(SendCheck::Admitted) => return Ok(()),
                Ok(SendCheck::OverHour) => return Err(Exceeded::MessagesPerHour(max_per_hour)),
                Ok(SendCheck::OverDay) => {
                    return Err(Exceeded::RecipientsPerDay(max_rcpts_per_day));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %user, "cannot check the sending limits in the database; counting on this node");
                }
            }
        }
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let log = sent.entry(user.to_ascii_lowercase()).or_default();
        while log
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= DAY)
        {
            log.pop_front();
        }
        if max_per_hour > 0 {
            let last_hour = log
                .iter()
                .filter(|(t, _)| now.duration_since(*t) < HOUR)
                .count();
            if last_hour >= max_per_hour as usize {
                return Err(Exceeded::MessagesPerHour(max_per_hour));
            }
        }
        if max_rcpts_per_day > 0 {
            let today: u64 = log.iter().map(|(_, n)| u64::from(*n)).sum();
            if today + u64::from(rcpts) > u64::from(max_rcpts_per_day) {
                return Err(Exceeded::RecipientsPerDay(max_rcpts_per_day));
            }
        }
        log.push_back((now, rcpts));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_n_plus_first_message_is_refused_per_user() {
        let l = SendLimits::default();
        assert_eq!(l.admit("a@x", 1, 2, 0), Ok(()));
        assert_eq!(l.admit("A@x", 1, 2, 0), Ok(()));
        assert_eq!(l.admit("a@x", 1, 2, 0), Err(Exceeded::MessagesPerHour(2)));
        assert_eq!(l.admit("b@x", 1, 2, 0), Ok(()));
        assert_eq!(l.admit("c@x", 3, 0, 4), Ok(()));
        assert_eq!(l.admit("c@x", 2, 0, 4), Err(Exceeded::RecipientsPerDay(4)));
        assert_eq!(l.admit("c@x", 1, 0, 4), Ok(()));
    }

    #[test]
    fn counts_survive_a_save_and_open() {
        let dir = tempfile::tempdir().unwrap();
        let l = SendLimits::open(dir.path());
        assert_eq!(l.admit("a@x", 3, 2, 0), Ok(()));
        assert_eq!(l.admit("a@x", 1, 2, 0), Ok(()));
        assert_eq!(l.record_hit("a@x"), 1);
        l.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        std::fs::write(
            dir.path().join(FILE),
            format!("{text}s 1 5 old@x\ngarbage\nh x y@x\n"),
        )
        .unwrap();
        let again = SendLimits::open(dir.path());
        assert_eq!(
            again.admit("a@x", 1, 2, 0),
            Err(Exceeded::MessagesPerHour(2))
        );
        assert_eq!(
            again.admit("a@x", 1, 0, 4),
            Err(Exceeded::RecipientsPerDay(4))
        );
        assert_eq!(again.record_hit("a@x"), 2);
        assert_eq!(again.admit("old@x", 1, 1, 0), Ok(()), "older than a day");
    }

    #[test]
    fn limit_hits_are_counted_per_user() {
        let l = SendLimits::default();
        assert_eq!(l.record_hit("a@x"), 1);
        assert_eq!(l.record_hit("A@x"), 2);
        assert_eq!(l.record_hit("b@x"), 1);
    }
}

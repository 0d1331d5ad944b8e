//! Outbound limits per authenticated user: messages per hour and
//! recipients per day (`[submission] max_messages_per_hour`,
//! `max_recipients_per_day`), so that a stolen password cannot turn the
//! server into a spam cannon. Kept in memory: a restart forgets the counts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    sent: Mutex<HashMap<String, VecDeque<(Instant, u32)>>>,
    /// When each user was refused for a limit, within the last day.
    hits: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SendLimits {
    /// Records that `user` was refused for a limit; returns how often that
    /// happened within the last 24 hours (this time included).
    pub fn record_hit(&self, user: &str) -> u32 {
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
        let now = Instant::now();
        let rcpts = u32::try_from(rcpts).unwrap_or(u32::MAX);
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
    fn limit_hits_are_counted_per_user() {
        let l = SendLimits::default();
        assert_eq!(l.record_hit("a@x"), 1);
        assert_eq!(l.record_hit("A@x"), 2);
        assert_eq!(l.record_hit("b@x"), 1);
    }
}

//! The statistics the administrators' dashboard shows: the current values
//! of a few metrics and, for the charts, their history over the last hour
//! (one sample every [`INTERVAL`], kept in memory).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use postoffice_core::metrics::{Metrics, protocol};
use serde::Serialize;

use crate::Web;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept (an hour).
const KEEP: usize = 360;

/// The numbers of one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub time: u64,
    /// Mail sessions open (POP3, SMTP, submission).
    pub sessions_open: i64,
    /// POP3 sessions open.
    pub pop3_open: i64,
    /// SMTP and submission sessions open.
    pub smtp_open: i64,
    /// Messages stored for local users (MX), ever.
    pub delivered: i64,
    /// Messages quarantined, ever.
    pub quarantined: i64,
    /// Messages refused after DATA (MX), ever.
    pub rejected: i64,
    /// Messages accepted on submission, ever.
    pub submitted: i64,
    /// Successful logins (all protocols), ever.
    pub logins_ok: i64,
    /// Failed logins (all protocols), ever.
    pub logins_failed: i64,
    /// Messages retrieved over POP3, ever.
    pub retrieved: i64,
    /// Messages deleted over POP3, ever.
    pub deleted: i64,
    /// Entries in the outbound queue.
    pub queue_entries: i64,
    /// Recipients waiting in the outbound queue.
    pub queue_pending: i64,
}

impl Sample {
    /// The current numbers.
    pub fn now(m: &Metrics) -> Sample {
        let open = |p| m.sessions_open.get([p]);
        let logins = |r| {
            [protocol::POP3, protocol::SUBMISSION, protocol::WEB]
                .iter()
                .map(|p| m.logins.get([p, r]))
                .sum()
        };
        let pop3_open = open(protocol::POP3) + open(protocol::POP3S);
        let smtp_open =
            open(protocol::SMTP) + open(protocol::SUBMISSION) + open(protocol::SUBMISSIONS);
        Sample {
            time: crate::auth::unix_now(),
            sessions_open: pop3_open + smtp_open,
            pop3_open,
            smtp_open,
            delivered: m.smtp_transactions.get(["mx", "delivered"]),
            quarantined: m.smtp_transactions.get(["mx", "quarantined"]),
            rejected: m.smtp_transactions.get(["mx", "rejected"]),
            submitted: m.smtp_transactions.get(["submission", "accepted"]),
            logins_ok: logins("ok"),
            logins_failed: logins("failed"),
            retrieved: m.pop3_retrieved.get([]),
            deleted: m.pop3_deleted.get([]),
            queue_entries: m.queue_entries.get([]),
            queue_pending: m.queue_recipients.get(["pending"]),
        }
    }
}

/// The samples of the last hour, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Add a sample, dropping the oldest beyond an hour.
    pub fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= KEEP {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Every sample, oldest first.
    pub fn all(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// Sample every [`INTERVAL`] until `shutdown`.
pub(crate) async fn run(web: &Web, shutdown: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => web.stats().push(Sample::now(&web.app().metrics)),
            _ = &mut shutdown => return,
        }
    }
}

/// A series of values for a chart: per-interval increases of a counter
/// (`rate`) or the gauge's values, from the history plus the current
/// sample.
pub fn series(history: &[Sample], now: &Sample, pick: fn(&Sample) -> i64, rate: bool) -> Vec<i64> {
    let values: Vec<i64> = history
        .iter()
        .chain(std::iter::once(now))
        .map(pick)
        .collect();
    if rate {
        values.windows(2).map(|w| (w[1] - w[0]).max(0)).collect()
    } else {
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_rates_are_differences() {
        let h = History::default();
        for i in 0..400 {
            h.push(Sample {
                time: i,
                delivered: i as i64 * 2,
                ..Sample::default()
            });
        }
        let all = h.all();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].time, 40);
        let now = Sample {
            delivered: 900,
            ..Sample::default()
        };
        let s = series(&all, &now, |s| s.delivered, true);
        assert_eq!(s.len(), KEEP);
        assert_eq!(s[0], 2);
        assert_eq!(*s.last().unwrap(), 900 - 798);
        let g = series(&all[..2], &now, |s| s.delivered, false);
        assert_eq!(g, vec![80, 82, 900]);
    }
}

//! Retry arithmetic: exponential-ish backoff from `retry_schedule_secs`, up
//! to `max_age_secs`.

use postoffice_config::Queue;

/// Seconds to wait after the `attempts`-th failed attempt (1-based): the
/// n-th value of the schedule; the last one repeats. At least one second.
pub(crate) fn retry_delay(schedule: &[u64], attempts: u32) -> u64 {
    let Some(&last) = schedule.last() else {
        return 300;
    };
    let i = attempts.max(1) as usize - 1;
    schedule.get(i).copied().unwrap_or(last).max(1)
}

/// Unix seconds of the entry's expiry (bounce of what is still pending).
pub(crate) fn expires_at(cfg: &Queue, created_at: u64) -> u64 {
    created_at.saturating_add(cfg.max_age_secs)
}

/// When to try again after the `attempts`-th attempt failed temporarily at
/// `now`; `None` when the entry has expired (give up and bounce). The last
/// attempt is made at the expiry time itself, so an entry never waits past
/// `max_age_secs` without a final try.
pub(crate) fn next_attempt(cfg: &Queue, created_at: u64, attempts: u32, now: u64) -> Option<u64> {
    let expires = expires_at(cfg, created_at);
    if now >= expires {
        return None;
    }
    Some(
        now.saturating_add(retry_delay(&cfg.retry_schedule_secs, attempts))
            .min(expires),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_schedule_and_repeat_the_last() {
        let s = [300, 900, 1800];
        assert_eq!(retry_delay(&s, 0), 300);
        assert_eq!(retry_delay(&s, 1), 300);
        assert_eq!(retry_delay(&s, 2), 900);
        assert_eq!(retry_delay(&s, 3), 1800);
        assert_eq!(retry_delay(&s, 4), 1800);
        assert_eq!(retry_delay(&s, u32::MAX), 1800);
        assert_eq!(retry_delay(&[], 3), 300);
        assert_eq!(retry_delay(&[0], 1), 1);
    }

    #[test]
    fn next_attempt_is_capped_by_the_expiry() {
        let cfg = Queue {
            retry_schedule_secs: vec![10, 100],
            max_age_secs: 150,
            ..Queue::default()
        };
        let t0 = 1_000;
        assert_eq!(next_attempt(&cfg, t0, 1, t0), Some(t0 + 10));
        assert_eq!(next_attempt(&cfg, t0, 2, t0 + 10), Some(t0 + 110));
        // Capped: the last try happens at the expiry...
        assert_eq!(next_attempt(&cfg, t0, 3, t0 + 110), Some(t0 + 150));
        // ...and failing then gives up.
        assert_eq!(next_attempt(&cfg, t0, 4, t0 + 150), None);
        assert_eq!(next_attempt(&cfg, t0, 4, t0 + 999), None);
    }

    /// The default schedule: 5, 15, 30, 60, 120 minutes, then every 4 hours,
    /// giving up after 5 days.
    #[test]
    fn default_schedule_gives_up_after_five_days() {
        let cfg = Queue::default();
        let t0 = 1_700_000_000;
        let mut now = t0;
        let mut attempts = 0;
        let mut times = Vec::new();
        loop {
            attempts += 1;
            match next_attempt(&cfg, t0, attempts, now) {
                Some(t) => {
                    assert!(t > now);
                    now = t;
                    times.push(t - t0);
                }
                None => break,
            }
        }
        assert_eq!(&times[..6], &[300, 1200, 3000, 6600, 13800, 28200]);
        assert_eq!(now - t0, 5 * 86_400);
        assert_eq!(*times.last().unwrap(), 5 * 86_400);
        // 6 scheduled steps, then every 4 h: about 35 attempts in 5 days.
        assert!((30..=40).contains(&attempts), "{attempts}");
    }
}

//! Bounded polls: the only way a test waits for something.

use std::time::{Duration, Instant};

/// How often the polls look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `f` every [`POLL_INTERVAL`] until it returns `true` (then `true`)
/// or `limit` has passed (then `false`). Blocks the thread.
pub fn poll_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Calls `f` every [`POLL_INTERVAL`] until it returns `Some`; panics,
/// naming `what`, when `limit` passes first. Blocks the thread.
#[track_caller]
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    poll_until(limit, || {
        found = f();
        found.is_some()
    });
    match found {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// The async [`poll_until`] for tokio tests: calls `f` every
/// [`POLL_INTERVAL`] until it returns `true` or `secs` seconds have
/// passed, sleeping on the runtime in between so that the tasks the test
/// waits for can run.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_true_and_gives_up_at_the_limit() {
        let mut n = 0;
        assert!(poll_until(Duration::from_secs(10), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
        assert!(!poll_until(Duration::from_millis(50), || false));
        assert_eq!(wait_for(Duration::from_secs(10), "x", || Some(7)), 7);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn wait_for_panics_with_what_it_waited_for() {
        wait_for::<()>(Duration::from_millis(50), "the impossible", || None);
    }

    #[tokio::test]
    async fn eventually_lets_other_tasks_run() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = std::sync::Arc::clone(&flag);
        tokio::spawn(async move { f.store(true, std::sync::atomic::Ordering::SeqCst) });
        assert!(eventually(10, || flag.load(std::sync::atomic::Ordering::SeqCst)).await);
        assert!(!eventually(0, || false).await);
    }
}

//! Unique IDs for SMTP transactions and queue entries: letters and digits
//! only (they name files and appear in replies), unique across processes on
//! one host (time, PID, counter) and sortable by time within a process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh ID, e.g. `0674F2C1A000A41F2003E80007` (26 hexadecimal digits).
pub fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:09X}{:05X}{:05X}{:04X}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id() & 0xF_FFFF,
        n & 0xFFFF
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ_and_are_alphanumeric() {
        let a = super::unique_id();
        let b = super::unique_id();
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(a.len() <= 64);
    }
}

//! Process-wide counters, for the summary logged at shutdown and for the
//! metrics endpoint. Plain atomics: incrementing one is cheaper
//! than the log line that accompanies it.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic event counters.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            /// Every counter with its name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// POP3 sessions that ended.
    pop3_sessions,
    /// Successful POP3 logins.
    pop3_logins,
    /// Refused POP3 logins (any reason).
    pop3_login_failures,
    /// Messages sent by RETR.
    pop3_retr,
    /// Messages deleted at QUIT.
    pop3_deleted,
    /// SMTP (MX) sessions that ended.
    smtp_sessions,
    /// Connections refused at connect (IP block list, DNSBL).
    smtp_refused_connections,
    /// Messages stored for local users.
    smtp_delivered,
    /// Messages quarantined.
    smtp_quarantined,
    /// Messages refused with 5xx after DATA (virus, DMARC, SPF, DKIM).
    smtp_rejected,
    /// Messages refused with 4xx after DATA (scanner down, storage).
    smtp_tempfailed,
    /// Recipients refused (relay denied, unknown user, quota).
    smtp_rcpt_rejected,
    /// Messages accepted on submission.
    submission_accepted,
    /// Failed submission logins.
    submission_auth_failures,
    /// Logins served by the verified-credential cache (no slow hash).
    auth_cache_hits,
}

/// Add one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Add n.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_and_values() {
        let c = Counters::default();
        inc(&c.smtp_delivered);
        add(&c.pop3_retr, 3);
        let s = c.snapshot();
        assert!(s.contains(&("smtp_delivered", 1)));
        assert!(s.contains(&("pop3_retr", 3)));
        assert!(s.contains(&("pop3_logins", 0)));
    }
}

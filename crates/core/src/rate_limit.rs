//! Inbound rate limits per client on the MX port (`[smtp]
//! max_connections_per_minute`, `max_messages_per_minute`): a client that
//! opens connections or starts transactions faster than allowed is told to
//! come back later (`421 4.7.0` at connect, `451 4.7.1` at MAIL FROM).
//!
//! A client is an IPv4 address or an IPv6 /64 (one host usually holds a
//! whole /64). Each client has a fixed one-minute window with a count; the
//! table is pruned of expired windows whenever it grows past a bound, and
//! is hard-capped: when it is full of live windows, new clients are let
//! through uncounted (and that is logged) rather than growing memory
//! without limit. Clients in `smtp.rate_limit_exempt` or `filter.ip_allow`
//! are never counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postoffice_config::{Config, cidr_contains, parse_cidr};
use postoffice_smtp::{Reply, codes, status};

const WINDOW: Duration = Duration::from_secs(60);

/// Most clients tracked at once, per limit.
const MAX_CLIENTS: usize = 100_000;

/// The table is pruned when it grows past this many clients.
const PRUNE_AT: usize = 4096;

/// The key of a client: an IPv4 address, or the /64 of an IPv6 address.
fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            // The /64 prefix, tagged so it cannot equal an IPv4 key.
            None => (u128::from(v6) >> 64) | (1 << 127),
        },
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
    }
}

/// One limit: at most `max` events per client per minute.
#[derive(Debug)]
struct Window {
    max: u32,
    clients: Mutex<HashMap<u128, (Instant, u32)>>,
}

impl Window {
    fn new(max: u32) -> Window {
        Window {
            max,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an event of `ip`; false when it is over the limit (then it
    /// is not counted).
    fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max == 0 {
            return true;
        }
        let key = client_key(ip);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= PRUNE_AT && !clients.contains_key(&key) {
            clients.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if clients.len() >= MAX_CLIENTS {
                tracing::warn!(
                    clients = clients.len(),
                    "rate limit table full; a new client is not counted"
                );
                return true;
            }
        }
        let entry = clients.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            return false;
        }
        entry.1 += 1;
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.lock().unwrap().len()
    }
}

/// Both limits of the MX port and the exempt networks.
#[derive(Debug)]
pub struct RateLimits {
    exempt: Vec<(IpAddr, u8)>,
    connections: Window,
    messages: Window,
}

impl RateLimits {
    /// From `[smtp]` (limits and `rate_limit_exempt`) and `[filter]
    /// ip_allow`. Invalid networks were refused by config validation and
    /// are skipped here.
    pub fn new(config: &Config) -> RateLimits {
        let exempt = config
            .smtp
            .rate_limit_exempt
            .iter()
            .chain(&config.filter.ip_allow)
            .filter_map(|s| parse_cidr(s))
            .collect();
        RateLimits {
            exempt,
            connections: Window::new(config.smtp.max_connections_per_minute),
            messages: Window::new(config.smtp.max_messages_per_minute),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.exempt
            .iter()
            .any(|(net, len)| cidr_contains(*net, *len, ip))
    }

    /// A new connection from `ip`: `Err(421 4.7.0)` beyond
    /// `max_connections_per_minute`.
    pub fn connection(&self, ip: IpAddr) -> Result<(), Reply> {
        if self.exempt(ip) || self.connections.admit(ip, Instant::now()) {
            return Ok(());
        }
        tracing::warn!(%ip, limit = self.connections.max, "connection rate limit reached");
        Err(Reply::new(
            codes::SERVICE_UNAVAILABLE,
            status::SECURITY_OTHER,
            format!(
                "Too many connections from your address (more than {} a minute), try again later",
                self.connections.max
            ),
        ))
    }

    /// A new transaction (MAIL FROM) from `ip`: `Err(451 4.7.1)` beyond
    /// `max_messages_per_minute`.
    pub fn message(&self, ip: IpAddr) -> Result<(), Reply> {
        if self.exempt(ip) || self.messages.admit(ip, Instant::now()) {
            return Ok(());
        }
        tracing::warn!(%ip, limit = self.messages.max, "message rate limit reached");
        Err(Reply::new(
            codes::LOCAL_ERROR,
            status::NOT_AUTHORIZED,
            format!(
                "Too many messages from your address (more than {} a minute), try again later",
                self.messages.max
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_n_plus_first_event_in_a_minute_is_refused_per_client() {
        let w = Window::new(2);
        let t = Instant::now();
        assert!(w.admit(ip("192.0.2.1"), t));
        assert!(w.admit(ip("192.0.2.1"), t));
        assert!(!w.admit(ip("192.0.2.1"), t));
        assert!(w.admit(ip("192.0.2.2"), t), "another client");
        assert!(w.admit(ip("192.0.2.1"), t + WINDOW), "a new minute");
    }

    #[test]
    fn an_ipv6_64_is_one_client_and_mapped_ipv4_is_ipv4() {
        let w = Window::new(1);
        let t = Instant::now();
        assert!(w.admit(ip("2001:db8:1:2::1"), t));
        assert!(!w.admit(ip("2001:db8:1:2:ffff::9"), t));
        assert!(w.admit(ip("2001:db8:1:3::1"), t));
        assert!(w.admit(ip("198.51.100.7"), t));
        assert!(!w.admit(ip("::ffff:198.51.100.7"), t));
    }

    #[test]
    fn expired_windows_are_pruned() {
        let w = Window::new(1);
        let t = Instant::now();
        for i in 0..PRUNE_AT as u32 {
            assert!(w.admit(IpAddr::from(i.to_be_bytes()), t));
        }
        assert_eq!(w.len(), PRUNE_AT);
        assert!(w.admit(ip("203.0.113.1"), t + WINDOW));
        assert_eq!(w.len(), 1, "the old minute's clients are gone");
    }

    #[test]
    fn exempt_networks_and_zero_are_never_limited() {
        let mut config = Config::default();
        config.smtp.max_connections_per_minute = 1;
        config.smtp.max_messages_per_minute = 0;
        config.filter.ip_allow = vec!["192.0.2.0/24".into()];
        let r = RateLimits::new(&config);
        for _ in 0..3 {
            assert!(r.connection(ip("127.0.0.1")).is_ok());
            assert!(r.connection(ip("192.0.2.9")).is_ok());
            assert!(r.message(ip("198.51.100.1")).is_ok());
        }
        assert!(r.connection(ip("198.51.100.1")).is_ok());
        let refused = r.connection(ip("198.51.100.1")).unwrap_err();
        assert_eq!(refused.code, 421);
        assert!(refused.to_string().starts_with("421 4.7.0"), "{refused}");
    }
}

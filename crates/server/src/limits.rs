//! Connection limits: in total and per client network (an IPv4 address or
//! an IPv6 /64, like the login throttle: one customer usually holds a whole
//! /64 and could otherwise open unlimited connections from it).
//!
//! A [`ConnLimiter`] hands out [`ConnGuard`]s; dropping the guard (when the
//! connection task ends, however it ends) gives the slot back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Hands out connection slots, in total and per client.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server holds `max_connections` already.
    Total,
    /// This client holds `max_connections_per_ip` already.
    PerIp,
}

impl ConnLimiter {
    /// A limiter for `max_total` connections, `max_per_ip` per client.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            inner: Mutex::new(Counts::default()),
        })
    }

    /// A slot for a connection from `ip`, or why there is none.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refused> {
        let ip = postoffice_directory::net_key(ip);
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnGuard {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Connections currently open.
    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// One connection slot; released on drop.
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.limiter.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits_and_release() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = l.acquire(a).unwrap();
        let _g2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).unwrap_err(), Refused::PerIp);
        let _g3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).unwrap_err(), Refused::Total);
        drop(g1);
        let _g4 = l.acquire(a).unwrap();
        assert_eq!(l.total(), 3);
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_the_per_ip_limit() {
        let l = ConnLimiter::new(100, 2);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _g1 = l.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _g2 = l.acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            l.acquire(ip("2001:db8:1:2::77")).unwrap_err(),
            Refused::PerIp
        );
        let _g3 = l.acquire(ip("2001:db8:1:3::1")).unwrap();
        // IPv4-mapped IPv6 is the IPv4 address.
        let _g4 = l.acquire(ip("192.0.2.1")).unwrap();
        let _g5 = l.acquire(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(l.acquire(ip("192.0.2.1")).unwrap_err(), Refused::PerIp);
    }
}

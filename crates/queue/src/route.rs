//! A route resolved to addresses to connect to, through the configured
//! resolver: a relay's host, or the domain's MX hosts (RFC 5321 section
//! 5.1). Which route a domain takes is [`crate::routing`]'s decision.
//!
//! * MX records are tried by preference (lowest first); hosts of equal
//!   preference in a random order (RFC 5321 5.1), deterministic for a given
//!   seed.
//! * No MX record (the name exists): the domain itself is the host (the
//!   "implicit MX"), through its A/AAAA records.
//! * The domain does not exist (NXDOMAIN): permanent failure, 5.1.2.
//! * A null MX (RFC 7505: `MX 0 .`): permanent failure, 5.1.10.
//! * Other DNS errors (timeouts, SERVFAIL): temporary, 4.4.3.
//! * At most [`MAX_TARGETS`] addresses are tried per attempt.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use postoffice_smtp::EnhancedCode;

use crate::routing::Relay;

/// Most addresses tried in one delivery attempt (like Postfix's
/// smtp_mx_address_limit).
pub(crate) const MAX_TARGETS: usize = 5;

/// One address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host name (for TLS SNI and certificate checks, and the DSN's
    /// Remote-MTA), or the IP address as text.
    pub host: String,
    pub addr: SocketAddr,
}

/// Why there is nowhere to connect to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct RouteError {
    /// The recipients fail for good (otherwise they wait).
    pub permanent: bool,
    /// The RFC 3463 code recorded for them.
    pub status: EnhancedCode,
    /// What went wrong, for humans.
    pub reason: String,
}

impl RouteError {
    fn temporary(reason: String) -> RouteError {
        RouteError {
            permanent: false,
            status: EnhancedCode(4, 4, 3),
            reason,
        }
    }
}

/// A host name from DNS as we compare and show it: lower case, no final dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// RFC 7505: the domain publishes a null MX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NullMx;

/// Orders MX records `(preference, exchange)`: by preference, then in a
/// seed-determined random order among equals. Duplicate hosts keep their
/// best preference. A record whose exchange is the root (".") makes the
/// whole set a null MX.
pub(crate) fn order_mx(records: &[(u16, String)], seed: u64) -> Result<Vec<String>, NullMx> {
    let mut hosts: Vec<(u16, u64, String)> = Vec::new();
    for (pref, exchange) in records {
        let host = normalize(exchange);
        if host.is_empty() {
            return Err(NullMx);
        }
        match hosts.iter_mut().find(|(_, _, h)| *h == host) {
            Some(existing) => existing.0 = existing.0.min(*pref),
            None => {
                let key = mix(seed, &host);
                hosts.push((*pref, key, host));
            }
        }
    }
    hosts.sort();
    Ok(hosts.into_iter().map(|(_, _, h)| h).collect())
}

/// FNV-1a of the name, mixed with the seed (splitmix64 finaliser).
fn mix(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Whether an error means "this name has no such records" (as opposed to
/// a failure to find out).
fn definite_no_records(e: &NetError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

/// Why the addresses of a host could not be found out.
#[derive(Debug, thiserror::Error)]
enum LookupError {
    /// No answer in time.
    #[error("address lookup for {0} timed out")]
    TimedOut(String),
    /// The resolver failed (SERVFAIL, no server reachable, ...).
    #[error("address lookup for {host} failed: {source}")]
    Failed {
        /// The host looked up.
        host: String,
        /// The resolver's error.
        source: NetError,
    },
}

/// Why one MX host gave no target.
#[derive(Debug, thiserror::Error)]
enum HostProblem {
    /// The name definitely has no address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// Finding out failed.
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

/// The addresses of `host`, or why there are none: `Ok(empty)` means the
/// name definitely has no address.
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, LookupError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match tokio::time::timeout(timeout, resolver.lookup_ip(fqdn(host))).await {
        Err(_) => Err(LookupError::TimedOut(host.to_string())),
        Ok(Ok(answer)) => Ok(answer.iter().collect()),
        Ok(Err(e)) if definite_no_records(&e) => Ok(Vec::new()),
        Ok(Err(source)) => Err(LookupError::Failed {
            host: host.to_string(),
            source,
        }),
    }
}

/// The targets of a relay.
pub(crate) async fn relay_targets(
    resolver: Option<&TokioResolver>,
    relay: &Relay,
    timeout: Duration,
) -> Result<Vec<Target>, RouteError> {
    if let Ok(ip) = relay.host.parse::<IpAddr>() {
        return Ok(vec![Target {
            host: relay.host.clone(),
            addr: SocketAddr::new(ip, relay.port),
        }]);
    }
    let Some(resolver) = resolver else {
        return Err(RouteError::temporary("no DNS resolver available".into()));
    };
    let ips = addresses(resolver, &relay.host, timeout)
        .await
        .map_err(|e| RouteError::temporary(e.to_string()))?;
    if ips.is_empty() {
        return Err(RouteError::temporary(format!(
            "relay host {} has no address",
            relay.host
        )));
    }
    Ok(ips
        .into_iter()
        .take(MAX_TARGETS)
        .map(|ip| Target {
            host: relay.host.clone(),
            addr: SocketAddr::new(ip, relay.port),
        })
        .collect())
}

/// The targets for mail to `domain` by MX lookup, on `port`.
pub(crate) async fn mx_targets(
    resolver: Option<&TokioResolver>,
    domain: &str,
    port: u16,
    seed: u64,
    timeout: Duration,
) -> Result<Vec<Target>, RouteError> {
    // An address literal: [192.0.2.1] or [IPv6:2001:db8::1].
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let lit = lit
            .strip_prefix("IPv6:")
            .or_else(|| lit.strip_prefix("ipv6:"))
            .unwrap_or(lit);
        return match lit.parse::<IpAddr>() {
            Ok(ip) => Ok(vec![Target {
                host: ip.to_string(),
                addr: SocketAddr::new(ip, port),
            }]),
            Err(_) => Err(RouteError {
                permanent: true,
                status: EnhancedCode(5, 1, 2),
                reason: format!("invalid address literal {domain}"),
            }),
        };
    }
    let Some(resolver) = resolver else {
        return Err(RouteError::temporary("no DNS resolver available".into()));
    };
    let lookup = tokio::time::timeout(timeout, resolver.mx_lookup(fqdn(domain))).await;
    let (hosts, implicit) = match lookup {
        Err(_) => {
            return Err(RouteError::temporary(format!(
                "MX lookup for {domain} timed out"
            )));
        }
        Ok(Err(e)) if e.is_nx_domain() => {
            return Err(RouteError {
                permanent: true,
                status: EnhancedCode(5, 1, 2),
                reason: format!("Host or domain name not found: {domain} does not exist"),
            });
        }
        Ok(Err(e)) if e.is_no_records_found() => (vec![normalize(domain)], true),
        Ok(Err(e)) => {
            return Err(RouteError::temporary(format!(
                "MX lookup for {domain} failed: {e}"
            )));
        }
        Ok(Ok(answer)) => {
            let records: Vec<(u16, String)> = answer
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                (vec![normalize(domain)], true)
            } else {
                match order_mx(&records, seed) {
                    Ok(hosts) => (hosts, false),
                    Err(NullMx) => {
                        return Err(RouteError {
                            permanent: true,
                            status: EnhancedCode(5, 1, 10),
                            reason: format!(
                                "Recipient address rejected: {domain} does not accept mail (null MX, RFC 7505)"
                            ),
                        });
                    }
                }
            }
        }
    };
    let mut targets = Vec::new();
    let mut errors: Vec<HostProblem> = Vec::new();
    for host in &hosts {
        if targets.len() >= MAX_TARGETS {
            break;
        }
        match addresses(resolver, host, timeout).await {
            Ok(ips) if ips.is_empty() => errors.push(HostProblem::NoAddress(host.clone())),
            Ok(ips) => {
                for ip in ips {
                    if targets.len() < MAX_TARGETS {
                        targets.push(Target {
                            host: host.clone(),
                            addr: SocketAddr::new(ip, port),
                        });
                    }
                }
            }
            Err(e) => errors.push(e.into()),
        }
    }
    if !targets.is_empty() {
        return Ok(targets);
    }
    let all_definite = errors
        .iter()
        .all(|e| matches!(e, HostProblem::NoAddress(_)));
    if implicit && all_definite {
        return Err(RouteError {
            permanent: true,
            status: EnhancedCode(5, 1, 2),
            reason: format!("Host or domain name not found: {domain} has no MX and no address"),
        });
    }
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    Err(RouteError::temporary(format!(
        "no usable MX host for {domain}: {}",
        errors.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    #[test]
    fn mx_by_preference() {
        let r = recs(&[(20, "b.test."), (10, "A.test."), (30, "c.test")]);
        assert_eq!(order_mx(&r, 1).unwrap(), vec!["a.test", "b.test", "c.test"]);
        // Duplicates keep the best preference.
        let r = recs(&[(50, "x.test."), (5, "y.test."), (1, "x.test.")]);
        assert_eq!(order_mx(&r, 7).unwrap(), vec!["x.test", "y.test"]);
    }

    #[test]
    fn equal_preferences_are_shuffled_deterministically() {
        let r = recs(&[
            (10, "a.test."),
            (10, "b.test."),
            (10, "c.test."),
            (5, "first.test."),
        ]);
        let one = order_mx(&r, 42).unwrap();
        assert_eq!(one, order_mx(&r, 42).unwrap());
        assert_eq!(one[0], "first.test");
        let mut seen = std::collections::HashSet::new();
        for seed in 0..64 {
            let o = order_mx(&r, seed).unwrap();
            assert_eq!(o[0], "first.test");
            let mut rest = o[1..].to_vec();
            seen.insert(rest.clone());
            rest.sort();
            assert_eq!(rest, vec!["a.test", "b.test", "c.test"]);
        }
        assert!(seen.len() > 1, "equal preferences never reordered");
    }

    #[test]
    fn null_mx() {
        assert_eq!(order_mx(&recs(&[(0, ".")]), 0), Err(NullMx));
        assert_eq!(order_mx(&recs(&[(0, "")]), 0), Err(NullMx));
        assert_eq!(
            order_mx(&recs(&[(10, "mx.test."), (0, ".")]), 0),
            Err(NullMx)
        );
    }

    #[tokio::test]
    async fn address_literals_need_no_dns() {
        let t = mx_targets(None, "[127.0.0.1]", 2525, 0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(t[0].addr, "127.0.0.1:2525".parse().unwrap());
        let t = mx_targets(None, "[IPv6:::1]", 25, 0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(t[0].addr, "[::1]:25".parse().unwrap());
        let e = mx_targets(None, "[nonsense]", 25, 0, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.permanent);
        // A name without a resolver: temporary.
        let e = mx_targets(None, "dest.test", 25, 0, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(!e.permanent);
    }
}

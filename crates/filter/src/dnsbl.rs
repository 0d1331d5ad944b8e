//! DNS block lists (RFC 5782).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use crate::header::{MAX_VALUE, sanitize};

/// What one zone says about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listing {
    /// NXDOMAIN or no A record: not listed.
    NotListed,
    /// An A record in 127.0.0.0/8 (RFC 5782 2.1); `reason` is the TXT record
    /// of the same name, if the zone publishes one.
    Listed {
        codes: Vec<Ipv4Addr>,
        reason: Option<String>,
    },
    /// The zone could not be asked (timeout, SERVFAIL, refused), or answered
    /// with an error code (127.255.255.0/24, which Spamhaus and others use
    /// for "query refused" / "rate limited"). Treated as not listed.
    Error(String),
}

/// A zone name as configured: trimmed, lowercased, without leading or
/// trailing dots. `None` when nothing is left or it has characters that are
/// never in a host name.
pub(crate) fn normalize_zone(zone: &str) -> Option<String> {
    let zone = zone.trim().trim_matches('.').to_ascii_lowercase();
    let ok = !zone.is_empty()
        && zone.len() <= 200
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !zone.contains("..");
    ok.then_some(zone)
}

/// The RFC 5782 query name for `ip` in `zone`, fully qualified: the IPv4
/// octets in reverse order (2.1), or the 32 nibbles of an IPv6 address in
/// reverse order (2.4), followed by the zone. An IPv4-mapped IPv6 address is
/// looked up as the IPv4 address it carries.
pub(crate) fn query_name(ip: IpAddr, zone: &str) -> String {
    let ip = crate::canonical_ip(ip);
    let mut name = String::with_capacity(80 + zone.len());
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            name.push_str(&format!("{d}.{c}.{b}.{a}."));
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
        }
    }
    name.push_str(zone);
    name.push('.');
    name
}

/// Interprets the A records of an answer (RFC 5782 2.3): any address in
/// 127.0.0.0/8 lists the client, except 127.255.255.0/24, which block list
/// operators use to say "this query was refused".
pub(crate) fn classify(codes: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, String> {
    let listed: Vec<Ipv4Addr> = codes
        .iter()
        .copied()
        .filter(|a| a.octets()[0] == 127)
        .collect();
    if let Some(err) = listed
        .iter()
        .find(|a| a.octets()[1..3] == [255, 255])
        .copied()
    {
        return Err(format!("the zone refused the query (answer {err})"));
    }
    Ok(listed)
}

/// Asks `zone` about `ip`: an A query, then (only when listed) a TXT query
/// for the reason. Each query is bounded by `timeout`.
pub(crate) async fn lookup(
    resolver: &TokioResolver,
    ip: IpAddr,
    zone: &str,
    timeout: Duration,
) -> Listing {
    let name = query_name(ip, zone);
    let answer = match tokio::time::timeout(timeout, resolver.ipv4_lookup(name.as_str())).await {
        Err(_) => return Listing::Error(format!("{name}: timed out")),
        Ok(Err(e)) if e.is_no_records_found() => return Listing::NotListed,
        Ok(Err(e)) => return Listing::Error(format!("{name}: {e}")),
        Ok(Ok(answer)) => answer,
    };
    let codes: Vec<Ipv4Addr> = answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    let codes = match classify(&codes) {
        Ok(codes) if codes.is_empty() => return Listing::NotListed,
        Ok(codes) => codes,
        Err(e) => return Listing::Error(format!("{name}: {e}")),
    };
    let reason = match tokio::time::timeout(timeout, resolver.txt_lookup(name.as_str())).await {
        Ok(Ok(txt)) => txt
            .answers()
            .iter()
            .find_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .map(|r| sanitize(&r, MAX_VALUE))
            .filter(|r| !r.is_empty()),
        _ => None,
    };
    Listing::Listed { codes, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_query_name_reverses_octets() {
        let ip: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(
            query_name(ip, "zen.spamhaus.org"),
            "99.2.0.192.zen.spamhaus.org."
        );
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(query_name(ip, "dnsbl.test"), "2.0.0.127.dnsbl.test.");
    }

    #[test]
    fn ipv6_query_name_uses_nibbles() {
        // The example of RFC 5782 section 2.4.
        let ip: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(ip, "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
        let ip: IpAddr = "::1".parse().unwrap();
        let name = query_name(ip, "z.test");
        assert_eq!(name.matches('.').count(), 32 + 2);
        assert!(name.starts_with("1.0.0.0.0."));
    }

    #[test]
    fn ipv4_mapped_addresses_are_looked_up_as_ipv4() {
        let ip: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(query_name(ip, "bl.test"), "7.100.51.198.bl.test.");
    }

    #[test]
    fn zones_are_normalized() {
        assert_eq!(
            normalize_zone(" Zen.Spamhaus.org. ").as_deref(),
            Some("zen.spamhaus.org")
        );
        assert_eq!(normalize_zone(""), None);
        assert_eq!(normalize_zone("bad zone"), None);
        assert_eq!(normalize_zone("a..b"), None);
    }

    #[test]
    fn answers_are_classified() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(classify(&[a("127.0.0.2")]), Ok(vec![a("127.0.0.2")]));
        assert_eq!(
            classify(&[a("127.0.0.4"), a("127.0.0.10")]),
            Ok(vec![a("127.0.0.4"), a("127.0.0.10")])
        );
        // Outside 127/8: not a listing (RFC 5782 2.3).
        assert_eq!(classify(&[a("192.0.2.1")]), Ok(vec![]));
        assert_eq!(classify(&[]), Ok(vec![]));
        // Spamhaus' "public resolver" / "rate limited" codes are errors.
        assert!(classify(&[a("127.255.255.254")]).is_err());
    }
}

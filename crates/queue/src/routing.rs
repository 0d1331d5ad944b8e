//! Where mail for a domain goes: a per-domain transport
//! (`[queue.transports]`), else the `relayhost`, else the domain's MX
//! hosts. This module decides; [`crate::route`] resolves the decision to
//! addresses.

use std::net::{IpAddr, SocketAddr};

use postoffice_smtp::EnhancedCode;
use postoffice_smtp::client::Status;

/// A relay destination: "host", "host:port", "[host]:port", "[v6addr]:port".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relay {
    /// Host name (lower case, no final dot) or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Parse a relay spec (port 25 when not given).
pub(crate) fn parse_relay(spec: &str) -> Option<Relay> {
    let spec = spec.trim();
    if spec.is_empty() {
        return None;
    }
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Some(Relay {
            host: sa.ip().to_string(),
            port: sa.port(),
        });
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Some(Relay {
            host: ip.to_string(),
            port: 25,
        });
    }
    let (host, port) = if let Some(rest) = spec.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, 25),
            p => (host, p.strip_prefix(':')?.parse().ok()?),
        }
    } else {
        match spec.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (spec, 25),
        }
    };
    let host = host.trim_end_matches('.');
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return None;
    }
    Some(Relay {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// AUTH PLAIN credentials for a relay.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Where mail for one domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Through a relay, with AUTH when there are credentials.
    Relay {
        /// The relay.
        relay: Relay,
        /// Credentials for it (sent only over verified TLS).
        credentials: Option<Credentials>,
    },
    /// To the domain's MX hosts.
    Mx,
}

impl Route {
    /// The key of the per-destination concurrency limit: the relay, or the
    /// recipient domain.
    pub(crate) fn destination_key(&self, domain: &str) -> String {
        match self {
            Route::Relay { relay, .. } => format!("relay:{}:{}", relay.host, relay.port),
            Route::Mx => domain.to_string(),
        }
    }
}

/// Why no route could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RoutingError {
    /// The recipient address has no domain part.
    #[error("recipient address has no domain")]
    NoDomain,
    /// A transport or the relayhost is not a valid relay spec.
    #[error("invalid relay {0:?} in the queue configuration")]
    InvalidRelay(String),
}

impl RoutingError {
    /// Whether the recipients fail for good or wait.
    pub(crate) fn status(&self) -> Status {
        match self {
            RoutingError::NoDomain => Status::Permanent,
            RoutingError::InvalidRelay(_) => Status::Temporary,
        }
    }

    /// The RFC 3463 code recorded for the recipients.
    pub(crate) fn enhanced(&self) -> EnhancedCode {
        match self {
            RoutingError::NoDomain => EnhancedCode(5, 1, 3),
            RoutingError::InvalidRelay(_) => EnhancedCode(4, 3, 5),
        }
    }
}

/// The route for `domain` (lower case, no final dot): its transport, else
/// the relayhost, else MX.
pub(crate) fn route_for(
    cfg: &postoffice_config::Queue,
    domain: &str,
) -> Result<Route, RoutingError> {
    if domain.is_empty() {
        return Err(RoutingError::NoDomain);
    }
    let spec = cfg
        .transports
        .iter()
        .find(|(d, _)| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
        .map(|(_, s)| s.as_str())
        .or(Some(cfg.relayhost.as_str()).filter(|s| !s.trim().is_empty()));
    let Some(spec) = spec else {
        return Ok(Route::Mx);
    };
    let relay = parse_relay(spec).ok_or_else(|| RoutingError::InvalidRelay(spec.to_string()))?;
    let credentials = (!cfg.relay_user.is_empty()).then(|| Credentials {
        user: cfg.relay_user.clone(),
        password: cfg.relay_password.clone(),
    });
    Ok(Route::Relay { relay, credentials })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_of(route: Result<Route, RoutingError>) -> (String, u16) {
        match route {
            Ok(Route::Relay { relay, .. }) => (relay.host, relay.port),
            other => panic!("not a relay: {other:?}"),
        }
    }

    #[test]
    fn transports_override_the_relayhost() {
        let mut cfg = postoffice_config::Queue::default();
        assert!(matches!(route_for(&cfg, "example.org"), Ok(Route::Mx)));
        cfg.relayhost = "smarthost.test:587".into();
        cfg.transports
            .insert("Example.ORG".into(), "[relay.example.net]:2525".into());
        assert_eq!(
            relay_of(route_for(&cfg, "example.org")),
            ("relay.example.net".into(), 2525)
        );
        assert_eq!(
            relay_of(route_for(&cfg, "other.test")),
            ("smarthost.test".into(), 587)
        );
        cfg.relayhost = "bad host".into();
        assert!(route_for(&cfg, "other.test").is_err());
        assert_eq!(route_for(&cfg, ""), Err(RoutingError::NoDomain));
    }

    #[test]
    fn relay_specs() {
        let r = |host: &str, port| {
            Some(Relay {
                host: host.into(),
                port,
            })
        };
        assert_eq!(
            parse_relay("smtp.example.net:587"),
            r("smtp.example.net", 587)
        );
        assert_eq!(parse_relay("Smtp.Example.net"), r("smtp.example.net", 25));
        assert_eq!(
            parse_relay("[smtp.example.net]:2525"),
            r("smtp.example.net", 2525)
        );
        assert_eq!(parse_relay("[smtp.example.net]"), r("smtp.example.net", 25));
        assert_eq!(parse_relay("127.0.0.1:2525"), r("127.0.0.1", 2525));
        assert_eq!(parse_relay("[::1]:2525"), r("::1", 2525));
        assert_eq!(parse_relay("192.0.2.1"), r("192.0.2.1", 25));
        assert_eq!(parse_relay(""), None);
        assert_eq!(parse_relay("host:notaport"), None);
        assert_eq!(parse_relay("bad host:25"), None);
    }
}

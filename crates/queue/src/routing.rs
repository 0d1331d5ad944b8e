//! Where mail for a domain goes: a per-domain transport
//! (`[queue.transports]`), else the `relayhost`, else the domain's MX
//! hosts. This module decides; [`crate::route`] resolves the decision to
//! addresses.
//!
//! Credentials belong to one relay each: `relay_user`/`relay_password`
//! (or `relay_password_file`) go to the `relayhost` only, and a transport
//! gets the `user`/`password` (or `password_file`) of its own entry, or
//! none. A transport may be run by a third party: the global credentials
//! are never its business. Password files are read once, when [`Routing`]
//! is built at start; one that cannot be read makes its relay's mail wait
//! (temporary failure) rather than go out without AUTH.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

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
    /// The relay's password file could not be read at start.
    #[error("cannot read {key} {}: {message}", path.display())]
    PasswordFile {
        /// The configuration key that names the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl RoutingError {
    /// Whether the recipients fail for good or wait.
    pub(crate) fn status(&self) -> Status {
        match self {
            RoutingError::NoDomain => Status::Permanent,
            RoutingError::InvalidRelay(_) | RoutingError::PasswordFile { .. } => Status::Temporary,
        }
    }

    /// The RFC 3463 code recorded for the recipients.
    pub(crate) fn enhanced(&self) -> EnhancedCode {
        match self {
            RoutingError::NoDomain => EnhancedCode(5, 1, 3),
            RoutingError::InvalidRelay(_) | RoutingError::PasswordFile { .. } => {
                EnhancedCode(4, 3, 5)
            }
        }
    }
}

/// One configured relay with its own credentials.
#[derive(Debug, Clone)]
struct RelayEntry {
    /// The relay spec as configured.
    spec: String,
    /// Its credentials: none, loaded, or why they could not be.
    credentials: Result<Option<Credentials>, RoutingError>,
}

/// The routing table, built once from `[queue]` at start.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    relayhost: Option<RelayEntry>,
    /// (domain, relay): lower case, no final dot.
    transports: Vec<(String, RelayEntry)>,
}

/// Credentials from a user and a password or a password file (its first
/// line). No user: none.
fn load_credentials(
    key: &str,
    user: &str,
    password: &str,
    password_file: Option<&Path>,
) -> Result<Option<Credentials>, RoutingError> {
    if user.is_empty() {
        return Ok(None);
    }
    let password = match password_file {
        None => password.to_string(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| RoutingError::PasswordFile {
                key: key.to_string(),
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            text.lines().next().unwrap_or("").to_string()
        }
    };
    Ok(Some(Credentials {
        user: user.to_string(),
        password,
    }))
}

impl Routing {
    /// Read the relays of `cfg` and their credentials (password files
    /// included; a file that cannot be read is logged here, and its
    /// relay's mail waits).
    pub(crate) fn new(cfg: &postoffice_config::Queue) -> Routing {
        let entry = |spec: &str, credentials: Result<Option<Credentials>, RoutingError>| {
            if let Err(e) = &credentials {
                tracing::error!(error = %e, relay = %spec,
                    "relay credentials unavailable: mail for this relay waits");
            }
            RelayEntry {
                spec: spec.to_string(),
                credentials,
            }
        };
        let relayhost = (!cfg.relayhost.trim().is_empty()).then(|| {
            entry(
                &cfg.relayhost,
                load_credentials(
                    "queue.relay_password_file",
                    &cfg.relay_user,
                    &cfg.relay_password,
                    cfg.relay_password_file.as_deref(),
                ),
            )
        });
        let transports = cfg
            .transports
            .iter()
            .map(|(domain, t)| {
                let credentials = load_credentials(
                    &format!("queue.transports.{domain:?}.password_file"),
                    &t.user,
                    &t.password,
                    t.password_file.as_deref(),
                );
                (
                    domain.trim_end_matches('.').to_ascii_lowercase(),
                    entry(&t.relay, credentials),
                )
            })
            .collect();
        Routing {
            relayhost,
            transports,
        }
    }

    /// The route for `domain` (lower case, no final dot): its transport,
    /// else the relayhost, else MX; each relay with its own credentials.
    pub(crate) fn route_for(&self, domain: &str) -> Result<Route, RoutingError> {
        if domain.is_empty() {
            return Err(RoutingError::NoDomain);
        }
        let entry = self
            .transports
            .iter()
            .find(|(d, _)| d == domain)
            .map(|(_, e)| e)
            .or(self.relayhost.as_ref());
        let Some(entry) = entry else {
            return Ok(Route::Mx);
        };
        let relay = parse_relay(&entry.spec)
            .ok_or_else(|| RoutingError::InvalidRelay(entry.spec.clone()))?;
        Ok(Route::Relay {
            relay,
            credentials: entry.credentials.clone()?,
        })
    }
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

    fn credentials_of(route: Result<Route, RoutingError>) -> Option<(String, String)> {
        match route {
            Ok(Route::Relay { credentials, .. }) => credentials.map(|c| (c.user, c.password)),
            other => panic!("not a relay: {other:?}"),
        }
    }

    #[test]
    fn transports_override_the_relayhost() {
        let mut cfg = postoffice_config::Queue::default();
        assert!(matches!(
            Routing::new(&cfg).route_for("example.org"),
            Ok(Route::Mx)
        ));
        cfg.relayhost = "smarthost.test:587".into();
        cfg.transports
            .insert("Example.ORG".into(), "[relay.example.net]:2525".into());
        let routing = Routing::new(&cfg);
        assert_eq!(
            relay_of(routing.route_for("example.org")),
            ("relay.example.net".into(), 2525)
        );
        assert_eq!(
            relay_of(routing.route_for("other.test")),
            ("smarthost.test".into(), 587)
        );
        assert_eq!(routing.route_for(""), Err(RoutingError::NoDomain));
        cfg.relayhost = "bad host".into();
        assert!(Routing::new(&cfg).route_for("other.test").is_err());
    }

    /// The global credentials go to the relayhost only; a transport gets
    /// its own or none.
    #[test]
    fn each_relay_gets_only_its_own_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("partner.pass");
        std::fs::write(&file, "from-file\nignored second line\n").unwrap();
        let mut cfg = postoffice_config::Queue {
            relayhost: "smarthost.test:587".into(),
            relay_user: "global".into(),
            relay_password: "global-pw".into(),
            ..Default::default()
        };
        cfg.transports
            .insert("third.test".into(), "relay.third.test".into());
        cfg.transports.insert(
            "own.test".into(),
            postoffice_config::Transport {
                relay: "relay.own.test".into(),
                user: "own".into(),
                password: "own-pw".into(),
                password_file: None,
            },
        );
        cfg.transports.insert(
            "file.test".into(),
            postoffice_config::Transport {
                relay: "relay.file.test".into(),
                user: "partner".into(),
                password: String::new(),
                password_file: Some(file),
            },
        );
        cfg.transports.insert(
            "missing.test".into(),
            postoffice_config::Transport {
                relay: "relay.missing.test".into(),
                user: "m".into(),
                password: String::new(),
                password_file: Some(dir.path().join("nope")),
            },
        );
        let routing = Routing::new(&cfg);
        assert_eq!(
            credentials_of(routing.route_for("other.test")),
            Some(("global".into(), "global-pw".into()))
        );
        assert_eq!(credentials_of(routing.route_for("third.test")), None);
        assert_eq!(
            credentials_of(routing.route_for("own.test")),
            Some(("own".into(), "own-pw".into()))
        );
        assert_eq!(
            credentials_of(routing.route_for("file.test")),
            Some(("partner".into(), "from-file".into()))
        );
        // An unreadable password file: the mail waits, it does not go out
        // without AUTH.
        let e = routing.route_for("missing.test").unwrap_err();
        assert!(matches!(e, RoutingError::PasswordFile { .. }), "{e}");
        assert_eq!(e.status(), Status::Temporary);
        assert!(e.to_string().contains("nope"), "{e}");

        // The global password from a file.
        let gfile = dir.path().join("global.pass");
        std::fs::write(&gfile, "global-from-file\r\n").unwrap();
        cfg.relay_password = String::new();
        cfg.relay_password_file = Some(gfile);
        assert_eq!(
            credentials_of(Routing::new(&cfg).route_for("other.test")),
            Some(("global".into(), "global-from-file".into()))
        );
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

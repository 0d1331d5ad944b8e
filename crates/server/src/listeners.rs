//! Where the listening sockets come from: systemd socket activation, or
//! binding the configured addresses.
//!
//! Under systemd the `.socket` units open the ports (root is needed for
//! ports below 1024; the server itself then never is) and pass them as
//! file descriptors 3, 4, ... with `LISTEN_FDS`, `LISTEN_PID` and
//! `LISTEN_FDNAMES` (each unit's `FileDescriptorName=`). Each name says
//! which service the socket is for: `pop3`, `pop3s`, `smtp`, `submission`,
//! `submissions`, `http` or `https`. When sockets are passed, the server listens on those
//! and on nothing else: the `listen` keys of the config are not used.
//!
//! The descriptors are taken with the `listenfd` crate, which keeps the
//! one `unsafe` step (turning a number into an owned socket) behind a safe
//! function and checks first that each descriptor is a TCP stream socket;
//! this crate stays `forbid(unsafe_code)`.
//!
//! [`Listeners::open`] runs before the tokio runtime starts and before
//! the process gives up root, with plain `std` sockets; they become tokio
//! listeners inside the runtime.

use std::net::{SocketAddr, TcpListener};

use postoffice_config::Config;

use crate::Service;

/// Why the listeners could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A passed descriptor has a name that is not a service.
    #[error(
        "socket activation: descriptor {index} is named {name:?}; name each socket with \
         FileDescriptorName= pop3, pop3s, smtp, submission, submissions, http or https"
    )]
    UnknownName {
        /// Its position (0 is descriptor 3).
        index: usize,
        /// Its name.
        name: String,
    },
    /// A passed descriptor is not a listening TCP socket.
    #[error("socket activation: descriptor {index} ({name}): {source}")]
    Descriptor {
        /// Its position.
        index: usize,
        /// Its name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A configured address could not be bound.
    #[error(
        "cannot listen on {addr} ({service}): {source}; is another server running there? \
         Change the listen addresses ([pop3], [smtp], [submission], [http]) in the config{hint}"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The service.
        service: &'static str,
        /// Why.
        source: std::io::Error,
        /// What to do about a privileged port.
        hint: &'static str,
    },
}

/// Opened listening sockets, each for one service.
#[derive(Debug)]
pub struct Listeners {
    pub(crate) sockets: Vec<(Service, TcpListener)>,
    activated: bool,
}

impl Listeners {
    /// The sockets systemd passed, if any; otherwise bind every configured
    /// address.
    pub fn open(config: &Config) -> Result<Listeners, ListenError> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() > 0 {
            let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
            return Listeners::passed(&mut fds, &names);
        }
        Listeners::bind(config)
    }

    fn passed(fds: &mut listenfd::ListenFd, names: &str) -> Result<Listeners, ListenError> {
        let names: Vec<&str> = names.split(':').collect();
        let mut sockets = Vec::new();
        for index in 0..fds.len() {
            let name = names.get(index).copied().unwrap_or("");
            let service = Service::from_name(name).ok_or_else(|| ListenError::UnknownName {
                index,
                name: name.to_string(),
            })?;
            let described = |source| ListenError::Descriptor {
                index,
                name: name.to_string(),
                source,
            };
            let socket = fds
                .take_tcp_listener(index)
                .map_err(described)?
                .ok_or_else(|| described(std::io::Error::other("already taken")))?;
            socket.set_nonblocking(true).map_err(described)?;
            sockets.push((service, socket));
        }
        Ok(Listeners {
            sockets,
            activated: true,
        })
    }

    /// Bind every address of the `listen` keys.
    pub fn bind(config: &Config) -> Result<Listeners, ListenError> {
        let mut sockets = Vec::new();
        for (service, addrs) in [
            (Service::Pop3, &config.pop3.listen),
            (Service::Pop3s, &config.pop3.listen_tls),
            (Service::Smtp, &config.smtp.listen),
            (Service::Submission, &config.submission.listen),
            (Service::Submissions, &config.submission.listen_tls),
            (Service::Http, &config.http.listen),
            (Service::Https, &config.http.listen_tls),
        ] {
            for addr in addrs {
                let socket = bind(*addr).map_err(|source| {
                    let hint = if addr.port() < 1024
                        && source.kind() == std::io::ErrorKind::PermissionDenied
                    {
                        " (ports below 1024 need root, CAP_NET_BIND_SERVICE or systemd's \
                         socket units: see \"Running in production\" in the README)"
                    } else {
                        ""
                    };
                    ListenError::Bind {
                        addr: *addr,
                        service: service.name(),
                        source,
                        hint,
                    }
                })?;
                sockets.push((service, socket));
            }
        }
        Ok(Listeners {
            sockets,
            activated: false,
        })
    }

    /// Whether the sockets came from systemd.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Each socket's service and address.
    pub fn addrs(&self) -> Vec<(Service, SocketAddr)> {
        self.sockets
            .iter()
            .filter_map(|(s, l)| l.local_addr().ok().map(|a| (*s, a)))
            .collect()
    }
}

/// A listening socket, non-blocking for tokio (std sets SO_REUSEADDR, so
/// a restart does not wait for old connections in TIME_WAIT).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

//! The live sessions of the server, for the administrators' page and the
//! `postoffice_sessions_open` gauge.
//!
//! A session driver calls [`Sessions::open`] when a connection starts and
//! keeps the returned [`SessionHandle`] for the connection's life: it
//! names the user once one has logged in ([`SessionHandle::set_user`]) and
//! TLS once it is on ([`SessionHandle::set_tls`]). Dropping the handle,
//! however the connection ends, removes the session and lowers the gauge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::metrics::Metrics;

/// One live session as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// A number unique within this process.
    pub id: u64,
    /// The protocol label ([`crate::metrics::protocol`]).
    pub protocol: &'static str,
    /// The client.
    pub peer: SocketAddr,
    /// When the connection was accepted.
    pub started: SystemTime,
    /// The logged-in user, once there is one.
    pub user: Option<String>,
    /// Whether the connection is encrypted.
    pub tls: bool,
}

/// The registry. Share it with an `Arc` (the handles hold one).
#[derive(Debug)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, SessionInfo>>,
    metrics: Arc<Metrics>,
}

impl Sessions {
    /// An empty registry counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Sessions> {
        Arc::new(Sessions {
            next: AtomicU64::new(1),
            live: Mutex::new(BTreeMap::new()),
            metrics,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, SessionInfo>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new connection; it stays listed until the handle drops.
    pub fn open(
        self: &Arc<Self>,
        protocol: &'static str,
        peer: SocketAddr,
        tls: bool,
    ) -> SessionHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map().insert(
            id,
            SessionInfo {
                id,
                protocol,
                peer,
                started: SystemTime::now(),
                user: None,
                tls,
            },
        );
        self.metrics.sessions_total.inc([protocol]);
        self.metrics.sessions_open.inc([protocol]);
        SessionHandle {
            sessions: Arc::clone(self),
            id,
            protocol,
        }
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.map().values().cloned().collect()
    }

    /// How many sessions are live.
    pub fn count(&self) -> usize {
        self.map().len()
    }
}

/// A registered session; dropping it ends the registration.
#[derive(Debug)]
pub struct SessionHandle {
    sessions: Arc<Sessions>,
    id: u64,
    protocol: &'static str,
}

impl SessionHandle {
    /// The user logged in on this session.
    pub fn set_user(&self, user: &str) {
        if let Some(s) = self.sessions.map().get_mut(&self.id) {
            s.user = Some(user.to_string());
        }
    }

    /// The session switched to TLS (STLS, STARTTLS).
    pub fn set_tls(&self) {
        if let Some(s) = self.sessions.map().get_mut(&self.id) {
            s.tls = true;
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.sessions.map().remove(&self.id);
        self.sessions.metrics.sessions_open.add([self.protocol], -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::protocol;

    #[test]
    fn sessions_are_listed_while_their_handle_lives() {
        let metrics = Arc::new(Metrics::new());
        let s = Sessions::new(Arc::clone(&metrics));
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let a = s.open(protocol::POP3, peer, false);
        let b = s.open(protocol::SMTP, peer, false);
        a.set_user("alice@example.test");
        a.set_tls();
        let list = s.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].user.as_deref(), Some("alice@example.test"));
        assert!(list[0].tls);
        assert_eq!(metrics.sessions_open.get([protocol::POP3]), 1);
        drop(a);
        assert_eq!(s.count(), 1);
        assert_eq!(metrics.sessions_open.get([protocol::POP3]), 0);
        assert_eq!(metrics.sessions_total.get([protocol::POP3]), 1);
        drop(b);
        assert_eq!(s.count(), 0);
    }
}

//! The generator's TLS client (POP3S, implicit TLS as on port 995).
//!
//! The certificate is verified as a real client does it: the configuration
//! comes from `postoffice_common::tls_client` (rustls with the ring
//! provider, WebPKI verification, [`Verification::Required`]) with the
//! benchmark's CA file (or the server's self-signed certificate, which is
//! its own CA) as the only trust anchor, and the server is named by
//! `--tls-server-name` or by its IP address.
//!
//! Two ways of connecting:
//! - **full handshakes**: one [`TlsClient`] shared by every session, with
//!   resumption disabled, so every session pays a full handshake;
//! - **resumption**, as returning clients do it: one [`TlsClient`] per
//!   simulated client (per user), each with its own session store, so the
//!   tickets (TLS 1.3) or session ids a server handed to that client are
//!   offered again on its next connection, and never another client's.
//!
//! [`Handshake`] says which one a connection actually got: whether a
//! server resumes is its choice, and the report counts both.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use postoffice_common::tls_client::{Trust, TrustAnchors, Verification};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Session-store entries (servers) per simulated client: each talks to
/// one server, rustls keeps up to 8 TLS 1.3 tickets per server.
const STORE_ENTRIES: usize = 4;

/// What every client shares: the verified configuration and the name.
#[derive(Clone)]
pub struct TlsSetup {
    base: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsSetup {
    /// Trust only the certificates in `ca` (PEM); name the server
    /// `server_name` or, without one, by `addr`'s IP address.
    pub fn new(ca: &Path, server_name: Option<&str>, addr: SocketAddr) -> Result<TlsSetup> {
        let anchors = TrustAnchors::load(&Trust::CaFile(ca.to_path_buf()))
            .with_context(|| format!("--tls-ca {}", ca.display()))?;
        let base = anchors
            .client_config(Verification::Required)
            .context("building the TLS client configuration")?;
        let name = match server_name {
            Some(n) => ServerName::try_from(n.to_string())
                .with_context(|| format!("--tls-server-name {n:?}"))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        Ok(TlsSetup { base, name })
    }

    /// A client that never resumes: every connection is a full handshake.
    pub fn full(&self) -> TlsClient {
        self.client(Resumption::disabled())
    }

    /// A client with its own, initially empty session store (one per
    /// simulated client).
    pub fn resuming(&self) -> TlsClient {
        self.client(Resumption::in_memory_sessions(STORE_ENTRIES))
    }

    fn client(&self, resumption: Resumption) -> TlsClient {
        // Cloning a ClientConfig shares its session store (an Arc), so
        // every client gets a fresh Resumption of its own.
        let mut config = (*self.base).clone();
        config.resumption = resumption;
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name: self.name.clone(),
        }
    }
}

/// One client's TLS configuration (and, when resuming, its sessions).
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsClient {
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    pub fn server_name(&self) -> ServerName<'static> {
        self.name.clone()
    }
}

/// What a handshake negotiated.
#[derive(Debug, Clone, Copy)]
pub struct Handshake {
    /// The server accepted a ticket or session id: no certificate, no
    /// signature, no full key exchange.
    pub resumed: bool,
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::CipherSuite>,
    group: Option<rustls::NamedGroup>,
}

impl Handshake {
    pub fn of(c: &ClientConnection) -> Handshake {
        Handshake {
            resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
            version: c.protocol_version(),
            suite: c.negotiated_cipher_suite().map(|s| s.suite()),
            group: c.negotiated_key_exchange_group().map(|g| g.name()),
        }
    }

    /// `TLSv1_3/TLS13_AES_256_GCM_SHA384/X25519` (no spaces: it goes
    /// into the RESULT line).
    pub fn describe(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "{}/{}/{}",
            opt(self.version.map(|v| format!("{v:?}"))),
            opt(self.suite.map(|s| format!("{s:?}"))),
            opt(self.group.map(|g| format!("{g:?}")))
        )
    }
}

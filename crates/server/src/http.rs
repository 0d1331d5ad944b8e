//! One HTTP or HTTPS connection: the TLS handshake (with the server's
//! certificate) and the connection counters here, everything above HTTP in
//! `postoffice-http`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postoffice_core::metrics::protocol;
use tokio::net::TcpStream;

use crate::Shared;
use crate::shutdown::Shutdown;

/// Counts the connection as open while it lives.
struct Open<'a> {
    shared: &'a Shared,
    protocol: &'static str,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.shared
            .app
            .metrics
            .sessions_open
            .add([self.protocol], -1);
    }
}

/// Serve one accepted HTTP (or, with `tls`, HTTPS) connection.
pub async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: bool,
    mut shutdown: Shutdown,
) {
    let Some(http) = shared.http.clone() else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let protocol = if tls { protocol::HTTPS } else { protocol::HTTP };
    let m = &shared.app.metrics;
    m.sessions_total.inc([protocol]);
    m.sessions_open.inc([protocol]);
    let _open = Open {
        shared: &shared,
        protocol,
    };
    let client = postoffice_http::Client { peer, secure: tls };
    let stop = async move { shutdown.recv().await };
    if tls {
        let timeout = Duration::from_secs(shared.app.config.limits.tls_handshake_timeout_secs);
        if let Some(stream) = crate::tls::accept(&shared, tcp, timeout).await {
            http.serve_connection(stream, client, stop).await;
        }
    } else {
        http.serve_connection(tcp, client, stop).await;
    }
}

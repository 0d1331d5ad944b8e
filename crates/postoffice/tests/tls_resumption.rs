//! Returning clients resume their TLS session (tickets or the server's
//! session cache) instead of paying a full handshake on POP3S and
//! submission's implicit TLS port.

mod common;

use std::io::{BufRead, BufReader, Write};

use common::*;

/// Connect, read the greeting, say goodbye; whether the handshake was a
/// resumption.
fn session(addr: std::net::SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> bool {
    let tcp = tcp_connect(addr);
    let mut tls = tls_client_with(std::sync::Arc::clone(config), "localhost", tcp);
    let mut greeting = String::new();
    BufReader::new(&mut tls).read_line(&mut greeting).unwrap();
    assert!(
        greeting.starts_with("+OK") || greeting.starts_with("220"),
        "{greeting}"
    );
    tls.write_all(b"QUIT\r\n").unwrap();
    tls.flush().unwrap();
    matches!(
        tls.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    )
}

#[test]
fn returning_clients_resume_their_tls_session() {
    let env = Env::new(BIN, "");
    let server = env.start();
    for addr in [server.pop3s_addr(), server.submits_addr()] {
        let config = tls_client_config(&env.cert());
        assert!(!session(addr, &config), "the first handshake is a full one");
        assert!(session(addr, &config), "the second resumes ({addr})");
        assert!(session(addr, &config), "and the third ({addr})");
        // A client without the earlier session gets a full handshake.
        assert!(!session(addr, &tls_client_config(&env.cert())));
    }
    // Many other clients in between (more than a small server-side session
    // cache holds): the first still resumes (stateless tickets).
    let addr = server.pop3s_addr();
    let first = tls_client_config(&env.cert());
    assert!(!session(addr, &first));
    for _ in 0..400 {
        session(addr, &tls_client_config(&env.cert()));
    }
    assert!(session(addr, &first), "resumed after 400 other clients");
}

//! Loopback ports and connections.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::wait::poll_until;

/// How long a socket read or write may block before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback port that was free for both TCP and UDP a moment ago (for a
/// daemon that takes a port number, or an address where nobody listens).
#[track_caller]
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// A TCP connection to `addr` with [`IO_TIMEOUT`] on connect, read and
/// write; panics when it cannot connect.
#[track_caller]
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s
}

/// Whether something accepts TCP connections on `addr` within `limit`
/// (polled, not slept).
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    poll_until(limit, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_free_and_wait_for_port_sees_a_listener() {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(!wait_for_port(addr, Duration::from_millis(50)));
        let listener = TcpListener::bind(addr).unwrap();
        assert!(wait_for_port(addr, Duration::from_secs(10)));
        let s = tcp_connect(addr);
        assert_eq!(s.read_timeout().unwrap(), Some(IO_TIMEOUT));
        drop(listener);
    }
}

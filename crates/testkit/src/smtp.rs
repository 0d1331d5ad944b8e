//! SMTP over the blocking [`Client`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::client::Client;
use crate::net::tcp_connect;

/// Reads one (possibly multi-line) SMTP reply: (code, all lines joined by
/// `\n`, each ending in `\n`).
#[track_caller]
pub fn smtp_reply<S: Read + Write>(c: &mut Client<S>) -> (u16, String) {
    let mut text = String::new();
    loop {
        let line = c.read_line();
        let code: u16 = line
            .get(..3)
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("bad SMTP reply line {line:?}"));
        text.push_str(&line);
        text.push('\n');
        if line.as_bytes().get(3) != Some(&b'-') {
            return (code, text);
        }
    }
}

/// Sends one SMTP command line and reads its reply.
#[track_caller]
pub fn smtp_cmd<S: Read + Write>(c: &mut Client<S>, line: &str) -> (u16, String) {
    c.send(line);
    smtp_reply(c)
}

/// An SMTP connection to `addr`: the 220 greeting read, `EHLO
/// client.example.net` answered 250 (both asserted).
#[track_caller]
pub fn smtp_connect(addr: SocketAddr) -> Client<TcpStream> {
    let mut c = Client::new(tcp_connect(addr));
    let (code, text) = smtp_reply(&mut c);
    assert_eq!(code, 220, "{text}");
    let (code, text) = smtp_cmd(&mut c, "EHLO client.example.net");
    assert_eq!(code, 250, "{text}");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"220 hi\r\n").unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"EHLO client.example.net\r\n");
            s.write_all(b"250-one\r\n250-two\r\n250 three\r\n").unwrap();
        });
        let c = smtp_connect(addr);
        server.join().unwrap();
        assert!(c.buffered().is_empty(), "the whole 250 reply was read");
    }
}

//! The message as the client sends it after DATA (RFC 5321 4.5.2).

/// The message as DATA content: lines starting with `.` get another `.`
/// (RFC 5321 4.5.2), bare CR and bare LF become CRLF, a missing final CRLF
/// is added, and the terminating `.<CRLF>` is appended.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            b'.' if line_start => {
                out.extend_from_slice(b"..");
                line_start = false;
            }
            _ => {
                out.push(b);
                line_start = false;
            }
        }
        i += 1;
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

//! Trace headers we add to received mail: `Return-Path` and `Received`
//! (RFC 5321 4.4), with dates in RFC 5322 form; and the removal of header
//! fields that forge our own verdicts.

use std::net::IpAddr;
use std::time::SystemTime;

use postoffice_common::date::rfc5322;

/// What goes into the `Received` header.
pub struct Trace<'a> {
    /// The client's EHLO/HELO name.
    pub helo: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// Our name.
    pub hostname: &'a str,
    /// EHLO rather than HELO.
    pub esmtp: bool,
    /// TLS version and cipher, when encrypted.
    pub tls: Option<&'a str>,
    /// Submission by an authenticated user.
    pub authenticated: bool,
    /// The transaction ID.
    pub id: &'a str,
    /// The reverse-path.
    pub mail_from: &'a str,
    /// Named in the header only when there is exactly one.
    pub rcpt_to: &'a [String],
    /// When the message arrived.
    pub time: SystemTime,
}

/// `Return-Path:` and `Received:` lines, each ending in CRLF.
pub fn trace_headers(t: &Trace<'_>) -> String {
    // RFC 3848 protocol names.
    let proto = match (t.esmtp, t.tls.is_some(), t.authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let tls = t
        .tls
        .map(|v| format!("\r\n\t(using {v})"))
        .unwrap_or_default();
    let rcpt = match t.rcpt_to {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    let ip = match t.ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    format!(
        "Return-Path: <{}>\r\nReceived: from {} ([{}])\r\n\tby {} (postoffice) with {} id {}{}{};\r\n\t{}\r\n",
        t.mail_from,
        if t.helo.is_empty() { "unknown" } else { t.helo },
        ip,
        t.hostname,
        proto,
        t.id,
        tls,
        rcpt,
        rfc5322(t.time)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn received_header() {
        let rcpt = vec!["alice@example.test".to_string()];
        let h = trace_headers(&Trace {
            helo: "client.example.net",
            ip: "127.0.0.1".parse().unwrap(),
            hostname: "mx.example.test",
            esmtp: true,
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384"),
            authenticated: false,
            id: "ABC123",
            mail_from: "bob@example.net",
            rcpt_to: &rcpt,
            time: UNIX_EPOCH,
        });
        assert!(h.starts_with(
            "Return-Path: <bob@example.net>\r\nReceived: from client.example.net ([127.0.0.1])\r\n"
        ));
        assert!(h.contains("with ESMTPS id ABC123"));
        assert!(h.contains("(using TLSv1.3 TLS13_AES_256_GCM_SHA384)"));
        assert!(h.contains("for <alice@example.test>;"));
        assert!(h.ends_with("Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
        assert!(h.lines().all(|l| l.len() < 998));
    }
}

/// Remove header fields a sender could forge to impersonate our own
/// verdicts (RFC 8601 5): `Authentication-Results` whose authserv-id is our
/// host name, and any `X-Postoffice-Verdict` / `X-Virus-Scan` /
/// `X-Spam-Score` / `X-Spam-Status` / `X-Spam-Symbols`. Only the
/// header section is touched; the body is never rewritten. Borrowed when
/// there is nothing to remove.
pub fn strip_forged<'a>(message: &'a [u8], hostname: &str) -> std::borrow::Cow<'a, [u8]> {
    let header_end = find_header_end(message);
    let mut drops: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < header_end {
        // One field: its first line plus continuation lines (starting with
        // space or tab).
        let start = pos;
        let mut end = next_line(message, pos);
        while end < header_end && matches!(message.get(end), Some(b' ' | b'\t')) {
            end = next_line(message, end);
        }
        let field = &message[start..end];
        if is_forged(field, hostname) {
            drops.push((start, end));
        }
        pos = end;
    }
    if drops.is_empty() {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len());
    let mut last = 0;
    for (s, e) in drops {
        out.extend_from_slice(&message[last..s]);
        last = e;
    }
    out.extend_from_slice(&message[last..]);
    std::borrow::Cow::Owned(out)
}

fn next_line(m: &[u8], from: usize) -> usize {
    memchr_lf(&m[from..]).map_or(m.len(), |p| from + p + 1)
}

fn memchr_lf(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// Offset of the blank line ending the header section (or the end): the
/// header is `m[..n]`, the blank line and the body follow.
pub fn find_header_end(m: &[u8]) -> usize {
    let mut pos = 0;
    while pos < m.len() {
        let line_end = next_line(m, pos);
        let line = &m[pos..line_end];
        if line == b"\r\n" || line == b"\n" {
            return pos;
        }
        // A line without a colon that is not a continuation ends the header
        // (malformed input: treat the rest as body).
        if !matches!(line.first(), Some(b' ' | b'\t')) && !line.contains(&b':') {
            return pos;
        }
        pos = line_end;
    }
    m.len()
}

fn is_forged(field: &[u8], hostname: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = String::from_utf8_lossy(&field[..colon])
        .trim()
        .to_ascii_lowercase();
    match name.as_str() {
        "x-postoffice-verdict"
        | "x-virus-scan"
        | "x-spam-score"
        | "x-spam-status"
        | "x-spam-symbols" => true,
        "authentication-results" => {
            let value = String::from_utf8_lossy(&field[colon + 1..]);
            let id = value
                .trim_start()
                .split(|c: char| c == ';' || c.is_whitespace())
                .next()
                .unwrap_or("");
            id.eq_ignore_ascii_case(hostname)
        }
        _ => false,
    }
}

#[cfg(test)]
mod strip_tests {
    use super::strip_forged;

    #[test]
    fn forged_verdicts_are_removed_and_nothing_else() {
        let m = b"Authentication-Results: mx.test;\r\n\tspf=pass\r\nX-Postoffice-Verdict: clean\r\nAuthentication-Results: other.example; dkim=pass\r\nSubject: hi\r\nX-Virus-Scan: none\r\n\r\nAuthentication-Results: mx.test; body text stays\r\n";
        let out = strip_forged(m, "MX.test");
        assert_eq!(
            &*out,
            &b"Authentication-Results: other.example; dkim=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.test; body text stays\r\n"[..]
        );
    }

    #[test]
    fn clean_message_is_borrowed() {
        let m = b"Subject: hi\r\n\r\nbody\r\n";
        assert!(matches!(
            strip_forged(m, "mx.test"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

//! Trace headers we add to received mail: `Return-Path` and `Received`
//! (RFC 5321 4.4), with dates in RFC 5322 form.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 5322 date-time in UTC, e.g. `Fri, 27 Nov 2026 11:30:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(month - 1) as usize],
        year,
        h,
        m,
        s
    )
}

/// What went into the `Received` header.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub ip: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: Option<&'a str>,
    pub authenticated: bool,
    pub id: &'a str,
    pub mail_from: &'a str,
    /// Named in the header only when there is exactly one.
    pub rcpt_to: &'a [String],
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
        rfc5322_date(t.time)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        // 2026-11-27 11:30:05 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_779_005);
        assert_eq!(rfc5322_date(t), "Fri, 27 Nov 2026 11:30:05 +0000");
        // Leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(t), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

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

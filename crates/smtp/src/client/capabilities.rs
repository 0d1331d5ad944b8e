//! What a server announced in its reply to EHLO (RFC 5321 4.1.1.1, and the
//! extensions' own RFCs).

use crate::reply::Reply;

/// What the server announced in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// EHLO was accepted (false after the HELO fallback).
    pub esmtp: bool,
    /// `PIPELINING` (RFC 2920): commands may be sent without waiting.
    pub pipelining: bool,
    /// `SIZE` was announced; `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// SASL mechanisms, upper case.
    pub auth: Vec<String>,
    /// `8BITMIME` (RFC 6152).
    pub eightbitmime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `CHUNKING` (RFC 3030): BDAT.
    pub chunking: bool,
}

impl Capabilities {
    /// From a 250 reply to EHLO (the first line is the server's name).
    pub(crate) fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            // Some old servers announce "AUTH=PLAIN LOGIN".
            let (keyword, first_param) = match keyword.split_once('=') {
                Some((k, p)) => (k.to_ascii_uppercase(), Some(p)),
                None => (keyword.to_ascii_uppercase(), None),
            };
            let params: Vec<&str> = first_param.into_iter().chain(words).collect();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    caps.size = Some(params.first().and_then(|p| p.parse().ok()).unwrap_or(0));
                }
                "STARTTLS" => caps.starttls = true,
                "AUTH" => {
                    for p in params {
                        let m = p.to_ascii_uppercase();
                        if !caps.auth.contains(&m) {
                            caps.auth.push(m);
                        }
                    }
                }
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                _ => {}
            }
        }
        caps
    }
}

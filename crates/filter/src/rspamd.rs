//! An rspamd client over its HTTP protocol (`POST /checkv2` of the normal
//! worker), with hyper as the HTTP client.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use postoffice_common::content::Content;
use serde::Deserialize;

use crate::header::{MAX_VALUE, sanitize};

/// Largest message sent to rspamd; a bigger one is not scanned (rspamd's
/// own default `max_message` is 50 MiB, and spam is small).
pub(crate) const MAX_SCAN: u64 = 20 * 1024 * 1024;

/// Longest reply body read from rspamd.
const MAX_REPLY: usize = 1024 * 1024;

/// The transaction facts passed to rspamd as request headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope<'a> {
    pub ip: std::net::IpAddr,
    pub helo: &'a str,
    pub mail_from: &'a str,
    pub rcpt_to: &'a [String],
    pub auth_user: Option<&'a str>,
    pub hostname: &'a str,
}

impl<'a> Envelope<'a> {
    /// The facts of the transaction `ctx`.
    pub(crate) fn of(ctx: &crate::MessageContext<'a>) -> Envelope<'a> {
        Envelope {
            ip: ctx.ip,
            helo: ctx.helo,
            mail_from: ctx.mail_from,
            rcpt_to: ctx.rcpt_to,
            auth_user: ctx.auth_user,
            hostname: ctx.receiver_hostname,
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpamOutcome {
    /// rspamd scored the message.
    Scored {
        /// The total score.
        score: f64,
        /// Symbol names (sanitised) with their scores, highest first.
        symbols: Vec<(String, f64)>,
    },
    /// Not scanned on purpose (too large); the text says why.
    Skipped(String),
    /// rspamd could not be asked or answered garbage; the text says what
    /// happened (sanitised, one line).
    Failed(String),
}

#[derive(Deserialize)]
struct Reply {
    score: f64,
    #[serde(default)]
    symbols: std::collections::BTreeMap<String, Symbol>,
}

#[derive(Deserialize)]
struct Symbol {
    #[serde(default)]
    score: f64,
}

/// Interprets the JSON body of a `/checkv2` reply.
pub(crate) fn parse_reply(body: &[u8]) -> SpamOutcome {
    match serde_json::from_slice::<Reply>(body) {
        Ok(reply) if reply.score.is_finite() => {
            let mut symbols: Vec<(String, f64)> = reply
                .symbols
                .into_iter()
                .map(|(name, s)| (sanitize(&name, 64), s.score))
                .filter(|(name, _)| !name.is_empty())
                .collect();
            symbols.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            SpamOutcome::Scored {
                score: reply.score,
                symbols,
            }
        }
        Ok(_) => SpamOutcome::Failed("rspamd returned a score that is not a number".into()),
        Err(e) => SpamOutcome::Failed(format!(
            "unexpected reply from rspamd: {}",
            sanitize(&e.to_string(), MAX_VALUE)
        )),
    }
}

/// Asks rspamd at `addr` ("host:port") to score `message`. The whole
/// exchange, connect included, is bounded by `timeout`.
pub(crate) async fn check(
    addr: &str,
    env: &Envelope<'_>,
    message: &Content,
    timeout: Duration,
) -> SpamOutcome {
    if message.len() > MAX_SCAN {
        return SpamOutcome::Skipped(format!("message larger than {MAX_SCAN} bytes"));
    }
    match tokio::time::timeout(timeout, check_inner(addr, env, message)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => SpamOutcome::Failed(sanitize(&e, MAX_VALUE)),
        Err(_) => SpamOutcome::Failed(format!(
            "rspamd at {addr} did not answer within {} s",
            timeout.as_secs_f32()
        )),
    }
}

async fn check_inner(
    addr: &str,
    env: &Envelope<'_>,
    message: &Content,
) -> Result<SpamOutcome, String> {
    let data = message
        .prefix(MAX_SCAN as usize)
        .map_err(|e| format!("cannot read the spooled message: {e}"))?
        .into_owned();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to rspamd at {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("rspamd at {addr}: {e}"))?;
    // The connection task ends when `sender` is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });

    let mut request = hyper::Request::post("/checkv2")
        .header(hyper::header::HOST, addr)
        .header("IP", env.ip.to_string())
        .header("Pass", "all");
    // Envelope values come from the client: only printable ASCII is passed
    // (a value that would not make a valid header is left out).
    let mut optional = vec![
        ("Helo", env.helo.to_string()),
        ("From", env.mail_from.to_string()),
        ("MTA-Name", env.hostname.to_string()),
    ];
    if let Some(user) = env.auth_user {
        optional.push(("User", user.to_string()));
    }
    for rcpt in env.rcpt_to {
        optional.push(("Rcpt", rcpt.clone()));
    }
    for (name, value) in optional {
        let value = sanitize(&value, MAX_VALUE);
        if !value.is_empty() {
            request = request.header(name, value);
        }
    }
    let request = request
        .body(Full::new(Bytes::from(data)))
        .map_err(|e| format!("cannot build the rspamd request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("rspamd at {addr}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_REPLY)
        .collect()
        .await
        .map_err(|e| format!("rspamd at {addr}: reading the reply: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Ok(SpamOutcome::Failed(format!(
            "rspamd at {addr} answered HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    Ok(parse_reply(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkv2_reply_gives_the_score_and_symbols_highest_first() {
        let body = br#"{"is_skipped":false,"score":16.5,"required_score":15,"action":"reject",
            "symbols":{"GTUBE":{"name":"GTUBE","score":15.0},"MIME_GOOD":{"name":"MIME_GOOD","score":-0.1},
            "R_X\nFORGED":{"name":"x","score":1.6}}}"#;
        match parse_reply(body) {
            SpamOutcome::Scored { score, symbols } => {
                assert_eq!(score, 16.5);
                assert_eq!(symbols[0], ("GTUBE".to_string(), 15.0));
                assert_eq!(symbols[2], ("MIME_GOOD".to_string(), -0.1));
                assert!(symbols.iter().all(|(n, _)| !n.contains('\n')));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_failure() {
        assert!(matches!(parse_reply(b"<html>"), SpamOutcome::Failed(_)));
        assert!(matches!(parse_reply(b"{}"), SpamOutcome::Failed(_)));
    }
}

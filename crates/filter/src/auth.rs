//! SPF, DKIM and DMARC through mail-auth, reduced to plain values.

use std::net::IpAddr;

use mail_auth::common::crypto::{HashAlgorithm, HashContext, HashImpl, Sha1, Sha256};
use mail_auth::dkim::canonicalize::BodyHasher;
use mail_auth::dkim::{Canonicalization, DkimError};
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult,
};
use postoffice_common::content::Content;

/// The longest header section read from a spooled message (the SMTP
/// header limit is far below it).
const MAX_HEADER_SECTION: usize = 4 << 20;

/// The header section of a spooled message, up to and including the empty
/// line, and the offset where the body starts.
fn header_section(message: &Content) -> Option<(Vec<u8>, u64)> {
    let prefix = message.prefix(MAX_HEADER_SECTION).ok()?;
    let end = memchr::memmem::find(&prefix, b"\r\n\r\n").map(|p| p + 4)?;
    Some((prefix[..end].to_vec(), end as u64))
}

/// mail-auth's view of a spooled message: its header section parsed, and
/// the canonicalized body hash of every DKIM signature computed by reading
/// the body from the file a chunk at a time (what `parse` would compute
/// from the whole message in memory).
fn parse_spooled<'x>(
    header: &'x [u8],
    message: &Content,
    body_start: u64,
) -> Option<AuthenticatedMessage<'x>> {
    let mut parsed = AuthenticatedMessage::parse(header)?;
    for (canonicalization, algorithm, length, hash) in &mut parsed.body_hashes {
        let digest = match algorithm {
            HashAlgorithm::Sha256 => {
                body_hash::<Sha256>(message, body_start, *canonicalization, *length)
            }
            HashAlgorithm::Sha1 => {
                body_hash::<Sha1>(message, body_start, *canonicalization, *length)
            }
        };
        *hash = digest.ok()?;
    }
    Some(parsed)
}

fn body_hash<H: HashImpl>(
    message: &Content,
    body_start: u64,
    canonicalization: Canonicalization,
    length: u64,
) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut hasher = BodyHasher::new(H::hasher(), canonicalization, length);
    let mut reader = message.reader_at(body_start);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
    }
    let (context, _) = hasher.finish();
    Ok(context.complete().as_ref().to_vec())
}

/// A method result as written in Authentication-Results (RFC 8601 2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl AuthResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

/// The SPF result for the MAIL FROM identity (or the HELO identity for a
/// null reverse-path, RFC 7208 2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpfCheck {
    pub result: AuthResult,
    /// "smtp.mailfrom" or "smtp.helo".
    pub property: &'static str,
    /// The checked identity (address or HELO name).
    pub identity: String,
    /// The domain whose record was evaluated.
    pub domain: String,
}

/// One DKIM-Signature header's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DkimCheck {
    pub result: AuthResult,
    /// d= (empty when the header could not be parsed).
    pub domain: String,
    /// s=
    pub selector: String,
}

/// The DMARC policy the author domain asks for (after sp=/np= and t=y).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DmarcCheck {
    pub result: AuthResult,
    pub policy: DmarcPolicy,
    /// The RFC 5322 From: domain (empty when there is none).
    pub domain: String,
}

/// What the authentication stages found; `None` for a stage not run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AuthOutcome {
    pub spf: Option<SpfCheck>,
    /// One entry per signature; empty when the message has none.
    pub dkim: Option<Vec<DkimCheck>>,
    pub dmarc: Option<DmarcCheck>,
}

impl AuthOutcome {
    /// The outcome when the checks did not finish in time: every wanted
    /// stage is a temperror.
    pub(crate) fn timed_out(spf: bool, dkim: bool, dmarc: bool, ctx: &Identities<'_>) -> Self {
        AuthOutcome {
            spf: spf.then(|| ctx.spf_check(AuthResult::TempError)),
            dkim: dkim.then(|| {
                vec![DkimCheck {
                    result: AuthResult::TempError,
                    domain: String::new(),
                    selector: String::new(),
                }]
            }),
            dmarc: dmarc.then(|| DmarcCheck {
                result: AuthResult::TempError,
                policy: DmarcPolicy::None,
                domain: String::new(),
            }),
        }
    }
}

/// The SMTP identities SPF works on, cleaned up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identities<'a> {
    pub ip: IpAddr,
    /// The HELO name when it is a domain (not an address literal or junk).
    pub helo: Option<&'a str>,
    /// The raw HELO argument (for the header when it is not a domain).
    pub helo_raw: &'a str,
    /// The reverse-path without angle brackets; "" for the null sender.
    pub mail_from: &'a str,
    pub receiver: &'a str,
}

impl<'a> Identities<'a> {
    pub(crate) fn new(ip: IpAddr, helo: &'a str, mail_from: &'a str, receiver: &'a str) -> Self {
        let helo_raw = helo.trim();
        let mail_from = mail_from.trim();
        let mail_from = mail_from
            .strip_prefix('<')
            .and_then(|m| m.strip_suffix('>'))
            .unwrap_or(mail_from);
        Identities {
            ip: crate::canonical_ip(ip),
            helo: is_domain(helo_raw).then_some(helo_raw),
            helo_raw,
            mail_from,
            receiver,
        }
    }

    /// The domain SPF evaluates: the MAIL FROM domain, or the HELO name for
    /// the null sender (and for a reverse-path without a domain).
    pub(crate) fn spf_domain(&self) -> &'a str {
        match self.mail_from.rsplit_once('@') {
            Some((_, domain)) if !self.mail_from.is_empty() => domain,
            _ => self.helo.unwrap_or(""),
        }
    }

    pub(crate) fn spf_check(&self, result: AuthResult) -> SpfCheck {
        let (property, identity) = if self.mail_from.is_empty() {
            ("smtp.helo", self.helo_raw)
        } else {
            ("smtp.mailfrom", self.mail_from)
        };
        SpfCheck {
            result,
            property,
            identity: identity.to_string(),
            domain: self.spf_domain().to_string(),
        }
    }
}

/// Whether `name` looks like a domain name worth an SPF lookup.
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn spf_result(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dkim_result(r: &DkimResult) -> AuthResult {
    match r {
        DkimResult::Pass => AuthResult::Pass,
        // RFC 6376 6.1.3: a body hash mismatch is a PERMFAIL, which RFC 8601
        // writes "fail" (mail-auth reports it as neutral).
        DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)) => {
            AuthResult::Fail
        }
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}

fn dmarc_result(r: &DmarcResult) -> AuthResult {
    match r {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::TempError,
        DmarcResult::PermError(_) => AuthResult::PermError,
        DmarcResult::None => AuthResult::None,
    }
}

/// Runs the wanted stages. DMARC needs SPF and DKIM results, so they are
/// computed whenever DMARC is wanted, whatever their own mode.
pub(crate) async fn authenticate(
    authenticator: &MessageAuthenticator,
    ids: &Identities<'_>,
    message: &Content,
    want_spf: bool,
    want_dkim: bool,
    want_dmarc: bool,
) -> AuthOutcome {
    let need_spf = want_spf || want_dmarc;
    let need_dkim = want_dkim || want_dmarc;
    // A message in memory is parsed whole; a spooled one by its header
    // section, with the DKIM body hashes streamed from the file.
    let header;
    let parsed = if !need_dkim {
        None
    } else if let Some(all) = message.as_slice() {
        AuthenticatedMessage::parse(all)
    } else {
        header = header_section(message);
        header
            .as_ref()
            .and_then(|(h, body_start)| parse_spooled(h, message, *body_start))
    };

    let spf_future = async {
        if !need_spf {
            return None;
        }
        let domain = ids.spf_domain();
        let output = if domain.is_empty() {
            // Null sender and no usable HELO name: nothing to check.
            SpfOutput::new(String::new())
        } else if ids.mail_from.is_empty() {
            authenticator
                .verify_spf(SpfParameters::verify_ehlo(ids.ip, domain, ids.receiver))
                .await
        } else {
            authenticator
                .verify_spf(SpfParameters::verify_mail_from(
                    ids.ip,
                    ids.helo.unwrap_or(domain),
                    ids.receiver,
                    ids.mail_from,
                ))
                .await
        };
        Some(output)
    };
    let dkim_future = async {
        match &parsed {
            Some(message) if need_dkim => Some(authenticator.verify_dkim(message).await),
            _ => None,
        }
    };
    let (spf_output, dkim_output) = tokio::join!(spf_future, dkim_future);

    let dmarc = match (&parsed, &spf_output) {
        (Some(message), Some(spf)) if want_dmarc => {
            let dkim = dkim_output.as_deref().unwrap_or(&[]);
            let output = authenticator
                .verify_dmarc(DmarcParameters::new(message, dkim, ids.spf_domain(), spf))
                .await;
            let from_domain = message
                .from()
                .rsplit_once('@')
                .map(|(_, d)| d.to_string())
                .unwrap_or_default();
            Some(DmarcCheck {
                result: dmarc_result(&output.result()),
                policy: match output.policy() {
                    Policy::Reject => DmarcPolicy::Reject,
                    Policy::Quarantine => DmarcPolicy::Quarantine,
                    Policy::None | Policy::Unspecified => DmarcPolicy::None,
                },
                domain: if output.domain().is_empty() {
                    from_domain
                } else {
                    output.domain().to_string()
                },
            })
        }
        // Not parseable as a message: there is no From: domain to check.
        _ if want_dmarc => Some(DmarcCheck {
            result: AuthResult::None,
            policy: DmarcPolicy::None,
            domain: String::new(),
        }),
        _ => None,
    };

    AuthOutcome {
        spf: spf_output.map(|o| ids.spf_check(spf_result(o.result()))),
        dkim: if need_dkim {
            Some(
                dkim_output
                    .unwrap_or_default()
                    .iter()
                    .map(|o| DkimCheck {
                        result: dkim_result(o.result()),
                        domain: o.signature().map(|s| s.d.clone()).unwrap_or_default(),
                        selector: o.signature().map(|s| s.s.clone()).unwrap_or_default(),
                    })
                    .collect(),
            )
        } else {
            None
        },
        dmarc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_cleaned() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let ids = Identities::new(ip, "mx.good.test", "<alice@good.test>", "mx.local");
        assert_eq!(ids.mail_from, "alice@good.test");
        assert_eq!(ids.spf_domain(), "good.test");
        assert_eq!(ids.helo, Some("mx.good.test"));
        let c = ids.spf_check(AuthResult::Pass);
        assert_eq!(c.property, "smtp.mailfrom");
        assert_eq!(c.identity, "alice@good.test");

        // Null sender: the HELO identity (RFC 7208 2.4).
        let ids = Identities::new(ip, "mx.good.test", "", "mx.local");
        assert_eq!(ids.spf_domain(), "mx.good.test");
        assert_eq!(ids.spf_check(AuthResult::None).property, "smtp.helo");

        // Address literal HELO and null sender: nothing to check.
        let ids = Identities::new(ip, "[192.0.2.1]", "<>", "mx.local");
        assert_eq!(ids.helo, None);
        assert_eq!(ids.mail_from, "");
        assert_eq!(ids.spf_domain(), "");
    }
}

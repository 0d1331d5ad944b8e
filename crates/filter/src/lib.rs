//! The inbound mail verification pipeline of postoffice.
//!
//! [`Filters`] is built once from the `[filter]` and `[dns]` configuration
//! sections and shared (it is `Send + Sync`; wrap it in an `Arc`). The SMTP
//! server calls it at three points of a transaction:
//!
//! 1. [`Filters::check_connect`] when a client connects: `ip_allow` (which
//!    skips the next two), `ip_block`, then the DNS block lists (RFC 5782).
//! 2. [`Filters::check_sender`] at MAIL FROM: `sender_block`.
//! 3. [`Filters::check_message`] once per message after DATA: SPF (RFC 7208),
//!    DKIM (RFC 6376), DMARC (RFC 7489), a clamd virus scan and an rspamd
//!    spam score, run concurrently. It returns header lines to prepend and
//!    the action.
//!
//! # Stage modes
//!
//! `off`: not run. `tag`: the result only goes into the headers. `reject`: a
//! failing message is refused with a 5xx reply. `quarantine`: it is accepted
//! and stored in the quarantine folder. What "failing" means per stage:
//!
//! * SPF: the result `fail` (`softfail` only tags). `temperror` only tags.
//! * DKIM: at least one `DKIM-Signature` is present and none verifies. A
//!   signature whose key lookup hit a temporary DNS error counts as neither
//!   (it only tags).
//! * DMARC: the result `fail`. In `reject` mode the author domain's published
//!   policy decides: `p=reject` rejects, `p=quarantine` quarantines, `p=none`
//!   only tags (`sp=`, `np=` and `t=y` are honoured). In `quarantine` mode any
//!   DMARC failure quarantines. DMARC uses the SPF and DKIM results even when
//!   those stages are `off`.
//! * Virus: clamd reports `FOUND`. A scanner failure (unreachable, timeout,
//!   size limit, garbage) follows `clamd_failure`: `closed` gives a 451
//!   temporary failure, `open` accepts with an `X-Virus-Scan: skipped` header.
//! * Spam: rspamd (`filter.rspamd`, HTTP `POST /checkv2` with the client IP,
//!   HELO, envelope sender and recipients as request headers) scores the
//!   message. Score >= `spam_reject`: 550 5.7.1; >= `spam_quarantine`:
//!   quarantine; >= `spam_tag`: only `X-Spam-Status: Yes`. An rspamd
//!   failure follows `rspamd_failure` like clamd's (`closed`: 451 4.7.1;
//!   `open`: accept with `X-Spam-Status: Unknown (<reason>)`). Messages
//!   over 20 MiB are not scanned (`X-Spam-Status: Unknown`).
//!
//! When several stages act, the strongest action wins: Reject > TempFail >
//! Quarantine > Accept. Among equals, the first in the order virus, DMARC,
//! SPF, DKIM, spam gives the reply; quarantine reasons are joined.
//!
//! # Headers added to accepted messages
//!
//! * `Authentication-Results: <receiver_hostname>; spf=... smtp.mailfrom=...;
//!   dkim=... header.d=... header.s=...; dmarc=... header.from=...` (RFC 8601),
//!   when at least one of SPF, DKIM, DMARC ran.
//! * `X-Postoffice-Verdict: <verdict>; dnsbl=<r> spf=<r> dkim=<r> dmarc=<r>
//!   virus=<r>`, always. `<verdict>` is `clean` (nothing found), `suspect`
//!   (something failed but its mode only tags), `quarantine`, `tempfail` or
//!   `reject`. Each `<r>` is `off` for a stage not run; otherwise dnsbl is
//!   `none`, `skipped` (ip_allow), `error` or `listed:<zone>[,<zone>]`; spf,
//!   dkim and dmarc are RFC 8601 result words; virus is `clean`,
//!   `found:<signature>`, `skipped` (clamd failed, fail-open) or `error`
//!   (clamd failed, fail-closed). The part after `; ` is also
//!   [`MessageVerdict::summary`], for the transaction log.
//! * `X-Virus-Scan: skipped (<reason>)` when clamd failed and
//!   `clamd_failure = "open"`.
//! * With rspamd: `X-Spam-Score: <score>`, `X-Spam-Status: Yes|No,
//!   score=.. tag=.. quarantine=.. reject=..` and `X-Spam-Symbols:` (the
//!   symbols, highest score first, at most 20); the summary then ends in
//!   `spam=ham|tag|quarantine|reject|skipped|error`.
//!
//! All values coming from outside (addresses, domains, signature names, DNS
//! text) are sanitised: no CR, LF or other control characters, printable
//! ASCII only, bounded length; lines are folded at 78 characters.
//!
//! A message may already carry forged copies of these headers; this crate
//! only prepends, so stripping them is up to the caller.
#![forbid(unsafe_code)]

mod auth;
mod clamd;
mod dnsbl;
mod header;
mod rspamd;

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use postoffice_common::content::Content;
use postoffice_config::{Dns, FailMode, Filter, StageMode, cidr_contains, parse_cidr};
use postoffice_smtp::{Reply, codes, status};
use thiserror::Error;
use tokio::task::JoinSet;

use auth::{AuthOutcome, AuthResult, DmarcPolicy, Identities};
use clamd::{ClamdAddr, ScanOutcome};
use dnsbl::Listing;
use header::{MAX_VALUE, property_value, render, render_list, sanitize, sanitize_comment};
use rspamd::SpamOutcome;

/// The name of the summary header.
pub const VERDICT_HEADER: &str = "X-Postoffice-Verdict";

/// Tag in [`ConnectVerdict::Accept`] for a client in `ip_allow`.
pub const TAG_IP_ALLOW: &str = "ip_allow";
/// Tag prefix for a DNSBL listing in `tag` mode: `dnsbl:<zone>`.
pub const TAG_DNSBL: &str = "dnsbl:";
/// Tag prefix for a DNSBL zone that could not be queried: `dnsbl_error:<zone>`.
pub const TAG_DNSBL_ERROR: &str = "dnsbl_error:";

/// Errors building [`Filters`].
#[derive(Debug, Error)]
pub enum FilterError {
    /// A `[filter]` value is wrong (the message names it).
    #[error("invalid filter configuration: {0}")]
    Config(String),
    /// No resolver could be built from `[dns]`.
    #[error("cannot set up DNS resolution: {0}")]
    Dns(String),
}

/// The verification stage that decided a refusal or a quarantine, for
/// logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// `ip_block`.
    IpBlock,
    /// A DNS block list.
    Dnsbl,
    /// `sender_block`.
    SenderBlock,
    /// SPF.
    Spf,
    /// DKIM.
    Dkim,
    /// DMARC.
    Dmarc,
    /// The virus scan (a virus found, or the scanner failing closed).
    Virus,
    /// rspamd's spam score (over a threshold, or rspamd failing closed).
    Spam,
}

impl Stage {
    /// The stage's name as in the configuration (`ip_block`, `dnsbl`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::IpBlock => "ip_block",
            Stage::Dnsbl => "dnsbl",
            Stage::SenderBlock => "sender_block",
            Stage::Spf => "spf",
            Stage::Dkim => "dkim",
            Stage::Dmarc => "dmarc",
            Stage::Virus => "virus",
            Stage::Spam => "spam",
        }
    }
}

/// The verdict at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// Go on. `tags` record what was found without acting on it:
    /// [`TAG_IP_ALLOW`], `dnsbl:<zone>` (listed, `tag` mode),
    /// `dnsbl_error:<zone>` (the zone could not be asked; treated as not
    /// listed). Pass them to [`MessageContext::connect_tags`].
    Accept {
        /// What was found without acting on it (see above).
        tags: Vec<String>,
    },
    /// Refuse the connection: send `reply` (a `554 5.7.1`) and close.
    Reject {
        /// The reply to send instead of the greeting.
        reply: Reply,
        /// Which check refused it ([`Stage::IpBlock`] or [`Stage::Dnsbl`]).
        stage: Stage,
    },
}

/// The verdict at MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderVerdict {
    /// Go on.
    Accept,
    /// Refuse the sender with `reply` (a `550 5.7.1`).
    Reject {
        /// The reply to MAIL FROM.
        reply: Reply,
    },
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageAction {
    /// Go on.
    Accept,
    /// Refuse it permanently with `reply` (a 5xx).
    Reject {
        /// The reply to the end of DATA.
        reply: Reply,
    },
    /// Refuse it temporarily with `reply` (a 4xx).
    TempFail {
        /// The reply to the end of DATA.
        reply: Reply,
    },
    /// Accept it into the recipients' quarantine folders.
    Quarantine {
        /// Why (for logs and the verdict header).
        reason: String,
    },
}

impl MessageAction {
    fn rank(&self) -> u8 {
        match self {
            MessageAction::Accept => 0,
            MessageAction::Quarantine { .. } => 1,
            MessageAction::TempFail { .. } => 2,
            MessageAction::Reject { .. } => 3,
        }
    }

    fn word(&self) -> &'static str {
        match self {
            MessageAction::Accept => "accept",
            MessageAction::Quarantine { .. } => "quarantine",
            MessageAction::TempFail { .. } => "tempfail",
            MessageAction::Reject { .. } => "reject",
        }
    }
}

/// Merges stage actions: the strongest wins (Reject, then TempFail, then
/// Quarantine, then Accept); among equals the first one's reply is kept, and
/// quarantine reasons are joined with "; ".
pub fn combine_actions(actions: impl IntoIterator<Item = MessageAction>) -> MessageAction {
    combine_staged(actions.into_iter().map(|a| (Stage::Virus, a))).0
}

/// [`combine_actions`] keeping the stage whose action won (the first of
/// the joined quarantines); `None` for `Accept`.
fn combine_staged(
    actions: impl IntoIterator<Item = (Stage, MessageAction)>,
) -> (MessageAction, Option<Stage>) {
    let mut best = MessageAction::Accept;
    let mut stage = None;
    for (s, action) in actions {
        match (&mut best, action) {
            (MessageAction::Quarantine { reason }, MessageAction::Quarantine { reason: more }) => {
                reason.push_str("; ");
                reason.push_str(&more);
            }
            (b, a) if a.rank() > b.rank() => {
                *b = a;
                stage = Some(s);
            }
            _ => {}
        }
    }
    (best, stage)
}

/// The transaction facts [`Filters::check_message`] needs.
#[derive(Debug, Clone, Copy)]
pub struct MessageContext<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO argument.
    pub helo: &'a str,
    /// The MAIL FROM address without angle brackets; "" for the null sender.
    pub mail_from: &'a str,
    /// The accepted RCPT TO addresses (passed to rspamd).
    pub rcpt_to: &'a [String],
    /// The SMTP AUTH user, if the client authenticated (passed to rspamd).
    pub auth_user: Option<&'a str>,
    /// This server's name: the authserv-id of Authentication-Results.
    pub receiver_hostname: &'a str,
    /// The tags of this connection's [`ConnectVerdict::Accept`] (or `&[]`),
    /// reported as `dnsbl=` in the verdict header.
    pub connect_tags: &'a [String],
}

/// The result of [`Filters::check_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerdict {
    /// Header lines to prepend to the message, each ending in CRLF:
    /// `Authentication-Results:`, `X-Postoffice-Verdict:` and, when clamd
    /// failed open, `X-Virus-Scan: skipped (...)`.
    pub headers: String,
    /// What to do with the message.
    pub action: MessageAction,
    /// Per-stage results for the transaction log line, e.g.
    /// `dnsbl=none spf=pass dkim=pass dmarc=pass virus=clean`.
    pub summary: String,
    /// The stage whose action was taken; `None` when the message is
    /// accepted.
    pub stage: Option<Stage>,
}

/// The result of [`Filters::check_outbound`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundVerdict {
    /// Accept (send), Quarantine (hold), Reject (5xx) or TempFail (4xx).
    pub action: MessageAction,
    /// rspamd's score, when it gave one.
    pub score: Option<f64>,
    /// For the log line: the score and the top symbols, or what failed.
    pub summary: String,
}

/// The verification pipeline. Build it once with [`Filters::new`] and share
/// it; it holds a DNS resolver with a small cache.
///
/// The resolver's connections run on the tokio runtime of the first query:
/// use one `Filters` within one runtime.
pub struct Filters {
    ip_allow: Vec<(IpAddr, u8)>,
    ip_block: Vec<(IpAddr, u8)>,
    dnsbl_zones: Vec<String>,
    dnsbl: StageMode,
    /// Lowercased full addresses.
    block_addresses: Vec<String>,
    /// Lowercased domains (from "@domain" entries).
    block_domains: Vec<String>,
    spf: StageMode,
    dkim: StageMode,
    dmarc: StageMode,
    virus: StageMode,
    clamd: Option<ClamdAddr>,
    clamd_failure: FailMode,
    clamd_timeout: Duration,
    rspamd: Option<String>,
    spam_tag: f64,
    spam_quarantine: f64,
    spam_reject: f64,
    rspamd_failure: FailMode,
    rspamd_timeout: Duration,
    dns_timeout: Duration,
    /// Present when a stage needs DNS. Its resolver also serves the DNSBL
    /// queries, so everything uses the same name servers.
    authenticator: Option<MessageAuthenticator>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters")
            .field("dnsbl_zones", &self.dnsbl_zones)
            .field("dnsbl", &self.dnsbl)
            .field("spf", &self.spf)
            .field("dkim", &self.dkim)
            .field("dmarc", &self.dmarc)
            .field("virus", &self.virus)
            .field("clamd", &self.clamd)
            .field("clamd_failure", &self.clamd_failure)
            .field("rspamd", &self.rspamd)
            .field("rspamd_failure", &self.rspamd_failure)
            .finish_non_exhaustive()
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Filters {
    /// Checks and compiles the configuration. DNS is set up only when a
    /// stage needs it (DNSBL with zones, SPF, DKIM or DMARC not `off`).
    pub fn new(filter: &Filter, dns: &Dns) -> Result<Filters, FilterError> {
        let nets = |list: &[String], key: &str| -> Result<Vec<(IpAddr, u8)>, FilterError> {
            list.iter()
                .map(|s| {
                    parse_cidr(s).ok_or_else(|| {
                        FilterError::Config(format!(
                            "filter.{key}: {s:?} is not an IP address or CIDR network"
                        ))
                    })
                })
                .collect()
        };
        let ip_allow = nets(&filter.ip_allow, "ip_allow")?;
        let ip_block = nets(&filter.ip_block, "ip_block")?;

        if filter.dnsbl == StageMode::Quarantine {
            return Err(FilterError::Config(
                "filter.dnsbl must be off, tag or reject".into(),
            ));
        }
        let dnsbl_zones = filter
            .dnsbl_zones
            .iter()
            .map(|z| {
                dnsbl::normalize_zone(z).ok_or_else(|| {
                    FilterError::Config(format!("filter.dnsbl_zones: {z:?} is not a DNS zone"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut block_addresses = Vec::new();
        let mut block_domains = Vec::new();
        for entry in &filter.sender_block {
            let entry = entry.trim().trim_start_matches('<').trim_end_matches('>');
            match entry.rsplit_once('@') {
                Some(("", domain)) if !domain.is_empty() => {
                    block_domains.push(normalize_domain(domain));
                }
                Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                    block_addresses.push(format!("{}@{}", local, normalize_domain(domain)));
                }
                _ => {
                    return Err(FilterError::Config(format!(
                        "filter.sender_block: {entry:?} is neither an address nor \"@domain\""
                    )));
                }
            }
        }

        let clamd = ClamdAddr::parse(&filter.clamd).map_err(FilterError::Config)?;

        let rspamd = parse_rspamd(&filter.rspamd).map_err(FilterError::Config)?;
        for (key, value) in [
            ("spam_tag", filter.spam_tag),
            ("spam_quarantine", filter.spam_quarantine),
            ("spam_reject", filter.spam_reject),
        ] {
            if !value.is_finite() {
                return Err(FilterError::Config(format!(
                    "filter.{key} must be a finite number"
                )));
            }
        }

        let needs_dns = (filter.dnsbl != StageMode::Off && !dnsbl_zones.is_empty())
            || filter.spf != StageMode::Off
            || filter.dkim != StageMode::Off
            || filter.dmarc != StageMode::Off;
        let authenticator = if needs_dns {
            // A small cache: answers are short-lived (DNSBL TTLs), and tests
            // that swap DNS data between runs build a new Filters anyway.
            let (config, opts) = postoffice_common::resolver::config(dns, 256)
                .map_err(|e| FilterError::Dns(e.to_string()))?;
            Some(
                MessageAuthenticator::new(config, opts)
                    .map_err(|e| FilterError::Dns(e.to_string()))?,
            )
        } else {
            None
        };

        Ok(Filters {
            ip_allow,
            ip_block,
            dnsbl_zones,
            dnsbl: filter.dnsbl,
            block_addresses,
            block_domains,
            spf: filter.spf,
            dkim: filter.dkim,
            dmarc: filter.dmarc,
            virus: filter.virus,
            clamd,
            clamd_failure: filter.clamd_failure,
            clamd_timeout: Duration::from_secs(filter.clamd_timeout_secs.max(1)),
            rspamd,
            spam_tag: filter.spam_tag,
            spam_quarantine: filter.spam_quarantine,
            spam_reject: filter.spam_reject,
            rspamd_failure: filter.rspamd_failure,
            rspamd_timeout: Duration::from_secs(filter.rspamd_timeout_secs.max(1)),
            dns_timeout: Duration::from_secs(dns.timeout_secs.max(1)),
            authenticator,
        })
    }

    fn dnsbl_active(&self) -> bool {
        self.dnsbl != StageMode::Off && !self.dnsbl_zones.is_empty()
    }

    fn virus_active(&self) -> bool {
        self.virus != StageMode::Off && self.clamd.is_some()
    }

    /// At connect: `ip_allow` (accept, skipping the rest), `ip_block`
    /// (reject), then every DNSBL zone, queried concurrently. A listing
    /// rejects in `reject` mode, naming the first listing zone (in
    /// configuration order) and its TXT reason; in `tag` mode it adds a
    /// `dnsbl:<zone>` tag. A zone that cannot be asked counts as not listing
    /// the client (`dnsbl_error:<zone>` tag, logged).
    pub async fn check_connect(&self, ip: IpAddr) -> ConnectVerdict {
        let ip = canonical_ip(ip);
        if self
            .ip_allow
            .iter()
            .any(|&(net, len)| cidr_contains(net, len, ip))
        {
            return ConnectVerdict::Accept {
                tags: vec![TAG_IP_ALLOW.to_string()],
            };
        }
        if self
            .ip_block
            .iter()
            .any(|&(net, len)| cidr_contains(net, len, ip))
        {
            tracing::info!(%ip, "client refused: ip_block");
            return ConnectVerdict::Reject {
                reply: Reply::new(
                    codes::TRANSACTION_FAILED,
                    status::NOT_AUTHORIZED,
                    format!("Service unavailable; client [{ip}] blocked by local policy"),
                ),
                stage: Stage::IpBlock,
            };
        }
        let mut tags = Vec::new();
        if !self.dnsbl_active() {
            return ConnectVerdict::Accept { tags };
        }
        let Some(authenticator) = &self.authenticator else {
            return ConnectVerdict::Accept { tags };
        };

        let mut lookups = JoinSet::new();
        for (i, zone) in self.dnsbl_zones.iter().enumerate() {
            let resolver = authenticator.resolver().clone();
            let zone = zone.clone();
            let timeout = self.dns_timeout * 2;
            lookups.spawn(async move { (i, dnsbl::lookup(&resolver, ip, &zone, timeout).await) });
        }
        let mut results = Vec::with_capacity(self.dnsbl_zones.len());
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                Err(e) => tracing::warn!(error = %e, "DNSBL lookup task failed"),
            }
        }
        results.sort_by_key(|(i, _)| *i);

        for (i, listing) in results {
            let zone = &self.dnsbl_zones[i];
            match listing {
                Listing::NotListed => {}
                Listing::Error(e) => {
                    tracing::warn!(%ip, zone = %zone, error = %e, "DNSBL query failed; treating as not listed");
                    tags.push(format!("{TAG_DNSBL_ERROR}{zone}"));
                }
                Listing::Listed { codes, reason } => {
                    tracing::info!(%ip, zone = %zone, ?codes, reason = reason.as_deref().unwrap_or(""), "client listed in DNSBL");
                    if self.dnsbl == StageMode::Reject {
                        let mut text =
                            format!("Service unavailable; client [{ip}] blocked using {zone}");
                        if let Some(reason) = reason {
                            text.push_str("; ");
                            text.push_str(&reason);
                        }
                        return ConnectVerdict::Reject {
                            reply: Reply::new(
                                codes::TRANSACTION_FAILED,
                                status::NOT_AUTHORIZED,
                                text,
                            ),
                            stage: Stage::Dnsbl,
                        };
                    }
                    tags.push(format!("{TAG_DNSBL}{zone}"));
                }
            }
        }
        ConnectVerdict::Accept { tags }
    }

    /// At MAIL FROM: refuses a sender in `sender_block`. Full addresses
    /// match case-insensitively; `@domain` entries match every address at
    /// exactly that domain (not its subdomains). The null sender is never
    /// blocked.
    pub fn check_sender(&self, mail_from: &str) -> SenderVerdict {
        let address = mail_from
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        let Some((local, domain)) = address.rsplit_once('@') else {
            return SenderVerdict::Accept;
        };
        let domain = normalize_domain(domain);
        let full = format!("{local}@{domain}");
        let hit = self
            .block_addresses
            .iter()
            .any(|b| b.eq_ignore_ascii_case(&full))
            || self.block_domains.contains(&domain);
        if hit {
            tracing::info!(sender = %sanitize(address, MAX_VALUE), "sender refused: sender_block");
            SenderVerdict::Reject {
                reply: Reply::new(
                    codes::MAILBOX_UNAVAILABLE,
                    status::NOT_AUTHORIZED,
                    format!(
                        "Sender address rejected: <{}> is blocked by local policy",
                        sanitize(address, MAX_VALUE).replace([' ', '<', '>'], "")
                    ),
                ),
            }
        } else {
            SenderVerdict::Accept
        }
    }

    /// After DATA, once per message: SPF, DKIM and DMARC (concurrently with
    /// the virus scan). See the crate documentation for the modes, the
    /// headers and how actions combine.
    pub async fn check_message(
        &self,
        ctx: &MessageContext<'_>,
        message: &Content,
    ) -> MessageVerdict {
        let ids = Identities::new(ctx.ip, ctx.helo, ctx.mail_from, ctx.receiver_hostname);
        let want_spf = self.spf != StageMode::Off;
        let want_dkim = self.dkim != StageMode::Off;
        let want_dmarc = self.dmarc != StageMode::Off;

        let auth_future = async {
            let Some(authenticator) = &self.authenticator else {
                return AuthOutcome::default();
            };
            if !(want_spf || want_dkim || want_dmarc) {
                return AuthOutcome::default();
            }
            // mail-auth bounds SPF itself (20 s); this bounds everything.
            let deadline = Duration::from_secs(30).max(self.dns_timeout * 8);
            match tokio::time::timeout(
                deadline,
                auth::authenticate(
                    authenticator,
                    &ids,
                    message,
                    want_spf,
                    want_dkim,
                    want_dmarc,
                ),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::warn!("SPF/DKIM/DMARC checks timed out");
                    AuthOutcome::timed_out(
                        want_spf || want_dmarc,
                        want_dkim || want_dmarc,
                        want_dmarc,
                        &ids,
                    )
                }
            }
        };
        let scan_future = async {
            match &self.clamd {
                Some(addr) if self.virus_active() => {
                    Some(clamd::scan(addr, message, self.clamd_timeout).await)
                }
                _ => None,
            }
        };
        let spam_future = async {
            let addr = self.rspamd.as_ref()?;
            let env = rspamd::Envelope::of(ctx);
            Some(rspamd::check(addr, &env, message, self.rspamd_timeout).await)
        };
        let (outcome, scan, spam) = tokio::join!(auth_future, scan_future, spam_future);
        if let Some(ScanOutcome::Failed(reason)) = &scan {
            tracing::warn!(reason = %reason, "virus scan failed");
        }
        if let Some(SpamOutcome::Failed(reason)) = &spam {
            tracing::warn!(reason = %reason, "spam check failed");
        }
        self.verdict(ctx, &ids, &outcome, scan.as_ref(), spam.as_ref())
    }

    /// Whether rspamd is configured (`filter.rspamd`).
    pub fn has_rspamd(&self) -> bool {
        self.rspamd.is_some()
    }

    /// An authenticated submission, scored by rspamd alone
    /// (`filter.scan_outbound`; `ctx.auth_user` is passed to rspamd). The
    /// same thresholds as inbound: at `spam_reject` a `550 5.7.1` that
    /// tells the user the message was not sent; at `spam_quarantine` a
    /// [`MessageAction::Quarantine`] (the caller holds the message); an
    /// rspamd failure follows `rspamd_failure` (`451 4.7.1` when closed).
    /// `None` when rspamd is not configured.
    pub async fn check_outbound(
        &self,
        ctx: &MessageContext<'_>,
        message: &Content,
    ) -> Option<OutboundVerdict> {
        let addr = self.rspamd.as_ref()?;
        let env = rspamd::Envelope::of(ctx);
        let outcome = rspamd::check(addr, &env, message, self.rspamd_timeout).await;
        Some(self.outbound_verdict(&outcome))
    }

    fn outbound_verdict(&self, outcome: &SpamOutcome) -> OutboundVerdict {
        match outcome {
            SpamOutcome::Scored { score, symbols } => {
                let top: Vec<&str> = symbols.iter().take(5).map(|(n, _)| n.as_str()).collect();
                let summary = format!("spam score {score:.2} ({})", top.join(","));
                let action = if *score >= self.spam_reject {
                    MessageAction::Reject {
                        reply: Reply::new(
                            codes::MAILBOX_UNAVAILABLE,
                            status::NOT_AUTHORIZED,
                            format!(
                                "Message not sent: it was classified as spam (score {score:.2}, limit {:.2}); contact your administrator if this is wrong",
                                self.spam_reject
                            ),
                        ),
                    }
                } else if *score >= self.spam_quarantine {
                    MessageAction::Quarantine {
                        reason: format!("spam score {score:.2}"),
                    }
                } else {
                    MessageAction::Accept
                };
                OutboundVerdict {
                    action,
                    score: Some(*score),
                    summary,
                }
            }
            SpamOutcome::Skipped(reason) => OutboundVerdict {
                action: MessageAction::Accept,
                score: None,
                summary: format!("not scanned: {reason}"),
            },
            SpamOutcome::Failed(reason) => {
                tracing::warn!(reason = %reason, "spam check of a submission failed");
                let action = match self.rspamd_failure {
                    FailMode::Closed => MessageAction::TempFail {
                        reply: Reply::new(
                            codes::LOCAL_ERROR,
                            status::NOT_AUTHORIZED,
                            "Spam scanner unavailable, try again later",
                        ),
                    },
                    FailMode::Open => MessageAction::Accept,
                };
                OutboundVerdict {
                    action,
                    score: None,
                    summary: format!("scan failed: {reason}"),
                }
            }
        }
    }

    /// Turns the stage results into actions, headers and the summary.
    fn verdict(
        &self,
        ctx: &MessageContext<'_>,
        ids: &Identities<'_>,
        outcome: &AuthOutcome,
        scan: Option<&ScanOutcome>,
        spam: Option<&SpamOutcome>,
    ) -> MessageVerdict {
        let mut actions = Vec::new();
        let mut suspect = false;
        let mut extra_headers = String::new();

        // Spam score (after the virus scan in the reply order: a virus is
        // the more precise reason).
        let mut spam_actions = Vec::new();
        let spam_token = match spam {
            None => "off",
            Some(SpamOutcome::Scored { score, symbols }) => {
                let spammy = *score >= self.spam_tag;
                extra_headers.push_str(&render("X-Spam-Score", &format!("{score:.2}")));
                extra_headers.push_str(&render(
                    "X-Spam-Status",
                    &format!(
                        "{}, score={score:.2} tag={:.2} quarantine={:.2} reject={:.2}",
                        if spammy { "Yes" } else { "No" },
                        self.spam_tag,
                        self.spam_quarantine,
                        self.spam_reject
                    ),
                ));
                let listed: Vec<String> = symbols
                    .iter()
                    .take(MAX_SPAM_SYMBOLS)
                    .map(|(name, s)| format!("{}({s:.2})", name.replace(' ', "_")))
                    .collect();
                if !listed.is_empty() {
                    extra_headers.push_str(&render("X-Spam-Symbols", &listed.join(", ")));
                }
                if *score >= self.spam_reject {
                    suspect = true;
                    spam_actions.push((
                        Stage::Spam,
                        MessageAction::Reject {
                            reply: Reply::new(
                                codes::MAILBOX_UNAVAILABLE,
                                status::NOT_AUTHORIZED,
                                format!("Message rejected as spam (score {score:.2})"),
                            ),
                        },
                    ));
                    "reject"
                } else if *score >= self.spam_quarantine {
                    suspect = true;
                    spam_actions.push((
                        Stage::Spam,
                        MessageAction::Quarantine {
                            reason: format!("spam score {score:.2}"),
                        },
                    ));
                    "quarantine"
                } else if spammy {
                    suspect = true;
                    "tag"
                } else {
                    "ham"
                }
            }
            Some(SpamOutcome::Skipped(reason)) => {
                extra_headers.push_str(&render(
                    "X-Spam-Status",
                    &format!("Unknown ({})", sanitize_comment(reason)),
                ));
                "skipped"
            }
            Some(SpamOutcome::Failed(reason)) => match self.rspamd_failure {
                FailMode::Closed => {
                    spam_actions.push((
                        Stage::Spam,
                        MessageAction::TempFail {
                            reply: Reply::new(
                                codes::LOCAL_ERROR,
                                status::NOT_AUTHORIZED,
                                "Spam scanner unavailable, try again later",
                            ),
                        },
                    ));
                    "error"
                }
                FailMode::Open => {
                    extra_headers.push_str(&render(
                        "X-Spam-Status",
                        &format!("Unknown ({})", sanitize_comment(reason)),
                    ));
                    "skipped"
                }
            },
        };

        // Virus.
        let virus_token = match scan {
            None => "off".to_string(),
            Some(ScanOutcome::Clean) => "clean".to_string(),
            Some(ScanOutcome::Infected(signature)) => {
                suspect = true;
                match self.virus {
                    StageMode::Reject => actions.push((
                        Stage::Virus,
                        MessageAction::Reject {
                            reply: Reply::new(
                                codes::TRANSACTION_FAILED,
                                status::NOT_AUTHORIZED,
                                format!("Message rejected: virus {signature} found"),
                            ),
                        },
                    )),
                    StageMode::Quarantine => actions.push((
                        Stage::Virus,
                        MessageAction::Quarantine {
                            reason: format!("virus {signature} found"),
                        },
                    )),
                    StageMode::Tag | StageMode::Off => {}
                }
                format!("found:{}", signature.replace(' ', "_"))
            }
            Some(ScanOutcome::Failed(reason)) => match self.clamd_failure {
                FailMode::Closed => {
                    actions.push((
                        Stage::Virus,
                        MessageAction::TempFail {
                            reply: Reply::new(
                                codes::LOCAL_ERROR,
                                status::NOT_AUTHORIZED,
                                "Virus scanner unavailable, try again later",
                            ),
                        },
                    ));
                    "error".to_string()
                }
                FailMode::Open => {
                    extra_headers.push_str(&render(
                        "X-Virus-Scan",
                        &format!("skipped ({})", sanitize_comment(reason)),
                    ));
                    "skipped".to_string()
                }
            },
        };

        // DMARC.
        if let Some(dmarc) = &outcome.dmarc
            && dmarc.result == AuthResult::Fail
        {
            suspect = true;
            let domain = sanitize(&dmarc.domain, MAX_VALUE);
            match (self.dmarc, dmarc.policy) {
                (StageMode::Reject, DmarcPolicy::Reject) => actions.push((
                    Stage::Dmarc,
                    MessageAction::Reject {
                        reply: Reply::new(
                            codes::MAILBOX_UNAVAILABLE,
                            status::NOT_AUTHORIZED,
                            format!("DMARC policy of {domain} says reject"),
                        ),
                    },
                )),
                (StageMode::Reject, DmarcPolicy::Quarantine) => actions.push((
                    Stage::Dmarc,
                    MessageAction::Quarantine {
                        reason: format!("DMARC policy of {domain} says quarantine"),
                    },
                )),
                (StageMode::Quarantine, _) => actions.push((
                    Stage::Dmarc,
                    MessageAction::Quarantine {
                        reason: format!("DMARC check failed for {domain}"),
                    },
                )),
                _ => {}
            }
        }

        // SPF.
        if let Some(spf) = &outcome.spf {
            if matches!(spf.result, AuthResult::Fail | AuthResult::SoftFail) {
                suspect = true;
            }
            if spf.result == AuthResult::Fail {
                let domain = sanitize(&spf.domain, MAX_VALUE);
                match self.spf {
                    StageMode::Reject => actions.push((Stage::Spf, MessageAction::Reject {
                        reply: Reply::new(
                            codes::MAILBOX_UNAVAILABLE,
                            status::SPF_FAILED,
                            format!(
                                "SPF validation failed: {domain} does not allow [{}] to send its mail",
                                ids.ip
                            ),
                        ),
                    })),
                    StageMode::Quarantine => actions.push((Stage::Spf, MessageAction::Quarantine {
                        reason: format!("SPF fail for {domain}"),
                    })),
                    StageMode::Tag | StageMode::Off => {}
                }
            }
        }

        // DKIM.
        let dkim_token = outcome.dkim.as_ref().map(|sigs| dkim_summary(sigs));
        if let Some(sigs) = &outcome.dkim
            && !sigs.is_empty()
            && sigs
                .iter()
                .all(|s| !matches!(s.result, AuthResult::Pass | AuthResult::TempError))
        {
            suspect = true;
            match self.dkim {
                StageMode::Reject => actions.push((
                    Stage::Dkim,
                    MessageAction::Reject {
                        reply: Reply::new(
                            codes::MAILBOX_UNAVAILABLE,
                            status::NO_PASSING_DKIM,
                            "No valid DKIM signature found",
                        ),
                    },
                )),
                StageMode::Quarantine => actions.push((
                    Stage::Dkim,
                    MessageAction::Quarantine {
                        reason: "no valid DKIM signature".into(),
                    },
                )),
                StageMode::Tag | StageMode::Off => {}
            }
        }

        // DNSBL (decided at connect; reported here).
        let listed: Vec<&str> = ctx
            .connect_tags
            .iter()
            .filter_map(|t| t.strip_prefix(TAG_DNSBL))
            .collect();
        let dnsbl_token = if ctx.connect_tags.iter().any(|t| t == TAG_IP_ALLOW) {
            "skipped".to_string()
        } else if !listed.is_empty() {
            suspect = true;
            format!("listed:{}", sanitize(&listed.join(","), MAX_VALUE))
        } else if ctx
            .connect_tags
            .iter()
            .any(|t| t.starts_with(TAG_DNSBL_ERROR))
        {
            "error".to_string()
        } else if self.dnsbl_active() {
            "none".to_string()
        } else {
            "off".to_string()
        };

        actions.extend(spam_actions);
        let (action, stage) = combine_staged(actions);
        let mut summary = format!(
            "dnsbl={} spf={} dkim={} dmarc={} virus={}",
            dnsbl_token.replace(' ', "_"),
            outcome.spf.as_ref().map_or("off", |s| s.result.as_str()),
            dkim_token.unwrap_or("off"),
            outcome.dmarc.as_ref().map_or("off", |d| d.result.as_str()),
            sanitize(&virus_token, MAX_VALUE).replace(' ', "_"),
        );
        if spam.is_some() {
            summary.push_str(" spam=");
            summary.push_str(spam_token);
        }
        let verdict_word = match action {
            MessageAction::Accept if suspect => "suspect",
            MessageAction::Accept => "clean",
            ref other => other.word(),
        };

        let mut headers = String::new();
        if let Some(ar) = authentication_results(ctx.receiver_hostname, outcome) {
            headers.push_str(&ar);
        }
        headers.push_str(&render(
            VERDICT_HEADER,
            &format!("{verdict_word}; {summary}"),
        ));
        headers.push_str(&extra_headers);

        MessageVerdict {
            headers,
            action,
            summary,
            stage,
        }
    }
}

/// The DKIM token of the summary: `none` without signatures, `pass` when
/// one verifies, otherwise the result of the first (temperror first).
fn dkim_summary(sigs: &[auth::DkimCheck]) -> &'static str {
    if sigs.is_empty() {
        "none"
    } else if sigs.iter().any(|s| s.result == AuthResult::Pass) {
        "pass"
    } else if sigs.iter().any(|s| s.result == AuthResult::TempError) {
        "temperror"
    } else {
        sigs[0].result.as_str()
    }
}

/// Most rspamd symbols listed in `X-Spam-Symbols`.
const MAX_SPAM_SYMBOLS: usize = 20;

/// Parses the `filter.rspamd` setting: empty means no spam scoring;
/// otherwise "host:port" (or "[v6]:port").
fn parse_rspamd(text: &str) -> Result<Option<String>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(Some(text.to_string()))
        }
        _ => Err(format!("filter.rspamd {text:?} is not \"host:port\"")),
    }
}

/// Lowercases a domain and drops a trailing dot.
fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Most DKIM results listed in Authentication-Results.
const MAX_DKIM_RESULTS: usize = 5;

/// The Authentication-Results header (RFC 8601), or `None` when no method
/// ran.
fn authentication_results(authserv_id: &str, outcome: &AuthOutcome) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if let Some(spf) = &outcome.spf {
        let mut part = format!("spf={}", spf.result.as_str());
        if !spf.identity.is_empty() {
            part.push_str(&format!(
                " {}={}",
                spf.property,
                property_value(&spf.identity)
            ));
        }
        parts.push(part);
    }
    if let Some(sigs) = &outcome.dkim {
        if sigs.is_empty() {
            parts.push("dkim=none".into());
        }
        for sig in sigs.iter().take(MAX_DKIM_RESULTS) {
            let mut part = format!("dkim={}", sig.result.as_str());
            if !sig.domain.is_empty() {
                part.push_str(&format!(" header.d={}", property_value(&sig.domain)));
            }
            if !sig.selector.is_empty() {
                part.push_str(&format!(" header.s={}", property_value(&sig.selector)));
            }
            parts.push(part);
        }
    }
    if let Some(dmarc) = &outcome.dmarc {
        let mut part = format!("dmarc={}", dmarc.result.as_str());
        if dmarc.result == AuthResult::Fail {
            part.push_str(&format!(" (p={})", dmarc.policy.as_str()));
        }
        if !dmarc.domain.is_empty() {
            part.push_str(&format!(" header.from={}", property_value(&dmarc.domain)));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return None;
    }
    let id = sanitize(authserv_id, MAX_VALUE).replace([' ', ';', '(', ')'], "");
    let id = if id.is_empty() {
        "localhost".to_string()
    } else {
        id
    };
    Some(render_list("Authentication-Results", &id, &parts))
}

#[cfg(test)]
mod tests;

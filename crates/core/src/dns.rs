//! The DNS records a mail domain needs, and checking what is published.
//!
//! [`records`] lists, ready to paste into a zone file, every record that
//! makes `DOMAIN` receive, serve and send mail through this server: the MX,
//! the server's address records and their PTR, SPF, the DKIM key in use,
//! DMARC with a reporting address, the RFC 6186 SRV records that let mail
//! clients find POP3 and submission, and the autoconfig/autodiscover names.
//! [`check`] asks the configured resolver (`[dns]`) for each of them and
//! returns one [`Finding`] per record: right, missing or wrong, and why.
//!
//! SPF is judged by evaluating the published policy (RFC 7208, through
//! `mail-auth`) for each of the server's addresses, so `include:`, `a`,
//! `mx` and `ip4:` are all understood: what counts is that mail from this
//! server passes.

use std::fmt;
use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};
use postoffice_config::Config;

/// Why the records cannot be listed or checked.
#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    /// The domain name is not one.
    #[error("{0:?} is not a domain name")]
    BadDomain(String),
    /// The DKIM key could not be read.
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    /// No resolver could be made from `[dns]`.
    #[error("{0}")]
    Resolver(String),
}

/// Which services the server offers, and on which ports (from the
/// `listen` keys; `None` when a service has no listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// POP3 with STLS (110).
    pub pop3: Option<u16>,
    /// POP3 over implicit TLS (995).
    pub pop3s: Option<u16>,
    /// Submission with STARTTLS (587).
    pub submission: Option<u16>,
    /// Submission over implicit TLS (465).
    pub submissions: Option<u16>,
}

impl Ports {
    /// The first port of each service's `listen` key.
    pub fn from_config(config: &Config) -> Ports {
        let first = |l: &[std::net::SocketAddr]| l.first().map(|a| a.port());
        Ports {
            pop3: first(&config.pop3.listen),
            pop3s: first(&config.pop3.listen_tls),
            submission: first(&config.submission.listen),
            submissions: first(&config.submission.listen_tls),
        }
    }
}

/// Everything the records are made of.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The mail domain (lower case, no final dot).
    pub domain: String,
    /// This server's name: the MX target and the PTR name.
    pub hostname: String,
    /// The DKIM selector.
    pub selector: String,
    /// The DKIM TXT value of the key in use (`None`: no key yet).
    pub dkim: Option<String>,
    /// The server's public addresses; empty: those the hostname resolves
    /// to (checked) or placeholders (printed).
    pub addresses: Vec<IpAddr>,
    /// Ports of the client services.
    pub ports: Ports,
    /// Where DMARC aggregate reports go.
    pub report_address: String,
}

impl Setup {
    /// The setup of `domain` on the server configured by `config`, with the
    /// DKIM key found in its data directory; reports go to
    /// `report_address` or postmaster@domain.
    pub fn from_config(
        config: &Config,
        domain: &str,
        addresses: Vec<IpAddr>,
        report_address: Option<String>,
    ) -> Result<Setup, DnsSetupError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty()
            || !domain.contains('.')
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(DnsSetupError::BadDomain(domain));
        }
        let keys = crate::app::keys(config).map_err(|e| crate::dkim::DkimError::Write {
            place: "the DKIM keys".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let dkim = crate::dkim::public_record(&keys, &domain)?;
        Ok(Setup {
            report_address: report_address.unwrap_or_else(|| format!("postmaster@{domain}")),
            hostname: config.hostname.trim_end_matches('.').to_ascii_lowercase(),
            selector: config.dkim.selector.clone(),
            dkim,
            addresses,
            ports: Ports::from_config(config),
            domain,
        })
    }
}

/// What a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The domain's MX, naming this server.
    Mx,
    /// The server name's A or AAAA record.
    Address,
    /// The reverse (PTR) record of a server address.
    Ptr,
    /// The domain's SPF policy.
    Spf,
    /// The DKIM public key.
    Dkim,
    /// The DMARC policy.
    Dmarc,
    /// An RFC 6186 service record (POP3, submission).
    Srv,
    /// The Thunderbird autoconfig name.
    Autoconfig,
    /// The Outlook autodiscover name.
    Autodiscover,
}

impl Kind {
    /// A short name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mx => "MX",
            Kind::Address => "address",
            Kind::Ptr => "PTR",
            Kind::Spf => "SPF",
            Kind::Dkim => "DKIM",
            Kind::Dmarc => "DMARC",
            Kind::Srv => "SRV",
            Kind::Autoconfig => "autoconfig",
            Kind::Autodiscover => "autodiscover",
        }
    }
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it is for.
    pub kind: Kind,
    /// Owner name, fully qualified with the final dot.
    pub name: String,
    /// Record type: MX, A, AAAA, PTR, TXT, SRV, CNAME.
    pub rtype: &'static str,
    /// The data in zone-file form (TXT strings quoted and split at 255).
    pub value: String,
    /// Why it is needed; a record that cannot be written yet (no DKIM key,
    /// address unknown) has an empty `value` and says here what to do.
    pub note: String,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            return write!(f, "; {} {}: {}", self.name, self.rtype, self.note);
        }
        write!(
            f,
            "{:<40} 3600 IN {:<5} {}",
            self.name, self.rtype, self.value
        )
    }
}

/// `text` as zone-file TXT strings: quoted, in pieces of at most 255
/// octets.
pub fn txt_strings(text: &str) -> String {
    text.as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The reverse-lookup name of `ip` (`4.3.2.1.in-addr.arpa.`).
pub fn arpa(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s + "ip6.arpa."
        }
    }
}

/// The SPF policy printed: the domain's MX hosts may send its mail.
pub const SPF: &str = "v=spf1 mx -all";

/// The DMARC policy printed, with aggregate reports to `report`.
pub fn dmarc_policy(report: &str) -> String {
    format!("v=DMARC1; p=quarantine; adkim=s; aspf=s; rua=mailto:{report}")
}

/// The four RFC 6186 services: (label, port, priority). Implicit TLS
/// first (RFC 8314 section 5.1).
fn services(p: Ports) -> [(&'static str, Option<u16>, u16); 4] {
    [
        ("_submissions._tcp", p.submissions, 0),
        ("_submission._tcp", p.submission, 10),
        ("_pop3s._tcp", p.pop3s, 0),
        ("_pop3._tcp", p.pop3, 10),
    ]
}

/// Every record `setup.domain` needs, in the order to publish them.
pub fn records(setup: &Setup) -> Vec<Record> {
    let d = &setup.domain;
    let h = &setup.hostname;
    let mut out = Vec::new();
    let mut push = |kind, name: String, rtype, value: String, note: &str| {
        out.push(Record {
            kind,
            name,
            rtype,
            value,
            note: note.to_string(),
        })
    };
    push(
        Kind::Mx,
        format!("{d}."),
        "MX",
        format!("10 {h}."),
        "mail for the domain goes to this server",
    );
    if setup.addresses.is_empty() {
        push(
            Kind::Address,
            format!("{h}."),
            "A",
            String::new(),
            "the server's public IPv4 address (and AAAA for IPv6); pass --ip ADDRESS to print it",
        );
        push(
            Kind::Ptr,
            "<reverse of the address>".into(),
            "PTR",
            String::new(),
            &format!("ask the address's provider to set its reverse name to {h}."),
        );
    }
    for ip in &setup.addresses {
        let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
        push(
            Kind::Address,
            format!("{h}."),
            rtype,
            ip.to_string(),
            "the server's address",
        );
    }
    for ip in &setup.addresses {
        push(
            Kind::Ptr,
            arpa(*ip),
            "PTR",
            format!("{h}."),
            "set by the address's provider: receivers check that it names the server",
        );
    }
    push(
        Kind::Spf,
        format!("{d}."),
        "TXT",
        txt_strings(SPF),
        "only the MX hosts send the domain's mail",
    );
    let dkim_name = format!("{}._domainkey.{d}.", setup.selector);
    match &setup.dkim {
        Some(v) => push(
            Kind::Dkim,
            dkim_name,
            "TXT",
            txt_strings(v),
            "the public key of the DKIM signing key in use",
        ),
        None => push(
            Kind::Dkim,
            dkim_name,
            "TXT",
            String::new(),
            &format!(
                "no DKIM key yet: run `postoffice dkim generate {d}`, then print the records again"
            ),
        ),
    }
    push(
        Kind::Dmarc,
        format!("_dmarc.{d}."),
        "TXT",
        txt_strings(&dmarc_policy(&setup.report_address)),
        "what receivers do with mail that fails SPF and DKIM; reports go to the rua address",
    );
    for (label, port, priority) in services(setup.ports) {
        let value = match port {
            Some(port) => format!("{priority} 1 {port} {h}."),
            None => "0 0 0 .".to_string(),
        };
        push(
            Kind::Srv,
            format!("{label}.{d}."),
            "SRV",
            value,
            "lets mail clients find the service (RFC 6186)",
        );
    }
    push(
        Kind::Autoconfig,
        format!("autoconfig.{d}."),
        "CNAME",
        format!("{h}."),
        "Thunderbird's automatic account set-up",
    );
    push(
        Kind::Autodiscover,
        format!("autodiscover.{d}."),
        "CNAME",
        format!("{h}."),
        "Outlook's automatic account set-up",
    );
    out
}

/// The verdict on one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Published as needed.
    Ok,
    /// Not published.
    Missing,
    /// Published with other data.
    Wrong,
    /// The lookup itself failed (timeout, SERVFAIL): unknown.
    LookupFailed,
}

impl Verdict {
    /// OK, MISSING, WRONG or ERROR.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Missing => "MISSING",
            Verdict::Wrong => "WRONG",
            Verdict::LookupFailed => "ERROR",
        }
    }
}

/// What [`check`] found for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which record.
    pub kind: Kind,
    /// Its owner name.
    pub name: String,
    /// Right, missing or wrong.
    pub verdict: Verdict,
    /// What was found, and what is expected.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<7} {:<12} {}: {}",
            self.verdict.as_str(),
            self.kind.as_str(),
            self.name,
            self.detail
        )
    }
}

/// The answer to one query.
enum Answer {
    Found(Vec<RData>),
    None,
    Failed(String),
}

async fn query(
    resolver: &TokioResolver,
    name: &str,
    rtype: hickory_resolver::proto::rr::RecordType,
) -> Answer {
    match resolver.lookup(name, rtype).await {
        Ok(l) => {
            let data: Vec<RData> = l
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect();
            if data.is_empty() {
                Answer::None
            } else {
                Answer::Found(data)
            }
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Answer::None,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

fn txt_of(data: &[RData]) -> Vec<String> {
    data.iter()
        .filter_map(|d| match d {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

fn name_eq(name: &hickory_resolver::proto::rr::Name, host: &str) -> bool {
    name.to_ascii()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(host)
}

/// The value of `tag` in a `k=v; k=v` record, without spaces.
fn tag<'a>(record: &'a str, tag: &str) -> Option<&'a str> {
    record.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim().eq_ignore_ascii_case(tag).then(|| v.trim())
    })
}

/// Query every record of [`records`] through the resolver of `config`'s
/// `[dns]` and judge it. Every finding is returned; all is well when
/// every verdict is [`Verdict::Ok`].
pub async fn check(setup: &Setup, config: &Config) -> Result<Vec<Finding>, DnsSetupError> {
    use hickory_resolver::proto::rr::RecordType;
    let (rc, opts) = postoffice_common::resolver::config(&config.dns, 64)
        .map_err(|e| DnsSetupError::Resolver(e.to_string()))?;
    let auth =
        MessageAuthenticator::new(rc, opts).map_err(|e| DnsSetupError::Resolver(e.to_string()))?;
    let resolver = auth.resolver();
    let d = &setup.domain;
    let h = &setup.hostname;
    let mut out = Vec::new();
    let mut add = |kind, name: String, verdict, detail: String| {
        out.push(Finding {
            kind,
            name,
            verdict,
            detail,
        })
    };

    // MX: one of the domain's MX records names this server.
    let name = format!("{d}.");
    match query(resolver, &name, RecordType::MX).await {
        Answer::Found(data) => {
            let hosts: Vec<String> = data
                .iter()
                .filter_map(|r| match r {
                    RData::MX(mx) => Some(mx.exchange.to_ascii()),
                    _ => None,
                })
                .collect();
            let ours = data
                .iter()
                .any(|r| matches!(r, RData::MX(mx) if name_eq(&mx.exchange, h)));
            if ours {
                add(Kind::Mx, name, Verdict::Ok, format!("10 {h}."));
            } else {
                add(
                    Kind::Mx,
                    name,
                    Verdict::Wrong,
                    format!("points to {}, not to {h}.", hosts.join(", ")),
                );
            }
        }
        Answer::None => add(
            Kind::Mx,
            name,
            Verdict::Missing,
            format!("no MX record; publish MX 10 {h}."),
        ),
        Answer::Failed(e) => add(Kind::Mx, name, Verdict::LookupFailed, e),
    }

    // The server's addresses: its name resolves (to the given ones).
    let name = format!("{h}.");
    let mut resolved: Vec<IpAddr> = Vec::new();
    let mut failed = None;
    for rtype in [RecordType::A, RecordType::AAAA] {
        match query(resolver, &name, rtype).await {
            Answer::Found(data) => resolved.extend(data.iter().filter_map(|r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Answer::None => {}
            Answer::Failed(e) => failed = Some(e),
        }
    }
    let shown = |ips: &[IpAddr]| {
        ips.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let addresses = if setup.addresses.is_empty() {
        resolved.clone()
    } else {
        setup.addresses.clone()
    };
    match (&failed, resolved.is_empty()) {
        (Some(e), true) => add(Kind::Address, name, Verdict::LookupFailed, e.clone()),
        (_, true) => add(
            Kind::Address,
            name,
            Verdict::Missing,
            format!("{h} has no A or AAAA record"),
        ),
        _ => {
            let absent: Vec<IpAddr> = addresses
                .iter()
                .filter(|ip| !resolved.contains(ip))
                .copied()
                .collect();
            if absent.is_empty() {
                add(Kind::Address, name, Verdict::Ok, shown(&resolved));
            } else {
                add(
                    Kind::Address,
                    name,
                    Verdict::Wrong,
                    format!(
                        "resolves to {}, without {}",
                        shown(&resolved),
                        shown(&absent)
                    ),
                );
            }
        }
    }

    // PTR: each address's reverse name is the server's name.
    for ip in &addresses {
        let name = arpa(*ip);
        match query(resolver, &name, RecordType::PTR).await {
            Answer::Found(data) => {
                let names: Vec<String> = data
                    .iter()
                    .filter_map(|r| match r {
                        RData::PTR(p) => Some(p.0.to_ascii()),
                        _ => None,
                    })
                    .collect();
                if data
                    .iter()
                    .any(|r| matches!(r, RData::PTR(p) if name_eq(&p.0, h)))
                {
                    add(Kind::Ptr, name, Verdict::Ok, format!("{h}."));
                } else {
                    add(
                        Kind::Ptr,
                        name,
                        Verdict::Wrong,
                        format!("names {}, not {h}.", names.join(", ")),
                    );
                }
            }
            Answer::None => add(
                Kind::Ptr,
                name,
                Verdict::Missing,
                format!("{ip} has no reverse name; ask its provider for {h}."),
            ),
            Answer::Failed(e) => add(Kind::Ptr, name, Verdict::LookupFailed, e),
        }
    }

    // SPF: one policy, and mail from each server address passes it.
    let name = format!("{d}.");
    match query(resolver, &name, RecordType::TXT).await {
        Answer::Failed(e) => add(Kind::Spf, name, Verdict::LookupFailed, e),
        answer => {
            let spf: Vec<String> = match answer {
                Answer::Found(data) => txt_of(&data)
                    .into_iter()
                    .filter(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
                    .collect(),
                _ => Vec::new(),
            };
            if spf.is_empty() {
                add(
                    Kind::Spf,
                    name,
                    Verdict::Missing,
                    format!("no SPF record; publish TXT \"{SPF}\""),
                );
            } else if spf.len() > 1 {
                add(
                    Kind::Spf,
                    name,
                    Verdict::Wrong,
                    format!(
                        "{} SPF records (receivers treat that as an error); keep one",
                        spf.len()
                    ),
                );
            } else {
                let sender = format!("postmaster@{d}");
                let mut failing = Vec::new();
                for ip in &addresses {
                    let out = auth
                        .verify_spf(SpfParameters::verify_mail_from(*ip, h, h, &sender))
                        .await;
                    if out.result() != SpfResult::Pass {
                        failing.push(format!("{ip}: {}", out.result()));
                    }
                }
                if addresses.is_empty() {
                    add(
                        Kind::Spf,
                        name,
                        Verdict::Wrong,
                        format!(
                            "\"{}\", but the server has no address to check it with",
                            spf[0]
                        ),
                    );
                } else if failing.is_empty() {
                    add(
                        Kind::Spf,
                        name,
                        Verdict::Ok,
                        format!("\"{}\" passes for {}", spf[0], shown(&addresses)),
                    );
                } else {
                    add(
                        Kind::Spf,
                        name,
                        Verdict::Wrong,
                        format!(
                            "\"{}\" does not pass mail from this server ({})",
                            spf[0],
                            failing.join(", ")
                        ),
                    );
                }
            }
        }
    }

    // DKIM: the published key is the one that signs.
    let name = format!("{}._domainkey.{d}.", setup.selector);
    let answer = query(resolver, &name, RecordType::TXT).await;
    match (&setup.dkim, answer) {
        (_, Answer::Failed(e)) => add(Kind::Dkim, name, Verdict::LookupFailed, e),
        (None, _) => add(
            Kind::Dkim,
            name,
            Verdict::Missing,
            format!("no DKIM key on this server: run `postoffice dkim generate {d}`"),
        ),
        (Some(_), Answer::None) => add(
            Kind::Dkim,
            name,
            Verdict::Missing,
            "no DKIM record; publish the TXT record `postoffice dns` prints".into(),
        ),
        (Some(ours), Answer::Found(data)) => {
            let want = tag(ours, "p").unwrap_or_default().replace(' ', "");
            let published: Vec<String> = txt_of(&data);
            if published
                .iter()
                .any(|t| tag(t, "p").map(|p| p.replace(' ', "")) == Some(want.clone()))
            {
                add(
                    Kind::Dkim,
                    name,
                    Verdict::Ok,
                    "the key in use is published".into(),
                );
            } else {
                add(
                    Kind::Dkim,
                    name,
                    Verdict::Wrong,
                    "the published key is not the one that signs (p= differs)".into(),
                );
            }
        }
    }

    // DMARC: one policy record with a policy.
    let name = format!("_dmarc.{d}.");
    match query(resolver, &name, RecordType::TXT).await {
        Answer::Failed(e) => add(Kind::Dmarc, name, Verdict::LookupFailed, e),
        answer => {
            let dmarc: Vec<String> = match answer {
                Answer::Found(data) => txt_of(&data)
                    .into_iter()
                    .filter(|t| t.to_ascii_lowercase().starts_with("v=dmarc1"))
                    .collect(),
                _ => Vec::new(),
            };
            match dmarc.as_slice() {
                [] => add(
                    Kind::Dmarc,
                    name,
                    Verdict::Missing,
                    format!(
                        "no DMARC record; publish TXT \"{}\"",
                        dmarc_policy(&setup.report_address)
                    ),
                ),
                [one] => match tag(one, "p").map(|p| p.to_ascii_lowercase()) {
                    Some(p) if ["none", "quarantine", "reject"].contains(&p.as_str()) => {
                        if tag(one, "rua").is_some() {
                            add(Kind::Dmarc, name, Verdict::Ok, format!("\"{one}\""));
                        } else {
                            add(
                                Kind::Dmarc,
                                name,
                                Verdict::Wrong,
                                format!("\"{one}\" has no rua= reporting address"),
                            );
                        }
                    }
                    _ => add(
                        Kind::Dmarc,
                        name,
                        Verdict::Wrong,
                        format!("\"{one}\" has no valid p= (none, quarantine or reject)"),
                    ),
                },
                _ => add(
                    Kind::Dmarc,
                    name,
                    Verdict::Wrong,
                    format!("{} DMARC records; keep one", dmarc.len()),
                ),
            }
        }
    }

    // SRV: each offered service points at this server and its port.
    for (label, port, _) in services(setup.ports) {
        let name = format!("{label}.{d}.");
        let answer = query(resolver, &name, RecordType::SRV).await;
        let srvs: Vec<(u16, String)> = match &answer {
            Answer::Found(data) => data
                .iter()
                .filter_map(|r| match r {
                    RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        match (port, answer) {
            (_, Answer::Failed(e)) => add(Kind::Srv, name, Verdict::LookupFailed, e),
            (None, _) => {
                let to_us = srvs
                    .iter()
                    .any(|(_, t)| t.trim_end_matches('.').eq_ignore_ascii_case(h));
                if to_us {
                    add(
                        Kind::Srv,
                        name,
                        Verdict::Wrong,
                        "points to this server, which does not offer the service".into(),
                    );
                } else {
                    add(Kind::Srv, name, Verdict::Ok, "service not offered".into());
                }
            }
            (Some(port), Answer::None) => add(
                Kind::Srv,
                name,
                Verdict::Missing,
                format!("no SRV record; publish SRV 0 1 {port} {h}."),
            ),
            (Some(port), Answer::Found(_)) => {
                if srvs
                    .iter()
                    .any(|(p, t)| *p == port && t.trim_end_matches('.').eq_ignore_ascii_case(h))
                {
                    add(Kind::Srv, name, Verdict::Ok, format!("port {port} on {h}."));
                } else {
                    let found: Vec<String> = srvs.iter().map(|(p, t)| format!("{t}:{p}")).collect();
                    add(
                        Kind::Srv,
                        name,
                        Verdict::Wrong,
                        format!("points to {}, not to {h}.:{port}", found.join(", ")),
                    );
                }
            }
        }
    }

    // autoconfig/autodiscover: the names reach this server.
    for (kind, label) in [
        (Kind::Autoconfig, "autoconfig"),
        (Kind::Autodiscover, "autodiscover"),
    ] {
        let name = format!("{label}.{d}.");
        match resolver.lookup_ip(name.as_str()).await {
            Ok(ips) => {
                let got: Vec<IpAddr> = ips.iter().collect();
                if !got.is_empty() && got.iter().all(|ip| resolved.contains(ip)) {
                    add(
                        kind,
                        name,
                        Verdict::Ok,
                        format!("reaches {h} ({})", shown(&got)),
                    );
                } else {
                    add(
                        kind,
                        name,
                        Verdict::Wrong,
                        format!(
                            "resolves to {}, not to {h} ({})",
                            shown(&got),
                            shown(&resolved)
                        ),
                    );
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => add(
                kind,
                name,
                Verdict::Missing,
                format!("no record; publish CNAME {h}."),
            ),
            Err(e) => add(kind, name, Verdict::LookupFailed, e.to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            domain: "example.test".into(),
            hostname: "mail.example.test".into(),
            selector: "postoffice".into(),
            dkim: Some(format!("v=DKIM1; k=rsa; p={}", "A".repeat(300))),
            addresses: vec![
                "192.0.2.25".parse().unwrap(),
                "2001:db8::25".parse().unwrap(),
            ],
            ports: Ports {
                pop3: Some(110),
                pop3s: Some(995),
                submission: Some(587),
                submissions: None,
            },
            report_address: "dmarc@example.test".into(),
        }
    }

    #[test]
    fn every_record_is_listed_ready_to_paste() {
        let text: Vec<String> = records(&setup()).iter().map(|r| r.to_string()).collect();
        // Compared with single spaces: the columns are for people.
        let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let all = text
            .iter()
            .map(|l| squeeze(l))
            .collect::<Vec<_>>()
            .join("\n");
        for expected in [
            "example.test.",
            "IN MX    10 mail.example.test.",
            "IN A     192.0.2.25",
            "IN AAAA  2001:db8::25",
            "25.2.0.192.in-addr.arpa.",
            "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
            "IN TXT   \"v=spf1 mx -all\"",
            "postoffice._domainkey.example.test.",
            "_dmarc.example.test.",
            "rua=mailto:dmarc@example.test",
            "_pop3s._tcp.example.test.               3600 IN SRV   0 1 995 mail.example.test.",
            "_pop3._tcp.example.test.                3600 IN SRV   10 1 110 mail.example.test.",
            "_submission._tcp.example.test.          3600 IN SRV   10 1 587 mail.example.test.",
            "_submissions._tcp.example.test.         3600 IN SRV   0 0 0 .",
            "autoconfig.example.test.                3600 IN CNAME mail.example.test.",
            "autodiscover.example.test.              3600 IN CNAME mail.example.test.",
        ] {
            assert!(
                all.contains(&squeeze(expected)),
                "{expected:?} missing from\n{all}"
            );
        }
        // A long DKIM key is split into TXT strings of at most 255 octets.
        let dkim = text.iter().find(|l| l.contains("_domainkey")).unwrap();
        assert!(dkim.contains("\" \""), "{dkim}");
    }

    #[test]
    fn without_key_or_address_the_records_say_what_to_do() {
        let mut s = setup();
        s.dkim = None;
        s.addresses.clear();
        let all: String = records(&s).iter().map(|r| format!("{r}\n")).collect();
        assert!(
            all.contains("postoffice dkim generate example.test"),
            "{all}"
        );
        assert!(all.contains("--ip"), "{all}");
    }

    #[test]
    fn tags() {
        assert_eq!(
            tag("v=DMARC1; p=reject; rua=mailto:a@b", "p"),
            Some("reject")
        );
        assert_eq!(tag("v=DKIM1;k=rsa;p=AB CD", "P"), Some("AB CD"));
        assert_eq!(tag("v=DMARC1", "p"), None);
    }

    #[test]
    fn bad_domains_are_refused() {
        let c = Config::default();
        for d in ["", "localhost", "a b.test", "x/y.test"] {
            assert!(Setup::from_config(&c, d, Vec::new(), None).is_err(), "{d}");
        }
    }
}

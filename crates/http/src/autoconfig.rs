//! Mail client autoconfiguration, for every local domain:
//!
//! - Thunderbird's autoconfig, `config-v1.1.xml`, which Thunderbird asks
//!   at `https://autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=...`
//!   and `https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml`;
//! - Outlook's autodiscover (POX), posted to
//!   `https://autodiscover.<domain>/autodiscover/autodiscover.xml`.
//!
//! Both advertise what the configuration listens on: POP3 over TLS (the
//! port of `[pop3] listen_tls`), POP3 with STARTTLS (`[pop3] listen`),
//! submission over TLS (`[submission] listen_tls`) and with STARTTLS
//! (`[submission] listen`), at `hostname`, with the full address as the
//! user name and a password (sent inside TLS). Implicit TLS comes first
//! (RFC 8314).
//!
//! The domain is the one of the `emailaddress` asked about, else the host
//! the client connected to (without `autoconfig.`/`autodiscover.`). A
//! domain that is not ours is 404 with nothing in it; the answer for one
//! of ours never depends on whether the address exists.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use postoffice_config::Config;
use serde::Deserialize;

use crate::Web;

/// One way to reach a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The TCP port.
    pub port: u16,
    /// TLS from the first byte (true) or STARTTLS/STLS (false).
    pub implicit_tls: bool,
}

/// What the configuration offers clients, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The server name clients connect to.
    pub hostname: String,
    /// POP3 endpoints.
    pub pop3: Vec<Endpoint>,
    /// Submission endpoints.
    pub submission: Vec<Endpoint>,
}

/// The ports the server listens on, for [`Offer::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    /// POP3S (implicit TLS).
    pub pop3s: Option<u16>,
    /// POP3 with STLS.
    pub pop3: Option<u16>,
    /// Submission over implicit TLS.
    pub submissions: Option<u16>,
    /// Submission with STARTTLS.
    pub submission: Option<u16>,
}

impl Ports {
    /// The first port of each listener list of `config` (for a
    /// configuration without port 0).
    pub fn of(config: &Config) -> Ports {
        let first = |a: &[std::net::SocketAddr]| a.first().map(|a| a.port());
        Ports {
            pop3s: first(&config.pop3.listen_tls),
            pop3: first(&config.pop3.listen),
            submissions: first(&config.submission.listen_tls),
            submission: first(&config.submission.listen),
        }
    }
}

impl Offer {
    /// The offer of a server named `hostname` listening on `ports`.
    pub fn new(hostname: &str, ports: Ports) -> Offer {
        let ep = |port: Option<u16>, implicit_tls| port.map(|port| Endpoint { port, implicit_tls });
        Offer {
            hostname: hostname.to_string(),
            pop3: ep(ports.pop3s, true)
                .into_iter()
                .chain(ep(ports.pop3, false))
                .collect(),
            submission: ep(ports.submissions, true)
                .into_iter()
                .chain(ep(ports.submission, false))
                .collect(),
        }
    }
}

/// XML text escaping.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The Thunderbird `config-v1.1.xml` of `domain`.
pub fn thunderbird_xml(offer: &Offer, domain: &str) -> String {
    let d = esc(domain);
    let host = esc(&offer.hostname);
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <clientConfig version=\"1.1\">\n\
         \x20 <emailProvider id=\"{d}\">\n\
         \x20   <domain>{d}</domain>\n\
         \x20   <displayName>{d} mail</displayName>\n\
         \x20   <displayShortName>{d}</displayShortName>\n"
    );
    let socket = |e: &Endpoint| if e.implicit_tls { "SSL" } else { "STARTTLS" };
    for e in &offer.pop3 {
        x.push_str(&format!(
            "    <incomingServer type=\"pop3\">\n\
             \x20     <hostname>{host}</hostname>\n\
             \x20     <port>{}</port>\n\
             \x20     <socketType>{}</socketType>\n\
             \x20     <username>%EMAILADDRESS%</username>\n\
             \x20     <authentication>password-cleartext</authentication>\n\
             \x20     <pop3>\n\
             \x20       <leaveMessagesOnServer>false</leaveMessagesOnServer>\n\
             \x20       <downloadOnBiff>true</downloadOnBiff>\n\
             \x20     </pop3>\n\
             \x20   </incomingServer>\n",
            e.port,
            socket(e)
        ));
    }
    for e in &offer.submission {
        x.push_str(&format!(
            "    <outgoingServer type=\"smtp\">\n\
             \x20     <hostname>{host}</hostname>\n\
             \x20     <port>{}</port>\n\
             \x20     <socketType>{}</socketType>\n\
             \x20     <username>%EMAILADDRESS%</username>\n\
             \x20     <authentication>password-cleartext</authentication>\n\
             \x20   </outgoingServer>\n",
            e.port,
            socket(e)
        ));
    }
    x.push_str("  </emailProvider>\n</clientConfig>\n");
    x
}

/// The Outlook autodiscover (POX) response for `address` in a local
/// domain.
pub fn outlook_xml(offer: &Offer, address: &str) -> String {
    let host = esc(&offer.hostname);
    let login = esc(address);
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n\
         \x20 <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n\
         \x20   <Account>\n\
         \x20     <AccountType>email</AccountType>\n\
         \x20     <Action>settings</Action>\n",
    );
    for (kind, e) in [
        ("POP3", offer.pop3.first()),
        ("SMTP", offer.submission.first()),
    ] {
        let Some(e) = e else { continue };
        x.push_str(&format!(
            "      <Protocol>\n\
             \x20       <Type>{kind}</Type>\n\
             \x20       <Server>{host}</Server>\n\
             \x20       <Port>{}</Port>\n\
             \x20       <DomainRequired>off</DomainRequired>\n\
             \x20       <LoginName>{login}</LoginName>\n\
             \x20       <SPA>off</SPA>\n\
             \x20       <SSL>on</SSL>\n\
             \x20       <Encryption>{}</Encryption>\n\
             \x20       <AuthRequired>on</AuthRequired>\n\
             \x20     </Protocol>\n",
            e.port,
            if e.implicit_tls { "SSL" } else { "TLS" }
        ));
    }
    x.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    x
}

/// The domain a request is about: that of `address` when given, else the
/// `Host` (port and an `autoconfig.`/`autodiscover.` label removed).
fn domain_for(address: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let raw = match address {
        Some(a) => a.rsplit_once('@')?.1.to_string(),
        None => {
            let host = headers.get(header::HOST)?.to_str().ok()?;
            let host = match host.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => host,
            };
            host.strip_prefix("autoconfig.")
                .or_else(|| host.strip_prefix("autodiscover."))
                .unwrap_or(host)
                .to_string()
        }
    };
    postoffice_directory::normalize_domain(&raw).ok()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn xml(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The query of the Thunderbird URLs.
#[derive(Debug, Deserialize)]
pub struct AutoconfigQuery {
    /// The address being set up.
    #[serde(default)]
    pub emailaddress: Option<String>,
}

/// `GET /.well-known/autoconfig/mail/config-v1.1.xml` and
/// `GET /mail/config-v1.1.xml`.
pub(crate) async fn thunderbird(
    State(web): State<Web>,
    Query(q): Query<AutoconfigQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(domain) = domain_for(q.emailaddress.as_deref(), &headers) else {
        return not_found();
    };
    let app = web.app();
    if !app.local().is_local_domain(&domain) {
        return not_found();
    }
    xml(thunderbird_xml(web.offer(), &domain))
}

/// The text of the first `<name>...</name>` element in `body`.
fn element<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&close)?;
    Some(body[start..start + len].trim())
}

/// `POST /autodiscover/autodiscover.xml` (and `GET` with `?emailaddress=`).
pub(crate) async fn outlook(
    State(web): State<Web>,
    Query(q): Query<AutoconfigQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = String::from_utf8_lossy(&body);
    if element(&body, "AcceptableResponseSchema").is_some_and(|s| s.contains("mobilesync")) {
        // Exchange ActiveSync is not spoken here.
        return not_found();
    }
    let address = element(&body, "EMailAddress")
        .map(str::to_string)
        .or(q.emailaddress);
    let Some(address) = address.and_then(|a| postoffice_directory::normalize_address(&a).ok())
    else {
        return not_found();
    };
    let Some(domain) = domain_for(Some(&address), &headers) else {
        return not_found();
    };
    let app = web.app();
    if !app.local().is_local_domain(&domain) {
        return not_found();
    }
    xml(outlook_xml(web.offer(), &address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        let mut c = Config {
            hostname: "mail.example.test".into(),
            ..Config::default()
        };
        c.pop3.listen = vec!["0.0.0.0:110".parse().unwrap()];
        c.pop3.listen_tls = vec!["0.0.0.0:995".parse().unwrap()];
        c.submission.listen = vec!["0.0.0.0:587".parse().unwrap()];
        c.submission.listen_tls = vec!["0.0.0.0:465".parse().unwrap()];
        Offer::new(&c.hostname, Ports::of(&c))
    }

    #[test]
    fn missing_listeners_are_not_offered() {
        let o = Offer::new(
            "h.test",
            Ports {
                pop3s: Some(995),
                submission: Some(587),
                ..Ports::default()
            },
        );
        let x = thunderbird_xml(&o, "d.test");
        assert_eq!(x.matches("<incomingServer").count(), 1);
        assert_eq!(x.matches("<outgoingServer").count(), 1);
        assert!(x.contains("<port>587</port>") && x.contains("<socketType>STARTTLS</socketType>"));
    }

    #[test]
    fn thunderbird_lists_tls_first() {
        let x = thunderbird_xml(&offer(), "example.test");
        let pos = |s: &str| x.find(s).unwrap_or_else(|| panic!("{s} in {x}"));
        assert!(pos("<port>995</port>") < pos("<port>110</port>"));
        assert!(pos("<port>465</port>") < pos("<port>587</port>"));
        assert_eq!(x.matches("<socketType>SSL</socketType>").count(), 2);
        assert_eq!(x.matches("<socketType>STARTTLS</socketType>").count(), 2);
        assert!(x.contains("<domain>example.test</domain>"));
        assert!(x.contains("<hostname>mail.example.test</hostname>"));
        assert!(!x.contains("plain"), "no unencrypted endpoint: {x}");
    }

    #[test]
    fn outlook_names_the_first_of_each() {
        let x = outlook_xml(&offer(), "alice@example.test");
        assert!(x.contains("<Type>POP3</Type>"));
        assert!(x.contains("<Port>995</Port>"));
        assert!(x.contains("<Port>465</Port>"));
        assert!(!x.contains("<Port>110</Port>"));
        assert!(x.contains("<LoginName>alice@example.test</LoginName>"));
    }

    #[test]
    fn domains_from_address_or_host() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            "autoconfig.Example.test:8443".parse().unwrap(),
        );
        assert_eq!(domain_for(None, &h).as_deref(), Some("example.test"));
        assert_eq!(
            domain_for(Some("a@Other.test"), &h).as_deref(),
            Some("other.test")
        );
        assert_eq!(domain_for(Some("no-at-sign"), &h), None);
        assert_eq!(domain_for(Some("a@bad domain"), &h), None);
        assert_eq!(
            element(
                "<a><EMailAddress> x@y.test </EMailAddress></a>",
                "EMailAddress"
            ),
            Some("x@y.test")
        );
    }
}

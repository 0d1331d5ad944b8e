//! The postoffice configuration file.
//!
//! One TOML file. Every key has a safe default, so an empty file (or no file
//! at all) gives a working loopback-only server. Unknown keys are rejected with
//! their name and line, because a typo that is silently ignored is a security
//! setting that silently isn't applied. `config/postoffice.example.toml` in the
//! repository documents every key; a test keeps it in sync with this file.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors loading or validating the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range or inconsistent (the message says which).
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where users, mail, keys and certificates live.
    pub data_dir: PathBuf,
    /// The name this server uses for itself (greetings, Maildir file names).
    pub hostname: String,
    /// Seconds a shutdown (SIGTERM/SIGINT) waits for sessions to finish.
    pub shutdown_timeout_secs: u64,
    /// The system user `serve` runs as (and other commands that touch
    /// data_dir, when started as root). Started as root, `serve` opens its
    /// listeners, then switches to this user (and its groups) before it
    /// reads or writes any data or accepts a connection. Empty: keep the
    /// user the process was started as. Production: "postoffice".
    pub user: String,
    /// Let `serve` go on running as root (uid 0) when `user` is empty. Off:
    /// a server started as root without `user` refuses to listen on any
    /// address off loopback, because a mail server parses hostile input all
    /// day (a loopback-only trial runs, with a warning). The environment variable
    /// POSTOFFICE_ALLOW_ROOT=1 does the same (for test machines and
    /// containers whose config is generated).
    pub allow_root: bool,
    /// The POP3 listeners (`[pop3]`).
    pub pop3: Pop3,
    /// The SMTP (MX) listener (`[smtp]`).
    pub smtp: Smtp,
    /// Mail submission (`[submission]`).
    pub submission: Submission,
    /// The outbound queue (`[queue]`).
    pub queue: Queue,
    /// DKIM signing (`[dkim]`).
    pub dkim: Dkim,
    /// The inbound verification pipeline (`[filter]`).
    pub filter: Filter,
    /// The resolver (`[dns]`).
    pub dns: Dns,
    /// The server certificate (`[tls]`).
    pub tls: Tls,
    /// Server-wide provider policy (`[policy]`).
    pub policy: Policy,
    /// Texts of the notices delivered to users (`[notices]`).
    pub notices: Notices,
    /// Server-run fetch jobs (`[fetch_jobs]`).
    pub fetch_jobs: FetchJobs,
    /// Brute-force protection of logins (`[auth]`).
    pub auth: Auth,
    /// Connection limits (`[limits]`).
    pub limits: Limits,
    /// Logging (`[log]`).
    pub log: Log,
    /// The web interface, metrics and client autoconfiguration (`[http]`).
    pub http: Http,
    /// Role addresses of the local domains (`[addresses]`).
    pub addresses: Addresses,
    /// Where mail is stored (`[storage]`): Maildir under data_dir, or
    /// PostgreSQL shared by several nodes.
    pub storage: Storage,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("postoffice-data"),
            hostname: default_hostname(),
            shutdown_timeout_secs: 30,
            user: String::new(),
            allow_root: false,
            pop3: Pop3::default(),
            smtp: Smtp::default(),
            submission: Submission::default(),
            queue: Queue::default(),
            dkim: Dkim::default(),
            filter: Filter::default(),
            dns: Dns::default(),
            tls: Tls::default(),
            policy: Policy::default(),
            addresses: Addresses::default(),
            notices: Notices::default(),
            fetch_jobs: FetchJobs::default(),
            auth: Auth::default(),
            limits: Limits::default(),
            log: Log::default(),
            http: Http::default(),
            storage: Storage::default(),
        }
    }
}

/// The storage backend of the maildrops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One Maildir per user under `<data_dir>/mail` (the default).
    #[default]
    Maildir,
    /// PostgreSQL (`storage.url`): several `serve` processes on one
    /// database serve the same maildrops.
    Postgres,
}

/// Where mail is stored (`[storage]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// "maildir" (the default) or "postgres".
    pub backend: Backend,
    /// The PostgreSQL connection string (backend = "postgres"), libpq
    /// style: "postgres://postoffice@127.0.0.1:5432/postoffice", or
    /// "host=db1,db2 user=postoffice dbname=postoffice
    /// target_session_attrs=read-write" for a primary and its standby.
    /// Keep the password out of it: use `password_file`.
    pub url: String,
    /// A file holding the database password (first line), read at start.
    pub password_file: Option<PathBuf>,
    /// The CA certificates (PEM) the database's certificate must chain to
    /// when `url` says `sslmode=require` (the system's CAs otherwise;
    /// relative to the config file).
    pub ca_file: Option<PathBuf>,
    /// Most database connections this process keeps open.
    pub pool_size: u32,
    /// Seconds a POP3 session's hold on a maildrop lasts without being
    /// renewed: a node that dies (kill -9, power loss) frees its users'
    /// maildrops after this long. Its holder renews it every third of it.
    pub lease_secs: u64,
    /// Seconds to wait for a database connection before a temporary
    /// failure (SMTP 451 4.3.0, POP3 -ERR [SYS/TEMP]).
    pub connect_timeout_secs: u64,
    /// Seconds one database statement may run before it is cancelled (a
    /// stalled database gives temporary failures, not hung sessions).
    pub statement_timeout_secs: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::Maildir,
            url: String::new(),
            password_file: None,
            ca_file: None,
            pool_size: 16,
            lease_secs: 30,
            connect_timeout_secs: 5,
            statement_timeout_secs: 30,
        }
    }
}

impl Storage {
    /// `url` with any password in it replaced (for logs and `config show`).
    pub fn url_redacted(&self) -> String {
        redact_url_password(&self.url)
    }
}

/// Replaces the password of a `postgres://user:password@host` URL or a
/// `password=...` key of a key/value connection string.
fn redact_url_password(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{scheme}{}:<redacted>{}", &rest[..colon], &rest[at..]);
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=<redacted>".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The POP3 listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3 {
    /// Plain POP3 listeners (STLS offered). Production: ["0.0.0.0:110"].
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS POP3S listeners (RFC 8314). Production: ["0.0.0.0:995"].
    pub listen_tls: Vec<SocketAddr>,
    /// Allow USER/PASS/AUTH on unencrypted connections from non-loopback
    /// clients. Off by default (RFC 2595, RFC 8314).
    pub allow_plaintext_auth: bool,
    /// Idle time after which a session is closed (RFC 1939: at least 600).
    pub autologout_secs: u64,
    /// Longest command line accepted, in octets (RFC 2449: at least 255).
    pub max_line_length: usize,
    /// Invalid commands tolerated before the connection is closed.
    pub max_bad_commands: u32,
    /// Text after "+OK " in the greeting.
    pub greeting: String,
}

impl Default for Pop3 {
    fn default() -> Self {
        Pop3 {
            listen: vec![addr("127.0.0.1:2110")],
            listen_tls: vec![addr("127.0.0.1:2995")],
            allow_plaintext_auth: false,
            autologout_secs: 600,
            max_line_length: 1024,
            max_bad_commands: 20,
            greeting: "postoffice POP3 server ready.".into(),
        }
    }
}

/// The SMTP (MX) listener that receives mail for local users.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// SMTP listeners. Production: ["0.0.0.0:25"].
    pub listen: Vec<SocketAddr>,
    /// Largest message accepted, in octets (advertised with SIZE, RFC 1870).
    pub max_message_size: u64,
    /// Recipients per message (RFC 5321 4.5.3.1.8: at least 100).
    pub max_recipients: usize,
    /// Longest command line, in octets (RFC 5321 4.5.3.1.4: 512 plus
    /// extension parameters).
    pub max_line_length: usize,
    /// Seconds to wait for the next command (RFC 5321 4.5.3.2.7: 5 minutes).
    pub command_timeout_secs: u64,
    /// Seconds to wait for the next chunk of message data (RFC 5321
    /// 4.5.3.2.6: 10 minutes for the final dot; 3 minutes per block).
    pub data_timeout_secs: u64,
    /// Protocol errors tolerated before the connection is closed.
    pub max_errors: u32,
    /// Most header fields in one message (MX and submission); more get
    /// `552 5.3.4`.
    pub max_header_fields: usize,
    /// Most octets in a message's header section; more get `552 5.3.4`.
    pub max_header_bytes: usize,
    /// Connections one client (an IPv4 address, an IPv6 /64) may open to the
    /// MX port in any minute; beyond it the greeting is `421 4.7.0` and the
    /// connection is closed. 0 (default): no limit.
    pub max_connections_per_minute: u32,
    /// Transactions (MAIL FROM) one client (IPv4 address, IPv6 /64) may
    /// start on the MX port in any minute; beyond it MAIL FROM gets
    /// `451 4.7.1`. 0 (default): no limit.
    pub max_messages_per_minute: u32,
    /// Client IPs or CIDR networks the two rate limits above never apply to
    /// (besides `filter.ip_allow`). Default: loopback.
    pub rate_limit_exempt: Vec<String>,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            listen: vec![addr("127.0.0.1:2525")],
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 1000,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            max_errors: 10,
            max_header_fields: 1000,
            max_header_bytes: 256 * 1024,
            max_connections_per_minute: 0,
            max_messages_per_minute: 0,
            rate_limit_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
        }
    }
}

/// Mail submission for the server's own users (RFC 6409, RFC 8314).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Submission {
    /// Submission listeners with STARTTLS. Production: ["0.0.0.0:587"].
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS submission listeners. Production: ["0.0.0.0:465"].
    pub listen_tls: Vec<SocketAddr>,
    /// Offer AUTH without TLS to loopback clients (webmail or scripts on the
    /// same host). Non-loopback clients always need TLS first.
    pub allow_plaintext_auth_loopback: bool,
    /// Extra addresses a user may send as, besides their own:
    /// { "alice@example.test" = ["sales@example.test", "@example.test"] }
    /// ("@domain" allows every address of the domain).
    pub sender_aliases: std::collections::BTreeMap<String, Vec<String>>,
    /// Local (Unix) users whose `postoffice sendmail` may use any sender
    /// address. Everyone else may send only as `<login>@<hostname>` (and
    /// that address's sender_aliases).
    pub sendmail_trusted_users: Vec<String>,
    /// Most messages one authenticated user may submit in any hour; the
    /// next gets 451 4.7.0. 0 (default): no limit.
    pub max_messages_per_hour: u32,
    /// Most recipients one authenticated user may send to in any 24 hours
    /// (summed over messages); a message that would pass it gets 451 4.7.0.
    /// 0 (default): no limit.
    pub max_recipients_per_day: u32,
    /// Disable an account (as `postoffice user set ADDR --disabled true` does)
    /// once it has hit a sending limit this many times within 24 hours, so
    /// a stolen password stops working. 0 (default): never.
    pub disable_after_limit_hits: u32,
}

impl Default for Submission {
    fn default() -> Self {
        Submission {
            listen: vec![addr("127.0.0.1:2587")],
            listen_tls: vec![addr("127.0.0.1:2465")],
            allow_plaintext_auth_loopback: true,
            sender_aliases: std::collections::BTreeMap::new(),
            sendmail_trusted_users: vec!["root".into()],
            max_messages_per_hour: 0,
            max_recipients_per_day: 0,
            disable_after_limit_hits: 0,
        }
    }
}

/// How recipient addresses of local domains reach mailboxes: role addresses
/// every local domain has (RFC 5321 §4.5.1, RFC 2142: `postmaster@`, bare
/// `postmaster`, and `abuse@` are always accepted when they are not users
/// themselves, and delivered to the mailboxes named here), sub-addressing
/// and the limits of aliases (`postoffice alias`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Addresses {
    /// Local users that receive mail for postmaster@ and abuse@ of every
    /// local domain: ["admin@example.test"]. Empty (the default) = none; then
    /// those addresses are refused like unknown users, and `serve` and
    /// `config check` warn.
    pub postmaster: Vec<String>,
    /// Per-domain override of `postmaster`:
    /// { "example.org" = ["hostmaster@example.org"] }.
    pub domain_postmaster: std::collections::BTreeMap<String, Vec<String>>,
    /// A user's vacation auto-reply (`user set --vacation-file`) goes to
    /// each sender at most once in this many days (RFC 3834 §2).
    pub vacation_interval_days: u32,
    /// Bounces to an SRS address of ours (the envelope sender of forwarded
    /// mail) are accepted for this many days after the forwarding; older
    /// or forged ones are refused.
    pub srs_max_age_days: u32,
    /// Mail with more trace headers (`Received:`, `Delivered-To:`) than this
    /// is not forwarded any more: a forwarding loop is cut (refused 554).
    pub forward_max_hops: u32,
    /// Sub-addressing: `alice+tag@example.test` is delivered to
    /// `alice@example.test` when no user or alias has the whole address;
    /// the original address is kept in a `Delivered-To:` header. Every
    /// character of this string is a separator (like Postfix's
    /// recipient_delimiter); the local part is cut at the first one. Empty
    /// disables sub-addressing. Default "+".
    pub subaddress_separator: String,
    /// The most targets one alias may have (`postoffice alias add`
    /// refuses more, naming this key). Default 1000.
    pub max_alias_targets: usize,
    /// How deep aliases may point to aliases: an alias whose expansion
    /// needs more levels is refused by `alias add`, and mail for it is
    /// refused (550 5.4.6) rather than half delivered. Default 10.
    pub max_alias_depth: usize,
}

impl Default for Addresses {
    fn default() -> Self {
        Addresses {
            postmaster: Vec::new(),
            domain_postmaster: std::collections::BTreeMap::new(),
            vacation_interval_days: 7,
            srs_max_age_days: 21,
            forward_max_hops: 30,
            subaddress_separator: "+".into(),
            max_alias_targets: 1000,
            max_alias_depth: 10,
        }
    }
}

impl Addresses {
    /// The mailboxes that receive postmaster@ and abuse@ of `domain`.
    pub fn postmaster_of(&self, domain: &str) -> &[String] {
        let d = domain.to_ascii_lowercase();
        self.domain_postmaster
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&d))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&self.postmaster)
    }
}

/// The outbound queue: delivery of mail for other domains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// TCP port of remote MX servers (25; tests use another).
    pub remote_port: u16,
    /// Seconds between attempts: the n-th retry waits the n-th value; the
    /// last value repeats until max_age_secs.
    pub retry_schedule_secs: Vec<u64>,
    /// Give up and bounce after this many seconds (default 5 days).
    pub max_age_secs: u64,
    /// Send the sender a delay warning after this many seconds (0 = never).
    pub delay_warning_secs: u64,
    /// Concurrent deliveries in total.
    pub max_concurrency: usize,
    /// Concurrent deliveries to one destination domain.
    pub max_concurrency_per_domain: usize,
    /// Seconds to wait for a TCP connection, and for each reply.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for each reply of a remote server.
    pub command_timeout_secs: u64,
    /// Domains whose MX must offer STARTTLS (with a valid certificate);
    /// otherwise the message waits and is retried.
    pub require_tls_domains: Vec<String>,
    /// Send everything through this relay ("host:port"), like Postfix's
    /// relayhost. Empty: deliver by MX lookup.
    pub relayhost: String,
    /// Per-domain relays, overriding relayhost:
    /// { "example.org" = "relay.example.net:587" }, or with credentials of
    /// their own: { "example.org" = { relay = "...", user = "...",
    /// password_file = "..." } }.
    pub transports: std::collections::BTreeMap<String, Transport>,
    /// AUTH PLAIN credentials for relayhost (over TLS only); never sent to
    /// a transport, which carries its own.
    pub relay_user: String,
    /// The password of relay_user.
    pub relay_password: String,
    /// Read relay_password from this file at start instead (its first
    /// line; relative to the config file).
    pub relay_password_file: Option<PathBuf>,
    /// CA file to verify relays and MX servers with, instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            remote_port: 25,
            retry_schedule_secs: vec![300, 900, 1800, 3600, 7200, 14400],
            max_age_secs: 5 * 86_400,
            delay_warning_secs: 4 * 3600,
            max_concurrency: 20,
            max_concurrency_per_domain: 4,
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            require_tls_domains: Vec::new(),
            relayhost: String::new(),
            transports: std::collections::BTreeMap::new(),
            relay_user: String::new(),
            relay_password: String::new(),
            relay_password_file: None,
            ca_file: None,
        }
    }
}

/// A per-domain relay of `[queue.transports]`. In the file either a relay
/// spec, `"relay.example.net:587"`, or a table that may carry AUTH PLAIN
/// credentials for this relay only: `{ relay = "relay.example.net:587",
/// user = "u", password = "p" }` (or `password_file` instead of
/// `password`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    /// "host", "host:port", "[host]:port" or "[v6addr]:port".
    pub relay: String,
    /// AUTH PLAIN user for this relay; empty: no AUTH.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Read the password from this file at start instead (its first line;
    /// relative to the config file).
    pub password_file: Option<PathBuf>,
}

impl Transport {
    /// Whether the entry carries any credential key.
    fn has_credentials(&self) -> bool {
        !self.user.is_empty() || !self.password.is_empty() || self.password_file.is_some()
    }
}

impl From<&str> for Transport {
    fn from(relay: &str) -> Transport {
        Transport {
            relay: relay.to_string(),
            ..Transport::default()
        }
    }
}

impl From<String> for Transport {
    fn from(relay: String) -> Transport {
        Transport {
            relay,
            ..Transport::default()
        }
    }
}

/// The table form of [`Transport`] in the file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransportTable {
    relay: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_file: Option<PathBuf>,
}

impl Serialize for Transport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.has_credentials() {
            return s.serialize_str(&self.relay);
        }
        TransportTable {
            relay: self.relay.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            password_file: self.password_file.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Transport {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Transport, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Transport;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a relay \"host:port\" or a table { relay = \"host:port\", user = ..., password = ... }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, relay: &str) -> Result<Transport, E> {
                Ok(Transport::from(relay))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Transport, A::Error> {
                let t =
                    TransportTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Transport {
                    relay: t.relay,
                    user: t.user,
                    password: t.password,
                    password_file: t.password_file,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// DKIM signing of outgoing mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dkim {
    /// Sign mail submitted by our users when a key exists for the sender's
    /// domain (`postoffice dkim generate DOMAIN` creates one in
    /// data_dir/dkim/).
    pub sign: bool,
    /// The selector published in DNS: <selector>._domainkey.<domain>.
    pub selector: String,
}

impl Default for Dkim {
    fn default() -> Self {
        Dkim {
            sign: true,
            selector: "postoffice".into(),
        }
    }
}

/// What a verification stage does with a message that fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageMode {
    /// The stage is not run.
    Off,
    /// The result is recorded in headers only.
    Tag,
    /// A failing message is refused with a 5xx reply.
    Reject,
    /// A failing message is stored in the recipient's quarantine folder,
    /// which POP3 does not show (`postoffice quarantine`).
    Quarantine,
}

/// What to do when clamd cannot be reached or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse the message with a temporary error (451 4.7.1): the sender
    /// retries later. Nothing unscanned gets in.
    Closed,
    /// Accept it with an `X-Virus-Scan: skipped` header.
    Open,
}

/// The inbound verification pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// Client IPs or CIDR networks always allowed (skip the IP block list
    /// and DNSBLs), e.g. ["192.0.2.0/24", "2001:db8::/32"].
    pub ip_allow: Vec<String>,
    /// Client IPs or CIDR networks refused at connect (554 5.7.1).
    pub ip_block: Vec<String>,
    /// DNS block list zones (RFC 5782) queried at connect, e.g.
    /// ["zen.spamhaus.org"].
    pub dnsbl_zones: Vec<String>,
    /// off, tag or reject for a client listed in a DNSBL.
    pub dnsbl: StageMode,
    /// Envelope senders refused at MAIL FROM: addresses ("spam@example.net")
    /// or whole domains ("@example.net").
    pub sender_block: Vec<String>,
    /// SPF (RFC 7208): off, tag, reject (on "fail") or quarantine.
    pub spf: StageMode,
    /// DKIM (RFC 6376): off, tag, reject (no valid signature where one was
    /// present) or quarantine.
    pub dkim: StageMode,
    /// DMARC (RFC 7489): off, tag, reject (honour the domain's p=reject;
    /// p=quarantine quarantines) or quarantine (quarantine on any failure).
    pub dmarc: StageMode,
    /// Hours between quarantine digests: each user with messages
    /// quarantined since their last digest gets one message in their
    /// maildrop listing them (date, sender, subject, reason, how to release
    /// each), at most once per this many hours; 24 = daily. 0 (default):
    /// off. `postoffice quarantine digest` sends one now whatever this is
    /// (for cron).
    pub quarantine_digest_hours: u64,
    /// clamd address: "127.0.0.1:3310" (TCP) or "/run/clamav/clamd.ctl"
    /// (unix socket). Empty: no virus scanning.
    pub clamd: String,
    /// reject or quarantine an infected message (tag only adds a header).
    pub virus: StageMode,
    /// closed (451, default) or open (accept with X-Virus-Scan: skipped)
    /// when clamd is unreachable or times out.
    pub clamd_failure: FailMode,
    /// Seconds allowed for one clamd scan.
    pub clamd_timeout_secs: u64,
    /// rspamd address "host:port" of its normal worker (HTTP `/checkv2`),
    /// e.g. "127.0.0.1:11333". Empty (default): no content scoring.
    pub rspamd: String,
    /// Spam score from which a message gets `X-Spam-Status: Yes` (rspamd's
    /// add_header action; default 6).
    pub spam_tag: f64,
    /// Spam score from which a message is quarantined (default 10, between
    /// add_header and reject). At or above `spam_reject` it is refused.
    pub spam_quarantine: f64,
    /// Spam score from which a message is refused with 550 5.7.1 (rspamd's
    /// reject action; default 15).
    pub spam_reject: f64,
    /// closed (451, default) or open (accept with X-Spam-Status: Unknown)
    /// when rspamd is unreachable, times out or answers garbage.
    pub rspamd_failure: FailMode,
    /// Seconds allowed for one rspamd check.
    pub rspamd_timeout_secs: u64,
    /// Scan authenticated submissions with rspamd too (with the user name):
    /// at `spam_reject` the client gets 550 5.7.1 and nothing is sent; at
    /// `spam_quarantine` the message is held in the outbound queue
    /// (`postoffice queue release ID` sends it) and local recipients' copies
    /// go to their quarantine. Default false.
    pub scan_outbound: bool,
    /// Greylisting (RFC 6647) on the MX port: the first attempt of each
    /// (client /24 or /64, sender, recipient) is answered 451 4.7.1. Off by
    /// default.
    pub greylist: bool,
    /// Seconds a client must wait before its retry is accepted.
    pub greylist_delay_secs: u64,
    /// Seconds a triplet, and a client network that retried successfully
    /// (then allowed for everything), is remembered.
    pub greylist_lifetime_secs: u64,
    /// Client IPs or CIDR networks never greylisted.
    pub greylist_allow: Vec<String>,
    /// Sender domains never greylisted ("example.net").
    pub greylist_allow_domains: Vec<String>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            ip_allow: Vec::new(),
            ip_block: Vec::new(),
            dnsbl_zones: Vec::new(),
            dnsbl: StageMode::Reject,
            sender_block: Vec::new(),
            spf: StageMode::Tag,
            dkim: StageMode::Tag,
            dmarc: StageMode::Reject,
            quarantine_digest_hours: 0,
            clamd: String::new(),
            virus: StageMode::Reject,
            clamd_failure: FailMode::Closed,
            clamd_timeout_secs: 30,
            rspamd: String::new(),
            spam_tag: 6.0,
            spam_quarantine: 10.0,
            spam_reject: 15.0,
            rspamd_failure: FailMode::Closed,
            rspamd_timeout_secs: 30,
            scan_outbound: false,
            greylist: false,
            greylist_delay_secs: 300,
            greylist_lifetime_secs: 36 * 24 * 3600,
            greylist_allow: Vec::new(),
            greylist_allow_domains: Vec::new(),
        }
    }
}

/// DNS resolution for DNSBL, SPF, DKIM, DMARC (and MX lookups later).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Name servers as "address:port" (UDP and TCP). Empty: use
    /// /etc/resolv.conf. Tests point this at a DNS server on loopback.
    pub nameservers: Vec<SocketAddr>,
    /// Seconds per query.
    pub timeout_secs: u64,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: Vec::new(),
            timeout_secs: 5,
        }
    }
}

/// TLS certificates. Without any, a self-signed certificate for
/// `hostname` is generated in `data_dir/tls/` on first start.
///
/// Every pair (`cert`/`key` first, then each of `certificates`) answers
/// for the DNS names in its certificate (subjectAltName, wildcards
/// included): a client that asks for a name (SNI) gets the pair holding
/// it; one that asks for none, or for a name no pair holds, gets the first
/// pair. The files are read again on SIGHUP and when they change (checked
/// every `reload_check_secs`); a file that does not load keeps the pair
/// already in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// More certificate/key pairs, one per host name the server answers
    /// to: [{ cert = "...", key = "..." }, ...].
    pub certificates: Vec<CertKey>,
    /// Seconds between checks of the certificate files for a change (a
    /// renewal, a symlink swap). 0: reload only on SIGHUP.
    pub reload_check_secs: u64,
    /// Log a warning when a certificate expires within this many days.
    pub expiry_warning_days: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: None,
            key: None,
            certificates: Vec::new(),
            reload_check_secs: 5,
            expiry_warning_days: 14,
        }
    }
}

impl Tls {
    /// Every configured pair, `cert`/`key` first; empty when none is
    /// configured (then a self-signed one is generated).
    pub fn pairs(&self) -> Vec<CertKey> {
        let mut all = Vec::new();
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            all.push(CertKey {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        all.extend(self.certificates.iter().cloned());
        all
    }
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    /// PEM certificate chain (leaf first), e.g. certbot's fullchain.pem.
    pub cert: PathBuf,
    /// PEM private key, e.g. certbot's privkey.pem.
    pub key: PathBuf,
}

/// Provider policy defaults; domains and users may override them
/// (`postoffice domain set` / `postoffice user set`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Delete messages older than this many days. 0 = keep forever.
    pub retention_days: u32,
    /// Minimum seconds between two logins of one user (RFC 2449 LOGIN-DELAY).
    pub login_delay_secs: u32,
    /// How often the retention sweeper runs inside `serve`, in seconds.
    pub expire_interval_secs: u64,
    /// Files in a maildrop's tmp/ older than this are removed by the sweeper
    /// (half-written deliveries of a crashed process).
    pub tmp_max_age_secs: u64,
    /// What retention counts from: "delivery" (a message is deleted
    /// retention_days after it arrived) or "retrieval" (retention_days
    /// after a POP3 client first retrieved it, RFC 2449's EXPIRE wording;
    /// never-retrieved mail then follows retention_unretrieved_days).
    pub retention_from: RetentionFrom,
    /// With retention_from = "retrieval": delete mail nobody retrieved this
    /// many days after delivery. 0 = keep it until it is retrieved.
    pub retention_unretrieved_days: u32,
    /// Send the user one notice listing the messages retention will delete
    /// this many days before it does. 0 = no notices.
    pub retention_notice_days: u32,
    /// Warn the user (one message into the maildrop) when it crosses these
    /// percentages of its byte or message quota; again only after usage fell
    /// below. Empty = no warnings.
    pub quota_warning_percent: Vec<u8>,
    /// What a delivery to a full mailbox does: "refuse" (452/552, the
    /// sender retries or bounces) or "make_room" (delete the oldest
    /// messages a client already retrieved until the new one fits; never a
    /// message nobody has retrieved).
    pub over_quota: OverQuota,
    /// Seconds in a retention "day". A test knob: tests set 1 so retention,
    /// notices and the unretrieved limit run in seconds. Leave at 86400.
    pub retention_day_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retention_days: 0,
            login_delay_secs: 0,
            expire_interval_secs: 3600,
            tmp_max_age_secs: 36 * 3600,
            retention_from: RetentionFrom::Delivery,
            retention_unretrieved_days: 0,
            retention_notice_days: 3,
            quota_warning_percent: vec![80, 95],
            over_quota: OverQuota::Refuse,
            retention_day_secs: 86_400,
        }
    }
}

/// What retention counts from (`[policy] retention_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionFrom {
    /// The message's delivery.
    Delivery,
    /// The first time a POP3 client retrieved it.
    Retrieval,
}

/// What a delivery to a full mailbox does (`[policy] over_quota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverQuota {
    /// Refuse the message (452 4.2.2, or 552 5.2.2 when it alone is larger
    /// than the quota).
    Refuse,
    /// Delete the oldest already-retrieved messages until it fits.
    MakeRoom,
}

/// Users' accounts on other POP3 servers that the server pulls into their
/// maildrops (`postoffice user fetch add`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchJobs {
    /// Run the jobs inside `serve`.
    pub enabled: bool,
    /// Seconds between two runs of one job.
    pub interval_secs: u64,
    /// After failures a job waits interval_secs doubled per failure in a
    /// row, at most this many seconds.
    pub max_backoff_secs: u64,
}

impl Default for FetchJobs {
    fn default() -> Self {
        FetchJobs {
            enabled: true,
            interval_secs: 300,
            max_backoff_secs: 3600,
        }
    }
}

/// The texts of the messages postoffice delivers to users
/// (`[notices]`). Templates are files: an optional `Subject: ...` first
/// line, then the body, with `{placeholders}` (see the example config).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notices {
    /// Template of the quota warning; empty = the built-in text.
    pub quota_warning_template: String,
    /// Template of the retention notice; empty = the built-in text.
    pub retention_notice_template: String,
    /// Per-domain templates, overriding the two above:
    /// { "example.org" = { quota_warning_template = "...",
    /// retention_notice_template = "..." } }.
    pub domains: std::collections::BTreeMap<String, NoticeTemplates>,
}

/// One domain's templates (`[notices.domains."example.org"]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoticeTemplates {
    /// Template of the quota warning; empty = the server-wide one.
    pub quota_warning_template: String,
    /// Template of the retention notice; empty = the server-wide one.
    pub retention_notice_template: String,
}

impl Notices {
    /// The quota-warning template file for a user of `domain`, if any.
    pub fn quota_warning(&self, domain: &str) -> Option<&Path> {
        let d = self
            .domains
            .get(domain)
            .map(|t| t.quota_warning_template.as_str());
        [d.unwrap_or(""), self.quota_warning_template.as_str()]
            .into_iter()
            .find(|p| !p.is_empty())
            .map(Path::new)
    }

    /// The retention-notice template file for a user of `domain`, if any.
    pub fn retention_notice(&self, domain: &str) -> Option<&Path> {
        let d = self
            .domains
            .get(domain)
            .map(|t| t.retention_notice_template.as_str());
        [d.unwrap_or(""), self.retention_notice_template.as_str()]
            .into_iter()
            .find(|p| !p.is_empty())
            .map(Path::new)
    }
}

/// Brute-force protection for logins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Failures (per client IP and per user) before delays start.
    pub free_failures: u32,
    /// First delay, doubled with each further failure.
    pub base_delay_ms: u64,
    /// Longest delay.
    pub max_delay_ms: u64,
    /// Failures after which the IP or user is locked out.
    pub lockout_after: u32,
    /// How long a lockout lasts.
    pub lockout_secs: u64,
    /// Failures older than this are forgotten.
    pub forget_after_secs: u64,
    /// Seconds a verified password is remembered (as a keyed hash, in
    /// memory) so that the next login skips the slow hash; 0 turns the
    /// cache off. A password change, disable or delete ends it at once.
    pub cache_ttl_secs: u64,
    /// Most users remembered by the credential cache.
    pub cache_entries: usize,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            free_failures: 3,
            base_delay_ms: 1000,
            max_delay_ms: 15_000,
            lockout_after: 10,
            lockout_secs: 300,
            forget_after_secs: 900,
            cache_ttl_secs: 3600,
            cache_entries: 100_000,
        }
    }
}

/// Connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections over all listeners.
    pub max_connections: usize,
    /// Concurrent connections from one client IP address.
    pub max_connections_per_ip: usize,
    /// Seconds allowed for a TLS handshake.
    pub tls_handshake_timeout_secs: u64,
    /// A message (SMTP, submission, sendmail) larger than this is spooled
    /// to an anonymous file in `data_dir/spool` as it arrives instead of
    /// being held in memory.
    pub message_spill_bytes: usize,
    /// Message octets held in memory by all transactions together; past
    /// it, new content goes to the spool file at once.
    pub max_inflight_message_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 50,
            tls_handshake_timeout_secs: 30,
            message_spill_bytes: 256 * 1024,
            max_inflight_message_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// error, warn, info, debug or trace; or a tracing filter such as
    /// "info,postoffice_server=debug". RUST_LOG overrides it.
    pub level: String,
    /// "text" (one human-readable line per event) or "json" (one JSON
    /// object per line, for log shippers; the fields are listed in the
    /// README).
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The HTTP listener: the web pages for administrators and users, the JSON
/// API under `/api/`, Prometheus metrics at `/metrics` and mail client
/// autoconfiguration (Thunderbird autoconfig, Outlook autodiscover).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Plain HTTP listeners. Loopback by default: put a TLS proxy in front,
    /// or use listen_tls, before opening it to the network.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners with the server's certificate (`[tls]`).
    /// Production: ["0.0.0.0:443"] (autoconfig clients ask port 443).
    pub listen_tls: Vec<SocketAddr>,
    /// When set, `/metrics` answers only requests carrying
    /// `Authorization: Bearer <metrics_token>`. Empty: open to anyone who
    /// reaches the listener.
    pub metrics_token: String,
    /// Seconds a web sign-in stays valid.
    pub session_secs: u64,
    /// Largest request body accepted (forms, JSON, autodiscover), in
    /// octets; larger ones get 413.
    pub max_body_bytes: usize,
    /// Seconds one request may take (reading it included).
    pub request_timeout_secs: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: vec![addr("127.0.0.1:8080")],
            listen_tls: Vec::new(),
            metrics_token: String::new(),
            session_secs: 8 * 3600,
            max_body_bytes: 64 * 1024,
            request_timeout_secs: 30,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO pop3 session user=... ip=...`
    Text,
    /// `{"timestamp":"...","level":"INFO","message":"pop3 session","user":"..."}`
    Json,
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Parse "192.0.2.1", "192.0.2.0/24", "2001:db8::/32" into (network, prefix).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// Whether `ip` is inside the network `net/len`.
pub fn cidr_contains(net: std::net::IpAddr, len: u8, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// The machine's host name, or "localhost".
pub fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// Every address of the `listen` and `listen_tls` keys.
    pub fn listen_addrs(&self) -> impl Iterator<Item = &SocketAddr> {
        self.pop3
            .listen
            .iter()
            .chain(&self.pop3.listen_tls)
            .chain(&self.smtp.listen)
            .chain(&self.submission.listen)
            .chain(&self.submission.listen_tls)
            .chain(&self.http.listen)
            .chain(&self.http.listen_tls)
    }

    /// Parse TOML text. `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Load a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Check values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.hostname.is_empty()
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return bad("hostname must be a DNS name (letters, digits, '.', '-')");
        }
        if self.pop3.max_line_length < 255 {
            return bad("pop3.max_line_length must be at least 255 (RFC 2449)");
        }
        if self.pop3.autologout_secs < 600 {
            return bad("pop3.autologout_secs must be at least 600 (RFC 1939 section 3)");
        }
        if self.pop3.max_bad_commands == 0 {
            return bad("pop3.max_bad_commands must be at least 1");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key must be given together");
        }
        if !self.user.is_empty()
            && !self
                .user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return bad("user must be a system user name (letters, digits, '_', '-', '.')");
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_ip == 0 {
            return bad(
                "limits.max_connections and limits.max_connections_per_ip must be at least 1",
            );
        }
        if self.smtp.max_line_length < 512 {
            return bad("smtp.max_line_length must be at least 512 (RFC 5321 4.5.3.1.4)");
        }
        if self.smtp.max_recipients == 0 {
            return bad("smtp.max_recipients must be at least 1 (RFC 5321 asks for 100)");
        }
        if self.smtp.max_message_size < 1024 {
            return bad("smtp.max_message_size must be at least 1024");
        }
        if self.smtp.max_errors == 0 {
            return bad("smtp.max_errors must be at least 1");
        }
        if self
            .addresses
            .subaddress_separator
            .chars()
            .any(|c| !c.is_ascii_graphic() || matches!(c, '@' | '"' | '\\' | '.' | '%' | '/'))
        {
            return bad(
                "addresses.subaddress_separator must be printable ASCII characters other than @ . % / \\ and \" (\"+\" or \"-\", or empty to disable)",
            );
        }
        if self.addresses.max_alias_targets == 0 {
            return bad("addresses.max_alias_targets must be at least 1");
        }
        if self.storage.backend == Backend::Postgres && self.storage.url.trim().is_empty() {
            return bad(
                "storage.backend = \"postgres\" needs storage.url, e.g. \"postgres://postoffice@127.0.0.1:5432/postoffice\"",
            );
        }
        if self.storage.pool_size == 0 {
            return bad("storage.pool_size must be at least 1");
        }
        if self.storage.lease_secs < 3 || self.storage.lease_secs > 3600 {
            return bad("storage.lease_secs must be between 3 and 3600");
        }
        if self.storage.connect_timeout_secs == 0 || self.storage.statement_timeout_secs == 0 {
            return bad(
                "storage.connect_timeout_secs and storage.statement_timeout_secs must be at least 1",
            );
        }
        if self.addresses.max_alias_depth == 0 {
            return bad("addresses.max_alias_depth must be at least 1");
        }
        if self.filter.scan_outbound && self.filter.rspamd.trim().is_empty() {
            return bad("filter.scan_outbound needs filter.rspamd (the rspamd that scans)");
        }
        for net in &self.smtp.rate_limit_exempt {
            if parse_cidr(net).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "smtp.rate_limit_exempt: {net:?} is not an IP address or CIDR network"
                )));
            }
        }
        for net in self.filter.ip_allow.iter().chain(&self.filter.ip_block) {
            if parse_cidr(net).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "filter.ip_allow/ip_block: {net:?} is not an IP address or CIDR network"
                )));
            }
        }
        if self.filter.dnsbl == StageMode::Quarantine {
            return bad(
                "filter.dnsbl must be off, tag or reject (a connecting client has no message to quarantine yet)",
            );
        }
        if self.queue.retry_schedule_secs.is_empty() || self.queue.retry_schedule_secs.contains(&0)
        {
            return bad("queue.retry_schedule_secs must be a non-empty list of positive seconds");
        }
        if self.queue.max_concurrency == 0 || self.queue.max_concurrency_per_domain == 0 {
            return bad(
                "queue.max_concurrency and queue.max_concurrency_per_domain must be at least 1",
            );
        }
        let q = &self.queue;
        if !q.relay_password.is_empty() && q.relay_password_file.is_some() {
            return bad("queue.relay_password and queue.relay_password_file exclude each other");
        }
        if q.relay_user.is_empty() && q.relay_password_file.is_some() {
            return bad("queue.relay_password_file needs queue.relay_user");
        }
        for (domain, t) in &q.transports {
            if !t.password.is_empty() && t.password_file.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "queue.transports.{domain:?}: password and password_file exclude each other"
                )));
            }
            if t.user.is_empty() && (!t.password.is_empty() || t.password_file.is_some()) {
                return Err(ConfigError::Invalid(format!(
                    "queue.transports.{domain:?}: a password needs a user"
                )));
            }
        }
        if self.dkim.selector.is_empty()
            || !self
                .dkim
                .selector
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return bad("dkim.selector must be letters, digits, '-' or '.'");
        }
        if self.policy.expire_interval_secs == 0 {
            return bad("policy.expire_interval_secs must be at least 1");
        }
        if self.fetch_jobs.interval_secs == 0
            || self.fetch_jobs.max_backoff_secs < self.fetch_jobs.interval_secs
        {
            return bad(
                "fetch_jobs.interval_secs must be at least 1 and fetch_jobs.max_backoff_secs at least interval_secs",
            );
        }
        if self.policy.retention_day_secs == 0 {
            return bad("policy.retention_day_secs must be at least 1 (86400 outside tests)");
        }
        if self
            .policy
            .quota_warning_percent
            .iter()
            .any(|p| *p == 0 || *p > 100)
        {
            return bad("policy.quota_warning_percent must be percentages from 1 to 100");
        }
        if self.pop3.greeting.contains(['\r', '\n']) {
            return bad("pop3.greeting must be one line");
        }
        if self.http.session_secs < 60 {
            return bad("http.session_secs must be at least 60");
        }
        if self.http.max_body_bytes < 1024 {
            return bad("http.max_body_bytes must be at least 1024");
        }
        if self.http.request_timeout_secs == 0 {
            return bad("http.request_timeout_secs must be at least 1");
        }
        if self
            .http
            .metrics_token
            .bytes()
            .any(|b| !b.is_ascii_graphic())
        {
            return bad("http.metrics_token must be printable ASCII without spaces");
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `postoffice config check`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The configuration as TOML with every secret replaced by
    /// `"<redacted>"`, for showing on a terminal or in a log.
    pub fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        const REDACTED: &str = "<redacted>";
        if !shown.queue.relay_password.is_empty() {
            shown.queue.relay_password = REDACTED.into();
        }
        for t in shown.queue.transports.values_mut() {
            if !t.password.is_empty() {
                t.password = REDACTED.into();
            }
        }
        if !shown.http.metrics_token.is_empty() {
            shown.http.metrics_token = REDACTED.into();
        }
        shown.storage.url = shown.storage.url_redacted();
        shown.to_toml()
    }

    /// The keys that hold a secret written in the file itself (rather than
    /// in a `*_password_file`): the file must then be readable by its owner
    /// only.
    pub fn inline_secrets(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if !self.queue.relay_password.is_empty() {
            keys.push("queue.relay_password".to_string());
        }
        for (domain, t) in &self.queue.transports {
            if !t.password.is_empty() {
                keys.push(format!("queue.transports.{domain:?}.password"));
            }
        }
        if !self.http.metrics_token.is_empty() {
            keys.push("http.metrics_token".to_string());
        }
        if self.storage.url_redacted() != self.storage.url {
            keys.push("storage.url".to_string());
        }
        keys
    }

    /// A warning when `path` (this configuration's file) holds secrets and
    /// other users may read it; `None` when all is well.
    pub fn secrets_warning(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let secrets = self.inline_secrets();
        if secrets.is_empty() {
            return None;
        }
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} holds {} and other users can read it (mode {mode:04o}): run `chmod 600 {}`, \
                 or move the secret into a file named by the matching *_password_file key",
                path.display(),
                secrets.join(", "),
                path.display()
            )
        })
    }

    /// Resolve relative paths against `base` (the config file's directory
    /// for paths from a file; the working directory otherwise).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(c) = &mut self.tls.cert {
            fix(c);
        }
        if let Some(k) = &mut self.tls.key {
            fix(k);
        }
        for pair in &mut self.tls.certificates {
            fix(&mut pair.cert);
            fix(&mut pair.key);
        }
        if let Some(p) = &mut self.queue.relay_password_file {
            fix(p);
        }
        if let Some(p) = &mut self.storage.password_file {
            fix(p);
        }
        if let Some(p) = &mut self.storage.ca_file {
            fix(p);
        }
        let fix_str = |p: &mut String| {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
                *p = base.join(p.as_str()).display().to_string();
            }
        };
        fix_str(&mut self.notices.quota_warning_template);
        fix_str(&mut self.notices.retention_notice_template);
        for t in self.notices.domains.values_mut() {
            fix_str(&mut t.quota_warning_template);
            fix_str(&mut t.retention_notice_template);
        }
        for t in self.queue.transports.values_mut() {
            if let Some(p) = &mut t.password_file {
                fix(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c.pop3.listen, vec![addr("127.0.0.1:2110")]);
        assert_eq!(c.pop3.listen_tls, vec![addr("127.0.0.1:2995")]);
        assert_eq!(c.pop3.autologout_secs, 600);
        assert!(!c.pop3.allow_plaintext_auth);
    }

    #[test]
    fn unknown_key_is_rejected_with_name_and_line() {
        let err = Config::from_toml(
            "hostname = \"a.test\"\n\n[pop3]\nlisten_tsl = []\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listen_tsl"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("c.toml"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            "[pop3]\nmax_line_length = 10",
            "[pop3]\nautologout_secs = 5",
            "[tls]\ncert = \"a.pem\"",
            "hostname = \"bad host\"",
            "[pop3]\nlisten = [\"not an address\"]",
            "[http]\nsession_secs = 5",
            "[http]\nmax_body_bytes = 10",
            "[http]\nmetrics_token = \"has space\"",
            "[addresses]\nsubaddress_separator = \"@\"",
            "[addresses]\nsubaddress_separator = \"+ \"",
            "[addresses]\nsubaddress_separator = \"\\u0001\"",
            "[addresses]\nmax_alias_targets = 0",
            "[addresses]\nmax_alias_depth = 0",
        ] {
            assert!(Config::from_toml(bad, Path::new("x")).is_err(), "{bad}");
        }
    }

    #[test]
    fn address_rules_defaults_and_choices() {
        let c = Config::default();
        assert_eq!(c.addresses.subaddress_separator, "+");
        assert_eq!(c.addresses.max_alias_targets, 1000);
        assert_eq!(c.addresses.max_alias_depth, 10);
        for ok in ["", "+", "-+", "_"] {
            let text = format!("[addresses]\nsubaddress_separator = {ok:?}");
            assert!(Config::from_toml(&text, Path::new("x")).is_ok(), "{ok:?}");
        }
    }

    /// A transport is a relay spec, or a table with its own credentials;
    /// password files are relative to the config file.
    #[test]
    fn transports_in_both_forms() {
        let text = r#"
[queue]
relay_user = "global"
relay_password_file = "secrets/global.pass"

[queue.transports]
"plain.test" = "relay.plain.test:587"
"own.test" = { relay = "[relay.own.test]:2525", user = "own", password = "pw" }
"file.test" = { relay = "relay.file.test", user = "f", password_file = "secrets/f.pass" }
"#;
        let mut c = Config::from_toml(text, Path::new("x.toml")).unwrap();
        let t = &c.queue.transports;
        assert_eq!(t["plain.test"], Transport::from("relay.plain.test:587"));
        assert_eq!(
            t["own.test"],
            Transport {
                relay: "[relay.own.test]:2525".into(),
                user: "own".into(),
                password: "pw".into(),
                password_file: None,
            }
        );
        c.resolve_paths(Path::new("/etc/postoffice"));
        assert_eq!(
            c.queue.transports["file.test"].password_file.as_deref(),
            Some(Path::new("/etc/postoffice/secrets/f.pass"))
        );
        assert_eq!(
            c.queue.relay_password_file.as_deref(),
            Some(Path::new("/etc/postoffice/secrets/global.pass"))
        );
        // The rendering round-trips, the plain form staying plain.
        let rendered = c.to_toml();
        assert!(
            rendered.contains("\"plain.test\" = \"relay.plain.test:587\""),
            "{rendered}"
        );
        let back = Config::from_toml(&rendered, Path::new("x")).unwrap();
        assert_eq!(back.queue.transports, c.queue.transports);
        // Unknown keys in a transport are refused by name.
        let err = Config::from_toml(
            "[queue.transports]\n\"a.test\" = { relay = \"r\", passwd = \"x\" }\n",
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("passwd"), "{err}");
        for bad in [
            "[queue]\nrelay_user = \"u\"\nrelay_password = \"p\"\nrelay_password_file = \"f\"",
            "[queue]\nrelay_password_file = \"f\"",
            "[queue.transports]\n\"a.test\" = { relay = \"r\", user = \"u\", password = \"p\", password_file = \"f\" }",
            "[queue.transports]\n\"a.test\" = { relay = \"r\", password = \"p\" }",
            "[queue.transports]\n\"a.test\" = 25",
        ] {
            assert!(Config::from_toml(bad, Path::new("x")).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidr() {
        let (n, l) = parse_cidr("192.0.2.0/24").unwrap();
        assert!(cidr_contains(n, l, "192.0.2.77".parse().unwrap()));
        assert!(!cidr_contains(n, l, "192.0.3.1".parse().unwrap()));
        assert!(cidr_contains(n, l, "::ffff:192.0.2.5".parse().unwrap()));
        let (n, l) = parse_cidr("2001:db8::/32").unwrap();
        assert!(cidr_contains(n, l, "2001:db8:1::1".parse().unwrap()));
        assert!(!cidr_contains(n, l, "2001:db9::1".parse().unwrap()));
        let (n, l) = parse_cidr("10.1.2.3").unwrap();
        assert!(cidr_contains(n, l, "10.1.2.3".parse().unwrap()));
        assert!(!cidr_contains(n, l, "10.1.2.4".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nonsense").is_none());
        assert!(
            Config::from_toml("[filter]\nip_block = [\"1.2.3.4/99\"]", Path::new("x")).is_err()
        );
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::default();
        let text = c.to_toml();
        let back = Config::from_toml(&text, Path::new("x")).unwrap();
        assert_eq!(back.to_toml(), text);
    }

    /// Every key of the effective config appears in the shipped example, and
    /// the example itself loads: the documentation cannot fall behind.
    #[test]
    fn example_config_documents_every_key() {
        let example_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/postoffice.example.toml");
        let example = std::fs::read_to_string(&example_path).expect("example config exists");
        Config::from_toml(&example, &example_path).expect("example config is valid");
        let effective: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        fn keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                match v {
                    toml::Value::Table(sub) => keys(&format!("{prefix}{k}."), sub, out),
                    _ => out.push(format!("{prefix}{k}")),
                }
            }
        }
        let mut all = Vec::new();
        keys("", &effective, &mut all);
        // Options that are None by default are absent from the rendering.
        all.push("tls.cert".into());
        all.push("tls.key".into());
        all.push("queue.ca_file".into());
        all.push("queue.relay_password_file".into());
        all.push("storage.password_file".into());
        all.push("storage.ca_file".into());
        for key in all {
            let (section, name) = match key.rsplit_once('.') {
                Some((s, n)) => (Some(s), n),
                None => (None, key.as_str()),
            };
            let documented = example.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{name} =")) || l.starts_with(&format!("{name}="))
            });
            let has_section = section.is_none_or(|s| example.contains(&format!("[{s}]")));
            assert!(
                documented && has_section,
                "config key {key} is not documented in {}",
                example_path.display()
            );
        }
    }

    /// The production config (the Debian package's /etc/postoffice/
    /// postoffice.toml) loads and says what it is for: the standard ports,
    /// a user to switch to, real certificate paths.
    #[test]
    fn production_config_loads_with_standard_ports() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/postoffice.production.toml");
        let text = std::fs::read_to_string(&path).expect("production config exists");
        let c = Config::from_toml(&text, &path).expect("production config is valid");
        let ports = |l: &[SocketAddr]| l.iter().map(|a| a.port()).collect::<Vec<_>>();
        assert_eq!(ports(&c.pop3.listen), [110]);
        assert_eq!(ports(&c.pop3.listen_tls), [995]);
        assert_eq!(ports(&c.smtp.listen), [25]);
        assert_eq!(ports(&c.submission.listen), [587]);
        assert_eq!(ports(&c.submission.listen_tls), [465]);
        assert_eq!(c.user, "postoffice");
        assert!(!c.allow_root);
        assert_eq!(c.data_dir, Path::new("/var/lib/postoffice"));
        assert_eq!(c.tls.pairs().len(), 1);
    }

    #[test]
    fn several_certificates_and_the_log_format_parse() {
        let text = "[tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]\n\
                    reload_check_secs = 0\n[log]\nformat = \"json\"\n";
        let mut c = Config::from_toml(text, Path::new("x")).unwrap();
        c.resolve_paths(Path::new("/etc/postoffice"));
        assert_eq!(
            c.tls.pairs(),
            vec![CertKey {
                cert: "/etc/postoffice/a.pem".into(),
                key: "/etc/postoffice/a.key".into()
            }]
        );
        assert_eq!(c.log.format, LogFormat::Json);
        for bad in [
            "[log]\nformat = \"xml\"",
            "[tls]\ncertificates = [{ cert = \"a.pem\" }]",
            "user = \"bad user\"",
        ] {
            assert!(Config::from_toml(bad, Path::new("x")).is_err(), "{bad}");
        }
    }

    #[test]
    fn storage_url_passwords_are_redacted_and_postgres_needs_a_url() {
        for (url, shown) in [
            (
                "postgres://po:s3cret@db:5432/po",
                "postgres://po:<redacted>@db:5432/po",
            ),
            ("postgresql://po@db/po", "postgresql://po@db/po"),
            (
                "host=db user=po password=s3cret",
                "host=db user=po password=<redacted>",
            ),
        ] {
            let c = Config {
                storage: Storage {
                    url: url.into(),
                    ..Storage::default()
                },
                ..Config::default()
            };
            assert_eq!(c.storage.url_redacted(), shown);
            assert!(!c.to_toml_redacted().contains("s3cret"));
            assert_eq!(
                c.inline_secrets().contains(&"storage.url".to_string()),
                url.contains("s3cret")
            );
        }
        let err = Config::from_toml(
            "[storage]\nbackend = \"postgres\"",
            Path::new("/etc/p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.url"), "{err}");
        let mut c = Config::from_toml(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://po@127.0.0.1/po\"\npassword_file = \"db.pass\"",
            Path::new("/etc/postoffice/p.toml"),
        )
        .unwrap();
        c.resolve_paths(Path::new("/etc/postoffice"));
        assert_eq!(c.storage.backend, Backend::Postgres);
        assert_eq!(
            c.storage.password_file.as_deref(),
            Some(Path::new("/etc/postoffice/db.pass"))
        );
    }

    #[test]
    fn secrets_are_redacted_and_a_readable_file_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let text = "[queue]\nrelayhost = \"relay.test:587\"\nrelay_user = \"u\"\nrelay_password = \"hunter2\"\n\
                    [queue.transports]\n\"x.test\" = { relay = \"r.test:587\", user = \"v\", password = \"swordfish\" }\n\
                    [http]\nmetrics_token = \"tok3n-secret\"\n";
        let c = Config::from_toml(text, Path::new("c.toml")).unwrap();
        let shown = c.to_toml_redacted();
        assert!(
            !shown.contains("hunter2")
                && !shown.contains("swordfish")
                && !shown.contains("tok3n-secret"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(c.inline_secrets().len(), 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postoffice.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = c.secrets_warning(&path).expect("a warning");
        assert!(
            w.contains("queue.relay_password") && w.contains("chmod 600"),
            "{w}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.secrets_warning(&path), None);
        // No inline secret, no warning, whatever the mode.
        let plain = Config::from_toml("", Path::new("c.toml")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(plain.secrets_warning(&path), None);
    }
}

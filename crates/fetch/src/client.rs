//! The asynchronous POP3 client.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use pop3_proto::body::{BodyDecoder, Decoded};
use pop3_proto::client::{Status, parse_status};
use pop3_proto::client_codec::{
    Capabilities, apop_timestamp, parse_list_line, parse_stat, parse_uidl_line,
};
use pop3_proto::sasl;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::conn::{Conn, Deadline, Transport};
use crate::error::{Error, Limit, Result};
use crate::tls::{self, TlsMode, Trust};

/// Receives the protocol trace, one line at a time, already prefixed with
/// `C: ` (client) or `S: ` (server). Passwords never reach it: they are
/// replaced by `****` before the line is formed.
pub type Trace = Arc<dyn Fn(&str) + Send + Sync>;

/// How to log in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Choose: APOP on an unencrypted connection whose greeting offers a
    /// timestamp, else SASL PLAIN, else SASL LOGIN, else USER/PASS.
    #[default]
    Auto,
    /// `USER` / `PASS` (RFC 1939).
    User,
    /// `AUTH PLAIN` (RFC 4616, RFC 5034).
    Plain,
    /// `AUTH LOGIN`.
    Login,
    /// `APOP` (RFC 1939 section 7; MD5 of the greeting's timestamp and the
    /// password). Needs a greeting with a timestamp.
    Apop,
}

/// Where and how to connect. [`ConnectOptions::new`] fills in defaults.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Host name or IP address; also the name the certificate must carry.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Implicit TLS, STLS or none.
    pub tls: TlsMode,
    /// Which certificates to accept.
    pub trust: Trust,
    /// Limit for establishing the TCP connection.
    pub connect_timeout: Duration,
    /// Limit for every single read and write (including the TLS handshake).
    pub io_timeout: Duration,
    /// Longest response line accepted (status and listing lines; message
    /// bodies are streamed and have no line limit).
    pub max_line: usize,
    /// Largest message accepted by [`Client::retr`] / [`Client::top`], and
    /// the cap on [`Client::retr_listed`]'s budget.
    pub max_message_size: u64,
    /// Budget of one multi-line listing reply (CAPA, LIST, UIDL), in bytes;
    /// every line counts its length (with its line end) plus
    /// [`LISTING_LINE_OVERHEAD`], so that the budget also bounds what the
    /// client keeps of the reply.
    pub max_listing_bytes: u64,
    /// [`Client::retr_listed`]: a message may be at most this many times
    /// the size LIST announced...
    pub listed_size_factor: u64,
    /// ...plus this many bytes (and never more than `max_message_size`).
    pub listed_size_slack: u64,
    /// The whole session (connect to QUIT) must end within this; every
    /// network wait is cut short at the deadline. `None`: no deadline, only
    /// the per-read `io_timeout`.
    pub session_timeout: Option<Duration>,
    /// Protocol trace receiver (`--verbose`).
    pub trace: Option<Trace>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("trust", &self.trust)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("max_line", &self.max_line)
            .field("max_message_size", &self.max_message_size)
            .field("max_listing_bytes", &self.max_listing_bytes)
            .field("listed_size_factor", &self.listed_size_factor)
            .field("listed_size_slack", &self.listed_size_slack)
            .field("session_timeout", &self.session_timeout)
            .field("trace", &self.trace.is_some())
            .finish()
    }
}

impl ConnectOptions {
    /// Defaults: the conventional port for `tls`, system CA certificates,
    /// 30 s to connect, 60 s per read or write, one hour per session,
    /// 4096-byte lines, 16 MiB listings, messages of at most 4 times their
    /// listed size plus 1 MiB and never over 1 GiB, no trace.
    pub fn new(host: impl Into<String>, tls: TlsMode) -> Self {
        ConnectOptions {
            host: host.into(),
            port: tls.default_port(),
            tls,
            trust: Trust::System,
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(60),
            max_line: 4096,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_listing_bytes: DEFAULT_MAX_LISTING_BYTES,
            listed_size_factor: DEFAULT_LISTED_SIZE_FACTOR,
            listed_size_slack: DEFAULT_LISTED_SIZE_SLACK,
            session_timeout: Some(DEFAULT_SESSION_TIMEOUT),
            trace: None,
        }
    }
}

/// One message of the maildrop, from LIST (and UIDL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEntry {
    /// The message number (1-based, fixed for the session).
    pub number: u32,
    /// Size in octets as the server reports it.
    pub size: u64,
    /// The unique-id, when UIDL is supported.
    pub uid: Option<String>,
}

/// The result of [`Client::list_and_uidl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// All messages, in server order.
    pub messages: Vec<MessageEntry>,
    /// Whether the server answered UIDL (so every entry has a `uid`).
    pub uidl: bool,
}

/// How many commands are in flight at once when pipelining.
const PIPELINE_WINDOW: usize = 64;

/// What every line of a listing reply costs on top of its length, in
/// [`ConnectOptions::max_listing_bytes`]: about what the client keeps per
/// line (a [`MessageEntry`], a capability string), so that short lines
/// cannot multiply the memory a budget allows.
pub const LISTING_LINE_OVERHEAD: u64 = 64;
/// Default [`ConnectOptions::max_listing_bytes`]: 16 MiB, a UIDL listing
/// of about 150,000 messages with 40-character unique-ids.
pub const DEFAULT_MAX_LISTING_BYTES: u64 = 16 << 20;
/// Default [`ConnectOptions::max_message_size`]: 1 GiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1 << 30;
/// Default [`ConnectOptions::listed_size_factor`]: 4 (a server counting
/// bare LF line ends sends at most twice what it announces).
pub const DEFAULT_LISTED_SIZE_FACTOR: u64 = 4;
/// Default [`ConnectOptions::listed_size_slack`]: 1 MiB.
pub const DEFAULT_LISTED_SIZE_SLACK: u64 = 1 << 20;
/// Default [`ConnectOptions::session_timeout`]: one hour.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(3600);

/// A POP3 session.
///
/// Obtained with [`Client::connect`], which also performs the TLS setup
/// (implicit or STLS) and reads the capabilities; then [`Client::login`],
/// the transaction commands, and [`Client::quit`], whose `+OK` is what makes
/// the server carry out the deletions. Dropping a client without `quit`
/// deletes nothing.
///
/// After a transport failure, timeout or protocol violation the session is
/// *poisoned*: the connection is dropped and every further call fails with
/// [`Error::Poisoned`]. An `-ERR` reply or a failing message sink does not
/// poison it.
pub struct Client {
    conn: Conn,
    host: String,
    greeting: String,
    caps: Option<Capabilities>,
    trace: Option<Trace>,
    max_message_size: u64,
    max_listing_bytes: u64,
    listed_size_factor: u64,
    listed_size_slack: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("tls", &self.conn.is_tls())
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

fn is_fatal(e: &Error) -> bool {
    !matches!(
        e,
        Error::InUse(_)
            | Error::LoginDelay(_)
            | Error::Auth(_)
            | Error::SysTemp(_)
            | Error::SysPerm(_)
            | Error::Command { .. }
            | Error::Unsupported(_)
            | Error::Sink(_)
    )
}

impl Client {
    /// Connect, secure the connection as `opts.tls` says, read the greeting
    /// and the capabilities.
    ///
    /// With [`TlsMode::Starttls`] a server that does not list STLS in CAPA
    /// is refused with [`Error::StlsNotOffered`]; the client never falls
    /// back to plaintext.
    pub async fn connect(opts: &ConnectOptions) -> Result<Client> {
        let deadline = Deadline::new(&opts.host, opts.session_timeout);
        let addr = format!("{}:{}", opts.host, opts.port);
        let tls_config = match opts.tls {
            TlsMode::None => None,
            _ => Some(tls::client_config(&opts.trust)?),
        };
        let tcp = deadline
            .within(
                opts.connect_timeout,
                TcpStream::connect((opts.host.as_str(), opts.port)),
            )
            .await?
            .map_err(|source| Error::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let transport = match (&tls_config, opts.tls) {
            (Some(cfg), TlsMode::Implicit) => {
                handshake(cfg, &opts.host, tcp, opts.io_timeout, &deadline).await?
            }
            _ => Transport::Plain(tcp),
        };
        let mut client = Client {
            conn: Conn::new(transport, opts.io_timeout, deadline.clone(), opts.max_line),
            host: opts.host.clone(),
            greeting: String::new(),
            caps: None,
            trace: opts.trace.clone(),
            max_message_size: opts.max_message_size,
            max_listing_bytes: opts.max_listing_bytes,
            listed_size_factor: opts.listed_size_factor,
            listed_size_slack: opts.listed_size_slack,
        };
        client.greeting = client.read_ok("greeting", false).await?;
        client.caps = client.capa().await?;
        if opts.tls == TlsMode::Starttls {
            if !client.caps.as_ref().is_some_and(|c| c.stls) {
                client.conn.poison();
                return Err(Error::StlsNotOffered);
            }
            client.command("STLS", "STLS", false).await?;
            if client.conn.buffered() > 0 {
                // Anything after the +OK arrived in plaintext and could be
                // an injected response (CVE-2011-0411 class).
                client.conn.poison();
                return Err(Error::Protocol(
                    "the server sent data after its STLS reply".into(),
                ));
            }
            let tcp = client.conn.take_plain().ok_or(Error::Poisoned)?;
            let cfg = tls_config.as_ref().ok_or(Error::Poisoned)?;
            let tls = handshake(cfg, &opts.host, tcp, opts.io_timeout, &deadline).await?;
            client.conn.set_transport(tls);
            // RFC 2595 4: forget what was learned before TLS.
            client.caps = client.capa().await?;
        }
        Ok(client)
    }

    /// The greeting's text (after `+OK `).
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// The capabilities from the most recent CAPA, or `None` if the server
    /// does not support CAPA.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// Whether an earlier failure made the session unusable.
    pub fn is_poisoned(&self) -> bool {
        self.conn.is_poisoned()
    }

    fn trace(&self, line: &str) {
        if let Some(t) = &self.trace {
            t(line);
        }
    }

    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && is_fatal(e)
        {
            self.conn.poison();
        }
        r
    }

    /// Send one command line. `shown` is what the trace gets instead of
    /// the real line (passwords masked).
    async fn send_line(&mut self, line: &str, shown: &str) -> Result<()> {
        if self.conn.is_poisoned() {
            return Err(Error::Poisoned);
        }
        self.trace(&format!("C: {shown}"));
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        let r = self.conn.send(&data).await;
        self.guard(r)
    }

    async fn read_status(&mut self) -> Result<Status> {
        let r = async {
            let line = self.conn.read_line().await?;
            let shown = String::from_utf8_lossy(&line).into_owned();
            self.trace(&format!("S: {shown}"));
            parse_status(&line).map_err(|e| Error::Protocol(e.to_string()))
        }
        .await;
        self.guard(r)
    }

    /// Read a status line that must be `+OK`; returns its text.
    async fn read_ok(&mut self, command: &str, login: bool) -> Result<String> {
        let r = match self.read_status().await? {
            Status::Ok(text) => Ok(text),
            Status::Err { code, text } => Err(Error::from_err(command, code, text, login)),
            Status::Continue(_) => Err(Error::Protocol(format!(
                "unexpected continuation in reply to {command}"
            ))),
        };
        self.guard(r)
    }

    async fn command(&mut self, line: &str, name: &str, login: bool) -> Result<String> {
        self.send_line(line, line).await?;
        self.read_ok(name, login).await
    }

    /// Read the lines of a multi-line listing reply to `command` (after
    /// its `+OK`), handing each to `each` as it arrives: nothing is kept
    /// here. The reply may cost at most `max_listing_bytes` (each line its
    /// length plus [`LISTING_LINE_OVERHEAD`]); past that the session ends
    /// with [`Error::LimitExceeded`], the rest of the reply unread.
    async fn read_listing(
        &mut self,
        command: &str,
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let r = async {
            let mut dec = BodyDecoder::new();
            let mut spent: u64 = 0;
            loop {
                let raw = self.conn.read_line().await?;
                spent = spent.saturating_add(raw.len() as u64 + 2 + LISTING_LINE_OVERHEAD);
                if spent > self.max_listing_bytes {
                    return Err(Error::LimitExceeded {
                        server: self.host.clone(),
                        limit: Limit::ListingBytes {
                            command: command.to_string(),
                            limit: self.max_listing_bytes,
                        },
                    });
                }
                match dec.line(&raw) {
                    Decoded::End => return Ok(()),
                    Decoded::Line(l) => {
                        self.trace(&format!("S: {}", String::from_utf8_lossy(l)));
                        each(l)?;
                    }
                }
            }
        }
        .await;
        self.guard(r)
    }

    /// Ask for the capabilities (CAPA, RFC 2449) and remember them.
    /// `Ok(None)` if the server does not support CAPA.
    pub async fn capa(&mut self) -> Result<Option<Capabilities>> {
        self.send_line("CAPA", "CAPA").await?;
        let caps = match self.read_status().await? {
            Status::Ok(_) => {
                let mut caps = Capabilities::default();
                self.read_listing("CAPA", |l| {
                    caps.add_line(l);
                    Ok(())
                })
                .await?;
                Some(caps)
            }
            Status::Err { .. } => None,
            Status::Continue(_) => {
                let e = Error::Protocol("unexpected continuation in reply to CAPA".into());
                return self.guard(Err(e));
            }
        };
        self.caps = caps.clone();
        Ok(caps)
    }

    /// Log in. See [`AuthMethod`] for what `Auto` picks. Refusals come back
    /// as [`Error::Auth`] (or [`Error::InUse`], [`Error::LoginDelay`],
    /// [`Error::SysTemp`], [`Error::SysPerm`] when the server says so).
    pub async fn login(&mut self, user: &str, password: &str, method: AuthMethod) -> Result<()> {
        if user.contains(['\r', '\n']) || password.contains(['\r', '\n']) {
            return Err(Error::Auth(
                "user name or password contains a line break".into(),
            ));
        }
        let caps = self.caps.clone().unwrap_or_default();
        let timestamp = apop_timestamp(&self.greeting).map(str::to_string);
        let method = match method {
            AuthMethod::Auto => {
                if !self.is_tls() && timestamp.is_some() {
                    AuthMethod::Apop
                } else if caps.has_sasl("PLAIN") {
                    AuthMethod::Plain
                } else if caps.has_sasl("LOGIN") {
                    AuthMethod::Login
                } else {
                    AuthMethod::User
                }
            }
            m => m,
        };
        match method {
            AuthMethod::Auto | AuthMethod::User => {
                self.command(&format!("USER {user}"), "USER", true).await?;
                self.send_line(&format!("PASS {password}"), "PASS ****")
                    .await?;
                self.read_ok("PASS", true).await?;
            }
            AuthMethod::Apop => {
                let Some(ts) = timestamp else {
                    return Err(Error::Unsupported(
                        "APOP (the greeting has no timestamp)".into(),
                    ));
                };
                let digest = apop_digest(&ts, password);
                self.send_line(
                    &format!("APOP {user} {digest}"),
                    &format!("APOP {user} ****"),
                )
                .await?;
                self.read_ok("APOP", true).await?;
            }
            AuthMethod::Plain => {
                let mut msg = Vec::with_capacity(user.len() + password.len() + 2);
                msg.push(0);
                msg.extend_from_slice(user.as_bytes());
                msg.push(0);
                msg.extend_from_slice(password.as_bytes());
                let b64 = sasl::encode(&msg);
                // RFC 5034 4: the initial response must fit a 255-octet
                // command line; otherwise send it after an empty challenge.
                if b64.len() + "AUTH PLAIN ".len() <= 253 {
                    self.send_line(&format!("AUTH PLAIN {b64}"), "AUTH PLAIN ****")
                        .await?;
                } else {
                    self.send_line("AUTH PLAIN", "AUTH PLAIN").await?;
                    self.expect_continue("AUTH").await?;
                    self.send_line(&b64, "****").await?;
                }
                self.read_ok("AUTH", true).await?;
            }
            AuthMethod::Login => {
                self.send_line("AUTH LOGIN", "AUTH LOGIN").await?;
                self.expect_continue("AUTH").await?;
                self.send_line(&sasl::encode(user.as_bytes()), "****")
                    .await?;
                self.expect_continue("AUTH").await?;
                self.send_line(&sasl::encode(password.as_bytes()), "****")
                    .await?;
                self.read_ok("AUTH", true).await?;
            }
        }
        Ok(())
    }

    async fn expect_continue(&mut self, command: &str) -> Result<()> {
        let r = match self.read_status().await? {
            Status::Continue(_) => Ok(()),
            Status::Err { code, text } => Err(Error::from_err(command, code, text, true)),
            Status::Ok(_) => Err(Error::Protocol(format!(
                "{command}: +OK where a challenge was expected"
            ))),
        };
        self.guard(r)
    }

    /// STAT: (message count, total octets).
    pub async fn stat(&mut self) -> Result<(u64, u64)> {
        let text = self.command("STAT", "STAT", false).await?;
        let r = parse_stat(text.as_bytes()).map_err(|e| Error::Protocol(e.to_string()));
        self.guard(r)
    }

    /// LIST: every message with its size.
    pub async fn list(&mut self) -> Result<Vec<MessageEntry>> {
        self.command("LIST", "LIST", false).await?;
        self.read_list_body().await
    }

    async fn read_list_body(&mut self) -> Result<Vec<MessageEntry>> {
        let mut messages = Vec::new();
        self.read_listing("LIST", |l| {
            let (number, size) = parse_list_line(l).map_err(|e| Error::Protocol(e.to_string()))?;
            messages.push(MessageEntry {
                number,
                size,
                uid: None,
            });
            Ok(())
        })
        .await?;
        Ok(messages)
    }

    /// UIDL: every message's unique-id. [`Error::Command`] if the server
    /// does not support UIDL.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>> {
        self.command("UIDL", "UIDL", false).await?;
        self.read_uidl_body().await
    }

    async fn read_uidl_body(&mut self) -> Result<Vec<(u32, String)>> {
        let mut uids = Vec::new();
        self.read_listing("UIDL", |l| {
            uids.push(parse_uidl_line(l).map_err(|e| Error::Protocol(e.to_string()))?);
            Ok(())
        })
        .await?;
        Ok(uids)
    }

    /// Read a UIDL body into the `uid`s of `messages` (from LIST): lines
    /// for messages LIST did not show are ignored, so what is kept never
    /// outgrows the LIST reply.
    async fn read_uidl_into(&mut self, messages: &mut [MessageEntry]) -> Result<()> {
        let sorted = messages.windows(2).all(|w| w[0].number < w[1].number);
        let index: std::collections::HashMap<u32, usize> = if sorted {
            Default::default()
        } else {
            messages
                .iter()
                .enumerate()
                .map(|(i, m)| (m.number, i))
                .collect()
        };
        self.read_listing("UIDL", |l| {
            let (number, uid) = parse_uidl_line(l).map_err(|e| Error::Protocol(e.to_string()))?;
            let at = if sorted {
                messages.binary_search_by_key(&number, |m| m.number).ok()
            } else {
                index.get(&number).copied()
            };
            if let Some(i) = at {
                messages[i].uid = Some(uid);
            }
            Ok(())
        })
        .await
    }

    /// LIST and UIDL together, pipelined when the server advertises
    /// PIPELINING. A server without UIDL gives `uidl: false` (not an error).
    pub async fn list_and_uidl(&mut self) -> Result<Listing> {
        let pipelining = self.caps.as_ref().is_some_and(|c| c.pipelining);
        let mut messages = if pipelining {
            self.send_line("LIST\r\nUIDL", "LIST").await?;
            self.trace("C: UIDL");
            self.read_ok("LIST", false).await?;
            self.read_list_body().await?
        } else {
            self.list().await?
        };
        let uidl_reply = if pipelining {
            self.read_status().await?
        } else {
            self.send_line("UIDL", "UIDL").await?;
            self.read_status().await?
        };
        let uidl = match uidl_reply {
            Status::Ok(_) => {
                self.read_uidl_into(&mut messages).await?;
                true
            }
            Status::Err { code: None, .. } => false,
            Status::Err { code, text } => {
                return Err(Error::from_err("UIDL", code, text, false));
            }
            Status::Continue(_) => {
                let e = Error::Protocol("unexpected continuation in reply to UIDL".into());
                return self.guard(Err(e));
            }
        };
        if uidl && let Some(m) = messages.iter().find(|m| m.uid.is_none()) {
            let e = Error::Protocol(format!("UIDL has no entry for message {}", m.number));
            return self.guard(Err(e));
        }
        Ok(Listing { messages, uidl })
    }

    /// RETR: stream message `number` into `sink`, dot-stuffing removed and
    /// line ends as the server sent them (CRLF). The message is never held
    /// in memory whole: `sink` receives chunks of at most 64 KiB. Returns
    /// the number of bytes written.
    ///
    /// If the sink fails, the rest of the message is still read (and
    /// discarded) so the session stays usable, and [`Error::Sink`] is
    /// returned.
    ///
    /// A message larger than `max_message_size` ends the session with
    /// [`Error::LimitExceeded`]; [`Client::retr_listed`] also holds the
    /// server to the size it announced.
    pub async fn retr<W: Write + ?Sized>(&mut self, number: u32, sink: &mut W) -> Result<u64> {
        self.command(&format!("RETR {number}"), "RETR", false)
            .await?;
        self.body(sink, number, None).await
    }

    /// [`Client::retr`] for a message LIST announced as `listed` bytes: the
    /// message may be at most `listed_size_factor * listed +
    /// listed_size_slack` bytes (and never more than `max_message_size`);
    /// a server sending more ends the session with
    /// [`Error::LimitExceeded`] as soon as it passes that budget.
    pub async fn retr_listed<W: Write + ?Sized>(
        &mut self,
        number: u32,
        listed: u64,
        sink: &mut W,
    ) -> Result<u64> {
        self.command(&format!("RETR {number}"), "RETR", false)
            .await?;
        self.body(sink, number, Some(listed)).await
    }

    /// TOP: the header and the first `lines` body lines of a message,
    /// streamed like [`Client::retr`].
    pub async fn top<W: Write + ?Sized>(
        &mut self,
        number: u32,
        lines: u64,
        sink: &mut W,
    ) -> Result<u64> {
        self.command(&format!("TOP {number} {lines}"), "TOP", false)
            .await?;
        self.body(sink, number, None).await
    }

    /// The budget of message `number`, LIST-announced as `listed` bytes:
    /// the byte count, and the limit an error names.
    fn message_limit(&self, number: u32, listed: Option<u64>) -> (u64, Limit) {
        let by_listing = listed.map(|l| {
            l.saturating_mul(self.listed_size_factor)
                .saturating_add(self.listed_size_slack)
        });
        let (limit, absolute) = match by_listing {
            Some(b) if b < self.max_message_size => (b, false),
            _ => (self.max_message_size, true),
        };
        let named = Limit::MessageBytes {
            number,
            listed,
            limit,
            absolute,
        };
        (limit, named)
    }

    async fn body<W: Write + ?Sized>(
        &mut self,
        sink: &mut W,
        number: u32,
        listed: Option<u64>,
    ) -> Result<u64> {
        let (bytes, limit) = self.message_limit(number, listed);
        let server = self.host.clone();
        let r = self
            .conn
            .read_body(sink, bytes, move || Error::LimitExceeded { server, limit })
            .await;
        match &r {
            Ok(n) => self.trace(&format!("S: <message, {n} bytes>")),
            Err(Error::Sink(e)) => self.trace(&format!("S: <message, not stored: {e}>")),
            Err(_) => {}
        }
        self.guard(r)
    }

    /// DELE: mark one message for deletion (carried out at QUIT).
    pub async fn dele(&mut self, number: u32) -> Result<()> {
        self.command(&format!("DELE {number}"), "DELE", false)
            .await
            .map(drop)
    }

    /// DELE several messages, pipelined in batches when the server
    /// advertises PIPELINING. The outer error is a connection failure; the
    /// inner results are the server's answers, in the order of `numbers`.
    pub async fn dele_many(&mut self, numbers: &[u32]) -> Result<Vec<Result<()>>> {
        let pipelining = self.caps.as_ref().is_some_and(|c| c.pipelining);
        let window = if pipelining { PIPELINE_WINDOW } else { 1 };
        let mut results = Vec::with_capacity(numbers.len());
        for batch in numbers.chunks(window) {
            let text = batch
                .iter()
                .map(|n| format!("DELE {n}"))
                .collect::<Vec<_>>()
                .join("\r\n");
            if let Some(t) = &self.trace {
                for n in batch {
                    t(&format!("C: DELE {n}"));
                }
            }
            let data = format!("{text}\r\n");
            if self.conn.is_poisoned() {
                return Err(Error::Poisoned);
            }
            let r = self.conn.send(data.as_bytes()).await;
            self.guard(r)?;
            for _ in batch {
                let r = match self.read_status().await? {
                    Status::Ok(_) => Ok(()),
                    Status::Err { code, text } => Err(Error::from_err("DELE", code, text, false)),
                    Status::Continue(_) => {
                        let e = Error::Protocol("unexpected continuation in reply to DELE".into());
                        return self.guard(Err(e));
                    }
                };
                results.push(r);
            }
        }
        Ok(results)
    }

    /// RSET: unmark all messages marked for deletion.
    pub async fn rset(&mut self) -> Result<()> {
        self.command("RSET", "RSET", false).await.map(drop)
    }

    /// NOOP.
    pub async fn noop(&mut self) -> Result<()> {
        self.command("NOOP", "NOOP", false).await.map(drop)
    }

    /// QUIT: end the session. Only an `Ok` here means the server committed
    /// the deletions; on any error assume nothing was deleted (and the
    /// messages may or may not be gone: the next session will tell).
    pub async fn quit(mut self) -> Result<()> {
        self.command("QUIT", "QUIT", false).await?;
        self.conn.shutdown().await;
        Ok(())
    }
}

async fn handshake(
    cfg: &Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
    timeout: Duration,
    deadline: &Deadline,
) -> Result<Transport> {
    let name = tls::server_name(host)?;
    let connector = TlsConnector::from(Arc::clone(cfg));
    let stream = deadline
        .within(timeout, connector.connect(name, tcp))
        .await?
        .map_err(|e| tls::handshake_error(host, e))?;
    Ok(Transport::Tls(Box::new(stream)))
}

/// The APOP digest: lower-case hex MD5 of the timestamp followed by the
/// password (RFC 1939 section 7).
pub(crate) fn apop_digest(timestamp: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(timestamp.as_bytes());
    h.update(password.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apop_digest_matches_rfc1939_example() {
        assert_eq!(
            apop_digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }
}

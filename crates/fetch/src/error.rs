//! The POP3 client's error type.

use std::io;
use std::time::Duration;

use pop3_proto::client::RespCode;

/// Everything that can go wrong talking to a POP3 server.
///
/// The RFC 2449/3206 response codes each have their own variant
/// ([`Error::InUse`], [`Error::LoginDelay`], [`Error::Auth`],
/// [`Error::SysTemp`], [`Error::SysPerm`]) so callers can decide whether to
/// retry; [`Error::is_temporary`] makes that decision for the common case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be established.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port` as configured.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A read, write, connect or handshake took longer than allowed.
    #[error("timed out after {0:?} waiting for the server")]
    Timeout(Duration),
    /// The connection failed (reset, broken pipe, ...).
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    /// The server closed the connection unexpectedly.
    #[error("the server closed the connection")]
    Closed,
    /// The server's certificate was not accepted.
    #[error(
        "TLS certificate of {host} not accepted: {message} (set ca_file to the CA that issued it; \
         --insecure skips verification, which lets anyone on the path read your password)"
    )]
    Certificate {
        /// The name the certificate was checked against.
        host: String,
        /// Why verification failed.
        message: String,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with {host} failed: {message}")]
    Tls {
        /// The server name.
        host: String,
        /// What rustls reported.
        message: String,
    },
    /// The TLS settings are unusable (unreadable CA file, bad server name, ...).
    #[error("TLS setup: {0}")]
    TlsConfig(String),
    /// `tls = "starttls"` was requested but the server does not offer STLS.
    /// The client never falls back to plaintext.
    #[error(
        "the server does not offer STLS; refusing to continue without TLS \
         (use tls = \"implicit\" on port 995, or tls = \"none\" if you really mean it)"
    )]
    StlsNotOffered,
    /// A response line exceeded the configured limit (a broken or hostile
    /// server).
    #[error("the server sent a line longer than {0} bytes")]
    LineTooLong(usize),
    /// The server's response could not be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// `-ERR [IN-USE]`: another session holds the maildrop.
    #[error("mailbox in use: {0}")]
    InUse(String),
    /// `-ERR [LOGIN-DELAY]`: logged in too recently.
    #[error("logged in too recently (LOGIN-DELAY): {0}")]
    LoginDelay(String),
    /// Authentication refused (`-ERR [AUTH]`, or a plain `-ERR` to a login
    /// command).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// `-ERR [SYS/TEMP]`: a temporary server problem.
    #[error("temporary server failure: {0}")]
    SysTemp(String),
    /// `-ERR [SYS/PERM]`: a permanent server problem.
    #[error("permanent server failure: {0}")]
    SysPerm(String),
    /// Any other `-ERR` reply.
    #[error("{command} refused: {text}")]
    Command {
        /// The command, without arguments.
        command: String,
        /// The server's text.
        text: String,
    },
    /// Something needed is not supported by the server (a SASL mechanism,
    /// APOP without a timestamp, UIDL, ...).
    #[error("not supported by the server: {0}")]
    Unsupported(String),
    /// The server went past one of the limits that protect the client
    /// from a broken or hostile server (a listing or a message larger than
    /// its budget, a session longer than its deadline). The connection is
    /// abandoned without QUIT, so the server deletes nothing.
    #[error("{server}: {limit}; stopping, nothing more is fetched or deleted in this session")]
    LimitExceeded {
        /// The server, as configured.
        server: String,
        /// Which limit, with its value.
        limit: Limit,
    },
    /// Writing the message to the caller's sink failed. The response was
    /// read to its end, so the session is still usable.
    #[error("writing the message failed: {0}")]
    Sink(#[source] io::Error),
    /// An earlier error left the connection in an unknown state.
    #[error("the connection is unusable after an earlier error")]
    Poisoned,
}

impl Error {
    /// True for failures that may go away by themselves (network trouble,
    /// a session over its deadline, a locked mailbox, LOGIN-DELAY,
    /// `[SYS/TEMP]`), false for those that
    /// need someone to change something (wrong password, certificate,
    /// `[SYS/PERM]`, missing server features).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Timeout(_)
                | Error::LimitExceeded {
                    limit: Limit::SessionDeadline(_),
                    ..
                }
                | Error::Io(_)
                | Error::Closed
                | Error::InUse(_)
                | Error::LoginDelay(_)
                | Error::SysTemp(_)
        )
    }

    /// Map an `-ERR` reply to an error. `login` says whether the command was
    /// part of authentication, where a reply without a code means the
    /// credentials were refused.
    pub(crate) fn from_err(
        command: &str,
        code: Option<RespCode>,
        text: String,
        login: bool,
    ) -> Self {
        match code {
            Some(RespCode::InUse) => Error::InUse(text),
            Some(RespCode::LoginDelay) => Error::LoginDelay(text),
            Some(RespCode::Auth) => Error::Auth(text),
            Some(RespCode::SysTemp) => Error::SysTemp(text),
            Some(RespCode::SysPerm) => Error::SysPerm(text),
            _ if login => Error::Auth(text),
            _ => Error::Command {
                command: command.to_string(),
                text,
            },
        }
    }
}

/// The limit behind an [`Error::LimitExceeded`], named as the accounts file
/// names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// A multi-line listing reply (CAPA, LIST, UIDL) grew past its byte
    /// budget (`max_listing_bytes`; each line counts its length plus
    /// [`LISTING_LINE_OVERHEAD`](crate::client::LISTING_LINE_OVERHEAD)).
    ListingBytes {
        /// The command whose reply it was.
        command: String,
        /// The budget in bytes.
        limit: u64,
    },
    /// A message grew past its budget: `listed_size_factor` times the size
    /// LIST announced plus `listed_size_slack`, and never more than
    /// `max_message_size`.
    MessageBytes {
        /// The message number.
        number: u32,
        /// The size LIST announced, when it is known.
        listed: Option<u64>,
        /// The budget in bytes.
        limit: u64,
        /// Whether the budget is `max_message_size` itself.
        absolute: bool,
    },
    /// The session lasted longer than `session_timeout_secs`.
    SessionDeadline(Duration),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::ListingBytes { command, limit } => write!(
                f,
                "its reply to {command} is larger than {limit} bytes (max_listing_bytes)"
            ),
            Limit::MessageBytes {
                number,
                listed,
                limit,
                absolute,
            } => {
                write!(f, "message {number} is larger than {limit} bytes")?;
                if let Some(listed) = listed {
                    write!(f, ", although LIST announced {listed} bytes")?;
                }
                if *absolute || listed.is_none() {
                    write!(f, " (max_message_size)")
                } else {
                    write!(f, " (listed_size_factor, listed_size_slack)")
                }
            }
            Limit::SessionDeadline(d) => write!(
                f,
                "the session took longer than {} s (session_timeout_secs)",
                d.as_secs_f64()
            ),
        }
    }
}

/// Shorthand for results of this crate's client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The accounts file of `postoffice fetch` (`fetch.toml`).
//!
//! See `crates/fetch/fetch.example.toml` for every key with its meaning.
//! Unknown keys are errors (with their line), because a misspelt
//! `policy` that silently falls back to the default could delete mail
//! someone meant to keep.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use crate::client::{
    AuthMethod, ConnectOptions, DEFAULT_LISTED_SIZE_FACTOR, DEFAULT_LISTED_SIZE_SLACK,
    DEFAULT_MAX_LISTING_BYTES, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_SESSION_TIMEOUT,
};
use crate::tls::{TlsMode, Trust};

/// A configuration problem (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid accounts file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Values that parse but do not make sense together.
    #[error("account {account:?}: {message}")]
    Invalid {
        /// The account's name (or its position when nameless).
        account: String,
        /// What is wrong.
        message: String,
    },
    /// Something else (no accounts, unknown `--account`, no home directory).
    #[error("{0}")]
    Other(String),
}

/// A password that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a password.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

/// What to do with messages on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Delete every message once it is safely delivered (the default).
    Delete,
    /// Leave everything on the server; download each message once.
    Keep,
    /// Download new messages; delete those first downloaded more than this
    /// many days ago.
    DeleteAfterDays(u32),
    /// Download new messages; delete all but the newest N (server order).
    KeepNewest(u32),
}

impl Policy {
    /// Whether the policy leaves messages on the server and so must tell
    /// old ones from new ones by UIDL.
    pub fn needs_uidl(self) -> bool {
        !matches!(self, Policy::Delete)
    }

    /// The name used in the accounts file.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Delete => "delete",
            Policy::Keep => "keep",
            Policy::DeleteAfterDays(_) => "delete_after_days",
            Policy::KeepNewest(_) => "keep_newest",
        }
    }
}

/// Where fetched messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A Maildir (created if missing): `tmp/`, `new/`, `cur/`.
    Maildir(PathBuf),
    /// An mbox file (mboxrd), locked with flock and a `.lock` file.
    Mbox(PathBuf),
    /// A command run with `/bin/sh -c`, given the message on stdin; exit
    /// status 0 means delivered.
    Command(String),
    /// A destination implemented by the program using this library (the
    /// server's fetch jobs deliver into postoffice maildrops); never read
    /// from an accounts file.
    Custom(crate::deliver::CustomDestination),
}

/// Where the password comes from.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// Written in the accounts file.
    Literal(Secret),
    /// The first line of this command's output (`/bin/sh -c`).
    Command(String),
}

/// One validated account.
#[derive(Debug)]
pub struct Account {
    /// Name used in messages, `--account` and the default state file.
    pub name: String,
    /// Server host name or address.
    pub server: String,
    /// Port (defaulted from `tls`).
    pub port: u16,
    /// Transport security.
    pub tls: TlsMode,
    /// CA file for verifying the server, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (dangerous).
    pub insecure: bool,
    /// Login name.
    pub user: String,
    /// The password or how to get it.
    pub password: PasswordSource,
    /// Login method.
    pub auth: AuthMethod,
    /// What happens to messages on the server.
    pub policy: Policy,
    /// The state file (UIDLs delivered, with first-seen times).
    pub state_file: PathBuf,
    /// Where messages go.
    pub destination: Destination,
    /// Limit for each network read/write.
    pub timeout: Duration,
    /// Limit for the whole session, connect to QUIT.
    pub session_timeout: Duration,
    /// Largest message accepted.
    pub max_message_size: u64,
    /// Budget of one listing reply (CAPA, LIST, UIDL); see
    /// [`ConnectOptions::max_listing_bytes`].
    pub max_listing_bytes: u64,
    /// A message may be at most this many times its LIST size...
    pub listed_size_factor: u64,
    /// ...plus this many bytes (and at most `max_message_size`).
    pub listed_size_slack: u64,
    resolved_password: OnceLock<Secret>,
}

impl Account {
    /// A minimal account (mainly for programs and tests that build
    /// accounts in code): implicit TLS on the default port, `auth = auto`,
    /// `policy = delete`, 60 s timeout, one-hour sessions, and the
    /// [`ConnectOptions::new`] size limits.
    pub fn new(
        name: impl Into<String>,
        server: impl Into<String>,
        user: impl Into<String>,
        password: Secret,
        destination: Destination,
        state_file: PathBuf,
    ) -> Self {
        Account {
            name: name.into(),
            server: server.into(),
            port: TlsMode::Implicit.default_port(),
            tls: TlsMode::Implicit,
            ca_file: None,
            insecure: false,
            user: user.into(),
            password: PasswordSource::Literal(password),
            auth: AuthMethod::Auto,
            policy: Policy::Delete,
            state_file,
            destination,
            timeout: Duration::from_secs(60),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_listing_bytes: DEFAULT_MAX_LISTING_BYTES,
            listed_size_factor: DEFAULT_LISTED_SIZE_FACTOR,
            listed_size_slack: DEFAULT_LISTED_SIZE_SLACK,
            resolved_password: OnceLock::new(),
        }
    }

    /// The password, running `password_command` the first time it is
    /// needed (the result is cached for the life of the process).
    pub fn password(&self) -> Result<Secret, String> {
        if let Some(p) = self.resolved_password.get() {
            return Ok(p.clone());
        }
        let secret = match &self.password {
            PasswordSource::Literal(s) => s.clone(),
            PasswordSource::Command(cmd) => run_password_command(cmd)?,
        };
        let _ = self.resolved_password.set(secret.clone());
        Ok(secret)
    }

    /// Connection options for this account. `insecure_override` is the
    /// command line's `--insecure`.
    pub fn connect_options(&self, insecure_override: bool) -> ConnectOptions {
        let mut o = ConnectOptions::new(self.server.clone(), self.tls);
        o.port = self.port;
        o.trust = if self.insecure || insecure_override {
            Trust::Insecure
        } else if let Some(ca) = &self.ca_file {
            Trust::CaFile(ca.clone())
        } else {
            Trust::System
        };
        o.io_timeout = self.timeout;
        o.connect_timeout = self.timeout.min(Duration::from_secs(30));
        o.max_message_size = self.max_message_size;
        o.max_listing_bytes = self.max_listing_bytes;
        o.listed_size_factor = self.listed_size_factor;
        o.listed_size_slack = self.listed_size_slack;
        o.session_timeout = Some(self.session_timeout);
        o
    }
}

fn run_password_command(cmd: &str) -> Result<Secret, String> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run password_command: {e}"))?;
    if !out.status.success() {
        return Err(format!("password_command failed ({})", out.status));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| "password_command printed invalid UTF-8".to_string())?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err("password_command printed nothing".into());
    }
    Ok(Secret(line.to_string()))
}

/// The whole accounts file.
#[derive(Debug)]
pub struct FetchConfig {
    /// The accounts in file order.
    pub accounts: Vec<Account>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    account: Vec<RawAccount>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawPolicy {
    Delete,
    Keep,
    DeleteAfterDays,
    KeepNewest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    server: String,
    port: Option<u16>,
    #[serde(default)]
    tls: TlsMode,
    ca_file: Option<String>,
    #[serde(default)]
    insecure: bool,
    user: String,
    password: Option<Secret>,
    password_command: Option<String>,
    #[serde(default)]
    auth: AuthMethod,
    policy: Option<RawPolicy>,
    days: Option<u32>,
    keep_newest: Option<u32>,
    state_file: Option<String>,
    timeout_secs: Option<u64>,
    session_timeout_secs: Option<u64>,
    max_message_size: Option<u64>,
    max_listing_bytes: Option<u64>,
    listed_size_factor: Option<u64>,
    listed_size_slack: Option<u64>,
    destination: RawDestination,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    maildir: Option<String>,
    mbox: Option<String>,
    command: Option<String>,
}

/// The home directory ($HOME).
pub(crate) fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Default accounts file: `$POSTOFFICE_FETCH_CONFIG` is handled by the
/// command line; this is `~/.config/postoffice/fetch.toml`
/// (`$XDG_CONFIG_HOME/postoffice/fetch.toml` when that is set).
pub(crate) fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home_dir().map(|h| h.join(".config")))?;
    Some(base.join("postoffice").join("fetch.toml"))
}

fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home_dir().map(|h| h.join(".local").join("state")))?;
    Some(base.join("postoffice"))
}

/// Expand `~/` and make a relative path relative to `base`.
fn expand(path: &str, base: &Path) -> Result<PathBuf, String> {
    let p = if let Some(rest) = path.strip_prefix("~/") {
        home_dir()
            .ok_or_else(|| format!("cannot expand {path:?}: HOME is not set"))?
            .join(rest)
    } else if path == "~" {
        home_dir().ok_or_else(|| format!("cannot expand {path:?}: HOME is not set"))?
    } else {
        PathBuf::from(path)
    };
    Ok(if p.is_relative() { base.join(p) } else { p })
}

impl FetchConfig {
    /// Read and validate an accounts file. Relative paths in it are
    /// relative to the file's directory; `~/` means the home directory.
    pub fn load(path: &Path) -> Result<FetchConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, path, &base)
    }

    /// Parse accounts-file text; `path` is for messages, `base` anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<FetchConfig, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut accounts: Vec<Account> = Vec::new();
        for (i, a) in raw.account.into_iter().enumerate() {
            let label = if a.name.is_empty() {
                format!("#{}", i + 1)
            } else {
                a.name.clone()
            };
            let acct = validate(a, base).map_err(|message| ConfigError::Invalid {
                account: label,
                message,
            })?;
            if accounts.iter().any(|o| o.name == acct.name) {
                return Err(ConfigError::Invalid {
                    account: acct.name,
                    message: "two accounts have this name".into(),
                });
            }
            accounts.push(acct);
        }
        Ok(FetchConfig { accounts })
    }
}

fn validate(a: RawAccount, base: &Path) -> Result<Account, String> {
    if a.name.is_empty()
        || a.name.len() > 64
        || !a
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        || a.name.starts_with('.')
    {
        return Err(
            "name must be 1 to 64 characters of letters, digits, '.', '_', '-', '@' (it names the state file)"
                .into(),
        );
    }
    if a.server.is_empty() || a.server.contains(char::is_whitespace) {
        return Err("server must be a host name or address".into());
    }
    if a.user.is_empty() || a.user.contains(['\r', '\n']) {
        return Err("user must be given".into());
    }
    let password = match (a.password, a.password_command) {
        (Some(p), None) => {
            if p.0.is_empty() || p.0.contains(['\r', '\n']) {
                return Err("password must be one non-empty line".into());
            }
            PasswordSource::Literal(p)
        }
        (None, Some(c)) if !c.trim().is_empty() => PasswordSource::Command(c),
        (None, Some(_)) => return Err("password_command is empty".into()),
        (Some(_), Some(_)) => {
            return Err("give either password or password_command, not both".into());
        }
        (None, None) => return Err("password or password_command is required".into()),
    };
    let policy = match a.policy.unwrap_or(RawPolicy::Delete) {
        RawPolicy::Delete => Policy::Delete,
        RawPolicy::Keep => Policy::Keep,
        RawPolicy::DeleteAfterDays => match a.days {
            Some(d) => Policy::DeleteAfterDays(d),
            None => return Err("policy = \"delete_after_days\" needs days = N".into()),
        },
        RawPolicy::KeepNewest => match a.keep_newest {
            Some(n) => Policy::KeepNewest(n),
            None => return Err("policy = \"keep_newest\" needs keep_newest = N".into()),
        },
    };
    if a.days.is_some() && !matches!(policy, Policy::DeleteAfterDays(_)) {
        return Err("days only applies to policy = \"delete_after_days\"".into());
    }
    if a.keep_newest.is_some() && !matches!(policy, Policy::KeepNewest(_)) {
        return Err("keep_newest only applies to policy = \"keep_newest\"".into());
    }
    if a.tls == TlsMode::None && (a.ca_file.is_some() || a.insecure) {
        return Err("ca_file and insecure make no sense with tls = \"none\"".into());
    }
    if a.port == Some(0) {
        return Err("port 0 is not a valid port".into());
    }
    let destination = match (
        a.destination.maildir,
        a.destination.mbox,
        a.destination.command,
    ) {
        (Some(m), None, None) => Destination::Maildir(expand(&m, base)?),
        (None, Some(m), None) => Destination::Mbox(expand(&m, base)?),
        (None, None, Some(c)) if !c.trim().is_empty() => Destination::Command(c),
        (None, None, Some(_)) => return Err("destination command is empty".into()),
        _ => {
            return Err(
                "[account.destination] needs exactly one of maildir, mbox or command".into(),
            );
        }
    };
    let state_file = match a.state_file {
        Some(s) => expand(&s, base)?,
        None => default_state_dir()
            .ok_or("HOME is not set; give state_file")?
            .join(format!("fetch-{}.state", a.name)),
    };
    let timeout = a.timeout_secs.unwrap_or(60);
    if timeout == 0 {
        return Err("timeout_secs must be at least 1".into());
    }
    let session_timeout = a
        .session_timeout_secs
        .unwrap_or(DEFAULT_SESSION_TIMEOUT.as_secs());
    if session_timeout == 0 {
        return Err("session_timeout_secs must be at least 1".into());
    }
    let max_listing_bytes = a.max_listing_bytes.unwrap_or(DEFAULT_MAX_LISTING_BYTES);
    if max_listing_bytes < 4096 {
        return Err("max_listing_bytes must be at least 4096".into());
    }
    let listed_size_factor = a.listed_size_factor.unwrap_or(DEFAULT_LISTED_SIZE_FACTOR);
    if listed_size_factor == 0 {
        return Err("listed_size_factor must be at least 1".into());
    }
    Ok(Account {
        port: a.port.unwrap_or(a.tls.default_port()),
        name: a.name,
        server: a.server,
        tls: a.tls,
        ca_file: a.ca_file.map(|c| expand(&c, base)).transpose()?,
        insecure: a.insecure,
        user: a.user,
        password,
        auth: a.auth,
        policy,
        state_file,
        destination,
        timeout: Duration::from_secs(timeout),
        session_timeout: Duration::from_secs(session_timeout),
        max_message_size: a.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
        max_listing_bytes,
        listed_size_factor,
        listed_size_slack: a.listed_size_slack.unwrap_or(DEFAULT_LISTED_SIZE_SLACK),
        resolved_password: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FetchConfig, ConfigError> {
        FetchConfig::parse(text, Path::new("fetch.toml"), Path::new("/base"))
    }

    const MIN: &str = "[[account]]\nname = \"w\"\nserver = \"s\"\nuser = \"u\"\npassword = \"p\"\n";

    #[test]
    fn example_file_parses_and_covers_every_key() {
        let text = include_str!("../fetch.example.toml");
        let cfg = parse(text).expect("example parses");
        assert!(!cfg.accounts.is_empty());
        // Every key of RawAccount appears in the example (commented or not).
        for key in [
            "name",
            "server",
            "port",
            "tls",
            "ca_file",
            "insecure",
            "user",
            "password",
            "password_command",
            "auth",
            "policy",
            "days",
            "keep_newest",
            "state_file",
            "timeout_secs",
            "session_timeout_secs",
            "max_message_size",
            "max_listing_bytes",
            "listed_size_factor",
            "listed_size_slack",
            "maildir",
            "mbox",
            "command",
        ] {
            assert!(
                text.lines().any(|l| l
                    .trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))),
                "example lacks {key}"
            );
        }
    }

    #[test]
    fn defaults_and_paths() {
        let cfg = parse(&format!(
            "{MIN}state_file = \"st\"\n[account.destination]\nmaildir = \"Mail\"\n"
        ))
        .unwrap();
        let a = &cfg.accounts[0];
        assert_eq!(a.port, 995);
        assert_eq!(a.tls, TlsMode::Implicit);
        assert_eq!(a.policy, Policy::Delete);
        assert_eq!(a.destination, Destination::Maildir("/base/Mail".into()));
        assert_eq!(a.state_file, PathBuf::from("/base/st"));
        assert_eq!(format!("{:?}", a.password), "Literal(****)");
        let cfg = parse(&format!(
            "{MIN}tls = \"starttls\"\n[account.destination]\ncommand = \"cat\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.accounts[0].port, 110);
    }

    #[test]
    fn limits_default_and_reach_the_connection() {
        let dest = "[account.destination]\nmaildir = \"M\"\n";
        let cfg = parse(&format!("{MIN}{dest}")).unwrap();
        let o = cfg.accounts[0].connect_options(false);
        assert_eq!(o.session_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(o.max_listing_bytes, 16 << 20);
        assert_eq!((o.listed_size_factor, o.listed_size_slack), (4, 1 << 20));
        assert_eq!(o.max_message_size, 1 << 30);
        let cfg = parse(&format!(
            "{MIN}session_timeout_secs = 5\nmax_listing_bytes = 65536\nlisted_size_factor = 2\nlisted_size_slack = 10\nmax_message_size = 1000\ntimeout_secs = 7\n{dest}"
        ))
        .unwrap();
        let o = cfg.accounts[0].connect_options(false);
        assert_eq!(o.session_timeout, Some(Duration::from_secs(5)));
        assert_eq!(o.io_timeout, Duration::from_secs(7));
        assert_eq!(o.max_listing_bytes, 65536);
        assert_eq!((o.listed_size_factor, o.listed_size_slack), (2, 10));
        assert_eq!(o.max_message_size, 1000);
    }

    #[test]
    fn rejects_bad_configs() {
        let dest = "[account.destination]\nmaildir = \"M\"\n";
        for (extra, dest, why) in [
            ("typo = 1\n", dest, "unknown field"),
            ("policy = \"delete_after_days\"\n", dest, "needs days"),
            ("days = 3\n", dest, "days only applies"),
            ("policy = \"keep_newest\"\n", dest, "needs keep_newest"),
            ("policy = \"sometimes\"\n", dest, "unknown variant"),
            ("password_command = \"x\"\n", dest, "not both"),
            (
                "",
                "[account.destination]\nmaildir = \"M\"\nmbox = \"x\"\n",
                "exactly one",
            ),
            ("", "[account.destination]\n", "exactly one"),
            ("tls = \"none\"\ninsecure = true\n", dest, "make no sense"),
            (
                "session_timeout_secs = 0\n",
                dest,
                "session_timeout_secs must",
            ),
            ("max_listing_bytes = 100\n", dest, "max_listing_bytes must"),
            ("listed_size_factor = 0\n", dest, "listed_size_factor must"),
        ] {
            let err = parse(&format!("{MIN}{extra}{dest}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{extra:?}: {err}");
        }
        let two = format!("{MIN}{dest}{MIN}{dest}");
        assert!(
            parse(&two)
                .unwrap_err()
                .to_string()
                .contains("two accounts")
        );
        let bad_name = "[[account]]\nname = \"../x\"\nserver = \"s\"\nuser = \"u\"\npassword = \"p\"\n[account.destination]\nmaildir = \"M\"\n";
        assert!(
            parse(bad_name)
                .unwrap_err()
                .to_string()
                .contains("name must be")
        );
    }

    #[test]
    fn password_command_first_line() {
        let cfg = parse(
            "[[account]]\nname = \"w\"\nserver = \"s\"\nuser = \"u\"\npassword_command = \"printf 'sec ret\\\\nsecond\\\\n'\"\n[account.destination]\nmaildir = \"M\"\n",
        )
        .unwrap();
        assert_eq!(cfg.accounts[0].password().unwrap().expose(), "sec ret");
    }
}

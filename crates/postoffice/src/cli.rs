//! Command-line parsing and the subcommands.

use std::io::{BufRead, IsTerminal, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use postoffice_config::Config;
use postoffice_core::admin;
use postoffice_directory::{Directory, normalize_address, normalize_domain};

/// A mail server built around POP3: one binary, one config file.
///
/// Quick start: `postoffice serve` runs the server with its defaults
/// (loopback only, data in ./postoffice-data); `postoffice user add` adds a
/// user. See README.md for the rest.
#[derive(Parser, Debug)]
#[command(name = "postoffice", version, propagate_version = true)]
struct Cli {
    /// Config file (TOML). Default: /etc/postoffice/postoffice.toml when
    /// it exists (the Debian package's), else the built-in defaults.
    #[arg(
        short,
        long,
        global = true,
        env = "POSTOFFICE_CONFIG",
        value_name = "PATH"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the mail server: POP3 (STLS) and POP3S, SMTP for incoming mail,
    /// submission (587/465) and the outbound queue.
    ///
    /// Listening sockets come from systemd socket activation when it passes
    /// them (LISTEN_FDS, with FileDescriptorName= pop3, pop3s, smtp,
    /// submission or submissions; the listen keys are then not used), or
    /// are bound from the config. Started as root, the server switches to
    /// the config's `user` right after opening them, before reading any
    /// data; without `user` it refuses to run as root on an address off
    /// loopback unless `allow_root = true`. SIGHUP reads the TLS certificates again (so do changes to
    /// their files); SIGTERM and SIGINT stop it gracefully.
    Serve,
    /// Validate the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print the DNS records a mail domain needs (MX, address and PTR, SPF,
    /// DKIM, DMARC, RFC 6186 SRV, autoconfig and autodiscover), ready to
    /// paste into a zone file; `dns check DOMAIN` queries them.
    Dns(DnsArgs),
    /// Manage the domains this server receives mail for.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Manage users (mailboxes).
    #[command(subcommand)]
    User(UserCmd),
    /// Manage aliases: addresses without a mailbox that deliver to users,
    /// other aliases or external addresses (distribution lists with
    /// several targets; `@domain` is the domain's catch-all).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Manage the administrators of the web interface ([http]).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Deliver one message from standard input into a user's maildrop
    /// (a local delivery agent, like dovecot-lda). Exit status: 0 when the
    /// message is durably stored, 67 unknown user, 75 temporary failure
    /// (try again), 65 bad message, 78 configuration error.
    Deliver {
        /// The recipient, e.g. alice@example.test.
        recipient: String,
    },
    /// Download mail from POP3 servers into a Maildir, an mbox or a command
    /// (like fetchmail), deleting it from the server or keeping it there.
    /// Accounts are read from ~/.config/postoffice/fetch.toml.
    Fetch(postoffice_fetch::FetchArgs),
    /// Inspect and control the outbound queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Send a message read from standard input, like sendmail(1): for cron,
    /// scripts and PHP mail(). Install as /usr/sbin/sendmail with
    /// `ln -s $(which postoffice) /usr/sbin/sendmail`. Exit status: 0 sent
    /// (delivered or queued), 64 usage, 67 unknown local user, 75 try
    /// again later.
    Sendmail(SendmailArgs),
    /// DKIM keys for signing outgoing mail.
    #[command(subcommand)]
    Dkim(DkimCmd),
    /// Manage quarantined messages (held by the verification pipeline;
    /// POP3 does not show them).
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
    /// Copy a user's mail from another POP3 server or a Dovecot Maildir,
    /// keeping each message's UIDL (migration without re-downloads).
    Import(crate::import::ImportArgs),
    /// The PostgreSQL database of `[storage] backend = "postgres"`.
    #[command(subcommand)]
    Db(DbCmd),
    /// Copy everything the storage backend in use holds into the other one:
    /// domains, users and aliases, every message (keeping its UIDL, so POP3
    /// clients that leave mail on the server download nothing twice),
    /// quarantines, the outbound queue, DKIM keys and the SRS secret.
    ///
    /// With `backend = "maildir"` and `url` set, `--to postgres` copies the
    /// data_dir into the database (creating its schema); with `backend =
    /// "postgres"`, `--to maildir` copies the database into data_dir. The
    /// source is left as it was. Resumable and idempotent: a run that was
    /// interrupted is completed by running it again, and a run after a
    /// complete one copies nothing. Stop the server(s) first (or run it
    /// once live and again after stopping them), then set `backend` to the
    /// new one. Exit status 1 when something was left out (listed).
    Migrate {
        /// The backend to copy into.
        #[arg(long, value_enum)]
        to: MigrateTo,
    },
    /// Delete messages older than their retention policy (the server does
    /// this periodically by itself) and stale half-written deliveries.
    Expire {
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `postoffice migrate --to`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum MigrateTo {
    /// The PostgreSQL database at `[storage] url`.
    Postgres,
    /// The Maildirs, directory.toml, queue and key files under data_dir.
    Maildir,
}

#[derive(Subcommand, Debug)]
enum DbCmd {
    /// Create the schema in an empty database, or upgrade an older one to
    /// this version's. Idempotent: run it after every upgrade of postoffice
    /// (`serve` refuses to start on an older schema). Several nodes may run
    /// it at once.
    Migrate,
    /// Print the database's schema version and the one this build needs;
    /// exit status 1 when they differ.
    Status,
}

/// `postoffice dns DOMAIN` or `postoffice dns check DOMAIN`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct DnsArgs {
    #[command(flatten)]
    records: DnsRecordArgs,
    #[command(subcommand)]
    command: Option<DnsCmd>,
}

#[derive(Args, Debug)]
struct DnsRecordArgs {
    /// The mail domain, e.g. example.org.
    domain: Option<String>,
    /// The server's public address (repeat for IPv4 and IPv6). Default:
    /// the addresses the server's hostname resolves to.
    #[arg(long = "ip", value_name = "ADDRESS")]
    ips: Vec<std::net::IpAddr>,
    /// Where DMARC aggregate reports go (default: postmaster@DOMAIN).
    #[arg(long, value_name = "ADDRESS")]
    report_address: Option<String>,
}

#[derive(Subcommand, Debug)]
enum DnsCmd {
    /// Query every record through the configured resolver ([dns]) and
    /// report, record by record, what is right, missing or wrong. Exit
    /// status 0 only when every record is right, 1 otherwise.
    Check(DnsRecordArgs),
}

#[derive(Subcommand, Debug)]
enum QueueCmd {
    /// List queued messages with their recipients' states.
    #[command(alias = "ls")]
    List,
    /// Show one entry: envelope, per-recipient state and the headers.
    Show { id: String },
    /// Try an entry again now.
    Retry { id: String },
    /// Delete an entry without bouncing it.
    #[command(alias = "rm", alias = "del")]
    Delete { id: String },
    /// Try every entry again now.
    Flush,
    /// Send an entry that is held (by `[filter] scan_outbound`).
    Release { id: String },
}

/// sendmail-compatible options (the common subset; others are refused).
#[derive(Args, Debug)]
struct SendmailArgs {
    /// Take the recipients from the To:, Cc: and Bcc: headers (Bcc: is removed).
    #[arg(short = 't')]
    from_headers: bool,
    /// The envelope sender (default: <user>@<hostname>).
    #[arg(short = 'f', value_name = "ADDRESS")]
    sender: Option<String>,
    /// Full name for a From: header added when there is none.
    #[arg(short = 'F', value_name = "NAME")]
    full_name: Option<String>,
    /// Accepted for compatibility: a line with a single dot never ends
    /// the input here (input ends at end of file).
    #[arg(short = 'i')]
    ignore_dots: bool,
    /// sendmail -o options (e.g. -oi): accepted and ignored.
    #[arg(short = 'o', value_name = "OPTION")]
    options: Vec<String>,
    /// sendmail -b mode: only -bm (deliver mail, the default) is supported.
    #[arg(short = 'b', value_name = "MODE")]
    mode: Option<String>,
    /// Recipients.
    recipients: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum DkimCmd {
    /// Create a signing key for DOMAIN in data_dir/dkim/ and print the DNS
    /// TXT record to publish. Mail our users submit from DOMAIN is signed
    /// from then on.
    Generate {
        domain: String,
        /// rsa (2048 bits; understood by every verifier) or ed25519 (RFC 8463).
        #[arg(long, default_value = "rsa", value_parser = ["rsa", "ed25519"])]
        algorithm: String,
    },
}

#[derive(Subcommand, Debug)]
enum QuarantineCmd {
    /// List a user's quarantined messages: UID, size, date, subject.
    #[command(alias = "ls")]
    List { address: String },
    /// Print a quarantined message.
    Show { address: String, uid: String },
    /// Move a quarantined message into the user's maildrop.
    Release { address: String, uid: String },
    /// Delete a quarantined message.
    #[command(alias = "rm", alias = "del")]
    Delete { address: String, uid: String },
    /// Deliver the quarantine digest now: each user (or only --user) with
    /// messages no digest listed yet gets one message listing them and how
    /// to release each. Ignores `[filter] quarantine_digest_hours` (cron).
    Digest {
        #[arg(long, value_name = "ADDR")]
        user: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Check the config file and print the effective configuration, then
    /// each TLS certificate's names and expiry (as comments). Exits
    /// non-zero when a certificate or key does not load.
    Check,
}

#[derive(Subcommand, Debug)]
enum DomainCmd {
    /// Add a domain.
    Add { name: String },
    /// Remove a domain (it must have no users left).
    #[command(alias = "rm", alias = "remove")]
    Del { name: String },
    /// List domains (and domain aliases).
    #[command(alias = "ls")]
    List,
    /// Make ALIAS a domain alias of the local domain TARGET: mail for
    /// x@ALIAS is delivered as x@TARGET, and ALIAS counts as local (never
    /// relayed).
    Alias {
        /// The alias domain, e.g. example.org.
        alias: String,
        /// The existing domain, e.g. example.test.
        target: String,
    },
    /// Remove a domain alias.
    Unalias {
        /// The alias domain.
        alias: String,
    },
    /// Set a domain's policy (overrides the config's [policy] defaults).
    Set {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AliasCmd {
    /// Add an alias, or more targets to an existing one. ADDR is
    /// local@domain of a local domain, or @domain for the domain's
    /// catch-all (every address that is neither a user nor an alias). Each
    /// TARGET is a local user, another alias or an external address
    /// (forwarded through the outbound queue). Users and aliases share one
    /// namespace; loops, more targets than [addresses] max_alias_targets and
    /// expansions deeper than max_alias_depth are refused. The users an
    /// alias delivers to may send as it, unless --no-send-as.
    Add {
        /// The alias, e.g. sales@example.test or @example.test.
        address: String,
        /// Where its mail goes, e.g. alice@example.test.
        #[arg(required = true)]
        targets: Vec<String>,
        /// The users it delivers to may not send as it (receive only).
        #[arg(long, conflicts_with = "send_as")]
        no_send_as: bool,
        /// The users it delivers to may send as it again (the default).
        #[arg(long)]
        send_as: bool,
    },
    /// Remove one target of an alias (the alias goes with its last
    /// target), or the whole alias.
    #[command(alias = "rm", alias = "remove")]
    Del {
        /// The alias, e.g. sales@example.test or @example.test.
        address: String,
        /// Only this target.
        target: Option<String>,
    },
    /// List aliases (of one domain), with their targets, the mailboxes and
    /// external addresses they reach, and the domain aliases.
    #[command(alias = "ls")]
    List {
        /// Only this domain's aliases.
        domain: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add a user. Its domain is added too if it is new. Without
    /// --password-stdin a random password is generated and printed.
    Add {
        /// Full address, e.g. alice@example.test.
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    #[command(alias = "rm", alias = "remove")]
    Del {
        address: String,
        /// Also delete the user's stored mail.
        #[arg(long)]
        purge: bool,
    },
    /// Change a user's password.
    Passwd {
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    #[command(alias = "ls")]
    List,
    /// Show a user's policy and mailbox usage.
    Info { address: String },
    /// Set a user's policy (overrides the domain and the config).
    Set {
        address: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Disable (true) or enable (false) logins.
        #[arg(long)]
        disabled: Option<bool>,
        /// Messages per hour this user may submit (0 = no limit), or
        /// "inherit" ([submission] max_messages_per_hour).
        #[arg(long, value_name = "N")]
        max_messages_per_hour: Option<String>,
        /// Recipients per 24 hours this user may send to (0 = no limit), or
        /// "inherit" ([submission] max_recipients_per_day).
        #[arg(long, value_name = "N")]
        max_recipients_per_day: Option<String>,
        /// Forward the user's mail to this address (repeat for several;
        /// sent with SRS through the queue). `off` ends forwarding.
        #[arg(long, value_name = "TARGET")]
        forward: Vec<String>,
        /// With --forward: keep a copy in the user's maildrop (default
        /// true).
        #[arg(long, value_name = "true|false")]
        keep_copy: Option<bool>,
        /// Answer mail with this text while away (RFC 3834 auto-reply;
        /// UTF-8; a first line `Subject: ...` sets the subject), or `off`.
        #[arg(long, value_name = "FILE|off")]
        vacation_file: Option<String>,
        /// The last day (YYYY-MM-DD, UTC) the vacation reply is sent.
        #[arg(long, value_name = "DATE")]
        vacation_until: Option<String>,
        /// `off`: turn the vacation reply off.
        #[arg(long, value_name = "off")]
        vacation: Option<String>,
    },
    /// Import users from a Dovecot passwd-file
    /// (`user@domain:{SHA512-CRYPT}$6$...`). Missing domains are added.
    Import {
        /// The passwd-file to read.
        #[arg(long, value_name = "FILE")]
        dovecot_passwd: PathBuf,
    },
    /// A user's accounts on other POP3 servers, pulled into their maildrop
    /// by the server (fetch jobs).
    #[command(subcommand)]
    Fetch(crate::fetch_jobs::FetchJobCmd),
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Add an administrator: a name without '@' (letters, digits, '.',
    /// '_', '-'). Without --password-stdin a random password is generated
    /// and printed. Passwords are stored as argon2id hashes.
    Add {
        /// The sign-in name, e.g. root.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an administrator's password.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove an administrator.
    #[command(alias = "rm", alias = "remove")]
    Del { name: String },
    /// List administrators.
    #[command(alias = "ls")]
    List,
}

#[derive(Args, Debug, Default)]
struct PolicyArgs {
    /// Days to keep messages: a number, "never", or "inherit".
    #[arg(long, value_name = "DAYS")]
    retention_days: Option<String>,
    /// Minimum seconds between logins, or "inherit".
    #[arg(long, value_name = "SECS")]
    login_delay: Option<String>,
    /// Mailbox size limit in bytes (0 = unlimited), or "inherit".
    #[arg(long, value_name = "BYTES")]
    quota_bytes: Option<String>,
    /// Mailbox message limit (0 = unlimited), or "inherit".
    #[arg(long, value_name = "N")]
    quota_messages: Option<String>,
}

use postoffice_core::delivery::sysexits;

pub fn main() -> ExitCode {
    // Installed as /usr/sbin/sendmail (a symlink): behave as `postoffice sendmail`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if invoked_as == "sendmail" {
        args.insert(1, "sendmail".into());
        args[0] = "postoffice".into();
    }
    let cli = Cli::parse_from(args);
    let is_deliver = matches!(cli.command, Command::Deliver { .. });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postoffice: {e:#}");
            if is_deliver {
                ExitCode::from(sysexits::TEMPFAIL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The config file used when none is named: the Debian package's.
const SYSTEM_CONFIG: &str = "/etc/postoffice/postoffice.toml";

fn load_config(path: Option<&Path>) -> Result<Config> {
    let mut cfg = match path {
        Some(p) => {
            let mut c = Config::load(p)?;
            let base = p
                .parent()
                .filter(|b| !b.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            c.resolve_paths(base);
            c
        }
        None => Config::default(),
    };
    if cfg.data_dir.is_relative() {
        cfg.data_dir = std::env::current_dir()
            .context("current directory")?
            .join(&cfg.data_dir);
    }
    Ok(cfg)
}

fn run(cli: Cli) -> Result<ExitCode> {
    // The fetch client has its own accounts file and needs nothing of the
    // server's configuration.
    let command = match cli.command {
        Command::Fetch(args) => return postoffice_fetch::run(args),
        other => other,
    };
    // The package's config, so that `postoffice user add ...` and
    // /usr/sbin/sendmail work on an installed server without --config.
    let config_path = cli.config.clone().or_else(|| {
        let system = Path::new(SYSTEM_CONFIG);
        system.exists().then(|| system.to_path_buf())
    });
    let config = match load_config(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postoffice: {e:#}");
            return Ok(ExitCode::from(sysexits::CONFIG));
        }
    };
    // Who runs sendmail decides its sender rights: read it before any
    // switch of user.
    let invoker = postoffice_common::unix::current_user();
    // Run as root, every command but serve (which binds first) becomes the
    // configured user at once, so what it creates belongs to the server.
    match &command {
        Command::Serve => {}
        Command::Config(_) => become_user(&config, false)?,
        _ => become_user(&config, true)?,
    }
    match command {
        Command::Fetch(_) => unreachable!("handled above"),
        Command::Serve => serve(config, config_path.as_deref()),
        Command::Config(ConfigCmd::Check) => config_check(&config, config_path.as_deref()),
        Command::Dns(args) => dns(&config, args),
        Command::Domain(cmd) => domain(&config, cmd),
        Command::User(cmd) => user(&config, cmd),
        Command::Alias(cmd) => alias(&config, cmd),
        Command::Admin(cmd) => admin(&config, cmd),
        Command::Deliver { recipient } => deliver(&config, &recipient),
        Command::Expire { dry_run } => expire(&config, dry_run),
        Command::Db(cmd) => db(&config, cmd),
        Command::Migrate { to } => migrate(&config, to),
        Command::Import(args) => crate::import::run(config, args),
        Command::Quarantine(cmd) => quarantine(&config, cmd),
        Command::Queue(cmd) => queue_cmd(&config, cmd),
        Command::Sendmail(args) => sendmail(&config, args, invoker),
        Command::Dkim(DkimCmd::Generate { domain, algorithm }) => {
            let domain = normalize_domain(&domain)?;
            let algo = if algorithm == "ed25519" {
                postoffice_core::dkim::Algorithm::Ed25519
            } else {
                postoffice_core::dkim::Algorithm::Rsa2048
            };
            let keys = postoffice_core::app::keys(&config)?;
            let record = postoffice_core::dkim::generate_in(&keys, &domain, algo)?;
            let place = keys.describe(&postoffice_core::dkim::key_name(&domain));
            println!("DKIM key written to {place}");
            println!("Publish this DNS TXT record:");
            let quoted: Vec<String> = record
                .as_bytes()
                .chunks(255)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect();
            println!(
                "{}._domainkey.{domain}. IN TXT {}",
                config.dkim.selector,
                quoted.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match config.log.format {
        postoffice_config::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
        // One object per line: the event's fields at the top level, the
        // connection's span (name and peer) under "span".
        postoffice_config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Whether running as root was allowed (config or environment).
fn root_allowed(config: &Config) -> bool {
    config.allow_root || std::env::var("POSTOFFICE_ALLOW_ROOT").is_ok_and(|v| v == "1")
}

/// Run as root with `user` configured: become that user (after creating
/// the data directory for it when `prepare`). Otherwise nothing changes.
fn become_user(config: &Config, prepare: bool) -> Result<()> {
    use postoffice_common::privileges;
    if config.user.is_empty() || !privileges::is_root() {
        return Ok(());
    }
    let user = privileges::lookup(&config.user)?;
    if prepare {
        privileges::prepare_data_dir(&config.data_dir, &user)?;
    }
    privileges::switch_to(&user)?;
    Ok(())
}

/// The server's switch: after the listeners are open and before anything
/// else. A server left running as root must have been allowed to.
fn drop_privileges_for_serve(config: &Config, listeners: &[SocketAddr]) -> Result<()> {
    use postoffice_common::privileges;
    if !config.user.is_empty() {
        let user = privileges::lookup(&config.user)?;
        let before = privileges::effective_uid();
        if before == 0 {
            privileges::prepare_data_dir(&config.data_dir, &user)?;
            privileges::switch_to(&user)?;
            tracing::info!(user = %user.name, uid = user.uid, gid = user.gid, "listeners open; now running as {}", user.name);
        } else if before != user.uid {
            tracing::warn!(
                uid = before,
                "running as uid {before}, not as the configured user {} (only root can switch)",
                user.name
            );
        }
        return Ok(());
    }
    root_check(config, listeners)
}

/// Without `user`, root may serve only when allowed, or when every
/// listener is on loopback: a trial run (the README's first command) that
/// nothing off the machine can reach. Checked against the configured
/// addresses before binding, and against systemd's sockets once passed.
fn root_check<'a>(config: &Config, addrs: impl IntoIterator<Item = &'a SocketAddr>) -> Result<()> {
    use postoffice_common::privileges;
    if !config.user.is_empty() || !privileges::is_root() || root_allowed(config) {
        return Ok(());
    }
    if let Some(public) = addrs.into_iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing to run as root listening on {public}: a mail server reads hostile input \
             all day. Set `user = \"postoffice\"` (a system user) in the config: the server \
             opens its ports as root, then switches to that user. Or set `allow_root = true` (or \
             POSTOFFICE_ALLOW_ROOT=1) to run as root anyway"
        );
    }
    Ok(())
}

fn serve(config: Config, path: Option<&Path>) -> Result<ExitCode> {
    init_logging(&config);
    if let Some(w) = path.and_then(|p| config.secrets_warning(p)) {
        tracing::warn!("{w}");
    }
    // The sockets first (systemd's, or bound here while still root), then
    // give up root, and only then read data and certificates.
    root_check(&config, config.listen_addrs())?;
    let listeners = postoffice_server::Listeners::open(&config)?;
    let bound: Vec<SocketAddr> = listeners.addrs().into_iter().map(|(_, a)| a).collect();
    if listeners.activated() {
        tracing::info!(
            sockets = listeners.addrs().len(),
            "using the sockets passed by systemd; the listen keys of the config are not used"
        );
    }
    drop_privileges_for_serve(&config, &bound)?;
    if postoffice_common::privileges::is_root() && config.user.is_empty() {
        tracing::warn!(
            "running as root (no `user` in the config): fine for a trial on loopback; set `user = \"postoffice\"` before serving the network"
        );
    }
    for w in postmaster_warnings(&config) {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // File I/O and password hashing run on blocking threads; a bounded
        // pool keeps a burst of logins from leaving hundreds of idle threads
        // (and their memory) behind.
        .max_blocking_threads(16)
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Install the signal handlers before anything else, so a SIGTERM
        // that arrives during start-up still means a graceful stop.
        let stop = stop_signal()?;
        let server = postoffice_server::Server::start(config.clone(), listeners).await?;
        print_banner(&config, &server);
        server.run(stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT. The handlers are registered when this is
/// called, not when the future is first polled.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn print_banner(config: &Config, server: &postoffice_server::Server) {
    use postoffice_server::Service;
    println!(
        "postoffice is running; data in {}",
        config.data_dir.display()
    );
    for (service, addr) in server.local_addrs() {
        match service {
            Service::Pop3 => println!("  POP3   {addr}  (plain, STLS offered)"),
            Service::Pop3s => println!("  POP3S  {addr}  (implicit TLS)"),
            Service::Smtp => {
                println!("  SMTP   {addr}  (receives mail for local users; STARTTLS offered)")
            }
            Service::Submission => println!("  SUBMIT {addr}  (submission: AUTH, STARTTLS)"),
            Service::Submissions => println!("  SUBMITS {addr}  (submission: AUTH, implicit TLS)"),
            Service::Http => {
                println!("  HTTP   {addr}  (web interface, /api/, /metrics, autoconfig)")
            }
            Service::Https => println!("  HTTPS  {addr}  (the same over TLS)"),
        }
    }
    let certs = server.certificates();
    for (pair, info) in certs.certificates() {
        println!(
            "  TLS certificate: {} ({}{})",
            pair.cert.display(),
            if certs.generated() {
                "self-signed; "
            } else {
                ""
            },
            info
        );
    }
    let users = server.app().directory.snapshot().users().count();
    let me = std::env::args()
        .next()
        .unwrap_or_else(|| "postoffice".into());
    let config_arg = std::env::var_os("POSTOFFICE_CONFIG")
        .is_none()
        .then(|| {
            std::env::args()
                .skip_while(|a| a != "--config" && a != "-c")
                .nth(1)
        })
        .flatten()
        .map(|c| format!(" --config {c}"))
        .unwrap_or_default();
    if users == 0 {
        println!("No users yet. Add one (in another terminal):");
    } else {
        println!("{users} user(s). Add another with:");
    }
    println!("  printf 'secret\\n' | {me}{config_arg} user add alice@localhost --password-stdin");
    println!("Stop with Ctrl-C.");
}

/// Role addresses (postmaster@, abuse@) that reach no mailbox, when the
/// directory exists; warnings only, the server runs anyway.
fn postmaster_warnings(config: &Config) -> Vec<String> {
    if config.storage.backend == postoffice_config::Backend::Postgres {
        return match postoffice_core::app::directory(config) {
            Ok(dir) => {
                postoffice_core::addresses::postmaster_warnings(&config.addresses, &dir.snapshot())
            }
            Err(_) => Vec::new(),
        };
    }
    if !config
        .data_dir
        .join(postoffice_directory::DIRECTORY_FILE)
        .exists()
    {
        return Vec::new();
    }
    match Directory::open(&config.data_dir) {
        Ok(dir) => {
            postoffice_core::addresses::postmaster_warnings(&config.addresses, &dir.snapshot())
        }
        Err(_) => Vec::new(),
    }
}

fn config_check(config: &Config, path: Option<&Path>) -> Result<ExitCode> {
    match path {
        Some(p) => eprintln!("config file: {}", p.display()),
        None => eprintln!("no config file: the built-in defaults apply"),
    }
    print!("{}", config.to_toml_redacted());
    if let Some(w) = path.and_then(|p| config.secrets_warning(p)) {
        eprintln!("warning: {w}");
    }
    // Each certificate as the server would load it: names and expiry, as
    // TOML comments so that the output stays a valid config file.
    let (pairs, generated) = postoffice_server::tls::configured_pairs(config);
    let mut bad = 0;
    println!();
    for pair in &pairs {
        if generated && !pair.cert.exists() {
            println!(
                "# TLS: no certificate configured; `serve` generates a self-signed one in {}",
                pair.cert.display()
            );
            continue;
        }
        match postoffice_server::tls::inspect(pair) {
            Ok(info) => {
                println!("# TLS certificate {}", pair.cert.display());
                println!("#   names:   {}", info.names.join(", "));
                let days = info.days_left(std::time::SystemTime::now());
                println!(
                    "#   expires: {} ({})",
                    postoffice_common::date::rfc5322(info.not_after),
                    if days < 0 {
                        "EXPIRED".to_string()
                    } else {
                        format!("in {days} days")
                    }
                );
                println!("#   sha256:  {}", info.sha256);
                if days < config.tls.expiry_warning_days as i64 {
                    eprintln!(
                        "warning: TLS certificate {} {}",
                        pair.cert.display(),
                        if days < 0 {
                            "has expired".to_string()
                        } else {
                            format!("expires in {days} days")
                        }
                    );
                }
            }
            Err(e) => {
                eprintln!("postoffice: {e}");
                bad += 1;
            }
        }
    }
    for w in postmaster_warnings(config) {
        eprintln!("warning: {w}");
    }
    if bad > 0 {
        eprintln!("config NOT OK: {bad} TLS certificate(s) do not load");
        return Ok(ExitCode::from(sysexits::CONFIG));
    }
    eprintln!("config OK");
    Ok(ExitCode::SUCCESS)
}

fn dns(config: &Config, args: DnsArgs) -> Result<ExitCode> {
    use postoffice_core::dns;
    let (records, check) = match args.command {
        Some(DnsCmd::Check(r)) => (r, true),
        None => (args.records, false),
    };
    let Some(domain) = records.domain else {
        bail!("name the domain: `postoffice dns DOMAIN` or `postoffice dns check DOMAIN`");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut setup = dns::Setup::from_config(config, &domain, records.ips, records.report_address)?;
    if check {
        let findings = rt.block_on(dns::check(&setup, config))?;
        let bad = findings
            .iter()
            .filter(|f| f.verdict != dns::Verdict::Ok)
            .count();
        for f in &findings {
            println!("{f}");
        }
        if bad == 0 {
            println!(
                "all {} records of {} are right",
                findings.len(),
                setup.domain
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{bad} of {} records of {} need attention (`postoffice dns {}` prints them)",
            findings.len(),
            setup.domain,
            setup.domain
        );
        return Ok(ExitCode::FAILURE);
    }
    if setup.addresses.is_empty() {
        // The hostname's current addresses, when it already resolves.
        setup.addresses = rt
            .block_on(async {
                let resolver = postoffice_common::resolver::build(&config.dns, 16).ok()?;
                let ips = resolver
                    .lookup_ip(format!("{}.", setup.hostname))
                    .await
                    .ok()?;
                Some(ips.iter().collect::<Vec<_>>())
            })
            .unwrap_or_default();
    }
    println!(
        "; DNS records for {} (mail server {}). Paste them into the zone of {}",
        setup.domain, setup.hostname, setup.domain
    );
    println!("; (PTR records go to whoever provides the address, often in its web console).");
    for r in dns::records(&setup) {
        println!(";; {}: {}", r.kind.as_str(), r.note);
        println!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}

fn read_password(from_stdin: bool) -> Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let pw = line.strip_suffix('\n').unwrap_or(&line);
        let pw = pw.strip_suffix('\r').unwrap_or(pw).to_string();
        if pw.is_empty() {
            bail!("empty password on standard input");
        }
        Ok((pw, false))
    } else {
        Ok((admin::generate_password(), true))
    }
}

fn domain(config: &Config, cmd: DomainCmd) -> Result<ExitCode> {
    let dir = postoffice_core::app::directory(config)?;
    match cmd {
        DomainCmd::Add { name } => {
            let name = admin::add_domain(&dir, &name)?;
            println!("added domain {name}");
        }
        DomainCmd::Del { name } => {
            let name = admin::remove_domain(&dir, &name)?;
            println!("removed domain {name}");
        }
        DomainCmd::List => {
            for d in admin::domains(&dir) {
                println!("{}\t{} user(s)", d.name, d.users);
            }
            for (alias, target) in dir.snapshot().domain_aliases() {
                println!("{alias}\talias of {target}");
            }
        }
        DomainCmd::Alias { alias, target } => {
            let (alias, target) = admin::add_domain_alias(&dir, &alias, &target)?;
            println!("added domain alias {alias} -> {target}");
        }
        DomainCmd::Unalias { alias } => {
            let alias = admin::remove_domain_alias(&dir, &alias)?;
            println!("removed domain alias {alias}");
        }
        DomainCmd::Set { name, policy } => {
            let name = admin::set_domain(&dir, &name, &policy.change()?)?;
            println!("updated domain {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl PolicyArgs {
    fn change(&self) -> Result<admin::PolicyChange> {
        Ok(admin::PolicyChange::parse(&admin::PolicyText {
            retention_days: self.retention_days.as_deref(),
            login_delay: self.login_delay.as_deref(),
            quota_bytes: self.quota_bytes.as_deref(),
            quota_messages: self.quota_messages.as_deref(),
        })?)
    }
}

fn admin(config: &Config, cmd: AdminCmd) -> Result<ExitCode> {
    let dir = postoffice_core::app::directory(config)?;
    match cmd {
        AdminCmd::Add {
            name,
            password_stdin,
        } => {
            let (pw, generated) = read_password(password_stdin)?;
            let name = admin::add_admin(&dir, &name, &pw)?;
            println!("added administrator {name}");
            if generated {
                println!("password: {pw}");
            }
        }
        AdminCmd::Passwd {
            name,
            password_stdin,
        } => {
            let (pw, generated) = read_password(password_stdin)?;
            let name = admin::set_admin_password(&dir, &name, &pw)?;
            println!("password changed for administrator {name}");
            if generated {
                println!("password: {pw}");
            }
        }
        AdminCmd::Del { name } => {
            let name = admin::remove_admin(&dir, &name)?;
            println!("removed administrator {name}");
        }
        AdminCmd::List => {
            for a in dir.snapshot().admins() {
                println!("{}", a.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_alias(a: &admin::AliasSummary) {
    println!(
        "{}\t-> {}{}",
        a.address,
        a.targets.join(", "),
        if a.send_as || a.address.starts_with('@') {
            ""
        } else {
            "\t(no send-as)"
        }
    );
    if !a.mailboxes.is_empty() {
        println!("\tdelivers to: {}", a.mailboxes.join(", "));
    }
    if !a.external.is_empty() {
        println!("\tforwards to: {}", a.external.join(", "));
    }
    for p in &a.problems {
        println!("\tproblem: {p}");
    }
}

fn alias(config: &Config, cmd: AliasCmd) -> Result<ExitCode> {
    let dir = postoffice_core::app::directory(config)?;
    match cmd {
        AliasCmd::Add {
            address,
            targets,
            no_send_as,
            send_as,
        } => {
            let flag = match (send_as, no_send_as) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let a = admin::add_alias(config, &dir, &address, &targets, flag)?;
            println!("alias {} updated", a.address);
            print_alias(&a);
        }
        AliasCmd::Del { address, target } => {
            let (address, left) = admin::remove_alias(config, &dir, &address, target.as_deref())?;
            match left {
                Some(a) => {
                    println!("alias {address} updated");
                    print_alias(&a);
                }
                None => println!("removed alias {address}"),
            }
        }
        AliasCmd::List { domain } => {
            for a in admin::aliases(config, &dir, domain.as_deref())? {
                print_alias(&a);
            }
            let snap = dir.snapshot();
            let wanted = domain.as_deref().map(normalize_domain).transpose()?;
            for (alias, target) in snap.domain_aliases() {
                if wanted.as_deref().is_none_or(|d| d == alias || d == target) {
                    println!("@{alias}\t-> @{target}\t(domain alias)");
                }
            }
            let sep = &config.addresses.subaddress_separator;
            if !sep.is_empty() {
                println!(
                    "# sub-addressing: user{}tag@domain reaches user@domain (separators {sep:?})",
                    sep.chars().next().unwrap_or('+')
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn user(config: &Config, cmd: UserCmd) -> Result<ExitCode> {
    let cmd = match cmd {
        UserCmd::Fetch(cmd) => return crate::fetch_jobs::run(config, cmd),
        cmd => cmd,
    };
    let dir = postoffice_core::app::directory(config)?;
    let store = postoffice_core::app::store(config)?;
    match cmd {
        UserCmd::Add {
            address,
            password_stdin,
        } => {
            // Checked before a password is read or generated.
            let address = normalize_address(&address)?;
            let (pw, generated) = read_password(password_stdin)?;
            let added = admin::add_user(&dir, &address, &pw)?;
            if let Some(domain) = &added.domain_added {
                println!("added domain {domain}");
            }
            println!("added user {}", added.address);
            if generated {
                println!("password: {pw}");
            }
        }
        UserCmd::Del { address, purge } => {
            let removed = admin::remove_user(&dir, &*store, &address, purge)?;
            println!("removed user {}", removed.address);
            match removed.kept {
                None => println!("deleted its mail"),
                Some(path) => println!("its mail was kept in {} (use --purge to delete it)", path),
            }
            // Aliases that pointed at it now lead nowhere (or elsewhere).
            let snap = dir.snapshot();
            for w in postoffice_core::addresses::postmaster_warnings(&config.addresses, &snap) {
                if w.starts_with("alias ") && w.contains(&removed.address) {
                    eprintln!("warning: {w}");
                }
            }
        }
        UserCmd::Passwd {
            address,
            password_stdin,
        } => {
            let address = normalize_address(&address)?;
            let (pw, generated) = read_password(password_stdin)?;
            let address = admin::set_password(&dir, &address, &pw)?;
            println!("password changed for {address}");
            if generated {
                println!("password: {pw}");
            }
        }
        UserCmd::List => {
            for u in dir.snapshot().users() {
                println!(
                    "{}{}",
                    u.address,
                    if u.disabled { "\t(disabled)" } else { "" }
                );
            }
        }
        UserCmd::Info { address } => {
            let u = admin::user_info(config, &dir, &*store, &address)?;
            let p = &u.policy;
            println!("address:        {}", u.address);
            println!("disabled:       {}", u.disabled);
            println!("mailbox:        {}", u.mailbox);
            println!("messages:       {}", u.usage.messages);
            println!("bytes:          {}", u.usage.bytes);
            println!(
                "retention:      {}",
                p.retention_days
                    .map_or("never".to_string(), |d| format!("{d} days"))
            );
            println!("login delay:    {} s", p.login_delay_secs);
            if u.forward.is_empty() {
                println!("forward:        off");
            } else {
                println!(
                    "forward:        {} ({})",
                    u.forward.join(", "),
                    if u.forward_keep_copy {
                        "keeping a copy"
                    } else {
                        "no copy kept"
                    }
                );
            }
            match &u.vacation {
                None => println!("vacation:       off"),
                Some(v) => {
                    println!(
                        "vacation:       on{}",
                        v.until
                            .as_ref()
                            .map_or(String::new(), |d| format!(" until {d}"))
                    );
                    println!(
                        "vacation subj.: {}",
                        v.subject.as_deref().unwrap_or("Auto: <original subject>")
                    );
                }
            }
            println!(
                "quota bytes:    {}",
                p.quota_bytes
                    .map_or("unlimited".to_string(), |q| q.to_string())
            );
            println!(
                "quota messages: {}",
                p.quota_messages
                    .map_or("unlimited".to_string(), |q| q.to_string())
            );
            for rule in &u.address_rules {
                println!("address rule:   {rule}");
            }
            let limit = |n: u32, own: Option<u32>| {
                let n = if n == 0 {
                    "unlimited".to_string()
                } else {
                    n.to_string()
                };
                if own.is_some() {
                    format!("{n} (user setting)")
                } else {
                    n
                }
            };
            let (per_hour, per_day) = u.send_limits;
            let own = u.send_limit_overrides;
            println!(
                "messages/hour:  {}",
                limit(per_hour, own.max_messages_per_hour)
            );
            println!(
                "recipients/day: {}",
                limit(per_day, own.max_recipients_per_day)
            );
        }
        UserCmd::Set {
            address,
            policy,
            disabled,
            max_messages_per_hour,
            max_recipients_per_day,
            forward,
            keep_copy,
            vacation_file,
            vacation_until,
            vacation,
        } => {
            let limits = admin::SendLimitChange::parse(
                max_messages_per_hour.as_deref(),
                max_recipients_per_day.as_deref(),
            )?;
            let rules_only = !forward.is_empty()
                || keep_copy.is_some()
                || vacation_file.is_some()
                || vacation_until.is_some()
                || vacation.is_some()
                || !limits.is_empty();
            let change = policy.change()?;
            let mut address = if rules_only && change.is_empty() && disabled.is_none() {
                normalize_address(&address)?
            } else {
                admin::set_user(&dir, &address, &change, disabled)?
            };
            if !limits.is_empty() {
                address = admin::set_user_send_limits(&dir, &address, &limits)?;
            }
            if !forward.is_empty() || keep_copy.is_some() {
                admin::set_forward(&dir, &address, &forward, keep_copy)?;
            }
            let off = |v: &str| v.eq_ignore_ascii_case("off");
            match (vacation.as_deref(), vacation_file.as_deref()) {
                (Some(v), _) if !off(v) => {
                    anyhow::bail!(
                        "--vacation takes only \"off\" (set one with --vacation-file FILE)"
                    )
                }
                (Some(_), _) | (None, Some("off" | "OFF" | "Off")) => {
                    admin::vacation_off(&dir, &address)?;
                }
                (None, Some(file)) => {
                    let text = std::fs::read(file)
                        .with_context(|| format!("cannot read the vacation file {file}"))?;
                    admin::set_vacation(&dir, &address, Some(&text), vacation_until.as_deref())?;
                }
                (None, None) => {
                    if vacation_until.is_some() {
                        admin::set_vacation(&dir, &address, None, vacation_until.as_deref())?;
                    }
                }
            }
            println!("updated user {address}");
        }
        UserCmd::Import { dovecot_passwd } => {
            let r = dir.import_dovecot_passwd_file(
                &dovecot_passwd,
                postoffice_directory::ImportOptions::default(),
            )?;
            println!(
                "imported: {} added, {} updated, {} skipped",
                r.added,
                r.updated,
                r.skipped.len()
            );
            for (line, why) in &r.skipped {
                println!("  line {line}: {why}");
            }
        }
        UserCmd::Fetch(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

fn deliver(config: &Config, recipient: &str) -> Result<ExitCode> {
    let dir = postoffice_core::app::directory(config)?;
    let store = match postoffice_core::app::store(config) {
        Ok(store) => store,
        // The database may be down for a moment: the MTA that called us
        // keeps the message and tries again.
        Err(e) => {
            eprintln!("postoffice deliver: {e}; the message was not stored, try again later");
            return Ok(ExitCode::from(sysexits::TEMPFAIL));
        }
    };
    let local = postoffice_core::delivery::Local {
        config,
        directory: &dir,
        store: &*store,
    };
    let mut stdin = std::io::stdin().lock();
    if std::io::stdin().is_terminal() {
        eprintln!("reading the message from standard input; end with Ctrl-D");
    }
    // The same delivery path as the SMTP listener: recipient check,
    // quotas, durable store.
    match local.deliver_stream(recipient, &mut stdin as &mut dyn Read) {
        Ok(d) => {
            eprintln!(
                "delivered to {recipient} ({} octets, uid {})",
                d.size, d.uid
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let hint = match e.exit_code() {
                sysexits::TEMPFAIL => "; the message was not stored, try again later",
                _ => "",
            };
            eprintln!("postoffice deliver: {e}{hint}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

fn queue_cmd(config: &Config, cmd: QueueCmd) -> Result<ExitCode> {
    use postoffice_queue::cli;
    let queue = postoffice_queue::open_configured(config)?;
    let out = match cmd {
        QueueCmd::List => cli::cli_list(&queue)?,
        QueueCmd::Show { id } => cli::cli_show(&queue, &id)?,
        QueueCmd::Retry { id } => cli::cli_retry(&queue, &id)?,
        QueueCmd::Delete { id } => cli::cli_delete(&queue, &id)?,
        QueueCmd::Flush => cli::cli_flush(&queue)?,
        QueueCmd::Release { id } => cli::cli_release(&queue, &id)?,
    };
    print!("{out}");
    if !out.ends_with('\n') && !out.is_empty() {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn sendmail(
    config: &Config,
    args: SendmailArgs,
    invoker: Option<postoffice_common::unix::User>,
) -> Result<ExitCode> {
    use postoffice_core::sendmail::{Request, Sent};
    const USAGE: u8 = 64;
    if let Some(mode) = &args.mode
        && mode != "m"
    {
        eprintln!("sendmail: -b{mode} is not supported (only -bm)");
        return Ok(ExitCode::from(USAGE));
    }
    let _ = (args.ignore_dots, &args.options);
    let app = postoffice_core::App::without_filters(config.clone())?;
    let queue = postoffice_queue::open_configured(config)?;
    app.set_outbound(std::sync::Arc::new(queue));
    let request = Request {
        recipients: args.recipients,
        from_headers: args.from_headers,
        sender: args.sender,
        full_name: args.full_name,
        user: invoker.context("cannot tell which local user runs sendmail (/proc/self/status)")?,
    };
    // The message is read as it comes (a large one goes to the spool).
    let mut stdin = std::io::stdin().lock();
    match postoffice_core::sendmail::send(&app, &request, &mut stdin) {
        Ok(Sent::Queued(q)) => {
            eprintln!("sendmail: queued as {q}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Sent::Delivered) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("sendmail: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

fn quarantine(config: &Config, cmd: QuarantineCmd) -> Result<ExitCode> {
    let store = postoffice_core::app::store(config)?;
    match cmd {
        QuarantineCmd::List { address } => {
            for m in admin::quarantine_list(&*store, &address)? {
                let date = postoffice_common::date::rfc5322(m.received);
                println!("{}\t{}\t{}\t{}", m.uid, m.size, date, m.subject);
            }
        }
        QuarantineCmd::Show { address, uid } => {
            let address = normalize_address(&address)?;
            let mut r = store.quarantine_read(&address, &uid)?;
            std::io::copy(&mut r, &mut std::io::stdout().lock())?;
        }
        QuarantineCmd::Release { address, uid } => {
            let address = admin::quarantine_release(&*store, &address, &uid)?;
            println!("released {uid} into the maildrop of {address}");
        }
        QuarantineCmd::Delete { address, uid } => {
            let address = admin::quarantine_delete(&*store, &address, &uid)?;
            println!("deleted {uid} from the quarantine of {address}");
        }
        QuarantineCmd::Digest { user } => {
            use postoffice_core::quarantine_digest::{Schedule, run};
            let dir = postoffice_core::app::directory(config)?;
            let r = run(config, &dir, &*store, user.as_deref(), Schedule::Now)?;
            for (user, n) in &r.sent {
                println!("{user}: digest of {n} quarantined message(s) delivered");
            }
            for e in &r.errors {
                eprintln!("error: {e}");
            }
            if r.sent.is_empty() && r.errors.is_empty() {
                println!("no quarantined messages that a digest has not listed yet");
            }
            if !r.errors.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn db(config: &Config, cmd: DbCmd) -> Result<ExitCode> {
    if config.storage.backend != postoffice_config::Backend::Postgres {
        anyhow::bail!(
            "[storage] backend is \"maildir\": there is no database; set backend = \"postgres\" and url first"
        );
    }
    let options = postoffice_core::app::pg_options(config)?;
    let url = config.storage.url_redacted();
    match cmd {
        DbCmd::Migrate => {
            let m = postoffice_pg::migrate(&options)
                .with_context(|| format!("migrating the database {url}"))?;
            if m.from == m.to {
                println!("schema is current (version {}) in {url}", m.to);
            } else {
                println!(
                    "schema upgraded from version {} to {} in {url}",
                    m.from, m.to
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCmd::Status => {
            let have = postoffice_pg::schema_version(&options)
                .with_context(|| format!("reading the schema version of {url}"))?;
            let want = postoffice_pg::SCHEMA_VERSION;
            println!("database {url}: schema version {have}, this postoffice needs {want}");
            if have == want {
                Ok(ExitCode::SUCCESS)
            } else {
                println!("run `postoffice db migrate`");
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// `postoffice migrate --to postgres|maildir`: the copy is the core's
/// (`postoffice_core::migrate`) and the queue's (`copy_missing_into`).
fn migrate(config: &Config, to: MigrateTo) -> Result<ExitCode> {
    use postoffice_config::Backend;
    let (backend, name) = match to {
        MigrateTo::Postgres => (Backend::Postgres, "postgres"),
        MigrateTo::Maildir => (Backend::Maildir, "maildir"),
    };
    let target = postoffice_core::migrate::target(config, backend)?;
    let url = config.storage.url_redacted();
    let place = match backend {
        Backend::Postgres => format!("the database {url}"),
        Backend::Maildir => config.data_dir.display().to_string(),
    };
    if backend == Backend::Postgres {
        let m = postoffice_pg::migrate(&postoffice_core::app::pg_options(&target)?)
            .with_context(|| format!("creating the schema in {place}"))?;
        if m.from != m.to {
            println!("schema: version {} created in {place}", m.to);
        }
    }
    eprintln!("copying into {place}");
    let report = postoffice_core::migrate::copy(config, &target, &mut |step| match step {
        postoffice_core::migrate::Step::Directory => eprintln!("directory and keys"),
        postoffice_core::migrate::Step::Mailbox { name, index, total } => {
            eprintln!("mailbox {}/{total}: {name}", index + 1);
        }
    })
    .with_context(|| format!("copying into {place} (what was copied stays; run again to go on)"))?;
    let queue = postoffice_queue::open_configured(config)
        .and_then(|from| from.copy_missing_into(&postoffice_queue::open_configured(&target)?))
        .with_context(|| format!("copying the queue into {place} (run again to go on)"))?;
    let there = |changed: bool| if changed { "copied" } else { "already there" };
    println!(
        "directory: {} domain(s), {} user(s), {}",
        report.domains,
        report.users,
        there(report.directory_changed)
    );
    println!(
        "keys: {} copied, {} already there",
        report.keys_copied, report.keys_present
    );
    println!(
        "messages: {} copied ({} bytes), {} already there, in {} mailbox(es)",
        report.messages_copied, report.bytes_copied, report.messages_present, report.mailboxes
    );
    println!(
        "quarantined: {} copied, {} already there",
        report.quarantined_copied, report.quarantined_present
    );
    println!("mailbox values: {} copied", report.values_copied);
    println!(
        "queue: {} entries copied, {} already there",
        queue.copied, queue.present
    );
    for s in &report.skipped {
        println!("left out: {s}");
    }
    if report.skipped.is_empty() {
        println!(
            "complete: set [storage] backend = \"{name}\" in the configuration and start the server(s)"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "incomplete: run `postoffice migrate --to {name}` again after dealing with the above"
        );
        Ok(ExitCode::from(1))
    }
}

fn expire(config: &Config, dry_run: bool) -> Result<ExitCode> {
    let dir = postoffice_core::app::directory(config)?;
    let store = postoffice_core::app::store(config)?;
    let r = postoffice_core::retention::sweep(config, &dir, &*store, dry_run);
    let verb = if dry_run { "would expire" } else { "expired" };
    for (user, n, bytes) in &r.expired {
        println!("{user}: {verb} {n} message(s), {bytes} bytes");
    }
    let verb_notice = if dry_run { "would notify" } else { "notified" };
    for (user, n) in &r.notices {
        println!("{user}: {verb_notice} of {n} message(s) retention deletes soon");
    }
    for user in &r.skipped_locked {
        println!("{user}: skipped, a POP3 session holds the maildrop (retried next time)");
    }
    if r.tmp_removed > 0 {
        println!("removed {} stale file(s) from tmp/", r.tmp_removed);
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    if r.expired.is_empty() && r.skipped_locked.is_empty() {
        println!("nothing to expire");
    }
    Ok(if r.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

//! `postoffice-bench`: load generator and corpus seeder for benchmarking
//! postoffice against Dovecot (POP3) and Postfix (SMTP).
//!
//! Every load mode runs a fixed amount of work (never open-ended), verifies
//! what it receives, and ends with one machine-readable `RESULT` line. The
//! exit status is 0 only if there was no error of any kind, so a script can
//! use a run as a check. See BENCHMARKS.md and `bench/compare.sh`.
#![forbid(unsafe_code)]

mod conn;
mod modes;
mod procinfo;
mod report;
mod seed;
mod sessions;
mod smtp;
mod tls;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::modes::Target;
use crate::procinfo::ServerSel;

/// Load generator and corpus seeder for mail servers: POP3 (postoffice,
/// Dovecot) and SMTP (postoffice, Postfix).
///
/// Load modes print a summary and one `RESULT mode=... key=value ...` line;
/// the exit status is 2 if any session failed or any check did not match.
#[derive(Parser, Debug)]
#[command(name = "postoffice-bench", version)]
struct Cli {
    /// Async worker threads. 1 (default) runs everything on one thread,
    /// which keeps the generator's CPU use low and easy to account for.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// POP3 load modes.
    #[command(subcommand)]
    Pop3(Pop3Cmd),
    /// SMTP: C concurrent clients send S messages of a given size to local
    /// users (round-robin), one transaction at a time per connection;
    /// timed until the last 250 and, with --wait-new, until every accepted
    /// message is a file in a Maildir new/ directory.
    Smtp(SmtpArgs),
    /// Write a deterministic corpus into Maildirs (postoffice or Dovecot
    /// layout) and, optionally, a Dovecot passwd-file for its users.
    Seed(SeedArgs),
}

#[derive(Subcommand, Debug)]
enum Pop3Cmd {
    /// A fixed number of full sessions (USER/PASS, STAT, [LIST], UIDL,
    /// RETR, [DELE], QUIT) from many concurrent clients.
    Sessions(SessionsArgs),
    /// K logged-in sessions (one per user) held idle for T seconds, with
    /// the servers' RSS/PSS measured while they are held.
    Hold(HoldArgs),
    /// Login + STAT + UIDL on one big maildrop, timed, repeated.
    Bigbox(SingleArgs),
    /// After login, COUNT × `LIST 1` in one write; time until all replies
    /// are read.
    Pipeline(PipelineArgs),
    /// RETR of one big message; MB/s.
    RetrBig(RetrBigArgs),
}

#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:2110")]
    addr: SocketAddr,
    /// Password (the same for every user).
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// Seconds before one session (or one timed step) counts as failed.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

impl TargetArgs {
    fn target(&self) -> Target {
        Target {
            addr: self.addr,
            password: self.password.clone(),
            timeout: Duration::from_secs(self.timeout),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct UserArgs {
    /// Users, one address per line; a Dovecot passwd-file works too
    /// (only the part before the first ':' is used).
    #[arg(long, value_name = "FILE", conflicts_with = "user_pattern")]
    users_file: Option<PathBuf>,
    /// Address pattern; {n} runs from --first-user.
    #[arg(long, default_value = "user{n}@bench.test")]
    user_pattern: String,
    /// Number of users (with --users-file: use the first N).
    #[arg(long)]
    users: Option<usize>,
    /// First {n} of --user-pattern.
    #[arg(long, default_value_t = 1)]
    first_user: usize,
}

impl UserArgs {
    fn load(&self) -> Result<Vec<String>> {
        match &self.users_file {
            Some(f) => users::from_file(f, self.users),
            None => {
                let Some(n) = self.users else {
                    bail!("--users N is needed with --user-pattern");
                };
                users::from_pattern(&self.user_pattern, self.first_user, n)
            }
        }
    }
}

#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// Server pids whose CPU time / memory to measure (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PID,PID..")]
    server_pids: Vec<u32>,
    /// Measure every process whose command line matches (pgrep -f).
    #[arg(long, value_name = "PATTERN")]
    server_pgrep: Option<String>,
    /// Measure these pids and all their descendants, found afresh at each
    /// measurement (Dovecot: the master pid from base_dir/master.pid).
    #[arg(long, value_delimiter = ',', value_name = "PID,PID..")]
    server_tree: Vec<u32>,
}

impl ServerArgs {
    fn sel(&self) -> ServerSel {
        ServerSel {
            pids: self.server_pids.clone(),
            pgrep: self.server_pgrep.clone(),
            tree: self.server_tree.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct SessionsArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    users: UserArgs,
    #[command(flatten)]
    servers: ServerArgs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Total sessions to run.
    #[arg(long)]
    sessions: usize,
    /// Messages to RETR per session: all, none (login-only: STAT + UIDL)
    /// or the first K.
    #[arg(long, default_value = "all")]
    retr: sessions::Retr,
    /// DELE every retrieved message (changes the corpus: runs no longer
    /// repeat).
    #[arg(long)]
    dele: bool,
    /// Check each body against its X-Bench-Body-SHA256 header (seeded
    /// corpora carry one).
    #[arg(long)]
    verify_hash: bool,
    /// Implicit TLS (POP3S, as on port 995): every session starts with a
    /// TLS handshake (rustls), counted in its latency. Needs --tls-ca.
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// The certificates to trust (PEM): the CA that signed the server's
    /// certificate, or a self-signed server certificate itself. The
    /// certificate is verified (chain, validity, name) on every full
    /// handshake.
    #[arg(long, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// The name to verify the server's certificate against (default: the
    /// IP address of --addr, which the certificate must list).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
    /// Every user is a returning client with its own TLS session store
    /// (as a mail client keeps one): before the clock starts each connects
    /// once (handshake, greeting, QUIT), then every session offers the
    /// ticket or session id its client got last. Without it, resumption is
    /// off and every handshake is full. The report counts both kinds.
    #[arg(long, requires = "tls")]
    tls_resume: bool,
}

#[derive(Args, Debug)]
struct HoldArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    users: UserArgs,
    #[command(flatten)]
    servers: ServerArgs,
    /// Sessions to hold, one per user (the first K users).
    #[arg(long)]
    sessions: usize,
    /// Seconds to hold them once all are logged in.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Sessions connecting and logging in at the same time.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
}

#[derive(Args, Debug)]
struct SingleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The user to log in as.
    #[arg(long, default_value = "bigbox1@bench.test")]
    user: String,
    /// Repetitions (one session each).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

#[derive(Args, Debug)]
struct PipelineArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The user to log in as (needs at least one message).
    #[arg(long, default_value = "user1@bench.test")]
    user: String,
    /// Commands in the burst.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Repetitions (one session each).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

#[derive(Args, Debug)]
struct RetrBigArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The user to log in as.
    #[arg(long, default_value = "bigmsg1@bench.test")]
    user: String,
    /// Message number.
    #[arg(long, default_value_t = 1)]
    msg: u64,
    /// Repetitions (one session each).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Check the body against its X-Bench-Body-SHA256 header.
    #[arg(long)]
    verify_hash: bool,
}

#[derive(Args, Debug)]
struct SmtpArgs {
    /// Server address (an SMTP listener that accepts mail for the users).
    #[arg(long, default_value = "127.0.0.1:2525")]
    addr: SocketAddr,
    /// Recipients, used round-robin.
    #[command(flatten)]
    users: UserArgs,
    #[command(flatten)]
    servers: ServerArgs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Messages to send in all.
    #[arg(long)]
    messages: usize,
    /// Octets per message as sent (headers, body and line ends).
    #[arg(long, default_value_t = 10_240)]
    size: usize,
    /// Transactions per connection before QUIT (1: a new connection per
    /// message, like smtp-source without -d).
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// MAIL FROM address.
    #[arg(long, default_value = "bench@bench.test")]
    sender: String,
    /// EHLO name.
    #[arg(long, default_value = "bench.test")]
    helo: String,
    /// Seconds before one transaction counts as failed.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// After the last reply, wait until the files in the Maildir `new/`
    /// directories under DIR have grown by the number of accepted
    /// messages (end-to-end rate).
    #[arg(long, value_name = "DIR")]
    wait_new: Option<PathBuf>,
    /// Seconds to wait for --wait-new before reporting the missing ones.
    #[arg(long, default_value_t = 300)]
    wait_timeout: u64,
    /// After --wait-new, read every new file back: each accepted message
    /// must be there once, in its recipient's Maildir, with the headers
    /// and body sent (CRLF or LF). Done after the clock stops.
    #[arg(long, requires = "wait_new")]
    verify_delivered: bool,
    /// Sample the servers' total RSS every 50 ms (and PSS every 150 ms)
    /// during the run and report the peaks; for --server-pids also reset
    /// their peak-RSS mark (VmHWM, /proc/PID/clear_refs) before the run and
    /// report it after.
    #[arg(long)]
    sample_memory: bool,
    /// Retry a message that got a 4xx reply (try again later) up to N
    /// times, on a new connection after a short pause; each retry is
    /// reported. Without retries (0) a 4xx counts as an error.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: usize,
}

#[derive(Args, Debug)]
struct SeedArgs {
    /// Data directory (postoffice: its data_dir; Dovecot: the homes' parent).
    #[arg(long)]
    dir: PathBuf,
    /// Number of users.
    #[arg(long)]
    users: usize,
    /// Messages per user.
    #[arg(long)]
    messages: usize,
    /// Users are <prefix><n>@<domain>.
    #[arg(long, default_value = "user")]
    user_prefix: String,
    /// First n.
    #[arg(long, default_value_t = 1)]
    first_user: usize,
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Seed of the generator: the same options give the same corpus.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, value_enum, default_value = "postoffice")]
    layout: seed::Layout,
    /// Message sizes: mixed (mean ≈ 48 KB: most 2–10 KB, some to 100 KB,
    /// a few to 2 MB), small (1–4 KB) or a fixed size in octets.
    #[arg(long, default_value = "mixed")]
    sizes: seed::Sizes,
    /// Also write a Dovecot passwd-file (SHA512-CRYPT) for these users.
    #[arg(long, value_name = "FILE")]
    passwd_file: Option<PathBuf>,
    /// Password of every user in --passwd-file.
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// chown created directories and files to UID:GID (Dovecot's mail_uid).
    #[arg(long, value_name = "UID:GID")]
    owner: Option<String>,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    writers: usize,
}

fn parse_owner(s: &str) -> Result<(u32, u32)> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok((
        u.parse().context("--owner UID")?,
        g.parse().context("--owner GID")?,
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("postoffice-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Load {
    Pop3(Pop3Cmd),
    Smtp(SmtpArgs),
}

fn run(cli: Cli) -> Result<bool> {
    let pop3 = match cli.command {
        Command::Seed(a) => {
            seed::run(&seed::SeedOptions {
                dir: a.dir,
                users: a.users,
                first_user: a.first_user,
                user_prefix: a.user_prefix,
                messages: a.messages,
                domain: a.domain,
                seed: a.seed,
                layout: a.layout,
                sizes: a.sizes,
                passwd_file: a.passwd_file,
                password: a.password,
                owner: a.owner.as_deref().map(parse_owner).transpose()?,
                threads: a.writers,
            })?;
            return Ok(true);
        }
        Command::Pop3(p) => Load::Pop3(p),
        Command::Smtp(a) => Load::Smtp(a),
    };
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let pop3 = match pop3 {
            Load::Pop3(p) => p,
            Load::Smtp(a) => {
                let users = a.users.load()?;
                return smtp::run(
                    smtp::Options {
                        addr: a.addr,
                        concurrency: a.concurrency,
                        messages: a.messages,
                        size: a.size,
                        per_connection: a.per_connection,
                        sender: a.sender,
                        helo: a.helo,
                        timeout: Duration::from_secs(a.timeout),
                        wait_new: a.wait_new,
                        wait_timeout: Duration::from_secs(a.wait_timeout),
                        servers: a.servers.sel(),
                        verify_delivered: a.verify_delivered,
                        sample_memory: a.sample_memory,
                        retries: a.retries,
                    },
                    users,
                )
                .await;
            }
        };
        match pop3 {
            Pop3Cmd::Sessions(a) => {
                let pool = users::UserPool::new(a.users.load()?);
                if a.concurrency == 0 || a.sessions == 0 {
                    bail!("--concurrency and --sessions must be at least 1");
                }
                let tls = match (&a.tls_ca, a.tls) {
                    (Some(ca), true) => Some(sessions::TlsOptions {
                        setup: tls::TlsSetup::new(ca, a.tls_server_name.as_deref(), a.target.addr)?,
                        resume: a.tls_resume,
                    }),
                    _ => None,
                };
                sessions::run(
                    sessions::Options {
                        addr: a.target.addr,
                        password: a.target.password.clone(),
                        concurrency: a.concurrency,
                        sessions: a.sessions,
                        retr: a.retr,
                        dele: a.dele,
                        verify_hash: a.verify_hash,
                        timeout: Duration::from_secs(a.target.timeout),
                        servers: a.servers.sel(),
                        tls,
                    },
                    pool,
                )
                .await
            }
            Pop3Cmd::Hold(a) => {
                let mut ua = a.users.clone();
                if ua.users.is_none() && ua.users_file.is_none() {
                    ua.users = Some(a.sessions);
                }
                let mut users = ua.load()?;
                if users.len() < a.sessions {
                    bail!(
                        "--sessions {} needs as many distinct users, only {} given",
                        a.sessions,
                        users.len()
                    );
                }
                users.truncate(a.sessions);
                modes::hold(
                    modes::HoldOptions {
                        target: a.target.target(),
                        seconds: a.seconds,
                        connect_concurrency: a.connect_concurrency,
                        servers: a.servers.sel(),
                    },
                    users,
                )
                .await
            }
            Pop3Cmd::Bigbox(a) => modes::bigbox(a.target.target(), a.user, a.repeat).await,
            Pop3Cmd::Pipeline(a) => {
                modes::pipeline(a.target.target(), a.user, a.count, a.repeat).await
            }
            Pop3Cmd::RetrBig(a) => {
                modes::retr_big(a.target.target(), a.user, a.msg, a.repeat, a.verify_hash).await
            }
        }
    })
}

//! `postoffice fetch`: the command-line front end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::client::Trace;
use crate::config::{Account, FetchConfig, default_config_path};
use crate::fetch::{AccountReport, RunOptions, fetch_account};
use crate::progress::Output;

/// Exit status: everything fetched as configured.
pub const EXIT_OK: u8 = 0;
/// Exit status: at least one account failed (wrong password, certificate,
/// delivery failure, ...).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: the accounts file is missing or invalid, or `--account`
/// names an unknown account.
pub const EXIT_CONFIG: u8 = 2;
/// Exit status: only temporary failures (network, server busy or
/// `[SYS/TEMP]`, `[IN-USE]`, `[LOGIN-DELAY]`); try again later
/// (sysexits EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: u8 = 75;

const AFTER_HELP: &str = "\
Accounts are read from a TOML file (see fetch.example.toml); messages are \
deleted on the server only after they are safely stored, and only the \
server's reply to QUIT commits deletions, so an interrupted run (even \
kill -9) never loses mail, and a rerun never delivers a message twice to a \
maildir or mbox (a command is told, with POSTOFFICE_FETCH_REPEAT=1, when a \
message may be a repeat).

Exit status:
  0   everything went well
  1   some account failed (authentication, certificate, delivery, ...)
  2   configuration error (accounts file, --account)
  75  temporary failure only (network or server trouble); try again later";

/// Download mail from POP3 accounts into a Maildir, an mbox or a command.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(after_help = AFTER_HELP)]
pub struct FetchArgs {
    /// The accounts file [default: ~/.config/postoffice/fetch.toml].
    #[arg(long, value_name = "PATH", env = "POSTOFFICE_FETCH_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Fetch once and exit (the default).
    #[arg(long, conflicts_with = "poll")]
    pub once: bool,
    /// Keep running and fetch every DURATION (e.g. 30s, 5m, 1h). Errors
    /// back off exponentially (up to 30 minutes); an account is never
    /// polled more often than its server's LOGIN-DELAY allows.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub poll: Option<Duration>,
    /// Only this account (repeatable) [default: all].
    #[arg(long = "account", value_name = "NAME")]
    pub accounts: Vec<String>,
    /// Connect and show what would be fetched and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Show the POP3 conversation on standard error (passwords masked).
    #[arg(short, long)]
    pub verbose: bool,
    /// Accept any TLS certificate. DANGEROUS: anyone on the network path
    /// can then pose as the server and read your password.
    #[arg(long)]
    pub insecure: bool,
}

/// Parse `30s`, `5m`, `1h`, `1d`, combinations like `1h30m`, or plain
/// seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return check_duration(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected a number before {c:?}"))?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    if !num.is_empty() {
        return Err(format!(
            "{s:?}: missing unit after {num} (use s, m, h or d)"
        ));
    }
    check_duration(Duration::from_secs(total))
}

fn check_duration(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("the duration must be at least 1s".into())
    } else {
        Ok(d)
    }
}

/// The delay before the next attempt after `failures` consecutive failed
/// runs: the poll interval doubled per failure, at most 30 minutes (or the
/// poll interval, if that is longer).
pub(crate) fn backoff(every: Duration, failures: u32) -> Duration {
    let cap = every.max(Duration::from_secs(30 * 60));
    if failures == 0 {
        return every;
    }
    let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
    every.saturating_mul(factor).min(cap)
}

/// How long `--poll` waits before the next run of an account: the
/// [`backoff`] for its consecutive `failures`, but never less than what is
/// left of the server's LOGIN-DELAY, which counts from the login (about
/// when the last run began, `since_login` ago).
pub(crate) fn next_wait(
    every: Duration,
    failures: u32,
    login_delay: Option<Duration>,
    since_login: Duration,
) -> Duration {
    let wait = backoff(every, failures);
    match login_delay {
        Some(delay) => wait.max(delay.saturating_sub(since_login)),
        None => wait,
    }
}

/// Run `postoffice fetch`. Builds its own tokio runtime, so call it from
/// synchronous code. Returns the exit status (see [`EXIT_OK`] and
/// friends); `Err` only for failures outside any account (e.g. the runtime
/// cannot start).
pub fn run(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let path = match args.config_file.clone().or_else(default_config_path) {
        Some(p) => p,
        None => {
            eprintln!("postoffice fetch: HOME is not set; give --config-file");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let config = match FetchConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postoffice fetch: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let accounts = match select_accounts(&config, &args.accounts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("postoffice fetch: {e} (in {})", path.display());
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let output = Arc::new(Output::new());
    if args.insecure || accounts.iter().any(|a| a.insecure) {
        output.eprint(
            "postoffice fetch: WARNING: TLS certificates are not verified (insecure); \
             the server's identity is not checked",
        );
    }
    let trace: Option<Trace> = args.verbose.then(|| {
        let out = Arc::clone(&output);
        Arc::new(move |line: &str| out.eprint(line)) as Trace
    });
    let opts = RunOptions {
        dry_run: args.dry_run,
        insecure: args.insecure,
        trace,
        progress: Some(output.clone() as Arc<dyn crate::fetch::Progress>),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = rt.block_on(async {
        match args.poll {
            None => run_once(&accounts, &opts, &output).await,
            Some(every) => poll(&accounts, every, &opts, &output).await,
        }
    });
    Ok(ExitCode::from(code))
}

fn select_accounts<'a>(
    config: &'a FetchConfig,
    names: &[String],
) -> Result<Vec<&'a Account>, String> {
    if config.accounts.is_empty() {
        return Err("no [[account]] configured".into());
    }
    if names.is_empty() {
        return Ok(config.accounts.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            config
                .accounts
                .iter()
                .find(|a| &a.name == n)
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        config.accounts.iter().map(|a| a.name.as_str()).collect();
                    format!("no account named {n:?} (known: {})", known.join(", "))
                })
        })
        .collect()
}

fn report_lines(report: &AccountReport, output: &Output, retry: Option<Duration>) {
    println!("{}", report.summary());
    if let Some(e) = &report.error {
        let hint = match retry {
            Some(d) => format!("; retrying in {}", format_duration(d)),
            None if e.is_temporary() => "; this is probably temporary".into(),
            None => String::new(),
        };
        output.eprint(&format!("{}: error: {e}{hint}", report.account));
    }
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The exit status for a set of reports.
pub fn exit_status(reports: &[AccountReport]) -> u8 {
    let failed = reports
        .iter()
        .any(|r| r.failed > 0 || r.error.as_ref().is_some_and(|e| !e.is_temporary()));
    let temporary = reports.iter().any(|r| r.error.is_some());
    if failed {
        EXIT_FAILED
    } else if temporary {
        EXIT_TEMPFAIL
    } else {
        EXIT_OK
    }
}

async fn run_once(accounts: &[&Account], opts: &RunOptions, output: &Output) -> u8 {
    let mut reports = Vec::new();
    for account in accounts {
        let report = fetch_account(account, opts).await;
        report_lines(&report, output, None);
        reports.push(report);
    }
    exit_status(&reports)
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

struct Schedule {
    next: tokio::time::Instant,
    failures: u32,
    login_delay: Option<Duration>,
}

/// `--poll`: run every account every `every`, until SIGINT/SIGTERM. An
/// interrupted session is simply dropped: nothing is lost (see
/// [`crate::fetch`]).
async fn poll(accounts: &[&Account], every: Duration, opts: &RunOptions, output: &Output) -> u8 {
    let stop = stop_signal();
    tokio::pin!(stop);
    let start = tokio::time::Instant::now();
    let mut sched: Vec<Schedule> = accounts
        .iter()
        .map(|_| Schedule {
            next: start,
            failures: 0,
            login_delay: None,
        })
        .collect();
    loop {
        for (account, s) in accounts.iter().zip(sched.iter_mut()) {
            if s.next > tokio::time::Instant::now() {
                continue;
            }
            let began = tokio::time::Instant::now();
            let report = tokio::select! {
                r = fetch_account(account, opts) => r,
                _ = &mut stop => {
                    output.eprint("postoffice fetch: stopping");
                    return EXIT_OK;
                }
            };
            if report.login_delay.is_some() {
                s.login_delay = report.login_delay;
            }
            if report.is_ok() {
                s.failures = 0;
            } else {
                s.failures = s.failures.saturating_add(1);
            }
            let wait = next_wait(every, s.failures, s.login_delay, began.elapsed());
            s.next = tokio::time::Instant::now() + wait;
            report_lines(&report, output, (!report.is_ok()).then_some(wait));
        }
        let next = sched
            .iter()
            .map(|s| s.next)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + every);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut stop => {
                output.eprint("postoffice fetch: stopping");
                return EXIT_OK;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Top {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        /// Fetch mail.
        Fetch(FetchArgs),
    }

    fn parse(args: &[&str]) -> Result<FetchArgs, clap::Error> {
        let mut v = vec!["postoffice", "fetch"];
        v.extend_from_slice(args);
        Top::try_parse_from(v).map(|t| match t.cmd {
            Cmd::Fetch(a) => a,
        })
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5").is_ok());
        assert!(parse_duration("12 ").is_ok());
        assert!(parse_duration("1h5").is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let m = |n: u64| Duration::from_secs(60 * n);
        assert_eq!(backoff(m(5), 0), m(5));
        assert_eq!(backoff(m(5), 1), m(10));
        assert_eq!(backoff(m(5), 2), m(20));
        assert_eq!(backoff(m(5), 3), m(30));
        assert_eq!(backoff(m(5), 30), m(30));
        assert_eq!(backoff(m(60), 2), m(60));
    }

    #[test]
    fn poll_waits_honour_login_delay() {
        let m = |n: u64| Duration::from_secs(60 * n);
        assert_eq!(next_wait(m(1), 0, None, m(0)), m(1));
        // LOGIN-DELAY 15 minutes: polling every minute is not allowed.
        assert_eq!(next_wait(m(1), 0, Some(m(15)), m(2)), m(13));
        assert_eq!(next_wait(m(20), 0, Some(m(15)), m(2)), m(20));
        // Backoff and LOGIN-DELAY together: the longer one.
        assert_eq!(next_wait(m(5), 2, Some(m(15)), m(0)), m(20));
        assert_eq!(next_wait(m(5), 0, Some(m(15)), m(30)), m(5));
    }

    #[test]
    fn arguments() {
        let a = parse(&[
            "--poll",
            "5m",
            "--account",
            "a",
            "--account",
            "b",
            "-v",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(a.poll, Some(Duration::from_secs(300)));
        assert_eq!(a.accounts, ["a", "b"]);
        assert!(a.verbose && a.dry_run && !a.insecure);
        assert!(parse(&["--once", "--poll", "5m"]).is_err());
        assert!(parse(&["--poll", "soon"]).is_err());
        let help = Top::try_parse_from(["postoffice", "fetch", "--help"])
            .unwrap_err()
            .to_string();
        for needle in ["--config-file", "--poll", "--insecure", "Exit status", "75"] {
            assert!(help.contains(needle), "help lacks {needle}: {help}");
        }
    }

    #[test]
    fn exit_statuses() {
        use crate::error::Error;
        use crate::fetch::FetchError;
        let ok = AccountReport::default();
        let temp = AccountReport {
            error: Some(FetchError::Pop3(Error::Closed)),
            ..Default::default()
        };
        let perm = AccountReport {
            error: Some(FetchError::Pop3(Error::Auth("no".into()))),
            ..Default::default()
        };
        let partial = AccountReport {
            failed: 1,
            ..Default::default()
        };
        assert_eq!(exit_status(&[]), EXIT_OK);
        assert_eq!(exit_status(std::slice::from_ref(&ok)), EXIT_OK);
        assert_eq!(
            exit_status(&[AccountReport::default(), temp]),
            EXIT_TEMPFAIL
        );
        assert_eq!(exit_status(&[perm]), EXIT_FAILED);
        assert_eq!(exit_status(&[partial]), EXIT_FAILED);
    }

    #[test]
    fn missing_config_is_exit_2() {
        let dir = tempfile::tempdir().unwrap();
        let args = FetchArgs {
            config_file: Some(dir.path().join("nope.toml")),
            ..FetchArgs::default()
        };
        assert_eq!(run(args).unwrap(), ExitCode::from(EXIT_CONFIG));
        std::fs::write(dir.path().join("bad.toml"), "[[account]]\nname = 1\n").unwrap();
        let args = FetchArgs {
            config_file: Some(dir.path().join("bad.toml")),
            ..FetchArgs::default()
        };
        assert_eq!(run(args).unwrap(), ExitCode::from(EXIT_CONFIG));
    }
}

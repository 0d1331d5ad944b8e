//! `postoffice import`: parse, then call `postoffice_pull::import`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use postoffice_config::Config;
use postoffice_core::delivery::sysexits;
use postoffice_pull::ImportProgress;
use postoffice_pull::import::{import_dovecot_maildir, import_pop3};

/// Copy a user's mail from another POP3 server, or from a Dovecot Maildir,
/// keeping every message's UIDL, so that mail clients which left mail on
/// the old server download nothing again. Resumable (run it again after an
/// interruption) and idempotent (messages already here are skipped). The
/// user's maildrop is locked meanwhile: their POP3 logins get [IN-USE].
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["pop3", "dovecot_maildir"]))]
pub(crate) struct ImportArgs {
    /// The local user (who must exist), e.g. alice@example.test.
    address: String,
    /// Import from this POP3 server (HOST:PORT, or HOST for the --tls
    /// mode's standard port).
    #[arg(long, value_name = "HOST:PORT", requires = "login")]
    pop3: Option<String>,
    /// The user name on the POP3 server.
    #[arg(long, value_name = "USER")]
    login: Option<String>,
    /// Read the POP3 password from the first line of standard input.
    #[arg(long, requires = "pop3")]
    password_stdin: bool,
    /// implicit (POP3S), starttls (STLS) or none.
    #[arg(long, value_enum, default_value = "implicit")]
    tls: Tls,
    /// Trust this CA (PEM) for the POP3 server instead of the system's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (dangerous: the password can be stolen).
    #[arg(long)]
    insecure: bool,
    /// Delete the messages on the POP3 server once all are stored here.
    #[arg(long, requires = "pop3")]
    delete: bool,
    /// Import from this Dovecot Maildir (the user's INBOX: the directory
    /// holding cur/, new/ and dovecot-uidlist).
    #[arg(long, value_name = "PATH")]
    dovecot_maildir: Option<PathBuf>,
    /// Dovecot's pop3_uidl_format, if it was changed from the default.
    #[arg(long, value_name = "FORMAT", default_value = postoffice_pull::dovecot::DEFAULT_UIDL_FORMAT)]
    uidl_format: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Tls {
    Implicit,
    Starttls,
    None,
}

/// A progress bar on a terminal; notes on standard error.
struct Bar(Option<indicatif::ProgressBar>);

impl ImportProgress for Bar {
    fn start(&self, messages: u64, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_length(messages);
            b.set_message(format!("{:.1} MB to copy", bytes as f64 / 1e6));
        }
    }
    fn imported(&self, _bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }
    fn log(&self, line: &str) {
        match &self.0 {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

pub(crate) fn run(config: Config, args: ImportArgs) -> Result<ExitCode> {
    let address = postoffice_directory::normalize_address(&args.address)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.address))?;
    let app = postoffice_core::App::without_filters(config)?;
    if app.directory.snapshot().user(&address).is_none() {
        eprintln!("postoffice: no such user: {address} (add it with `postoffice user add`)");
        return Ok(ExitCode::from(sysexits::NOUSER));
    }
    let bar = Bar(std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} messages, {elapsed} ({eta} left) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    }));
    let result = if let Some(path) = &args.dovecot_maildir {
        import_dovecot_maildir(&app.store, &address, path, &args.uidl_format, &bar)
    } else {
        let Some(server) = &args.pop3 else {
            bail!("give --pop3 HOST:PORT or --dovecot-maildir PATH");
        };
        let login = args
            .login
            .clone()
            .context("--login is needed with --pop3")?;
        if !args.password_stdin {
            bail!(
                "--pop3 needs --password-stdin (the password is never taken from the command line)"
            );
        }
        let mut password = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut password)
            .context("reading the password from standard input")?;
        let password = password.trim_end_matches(['\r', '\n']).to_owned();
        let tls = match args.tls {
            Tls::Implicit => postoffice_fetch::TlsMode::Implicit,
            Tls::Starttls => postoffice_fetch::TlsMode::Starttls,
            Tls::None => postoffice_fetch::TlsMode::None,
        };
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                p.parse::<u16>()
                    .with_context(|| format!("bad port in {server}"))?,
            ),
            _ => (server.clone(), tls.default_port()),
        };
        let mut connect = postoffice_fetch::ConnectOptions::new(host, tls);
        connect.port = port;
        connect.trust = if args.insecure {
            postoffice_fetch::Trust::Insecure
        } else if let Some(ca) = &args.ca_file {
            postoffice_fetch::Trust::CaFile(ca.clone())
        } else {
            postoffice_fetch::Trust::System
        };
        // A big maildrop takes longer than fetch's one-hour default.
        connect.session_timeout = None;
        let source = postoffice_pull::Pop3Source {
            connect,
            user: login,
            password,
            delete: args.delete,
        };
        let app = Arc::new(app);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        rt.block_on(import_pop3(&app, &address, &source, &bar))
    };
    match result {
        Ok(report) => {
            println!("{}", report.summary(&address));
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            eprintln!("postoffice: import into {address} stopped: {e}");
            eprintln!(
                "postoffice: what was imported stays; run the same command again to continue"
            );
            Ok(ExitCode::from(match e {
                postoffice_pull::ImportError::InUse(_) | postoffice_pull::ImportError::Pop3(_) => {
                    sysexits::TEMPFAIL
                }
                _ => 1,
            }))
        }
    }
}

//! `postoffice user fetch`: parse, then call `postoffice_pull::jobs`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use postoffice_config::Config;
use postoffice_core::delivery::sysexits;
use postoffice_pull::jobs::{self, Job, JobTls};

/// A user's accounts on other POP3 servers, which the server pulls into
/// their maildrop every `[fetch_jobs] interval_secs`, through the same
/// verification as SMTP mail.
#[derive(Subcommand, Debug)]
pub(crate) enum FetchJobCmd {
    /// Add an account to pull mail from (the password is read from the
    /// first line of standard input).
    Add {
        /// The local user, e.g. alice@example.test.
        address: String,
        /// A name for the job (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// The POP3 server: HOST or HOST:PORT.
        #[arg(long, value_name = "HOST[:PORT]")]
        server: String,
        /// The login there.
        #[arg(long, value_name = "USER")]
        login: String,
        /// Read the password from standard input (required).
        #[arg(long)]
        password_stdin: bool,
        /// implicit (POP3S), starttls (STLS) or none.
        #[arg(long, value_enum, default_value = "implicit")]
        tls: Tls,
        /// Leave the messages on the server (default: delete them once
        /// stored here).
        #[arg(long)]
        keep: bool,
        /// Trust this CA (PEM) for the server instead of the system's.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Accept any TLS certificate (dangerous).
        #[arg(long)]
        insecure: bool,
    },
    /// List the fetch jobs (of one user, or all).
    #[command(alias = "ls")]
    List { address: Option<String> },
    /// Remove a fetch job.
    #[command(alias = "rm")]
    Del { address: String, name: String },
    /// Run fetch jobs now, once (of one user, or all), and print what they
    /// did.
    Run { address: Option<String> },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Tls {
    Implicit,
    Starttls,
    None,
}

pub(crate) fn run(config: &Config, cmd: FetchJobCmd) -> Result<ExitCode> {
    let data = &config.data_dir;
    let dir = postoffice_core::app::directory(config)?;
    let user = |a: &str| -> Result<String> {
        let a = postoffice_directory::normalize_address(a)?;
        if dir.snapshot().user(&a).is_none() {
            bail!("no such user: {a}");
        }
        Ok(a)
    };
    match cmd {
        FetchJobCmd::Add {
            address,
            name,
            server,
            login,
            password_stdin,
            tls,
            keep,
            ca_file,
            insecure,
        } => {
            let address = user(&address)?;
            if !password_stdin {
                bail!("give the password on standard input with --password-stdin");
            }
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password")?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            let tls = match tls {
                Tls::Implicit => JobTls::Implicit,
                Tls::Starttls => JobTls::Starttls,
                Tls::None => JobTls::None,
            };
            let (host, port) = match server.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (
                    h.to_owned(),
                    p.parse::<u16>()
                        .with_context(|| format!("bad port in {server}"))?,
                ),
                _ => (
                    server.clone(),
                    postoffice_fetch::TlsMode::from(tls).default_port(),
                ),
            };
            jobs::add(
                data,
                Job {
                    address: address.clone(),
                    name: name.clone(),
                    server: host,
                    port,
                    tls,
                    login,
                    password,
                    keep,
                    ca_file: ca_file.map(|p| std::path::absolute(&p).unwrap_or(p)),
                    insecure,
                },
            )?;
            println!("fetch job {address}/{name} added");
            Ok(ExitCode::SUCCESS)
        }
        FetchJobCmd::List { address } => {
            let only = address.map(|a| user(&a)).transpose()?;
            for j in jobs::load(data)? {
                if only.as_ref().is_some_and(|a| *a != j.address) {
                    continue;
                }
                println!(
                    "{}/{}: {}@{}:{} tls={:?} {}",
                    j.address,
                    j.name,
                    j.login,
                    j.server,
                    j.port,
                    j.tls,
                    if j.keep { "keep" } else { "delete" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FetchJobCmd::Del { address, name } => {
            let address = postoffice_directory::normalize_address(&address)?;
            jobs::remove(data, &address, &name)?;
            println!("fetch job {address}/{name} removed");
            Ok(ExitCode::SUCCESS)
        }
        FetchJobCmd::Run { address } => {
            let only = address.map(|a| user(&a)).transpose()?;
            let app = Arc::new(postoffice_core::App::new(config.clone())?);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let mut failed = false;
            rt.block_on(async {
                for j in jobs::load(data)? {
                    if only.as_ref().is_some_and(|a| *a != j.address) {
                        continue;
                    }
                    let report = jobs::run_job(&app, &j).await;
                    println!("{}", report.summary());
                    if let Some(e) = &report.error {
                        eprintln!("{}: {e}", j.id());
                        failed = true;
                    }
                }
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(if failed {
                ExitCode::from(sysexits::TEMPFAIL)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

//! Server-run fetch jobs: a user's accounts on other POP3 servers, pulled
//! into their maildrop by the server (`[fetch_jobs]`), like a webmail
//! provider's "check mail from other accounts".
//!
//! The jobs live in `<data_dir>/fetch-jobs.toml` (mode 0600: it holds the
//! passwords), written by `postoffice user fetch add|del` under a lock and
//! re-read by the server before every round. Each job keeps a
//! `postoffice fetch` state file in `<data_dir>/fetch-state/<address>/`.
//!
//! A run is [`postoffice_fetch::fetch_account`] with a destination of our
//! own ([`postoffice_fetch::Sink`]): every message is spooled, then goes
//! through [`postoffice_core::inbound::deliver_as`] — the verification
//! pipeline of SMTP mail (SPF, DKIM and DMARC as the last hop the remote
//! provider recorded in its topmost `Received:` field saw it; clamd),
//! trace and verdict headers, quotas — and is stored under a unique ID
//! chosen before the delivery. That ID is the receipt `postoffice fetch`
//! writes to its state file before the delivery and records after it, so a
//! crash at any point neither loses a message (it stays on the remote
//! server until recorded) nor delivers one twice (an unrecorded receipt is
//! looked up in the maildrop,
//! [`MailStore::contains`](postoffice_store::MailStore::contains)). What the pipeline
//! rejects goes to the user's quarantine instead (fetched mail cannot be
//! refused to its sender); a temporary failure leaves the message on the
//! remote server for the next run. A failing job (server down, wrong
//! password) is retried after `interval_secs` doubled per failure in a row,
//! up to `max_backoff_secs`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postoffice_common::content::{Content, Piece, Pieces, SpoolWriter};
use postoffice_common::durable;
use postoffice_common::ids::unique_id;
use postoffice_core::App;
use postoffice_core::inbound::{self, Outcome};
use postoffice_fetch::{
    Account, AccountReport, CustomDestination, Delivery, Destination, Policy, RunOptions, Secret,
    Sink, TlsMode,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The jobs file, in the data directory.
pub const JOBS_FILE: &str = "fetch-jobs.toml";
/// The writers' lock of the jobs file.
const LOCK_FILE: &str = "fetch-jobs.lock";
/// The directory of the jobs' state files, in the data directory.
pub const STATE_DIR: &str = "fetch-state";

/// Why the jobs file could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// Reading, locking or writing it failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A job name that cannot name a state file.
    #[error("job name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    /// The user already has a job of that name.
    #[error("{0} already has a fetch job named {1:?}")]
    Exists(String, String),
    /// No such job.
    #[error("{0} has no fetch job named {1:?}")]
    NotFound(String, String),
}

/// How a job talks to its server (`tls` in the jobs file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobTls {
    /// POP3S.
    Implicit,
    /// STLS.
    Starttls,
    /// Neither (passwords in clear).
    None,
}

impl From<JobTls> for TlsMode {
    fn from(t: JobTls) -> TlsMode {
        match t {
            JobTls::Implicit => TlsMode::Implicit,
            JobTls::Starttls => TlsMode::Starttls,
            JobTls::None => TlsMode::None,
        }
    }
}

/// One user's account elsewhere.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The local user the mail is for.
    pub address: String,
    /// The job's name (unique per user).
    pub name: String,
    /// The POP3 server.
    pub server: String,
    /// Its port.
    pub port: u16,
    /// TLS mode.
    pub tls: JobTls,
    /// The login there.
    pub login: String,
    /// The password there.
    pub password: String,
    /// Leave the messages on the server (else delete them once stored).
    #[serde(default)]
    pub keep: bool,
    /// A CA file (PEM) to verify the server with, instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (dangerous).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("address", &self.address)
            .field("name", &self.name)
            .field("server", &self.server)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("login", &self.login)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// `address/name`, for logs.
    pub fn id(&self) -> String {
        format!("{}/{}", self.address, self.name)
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsFile {
    #[serde(default, rename = "job")]
    jobs: Vec<Job>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Every job in `data_dir` (none if there is no jobs file).
pub fn load(data_dir: &Path) -> Result<Vec<Job>, JobsError> {
    let path = data_dir.join(JOBS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JobsError::Io { path, source }),
    };
    let file: JobsFile = toml::from_str(&text).map_err(|e| JobsError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(file.jobs)
}

/// Changes the jobs file under its lock (re-read under the lock; written
/// atomically, mode 0600).
fn mutate<T>(
    data_dir: &Path,
    change: impl FnOnce(&mut Vec<Job>) -> Result<T, JobsError>,
) -> Result<T, JobsError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| JobsError::Io { path, source }
    };
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(durable::FILE_MODE)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    let mut jobs = load(data_dir)?;
    let out = change(&mut jobs)?;
    let text = toml::to_string_pretty(&JobsFile { jobs }).map_err(|e| JobsError::Parse {
        path: data_dir.join(JOBS_FILE),
        message: e.to_string(),
    })?;
    let path = data_dir.join(JOBS_FILE);
    let header = "# Fetch jobs: users' accounts on other POP3 servers (postoffice user fetch).\n# Holds passwords: keep it private (0600).\n\n";
    durable::write(&path, format!("{header}{text}").as_bytes()).map_err(io_err(&path))?;
    Ok(out)
}

/// Adds a job (`postoffice user fetch add`).
pub fn add(data_dir: &Path, job: Job) -> Result<(), JobsError> {
    if !valid_name(&job.name) {
        return Err(JobsError::BadName(job.name));
    }
    mutate(data_dir, |jobs| {
        if jobs
            .iter()
            .any(|j| j.address == job.address && j.name == job.name)
        {
            return Err(JobsError::Exists(job.address.clone(), job.name.clone()));
        }
        jobs.push(job);
        Ok(())
    })
}

/// Removes a job and its state file (`postoffice user fetch del`).
pub fn remove(data_dir: &Path, address: &str, name: &str) -> Result<(), JobsError> {
    mutate(data_dir, |jobs| {
        let before = jobs.len();
        jobs.retain(|j| !(j.address == address && j.name == name));
        if jobs.len() == before {
            return Err(JobsError::NotFound(address.to_owned(), name.to_owned()));
        }
        Ok(())
    })?;
    let _ = std::fs::remove_file(state_file(data_dir, address, name));
    Ok(())
}

/// Where a job keeps its `postoffice fetch` state.
pub fn state_file(data_dir: &Path, address: &str, name: &str) -> PathBuf {
    data_dir
        .join(STATE_DIR)
        .join(address)
        .join(format!("{name}.state"))
}

/// The destination of a job: the user's maildrop, through the pipeline.
struct MaildropSink {
    app: Arc<App>,
    address: String,
    job: String,
    server: String,
    handle: tokio::runtime::Handle,
}

impl Sink for MaildropSink {
    fn begin(&self, _uid: Option<&str>) -> io::Result<Box<dyn Delivery>> {
        Ok(Box::new(JobDelivery {
            sink: self.clone_ref(),
            writer: Some(self.app.spool_writer()?),
            uid: unique_id(),
        }))
    }

    fn holds(&self, receipt: &str) -> io::Result<bool> {
        let Some(uid) = receipt.strip_prefix("postoffice ") else {
            return Ok(false);
        };
        self.app
            .store
            .contains(&self.address, uid)
            .map_err(io::Error::other)
    }

    fn describe(&self) -> String {
        format!("the maildrop of {}", self.address)
    }
}

impl MaildropSink {
    fn clone_ref(&self) -> Arc<MaildropSink> {
        Arc::new(MaildropSink {
            app: Arc::clone(&self.app),
            address: self.address.clone(),
            job: self.job.clone(),
            server: self.server.clone(),
            handle: self.handle.clone(),
        })
    }
}

/// One message of a job on its way into the maildrop.
struct JobDelivery {
    sink: Arc<MaildropSink>,
    writer: Option<SpoolWriter>,
    /// The unique ID it will have in the maildrop (the receipt).
    uid: String,
}

impl Write for JobDelivery {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.writer {
            Some(w) => w.write(buf).map(|()| buf.len()),
            None => Err(io::Error::other("delivery already finished")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Delivery for JobDelivery {
    fn prepare(&mut self) -> io::Result<Option<String>> {
        Ok(Some(format!("postoffice {}", self.uid)))
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let content = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("delivery already finished"))?
            .finish();
        if content.is_empty() {
            return Err(io::Error::other("empty message"));
        }
        let sink = Arc::clone(&self.sink);
        let uid = self.uid.clone();
        // The fetch loop is synchronous here; the pipeline is not.
        tokio::task::block_in_place(|| sink.handle.block_on(deliver(&sink, &content, &uid)))
    }

    fn abort(self: Box<Self>) {}
}

/// How much of a fetched message is read for its last hop.
const HEAD_BYTES: usize = 256 * 1024;

async fn deliver(sink: &MaildropSink, content: &Content, uid: &str) -> io::Result<()> {
    let head = content.head(HEAD_BYTES)?.into_owned();
    let (helo, ip) =
        last_hop(&head).unwrap_or_else(|| (sink.server.clone(), IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    let mail_from = return_path(&head).unwrap_or_default();
    let rcpt = [sink.address.clone()];
    let id = unique_id();
    let message = inbound::Message {
        id: &id,
        ip,
        helo: &helo,
        esmtp: true,
        tls: None,
        mail_from: &mail_from,
        rcpt_to: &rcpt,
        connect_tags: &[],
        body: content,
    };
    let (reply, outcome) = inbound::deliver_as(&sink.app, message, Some(uid)).await;
    match outcome {
        Outcome::Delivered | Outcome::Quarantined => Ok(()),
        Outcome::Rejected => {
            // Fetched mail cannot be refused to its sender: keep it where
            // the user can see it on request, never lose it.
            let note = format!(
                "X-Postoffice-Fetch-Rejected: {} (fetch job {})\r\n",
                postoffice_common::text::printable(&reply.to_string(), 400),
                sink.job
            );
            let mut pieces = Pieces::new();
            pieces
                .push(Piece::Owned(note.into_bytes()))
                .push(Piece::Content(content, 0));
            let app = Arc::clone(&sink.app);
            let stored = tokio::task::spawn_blocking({
                let rcpt = rcpt.to_vec();
                let bytes = pieces.to_vec()?;
                move || app.local().quarantine(&rcpt, &Pieces::of_slice(&bytes))
            })
            .await
            .map_err(io::Error::other)?;
            stored.map_err(|e| io::Error::other(e.to_string()))?;
            info!(job = %sink.job, user = %sink.address, reply = %reply, "fetched message rejected by the pipeline: quarantined");
            Ok(())
        }
        Outcome::TempFailed | Outcome::Failed => Err(io::Error::other(format!(
            "not stored ({reply}); it stays on the server"
        ))),
    }
}

/// The client of the topmost `Received:` field (the last hop before the
/// remote provider): `from <helo> (... [<ip>] ...)`.
pub fn last_hop(head: &[u8]) -> Option<(String, IpAddr)> {
    let text = String::from_utf8_lossy(head);
    let field = unfolded_fields(&text)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("received"))?
        .1;
    let rest = field.trim_start().strip_prefix("from ")?;
    let helo = rest.split_whitespace().next()?.to_owned();
    let ip = rest
        .split(';')
        .next()
        .unwrap_or("")
        .split(['[', ']'])
        .skip(1)
        .step_by(2)
        .find_map(|s| s.trim_start_matches("IPv6:").parse::<IpAddr>().ok())?;
    Some((helo, ip))
}

/// The `Return-Path:` address, without angle brackets.
fn return_path(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let value = unfolded_fields(&text)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("return-path"))?
        .1;
    let v = value.trim().trim_start_matches('<').trim_end_matches('>');
    (!v.contains(['<', '>', ' '])).then(|| v.to_owned())
}

fn unfolded_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// Run one job now. Needs tokio's multi-threaded runtime.
pub async fn run_job(app: &Arc<App>, job: &Job) -> AccountReport {
    let sink = MaildropSink {
        app: Arc::clone(app),
        address: job.address.clone(),
        job: job.id(),
        server: job.server.clone(),
        handle: tokio::runtime::Handle::current(),
    };
    let state = state_file(&app.config.data_dir, &job.address, &job.name);
    if let Some(dir) = state.parent() {
        let _ = durable::create_dir_all(dir);
    }
    let mut account = Account::new(
        job.id(),
        job.server.clone(),
        job.login.clone(),
        Secret::new(job.password.clone()),
        Destination::Custom(CustomDestination(Arc::new(sink))),
        state,
    );
    account.tls = job.tls.into();
    account.port = job.port;
    account.ca_file = job.ca_file.clone();
    account.insecure = job.insecure;
    account.policy = if job.keep {
        Policy::Keep
    } else {
        Policy::Delete
    };
    postoffice_fetch::fetch_account(&account, &RunOptions::default()).await
}

/// When each job may run next, with back-off after failures.
#[derive(Debug, Default)]
pub struct Scheduler {
    next: Mutex<HashMap<String, (Instant, u32)>>,
}

/// What a round of [`Scheduler::run_due`] did with one job.
#[derive(Debug)]
pub struct JobRun {
    /// `address/name`.
    pub job: String,
    /// The fetch summary.
    pub summary: String,
    /// The error that ended the run, if any.
    pub error: Option<String>,
    /// Failures in a row (0 after a success).
    pub failures: u32,
    /// When the job runs next.
    pub retry_in: Duration,
}

/// `interval` doubled `failures` times, at most `max`.
pub fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
    interval.saturating_mul(factor).min(max).max(interval)
}

impl Scheduler {
    /// Run every job that is due (jobs read from the file now), one after
    /// the other; log each result.
    pub async fn run_due(&self, app: &Arc<App>) -> Vec<JobRun> {
        let jobs = match load(&app.config.data_dir) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "fetch jobs");
                return Vec::new();
            }
        };
        let cfg = &app.config.fetch_jobs;
        let interval = Duration::from_secs(cfg.interval_secs);
        let max = Duration::from_secs(cfg.max_backoff_secs);
        let ids: std::collections::HashSet<String> = jobs.iter().map(Job::id).collect();
        let mut runs = Vec::new();
        for job in jobs {
            let id = job.id();
            let now = Instant::now();
            let due = self
                .next
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .is_none_or(|(at, _)| *at <= now);
            if !due {
                continue;
            }
            let report = run_job(app, &job).await;
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let failures = match (&report.error, next.get(&id)) {
                (None, _) => 0,
                (Some(_), Some((_, f))) => f + 1,
                (Some(_), None) => 1,
            };
            let retry_in = if failures == 0 {
                interval
            } else {
                backoff(interval, failures - 1, max)
            };
            next.insert(id.clone(), (Instant::now() + retry_in, failures));
            let run = JobRun {
                job: id,
                summary: report.summary(),
                error: report.error.as_ref().map(|e| e.to_string()),
                failures,
                retry_in,
            };
            match &run.error {
                None => info!(job = %run.job, summary = %run.summary, "fetch job"),
                Some(e) => {
                    warn!(job = %run.job, error = %e, failures, retry_in_secs = retry_in.as_secs(), "fetch job failed; retrying later")
                }
            }
            runs.push(run);
        }
        // Forget the schedule of jobs that were removed.
        self.next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| ids.contains(id));
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_hop_and_return_path() {
        let head = b"Return-Path: <bob@example.net>\r\nReceived: from mail.example.net (mail.example.net [192.0.2.7])\r\n\tby mx.example.org with ESMTPS id 1; Tue, 14 Nov 2023 22:13:20 +0000\r\nReceived: from inner ([10.0.0.1]) by mail.example.net; x\r\n\r\nbody";
        let (helo, ip) = last_hop(head).unwrap();
        assert_eq!(helo, "mail.example.net");
        assert_eq!(ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(return_path(head).as_deref(), Some("bob@example.net"));
        let v6 = b"Received: from h ([IPv6:2001:db8::1]) by x; y\r\n\r\n";
        assert_eq!(
            last_hop(v6).unwrap().1,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert!(last_hop(b"Subject: x\r\n\r\n").is_none());
        assert_eq!(return_path(b"Return-Path: <>\r\n\r\n").as_deref(), Some(""));
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), 0, s(100)), s(10));
        assert_eq!(backoff(s(10), 1, s(100)), s(20));
        assert_eq!(backoff(s(10), 3, s(100)), s(80));
        assert_eq!(backoff(s(10), 4, s(100)), s(100));
        assert_eq!(backoff(s(10), 60, s(100)), s(100));
    }

    #[test]
    fn jobs_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job {
            address: "a@example.test".into(),
            name: "work".into(),
            server: "pop.example.net".into(),
            port: 995,
            tls: JobTls::Implicit,
            login: "a".into(),
            password: "secret".into(),
            keep: true,
            ca_file: None,
            insecure: false,
        };
        add(dir.path(), job.clone()).unwrap();
        assert!(matches!(
            add(dir.path(), job.clone()),
            Err(JobsError::Exists(..))
        ));
        let mut bad = job.clone();
        bad.name = "../x".into();
        assert!(matches!(add(dir.path(), bad), Err(JobsError::BadName(_))));
        assert_eq!(load(dir.path()).unwrap(), vec![job.clone()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(JOBS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{job:?}").contains("secret"));
        remove(dir.path(), "a@example.test", "work").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        assert!(matches!(
            remove(dir.path(), "a@example.test", "work"),
            Err(JobsError::NotFound(..))
        ));
    }
}

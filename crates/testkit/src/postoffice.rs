//! The real `postoffice` binary in a temporary directory: CLI runs and a
//! running `postoffice serve` with its listening addresses.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::net::tcp_connect;
use crate::tls::{TlsStream, tls_client};
use crate::wait::{poll_until, wait_for};

/// How long the server may take to start (or to stop).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Result of one CLI run.
#[derive(Debug)]
pub struct Output {
    /// How the process exited.
    pub status: ExitStatus,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
}

impl Output {
    /// Panics with the whole output unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Output {
        assert!(self.status.success(), "command failed: {self:#?}");
        self
    }
}

/// A temporary directory with a config file for one test, and the
/// `postoffice` binary to run in it.
#[derive(Debug)]
pub struct Env {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The config file (`postoffice.toml` in the directory).
    pub config: PathBuf,
    /// Where the servers started by [`Env::start`] log (stderr, appended).
    pub log: PathBuf,
}

impl Env {
    /// A fresh environment for the binary `bin` (in its own integration
    /// tests: `env!("CARGO_BIN_EXE_postoffice")`). `extra` is appended to the config file; the
    /// generated part uses dotted `pop3.*` keys so that `extra` may start
    /// with top-level keys (e.g. `shutdown_timeout_secs = 5`) followed by
    /// tables such as `[auth]`. Extra `[pop3]` keys must be given as
    /// dotted keys (`pop3.max_bad_commands = 5`) at the top of `extra`,
    /// and so must extra `[http]` keys (`http.metrics_token = "t"`).
    pub fn new(bin: impl AsRef<Path>, extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("postoffice-e2e-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("postoffice.toml");
        let postgres = postgres_backend(extra);
        let text = format!(
            "data_dir = \"data\"\nhostname = \"test.local\"\n\
             pop3.listen = [\"127.0.0.1:0\"]\npop3.listen_tls = [\"127.0.0.1:0\"]\n\
             smtp.listen = [\"127.0.0.1:0\"]\nsubmission.listen = [\"127.0.0.1:0\"]\n\
             submission.listen_tls = [\"127.0.0.1:0\"]\nhttp.listen = [\"127.0.0.1:0\"]\n{extra}\n{}{}",
            no_dns(extra),
            postgres.as_deref().unwrap_or("")
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("server.log");
        let env = Env {
            dir,
            bin: bin.as_ref().to_path_buf(),
            config,
            log,
        };
        if postgres.is_some() {
            env.cli(&["db", "migrate"]).ok();
        }
        env
    }

    /// Whether this environment stores mail in PostgreSQL (the whole suite
    /// runs that way when `POSTOFFICE_TEST_PG_URL` is set).
    pub fn on_postgres(&self) -> bool {
        std::fs::read_to_string(&self.config).is_ok_and(|c| c.contains("backend = \"postgres\""))
    }

    /// The temporary directory (also the servers' working directory).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The configured `data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `data/mail/<domain>/<local>` of a (lower-case) address.
    pub fn maildir(&self, address: &str) -> PathBuf {
        let (local, domain) = address.split_once('@').expect("address has @");
        self.data_dir().join("mail").join(domain).join(local)
    }

    /// The messages in the outbound queue, as they will be sent, on either
    /// backend (`data/queue/*.msg`, or the queue's tables in PostgreSQL):
    /// empty when nothing is queued. On Maildir, a file other than an
    /// entry's two (a leftover temporary file, say) fails the test.
    #[track_caller]
    pub fn queued_messages(&self) -> Vec<String> {
        if let Some(url) = self.storage_url() {
            return crate::postgres::query(
                &url,
                "SELECT e.id, encode(coalesce(string_agg(b.chunk, ''::bytea ORDER BY b.seq), ''::bytea), 'hex') \
                 FROM queue_entries e LEFT JOIN queue_bodies b ON b.id = e.id GROUP BY e.id ORDER BY e.id",
            )
            .into_iter()
            .map(|row| {
                let hex = row.get(1).map(String::as_str).unwrap_or("");
                let bytes: Vec<u8> = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex from encode()"))
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect();
        }
        let files: Vec<PathBuf> = crate::mail::all_files(&self.data_dir().join("queue"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        for f in &files {
            assert!(
                f.extension().is_some_and(|e| e == "msg" || e == "env"),
                "unexpected file in the queue: {}",
                f.display()
            );
        }
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "msg"))
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect()
    }

    /// The mailbox (address) of every stored message, maildrops and
    /// quarantines alike, sorted, on either backend: on Maildir a file in
    /// `new/`, `cur/` or `tmp/` below `data/mail` (a quarantine's too),
    /// on PostgreSQL a row of `messages`. Empty when nothing is stored.
    #[track_caller]
    pub fn stored_messages(&self) -> Vec<String> {
        if let Some(url) = self.storage_url() {
            return crate::postgres::query(
                &url,
                "SELECT b.name FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id ORDER BY b.name",
            )
            .into_iter()
            .filter_map(|row| row.into_iter().next())
            .collect();
        }
        let mail = self.data_dir().join("mail");
        let mut out: Vec<String> = crate::mail::all_files(&mail)
            .into_iter()
            .filter(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n == "new" || n == "cur" || n == "tmp")
            })
            .map(|p| {
                let rel = p.strip_prefix(&mail).expect("below data/mail");
                let mut parts = rel.iter().map(|c| c.to_string_lossy().into_owned());
                let domain = parts.next().unwrap_or_default();
                let local = parts.next().unwrap_or_default();
                format!("{local}@{domain}")
            })
            .collect();
        out.sort();
        out
    }

    /// The directory document (the TOML of `data/directory.toml`, or its
    /// row in PostgreSQL).
    #[track_caller]
    pub fn directory_document(&self) -> String {
        match self.storage_url() {
            Some(url) => {
                let rows = crate::postgres::query(
                    &url,
                    "SELECT encode(convert_to(body, 'UTF8'), 'hex') FROM directory_document",
                );
                let hex = rows
                    .first()
                    .and_then(|r| r.first())
                    .cloned()
                    .unwrap_or_default();
                String::from_utf8(hex_decode(&hex)).expect("UTF-8 directory")
            }
            None => std::fs::read_to_string(self.data_dir().join("directory.toml"))
                .expect("read directory.toml"),
        }
    }

    /// Rewrites the directory document by hand, bypassing every check of
    /// the CLI (as an administrator editing `directory.toml` would; on
    /// PostgreSQL a new version of its row, which running nodes pick up).
    #[track_caller]
    pub fn edit_directory(&self, edit: impl FnOnce(String) -> String) {
        let text = edit(self.directory_document());
        match self.storage_url() {
            Some(url) => {
                let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
                crate::postgres::query(
                    &url,
                    &format!(
                        "UPDATE directory_document SET version = version + 1, \
                         body = convert_from(decode('{hex}', 'hex'), 'UTF8')"
                    ),
                );
            }
            None => std::fs::write(self.data_dir().join("directory.toml"), text)
                .expect("write directory.toml"),
        }
    }

    /// Waits (bounded) until the running `server` works with every
    /// directory change made so far. On Maildir it reads directory.toml
    /// when it changes, so there is nothing to wait for; on PostgreSQL a
    /// node picks up the shared document within a second or so: this adds
    /// a user of a domain of its own (`directory-sync.test`) and waits for
    /// the server to accept mail for it (the document is versioned as a
    /// whole, so every earlier change is then in effect too).
    #[track_caller]
    pub fn wait_for_directory(&self, server: &Server) {
        if !self.on_postgres() {
            return;
        }
        let _ = self.cli(&["domain", "add", "directory-sync.test"]);
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let probe = format!("sync-{n}@directory-sync.test");
        self.add_user(&probe, "directory sync probe");
        let mut c = crate::smtp::smtp_connect(server.smtp_addr());
        assert_eq!(crate::smtp::smtp_cmd(&mut c, "MAIL FROM:<>").0, 250);
        wait_for(
            START_TIMEOUT,
            "the server to see the directory change",
            || {
                let (code, _) = crate::smtp::smtp_cmd(&mut c, &format!("RCPT TO:<{probe}>"));
                (code == 250).then_some(())
            },
        );
        let _ = crate::smtp::smtp_cmd(&mut c, "QUIT");
    }

    /// The `[storage] url` of an environment on the postgres backend.
    pub fn storage_url(&self) -> Option<String> {
        if !self.on_postgres() {
            return None;
        }
        let config = std::fs::read_to_string(&self.config).ok()?;
        let mut in_storage = false;
        config.lines().map(str::trim).find_map(|l| {
            if l.starts_with('[') {
                in_storage = l == "[storage]";
                return None;
            }
            let v = l.strip_prefix("url")?.trim_start().strip_prefix('=')?;
            in_storage.then(|| v.trim().trim_matches('"').to_owned())
        })
    }

    /// Everything the server(s) of this environment logged so far.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's generated certificate (`data/tls/cert.pem`).
    pub fn cert(&self) -> PathBuf {
        self.data_dir().join("tls").join("cert.pem")
    }

    /// A TLS client over `tcp` (plain so far, e.g. after STARTTLS) that
    /// trusts only the server's generated certificate and expects the
    /// name "localhost".
    pub fn tls_wrap(&self, tcp: TcpStream) -> TlsStream {
        tls_client(&self.cert(), "localhost", tcp)
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("POSTOFFICE_CONFIG")
            // CI runs as root, where `serve` refuses to run unless told to;
            // these servers are private loopback instances.
            .env("POSTOFFICE_ALLOW_ROOT", "1")
            .arg("--config")
            .arg(&self.config);
        c
    }

    /// Run `postoffice --config <file> ARGS` with no input.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, b"")
    }

    /// Run `postoffice --config <file> ARGS` with `input` on stdin.
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        run_with_input(self.command().args(args), input)
    }

    /// `user add ADDR --password-stdin`.
    pub fn add_user(&self, address: &str, password: &str) {
        self.cli_stdin(
            &["user", "add", address, "--password-stdin"],
            format!("{password}\n").as_bytes(),
        )
        .ok();
    }

    /// `deliver ADDR` with `message` on stdin.
    pub fn deliver(&self, address: &str, message: &[u8]) {
        self.cli_stdin(&["deliver", address], message).ok();
    }

    /// Start `postoffice serve` and wait for its listening addresses.
    pub fn start(&self) -> Server {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut child = self
            .command()
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn postoffice serve");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout after the banner, so the server can never
        // block on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                    continue;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            pop3: None,
            pop3s: None,
            smtp: None,
            submit: None,
            submits: None,
            http: None,
            https: None,
            log: self.log.clone(),
            cert: self.cert(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        // The banner lists every listener, then the certificate.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "server did not print its listeners ({e:?}); log:\n{}",
                    self.log_contents()
                ),
            };
            if line.trim_start().starts_with("TLS certificate:") {
                break;
            }
            let mut words = line.split_whitespace();
            let (kind, addr) = (words.next(), words.next());
            let parsed = addr.and_then(|a| a.parse::<SocketAddr>().ok());
            match (kind, parsed) {
                (Some("POP3"), Some(a)) => server.pop3 = Some(a),
                (Some("POP3S"), Some(a)) => server.pop3s = Some(a),
                (Some("SMTP"), Some(a)) => server.smtp = Some(a),
                (Some("SUBMIT"), Some(a)) => server.submit = Some(a),
                (Some("SUBMITS"), Some(a)) => server.submits = Some(a),
                (Some("HTTP"), Some(a)) => server.http = Some(a),
                (Some("HTTPS"), Some(a)) => server.https = Some(a),
                _ => {}
            }
        }
        assert!(
            server.pop3.is_some()
                && server.pop3s.is_some()
                && server.smtp.is_some()
                && server.submit.is_some()
                && server.submits.is_some(),
            "a mail listener is missing: {server:?}; log:\n{}",
            self.log_contents()
        );
        server
    }
}

fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postoffice");
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = input.to_vec();
    // A writer thread: a large message must not deadlock against a child
    // that writes output before it has read all of its input.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for postoffice");
    let _ = writer.join();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary `bin` with an explicit config path (for broken
/// configs) and no input.
pub fn cli_with_config(bin: impl AsRef<Path>, config: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(bin.as_ref());
    c.env_remove("RUST_LOG")
        .env_remove("POSTOFFICE_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args);
    run_with_input(&mut c, b"")
}

/// A running `postoffice serve`. Killed (SIGKILL) on drop unless stopped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pop3: Option<SocketAddr>,
    pop3s: Option<SocketAddr>,
    smtp: Option<SocketAddr>,
    submit: Option<SocketAddr>,
    submits: Option<SocketAddr>,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    log: PathBuf,
    cert: PathBuf,
}

impl Server {
    /// The POP3 listener.
    pub fn pop3_addr(&self) -> SocketAddr {
        self.pop3.expect("pop3 listener")
    }

    /// The POP3S (implicit TLS) listener.
    pub fn pop3s_addr(&self) -> SocketAddr {
        self.pop3s.expect("pop3s listener")
    }

    /// The SMTP (MX) listener.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp.expect("smtp listener")
    }

    /// The submission (STARTTLS) listener.
    pub fn submit_addr(&self) -> SocketAddr {
        self.submit.expect("submission listener")
    }

    /// The submissions (implicit TLS) listener.
    pub fn submits_addr(&self) -> SocketAddr {
        self.submits.expect("submissions listener")
    }

    /// The HTTP listener (web interface, API, metrics, autoconfig).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("http listener")
    }

    /// The HTTPS listener, when `http.listen_tls` was configured.
    pub fn https_addr(&self) -> SocketAddr {
        self.https.expect("https listener (set http.listen_tls)")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    fn log_contents(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A plain connection, greeting already read and checked.
    pub fn connect(&self) -> Client<TcpStream> {
        let mut c = self.connect_raw();
        let greeting = c.read_line();
        assert!(greeting.starts_with("+OK"), "greeting: {greeting:?}");
        c
    }

    /// A plain connection; nothing read yet.
    pub fn connect_raw(&self) -> Client<TcpStream> {
        Client::new(tcp_connect(self.pop3_addr()))
    }

    /// An implicit-TLS (POP3S) connection; nothing read yet.
    pub fn connect_tls(&self) -> Client<TlsStream> {
        let tcp = tcp_connect(self.pop3s_addr());
        Client::new(tls_client(&self.cert, "localhost", tcp))
    }

    /// A plain connection, logged in with USER/PASS (asserts +OK).
    pub fn login(&self, user: &str, password: &str) -> Client<TcpStream> {
        let mut c = self.connect();
        let reply = c.login(user, password);
        assert!(reply.starts_with("+OK"), "login as {user}: {reply:?}");
        c
    }

    /// Like [`Server::login`], but retries while the maildrop is still
    /// `[IN-USE]` by a session the server has not finished tearing down
    /// (e.g. right after the client dropped its socket). Bounded.
    #[track_caller]
    pub fn login_when_free(&self, user: &str, password: &str) -> Client<TcpStream> {
        let mut c = self.connect();
        wait_for(START_TIMEOUT, &format!("the maildrop of {user}"), || {
            let reply = c.login(user, password);
            assert!(
                reply.starts_with("+OK") || reply.starts_with("-ERR [IN-USE]"),
                "login as {user}: {reply:?}"
            );
            reply.starts_with("+OK").then_some(())
        });
        c
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {pid} failed");
        self.wait_exit(START_TIMEOUT)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait for the server to exit by itself, up to `limit`.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("server running");
        let mut status = None;
        poll_until(limit, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        match status {
            Some(st) => {
                self.child = None;
                st
            }
            None => {
                let log = self.log_contents();
                self.kill();
                panic!("server did not exit within {limit:?}; log:\n{log}");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Unless `extra` configures them itself, the DNS-based checks are off and
/// the resolver is a loopback port where nothing answers: a test server
/// never asks the machine's resolver (no test sends traffic off the
/// machine), and an unexpected lookup fails on the spot.
/// With `POSTOFFICE_TEST_PG_URL` set (a PostgreSQL server, e.g. from
/// `with-postgres`), every environment whose `extra` does not choose a
/// backend gets a fresh database of its own there: the `[storage]` section
/// for it. The end-to-end tests then run against the postgres backend.
fn postgres_backend(extra: &str) -> Option<String> {
    if extra.contains("[storage]") {
        return None;
    }
    let server = std::env::var("POSTOFFICE_TEST_PG_URL").ok()?;
    let url = crate::postgres::create_database(&server);
    Some(format!(
        "[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\nlease_secs = 5\n"
    ))
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex from encode()"))
        .collect()
}

fn no_dns(extra: &str) -> String {
    let mut out = String::new();
    if !extra.contains("[dns]") && !extra.contains("dns.") {
        out.push_str("[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n");
    }
    if !extra.contains("[filter]") && !extra.contains("filter.") {
        out.push_str("[filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n");
    }
    out
}

//! Shared harness for the end-to-end tests: runs the real `postoffice`
//! binary in a temporary directory and talks POP3 to it over loopback.
//!
//! Nothing here sleeps for synchronisation: waits are polls with a bounded
//! deadline, and every socket read has a (generous) timeout so a hung server
//! fails a test instead of hanging it.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a socket read may block before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to start (or to stop).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub const BIN: &str = env!("CARGO_BIN_EXE_postoffice");

/// The exact reply to any refused login (wrong password, unknown user,
/// locked out).
pub const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.";

/// Result of one CLI run.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
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

/// A temporary directory with a config file for one test.
pub struct Env {
    dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Env {
    /// A fresh environment. `extra` is appended to the config file; the
    /// generated part uses dotted `pop3.*` keys so that `extra` may start
    /// with top-level keys (e.g. `shutdown_timeout_secs = 5`) followed by
    /// tables such as `[auth]`. Extra `[pop3]` keys must be given as
    /// dotted keys (`pop3.max_bad_commands = 5`) at the top of `extra`.
    pub fn new(extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("postoffice-e2e-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("postoffice.toml");
        let text = format!(
            "data_dir = \"data\"\nhostname = \"test.local\"\n\
             pop3.listen = [\"127.0.0.1:0\"]\npop3.listen_tls = [\"127.0.0.1:0\"]\n\
             smtp.listen = [\"127.0.0.1:0\"]\nsubmission.listen = [\"127.0.0.1:0\"]\n\
             submission.listen_tls = [\"127.0.0.1:0\"]\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("server.log");
        Env { dir, config, log }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `data/mail/<domain>/<local>` of a (lower-case) address.
    pub fn maildir(&self, address: &str) -> PathBuf {
        let (local, domain) = address.split_once('@').expect("address has @");
        self.data_dir().join("mail").join(domain).join(local)
    }

    /// Everything the server(s) of this environment logged so far.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("POSTOFFICE_CONFIG")
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
            log: self.log.clone(),
            data_dir: self.data_dir(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while server.pop3.is_none()
            || server.pop3s.is_none()
            || server.smtp.is_none()
            || server.submit.is_none()
            || server.submits.is_none()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "server did not print its listeners ({e:?}); log:\n{}",
                    self.log_contents()
                ),
            };
            let mut words = line.split_whitespace();
            let (kind, addr) = (words.next(), words.next());
            let parsed = addr.and_then(|a| a.parse::<SocketAddr>().ok());
            match (kind, parsed) {
                (Some("POP3"), Some(a)) => server.pop3 = Some(a),
                (Some("POP3S"), Some(a)) => server.pop3s = Some(a),
                (Some("SMTP"), Some(a)) => server.smtp = Some(a),
                (Some("SUBMIT"), Some(a)) => server.submit = Some(a),
                (Some("SUBMITS"), Some(a)) => server.submits = Some(a),
                _ => {}
            }
        }
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

/// Run the binary with an explicit config path (for broken configs).
pub fn cli_with_config(config: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.env_remove("RUST_LOG")
        .env_remove("POSTOFFICE_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args);
    run_with_input(&mut c, b"")
}

/// A running `postoffice serve`. Killed (SIGKILL) on drop unless stopped.
pub struct Server {
    child: Option<Child>,
    pop3: Option<SocketAddr>,
    pop3s: Option<SocketAddr>,
    smtp: Option<SocketAddr>,
    submit: Option<SocketAddr>,
    submits: Option<SocketAddr>,
    log: PathBuf,
    data_dir: PathBuf,
}

impl Server {
    pub fn pop3_addr(&self) -> SocketAddr {
        self.pop3.expect("pop3 listener")
    }

    pub fn pop3s_addr(&self) -> SocketAddr {
        self.pop3s.expect("pop3s listener")
    }

    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp.expect("smtp listener")
    }

    pub fn submit_addr(&self) -> SocketAddr {
        self.submit.expect("submission listener")
    }

    pub fn submits_addr(&self) -> SocketAddr {
        self.submits.expect("submissions listener")
    }

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
        Client::new(tls_wrap(&self.data_dir, tcp))
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
    pub fn login_when_free(&self, user: &str, password: &str) -> Client<TcpStream> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut c = self.connect();
        loop {
            let reply = c.login(user, password);
            if reply.starts_with("+OK") {
                return c;
            }
            assert!(
                reply.starts_with("-ERR [IN-USE]"),
                "login as {user}: {reply:?}"
            );
            assert!(
                Instant::now() < deadline,
                "maildrop of {user} stayed locked"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("server running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if Instant::now() >= deadline {
                let log = self.log_contents();
                self.kill();
                panic!("server did not exit within {limit:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client over `tcp` that trusts only the server's generated
/// certificate (`data/tls/cert.pem`) and expects the name "localhost".
pub fn tls_wrap(data_dir: &Path, tcp: TcpStream) -> TlsStream {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let cert_path = data_dir.join("tls").join("cert.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&cert_path).expect("read cert.pem") {
        roots.add(cert.expect("parse cert.pem")).expect("add root");
    }
    assert!(
        !roots.is_empty(),
        "no certificate in {}",
        cert_path.display()
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost")
        .expect("server name")
        .to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    rustls::StreamOwned::new(conn, tcp)
}

/// A minimal blocking POP3 client with its own read buffer.
pub struct Client<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Self {
        Client {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
        }
    }

    /// The transport, asserting that nothing the server sent is left unread.
    pub fn into_inner(self) -> S {
        assert_eq!(
            self.pos,
            self.buf.len(),
            "unread data from the server: {:?}",
            String::from_utf8_lossy(&self.buf[self.pos..])
        );
        self.stream
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next line including its line end; `Ok(None)` at end of stream.
    pub fn try_read_line_bytes(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned = self.pos;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i + 1;
                let line = self.buf[self.pos..end].to_vec();
                self.pos = end;
                return Ok(Some(line));
            }
            scanned = self.buf.len();
            let before = self.pos;
            if self.fill()? == 0 {
                if self.pos < self.buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "stream ended inside a line: {:?}",
                            String::from_utf8_lossy(self.buffered())
                        ),
                    ));
                }
                return Ok(None);
            }
            // fill() compacted the buffer: rebase the scan position.
            scanned -= before;
        }
    }

    /// The next line, which must end in CRLF, without its line end.
    #[track_caller]
    pub fn read_line(&mut self) -> String {
        match self.try_read_line_bytes() {
            Ok(Some(line)) => {
                let text = line.strip_suffix(b"\r\n").unwrap_or_else(|| {
                    panic!("line without CRLF: {:?}", String::from_utf8_lossy(&line))
                });
                String::from_utf8_lossy(text).into_owned()
            }
            Ok(None) => panic!("connection closed by the server while a reply was expected"),
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// The body of a multi-line response exactly as sent (still
    /// dot-stuffed, CRLF line ends), without the terminating ".\r\n".
    #[track_caller]
    pub fn read_multiline(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            match self.try_read_line_bytes() {
                Ok(Some(line)) if line == b".\r\n" => return body,
                Ok(Some(line)) => {
                    assert!(
                        line.ends_with(b"\r\n"),
                        "line without CRLF in a multi-line response"
                    );
                    body.extend_from_slice(&line);
                }
                Ok(None) => panic!("connection closed inside a multi-line response"),
                Err(e) => panic!("reading a multi-line response: {e}"),
            }
        }
    }

    /// Send raw bytes.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().expect("flush");
    }

    /// Send one command line (CRLF added).
    #[track_caller]
    pub fn send(&mut self, command: &str) {
        self.send_raw(format!("{command}\r\n").as_bytes());
    }

    /// Send a command and read its one-line status reply.
    #[track_caller]
    pub fn cmd(&mut self, command: &str) -> String {
        self.send(command);
        self.read_line()
    }

    /// Send a command expecting a multi-line reply; returns the status line
    /// and (if it is +OK) the raw body.
    #[track_caller]
    pub fn cmd_multi(&mut self, command: &str) -> (String, Vec<u8>) {
        let status = self.cmd(command);
        if status.starts_with("+OK") {
            let body = self.read_multiline();
            (status, body)
        } else {
            (status, Vec::new())
        }
    }

    /// Like [`Client::cmd_multi`] but asserts +OK and returns the body lines.
    #[track_caller]
    pub fn multi_lines(&mut self, command: &str) -> Vec<String> {
        let (status, body) = self.cmd_multi(command);
        assert!(status.starts_with("+OK"), "{command}: {status:?}");
        lines_of(&body)
    }

    /// USER + PASS; returns the reply to PASS.
    #[track_caller]
    pub fn login(&mut self, user: &str, password: &str) -> String {
        let r = self.cmd(&format!("USER {user}"));
        assert_eq!(r, "+OK", "USER {user}");
        self.cmd(&format!("PASS {password}"))
    }

    /// `STAT` → (count, octets).
    #[track_caller]
    pub fn stat(&mut self) -> (usize, u64) {
        let r = self.cmd("STAT");
        let mut w = r.split(' ');
        assert_eq!(w.next(), Some("+OK"), "STAT: {r:?}");
        let n = w
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("STAT: {r:?}"));
        let b = w
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("STAT: {r:?}"));
        (n, b)
    }

    /// `UIDL` → the ids in message-number order.
    #[track_caller]
    pub fn uidl(&mut self) -> Vec<String> {
        self.multi_lines("UIDL")
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let (n, uid) = l
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("UIDL line {l:?}"));
                assert_eq!(n, (i + 1).to_string(), "UIDL numbering");
                uid.to_string()
            })
            .collect()
    }

    /// `QUIT`, asserting +OK.
    #[track_caller]
    pub fn quit(&mut self) -> String {
        let r = self.cmd("QUIT");
        assert!(r.starts_with("+OK"), "QUIT: {r:?}");
        r
    }

    /// Read until the server closes the connection; returns the lines it
    /// sent before closing. A reset counts as closed (Linux resets when the
    /// server closes with our input unread). Fails if the server keeps the
    /// connection open for `IO_TIMEOUT`.
    #[track_caller]
    pub fn read_until_closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.try_read_line_bytes() {
                Ok(Some(l)) => lines.push(
                    String::from_utf8_lossy(&l)
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                Ok(None) => return lines,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return lines;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the server did not close the connection; got {lines:?}")
                }
                Err(e) => panic!("reading until close: {e}"),
            }
        }
    }
}

/// The CRLF-separated lines of a multi-line body.
pub fn lines_of(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split_terminator("\r\n")
        .map(str::to_string)
        .collect()
}

/// What the store keeps and RETR sends (before dot-stuffing): bare LF
/// becomes CRLF, CRLF stays, and a final CRLF is added when missing.
pub fn crlf_normalize(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 32 + 2);
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\n' && (i == 0 || msg[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 1939 byte-stuffing of a CRLF message: lines starting with "."
/// get another ".".
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    let mut at_start = true;
    for &b in msg {
        if at_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_start = b == b'\n';
    }
    out
}

/// Undo byte-stuffing of a received body: the first "." of a line that
/// starts with one is dropped.
pub fn dot_unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut at_start = true;
    for &b in body {
        if !(at_start && b == b'.') {
            out.push(b);
        }
        at_start = b == b'\n';
    }
    out
}

/// Standard base64 with padding (for SASL).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Poll `f` until it returns `Some`, for at most `limit`.
#[track_caller]
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small RFC 5322 message.
pub fn simple_message(subject: &str, body: &str) -> Vec<u8> {
    format!("From: sender@example.net\r\nTo: someone@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n").into_bytes()
}

/// Read one (possibly multi-line) SMTP reply: (code, all lines joined by \n).
#[track_caller]
pub fn smtp_reply<S: Read + Write>(c: &mut Client<S>) -> (u16, String) {
    let mut text = String::new();
    loop {
        let line = c.read_line();
        let code: u16 = line
            .get(..3)
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("bad SMTP reply line {line:?}"));
        text.push_str(&line);
        text.push('\n');
        if line.as_bytes().get(3) != Some(&b'-') {
            return (code, text);
        }
    }
}

/// Send one SMTP command line and read its reply.
#[track_caller]
pub fn smtp_cmd<S: Read + Write>(c: &mut Client<S>, line: &str) -> (u16, String) {
    c.send(line);
    smtp_reply(c)
}

/// An SMTP connection to `addr`, greeted and after `EHLO`.
#[track_caller]
pub fn smtp_connect(addr: SocketAddr) -> Client<TcpStream> {
    let mut c = Client::new(tcp_connect(addr));
    let (code, text) = smtp_reply(&mut c);
    assert_eq!(code, 220, "{text}");
    let (code, text) = smtp_cmd(&mut c, "EHLO client.example.net");
    assert_eq!(code, 250, "{text}");
    c
}

/// Peak resident set size of a process in KiB (`VmHWM` in /proc/PID/status).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// Every file (not directory) below `dir`, recursively, sorted.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

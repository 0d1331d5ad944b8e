//! Test harness: an in-process postoffice server, message helpers, a
//! loopback proxy that cuts connections, and a scripted fake POP3 server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use postoffice_config::Config;
use postoffice_directory::{Directory, hash_password};
use postoffice_fetch::{
    Account, AccountReport, Destination, Error, FetchError, Policy, RunOptions, Secret, TlsMode,
    fetch_account,
};
use postoffice_server::{Server, Service};
use postoffice_store::{MailStore, Maildir};
use postoffice_testkit::eventually;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const USER: &str = "alice@localhost";
pub const PW: &str = "correct horse battery staple";

/// One Argon2 hash for every server in this test binary (hashing is slow
/// in debug builds).
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(PW.as_bytes()).expect("hash"))
}

/// A postoffice server running inside the test's runtime.
pub struct TestServer {
    pub tmp: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub cert: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        let tmp = tempfile::Builder::new()
            .prefix("po-fetch-")
            .tempdir()
            .expect("tempdir");
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let hash = tokio::task::spawn_blocking(password_hash).await.unwrap();
        let dir = Directory::open(&data_dir).unwrap();
        dir.add_domain("localhost").unwrap();
        dir.add_user(USER, hash).unwrap();
        let mut cfg = Config {
            data_dir: data_dir.clone(),
            hostname: "localhost".into(),
            shutdown_timeout_secs: 2,
            ..Config::default()
        };
        cfg.pop3.listen = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.pop3.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
        // Only POP3 here; other services' default ports would collide
        // between tests running in parallel.
        cfg.smtp.listen = Vec::new();
        cfg.submission.listen = Vec::new();
        cfg.submission.listen_tls = Vec::new();
        cfg.http.listen = Vec::new();
        let server = Server::bind(cfg).await.expect("bind");
        let mut plain = None;
        let mut tls = None;
        for (s, a) in server.local_addrs() {
            if s == Service::Pop3 {
                plain = Some(a);
            } else if s == Service::Pop3s {
                tls = Some(a);
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            cert: data_dir.join("tls").join("cert.pem"),
            tmp,
            data_dir,
            plain: plain.unwrap(),
            tls: tls.unwrap(),
            stop: Some(tx),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn store(&self) -> Maildir {
        Maildir::new(self.data_dir.join("mail"), "localhost")
    }

    /// Deliver a message to the user's maildrop on the server.
    pub fn deliver(&self, msg: &[u8]) {
        self.store().deliver(USER, &mut &msg[..]).expect("deliver");
    }

    pub fn deliver_from(&self, reader: &mut dyn std::io::Read) {
        self.store().deliver(USER, reader).expect("deliver");
    }

    /// Messages left on the server.
    pub fn count(&self) -> u64 {
        self.store().usage(USER).expect("usage").messages
    }

    /// A plaintext (loopback) account with a Maildir destination in the
    /// test directory.
    pub fn account(&self, name: &str, policy: Policy) -> Account {
        let dest = Destination::Maildir(self.path().join(format!("{name}-maildir")));
        self.account_to(name, policy, dest, self.plain)
    }

    pub fn account_to(
        &self,
        name: &str,
        policy: Policy,
        dest: Destination,
        addr: SocketAddr,
    ) -> Account {
        let mut a = Account::new(
            name,
            "127.0.0.1",
            USER,
            Secret::new(PW),
            dest,
            self.path().join(format!("{name}.state")),
        );
        a.tls = TlsMode::None;
        a.port = addr.port();
        a.policy = policy;
        a.timeout = Duration::from_secs(20);
        a
    }
}

/// A test message: CRLF line ends, a dot-stuffed line, a "From " line.
pub fn message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: sender@example.test\r\nTo: {USER}\r\nSubject: test {i}\r\nMessage-ID: <{i}@test>\r\n\r\nbody of message {i}\r\n.leading dot\r\n..two dots\r\nFrom here\r\n"
    );
    for l in 0..20 {
        m.push_str(&format!(
            "padding line {l} of message {i} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
        ));
    }
    m.push_str("end\r\n");
    m.into_bytes()
}

/// The same message as stored locally (LF line ends).
pub fn message_lf(i: usize) -> Vec<u8> {
    String::from_utf8(message(i))
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes()
}

/// Contents of the files in `maildir/new`, sorted.
pub fn maildir_messages(root: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = match std::fs::read_dir(root.join("new")) {
        Ok(rd) => rd
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The "Subject: test N" numbers in a list of messages, sorted.
pub fn subjects(msgs: &[Vec<u8>]) -> Vec<usize> {
    let mut v: Vec<usize> = msgs
        .iter()
        .map(|m| {
            let t = String::from_utf8_lossy(m);
            let s = t
                .lines()
                .find_map(|l| l.strip_prefix("Subject: test "))
                .expect("subject");
            s.trim().parse().unwrap()
        })
        .collect();
    v.sort();
    v
}

/// Run an account; if the server still holds the maildrop lock of a
/// connection the test just cut, wait a little and try again.
pub async fn fetch(account: &Account, opts: &RunOptions) -> AccountReport {
    for _ in 0..20 {
        let r = fetch_account(account, opts).await;
        if matches!(r.error, Some(FetchError::Pop3(Error::InUse(_)))) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        return r;
    }
    panic!("maildrop stayed locked");
}

/// Where a [`proxy`] cuts the connection.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    Never,
    /// After this many bytes from the server.
    AfterServerBytes(usize),
    /// When the client sends QUIT; the server never sees it.
    QuitDropped,
    /// When the client sends QUIT: forward it, wait for the server's
    /// reply (the server has committed), and drop that reply.
    QuitForwarded,
    /// When the client sends its next command after the first RETR (the
    /// first message was received completely).
    AfterFirstRetr,
}

/// A running [`proxy`].
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
}

impl Proxy {
    /// How many connections it has cut as its [`Cut`] says (counted before
    /// the client can see the connection close), so that a test can tell
    /// a cut from a session that ended by itself.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// A loopback TCP forwarder to `target` that cuts connections as `cut`
/// says; it runs until the runtime ends.
pub async fn proxy(target: SocketAddr, cut: Cut) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&cuts);
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            if let Ok(s) = TcpStream::connect(target).await {
                tokio::spawn(pipe(c, s, cut, Arc::clone(&counter)));
            }
        }
    });
    Proxy { addr, cuts }
}

/// Forwards between client `c` and server `s` until either closes or
/// `cut` says to stop; a cut is counted in `cuts` before both sockets
/// close (when this returns).
async fn pipe(mut c: TcpStream, mut s: TcpStream, cut: Cut, cuts: Arc<AtomicUsize>) {
    let cut_here = || {
        cuts.fetch_add(1, Ordering::SeqCst);
    };
    let mut cb = vec![0u8; 8192];
    let mut sb = vec![0u8; 65536];
    let mut from_server = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut retr_seen = false;
    loop {
        tokio::select! {
            r = c.read(&mut cb) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                pending.extend_from_slice(&cb[..n]);
                let mut forward = Vec::new();
                while let Some(p) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=p).collect();
                    let upper = line.to_ascii_uppercase();
                    match cut {
                        Cut::QuitDropped if upper.starts_with(b"QUIT") => {
                            let _ = s.write_all(&forward).await;
                            cut_here();
                            return;
                        }
                        Cut::QuitForwarded if upper.starts_with(b"QUIT") => {
                            forward.extend_from_slice(&line);
                            let _ = s.write_all(&forward).await;
                            let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sb)).await;
                            cut_here();
                            return;
                        }
                        Cut::AfterFirstRetr if retr_seen => {
                            let _ = s.write_all(&forward).await;
                            cut_here();
                            return;
                        }
                        Cut::AfterFirstRetr if upper.starts_with(b"RETR") => retr_seen = true,
                        _ => {}
                    }
                    forward.extend_from_slice(&line);
                }
                if s.write_all(&forward).await.is_err() { return; }
            }
            r = s.read(&mut sb) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if let Cut::AfterServerBytes(limit) = cut {
                    let allowed = limit.saturating_sub(from_server);
                    if n >= allowed {
                        let _ = c.write_all(&sb[..allowed]).await;
                        cut_here();
                        return;
                    }
                }
                from_server += n;
                if c.write_all(&sb[..n]).await.is_err() { return; }
            }
        }
    }
}

/// What the client of a [`fake_server`] sent.
#[derive(Default)]
pub struct Seen {
    lines: Mutex<Vec<String>>,
    closed: AtomicBool,
}

impl Seen {
    /// The lines received so far, without line ends.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line the client sent, once its connection has ended (a
    /// bounded wait): nothing can be added after this.
    pub async fn all_after_close(&self) -> Vec<String> {
        assert!(
            eventually(10, || self.closed.load(Ordering::SeqCst)).await,
            "the fake server's connection did not end"
        );
        self.lines()
    }
}

/// A scripted fake POP3 server for one connection: sends `greeting`, then
/// for every line received calls `reply` (which gets the line and returns
/// the bytes to send; `None` closes). Returns the address and what the
/// client sent.
pub async fn fake_server<F>(greeting: &'static str, mut reply: F) -> (SocketAddr, Arc<Seen>)
where
    F: FnMut(&str) -> Option<String> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        let Ok((sock, _)) = l.accept().await else {
            return;
        };
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        if w.write_all(greeting.as_bytes()).await.is_ok() {
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let l = line.trim_end().to_string();
                seen2.lines.lock().unwrap().push(l.clone());
                let Some(out) = reply(&l) else { break };
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        seen2.closed.store(true, Ordering::SeqCst);
    });
    (addr, seen)
}

pub fn opts() -> RunOptions {
    RunOptions::default()
}

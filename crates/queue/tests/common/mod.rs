//! Test helpers: a scriptable fake SMTP server (with STARTTLS and AUTH
//! PLAIN), and a running queue with a recording local delivery. The
//! private dnsmasq, free ports and bounded polls come from
//! postoffice-testkit.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use postoffice_core::dkim::Signer;
use postoffice_queue::{DeliveryConfig, LocalMail, Queue};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

// ------------------------------------------------------- fake SMTP server

/// A transaction the fake server accepted.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth_user: Option<String>,
}

/// What the server is told (to decide a reply).
pub struct Call<'a> {
    /// 1-based connection number.
    pub conn: usize,
    /// "MAIL", "RCPT" or "DATA" (the end of the content; the reply
    /// "<close>" drops the connection instead of answering).
    pub cmd: &'a str,
    pub arg: &'a str,
}

type Decide = dyn Fn(&Call<'_>) -> Option<String> + Send + Sync;

pub struct FakeState {
    decide: Box<Decide>,
    tls: Option<TlsAcceptor>,
    auth: Option<(String, String)>,
    pub received: Mutex<Vec<Received>>,
    /// Every MAIL FROM seen (accepted or not), with the connection's TLS state.
    pub mail_froms: Mutex<Vec<String>>,
    pub connections: AtomicUsize,
}

pub struct FakeSmtp {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
}

impl FakeSmtp {
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
    pub fn mail_froms(&self) -> Vec<String> {
        self.state.mail_froms.lock().unwrap().clone()
    }
}

/// Start a fake SMTP server on 127.0.0.1 (random port). `decide` may
/// override the default replies (250 everywhere).
pub async fn fake_smtp(
    decide: impl Fn(&Call<'_>) -> Option<String> + Send + Sync + 'static,
    tls: Option<TlsAcceptor>,
    auth: Option<(String, String)>,
) -> FakeSmtp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(FakeState {
        decide: Box::new(decide),
        tls,
        auth,
        received: Mutex::new(Vec::new()),
        mail_froms: Mutex::new(Vec::new()),
        connections: AtomicUsize::new(0),
    });
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let conn = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
            let st = Arc::clone(&st);
            tokio::spawn(async move {
                let mut io = BufReader::new(tcp);
                if io
                    .get_mut()
                    .write_all(b"220 fake.test ESMTP\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                if let After::StartTls = session(&mut io, &st, conn, false).await
                    && let Some(acceptor) = st.tls.clone()
                {
                    let tcp = io.into_inner();
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut io = BufReader::new(tls);
                    session(&mut io, &st, conn, true).await;
                }
            });
        }
    });
    FakeSmtp { addr, state }
}

enum After {
    Closed,
    StartTls,
}

fn angle(arg: &str) -> String {
    let a = arg.split_once(':').map_or(arg, |(_, a)| a).trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_string()
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    st: &FakeState,
    conn: usize,
    tls: bool,
) -> After {
    let mut tx = Received {
        tls,
        ..Received::default()
    };
    let mut auth_user: Option<String> = None;
    loop {
        let mut line = String::new();
        match io.read_line(&mut line).await {
            Ok(0) | Err(_) => return After::Closed,
            Ok(_) => {}
        }
        let l = line.trim_end().to_string();
        let upper = l.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let mut r = String::from(
                "250-fake.test\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250-8BITMIME\r\n",
            );
            if st.tls.is_some() && !tls {
                r.push_str("250-STARTTLS\r\n");
            }
            if st.auth.is_some() && tls {
                r.push_str("250-AUTH PLAIN\r\n");
            }
            r.push_str("250 ENHANCEDSTATUSCODES");
            r
        } else if upper.starts_with("HELO") {
            "250 fake.test".into()
        } else if upper == "STARTTLS" && st.tls.is_some() && !tls {
            let _ = io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await;
            return After::StartTls;
        } else if let Some(token) = l.strip_prefix("AUTH PLAIN ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token.trim())
                .unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
            let ok = match (&st.auth, parts.as_slice()) {
                (Some((u, p)), [_, user, pass]) => user == &u.as_bytes() && pass == &p.as_bytes(),
                _ => false,
            };
            if ok {
                auth_user = Some(st.auth.as_ref().unwrap().0.clone());
                "235 2.7.0 Authentication successful".into()
            } else {
                "535 5.7.8 Authentication credentials invalid".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            let from = angle(&l);
            st.mail_froms.lock().unwrap().push(from.clone());
            if st.auth.is_some() && auth_user.is_none() {
                "530 5.7.0 Authentication required".into()
            } else {
                let r = (st.decide)(&Call {
                    conn,
                    cmd: "MAIL",
                    arg: &from,
                })
                .unwrap_or_else(|| "250 2.1.0 ok".into());
                if r.starts_with('2') {
                    tx.mail_from = from;
                    tx.rcpts.clear();
                }
                r
            }
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = angle(&l);
            let r = (st.decide)(&Call {
                conn,
                cmd: "RCPT",
                arg: &rcpt,
            })
            .unwrap_or_else(|| "250 2.1.5 ok".into());
            if r.starts_with('2') {
                tx.rcpts.push(rcpt);
            }
            r
        } else if upper == "DATA" {
            if tx.rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                let _ = io.get_mut().write_all(b"354 go ahead\r\n").await;
                let mut data = Vec::new();
                loop {
                    let mut dl = Vec::new();
                    match io.read_until(b'\n', &mut dl).await {
                        Ok(0) | Err(_) => return After::Closed,
                        Ok(_) => {}
                    }
                    if dl == b".\r\n" {
                        break;
                    }
                    let dl = if dl.starts_with(b".") {
                        &dl[1..]
                    } else {
                        &dl[..]
                    };
                    data.extend_from_slice(dl);
                }
                let r = (st.decide)(&Call {
                    conn,
                    cmd: "DATA",
                    arg: "",
                })
                .unwrap_or_else(|| "250 2.0.0 queued".into());
                if r == "<close>" {
                    // The reply is "lost": the connection just drops.
                    return After::Closed;
                }
                if r.starts_with('2') {
                    let mut done = std::mem::take(&mut tx);
                    done.data = data;
                    done.tls = tls;
                    done.auth_user = auth_user.clone();
                    st.received.lock().unwrap().push(done);
                    tx.tls = tls;
                }
                r
            }
        } else if upper == "RSET" {
            tx.rcpts.clear();
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            let _ = io.get_mut().write_all(b"221 2.0.0 bye\r\n").await;
            return After::Closed;
        } else {
            "502 5.5.2 command not recognized".into()
        };
        if io
            .get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return After::Closed;
        }
    }
}

/// A self-signed certificate for `names`: (acceptor, PEM of the cert).
pub fn tls_acceptor(names: &[&str]) -> (TlsAcceptor, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem = cert.pem();
    let der = rustls_pki_types::CertificateDer::from(cert.der().to_vec());
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key_der)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), pem)
}

// ------------------------------------------------------------- the queue

pub const LOCAL_DOMAIN: &str = "src.test";

/// Local deliveries: (recipient, message).
pub type Mailbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// The local side for tests: `src.test` is local, and what is delivered
/// there is recorded.
pub struct Recorder(pub Mailbox);

impl LocalMail for Recorder {
    fn is_local_domain(&self, domain: &str) -> bool {
        domain.eq_ignore_ascii_case(LOCAL_DOMAIN)
    }

    fn deliver(
        &self,
        rcpt: &str,
        message: &[u8],
    ) -> Result<(), postoffice_core::delivery::DeliveryError> {
        self.0
            .lock()
            .unwrap()
            .push((rcpt.to_string(), message.to_vec()));
        Ok(())
    }
}

/// A queue with its scheduler running; local deliveries are recorded.
pub struct Harness {
    pub queue: Arc<Queue>,
    pub local: Mailbox,
    /// What the scheduler counted.
    pub metrics: Arc<postoffice_core::metrics::Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

/// A queue config for tests: 1-second retries, short timeouts.
pub fn test_config(remote_port: u16) -> postoffice_config::Queue {
    postoffice_config::Queue {
        remote_port,
        retry_schedule_secs: vec![1],
        max_age_secs: 3600,
        delay_warning_secs: 0,
        connect_timeout_secs: 2,
        command_timeout_secs: 5,
        ..postoffice_config::Queue::default()
    }
}

pub fn start(
    cfg: postoffice_config::Queue,
    dns: Option<SocketAddr>,
    signer: Option<Arc<Signer>>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), &cfg).unwrap());
    let local: Mailbox = Arc::new(Mutex::new(Vec::new()));
    let metrics = Arc::new(postoffice_core::metrics::Metrics::new());
    let dcfg = DeliveryConfig {
        hostname: "mail.src.test".into(),
        queue: cfg,
        dns: postoffice_config::Dns {
            nameservers: dns.into_iter().collect(),
            timeout_secs: 2,
        },
        local: Arc::new(Recorder(Arc::clone(&local))),
        signer,
        metrics: Some(Arc::clone(&metrics)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(postoffice_queue::run(
        Arc::clone(&queue),
        dcfg,
        async move {
            let _ = rx.await;
        },
    ));
    Harness {
        queue,
        local,
        metrics,
        stop: Some(tx),
        task: Some(task),
        dir,
    }
}

impl Harness {
    pub fn local_mail(&self) -> Vec<(String, Vec<u8>)> {
        self.local.lock().unwrap().clone()
    }

    /// Stops the scheduler and waits (bounded) until it has: what it was
    /// doing is finished; the spool and the recorded mail stay.
    pub async fn stop_scheduler(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("scheduler stops")
                .unwrap();
        }
    }

    /// Stops the scheduler, then removes the spool.
    pub async fn stop(mut self) {
        self.stop_scheduler().await;
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

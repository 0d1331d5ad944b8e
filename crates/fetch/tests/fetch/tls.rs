//! TLS: implicit and STLS with a CA file, verification failures,
//! `insecure`, and no plaintext fallback.

use postoffice_fetch::{
    AuthMethod, Client, ConnectOptions, Destination, Error, FetchError, Policy, TlsMode, Trust,
};

use crate::common::*;

fn tls_account(
    srv: &TestServer,
    name: &str,
    mode: TlsMode,
    ca: Option<std::path::PathBuf>,
) -> postoffice_fetch::Account {
    let port = match mode {
        TlsMode::Implicit => srv.tls,
        _ => srv.plain,
    };
    let mut a = srv.account_to(
        name,
        Policy::Delete,
        Destination::Maildir(srv.path().join(format!("{name}-maildir"))),
        port,
    );
    a.server = "localhost".into();
    a.tls = mode;
    a.ca_file = ca;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_and_starttls_with_ca_file() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    let a = tls_account(&srv, "implicit", TlsMode::Implicit, Some(srv.cert.clone()));
    let r = fetch(&a, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(r.fetched, 1);

    srv.deliver(&message(2));
    let a = tls_account(&srv, "stls", TlsMode::Starttls, Some(srv.cert.clone()));
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    let mut o = opts();
    o.trace = Some(std::sync::Arc::new(move |l: &str| {
        l2.lock().unwrap().push(l.to_string())
    }));
    let r = fetch(&a, &o).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(r.fetched, 1);
    let lines = lines.lock().unwrap();
    let stls = lines
        .iter()
        .position(|l| l.ends_with("C: STLS"))
        .expect("STLS sent");
    let auth = lines
        .iter()
        .position(|l| l.contains("C: AUTH") || l.contains("C: USER"))
        .unwrap();
    assert!(stls < auth, "credentials only after STLS: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_is_refused_without_ca_file() {
    let srv = TestServer::start().await;
    // System roots: the self-signed certificate is not among them.
    let mut o = ConnectOptions::new("localhost", TlsMode::Implicit);
    o.port = srv.tls.port();
    match Client::connect(&o).await {
        Err(e @ Error::Certificate { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("not accepted") && msg.contains("ca_file"),
                "{msg}"
            );
        }
        // A machine without any system CA certificates fails earlier,
        // still without connecting insecurely.
        Err(Error::TlsConfig(m)) if m.contains("no system CA") => {}
        other => panic!("expected a certificate error, got {other:?}"),
    }
    // A CA file holding some other certificate: deterministic failure.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_pem = srv.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    o.trust = Trust::CaFile(other_pem.clone());
    let e = Client::connect(&o).await.unwrap_err();
    assert!(matches!(e, Error::Certificate { .. }), "{e:?}");
    assert!(!e.is_temporary());
    // The same through an account: STLS too, and the error is permanent.
    let a = tls_account(&srv, "bad", TlsMode::Starttls, Some(other_pem));
    let r = fetch(&a, &opts()).await;
    assert!(
        matches!(r.error, Some(FetchError::Pop3(Error::Certificate { .. }))),
        "{:?}",
        r.error
    );
    assert_eq!(postoffice_fetch::cli::exit_status(&[r]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_accepts_the_self_signed_certificate() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    let mut a = tls_account(&srv, "insecure", TlsMode::Implicit, None);
    a.server = "127.0.0.1".into();
    let mut o = opts();
    o.insecure = true;
    let r = fetch(&a, &o).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(r.fetched, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_without_stls_offered_is_refused() {
    let (addr, seen) = fake_server("+OK fake POP3 ready\r\n", |line| match line {
        "CAPA" => Some("+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n".into()),
        "QUIT" => Some("+OK\r\n".into()),
        _ => Some("-ERR what\r\n".into()),
    })
    .await;
    let mut o = ConnectOptions::new("127.0.0.1", TlsMode::Starttls);
    o.port = addr.port();
    o.trust = Trust::Insecure;
    let e = Client::connect(&o).await.unwrap_err();
    assert!(matches!(e, Error::StlsNotOffered), "{e:?}");
    assert!(e.to_string().contains("refusing to continue without TLS"));
    // The client has closed the connection: what the server saw is final.
    let seen = seen.all_after_close().await;
    assert_eq!(seen, ["CAPA"], "nothing but CAPA may be sent in plaintext");
    // login() is never reached: there is no client to call it on.
    let _ = AuthMethod::Auto;
}

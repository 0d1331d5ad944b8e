//! TLS to the database, against a private PostgreSQL server with TLS on:
//! `sslmode=require` verifies the certificate against `ca_file`,
//! `prefer` encrypts without verifying, `disable` stays plain, and a
//! server whose certificate does not verify (or that has no TLS) is
//! refused under `require` with an error that says so.

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use postoffice_pg::{PgError, PgOptions, PgStore, migrate};
use postoffice_store::MailStore;
use postoffice_testkit::Postgres;

const BOX: &str = "alice@example.test";

/// A self-signed certificate for 127.0.0.1 and localhost: (cert, key).
fn certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn options(url: String, ca_file: Option<&Path>) -> PgOptions {
    PgOptions {
        connect_timeout: Duration::from_secs(5),
        pool_size: 2,
        ca_file: ca_file.map(Path::to_path_buf),
        ..PgOptions::new(url)
    }
}

/// Whether the server sees an encrypted connection from postoffice
/// (asked over a plain connection of the test's own).
fn encrypted_sessions(pg: &Postgres) -> i64 {
    let mut c = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
    c.query_one(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'postoffice' AND s.ssl",
        &[],
    )
    .unwrap()
    .get(0)
}

fn plain_sessions(pg: &Postgres) -> i64 {
    let mut c = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
    c.query_one(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'postoffice' AND NOT s.ssl",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Delivers one message and reads it back through `store`.
fn round_trip(store: &PgStore) {
    let body = b"Subject: over TLS\r\n\r\nhello\r\n";
    store.deliver(BOX, &mut Cursor::new(&body[..])).unwrap();
    assert_eq!(store.usage(BOX).unwrap().messages, 1);
}

#[test]
fn require_verifies_the_certificate_and_encrypts() {
    let mut pg = Postgres::start();
    let (cert, key) = certificate();
    pg.enable_tls(&cert, &key);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();

    let opts = options(format!("{}?sslmode=require", pg.url), Some(&ca));
    migrate(&opts).unwrap();
    let store = PgStore::connect(&opts, "node-a").unwrap();
    round_trip(&store);
    assert!(
        encrypted_sessions(&pg) >= 1,
        "no encrypted session seen by the server"
    );
    assert_eq!(
        plain_sessions(&pg),
        0,
        "a plain session under sslmode=require"
    );
}

#[test]
fn require_refuses_a_certificate_from_another_ca() {
    let mut pg = Postgres::start();
    let (cert, key) = certificate();
    pg.enable_tls(&cert, &key);
    let (other, _) = certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, other).unwrap();

    let opts = options(format!("{}?sslmode=require", pg.url), Some(&ca));
    let err = migrate(&opts).unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn require_refuses_a_server_without_tls() {
    let pg = Postgres::start();
    let (cert, _) = certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert).unwrap();
    let opts = options(format!("{}?sslmode=require", pg.url), Some(&ca));
    let err = migrate(&opts).unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }), "{err}");
}

#[test]
fn an_unreadable_ca_file_is_a_clear_error() {
    let pg = Postgres::start();
    let opts = options(
        format!("{}?sslmode=require", pg.url),
        Some(Path::new("/nonexistent/ca.pem")),
    );
    let err = migrate(&opts).unwrap_err();
    assert!(matches!(err, PgError::Tls(_)), "{err}");
    assert!(err.to_string().contains("ca_file"), "{err}");
}

#[test]
fn prefer_encrypts_without_verifying_and_disable_stays_plain() {
    let mut pg = Postgres::start();
    let (cert, key) = certificate();
    pg.enable_tls(&cert, &key);

    // The default sslmode is prefer: encrypted, though no CA is given
    // that the self-signed certificate chains to.
    let opts = options(pg.url.clone(), None);
    migrate(&opts).unwrap();
    let store = PgStore::connect(&opts, "node-a").unwrap();
    round_trip(&store);
    assert!(encrypted_sessions(&pg) >= 1);
    drop(store);

    let plain = options(format!("{}?sslmode=disable", pg.url), None);
    let store = PgStore::connect(&plain, "node-b").unwrap();
    assert_eq!(store.usage(BOX).unwrap().messages, 1);
    assert!(
        plain_sessions(&pg) >= 1,
        "sslmode=disable did not give a plain session"
    );
}

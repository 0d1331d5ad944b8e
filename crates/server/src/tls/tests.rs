use super::*;

/// A self-signed certificate for `names`, written to `dir/<stem>.pem` and
/// `dir/<stem>.key`; returns the pair and the certificate's DER.
fn make_pair(dir: &Path, stem: &str, names: &[&str]) -> (CertKey, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_after = rcgen::date_time_ymd(2040, 1, 2);
    let cert = params.self_signed(&key).unwrap();
    let pair = CertKey {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    (pair, cert.der().to_vec())
}

fn config_with(dir: &Path, pairs: Vec<CertKey>) -> Config {
    let mut cfg = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    cfg.tls.certificates = pairs;
    cfg
}

fn served(store: &CertStore, sni: Option<&str>) -> Vec<u8> {
    store.choose(sni).unwrap().cert[0].as_ref().to_vec()
}

#[test]
fn each_name_gets_its_own_certificate_and_others_get_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_der) = make_pair(dir.path(), "a", &["mail.a.test"]);
    let (b, b_der) = make_pair(dir.path(), "b", &["pop.b.test", "*.wild.test"]);
    let store = CertStore::load(&config_with(dir.path(), vec![a, b])).unwrap();
    assert_eq!(served(&store, Some("mail.a.test")), a_der);
    assert_eq!(served(&store, Some("POP.B.TEST")), b_der);
    assert_eq!(served(&store, Some("x.wild.test")), b_der);
    // A wildcard covers one label only.
    assert_eq!(served(&store, Some("y.x.wild.test")), a_der);
    assert_eq!(served(&store, Some("unknown.test")), a_der);
    assert_eq!(served(&store, None), a_der);
}

#[test]
fn names_and_expiry_are_read_from_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = make_pair(dir.path(), "a", &["mail.a.test", "127.0.0.1"]);
    let info = inspect(&a).unwrap();
    assert_eq!(info.names, vec!["mail.a.test", "127.0.0.1"]);
    let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(2_209_075_200); // 2040-01-02
    assert_eq!(info.not_after, expected);
    assert_eq!(info.sha256.len(), 64);
}

#[test]
fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_der) = make_pair(dir.path(), "a", &["mail.a.test"]);
    let store = CertStore::load(&config_with(dir.path(), vec![a.clone()])).unwrap();
    // Nothing changed: nothing is read.
    assert_eq!(store.reload(false), Reloaded::default());
    // A renewal (new files through a new directory, like certbot's
    // archive/ behind live/ symlinks).
    let renewed = dir.path().join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    let (new, new_der) = make_pair(&renewed, "a", &["mail.a.test"]);
    std::fs::rename(&new.cert, &a.cert).unwrap();
    std::fs::rename(&new.key, &a.key).unwrap();
    // The first poll sees the change, the next one (files unchanged since)
    // reads them.
    assert_eq!(store.reload(false), Reloaded::default());
    let r = store.reload(false);
    assert_eq!(r.replaced, vec![a.cert.clone()]);
    assert_ne!(new_der, a_der);
    assert_eq!(served(&store, Some("mail.a.test")), new_der);
    // A broken key: the renewed certificate stays, the failure is reported
    // once, not at every poll.
    std::fs::write(&a.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    assert_eq!(store.reload(false), Reloaded::default());
    let r = store.reload(false);
    assert_eq!(r.failed, vec![a.cert.clone()]);
    assert_eq!(served(&store, None), new_der);
    assert_eq!(store.reload(false), Reloaded::default());
    // A key of another certificate: refused the same way.
    let (other, _) = make_pair(dir.path(), "other", &["x.test"]);
    std::fs::copy(&other.key, &a.key).unwrap();
    assert_eq!(store.reload(true).failed, vec![a.cert.clone()]);
    assert_eq!(served(&store, None), new_der);
}

#[test]
fn a_bad_pair_at_start_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = make_pair(dir.path(), "a", &["mail.a.test"]);
    std::fs::write(&a.cert, "not pem").unwrap();
    let e = CertStore::load(&config_with(dir.path(), vec![a.clone()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&a.cert.display().to_string()), "{e}");
}

#[test]
fn expiry_within_the_warning_window_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = make_pair(dir.path(), "a", &["mail.a.test"]);
    let store = CertStore::load(&config_with(dir.path(), vec![a])).unwrap();
    let not_after = store.certificates()[0].1.not_after;
    let day = Duration::from_secs(86_400);
    assert_eq!(store.warn_expiring(not_after - 30 * day), 0);
    assert_eq!(store.warn_expiring(not_after - 13 * day), 1);
    assert_eq!(store.warn_expiring(not_after + day), 1);
    assert_eq!(store.certificates()[0].1.days_left(not_after + day), -2);
}

#[test]
fn without_configuration_a_self_signed_certificate_is_generated_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), Vec::new());
    let first = CertStore::load(&cfg).unwrap();
    assert!(first.generated());
    let again = CertStore::load(&cfg).unwrap();
    assert_eq!(
        first.certificates()[0].1.sha256,
        again.certificates()[0].1.sha256
    );
}

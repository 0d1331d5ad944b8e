//! Mail is private by default (security issue): under the usual umask
//! 022, everything the server and the CLI create under the data directory
//! — mail, the quarantine, the queue, keys, certificates, the directory of
//! users — is 0600 (files) or 0700 (directories).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{BIN, Env, base64, smtp_cmd, smtp_connect, smtp_reply};

fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, bool, u32)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        out.push((e.path(), meta.is_dir(), mode));
        if meta.is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[test]
fn everything_under_the_data_directory_is_private_under_umask_022() {
    // The process-wide umask is inherited by every child we start.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let env = Env::new(
        BIN,
        "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
         [filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n",
    );
    env.add_user("alice@example.test", "pw-alice");
    env.cli(&["dkim", "generate", "example.test", "--algorithm", "ed25519"])
        .ok();
    let server = env.start();
    env.deliver("alice@example.test", b"Subject: by deliver\r\n\r\nx\r\n");
    // Over SMTP, and over submission to a remote domain (into the queue).
    let mut c = smtp_connect(server.smtp_addr());
    assert_eq!(smtp_cmd(&mut c, "EHLO client.test").0, 250);
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<bob@sender.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"Subject: by smtp\r\n\r\nx\r\n.\r\n");
    assert_eq!(smtp_reply(&mut c).0, 250);
    let mut s = smtp_connect(server.submit_addr());
    assert_eq!(smtp_cmd(&mut s, "EHLO client.test").0, 250);
    let auth = base64(b"\0alice@example.test\0pw-alice");
    assert_eq!(smtp_cmd(&mut s, &format!("AUTH PLAIN {auth}")).0, 235);
    assert_eq!(smtp_cmd(&mut s, "MAIL FROM:<alice@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut s, "RCPT TO:<carol@remote.test>").0, 250);
    assert_eq!(smtp_cmd(&mut s, "DATA").0, 354);
    s.send_raw(b"From: alice@example.test\r\nSubject: out\r\n\r\nx\r\n.\r\n");
    assert_eq!(smtp_reply(&mut s).0, 250);

    let mut entries = Vec::new();
    walk(&env.data_dir(), &mut entries);
    let names: Vec<String> = entries
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    for needle in [
        "/mail/example.test/alice/new/",
        "/queue/",
        "/dkim/example.test.key",
        "/tls/key.pem",
        "/directory.toml",
    ] {
        assert!(
            names.iter().any(|n| n.contains(needle)),
            "nothing matching {needle} in {names:#?}"
        );
    }
    let data_mode = std::fs::metadata(env.data_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(data_mode, 0o700, "the data directory itself");
    for (path, is_dir, mode) in &entries {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:04o}", path.display());
    }
}

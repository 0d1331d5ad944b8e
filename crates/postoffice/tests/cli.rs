//! The command-line interface of the real binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn config_check_rejects_unknown_keys_with_name_and_line() {
    let env = Env::new(BIN, "");
    let bad = env.path().join("bad.toml");
    std::fs::write(
        &bad,
        "data_dir = \"data\"\n\n[pop3]\nlisten_tsl = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let out = cli_with_config(BIN, &bad, &["config", "check"]);
    assert!(!out.status.success(), "{out:#?}");
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {out:#?}");
    assert!(out.stderr.contains("listen_tsl"), "names the key: {out:#?}");
    assert!(out.stderr.contains("line 4"), "names the line: {out:#?}");
    assert!(out.stderr.contains("bad.toml"), "names the file: {out:#?}");

    // A server with that config does not start either.
    let out = cli_with_config(BIN, &bad, &["serve"]);
    assert_eq!(out.status.code(), Some(78), "{out:#?}");
}

#[test]
fn config_check_shows_effective_defaults() {
    let env = Env::new(BIN, "");
    let out = env.cli(&["config", "check"]).ok();
    let effective = &out.stdout;
    // RFC 1939: the autologout timer is at least 10 minutes.
    let pop3 = effective
        .split("[pop3]")
        .nth(1)
        .unwrap_or_else(|| panic!("no [pop3]: {effective}"));
    let pop3 = pop3.split("\n[").next().unwrap();
    assert!(
        pop3.lines().any(|l| l.trim() == "autologout_secs = 600"),
        "{effective}"
    );
    assert!(
        pop3.lines().any(|l| l.trim() == "max_bad_commands = 20"),
        "{effective}"
    );
    assert!(
        effective.contains("hostname = \"test.local\""),
        "{effective}"
    );
    assert!(out.stderr.contains("config OK"), "{out:#?}");

    // Too short an autologout is refused.
    let short = env.path().join("short.toml");
    std::fs::write(&short, "[pop3]\nautologout_secs = 599\n").unwrap();
    let out = cli_with_config(BIN, &short, &["config", "check"]);
    assert_eq!(out.status.code(), Some(78), "{out:#?}");
    assert!(out.stderr.contains("autologout_secs"), "{out:#?}");
}

#[test]
fn deliver_to_unknown_user_exits_67() {
    let env = Env::new(BIN, "");
    env.add_user("alice@example.test", "pw");
    let msg = simple_message("lost", "nobody home");
    let out = env.cli_stdin(&["deliver", "nobody@example.test"], &msg);
    assert_eq!(out.status.code(), Some(67), "{out:#?}");
    assert!(out.stderr.contains("nobody@example.test"), "{out:#?}");
    assert!(
        !env.maildir("nobody@example.test").exists(),
        "nothing stored for an unknown user"
    );
    let out = env.cli_stdin(&["deliver", "../evil@example.test"], &msg);
    assert_eq!(out.status.code(), Some(67), "{out:#?}");
    // And a good delivery is 0.
    let out = env.cli_stdin(&["deliver", "alice@example.test"], &msg);
    assert_eq!(out.status.code(), Some(0), "{out:#?}");
    // An empty message is a data error.
    let out = env.cli_stdin(&["deliver", "alice@example.test"], b"");
    assert_eq!(out.status.code(), Some(65), "{out:#?}");
}

/// Every file and directory below `dir`.
fn walk(dir: &Path, out: &mut Vec<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
}

#[test]
fn user_add_refuses_path_tricks() {
    let env = Env::new(BIN, "");
    for evil in [
        "../evil@x",
        "evil/../../x@example.test",
        "..@example.test",
        "evil@../x",
    ] {
        let out = env.cli_stdin(&["user", "add", evil, "--password-stdin"], b"pw\n");
        assert!(!out.status.success(), "{evil}: {out:#?}");
        assert!(
            out.stderr.contains("invalid address"),
            "{evil}: clear error expected: {out:#?}"
        );
        assert!(
            out.stderr.contains("evil") || out.stderr.contains(".."),
            "{evil}: names the input: {out:#?}"
        );
    }
    let mut files = Vec::new();
    walk(env.path(), &mut files);
    assert!(!files.iter().any(|f| f.contains("evil")), "{files:#?}");
    assert!(!env.path().parent().unwrap().join("evil").exists());
    let out = env.cli(&["user", "list"]).ok();
    assert!(out.stdout.trim().is_empty(), "no user was added: {out:#?}");
}

#[test]
fn user_info_shows_messages_and_bytes() {
    let env = Env::new(BIN, "");
    env.add_user("alice@example.test", "pw");
    let m1 = simple_message("one", "first");
    let m2 = b"Subject: two\n\nbare LF body\n".to_vec();
    env.deliver("alice@example.test", &m1);
    env.deliver("alice@example.test", &m2);
    let bytes = crlf_normalize(&m1).len() + crlf_normalize(&m2).len();
    let out = env.cli(&["user", "info", "alice@example.test"]).ok();
    let field = |name: &str| -> String {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {out:#?}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("messages"), "2");
    assert_eq!(field("bytes"), bytes.to_string());
    assert_eq!(field("address"), "alice@example.test");
    assert_eq!(field("disabled"), "false");

    let out = env.cli(&["user", "info", "nobody@example.test"]);
    assert!(!out.status.success(), "{out:#?}");
}

#[test]
fn dovecot_passwd_import_allows_login() {
    // A SHA512-CRYPT hash made by another implementation (openssl, as
    // Dovecot's own `doveadm pw` would), not by our code.
    let out = Command::new(program("openssl", "openssl"))
        .args(["passwd", "-6", "-salt", "saltsalt", "secret"])
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl passwd: {out:?}");
    let hash = String::from_utf8(out.stdout)
        .expect("utf-8 hash")
        .trim()
        .to_string();
    assert!(hash.starts_with("$6$saltsalt$"), "{hash}");
    let env = Env::new(BIN, "");
    let file = env.path().join("passwd");
    std::fs::write(
        &file,
        format!(
            "# exported from dovecot\nbob@example.test:{{SHA512-CRYPT}}{hash}::::::\nbroken line\n"
        ),
    )
    .unwrap();
    let out = env
        .cli(&["user", "import", "--dovecot-passwd", file.to_str().unwrap()])
        .ok();
    assert!(
        out.stdout
            .contains("imported: 1 added, 0 updated, 1 skipped"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("line 3"), "{out:#?}");
    let out = env.cli(&["user", "list"]).ok();
    assert_eq!(out.stdout.trim(), "bob@example.test");

    let server = env.start();
    let mut c = server.connect();
    assert_eq!(c.login("bob@example.test", "not secret"), AUTH_FAILED);
    let reply = c.login("bob@example.test", "secret");
    assert!(reply.starts_with("+OK"), "imported password: {reply:?}");
    c.quit();
}

/// `postoffice admin`: administrators of the web interface live in the
/// directory (directory.toml, or its row in PostgreSQL) as argon2id hashes, never as the password itself.
#[test]
fn admin_accounts_are_managed_from_the_cli() {
    let env = Env::new(BIN, "");
    let out = env
        .cli_stdin(
            &["admin", "add", "Root", "--password-stdin"],
            b"s3cret-admin\n",
        )
        .ok();
    assert!(out.stdout.contains("added administrator root"), "{out:#?}");
    let out = env.cli(&["admin", "add", "ops"]).ok();
    let generated = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("a generated password: {out:#?}"));
    assert_eq!(generated.len(), 20, "{out:#?}");
    let dir = env.directory_document();
    assert!(
        dir.contains("[[admin]]") && dir.contains("$argon2id$"),
        "{dir}"
    );
    assert!(
        !dir.contains("s3cret-admin") && !dir.contains(generated),
        "{dir}"
    );
    let out = env.cli(&["admin", "list"]).ok();
    assert_eq!(out.stdout, "ops\nroot\n");
    // A name with '@' is a user's, not an administrator's.
    let out = env.cli_stdin(&["admin", "add", "a@b.test", "--password-stdin"], b"x\n");
    assert!(!out.status.success(), "{out:#?}");
    assert!(
        out.stderr.contains("invalid administrator name"),
        "{out:#?}"
    );
    let out = env.cli_stdin(&["admin", "add", "root", "--password-stdin"], b"x\n");
    assert!(out.stderr.contains("already exists"), "{out:#?}");
    env.cli_stdin(&["admin", "passwd", "root", "--password-stdin"], b"other\n")
        .ok();
    env.cli(&["admin", "del", "ops"]).ok();
    let out = env.cli(&["admin", "list"]).ok();
    assert_eq!(out.stdout, "root\n");
    let out = env.cli(&["admin", "del", "ops"]);
    assert!(out.stderr.contains("does not exist"), "{out:#?}");
}

//! `postoffice migrate --to postgres` and `--to maildir` with a private
//! PostgreSQL: every user, alias, message (byte for byte, under the UIDL it
//! had), quarantined message, queue entry and DKIM key arrives; a run
//! killed part-way is completed by running it again with nothing
//! duplicated; a second run copies nothing; POP3 clients then see exactly
//! what they saw before, on either backend.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

const PW: &str = "secret pw";
const USERS: [&str; 6] = [
    "alice@example.test",
    "bob@example.test",
    "carol@example.test",
    "dave@example.test",
    "erin@example.test",
    "frank@example.test",
];
const ALICE: &str = USERS[0];

/// What a POP3 client sees of each user: (UIDL, message) in order.
type Seen = BTreeMap<String, Vec<(String, Vec<u8>)>>;

/// Logs every user in, lists and retrieves everything, and quits without
/// deleting anything (a client that leaves mail on the server).
fn seen(server: &Server) -> Seen {
    USERS
        .iter()
        .map(|user| {
            let mut c = server.login(user, PW);
            let uids = c.uidl();
            let bodies = c.retr_all();
            assert!(c.quit().starts_with("+OK"));
            assert_eq!(uids.len(), bodies.len());
            (user.to_string(), uids.into_iter().zip(bodies).collect())
        })
        .collect()
}

/// Runs `migrate --to <to>` and returns its output, asserting exit 0.
fn migrate(env: &Env, to: &str) -> String {
    let out = env.cli(&["migrate", "--to", to]);
    assert!(out.status.success(), "migrate --to {to}: {out:?}");
    out.stdout
}

/// Switches the environment's `[storage] backend`.
fn switch_backend(env: &Env, from: &str, to: &str) {
    let config = std::fs::read_to_string(&env.config).unwrap();
    let old = format!("backend = \"{from}\"");
    assert!(config.contains(&old), "{config}");
    std::fs::write(
        &env.config,
        config.replace(&old, &format!("backend = \"{to}\"")),
    )
    .unwrap();
}

/// A held message, written where the Maildir backend keeps the quarantine
/// (as a delivery would, the size in the name).
fn hold(env: &Env, user: &str, name: &str) -> String {
    let q = env.maildir(user).join(".Quarantine");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(q.join(sub)).unwrap();
    }
    let body = "X-Postoffice-Verdict: quarantine; dnsbl=off spf=fail dkim=off dmarc=off virus=off\r\n\
                From: Mallory <mallory@example.net>\r\nSubject: held\r\n\r\nbuy now\r\n";
    std::fs::write(q.join("new").join(format!("{name},S={}", body.len())), body).unwrap();
    body.to_string()
}

/// A line of `out` that starts with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"))
}

#[test]
fn maildir_to_postgres_and_back_keeps_every_message_and_uidl() {
    let pg = Postgres::start();
    let url = create_database(&pg.url);
    // Nothing listens at the transport: the queued entry stays queued.
    let dead = free_port();
    let config = format!(
        "[storage]\nbackend = \"maildir\"\nurl = \"{url}\"\nlease_secs = 5\n\
         [queue]\nretry_schedule_secs = [3600]\n\
         [queue.transports]\n\"remote.test\" = \"127.0.0.1:{dead}\"\n"
    );
    let a = Env::new(BIN, &config);
    for user in USERS {
        a.add_user(user, PW);
    }
    a.cli(&["alias", "add", "sales@example.test", ALICE]).ok();
    let key = a
        .cli(&["dkim", "generate", "example.test", "--algorithm", "ed25519"])
        .ok()
        .stdout;
    // Mail for everyone, a 3 MiB message among it (many chunks in the
    // database), and a line that starts with a dot.
    for (i, user) in USERS.iter().enumerate() {
        for n in 0..(4 + i) {
            let body = format!(".dot line {n}\r\nfor {user}\r\n");
            a.deliver(user, &simple_message(&format!("m{n} {user}"), &body));
        }
    }
    let big_line = "x".repeat(998);
    let big = (0..3 * 1024)
        .map(|_| big_line.as_str())
        .collect::<Vec<_>>()
        .join("\r\n");
    a.deliver(ALICE, &simple_message("big", &big));
    let held = hold(&a, ALICE, "1764900000.M1P1.test");
    // A value the application keeps with a mailbox (what the quarantine
    // digest listed), where the Maildir backend keeps it.
    let state = a.maildir(ALICE).join("postoffice-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("quarantine-digest"), "sent 1764900000").unwrap();
    let out = a.cli_stdin(
        &["sendmail", "-f", ALICE, "friend@remote.test"],
        format!("From: {ALICE}\r\nSubject: queued\r\n\r\nhi\r\n").as_bytes(),
    );
    assert!(out.status.success(), "sendmail: {out:?}");
    let total: usize = (0..USERS.len()).map(|i| 4 + i).sum::<usize>() + 1;

    let mut server = a.start();
    let before = seen(&server);
    assert_eq!(before.values().map(Vec::len).sum::<usize>(), total);
    server.terminate();

    // A run killed while it copies the second mailbox leaves what it
    // copied; the next run completes it without duplicating anything.
    let mut child = Command::new(BIN)
        .args(["-c".as_ref(), a.config.as_os_str()])
        .args(["migrate", "--to", "postgres"])
        .current_dir(a.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut progress = String::new();
    loop {
        let mut l = String::new();
        if stderr.read_line(&mut l).unwrap() == 0 {
            break;
        }
        progress.push_str(&l);
        if l.starts_with("mailbox 2/") {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    assert!(progress.contains("mailbox 2/"), "{progress}");

    let first = migrate(&a, "postgres");
    assert!(first.contains("complete"), "{first}");
    let messages = line(&first, "messages: ");
    let counts: Vec<usize> = messages
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // "N copied (B bytes), M already there, in K mailbox(es)"
    assert_eq!(counts[0] + counts[2], total, "{messages}");
    assert!(counts[2] > 0, "the killed run copied something: {messages}");
    // The queue comes last (the killed run did not reach it); alice's
    // quarantine and the key came before the second mailbox.
    assert_eq!(
        line(&first, "queue: "),
        "queue: 1 entries copied, 0 already there"
    );
    assert_eq!(
        line(&first, "quarantined: "),
        "quarantined: 0 copied, 1 already there"
    );
    assert_eq!(line(&first, "keys: "), "keys: 0 copied, 1 already there");
    assert!(
        line(&first, "directory: ").starts_with("directory: 1 domain(s), 6 user(s)"),
        "{first}"
    );
    // Idempotent: nothing more to copy.
    let again = migrate(&a, "postgres");
    assert_eq!(
        line(&again, "messages: "),
        format!("messages: 0 copied (0 bytes), {total} already there, in 6 mailbox(es)")
    );
    assert_eq!(line(&again, "mailbox values: "), "mailbox values: 0 copied");
    assert_eq!(
        pg_query(
            &url,
            "SELECT s.key, encode(s.value, 'escape') FROM mailbox_state s \
             JOIN mailboxes b ON b.id = s.mailbox_id WHERE b.name = 'alice@example.test'"
        ),
        [["quarantine-digest", "sent 1764900000"]]
    );
    assert_eq!(
        line(&again, "queue: "),
        "queue: 0 entries copied, 1 already there"
    );
    assert!(
        line(&again, "directory: ").ends_with("already there"),
        "{again}"
    );
    assert!(
        line(&again, "keys: ").starts_with("keys: 0 copied, 1 already there"),
        "{again}"
    );
    // Refused while the backend in use already is the target.
    switch_backend(&a, "maildir", "postgres");
    let refused = a.cli(&["migrate", "--to", "postgres"]);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("already \"postgres\""),
        "{refused:?}"
    );

    // On PostgreSQL: the same UIDLs and bytes, the alias, the quarantine,
    // the queue, the DKIM key.
    let mut server = a.start();
    assert_eq!(seen(&server), before);
    let q = a.cli(&["queue", "list"]).ok().stdout;
    assert!(q.contains("friend@remote.test"), "{q}");
    let listed = a.cli(&["quarantine", "list", ALICE]).ok().stdout;
    assert!(listed.contains("1764900000.M1P1.test"), "{listed}");
    let shown = a
        .cli(&["quarantine", "show", ALICE, "1764900000.M1P1.test"])
        .ok()
        .stdout;
    assert!(shown.contains(held.trim_end()), "{shown}");
    let again_key = a.cli(&["dkim", "generate", "example.test", "--algorithm", "ed25519"]);
    assert!(again_key.stderr.contains("already exists"), "{again_key:?}");
    let dns = a.cli(&["dns", "example.test"]).ok().stdout;
    let p = |s: &str| {
        s.split("p=")
            .nth(1)
            .map(|v| {
                v.chars()
                    .take_while(|c| !matches!(c, '"' | ';' | ' '))
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    assert!(!p(&key).is_empty() && p(&dns) == p(&key), "{key}\n{dns}");
    // New mail to the alias lands on PostgreSQL.
    let mut c = smtp_connect(server.smtp_addr());
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<x@example.net>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<sales@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(&dot_stuff(&simple_message("after", "on postgres")));
    assert_eq!(smtp_cmd(&mut c, ".").0, 250);
    smtp_cmd(&mut c, "QUIT");
    let on_pg = seen(&server);
    assert_eq!(on_pg[ALICE].len(), before[ALICE].len() + 1);
    server.terminate();

    // Back: a node of that database copies it into an empty data_dir.
    let b = Env::new(
        BIN,
        &format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\nlease_secs = 5\n"),
    );
    let back = migrate(&b, "maildir");
    assert_eq!(
        line(&back, "messages: ").split(" (").next().unwrap(),
        format!("messages: {} copied", total + 1)
    );
    assert_eq!(
        line(&back, "queue: "),
        "queue: 1 entries copied, 0 already there"
    );
    assert_eq!(
        line(&back, "quarantined: "),
        "quarantined: 1 copied, 0 already there"
    );
    assert_eq!(line(&back, "mailbox values: "), "mailbox values: 1 copied");
    assert_eq!(
        std::fs::read_to_string(b.maildir(ALICE).join("postoffice-state/quarantine-digest"))
            .unwrap(),
        "sent 1764900000"
    );
    let back_again = migrate(&b, "maildir");
    assert!(
        line(&back_again, "messages: ").starts_with("messages: 0 copied"),
        "{back_again}"
    );
    switch_backend(&b, "postgres", "maildir");
    let mut server = b.start();
    assert_eq!(seen(&server), on_pg);
    assert!(b.maildir(ALICE).join(".Quarantine").exists());
    let listed = b.cli(&["quarantine", "list", ALICE]).ok().stdout;
    assert!(listed.contains("1764900000.M1P1.test"), "{listed}");
    assert_eq!(b.queued_messages().len(), 1);
    assert!(b.data_dir().join("dkim/example.test.key").exists());
    server.terminate();
}

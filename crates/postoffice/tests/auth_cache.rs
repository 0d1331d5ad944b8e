//! The verified-credential cache, end to end: a repeated correct login is
//! served from the cache (counted at shutdown), failures are never cached
//! and are still throttled, and a password change, a disable or a delete
//! made by the CLI (another process) ends the cached credential at once.

mod common;

use common::*;

const ALICE: &str = "alice@example.test";

/// One login on a fresh connection; the server's answer to PASS.
fn try_login(server: &Server, user: &str, password: &str) -> String {
    let mut c = server.connect();
    let r = c.login(user, password);
    c.cmd("QUIT");
    r
}

fn counter(log: &str, name: &str) -> u64 {
    log.rsplit_once(&format!("{name}="))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the shutdown line:\n{log}"))
}

#[test]
fn cached_logins_end_with_password_change_disable_and_delete() {
    let env = Env::new(BIN, "[auth]\nfree_failures = 100\nlockout_after = 1000\n");
    env.add_user(ALICE, "first");
    let mut server = env.start();
    let ok = |r: &str| r.starts_with("+OK");

    assert!(ok(&try_login(&server, ALICE, "first")), "full verification");
    assert!(ok(&try_login(&server, ALICE, "first")), "from the cache");
    assert!(ok(&try_login(&server, ALICE, "first")), "from the cache");
    // A wrong password is never served by the cache, however often.
    for _ in 0..3 {
        assert_eq!(try_login(&server, ALICE, "wrong"), AUTH_FAILED);
    }

    // Password changed by the CLI: the old one stops working at once.
    env.cli_stdin(&["user", "passwd", ALICE, "--password-stdin"], b"second\n")
        .ok();
    wait_for(
        std::time::Duration::from_secs(30),
        "the change to be seen",
        || (try_login(&server, ALICE, "first") == AUTH_FAILED).then_some(()),
    );
    assert!(
        ok(&try_login(&server, ALICE, "second")),
        "full verification"
    );
    assert!(ok(&try_login(&server, ALICE, "second")), "from the cache");

    // Disabled: the cached credential no longer logs in.
    env.cli(&["user", "set", ALICE, "--disabled", "true"]).ok();
    wait_for(
        std::time::Duration::from_secs(30),
        "the disable to be seen",
        || (try_login(&server, ALICE, "second") == AUTH_FAILED).then_some(()),
    );
    env.cli(&["user", "set", ALICE, "--disabled", "false"]).ok();
    // Re-enabled: full verification (at once on Maildir; within a second
    // when the directory is in PostgreSQL, which the server polls).
    wait_for(
        std::time::Duration::from_secs(30),
        "the re-enable to be seen",
        || ok(&try_login(&server, ALICE, "second")).then_some(()),
    );
    assert!(ok(&try_login(&server, ALICE, "second")), "from the cache");

    // Deleted: gone from the cache too.
    env.cli(&["user", "del", ALICE]).ok();
    wait_for(
        std::time::Duration::from_secs(30),
        "the delete to be seen",
        || (try_login(&server, ALICE, "second") == AUTH_FAILED).then_some(()),
    );

    assert!(server.terminate().success());
    let log = env.log_contents();
    // The hits are exactly the logins marked "from the cache" above. With
    // the directory in PostgreSQL a change reaches the server within a
    // second, and until then the old credential is still the right one:
    // the polls above may be served from the cache too.
    let hits = counter(&log, "auth_cache_hits");
    if env.on_postgres() {
        assert!(hits >= 4, "{log}");
    } else {
        assert_eq!(hits, 4, "{log}");
    }
    // Every failure was counted by the throttle (logged one by one).
    assert!(log.matches("login failed").count() >= 3 + 3, "{log}");
}

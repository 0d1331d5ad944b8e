//! Tests of the on-disk directory as a whole.

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use super::*;

/// `openssl passwd -6 -salt saltsalt 'correct horse battery staple'`, with
/// Dovecot's prefix; cheap to verify, unlike argon2 in debug builds.
const HASH: &str = "{SHA512-CRYPT}$6$rounds=5000$saltsalt$CPgxBHZBXfhC6lX1yxpdEsbQfXmg3WXVj8AoVwyNFLfb5AtbfM8k6A8yehv1z6sgzoH/DUIs7YK9hVnGhTjhW/";
const PASSWORD: &[u8] = b"correct horse battery staple";
/// `openssl passwd -5 -salt saltsalt 'correct horse battery staple'`.
const HASH256: &str = "$5$saltsalt$3hGFMknrJ4ZpFPe7XZe397oIMEp7sbvqrcsX/ONJ3i.";

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn with_users(dir: &Path) -> Directory {
    let d = Directory::open(dir).unwrap();
    d.add_domain("example.test").unwrap();
    d.add_user("alice@example.test", HASH).unwrap();
    d.add_user("bob@example.test", HASH).unwrap();
    d
}

#[test]
fn missing_file_is_an_empty_directory() {
    let tmp = temp();
    let d = Directory::open(&tmp.path().join("not-yet-created")).unwrap();
    let snap = d.snapshot();
    assert_eq!(snap.users().count(), 0);
    assert_eq!(snap.domains().count(), 0);
    assert!(d.last_reload_error().is_none());
    // The first mutation creates the data directory.
    d.add_domain("example.test").unwrap();
    assert!(d.path().exists());
}

#[test]
fn add_remove_and_duplicates() {
    let tmp = temp();
    let d = Directory::open(tmp.path()).unwrap();

    assert_eq!(d.add_domain("Example.TEST").unwrap(), "example.test");
    assert!(matches!(
        d.add_domain("example.test"),
        Err(Error::DomainExists(_))
    ));
    assert!(matches!(
        d.add_user("carol@nowhere.test", HASH),
        Err(Error::DomainNotFound(_))
    ));
    assert_eq!(
        d.add_user("Alice@Example.test", HASH).unwrap(),
        "alice@example.test"
    );
    assert!(matches!(
        d.add_user("alice@example.test", HASH),
        Err(Error::UserExists(_))
    ));
    assert!(matches!(
        d.add_user("bob@example.test", "hunter2"),
        Err(Error::UnsupportedHash { .. })
    ));
    assert!(matches!(
        d.add_user("../bob@example.test", HASH),
        Err(Error::InvalidAddress { .. })
    ));

    let err = d.remove_domain("example.test").unwrap_err();
    assert!(matches!(err, Error::DomainHasUsers { count: 1, .. }));
    assert!(err.to_string().contains("remove them first"), "{err}");

    let snap = d.snapshot();
    assert!(snap.user("ALICE@example.test").is_some());
    assert_eq!(
        snap.domain("example.test").map(|x| x.name.as_str()),
        Some("example.test")
    );

    d.remove_user("alice@example.test").unwrap();
    assert!(matches!(
        d.remove_user("alice@example.test"),
        Err(Error::UserNotFound(_))
    ));
    d.remove_domain("example.test").unwrap();
    assert!(matches!(
        d.remove_domain("example.test"),
        Err(Error::DomainNotFound(_))
    ));
    let snap = d.snapshot();
    assert_eq!(snap.users().count(), 0);
    assert_eq!(snap.domains().count(), 0);

    // Failed mutations wrote nothing: a fresh reader agrees.
    let fresh = Directory::open(tmp.path()).unwrap().snapshot();
    assert_eq!(fresh.domains().count(), 0);
}

#[test]
fn file_round_trip() {
    let tmp = temp();
    let d = with_users(tmp.path());
    d.add_domain("other.test").unwrap();
    d.set_domain_policy(
        "example.test",
        DomainPolicy {
            retention_days: Some(Retention::Days(30)),
            login_delay_secs: Some(60),
            quota_bytes: Some(1_000_000),
            quota_messages: None,
        },
    )
    .unwrap();
    d.set_user_policy(
        "alice@example.test",
        UserPolicy {
            retention_days: Some(Retention::Never),
            quota_messages: Some(0),
            ..UserPolicy::default()
        },
    )
    .unwrap();
    d.update_user_policy("alice@example.test", |p| p.login_delay_secs = Some(5))
        .unwrap();
    d.set_user_disabled("bob@example.test", true).unwrap();
    d.set_password("bob@example.test", HASH256).unwrap();
    d.update_user_send_limits("bob@example.test", |l| {
        l.max_messages_per_hour = Some(7);
        l.max_recipients_per_day = Some(0);
    })
    .unwrap();

    let text = fs::read_to_string(tmp.path().join("directory.toml")).unwrap();
    assert!(
        text.contains("[[domain]]") && text.contains("[[user]]"),
        "{text}"
    );
    assert!(text.contains("retention_days = \"never\""), "{text}");
    // No temporary file is left, and the file holding the hashes is private.
    let names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |n: &str| {
            fs::metadata(tmp.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("directory.toml"), 0o600);
        assert_eq!(mode("directory.lock"), 0o600);
    }

    let reopened = Directory::open(tmp.path()).unwrap().snapshot();
    let original = d.snapshot();
    for snap in [&reopened, &original] {
        let names: Vec<_> = snap.domains().map(|x| x.name.clone()).collect();
        assert_eq!(names, ["example.test", "other.test"]);
        let alice = snap.user("alice@example.test").unwrap();
        assert_eq!(
            alice.policy,
            UserPolicy {
                retention_days: Some(Retention::Never),
                login_delay_secs: Some(5),
                quota_bytes: None,
                quota_messages: Some(0),
            }
        );
        assert_eq!(alice.password_hash, HASH);
        assert!(!alice.disabled);
        let bob = snap.user("bob@example.test").unwrap();
        assert!(bob.disabled);
        assert_eq!(bob.password_hash, HASH256);
        assert_eq!(
            bob.send_limits,
            crate::SendLimitOverrides {
                max_messages_per_hour: Some(7),
                max_recipients_per_day: Some(0),
            }
        );
        assert_eq!(bob.send_limits.resolve(100, 50), (7, 0));
        assert_eq!(alice.send_limits, crate::SendLimitOverrides::default());
        assert_eq!(alice.send_limits.resolve(100, 50), (100, 50));
        assert_eq!(
            snap.domain("example.test").unwrap().policy.retention_days,
            Some(Retention::Days(30))
        );
    }
    // Writing the re-read data again yields the identical file.
    assert_eq!(reopened.to_toml().unwrap(), text);
}

#[cfg(unix)]
#[test]
fn file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = temp();
    with_users(tmp.path());
    let mode = fs::metadata(tmp.path().join("directory.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn hand_written_file_is_accepted_and_invalid_ones_are_refused() {
    let tmp = temp();
    let path = tmp.path().join("directory.toml");
    fs::write(
        &path,
        format!(
            "[[domain]]\nname = \"Example.Test\"\nretention_days = 7\n\n\
             [[user]]\naddress = \"Alice@example.test\"\npassword = \"{HASH}\"\nquota_bytes = 0\n"
        ),
    )
    .unwrap();
    let snap = Directory::open(tmp.path()).unwrap().snapshot();
    assert_eq!(
        snap.user("alice@example.test").unwrap().address,
        "alice@example.test"
    );

    for (bad, needle) in [
        (
            "[[domain]]\nname = \"x.test\"\ncolour = \"red\"\n",
            "colour",
        ),
        ("[[dommain]]\nname = \"x.test\"\n", "dommain"),
        (
            &format!("[[user]]\naddress = \"a@x.test\"\npassword = \"{HASH}\"\n"),
            "no [[domain]] entry",
        ),
        (
            "[[domain]]\nname = \"x.test\"\n[[user]]\naddress = \"a@x.test\"\npassword = \"secret\"\n",
            "unsupported password hash",
        ),
        (
            "[[domain]]\nname = \"x.test\"\n[[domain]]\nname = \"X.test\"\n",
            "more than once",
        ),
        (
            "[[domain]]\nname = \"x.test\"\nretention_days = \"soon\"\n",
            "never",
        ),
        (
            "[[domain]]\nname = \"x.test\"\nquota_bytes = -1\n",
            "quota_bytes",
        ),
        ("[[domain]]\nname = \"../x\"\n", "invalid domain"),
        ("[[domain]\n", "valid directory file"),
    ] {
        fs::write(&path, bad).unwrap();
        let err = Directory::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(needle), "{bad:?}: {err}");
        assert!(err.contains("fix it by hand"), "{err}");
    }
}

#[test]
fn server_reloads_after_cli_writes_and_keeps_old_data_on_bad_file() {
    let tmp = temp();
    let server = with_users(tmp.path());
    let before = server.snapshot();
    assert_eq!(before.users().count(), 2);
    // Unchanged file: same Arc, no re-read.
    assert!(Arc::ptr_eq(&before, &server.snapshot()));

    // The CLI is a different process with its own handle.
    let cli = Directory::open(tmp.path()).unwrap();
    cli.add_user("carol@example.test", HASH).unwrap();
    let after = server.snapshot();
    assert!(after.user("carol@example.test").is_some());
    assert!(
        before.user("carol@example.test").is_none(),
        "old snapshots are immutable"
    );

    // A broken hand edit: the server keeps serving the last good data.
    let path = tmp.path().join("directory.toml");
    let good = fs::read_to_string(&path).unwrap();
    fs::write(&path, "this is [not toml").unwrap();
    let snap = server.snapshot();
    assert_eq!(snap.users().count(), 3);
    let err = server.last_reload_error().expect("error recorded");
    assert!(err.contains("not a valid directory file"), "{err}");
    // The broken file is not re-parsed on every call.
    assert!(Arc::ptr_eq(&snap, &server.snapshot()));
    // CLI mutations refuse to build on a broken file.
    assert!(matches!(
        cli.add_user("dave@example.test", HASH),
        Err(Error::Parse { .. })
    ));

    // Fixing the file clears the error and picks up the new contents.
    fs::write(&path, good.replace("carol", "carla")).unwrap();
    let snap = server.snapshot();
    assert!(snap.user("carla@example.test").is_some());
    assert!(snap.user("carol@example.test").is_none());
    assert!(server.last_reload_error().is_none());

    // Deleting the file means no users.
    fs::remove_file(&path).unwrap();
    assert_eq!(server.snapshot().users().count(), 0);
}

#[test]
fn concurrent_writers_lose_nothing() {
    let tmp = temp();
    Directory::open(tmp.path())
        .unwrap()
        .add_domain("example.test")
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let dir = tmp.path().to_owned();
            std::thread::spawn(move || {
                // Each thread is its own "CLI process".
                let d = Directory::open(&dir).unwrap();
                for i in 0..20 {
                    d.add_user(&format!("u{t}-{i}@example.test"), HASH).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let snap = Directory::open(tmp.path()).unwrap().snapshot();
    assert_eq!(snap.users().count(), 160);
    for t in 0..8 {
        for i in 0..20 {
            assert!(snap.user(&format!("u{t}-{i}@example.test")).is_some());
        }
    }
}

#[test]
fn authenticate_outcomes() {
    let tmp = temp();
    let d = with_users(tmp.path());
    let argon = hash_password(b"argon pw").unwrap();
    d.add_user("carol@example.test", &argon).unwrap();
    d.set_user_disabled("bob@example.test", true).unwrap();
    let snap = d.snapshot();

    assert_eq!(
        snap.authenticate("Alice@Example.test", PASSWORD),
        AuthOutcome::Ok(UserRef {
            address: "alice@example.test".into()
        })
    );
    assert_eq!(
        snap.authenticate("alice@example.test", b"wrong"),
        AuthOutcome::Failed
    );
    assert_eq!(
        snap.authenticate("bob@example.test", PASSWORD),
        AuthOutcome::Failed
    );
    assert_eq!(
        snap.authenticate("nobody@example.test", PASSWORD),
        AuthOutcome::Failed
    );
    assert_eq!(
        snap.authenticate("../etc@passwd", PASSWORD),
        AuthOutcome::Failed
    );
    assert_eq!(
        snap.authenticate("carol@example.test", b"argon pw"),
        AuthOutcome::Ok(UserRef {
            address: "carol@example.test".into()
        })
    );
    match snap.authenticate("carol@example.test", b"argon pw") {
        AuthOutcome::Ok(u) => assert_eq!(u.domain(), "example.test"),
        AuthOutcome::Failed => panic!("login failed"),
    }
    // Hashes never leak through Debug.
    let dbg = format!("{:?}", snap.user("alice@example.test"));
    assert!(
        !dbg.contains("saltsalt") && dbg.contains("redacted"),
        "{dbg}"
    );
}

#[test]
fn effective_policy_precedence() {
    let tmp = temp();
    let d = with_users(tmp.path());
    d.add_user("carol@example.test", HASH).unwrap();
    d.add_domain("plain.test").unwrap();
    d.add_user("dave@plain.test", HASH).unwrap();
    d.set_domain_policy(
        "example.test",
        DomainPolicy {
            retention_days: Some(Retention::Days(30)),
            login_delay_secs: Some(300),
            quota_bytes: Some(5_000),
            quota_messages: None,
        },
    )
    .unwrap();
    d.set_user_policy(
        "alice@example.test",
        UserPolicy {
            retention_days: Some(Retention::Days(7)),
            login_delay_secs: Some(0),
            quota_bytes: Some(0),
            quota_messages: Some(10),
        },
    )
    .unwrap();
    d.set_user_policy(
        "bob@example.test",
        UserPolicy {
            retention_days: Some(Retention::Never),
            ..UserPolicy::default()
        },
    )
    .unwrap();
    let defaults = PolicyDefaults {
        retention_days: Some(90),
        login_delay_secs: 60,
        quota_bytes: Some(1 << 30),
        quota_messages: Some(0),
    };
    let snap = d.snapshot();

    // User overrides win; quota 0 means unlimited even against a domain quota.
    assert_eq!(
        snap.effective("alice@example.test", &defaults),
        EffectivePolicy {
            retention_days: Some(7),
            login_delay_secs: 0,
            quota_bytes: None,
            quota_messages: Some(10),
        }
    );
    // "never" overrides the domain's 30 days; the rest comes from the domain
    // or, where the domain is silent, from the defaults.
    assert_eq!(
        snap.effective("bob@example.test", &defaults),
        EffectivePolicy {
            retention_days: None,
            login_delay_secs: 300,
            quota_bytes: Some(5_000),
            quota_messages: None,
        }
    );
    assert_eq!(
        snap.effective("carol@example.test", &defaults),
        EffectivePolicy {
            retention_days: Some(30),
            login_delay_secs: 300,
            quota_bytes: Some(5_000),
            quota_messages: None,
        }
    );
    // No overrides at all: defaults (default quota 0 = unlimited).
    let plain = EffectivePolicy {
        retention_days: Some(90),
        login_delay_secs: 60,
        quota_bytes: Some(1 << 30),
        quota_messages: None,
    };
    assert_eq!(snap.effective("dave@plain.test", &defaults), plain);
    assert_eq!(snap.effective("DAVE@plain.test", &defaults), plain);
    assert_eq!(snap.effective("ghost@nowhere.test", &defaults), plain);

    // Too-large quotas are refused before anything is written.
    assert!(matches!(
        d.set_user_policy(
            "alice@example.test",
            UserPolicy {
                quota_bytes: Some(u64::MAX),
                ..UserPolicy::default()
            }
        ),
        Err(Error::InvalidPolicy(_))
    ));
    assert!(matches!(
        d.set_domain_policy("nowhere.test", DomainPolicy::default()),
        Err(Error::DomainNotFound(_))
    ));
}

#[test]
fn capability_summaries() {
    let tmp = temp();
    let defaults = PolicyDefaults {
        retention_days: Some(30),
        login_delay_secs: 0,
        ..PolicyDefaults::default()
    };
    let d = Directory::open(tmp.path()).unwrap();
    // No users: the defaults, not varying.
    assert_eq!(
        d.snapshot().expire_summary(&defaults),
        ExpireSummary {
            min_days: Some(30),
            varies: false
        }
    );

    let d = with_users(tmp.path());
    let snap = d.snapshot();
    assert_eq!(
        snap.expire_summary(&defaults),
        ExpireSummary {
            min_days: Some(30),
            varies: false
        }
    );
    assert_eq!(
        snap.login_delay_summary(&defaults),
        LoginDelaySummary {
            min_secs: 0,
            varies: false
        }
    );
    let never = PolicyDefaults {
        retention_days: None,
        ..defaults
    };
    assert_eq!(
        snap.expire_summary(&never),
        ExpireSummary {
            min_days: None,
            varies: false
        }
    );

    d.set_user_policy(
        "alice@example.test",
        UserPolicy {
            retention_days: Some(Retention::Never),
            login_delay_secs: Some(900),
            ..UserPolicy::default()
        },
    )
    .unwrap();
    d.set_user_policy(
        "bob@example.test",
        UserPolicy {
            login_delay_secs: Some(120),
            ..UserPolicy::default()
        },
    )
    .unwrap();
    let snap = d.snapshot();
    assert_eq!(
        snap.expire_summary(&defaults),
        ExpireSummary {
            min_days: Some(30),
            varies: true
        }
    );
    assert_eq!(
        snap.login_delay_summary(&defaults),
        LoginDelaySummary {
            min_secs: 120,
            varies: true
        }
    );
    // Disabled users cannot log in, so they do not count.
    d.set_user_disabled("bob@example.test", true).unwrap();
    let snap = d.snapshot();
    assert_eq!(
        snap.expire_summary(&defaults),
        ExpireSummary {
            min_days: None,
            varies: false
        }
    );
    assert_eq!(
        snap.login_delay_summary(&defaults),
        LoginDelaySummary {
            min_secs: 900,
            varies: false
        }
    );
}

#[test]
fn import_dovecot_passwd() {
    let tmp = temp();
    let d = Directory::open(tmp.path()).unwrap();
    d.add_domain("example.test").unwrap();
    d.add_user("existing@example.test", HASH256).unwrap();
    // Computed with the argon2 crate (m=64,t=1,p=1, password "pw").
    let argon = "$argon2id$v=19$m=64,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$Hgsbc6FDwl/qbUWxDrr+ZjetYYKE+7fDe5btmNdDfm0";
    let input = format!(
        "# Dovecot users\n\
         \n\
         alice@example.test:{HASH}:1000:1000::/home/alice::\n\
         Bob@New.Test:{HASH256}\n\
         existing@example.test:{HASH}\n\
         carol@example.test:{{ARGON2ID}}{argon}\n\
         dave@example.test:{{PLAIN}}secret\n\
         erin@example.test:{{CRAM-MD5}}abcdef0123\n\
         frank@example.test:$1$salt$qJH7.N4xYta3aEG/dfqo/0\n\
         nodomain:{HASH}\n\
         broken line without colon\n\
         ../evil@example.test:{HASH}\n\
         gina@example.test:\n\
         alice@example.test:{HASH256}\n\
         hank@example.test:$6$saltsalt$tooshort\r\n"
    );
    let mut bytes = input.into_bytes();
    bytes.extend_from_slice(b"ivan@example.test:\xff\xfe\n");
    let report = d
        .import_dovecot_passwd(Cursor::new(bytes), ImportOptions::default())
        .unwrap();

    assert_eq!(report.added, 3, "{report:?}"); // alice, bob, carol
    assert_eq!(report.updated, 1, "{report:?}"); // existing
    assert_eq!(report.domains_created, ["new.test"]);
    let skipped_lines: Vec<usize> = report.skipped.iter().map(|(l, _)| *l).collect();
    assert_eq!(
        skipped_lines,
        [7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        "{report:?}"
    );
    let reason = |line: usize| {
        report
            .skipped
            .iter()
            .find(|(l, _)| *l == line)
            .map(|(_, r)| r.as_str())
            .unwrap_or("")
    };
    assert!(reason(7).contains("{PLAIN}"), "{}", reason(7));
    assert!(reason(8).contains("{CRAM-MD5}"), "{}", reason(8));
    assert!(reason(9).contains("not a recognised hash"), "{}", reason(9));
    assert!(reason(10).contains("no @domain"), "{}", reason(10));
    assert!(reason(11).contains("no ':'"), "{}", reason(11));
    assert!(reason(12).contains(".."), "{}", reason(12));
    assert!(reason(13).contains("empty password"), "{}", reason(13));
    assert!(reason(14).contains("line 3"), "{}", reason(14));
    assert!(reason(15).contains("86 characters"), "{}", reason(15));
    assert!(reason(16).contains("UTF-8"), "{}", reason(16));

    let snap = d.snapshot();
    assert_eq!(
        snap.authenticate("alice@example.test", PASSWORD),
        AuthOutcome::Ok(UserRef {
            address: "alice@example.test".into()
        })
    );
    assert!(matches!(
        snap.authenticate("bob@new.test", PASSWORD),
        AuthOutcome::Ok(_)
    ));
    assert_eq!(
        snap.user("existing@example.test").unwrap().password_hash,
        HASH
    );
    assert!(matches!(
        snap.authenticate("carol@example.test", b"pw"),
        AuthOutcome::Ok(_)
    ));
    assert!(snap.user("dave@example.test").is_none());
    assert_eq!(snap.users().count(), 4);

    // Without creating domains or updating users.
    let report = d
        .import_dovecot_passwd(
            Cursor::new(format!(
                "x@unknown.test:{HASH}\nalice@example.test:{HASH256}\nnew@example.test:{HASH}\n"
            )),
            ImportOptions {
                create_missing_domains: false,
                update_existing: false,
            },
        )
        .unwrap();
    assert_eq!((report.added, report.updated), (1, 0), "{report:?}");
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    assert!(report.skipped[0].1.contains("does not exist"));
    assert!(report.skipped[1].1.contains("already exists"));
    assert!(d.snapshot().domain("unknown.test").is_none());
    assert_eq!(
        d.snapshot()
            .user("alice@example.test")
            .unwrap()
            .password_hash,
        HASH
    );

    // From a file path.
    let file = tmp.path().join("passwd");
    fs::write(&file, format!("zed@example.test:{HASH}\n")).unwrap();
    let report = d
        .import_dovecot_passwd_file(&file, ImportOptions::default())
        .unwrap();
    assert_eq!(report.added, 1);
    assert!(matches!(
        d.import_dovecot_passwd_file(&tmp.path().join("missing"), ImportOptions::default()),
        Err(Error::Io { .. })
    ));
}

#[test]
fn directory_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Directory>();
    assert_send_sync::<Arc<DirectoryData>>();
}

#[test]
fn admins_are_stored_hashed_and_authenticated_like_users() {
    let tmp = temp();
    let d = with_users(tmp.path());
    assert_eq!(d.add_admin("Root", HASH).unwrap(), "root");
    assert!(matches!(
        d.add_admin("root", HASH),
        Err(Error::AdminExists(_))
    ));
    assert!(matches!(
        d.add_admin("alice@example.test", HASH),
        Err(Error::InvalidAdminName { .. })
    ));
    assert!(matches!(
        d.add_admin("x", "plain"),
        Err(Error::UnsupportedHash { .. })
    ));
    // A fresh handle reads the file: the admin survived, with its hash.
    let again = Directory::open(tmp.path()).unwrap();
    let snap = again.snapshot();
    assert_eq!(snap.admins().count(), 1);
    assert_eq!(snap.admin("ROOT").unwrap().password_hash, HASH);
    assert_eq!(
        snap.authenticate_admin("root", PASSWORD),
        AdminAuthOutcome::Ok("root".into())
    );
    assert_eq!(
        snap.authenticate_admin("root", b"wrong"),
        AdminAuthOutcome::Failed
    );
    assert_eq!(
        snap.authenticate_admin("nobody", PASSWORD),
        AdminAuthOutcome::Failed
    );
    // Admins are not users, and users are not admins.
    assert_eq!(snap.authenticate("root", PASSWORD), AuthOutcome::Failed);
    assert_eq!(
        snap.authenticate_admin("alice@example.test", PASSWORD),
        AdminAuthOutcome::Failed
    );
    let text = fs::read_to_string(again.path()).unwrap();
    assert!(text.contains("[[admin]]"), "{text}");
    assert!(!format!("{:?}", snap.admin("root").unwrap()).contains("SHA512"));
    again.set_admin_password("root", HASH256).unwrap();
    assert_eq!(
        again.snapshot().admin("root").unwrap().password_hash,
        HASH256
    );
    again.remove_admin("root").unwrap();
    assert!(matches!(
        again.remove_admin("root"),
        Err(Error::AdminNotFound(_))
    ));
    assert_eq!(again.snapshot().admins().count(), 0);
}

#[test]
fn forwarding_and_vacation_survive_the_file() {
    let tmp = temp();
    let d = with_users(tmp.path());
    d.set_user_forward(
        "alice@example.test",
        &[
            "Far@Elsewhere.test".to_string(),
            "far@elsewhere.test".to_string(),
        ],
        false,
    )
    .unwrap();
    d.set_user_vacation(
        "bob@example.test",
        Some(Vacation {
            subject: Some("Away".into()),
            body: "Back on\nMonday — à lundi\n".into(),
            until: Some("2027-01-02".into()),
        }),
    )
    .unwrap();
    let again = Directory::open(tmp.path()).unwrap().snapshot();
    let alice = again.user("alice@example.test").unwrap();
    assert_eq!(alice.forward, ["far@elsewhere.test"], "normalised, once");
    assert!(!alice.forward_keep_copy);
    let bob = again.user("bob@example.test").unwrap();
    assert!(bob.forward.is_empty() && bob.forward_keep_copy);
    let v = bob.vacation.as_ref().unwrap();
    assert_eq!(v.body, "Back on\nMonday — à lundi\n");
    assert_eq!(v.until.as_deref(), Some("2027-01-02"));
    d.set_user_vacation("bob@example.test", None).unwrap();
    d.set_user_forward("alice@example.test", &[], true).unwrap();
    let text = fs::read_to_string(tmp.path().join("directory.toml")).unwrap();
    assert!(
        !text.contains("forward") && !text.contains("vacation"),
        "{text}"
    );
    // A bad target in a hand-edited file is a parse error naming the user.
    let bad = text.replace(
        "address = \"alice@example.test\"",
        "address = \"alice@example.test\"\nforward = [\"not an address\"]",
    );
    fs::write(tmp.path().join("directory.toml"), bad).unwrap();
    let e = Directory::open(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("alice@example.test") && e.contains("forward"),
        "{e}"
    );
}

fn add_alias(
    d: &Directory,
    address: &str,
    targets: &[&str],
    send_as: Option<bool>,
) -> Result<Alias> {
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    d.add_alias(
        &AliasChange {
            address,
            targets: &targets,
            send_as,
            max_targets: 3,
        },
        |_, _| Ok(()),
    )
}

#[test]
fn aliases_and_domain_aliases_survive_the_file_and_guard_the_namespace() {
    let tmp = temp();
    let d = with_users(tmp.path());
    add_alias(
        &d,
        "Sales@Example.TEST",
        &["alice@example.test", "Friend@Remote.test"],
        None,
    )
    .unwrap();
    add_alias(
        &d,
        "sales@example.test",
        &["bob@example.test", "alice@example.test"],
        Some(false),
    )
    .unwrap();
    add_alias(&d, "@example.test", &["alice@example.test"], None).unwrap();
    d.add_domain_alias("Example.ORG", "example.test").unwrap();
    // Merged, canonical, deduplicated, limit enforced.
    let e = add_alias(&d, "sales@example.test", &["x@remote.test"], None).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooManyTargets {
                count: 4,
                max: 3,
                ..
            }
        ),
        "{e}"
    );
    // Reloaded from the file by another handle.
    let again = Directory::open(tmp.path()).unwrap().snapshot();
    let sales = again.alias("SALES@example.test").unwrap();
    assert_eq!(
        sales.targets,
        [
            "alice@example.test",
            "friend@remote.test",
            "bob@example.test"
        ]
    );
    assert!(!sales.send_as);
    assert!(again.catch_all("example.test").unwrap().send_as);
    assert_eq!(again.domain_alias("example.org"), Some("example.test"));
    assert!(again.is_local_domain("EXAMPLE.org") && !again.is_local_domain("remote.test"));
    let text = fs::read_to_string(d.path()).unwrap();
    assert!(
        text.contains("[[alias]]") && text.contains("[[domain_alias]]"),
        "{text}"
    );
    // One namespace with users; alias domains are not domains.
    assert!(matches!(
        add_alias(&d, "alice@example.test", &["bob@example.test"], None),
        Err(Error::AddressIsUser(_))
    ));
    assert!(matches!(
        d.add_user("sales@example.test", HASH),
        Err(Error::AddressIsAlias(_))
    ));
    assert!(matches!(
        d.add_domain("example.org"),
        Err(Error::DomainIsAlias(_))
    ));
    assert!(matches!(
        add_alias(&d, "x@example.org", &["bob@example.test"], None),
        Err(Error::InvalidAlias { .. })
    ));
    assert!(d.add_domain_alias("example.net", "nowhere.test").is_err());
    assert!(d.add_domain_alias("example.test", "example.test").is_err());
    // A domain with aliases is not removed underneath them.
    d.remove_user("alice@example.test").unwrap();
    d.remove_user("bob@example.test").unwrap();
    assert!(matches!(
        d.remove_domain("example.test"),
        Err(Error::DomainHasAliases { count: 3, .. })
    ));
    // Removing targets, then the alias with its last one.
    let left = d
        .remove_alias("sales@example.test", Some("bob@example.test"))
        .unwrap()
        .unwrap();
    assert_eq!(left.targets.len(), 2);
    assert!(matches!(
        d.remove_alias("sales@example.test", Some("bob@example.test")),
        Err(Error::AliasTargetNotFound { .. })
    ));
    d.remove_alias("sales@example.test", None).unwrap();
    assert!(matches!(
        d.remove_alias("sales@example.test", None),
        Err(Error::AliasNotFound(_))
    ));
    d.remove_alias("@example.test", Some("alice@example.test"))
        .unwrap();
    d.remove_domain_alias("example.org").unwrap();
    d.remove_domain("example.test").unwrap();
    // Hand-written files are checked like the rest.
    for bad in [
        "[[domain]]\nname = \"a.test\"\n[[alias]]\naddress = \"x@b.test\"\ntargets = [\"y@a.test\"]\n",
        "[[domain]]\nname = \"a.test\"\n[[alias]]\naddress = \"x@a.test\"\ntargets = []\n",
        "[[domain]]\nname = \"a.test\"\n[[alias]]\naddress = \"x@a.test\"\ntargets = [\"y%z@a.test\"]\n",
        "[[domain]]\nname = \"a.test\"\n[[domain_alias]]\nname = \"a.test\"\ntarget = \"a.test\"\n",
        "[[domain]]\nname = \"a.test\"\n[[domain_alias]]\nname = \"b.test\"\ntarget = \"c.test\"\n",
    ] {
        let t = temp();
        fs::write(t.path().join(DIRECTORY_FILE), bad).unwrap();
        assert!(Directory::open(t.path()).is_err(), "{bad}");
    }
}

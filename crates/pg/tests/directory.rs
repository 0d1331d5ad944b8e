//! The directory in PostgreSQL (`PgDirectory` under
//! `postoffice_directory::Directory::open_shared`), against a private
//! server: writers on several "nodes" never lose each other's changes, and
//! every node sees a change within seconds.

use std::sync::Arc;
use std::time::Duration;

use postoffice_directory::{Directory, hash_password};
use postoffice_pg::{PgDirectory, PgOptions, migrate};
use postoffice_testkit::{Postgres, wait_for};

fn node(opts: &PgOptions, data: &std::path::Path) -> Directory {
    let doc = PgDirectory::connect(opts).expect("connect the directory");
    Directory::open_shared(data, Arc::new(doc)).expect("open the shared directory")
}

#[test]
fn concurrent_writers_on_two_nodes_lose_nothing_and_both_see_everything() {
    let pg = Postgres::start();
    let opts = PgOptions::new(pg.url.clone());
    migrate(&opts).expect("migrate");
    let tmp = tempfile::tempdir().unwrap();
    let a = Arc::new(node(&opts, tmp.path()));
    let b = Arc::new(node(&opts, tmp.path()));
    assert_eq!(a.snapshot().users().count(), 0);
    a.add_domain("example.test").unwrap();
    // One hash for all (hashing 80 passwords would dominate the test).
    let hash = hash_password(b"pw").unwrap();
    let writers: Vec<_> = [(Arc::clone(&a), "a"), (Arc::clone(&b), "b")]
        .into_iter()
        .map(|(dir, name)| {
            let hash = hash.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    dir.add_user(&format!("{name}{i}@example.test"), &hash)
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for dir in [&a, &b] {
        wait_for(Duration::from_secs(10), "every user on every node", || {
            (dir.snapshot().users().count() == 80).then_some(())
        });
    }
    // A third node opened now reads the same.
    let c = node(&opts, tmp.path());
    assert_eq!(c.snapshot().users().count(), 80);
    // A removal on one node reaches the others.
    c.remove_user("a0@example.test").unwrap();
    wait_for(Duration::from_secs(10), "the removal on node a", || {
        a.snapshot().user("a0@example.test").is_none().then_some(())
    });
}

#[test]
fn a_database_without_the_schema_is_refused_naming_the_command() {
    let pg = Postgres::start();
    let err = PgDirectory::connect(&PgOptions::new(pg.url.clone())).expect_err("no schema yet");
    assert!(err.to_string().contains("postoffice db migrate"), "{err}");
}

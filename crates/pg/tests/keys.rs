//! The node secrets in PostgreSQL (`PgKeys`), against a private server:
//! two nodes making the same key at once end up with one key.

use std::sync::{Arc, Barrier};

use postoffice_pg::{PgKeys, PgOptions, migrate};
use postoffice_testkit::Postgres;

#[test]
fn two_nodes_racing_to_create_a_key_get_the_same_one() {
    let pg = Postgres::start();
    let opts = PgOptions::new(pg.url.clone());
    migrate(&opts).expect("migrate");
    for round in 0..20 {
        let name = format!("srs{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [b"node a".to_vec(), b"node b".to_vec()]
            .into_iter()
            .map(|value| {
                let (opts, name, barrier) = (opts.clone(), name.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let keys = PgKeys::new(&opts);
                    // Connect first, so both inserts go out together.
                    assert_eq!(keys.get(&name).unwrap(), None);
                    barrier.wait();
                    keys.create_if_absent(&name, &value).unwrap()
                })
            })
            .collect();
        let got: Vec<Vec<u8>> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(got[0], got[1], "round {round}: both nodes use one key");
        assert!(got[0] == b"node a" || got[0] == b"node b");
        let third = PgKeys::new(&opts);
        assert_eq!(third.get(&name).unwrap().as_ref(), Some(&got[0]));
        assert_eq!(
            third.create_if_absent(&name, b"later").unwrap(),
            got[0],
            "an existing key is never replaced"
        );
    }
    let keys = PgKeys::new(&opts);
    keys.create_if_absent("dkim/b.test", b"b").unwrap();
    keys.create_if_absent("dkim/a.test", b"a").unwrap();
    assert_eq!(keys.list("dkim/").unwrap(), ["dkim/a.test", "dkim/b.test"]);
}

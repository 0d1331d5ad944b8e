//! The shared queue against a real, private PostgreSQL (Debian package
//! `postgresql`; these tests fail without it): chunked bodies, claims by
//! three nodes, lapsed claims taken over, held entries, and three
//! schedulers draining one queue into a counting SMTP sink.
//!
//! The server is [`postoffice_testkit::Postgres`]; the tables are made by
//! [`postoffice_pg::migrate`], as `postoffice db migrate` makes them.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postoffice_pg::PgOptions;
use postoffice_testkit::{Postgres, poll_until};
use tokio_postgres::types::Type;

use crate::backend::SpoolBackend;
use crate::pg_spool::{CHUNK, PgPool, PgSpool};
use crate::{DeliveryConfig, LocalMail, Queue, QueueError, RcptState, unix_now};

// ---------------------------------------------------- a private server

/// A private PostgreSQL with the schema migrated.
struct TestPg {
    pg: Postgres,
}

impl TestPg {
    fn start() -> TestPg {
        let pg = Postgres::start();
        postoffice_pg::migrate(&PgOptions::new(pg.url.clone())).expect("migrate");
        TestPg { pg }
    }

    /// A pool of at most `size` connections on the database, built as
    /// the server builds it.
    fn pool(&self, size: u32) -> PgPool {
        let mut opts = PgOptions::new(self.pg.url.clone());
        opts.pool_size = size;
        postoffice_pg::pool(&opts).expect("pool")
    }
}

// ---------------------------------------------------------------- helpers

fn cfg() -> postoffice_config::Queue {
    postoffice_config::Queue::default()
}

fn node(pool: &PgPool, name: &str, lease: Duration) -> Queue {
    let scratch = tempfile::tempdir().unwrap().keep();
    Queue::open_pg(
        PgSpool::new(pool.clone(), name, lease).with_scratch_dir(&scratch),
        &cfg(),
    )
    .unwrap()
}

/// `len` octets of a deterministic, non-repeating-per-chunk pattern with
/// CRLF line ends and some 8-bit octets, generated as it is read.
struct Pattern {
    pos: u64,
    len: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let p = self.pos + i as u64;
            *b = match p % 78 {
                76 => b'\r',
                77 => b'\n',
                k => {
                    (b'!' + ((p / 78 + k) % 90) as u8)
                        | if p.is_multiple_of(4099) { 0x80 } else { 0 }
                }
            };
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Read until `buf` is full or the input ends.
fn fill_buf(r: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

fn small(i: usize) -> Vec<u8> {
    format!("From: a@src.test\r\nMessage-ID: <m{i}@src.test>\r\nSubject: {i}\r\n\r\nbody {i}\r\n")
        .into_bytes()
}

fn rcpt(s: &str) -> Vec<String> {
    vec![s.to_string()]
}

// ------------------------------------------------------------------ tests

#[test]
fn a_25_mb_message_round_trips_byte_identical_in_chunks() {
    let pg = TestPg::start();
    let pool = pg.pool(2);
    let q = node(&pool, "a", Duration::from_secs(60));
    const LEN: u64 = 25 * 1024 * 1024 + 123;
    let id = q
        .enqueue(
            "a@src.test",
            &rcpt("b@dest.test"),
            &mut Pattern { pos: 0, len: LEN },
        )
        .unwrap();
    let env = q.spool().read_env(&id).unwrap().unwrap();
    assert_eq!(env.size, LEN);
    assert_eq!(env.eight_bit, Some(true));
    // Stored in chunks of at most CHUNK octets.
    let row = pool
        .get()
        .unwrap()
        .query_typed_one(
            "SELECT count(*), max(length(chunk)), sum(length(chunk))::int8 FROM queue_bodies WHERE id = $1",
            &[(&id.as_str(), Type::TEXT)],
        )
        .unwrap();
    let (n, max, sum): (i64, i32, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(n as u64, LEN.div_ceil(CHUNK as u64));
    assert_eq!(max as usize, CHUNK);
    assert_eq!(sum as u64, LEN);
    // Read back as the scheduler does: the same octets, from a scratch
    // file (not memory).
    let content = q.spool().open_message(&id).unwrap();
    assert_eq!(content.len(), LEN);
    assert!(content.as_slice().is_none(), "spilled to a file");
    let mut got = content.reader_at(0);
    let mut want = Pattern { pos: 0, len: LEN };
    let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
    let mut total = 0u64;
    loop {
        let n = fill_buf(&mut got, &mut a);
        let m = fill_buf(&mut want, &mut b);
        assert_eq!(n, m, "length differs at {total}");
        assert!(a[..n] == b[..m], "content differs near {total}");
        total += n as u64;
        if n == 0 {
            break;
        }
    }
    assert_eq!(total, LEN);
    // The headers for `queue show`, and removal takes the chunks along.
    assert!(!q.show(&id).unwrap().headers.is_empty());
    // The head only: a prefix, across a chunk boundary.
    let head = q.spool().read_head(&id, CHUNK + 10).unwrap();
    let mut want = vec![0u8; CHUNK + 10];
    fill_buf(&mut Pattern { pos: 0, len: LEN }, &mut want);
    assert!(head == want, "the head is the message's prefix");
    q.delete(&id).unwrap();
    let row = pool
        .get()
        .unwrap()
        .query_typed_one("SELECT count(*) FROM queue_bodies", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    // An empty message is fine too.
    let id = q.enqueue("", &rcpt("b@dest.test"), &mut &b""[..]).unwrap();
    assert_eq!(q.spool().read_head(&id, 100).unwrap(), b"");
    assert!(matches!(
        q.spool().read_head("NOPE", 100),
        Err(QueueError::NotFound(_))
    ));
}

#[test]
fn the_queue_commands_work_on_postgres() {
    let pg = TestPg::start();
    let pool = pg.pool(2);
    let q = node(&pool, "a", Duration::from_secs(60));
    let msg = b"From: a@src.test\r\nSubject: hi\r\n\r\nbody\r\n";
    let id = q
        .enqueue(
            "a@src.test",
            &[
                "b@dest.test".into(),
                "B@dest.test".into(),
                "c@x.test".into(),
            ],
            &mut &msg[..],
        )
        .unwrap();
    let list = q.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].size, msg.len() as u64);
    assert_eq!(list[0].rcpts.len(), 2);
    assert_eq!(
        q.show(&id).unwrap().headers,
        "From: a@src.test\r\nSubject: hi\r\n"
    );
    // Another node (the CLI, say) sees the same entry.
    let other = node(&pool, "cli", Duration::from_secs(60));
    // (The age is counted at each listing, so it may have moved a second.)
    let aged_zero = |mut l: Vec<crate::EntrySummary>| {
        l.iter_mut().for_each(|e| e.age_secs = 0);
        l
    };
    assert_eq!(aged_zero(other.list().unwrap()), aged_zero(list));
    assert!(matches!(other.retry("NOPE"), Err(QueueError::NotFound(_))));
    other.delete(&id).unwrap();
    assert!(matches!(q.delete(&id), Err(QueueError::NotFound(_))));
    assert!(q.list().unwrap().is_empty());
}

#[test]
fn three_nodes_claim_each_due_entry_exactly_once() {
    let pg = TestPg::start();
    let pool = pg.pool(8);
    let q = node(&pool, "writer", Duration::from_secs(60));
    let mut all = HashSet::new();
    for i in 0..300 {
        all.insert(
            q.enqueue("a@src.test", &rcpt("b@dest.test"), &mut &small(i)[..])
                .unwrap()
                .to_string(),
        );
    }
    let now = unix_now();
    let claimed: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let threads: Vec<_> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|name| {
            let spool = PgSpool::new(pool.clone(), name, Duration::from_secs(60));
            let claimed = Arc::clone(&claimed);
            std::thread::spawn(move || {
                let mut empty = 0;
                while empty < 3 {
                    let due = spool.claim_due(now, 7, 0).unwrap();
                    if due.ids.is_empty() {
                        empty += 1;
                    }
                    let mut c = claimed.lock().unwrap();
                    c.extend(due.ids.into_iter().map(|id| (name.to_string(), id)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let claimed = claimed.lock().unwrap();
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (node, id) in claimed.iter() {
        assert!(seen.insert(id, node).is_none(), "{id} claimed twice");
    }
    assert_eq!(seen.len(), 300);
    assert!(seen.keys().all(|id| all.contains(*id)));
    let per_node: HashSet<&str> = seen.values().copied().collect();
    assert!(per_node.len() >= 2, "the work was shared: {per_node:?}");
    // While the claims live, nobody gets anything more.
    let late = PgSpool::new(pool.clone(), "n4", Duration::from_secs(60));
    assert!(late.claim_due(now, 1000, 0).unwrap().ids.is_empty());
}

#[test]
fn a_lapsed_claim_is_taken_over_and_the_old_holder_is_refused() {
    let pg = TestPg::start();
    let pool = pg.pool(4);
    let q = node(&pool, "writer", Duration::from_secs(60));
    let id = q
        .enqueue("a@src.test", &rcpt("b@dest.test"), &mut &small(1)[..])
        .unwrap()
        .to_string();
    let a = node(&pool, "a", Duration::from_secs(2));
    let b = node(&pool, "b", Duration::from_secs(2));
    let (a, b) = (a.spool(), b.spool());
    assert_eq!(
        a.claim_due(unix_now(), 10, 0).unwrap().ids,
        vec![id.clone()]
    );
    // Renewed, the claim outlives its lease: b gets nothing meanwhile.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert!(a.renew(std::slice::from_ref(&id)).unwrap().is_empty());
        assert!(b.claim_due(unix_now(), 10, 0).unwrap().ids.is_empty());
        std::thread::sleep(Duration::from_millis(300));
    }
    // a's updates go through while it holds the claim.
    a.update_claimed(&id, |e| e.rcpts[0].attempts = 1)
        .unwrap()
        .unwrap();
    // a stops renewing (it died): within a few leases b takes it over.
    let mut taken = false;
    assert!(poll_until(Duration::from_secs(10), || {
        taken = b.claim_due(unix_now(), 10, 0).unwrap().ids == vec![id.clone()];
        taken
    }));
    // a's late writes are refused; renewing tells it the claim is lost.
    assert!(matches!(
        a.update_claimed(&id, |e| e.rcpts[0].attempts = 9),
        Err(QueueError::ClaimLost(_))
    ));
    assert!(matches!(
        a.update_or_finish(&id, |e| e.rcpts[0].state = RcptState::Delivered),
        Err(QueueError::ClaimLost(_))
    ));
    assert!(matches!(
        a.remove_if_complete(&id),
        Err(QueueError::ClaimLost(_))
    ));
    assert_eq!(
        a.renew(std::slice::from_ref(&id)).unwrap(),
        vec![id.clone()]
    );
    // Releasing a claim that is not ours changes nothing.
    a.release_claim(&id, 0).unwrap();
    assert!(a.claim_due(unix_now(), 10, 0).unwrap().ids.is_empty());
    // b holds it: its results count, and the finished entry goes.
    let env = b.read_env(&id).unwrap().unwrap();
    assert_eq!(env.rcpts[0].attempts, 1, "a's refused write left no trace");
    assert_eq!(
        b.update_or_finish(&id, |e| e.rcpts[0].state = RcptState::Delivered)
            .unwrap(),
        Some(true)
    );
    assert!(b.read_env(&id).unwrap().is_none());
    assert_eq!(
        b.renew(std::slice::from_ref(&id)).unwrap(),
        vec![id.clone()]
    );
}

#[test]
fn held_entries_are_never_claimed_and_retry_flush_release_make_entries_due() {
    let pg = TestPg::start();
    let pool = pg.pool(4);
    let q = node(&pool, "a", Duration::from_secs(60));
    let other = node(&pool, "b", Duration::from_secs(60));
    let far = unix_now() + 10 * 365 * 86_400;
    let held = q
        .enqueue_held(
            "a@src.test",
            &rcpt("b@dest.test"),
            &mut &small(1)[..],
            "spam score 15.00",
        )
        .unwrap()
        .to_string();
    assert!(q.spool().claim_due(far, 100, 0).unwrap().ids.is_empty());
    q.flush().unwrap();
    let due = q.spool().claim_due(far, 100, 0).unwrap();
    assert!(due.ids.is_empty(), "flush does not send a held entry");
    assert_eq!((due.sizes.entries, due.sizes.held), (1, 1));
    // Released (by another node: the CLI): due now.
    other.release(&held).unwrap();
    assert_eq!(
        q.spool().claim_due(unix_now(), 100, 0).unwrap().ids,
        vec![held.clone()]
    );
    // Released without a hold: anyone may claim it again at once.
    q.spool().release_claim(&held, 0).unwrap();
    assert_eq!(
        other.spool().claim_due(unix_now(), 100, 0).unwrap().ids,
        vec![held.clone()]
    );
    // Released with a hold (after an error): nobody claims it meanwhile.
    other.spool().release_claim(&held, 3600).unwrap();
    assert!(
        q.spool()
            .claim_due(unix_now(), 100, 0)
            .unwrap()
            .ids
            .is_empty()
    );
    q.delete(&held).unwrap();

    // Retry and flush make a deferred entry due now.
    let id = q
        .enqueue("a@src.test", &rcpt("b@dest.test"), &mut &small(2)[..])
        .unwrap()
        .to_string();
    q.spool()
        .update(&id, |e| e.rcpts[0].next_attempt = far)
        .unwrap();
    let due = q.spool().claim_due(unix_now(), 100, 0).unwrap();
    assert!(due.ids.is_empty());
    // Next: the delay warning (default delay_warning_secs), in the future.
    assert!(
        due.next.is_some_and(|t| t > unix_now() && t < far),
        "{:?}",
        due.next
    );
    other.retry(&id).unwrap();
    assert_eq!(
        q.spool().claim_due(unix_now(), 100, 0).unwrap().ids,
        vec![id.clone()]
    );
    q.spool().release_claim(&id, 0).unwrap();
    q.spool()
        .update(&id, |e| e.rcpts[0].next_attempt = far)
        .unwrap();
    assert_eq!(other.flush().unwrap(), 1);
    assert_eq!(
        q.spool().claim_due(unix_now(), 100, 0).unwrap().ids,
        vec![id.clone()]
    );
    // An administrator's update goes through whoever holds the claim;
    // the scheduler's only for the holder.
    other
        .spool()
        .update(&id, |e| e.delay_warned = true)
        .unwrap();
    assert!(matches!(
        other
            .spool()
            .update_claimed(&id, |e| e.delay_warned = false),
        Err(QueueError::ClaimLost(_))
    ));
}

// ------------------------------------------- three schedulers, one sink

/// An SMTP server on loopback that accepts everything and counts the
/// messages by Message-ID. `stall` makes it hold the reply to the first
/// message's data until the connection is closed.
struct Sink {
    port: u16,
    got: Arc<Mutex<Vec<String>>>,
    stalled: Arc<AtomicUsize>,
}

async fn sink(stall_first: bool) -> Sink {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let stalled = Arc::new(AtomicUsize::new(0));
    let (g, st) = (Arc::clone(&got), Arc::clone(&stalled));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (got, stalled) = (Arc::clone(&g), Arc::clone(&st));
            tokio::spawn(async move {
                let mut io = BufReader::new(tcp);
                let _ = io.get_mut().write_all(b"220 sink.test ESMTP\r\n").await;
                let mut in_data = false;
                let mut mid = String::new();
                loop {
                    let mut line = String::new();
                    match io.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let reply: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            if stall_first && stalled.fetch_add(1, Ordering::SeqCst) == 0 {
                                // Never answered: the client is "killed"
                                // while it waits.
                                let mut rest = String::new();
                                let _ = io.read_line(&mut rest).await;
                                return;
                            }
                            got.lock().unwrap().push(std::mem::take(&mut mid));
                            b"250 2.0.0 ok\r\n"
                        } else {
                            if let Some(v) = line.strip_prefix("Message-ID: ") {
                                mid = v.trim().to_string();
                            }
                            continue;
                        }
                    } else {
                        let upper = line.to_ascii_uppercase();
                        if upper.starts_with("EHLO") {
                            b"250-sink.test\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("DATA") {
                            in_data = true;
                            b"354 go on\r\n"
                        } else if upper.starts_with("QUIT") {
                            let _ = io.get_mut().write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        }
                    };
                    if io.get_mut().write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Sink { port, got, stalled }
}

struct NoLocal;

impl LocalMail for NoLocal {
    fn is_local_domain(&self, _: &str) -> bool {
        false
    }
    fn deliver(&self, _: &str, _: &[u8]) -> Result<(), postoffice_core::delivery::DeliveryError> {
        Ok(())
    }
}

fn delivery(port: u16) -> DeliveryConfig {
    DeliveryConfig {
        hostname: "mail.src.test".into(),
        queue: postoffice_config::Queue {
            relayhost: format!("127.0.0.1:{port}"),
            retry_schedule_secs: vec![1],
            connect_timeout_secs: 2,
            command_timeout_secs: 5,
            ..postoffice_config::Queue::default()
        },
        dns: postoffice_config::Dns::default(),
        local: Arc::new(NoLocal),
        signer: None,
        metrics: None,
    }
}

/// A scheduler on the runtime; stopped (gracefully) by the sender.
fn scheduler(
    rt: &tokio::runtime::Runtime,
    queue: Arc<Queue>,
    port: u16,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(crate::run(queue, delivery(port), async move {
        let _ = rx.await;
    }));
    (tx, task)
}

#[test]
fn three_schedulers_deliver_each_message_once() {
    let pg = TestPg::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(sink(false));
    let pool = pg.pool(12);
    let nodes: Vec<Arc<Queue>> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Arc::new(node(&pool, n, Duration::from_secs(30))))
        .collect();
    let running: Vec<_> = nodes
        .iter()
        .map(|q| scheduler(&rt, Arc::clone(q), sink.port))
        .collect();
    const N: usize = 90;
    // As submission does it (core's `blocking`: block_in_place on a
    // runtime worker), the sync client works.
    let q = Arc::clone(&nodes[0]);
    rt.block_on(rt.spawn(async move {
        tokio::task::block_in_place(|| {
            q.enqueue("a@src.test", &rcpt("first@dest.test"), &mut &small(N)[..])
        })
    }))
    .unwrap()
    .unwrap();
    for i in 0..N {
        // Through every node, as submission on each would.
        nodes[i % 3]
            .enqueue(
                "a@src.test",
                &rcpt(&format!("r{i}@dest.test")),
                &mut &small(i)[..],
            )
            .unwrap();
    }
    assert!(
        poll_until(Duration::from_secs(60), || nodes[0]
            .list()
            .unwrap()
            .is_empty()),
        "not drained: {} left",
        nodes[0].list().unwrap().len()
    );
    let got = sink.got.lock().unwrap().clone();
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), N + 1, "every message arrived");
    assert_eq!(got.len(), N + 1, "none twice");
    for (tx, task) in running {
        let _ = tx.send(());
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
            .unwrap()
            .unwrap();
    }
}

#[test]
fn a_node_killed_mid_delivery_leaves_its_entry_to_another_after_the_lease() {
    let pg = TestPg::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(sink(true));
    let pool = pg.pool(8);
    let lease = Duration::from_secs(2);
    let a = Arc::new(node(&pool, "a", lease));
    let id = a
        .enqueue("a@src.test", &rcpt("r@dest.test"), &mut &small(7)[..])
        .unwrap()
        .to_string();
    let (_stop_a, task_a) = scheduler(&rt, Arc::clone(&a), sink.port);
    // a sent the data and waits for the reply: "kill" it there (its task
    // is dropped mid-delivery, its claim stays in the table).
    assert!(poll_until(Duration::from_secs(20), || sink
        .stalled
        .load(Ordering::SeqCst)
        >= 1));
    task_a.abort();
    let _ = rt.block_on(task_a);
    let claimed_by: Option<String> = pool
        .get()
        .unwrap()
        .query_typed_one(
            "SELECT claimed_by FROM queue_entries WHERE id = $1",
            &[(&id, Type::TEXT)],
        )
        .unwrap()
        .get(0);
    assert!(claimed_by.is_some_and(|c| c.starts_with("a#")));
    let b = Arc::new(node(&pool, "b", lease));
    let started = Instant::now();
    let (stop_b, task_b) = scheduler(&rt, Arc::clone(&b), sink.port);
    assert!(
        poll_until(Duration::from_secs(30), || sink.got.lock().unwrap().len()
            == 1),
        "b delivered it"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before a's lease ran out"
    );
    assert!(poll_until(Duration::from_secs(10), || b
        .list()
        .unwrap()
        .is_empty()));
    let _ = stop_b.send(());
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task_b).await })
        .unwrap()
        .unwrap();
}

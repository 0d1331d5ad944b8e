//! Stable-toolchain fallback fuzzer: feeds random and mutated seed inputs to
//! the same target functions libFuzzer uses, for a fixed time per target.
//! No coverage feedback, but inputs that are new in length or that came
//! from a mutation chain are kept in a small in-memory corpus.
//!
//! Usage: fuzz-runner TARGET|all [SECONDS] [SEED]
//! Prints `TARGET execs=N corpus=M` per target. A panic in a target is
//! caught, the input is written to `fuzz/artifacts/TARGET/crash-<hash>` and
//! the runner exits with status 1 after the target's time is up.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::panic;
use std::time::{Duration, Instant};

use postoffice_fuzz::{TARGETS, Target};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Interesting fragments for protocol inputs.
const DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b" ",
    b"\0",
    b"\xff",
    b"=",
    b"USER ",
    b"PASS ",
    b"APOP ",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"STLS",
    b"CAPA",
    b"STAT",
    b"LIST",
    b"UIDL",
    b"RETR ",
    b"TOP ",
    b"DELE ",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"UTF8",
    b"EHLO x",
    b"HELO x",
    b"MAIL FROM:<",
    b"RCPT TO:<",
    b">",
    b"DATA",
    b"BDAT ",
    b" LAST",
    b"STARTTLS",
    b"VRFY ",
    b"EXPN ",
    b"SIZE=",
    b"BODY=8BITMIME",
    b"SMTPUTF8",
    b"@",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"-1",
    b"0",
    b"1",
    b"2",
    b"3",
    b"+OK ",
    b"-ERR ",
    b"[AUTH]",
    b"[IN-USE]",
    b"[SYS/TEMP]",
    b"\t",
    b",S=",
    b",W=",
    b":2,",
    b"../",
    b"%",
    b"\"",
    b"[",
    b"]",
    b"=\n",
    b"[pop3]",
    b"[smtp]",
    b"[auth]",
    b"[limits]",
    b"listen = [\"127.0.0.1:0\"]",
    b"max_recipients = ",
    b"hostname = \"",
    b"data_dir = \"",
    b"YWxpY2U=",
    b"AGFsaWNlAHNlY3JldA==",
    b"<a@b>",
    b"<>",
    b"\xc3\xa9",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        match rng.below(10) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 if !input.is_empty() => {
                let i = rng.below(input.len());
                let n = rng.below(input.len() - i).min(64) + 1;
                input.drain(i..(i + n).min(input.len()));
            }
            3 | 4 => {
                let i = rng.below(input.len() + 1);
                let d = DICT[rng.below(DICT.len())];
                input.splice(i..i, d.iter().copied());
            }
            5 if !input.is_empty() => {
                // Duplicate a slice.
                let i = rng.below(input.len());
                let n = rng.below(input.len() - i).min(128) + 1;
                let piece: Vec<u8> = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, piece);
            }
            6 if !corpus.is_empty() => {
                // Splice with another corpus entry.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let at = rng.below(input.len() + 1);
                    input.truncate(at);
                    input.extend_from_slice(&other[i..]);
                }
            }
            7 => {
                let i = rng.below(input.len() + 1);
                let n = rng.below(16) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            8 if !input.is_empty() => {
                // Interesting byte.
                let i = rng.below(input.len());
                input[i] = *[b'\r', b'\n', b'.', b' ', 0, 0xff, b'0', b'9', b':', b'@']
                    .get(rng.below(10))
                    .unwrap_or(&b'x');
            }
            _ => {
                // Repeat the whole thing (long lines, floods).
                if input.len() < 4096 {
                    let copy = input.clone();
                    input.extend_from_slice(&copy);
                }
            }
        }
    }
    input.truncate(64 * 1024);
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs one target; returns (executions, crashes).
fn run(target: &Target, secs: f64, seed: u64) -> (u64, u64) {
    let mut rng = Rng(seed ^ fnv(target.name.as_bytes()) | 1);
    let mut corpus: Vec<Vec<u8>> = target.seeds.iter().map(|s| s.to_vec()).collect();
    let mut lengths = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut execs = 0u64;
    let mut crashes = 0u64;
    // Seeds first, unmutated.
    for s in target.seeds {
        let run = target.run;
        if panic::catch_unwind(|| run(s)).is_err() {
            eprintln!(
                "{}: CRASH on a seed input {:?}",
                target.name,
                String::from_utf8_lossy(s)
            );
            crashes += 1;
        }
        execs += 1;
    }
    while Instant::now() < deadline {
        for _ in 0..64 {
            let mut input = match rng.below(8) {
                0 => (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
                _ => corpus[rng.below(corpus.len())].clone(),
            };
            mutate(&mut rng, &mut input, &corpus);
            let run = target.run;
            let result = panic::catch_unwind(|| run(&input));
            execs += 1;
            match result {
                Ok(()) => {
                    if corpus.len() < 4096 && (lengths.insert(input.len()) || rng.below(64) == 0) {
                        corpus.push(input);
                    }
                }
                Err(_) => {
                    crashes += 1;
                    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("artifacts")
                        .join(target.name);
                    let _ = std::fs::create_dir_all(&dir);
                    let path = dir.join(format!("crash-{:016x}", fnv(&input)));
                    let _ = std::fs::write(&path, &input);
                    eprintln!("{}: CRASH, input saved to {}", target.name, path.display());
                    if crashes >= 5 {
                        return (execs, crashes);
                    }
                }
            }
        }
    }
    (execs, crashes)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("all");
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let seed: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    // Replay mode: fuzz-runner TARGET --replay FILE...
    if args.get(2).map(String::as_str) == Some("--replay") {
        let t = TARGETS
            .iter()
            .find(|t| t.name == which)
            .unwrap_or_else(|| panic!("unknown target {which}"));
        for f in &args[3..] {
            let data = std::fs::read(f).expect("read input");
            (t.run)(&data);
            println!("{f}: ok");
        }
        return;
    }
    let selected: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| which == "all" || t.name == which)
        .collect();
    if selected.is_empty() {
        eprintln!(
            "unknown target {which}; targets: {}",
            TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(" ")
        );
        std::process::exit(2);
    }
    // Quiet panics (they are reported per target).
    panic::set_hook(Box::new(|info| {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "panic: {info}");
    }));
    println!("seed={seed}");
    let mut failed = false;
    for t in selected {
        let (execs, crashes) = run(t, secs, seed);
        println!("{} execs={execs} crashes={crashes}", t.name);
        failed |= crashes > 0;
    }
    if failed {
        std::process::exit(1);
    }
}

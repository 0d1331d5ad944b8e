//! `seed`: a deterministic mail corpus in Maildirs, for postoffice or
//! Dovecot, plus a Dovecot passwd-file for its users.
//!
//! The same options always produce byte-identical messages and file names,
//! so seeding once per layout gives both servers the same corpus.
//!
//! - Messages have CRLF line ends, realistic headers, a body of text lines
//!   (some starting with `.`, to exercise dot-stuffing) and a header
//!   `X-Bench-Body-SHA256` with the hash of the body, which
//!   `pop3 sessions --verify-hash` checks.
//! - Files go to `cur/` as `<secs>.M<n>P<n>Q<n>.bench,S=<size>,W=<size>:2,S`:
//!   both servers read the size from the name without opening the file, and
//!   the `S` (seen) flag keeps Dovecot from renaming files during runs.
//! - Size mix `mixed` (default): 72 % uniform 2–10 KB, 23 % uniform
//!   10–100 KB, 4.6 % log-uniform 100 KB–2 MB; mean ≈ 48 KB.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::conn::{HASH_HEADER, hex};
use crate::report::ResultLine;

/// Where mailboxes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `DIR/mail/<domain>/<local>/{cur,new,tmp}` (postoffice's data_dir).
    Postoffice,
    /// `DIR/<local>/Maildir/{cur,new,tmp}` (Dovecot with a static userdb,
    /// `home=DIR/%n`, `mail_location=maildir:~/Maildir`).
    Dovecot,
}

/// Message sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    /// The reference mix, mean ≈ 48 KB.
    Mixed,
    /// Uniform 1–4 KB (big maildrops, idle users: only the count matters).
    Small,
    /// Every message about this many octets.
    Fixed(u64),
}

impl std::str::FromStr for Sizes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mixed" => Ok(Sizes::Mixed),
            "small" => Ok(Sizes::Small),
            n => n
                .parse()
                .map(Sizes::Fixed)
                .map_err(|_| format!("expected mixed, small or a size in octets, not {n:?}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub dir: PathBuf,
    pub users: usize,
    pub first_user: usize,
    pub user_prefix: String,
    pub messages: usize,
    pub domain: String,
    pub seed: u64,
    pub layout: Layout,
    pub sizes: Sizes,
    pub passwd_file: Option<PathBuf>,
    pub password: String,
    pub owner: Option<(u32, u32)>,
    pub threads: usize,
}

/// Salt of the passwd-file hashes: fixed, so the file is reproducible too.
const SALT: &str = "postofficebench";
/// First delivery time of every mailbox (2023-11-14).
const BASE_SECS: u64 = 1_700_000_000;

/// A small, fast, deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(parts: &[u64]) -> Rng {
        let mut r = Rng(0x5EED_B0C5_u64);
        for p in parts {
            r.0 ^= p.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            r.next_u64();
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn size_for(sizes: Sizes, rng: &mut Rng) -> u64 {
    match sizes {
        Sizes::Fixed(n) => n,
        Sizes::Small => 1024 + rng.below(3 * 1024),
        Sizes::Mixed => {
            let u = rng.unit();
            if u < 0.72 {
                2 * 1024 + rng.below(8 * 1024)
            } else if u < 0.954 {
                10 * 1024 + rng.below(90 * 1024)
            } else {
                let (lo, hi) = ((100.0f64 * 1024.0).ln(), (2048.0f64 * 1024.0).ln());
                (lo + rng.unit() * (hi - lo)).exp() as u64
            }
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "mail",
    "server",
    "of",
    "and",
    "postoffice",
    "message",
    "to",
    "a",
    "in",
    "delivery",
    "is",
    "for",
    "maildrop",
    "that",
    "queue",
    "on",
    "with",
    "quarterly",
    "report",
    "as",
    "meeting",
    "by",
    "invoice",
    "this",
    "schedule",
    "from",
    "attached",
    "at",
    "please",
    "be",
    "review",
    "budget",
    "or",
    "project",
    "an",
    "update",
    "will",
    "team",
    "not",
    "customer",
    "have",
    "next",
    "are",
    "week",
    "we",
    "draft",
    "can",
    "status",
    "all",
    "thanks",
    "it",
    "regards",
    "your",
    "order",
    "has",
    "shipping",
    "was",
    "account",
    "which",
    "notice",
    "more",
    "policy",
    "one",
];

/// A pool of body lines (CRLF included) to draw from: fast to assemble,
/// varied enough to look like text, with the occasional leading '.'.
fn line_pool(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(&[seed, 0xB0D1]);
    (0..4096)
        .map(|i| {
            let mut l = Vec::with_capacity(80);
            if i % 13 == 0 {
                // Paragraph break.
                l.extend_from_slice(b"\r\n");
                return l;
            }
            if i % 47 == 0 {
                l.push(b'.');
            }
            let target = 40 + rng.below(37) as usize;
            while l.len() < target {
                if !l.is_empty() && l != b"." {
                    l.push(b' ');
                }
                l.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            }
            l.extend_from_slice(b"\r\n");
            l
        })
        .collect()
}

/// One message of about `target` octets. Returns the bytes.
fn message(
    rng: &mut Rng,
    pool: &[Vec<u8>],
    to: &str,
    user_n: usize,
    i: usize,
    secs: u64,
    target: u64,
) -> Vec<u8> {
    // Body first: its hash goes into the header.
    let header_estimate = 700u64;
    let body_target = target.saturating_sub(header_estimate).max(64) as usize;
    let mut body = Vec::with_capacity(body_target + 128);
    while body.len() < body_target {
        body.extend_from_slice(&pool[rng.below(pool.len() as u64) as usize]);
    }
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    let hash = hex(&Sha256::digest(&body));
    let sender = rng.below(500);
    let mut h = String::with_capacity(800);
    let _ = write!(
        h,
        "Return-Path: <sender{sender}@example.org>\r\n\
         Delivered-To: {to}\r\n\
         Received: from mx{mx}.example.org (mx{mx}.example.org [192.0.2.{ip}])\r\n\
         \tby bench.test with ESMTPS id {secs:x}{i:x}\r\n\
         \tfor <{to}>; {date}\r\n\
         Message-ID: <{secs}.{user_n}.{i}@example.org>\r\n\
         Date: {date}\r\n\
         From: Sender {sender} <sender{sender}@example.org>\r\n\
         To: <{to}>\r\n\
         Subject: Benchmark message {i} for user {user_n}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         {hdr} {hash}\r\n\
         \r\n",
        mx = rng.below(10),
        ip = 1 + rng.below(250),
        date = postoffice_common::date::rfc5322_unix(secs),
        hdr = std::str::from_utf8(HASH_HEADER).unwrap_or("X-Bench-Body-SHA256:"),
    );
    let mut msg = Vec::with_capacity(h.len() + body.len());
    msg.extend_from_slice(h.as_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The maildir (the directory holding cur/new/tmp) of `local`, and the
/// directories that must belong to `--owner` (top-down).
fn maildir_of(opts: &SeedOptions, local: &str) -> (PathBuf, Vec<PathBuf>) {
    match opts.layout {
        Layout::Postoffice => {
            let d = opts.dir.join("mail").join(&opts.domain).join(local);
            (d.clone(), vec![d])
        }
        Layout::Dovecot => {
            let home = opts.dir.join(local);
            let d = home.join("Maildir");
            (d.clone(), vec![home, d])
        }
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid} {}", path.display()))?;
    }
    Ok(())
}

/// The Dovecot passwd-file hash of `password` (SHA512-CRYPT, 5000 rounds,
/// fixed salt), as `openssl passwd -6 -salt postofficebench PASSWORD`
/// prints it.
pub fn sha512_crypt(password: &str) -> Result<String> {
    let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
        .map_err(|e| anyhow::anyhow!("sha-crypt params: {e:?}"))?;
    let b64 = sha_crypt::sha512_crypt_b64(password.as_bytes(), SALT.as_bytes(), &params)
        .map_err(|e| anyhow::anyhow!("sha-crypt: {e:?}"))?;
    Ok(format!("$6${SALT}${b64}"))
}

pub fn run(opts: &SeedOptions) -> Result<()> {
    if opts.users == 0 {
        bail!("--users must be at least 1");
    }
    let t0 = std::time::Instant::now();
    let locals: Vec<(usize, String)> = (opts.first_user..opts.first_user + opts.users)
        .map(|n| (n, format!("{}{n}", opts.user_prefix)))
        .collect();
    fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let mut cur_dirs = Vec::with_capacity(locals.len());
    for (_, local) in &locals {
        let (md, owned) = maildir_of(opts, local);
        for sub in ["cur", "new", "tmp"] {
            let d = md.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        if opts.owner.is_some() {
            for d in owned
                .iter()
                .cloned()
                .chain(["cur", "new", "tmp"].iter().map(|s| md.join(s)))
            {
                chown(&d, opts.owner)?;
            }
        }
        cur_dirs.push(md.join("cur"));
    }

    let pool = line_pool(opts.seed);
    let total_msgs = (opts.users * opts.messages) as u64;
    let written = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let largest = AtomicU64::new(0);
    let threads = opts.threads.max(1);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (pool, locals, cur_dirs) = (&pool, &locals, &cur_dirs);
                let (written, bytes, largest) = (&written, &bytes, &largest);
                s.spawn(move || -> Result<()> {
                    let mut j = t as u64;
                    while j < total_msgs {
                        let u = (j / opts.messages as u64) as usize;
                        let i = (j % opts.messages as u64) as usize;
                        let (n, local) = &locals[u];
                        let mut rng = Rng::new(&[opts.seed, *n as u64, i as u64]);
                        let target = size_for(opts.sizes, &mut rng);
                        let secs = BASE_SECS + i as u64 * 97 + rng.below(60);
                        let to = format!("{local}@{}", opts.domain);
                        let msg = message(&mut rng, pool, &to, *n, i, secs, target);
                        let size = msg.len() as u64;
                        let name = format!(
                            "{secs}.M{}P{n}Q{i}.bench,S={size},W={size}:2,S",
                            rng.below(1_000_000)
                        );
                        let path = cur_dirs[u].join(name);
                        let mut f = fs::File::create(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        f.write_all(&msg)
                            .with_context(|| format!("writing {}", path.display()))?;
                        drop(f);
                        chown(&path, opts.owner)?;
                        written.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(size, Ordering::Relaxed);
                        largest.fetch_max(size, Ordering::Relaxed);
                        j += threads as u64;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("seed thread panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }

    if let Some(pf) = &opts.passwd_file {
        let hash = sha512_crypt(&opts.password)?;
        let mut text = String::with_capacity(locals.len() * 140);
        for (_, local) in &locals {
            let _ = writeln!(text, "{local}@{}:{{SHA512-CRYPT}}{hash}", opts.domain);
        }
        fs::write(pf, text).with_context(|| format!("writing {}", pf.display()))?;
    }

    let n = written.load(Ordering::Relaxed);
    let b = bytes.load(Ordering::Relaxed);
    let mean = if n > 0 { b as f64 / n as f64 } else { 0.0 };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "seeded {} users x {} messages ({:?} layout) in {}: {n} messages, {:.1} MB, mean {:.1} KB, largest {:.1} KB, {:.1} s",
        opts.users,
        opts.messages,
        opts.layout,
        opts.dir.display(),
        b as f64 / 1e6,
        mean / 1e3,
        largest.load(Ordering::Relaxed) as f64 / 1e3,
        secs
    );
    let mut r = ResultLine::new("seed");
    r.kv("users", opts.users)
        .kv("messages", n)
        .kv("bytes", b)
        .f("mean_kb", mean / 1e3, 1)
        .kv("largest", largest.load(Ordering::Relaxed))
        .f("elapsed_s", secs, 2);
    r.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_hash_matches_openssl_format() {
        // `openssl passwd -6 -salt postofficebench benchpass`
        assert_eq!(
            sha512_crypt("benchpass").unwrap(),
            "$6$postofficebench$K5iP/KNQatkwTIjIo7FxTa91NGP7BdHRZ1YPrEbc6eGR10TuElPw.psEbNrcjgq2zM5ukzbmlfH2Pwydj0Qto0"
        );
    }

    #[test]
    fn mixed_sizes_average_about_48_kb() {
        let mut rng = Rng::new(&[42]);
        let n = 200_000;
        let total: u64 = (0..n).map(|_| size_for(Sizes::Mixed, &mut rng)).sum();
        let mean = total as f64 / f64::from(n);
        assert!((44_000.0..53_000.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn messages_are_deterministic_crlf_and_self_hashing() {
        let pool = line_pool(42);
        let mk = || {
            let mut rng = Rng::new(&[42, 1, 2]);
            message(&mut rng, &pool, "u1@x", 1, 2, BASE_SECS, 5000)
        };
        let m = mk();
        assert_eq!(m, mk());
        assert!(m.len() > 4000 && m.len() < 6000, "{}", m.len());
        // Every LF is part of a CRLF, and the message ends with one.
        assert!(m.ends_with(b"\r\n"));
        for (i, &b) in m.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(m[i - 1], b'\r');
            }
        }
        let split = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let text = String::from_utf8_lossy(&m[..split]);
        let want = hex(&Sha256::digest(&m[split..]));
        assert!(text.contains(&format!("X-Bench-Body-SHA256: {want}")));
    }
}

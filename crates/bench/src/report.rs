//! Percentiles, error counts and the machine-readable `RESULT` line.
//!
//! Every mode prints a human summary and then exactly one line
//! `RESULT mode=<mode> key=value ...` that scripts parse (`bench/compare.sh`
//! takes values out of it with `sed`). Keys never contain spaces; values
//! never contain spaces.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

/// Percentiles of a set of durations (nearest-rank on the sorted values).
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub min: Duration,
}

impl Summary {
    pub fn of(mut v: Vec<Duration>) -> Summary {
        v.sort_unstable();
        let pct = |p: f64| -> Duration {
            if v.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Summary {
            count: v.len(),
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: v.last().copied().unwrap_or_default(),
            min: v.first().copied().unwrap_or_default(),
        }
    }
}

/// Milliseconds with three decimals, as printed everywhere.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Why a session failed. The names are the keys in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrKind {
    /// TCP connect failed.
    Connect,
    /// The TLS handshake failed (certificate not verified, no common
    /// parameters, connection closed during the handshake).
    Tls,
    /// The greeting was not `+OK`.
    Greeting,
    /// USER/PASS refused (wrong password, unknown user, throttled).
    Auth,
    /// `-ERR [IN-USE]`: the maildrop is locked by another session.
    InUse,
    /// Any other `-ERR`, or a reply we could not parse.
    Protocol,
    /// SMTP: a 4xx reply (try again later) that was not retried, or
    /// failed again on every retry.
    TempFail,
    /// What we received disagrees with what the server announced: RETR
    /// octets vs. LIST, LIST/UIDL count vs. STAT, or the body hash.
    Verify,
    /// Read/write error or the server closed the connection.
    Io,
    /// The session took longer than `--timeout`.
    Timeout,
}

impl ErrKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrKind::Connect => "connect",
            ErrKind::Tls => "tls",
            ErrKind::Greeting => "greeting",
            ErrKind::Auth => "auth",
            ErrKind::InUse => "in_use",
            ErrKind::Protocol => "protocol",
            ErrKind::TempFail => "tempfail",
            ErrKind::Verify => "verify",
            ErrKind::Io => "io",
            ErrKind::Timeout => "timeout",
        }
    }
}

/// A failed session: the category and a short description.
#[derive(Debug, Clone)]
pub struct SessErr {
    pub kind: ErrKind,
    pub detail: String,
}

impl SessErr {
    pub fn new(kind: ErrKind, detail: impl fmt::Display) -> SessErr {
        SessErr {
            kind,
            detail: detail.to_string(),
        }
    }
}

impl fmt::Display for SessErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

impl std::error::Error for SessErr {}

/// Error counts by kind, with the first few messages kept for the report.
#[derive(Debug, Default)]
pub struct Errors {
    counts: BTreeMap<ErrKind, u64>,
    samples: Vec<String>,
}

const MAX_SAMPLES: usize = 8;

impl Errors {
    pub fn record(&mut self, e: &SessErr, context: &str) {
        *self.counts.entry(e.kind).or_default() += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(format!("{context}: {e}"));
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Print the samples (to stderr) and append `errors=N err_<kind>=N`.
    pub fn report(&self, r: &mut ResultLine) {
        for s in &self.samples {
            eprintln!("  error: {s}");
        }
        if self.total() as usize > self.samples.len() {
            eprintln!(
                "  ... {} more errors",
                self.total() as usize - self.samples.len()
            );
        }
        r.kv("errors", self.total());
        for (k, n) in &self.counts {
            r.kv(&format!("err_{}", k.name()), n);
        }
    }
}

/// Print the latency percentiles line: `  LABEL: p50 .. p90 .. p99 .. max ..`.
pub fn print_latency(label: &str, s: &Summary) {
    println!(
        "  {label}: p50 {} p90 {} p99 {} max {}",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
}

/// Print the generator's CPU use over `secs` of wall time and, if the
/// servers were measured, theirs with the cost per `unit` (`count` units).
pub fn print_cpu(cpu: Duration, secs: f64, server: Option<(Duration, usize, &str)>) {
    let extra = match server {
        None => String::new(),
        Some((srv, count, unit)) => format!(
            ", server CPU {:.2} s ({:.0}% of one core, {:.3} ms/{unit})",
            srv.as_secs_f64(),
            srv.as_secs_f64() / secs * 100.0,
            srv.as_secs_f64() * 1e3 / count.max(1) as f64
        ),
    };
    println!(
        "  generator CPU {:.2} s ({:.0}% of one core){extra}",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / secs * 100.0
    );
}

/// Builder of the `RESULT` line.
pub struct ResultLine {
    line: String,
}

impl ResultLine {
    pub fn new(mode: &str) -> ResultLine {
        ResultLine {
            line: format!("RESULT mode={mode}"),
        }
    }

    pub fn kv(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        let v = value.to_string().replace(char::is_whitespace, "_");
        let _ = write!(self.line, " {key}={v}");
        self
    }

    /// A float with a fixed number of decimals.
    pub fn f(&mut self, key: &str, value: f64, decimals: usize) -> &mut Self {
        let _ = write!(self.line, " {key}={value:.decimals$}");
        self
    }

    /// `p50_ms p90_ms p99_ms max_ms`.
    pub fn latency(&mut self, s: &Summary) -> &mut Self {
        self.kv("p50_ms", ms(s.p50))
            .kv("p90_ms", ms(s.p90))
            .kv("p99_ms", ms(s.p99))
            .kv("max_ms", ms(s.max))
    }

    /// `gen_cpu_s gen_cpu_pct [server_cpu_s server_cpu_pct]` over `secs`.
    pub fn cpu(&mut self, cpu: Duration, secs: f64, server: Option<Duration>) -> &mut Self {
        self.f("gen_cpu_s", cpu.as_secs_f64(), 3).f(
            "gen_cpu_pct",
            cpu.as_secs_f64() / secs * 100.0,
            1,
        );
        if let Some(srv) = server {
            self.f("server_cpu_s", srv.as_secs_f64(), 3).f(
                "server_cpu_pct",
                srv.as_secs_f64() / secs * 100.0,
                1,
            );
        }
        self
    }

    pub fn print(&self) {
        println!("{}", self.line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(v);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p90, Duration::from_millis(90));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(s.min, Duration::from_millis(1));
        let one = Summary::of(vec![Duration::from_millis(7)]);
        assert_eq!(one.p50, one.p99);
        assert_eq!(Summary::of(Vec::new()).p99, Duration::ZERO);
    }

    #[test]
    fn result_line_has_no_spaces_in_values() {
        let mut r = ResultLine::new("x");
        r.kv("a", "b c").f("f", 1.23456, 2);
        assert_eq!(r.line, "RESULT mode=x a=b_c f=1.23");
    }
}

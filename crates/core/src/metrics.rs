//! Process-wide metrics: what the server counts while it runs, rendered in
//! the Prometheus text exposition format (version 0.0.4) for `/metrics`,
//! and summarised in the log line at shutdown.
//!
//! Every metric is incremented where its event happens: the session
//! drivers of `postoffice-server` (sessions, logins, POP3 retrievals, TLS
//! handshakes, refused connections), this crate ([`crate::inbound`],
//! [`crate::submission`]: transactions, rejections, filter verdicts,
//! delivery latency) and the queue's scheduler (queue size, attempts).
//!
//! **Label values are `&'static str`.** A label value can therefore only
//! come from the code, never from a client (an address, a host name, a
//! remote reply): the number of series is bounded by construction, and no
//! client can make the scrape grow or put text of its choice into it.
//! Words read from elsewhere (the filter's summary tokens) go through a
//! fixed table first ([`static_word`]).
//!
//! Families keep their series in a small map behind a mutex; one
//! increment costs an uncontended lock, far less than the log line that
//! usually accompanies the event.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The `protocol` label of sessions and logins.
pub mod protocol {
    /// POP3 on the plain listener (STLS possible).
    pub const POP3: &str = "pop3";
    /// POP3 over implicit TLS.
    pub const POP3S: &str = "pop3s";
    /// SMTP on the MX port.
    pub const SMTP: &str = "smtp";
    /// Submission with STARTTLS.
    pub const SUBMISSION: &str = "submission";
    /// Submission over implicit TLS.
    pub const SUBMISSIONS: &str = "submissions";
    /// The HTTP listeners (web interface, API, metrics, autoconfig).
    pub const HTTP: &str = "http";
    /// The HTTPS listeners.
    pub const HTTPS: &str = "https";
    /// Sign-in on the web interface (logins only).
    pub const WEB: &str = "web";
}

/// The `reason` label of `postoffice_smtp_rejections_total`.
pub mod reason {
    /// A recipient outside our domains (relay attempt).
    pub const RELAY: &str = "relay";
    /// A recipient of a local domain that is not a user.
    pub const UNKNOWN_USER: &str = "unknown_user";
    /// A recipient over quota.
    pub const QUOTA: &str = "quota";
    /// Another recipient refusal (disabled user, storage trouble).
    pub const RECIPIENT_OTHER: &str = "recipient_other";
    /// A client in `ip_block`.
    pub const IP_BLOCK: &str = "ip_block";
    /// A client listed in a DNSBL.
    pub const DNSBL: &str = "dnsbl";
    /// A sender in `sender_block`.
    pub const SENDER_BLOCK: &str = "sender_block";
    /// SPF fail in reject mode.
    pub const SPF: &str = "spf";
    /// No valid DKIM signature in reject mode.
    pub const DKIM: &str = "dkim";
    /// DMARC fail with p=reject.
    pub const DMARC: &str = "dmarc";
    /// A virus found.
    pub const VIRUS: &str = "virus";
    /// rspamd scored the message at or above `spam_reject`.
    pub const SPAM: &str = "spam";
    /// The virus or spam scanner failed (fail closed: 451).
    pub const SCANNER_UNAVAILABLE: &str = "scanner_unavailable";
    /// A greylisted recipient (451 4.7.1).
    pub const GREYLIST: &str = "greylist";
    /// Submission: the user passed `max_messages_per_hour` or
    /// `max_recipients_per_day`.
    pub const SEND_LIMIT: &str = "send_limit";
    /// MX: a client over `max_messages_per_minute` (451 4.7.1), or a
    /// connection over `max_connections_per_minute` (421 4.7.0).
    pub const RATE_LIMIT: &str = "rate_limit";
    /// Submission with `scan_outbound`: rspamd scored it at or above
    /// `spam_reject` (550 5.7.1, not sent).
    pub const OUTBOUND_SPAM: &str = "outbound_spam";
    /// Submission: the account is disabled (after too many limit hits).
    pub const ACCOUNT_DISABLED: &str = "account_disabled";
    /// Submission: a sender address the user may not use.
    pub const SENDER_NOT_OWNED: &str = "sender_not_owned";
    /// Anything else.
    pub const OTHER: &str = "other";
}

/// Buckets of the delivery latency histogram, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A counter or gauge family with `N` labels.
#[derive(Debug)]
pub struct Family<const N: usize> {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: [&'static str; N],
    values: Mutex<BTreeMap<[&'static str; N], i64>>,
}

impl<const N: usize> Family<N> {
    const fn new(
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: [&'static str; N],
    ) -> Self {
        Family {
            name,
            help,
            kind,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<[&'static str; N], i64>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add one to the series `labels`.
    pub fn inc(&self, labels: [&'static str; N]) {
        self.add(labels, 1);
    }

    /// Add `n` (negative only for gauges) to the series `labels`.
    pub fn add(&self, labels: [&'static str; N], n: i64) {
        *self.map().entry(labels).or_insert(0) += n;
    }

    /// Set the series `labels` (gauges).
    pub fn set(&self, labels: [&'static str; N], v: i64) {
        self.map().insert(labels, v);
    }

    /// The value of the series `labels` (0 when it never moved).
    pub fn get(&self, labels: [&'static str; N]) -> i64 {
        self.map().get(&labels).copied().unwrap_or(0)
    }

    /// Every series with its value.
    pub fn series(&self) -> Vec<([&'static str; N], i64)> {
        self.map().iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The sum over every series.
    pub fn total(&self) -> i64 {
        self.map().values().sum()
    }

    /// Make the series `labels` exist (at 0), so that a scrape shows it
    /// before its first event.
    fn touch(&self, labels: [&'static str; N]) {
        self.map().entry(labels).or_insert(0);
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.kind, self.help);
        for (labels, v) in self.map().iter() {
            out.push_str(self.name);
            label_set(out, &self.labels, labels, None);
            let _ = writeln!(out, " {v}");
        }
    }
}

#[derive(Debug, Clone, Default)]
struct HistogramData {
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram family with `N` labels and fixed buckets.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<[&'static str; N], HistogramData>>,
}

impl<const N: usize> Histogram<N> {
    const fn new(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
        buckets: &'static [f64],
    ) -> Self {
        Histogram {
            name,
            help,
            labels,
            buckets,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Record one observation.
    pub fn observe(&self, labels: [&'static str; N], d: Duration) {
        let secs = d.as_secs_f64();
        let mut map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(labels).or_insert_with(|| HistogramData {
            counts: vec![0; self.buckets.len() + 1],
            ..HistogramData::default()
        });
        let i = self
            .buckets
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.buckets.len());
        h.counts[i] += 1;
        h.sum += secs;
        h.count += 1;
    }

    /// Observations recorded for `labels`.
    pub fn count(&self, labels: [&'static str; N]) -> u64 {
        let map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&labels).map_or(0, |h| h.count)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, "histogram", self.help);
        let map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, h) in map.iter() {
            let mut cumulative = 0;
            for (i, c) in h.counts.iter().enumerate() {
                cumulative += c;
                let le = match self.buckets.get(i) {
                    Some(b) => format!("{b}"),
                    None => "+Inf".to_string(),
                };
                let _ = write!(out, "{}_bucket", self.name);
                label_set(out, &self.labels, labels, Some(&le));
                let _ = writeln!(out, " {cumulative}");
            }
            let _ = write!(out, "{}_sum", self.name);
            label_set(out, &self.labels, labels, None);
            let _ = writeln!(out, " {}", h.sum);
            let _ = write!(out, "{}_count", self.name);
            label_set(out, &self.labels, labels, None);
            let _ = writeln!(out, " {}", h.count);
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{a="x",b="y"}` (nothing for no labels). Values are static words from
/// this crate, but are escaped anyway as the format requires.
fn label_set(out: &mut String, names: &[&str], values: &[&str], le: Option<&str>) {
    if names.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let pairs = names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, *v))
        .chain(le.map(|l| ("le", l)));
    for (n, v) in pairs {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(n);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Every metric of the process. One lives in [`crate::App::metrics`].
#[derive(Debug)]
pub struct Metrics {
    started: SystemTime,
    /// Sessions (connections) open now, by protocol.
    pub sessions_open: Family<1>,
    /// Sessions (connections) accepted, by protocol.
    pub sessions_total: Family<1>,
    /// Connections refused before a session started, by protocol and
    /// reason (`limit_total`, `limit_per_ip`, `ip_block`, `dnsbl`).
    pub connections_refused: Family<2>,
    /// Logins by protocol (`pop3`, `submission`, `web`) and result (`ok`,
    /// `failed`).
    pub logins: Family<2>,
    /// Logins served by the verified-credential cache (no slow hash).
    pub auth_cache_hits: Family<0>,
    /// Messages sent by POP3 RETR.
    pub pop3_retrieved: Family<0>,
    /// Octets sent by POP3 RETR.
    pub pop3_retrieved_bytes: Family<0>,
    /// Messages deleted by POP3 sessions (at QUIT).
    pub pop3_deleted: Family<0>,
    /// Complete SMTP transactions (after DATA) by service (`mx`,
    /// `submission`) and outcome.
    pub smtp_transactions: Family<2>,
    /// Refusals by service and reason ([`reason`]): recipients, senders,
    /// connections and messages.
    pub smtp_rejections: Family<2>,
    /// Verification results by stage and result word.
    pub filter_verdicts: Family<2>,
    /// Time from the end of DATA to the final reply (inbound, submission),
    /// and of one outbound delivery attempt (outbound).
    pub delivery_seconds: Histogram<1>,
    /// Entries in the outbound queue (set by the scheduler's scans).
    pub queue_entries: Family<0>,
    /// Recipients in the outbound queue by state.
    pub queue_recipients: Family<1>,
    /// Age of the oldest queue entry, in seconds.
    pub queue_oldest_seconds: Family<0>,
    /// Outbound delivery attempts per recipient by result (`delivered`,
    /// `deferred`, `bounced`).
    pub queue_attempts: Family<1>,
    /// Completed TLS handshakes by protocol version.
    pub tls_handshakes: Family<1>,
    /// Failed TLS handshakes by reason (`error`, `timeout`).
    pub tls_handshake_failures: Family<1>,
    /// HTTP responses by status class.
    pub http_responses: Family<1>,
    /// Domains in the directory (set when scraped).
    pub domains: Family<0>,
    /// Users in the directory by state (set when scraped).
    pub users: Family<1>,
    /// Accounts disabled automatically by `disable_after_limit_hits`.
    pub accounts_auto_disabled: Family<0>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let m = Metrics {
            started: SystemTime::now(),
            sessions_open: Family::new(
                "postoffice_sessions_open",
                "gauge",
                "Connections being served now.",
                ["protocol"],
            ),
            sessions_total: Family::new(
                "postoffice_sessions_total",
                "counter",
                "Connections accepted.",
                ["protocol"],
            ),
            connections_refused: Family::new(
                "postoffice_connections_refused_total",
                "counter",
                "Connections refused before a session started (limits, IP block list, DNSBL).",
                ["protocol", "reason"],
            ),
            logins: Family::new(
                "postoffice_logins_total",
                "counter",
                "Logins by protocol and result.",
                ["protocol", "result"],
            ),
            auth_cache_hits: Family::new(
                "postoffice_auth_cache_hits_total",
                "counter",
                "Logins served by the verified-credential cache (no password hash computed).",
                [],
            ),
            pop3_retrieved: Family::new(
                "postoffice_pop3_retrieved_messages_total",
                "counter",
                "Messages sent by POP3 RETR.",
                [],
            ),
            pop3_retrieved_bytes: Family::new(
                "postoffice_pop3_retrieved_bytes_total",
                "counter",
                "Octets of messages sent by POP3 RETR.",
                [],
            ),
            pop3_deleted: Family::new(
                "postoffice_pop3_deleted_messages_total",
                "counter",
                "Messages deleted by POP3 sessions at QUIT.",
                [],
            ),
            smtp_transactions: Family::new(
                "postoffice_smtp_transactions_total",
                "counter",
                "Complete SMTP transactions (after DATA) by service and outcome.",
                ["service", "outcome"],
            ),
            smtp_rejections: Family::new(
                "postoffice_smtp_rejections_total",
                "counter",
                "SMTP refusals (connections, senders, recipients, messages) by service and reason.",
                ["service", "reason"],
            ),
            filter_verdicts: Family::new(
                "postoffice_filter_verdicts_total",
                "counter",
                "Results of the inbound verification stages.",
                ["stage", "result"],
            ),
            delivery_seconds: Histogram::new(
                "postoffice_delivery_duration_seconds",
                "Seconds from the end of DATA to the final reply (inbound, submission) and of one outbound attempt (outbound).",
                ["path"],
                LATENCY_BUCKETS,
            ),
            queue_entries: Family::new(
                "postoffice_queue_entries",
                "gauge",
                "Messages in the outbound queue.",
                [],
            ),
            queue_recipients: Family::new(
                "postoffice_queue_recipients",
                "gauge",
                "Recipients in the outbound queue by state.",
                ["state"],
            ),
            queue_oldest_seconds: Family::new(
                "postoffice_queue_oldest_entry_age_seconds",
                "gauge",
                "Age of the oldest message in the outbound queue.",
                [],
            ),
            queue_attempts: Family::new(
                "postoffice_queue_delivery_attempts_total",
                "counter",
                "Outbound delivery attempts per recipient by result.",
                ["result"],
            ),
            tls_handshakes: Family::new(
                "postoffice_tls_handshakes_total",
                "counter",
                "Completed TLS handshakes by protocol version.",
                ["version"],
            ),
            tls_handshake_failures: Family::new(
                "postoffice_tls_handshake_failures_total",
                "counter",
                "Failed TLS handshakes by reason.",
                ["reason"],
            ),
            http_responses: Family::new(
                "postoffice_http_responses_total",
                "counter",
                "HTTP responses by status class.",
                ["code"],
            ),
            domains: Family::new("postoffice_domains", "gauge", "Domains served.", []),
            users: Family::new(
                "postoffice_users",
                "gauge",
                "Users in the directory by state.",
                ["state"],
            ),
            accounts_auto_disabled: Family::new(
                "postoffice_accounts_auto_disabled_total",
                "counter",
                "Accounts disabled automatically for hitting sending limits too often.",
                [],
            ),
        };
        // The series an alert is likely written against exist from the
        // start, at zero.
        for p in [
            protocol::POP3,
            protocol::POP3S,
            protocol::SMTP,
            protocol::SUBMISSION,
            protocol::SUBMISSIONS,
        ] {
            m.sessions_open.touch([p]);
            m.sessions_total.touch([p]);
        }
        for p in [protocol::POP3, protocol::SUBMISSION, protocol::WEB] {
            m.logins.touch([p, "ok"]);
            m.logins.touch([p, "failed"]);
        }
        m.auth_cache_hits.touch([]);
        m.pop3_retrieved.touch([]);
        m.pop3_retrieved_bytes.touch([]);
        m.pop3_deleted.touch([]);
        for o in [
            "delivered",
            "quarantined",
            "rejected",
            "tempfailed",
            "failed",
        ] {
            m.smtp_transactions.touch(["mx", o]);
        }
        for o in ["accepted", "held", "rejected", "failed"] {
            m.smtp_transactions.touch(["submission", o]);
        }
        m.accounts_auto_disabled.touch([]);
        m.queue_entries.touch([]);
        for s in ["pending", "held", "delivered", "failed"] {
            m.queue_recipients.touch([s]);
        }
        m.queue_oldest_seconds.touch([]);
        for r in ["delivered", "deferred", "bounced"] {
            m.queue_attempts.touch([r]);
        }
        m
    }

    /// When the process started (for uptime).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The Prometheus text format of every metric, `build_info` and the
    /// start time first.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        header(
            &mut out,
            "postoffice_build_info",
            "gauge",
            "Always 1; the labels name the running build.",
        );
        let _ = writeln!(
            out,
            "postoffice_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            &mut out,
            "postoffice_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let start = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(out, "postoffice_start_time_seconds {start}");
        self.sessions_open.render(&mut out);
        self.sessions_total.render(&mut out);
        self.connections_refused.render(&mut out);
        self.logins.render(&mut out);
        self.auth_cache_hits.render(&mut out);
        self.pop3_retrieved.render(&mut out);
        self.pop3_retrieved_bytes.render(&mut out);
        self.pop3_deleted.render(&mut out);
        self.smtp_transactions.render(&mut out);
        self.smtp_rejections.render(&mut out);
        self.filter_verdicts.render(&mut out);
        self.delivery_seconds.render(&mut out);
        self.queue_entries.render(&mut out);
        self.queue_recipients.render(&mut out);
        self.queue_oldest_seconds.render(&mut out);
        self.queue_attempts.render(&mut out);
        self.tls_handshakes.render(&mut out);
        self.tls_handshake_failures.render(&mut out);
        self.http_responses.render(&mut out);
        self.domains.render(&mut out);
        self.users.render(&mut out);
        self.accounts_auto_disabled.render(&mut out);
        out
    }

    /// The counters that moved, as `name{labels}=value` words, for the
    /// log line at shutdown.
    pub fn summary(&self) -> String {
        let mut words = Vec::new();
        let mut push = |name: &str, series: Vec<(Vec<&str>, i64)>| {
            for (labels, v) in series {
                if v != 0 {
                    if labels.is_empty() {
                        words.push(format!("{name}={v}"));
                    } else {
                        words.push(format!("{name}[{}]={v}", labels.join(",")));
                    }
                }
            }
        };
        fn s<const N: usize>(f: &Family<N>) -> Vec<(Vec<&'static str>, i64)> {
            f.series()
                .into_iter()
                .map(|(l, v)| (l.to_vec(), v))
                .collect()
        }
        push("sessions", s(&self.sessions_total));
        push("logins", s(&self.logins));
        push("auth_cache_hits", s(&self.auth_cache_hits));
        push("pop3_retrieved", s(&self.pop3_retrieved));
        push("pop3_deleted", s(&self.pop3_deleted));
        push("smtp_transactions", s(&self.smtp_transactions));
        push("smtp_rejections", s(&self.smtp_rejections));
        push("connections_refused", s(&self.connections_refused));
        push("queue_attempts", s(&self.queue_attempts));
        words.join(" ")
    }

    /// Record the per-stage results of a verification summary
    /// (`dnsbl=none spf=pass dkim=pass dmarc=pass virus=clean`, see
    /// `postoffice-filter`). Stages that were off are not counted.
    pub fn record_filter_summary(&self, summary: &str) {
        for token in summary.split_whitespace() {
            let Some((stage, result)) = token.split_once('=') else {
                continue;
            };
            // "listed:zone", "found:Signature": the word before the colon.
            let result = result.split(':').next().unwrap_or("");
            let Some(stage) =
                static_word(stage, &["dnsbl", "spf", "dkim", "dmarc", "virus", "spam"])
            else {
                continue;
            };
            if result == "off" {
                continue;
            }
            let result = static_word(result, RESULT_WORDS).unwrap_or("other");
            self.filter_verdicts.inc([stage, result]);
        }
    }
}

/// The result words of the verification summary (RFC 8601 words and the
/// DNSBL/virus ones).
const RESULT_WORDS: &[&str] = &[
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "temperror",
    "permerror",
    "policy",
    "listed",
    "skipped",
    "error",
    "clean",
    "found",
    "ham",
    "tag",
    "quarantine",
    "reject",
];

/// `word` as the matching `&'static str` of `table`, if it is one.
pub fn static_word(word: &str, table: &[&'static str]) -> Option<&'static str> {
    table.iter().copied().find(|w| *w == word)
}

/// The `version` label of a TLS protocol version as rustls prints it
/// (`TLSv1_3`): `TLSv1.3`, `TLSv1.2`, or `other`.
pub fn tls_version_label(debug_name: &str) -> &'static str {
    match debug_name {
        "TLSv1_3" => "TLSv1.3",
        "TLSv1_2" => "TLSv1.2",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::new();
        m.logins.inc([protocol::POP3, "ok"]);
        m.logins.inc([protocol::POP3, "ok"]);
        m.logins.inc([protocol::POP3, "failed"]);
        m.pop3_retrieved.add([], 3);
        m.sessions_open.inc([protocol::SMTP]);
        m.sessions_open.add([protocol::SMTP], -1);
        m.delivery_seconds
            .observe(["inbound"], Duration::from_millis(30));
        m.delivery_seconds
            .observe(["inbound"], Duration::from_secs(100));
        let text = m.render();
        assert!(
            text.contains("postoffice_logins_total{protocol=\"pop3\",result=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("postoffice_logins_total{protocol=\"pop3\",result=\"failed\"} 1\n"));
        assert!(text.contains("# TYPE postoffice_logins_total counter\n"));
        assert!(text.contains("postoffice_pop3_retrieved_messages_total 3\n"));
        assert!(text.contains("postoffice_sessions_open{protocol=\"smtp\"} 0\n"));
        assert!(text.contains("postoffice_build_info{version=\""));
        // Cumulative buckets, +Inf equal to the count.
        assert!(text.contains(
            "postoffice_delivery_duration_seconds_bucket{path=\"inbound\",le=\"0.025\"} 0\n"
        ));
        assert!(text.contains(
            "postoffice_delivery_duration_seconds_bucket{path=\"inbound\",le=\"0.05\"} 1\n"
        ));
        assert!(text.contains(
            "postoffice_delivery_duration_seconds_bucket{path=\"inbound\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("postoffice_delivery_duration_seconds_count{path=\"inbound\"} 2\n"));
        // Every line is a comment or `name{labels} value`.
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("postoffice_"),
                "{line}"
            );
        }
    }

    #[test]
    fn filter_summary_words_are_bounded() {
        let m = Metrics::new();
        m.record_filter_summary(
            "dnsbl=listed:zen.example spf=pass dkim=off dmarc=weird\"word virus=found:Eicar_Test",
        );
        assert_eq!(m.filter_verdicts.get(["dnsbl", "listed"]), 1);
        assert_eq!(m.filter_verdicts.get(["spf", "pass"]), 1);
        assert_eq!(m.filter_verdicts.get(["dmarc", "other"]), 1);
        assert_eq!(m.filter_verdicts.get(["virus", "found"]), 1);
        assert_eq!(m.filter_verdicts.total(), 4, "dkim=off is not counted");
        assert!(!m.render().contains("weird"));
        assert!(!m.render().contains("zen.example"));
    }

    #[test]
    fn summary_names_what_moved() {
        let m = Metrics::new();
        assert_eq!(m.summary(), "");
        m.sessions_total.inc([protocol::POP3]);
        m.pop3_deleted.add([], 2);
        let s = m.summary();
        assert!(s.contains("sessions[pop3]=1"), "{s}");
        assert!(s.contains("pop3_deleted=2"), "{s}");
    }
}

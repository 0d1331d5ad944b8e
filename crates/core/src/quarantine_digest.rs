//! The quarantine digest: POP3 users never see their quarantine (it is a
//! folder POP3 does not list), so once per period each user with newly
//! quarantined messages gets one message in their maildrop listing them —
//! date, sender, subject, reason — and how to release each (the
//! `postoffice quarantine release` command for the administrator, and the
//! user's `/me` web page when the web interface runs). The spam itself is
//! never shown: only its `From:` and `Subject:`, as one printable line each.
//!
//! `[filter] quarantine_digest_hours` sets the period (0: off); `serve`
//! runs [`run`] every few minutes and a user gets a digest when they have
//! messages no digest listed yet and their last digest is at least that
//! old. `postoffice quarantine digest [--user ADDR]` runs it now, ignoring
//! the period (cron).
//!
//! What was listed is kept in the mailbox state (`quarantine-digest`: the
//! time of the last digest, then the UIDs it and earlier ones listed, less
//! those since released or deleted), written in one atomic put after the
//! digest is stored: a message is listed once. (A crash between the two
//! could list it again; it is never lost from a digest.)
//!
//! The digest is delivered through [`crate::delivery::Local`] like any
//! message, so quotas apply (a full mailbox gets it on a later run), and it
//! never passes the verification pipeline, so it cannot be quarantined.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postoffice_common::content::{Piece, Pieces};
use postoffice_config::Config;
use postoffice_directory::{Directory, normalize_address};
use postoffice_store::{MailStore, StoreError};
use tracing::{info, warn};

use crate::admin::{self, AdminError};
use crate::delivery::Local;
use crate::notices::{self, Held};

/// The mailbox state key of the digest (see the module documentation).
const STATE_KEY: &str = "quarantine-digest";

/// What one run did.
#[derive(Debug, Default, Clone)]
pub struct DigestReport {
    /// (user, messages listed) per digest delivered.
    pub sent: Vec<(String, usize)>,
    /// Users with unlisted messages whose last digest is more recent than
    /// the period (scheduled runs only).
    pub waiting: Vec<String>,
    /// What went wrong, per user (the run goes on; the user's messages are
    /// listed by a later run).
    pub errors: Vec<String>,
}

/// When digests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Only to users whose last digest is at least this old.
    Every(Duration),
    /// To every user with unlisted messages (the CLI).
    Now,
}

impl Schedule {
    /// The period of `[filter] quarantine_digest_hours`; `None` when off.
    pub fn from_config(config: &Config) -> Option<Schedule> {
        match config.filter.quarantine_digest_hours {
            0 => None,
            h => Some(Schedule::Every(Duration::from_secs(h.saturating_mul(3600)))),
        }
    }
}

/// [`run_at`] now.
pub fn run(
    config: &Config,
    directory: &Directory,
    store: &dyn MailStore,
    only: Option<&str>,
    schedule: Schedule,
) -> Result<DigestReport, AdminError> {
    run_at(config, directory, store, only, schedule, SystemTime::now())
}

/// Deliver the digests due at `now`: to every user, or only to `only`
/// (which must be a user).
pub fn run_at(
    config: &Config,
    directory: &Directory,
    store: &dyn MailStore,
    only: Option<&str>,
    schedule: Schedule,
    now: SystemTime,
) -> Result<DigestReport, AdminError> {
    let users: Vec<String> = match only {
        Some(a) => {
            let a = normalize_address(a)?;
            if directory.snapshot().user(&a).is_none() {
                return Err(AdminError::NoSuchUser(a));
            }
            vec![a]
        }
        None => directory
            .snapshot()
            .users()
            .map(|u| u.address.clone())
            .collect(),
    };
    let local = Local {
        config,
        directory,
        store,
    };
    let web = web_page(config);
    let mut report = DigestReport::default();
    for address in users {
        match user_digest(&local, &address, schedule, now, web.as_deref()) {
            Ok(Done::Sent(n)) => {
                info!(user = %address, messages = n, "quarantine digest delivered");
                report.sent.push((address, n));
            }
            Ok(Done::Waiting) => report.waiting.push(address),
            Ok(Done::Nothing) => {}
            Err(e) => {
                warn!(user = %address, error = %e, "quarantine digest not delivered");
                report.errors.push(format!("{address}: {e}"));
            }
        }
    }
    Ok(report)
}

enum Done {
    Sent(usize),
    Waiting,
    Nothing,
}

/// Why one user's digest was not delivered.
#[derive(Debug, thiserror::Error)]
enum DigestError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Delivery(#[from] crate::delivery::DeliveryError),
}

/// What the state remembers.
#[derive(Debug, Default, PartialEq, Eq)]
struct State {
    /// When the last digest was delivered (seconds since the epoch).
    sent: Option<u64>,
    /// The UIDs listed, still held.
    listed: HashSet<String>,
}

impl State {
    fn parse(bytes: &[u8]) -> State {
        let text = String::from_utf8_lossy(bytes);
        let mut state = State::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("sent ") {
                state.sent = t.trim().parse().ok();
            } else if !line.trim().is_empty() {
                state.listed.insert(line.trim().to_owned());
            }
        }
        state
    }

    fn render(&self) -> Vec<u8> {
        let mut uids: Vec<&str> = self.listed.iter().map(String::as_str).collect();
        uids.sort_unstable();
        let mut out = String::new();
        if let Some(s) = self.sent {
            out.push_str(&format!("sent {s}\n"));
        }
        for u in uids {
            out.push_str(u);
            out.push('\n');
        }
        out.into_bytes()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn user_digest(
    local: &Local<'_>,
    address: &str,
    schedule: Schedule,
    now: SystemTime,
    web: Option<&str>,
) -> Result<Done, DigestError> {
    let store = local.store;
    // The cheap listing first: most users have nothing new.
    let present: HashSet<String> = store
        .quarantine_list(address)?
        .into_iter()
        .map(|m| m.uid.as_str().to_owned())
        .collect();
    let mut state = store
        .state_get(address, STATE_KEY)?
        .map(|v| State::parse(&v))
        .unwrap_or_default();
    let stale = state.listed.iter().any(|u| !present.contains(u));
    state.listed.retain(|u| present.contains(u));
    if present.iter().all(|u| state.listed.contains(u)) {
        if stale {
            store.state_put(address, STATE_KEY, Some(&state.render()))?;
        }
        return Ok(Done::Nothing);
    }
    if let Schedule::Every(period) = schedule
        && let Some(sent) = state.sent
        && unix(now) < sent.saturating_add(period.as_secs())
    {
        return Ok(Done::Waiting);
    }
    let held: Vec<Held> = admin::quarantine_list(store, address)?
        .into_iter()
        .filter(|m| !state.listed.contains(&m.uid))
        .map(|m| Held {
            received: m.received,
            from: m.from,
            subject: crate::retention::decode_subject(&m.subject),
            reason: m.reason,
            uid: m.uid,
        })
        .collect();
    if held.is_empty() {
        // Released or deleted between the two listings.
        return Ok(Done::Nothing);
    }
    let message = notices::quarantine_digest(local.config, address, &held, state.listed.len(), web);
    let mut pieces = Pieces::new();
    pieces.push(Piece::Owned(message));
    local.deliver(&[address.to_owned()], &pieces)?;
    state.sent = Some(unix(now));
    state.listed.extend(held.iter().map(|h| h.uid.clone()));
    store.state_put(address, STATE_KEY, Some(&state.render()))?;
    Ok(Done::Sent(held.len()))
}

/// The user's web page, when the web interface listens: `https://` and
/// the host name with the TLS listener's port (a plain listener is meant
/// to sit behind a TLS proxy on 443).
pub fn web_page(config: &Config) -> Option<String> {
    let http = &config.http;
    let host = &config.hostname;
    match http.listen_tls.first() {
        Some(a) if a.port() != 443 => Some(format!("https://{host}:{}/me", a.port())),
        Some(_) => Some(format!("https://{host}/me")),
        None if !http.listen.is_empty() => Some(format!("https://{host}/me")),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(store: &dyn MailStore, to: &str, subject: &str) {
        let m = format!(
            "X-Postoffice-Verdict: quarantine; dnsbl=off spf=off dkim=off dmarc=off virus=found:Test.Sig\r\n\
             From: Eve <eve@spam.test>\r\nSubject: {subject}\r\n\r\nbad\r\n"
        );
        store.deliver_quarantine(to, &mut m.as_bytes()).unwrap();
    }

    fn maildrop_texts(store: &dyn MailStore, to: &str) -> Vec<String> {
        use std::io::Read;
        let md = store.open(to).unwrap();
        (0..md.messages().len())
            .map(|i| {
                let mut s = String::new();
                md.open_message(i).unwrap().read_to_string(&mut s).unwrap();
                s
            })
            .collect()
    }

    #[test]
    fn listed_once_per_period_through_local_delivery() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: tmp.path().to_path_buf(),
            hostname: "mx.test".into(),
            ..Config::default()
        };
        config.http.listen = Vec::new();
        config.http.listen_tls = Vec::new();
        config.filter.quarantine_digest_hours = 24;
        let dir = Directory::open(tmp.path()).unwrap();
        let store = crate::app::maildir(&config);
        admin::add_user(&dir, "a@example.test", "pw").unwrap();
        admin::add_user(&dir, "b@example.test", "pw").unwrap();
        let daily = Schedule::from_config(&config).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

        // Nothing held: nothing sent.
        let r = run_at(&config, &dir, &store, None, daily, t0).unwrap();
        assert!(r.sent.is_empty() && r.errors.is_empty(), "{r:?}");

        held(&store, "a@example.test", "first");
        held(&store, "a@example.test", "second");
        let r = run_at(&config, &dir, &store, None, daily, t0).unwrap();
        assert_eq!(r.sent, vec![("a@example.test".to_owned(), 2)]);
        let texts = maildrop_texts(&store, "a@example.test");
        assert_eq!(texts.len(), 1);
        assert!(texts[0].contains("Subject: first\r\n"), "{}", texts[0]);
        assert!(texts[0].contains("Reason:  virus Test.Sig found\r\n"));
        assert!(texts[0].contains("postoffice quarantine release a@example.test "));
        assert!(!texts[0].contains("sign in at"), "no web interface");
        assert!(maildrop_texts(&store, "b@example.test").is_empty());

        // The same messages are not listed again, by the schedule or now.
        let r = run_at(
            &config,
            &dir,
            &store,
            None,
            daily,
            t0 + Duration::from_secs(90_000),
        )
        .unwrap();
        assert!(r.sent.is_empty(), "{r:?}");
        let r = run_at(&config, &dir, &store, None, Schedule::Now, t0).unwrap();
        assert!(r.sent.is_empty(), "{r:?}");

        // A new one waits for the period, then is listed alone.
        held(&store, "a@example.test", "third");
        let r = run_at(
            &config,
            &dir,
            &store,
            None,
            daily,
            t0 + Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(r.waiting, vec!["a@example.test".to_owned()]);
        assert!(r.sent.is_empty());
        let later = t0 + Duration::from_secs(24 * 3600);
        let r = run_at(&config, &dir, &store, None, daily, later).unwrap();
        assert_eq!(r.sent, vec![("a@example.test".to_owned(), 1)]);
        let texts = maildrop_texts(&store, "a@example.test");
        assert_eq!(texts.len(), 2);
        let second = texts.iter().find(|t| t.contains("Subject: third")).unwrap();
        assert!(!second.contains("Subject: first"));
        assert!(second.contains("2 more messages, listed in earlier digests"));

        // Released messages leave the state.
        for m in admin::quarantine_list(&store, "a@example.test").unwrap() {
            admin::quarantine_release(&store, "a@example.test", &m.uid).unwrap();
        }
        let r = run_at(&config, &dir, &store, None, Schedule::Now, later).unwrap();
        assert!(r.sent.is_empty());
        let state = State::parse(
            &store
                .state_get("a@example.test", STATE_KEY)
                .unwrap()
                .unwrap(),
        );
        assert!(state.listed.is_empty(), "{state:?}");

        assert!(matches!(
            run_at(
                &config,
                &dir,
                &store,
                Some("nobody@example.test"),
                Schedule::Now,
                t0
            ),
            Err(AdminError::NoSuchUser(_))
        ));
    }

    #[test]
    fn quota_applies_and_the_digest_comes_later() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: tmp.path().to_path_buf(),
            hostname: "mx.test".into(),
            ..Config::default()
        };
        let dir = Directory::open(tmp.path()).unwrap();
        let store = crate::app::maildir(&config);
        admin::add_user(&dir, "a@example.test", "pw").unwrap();
        let one = admin::PolicyChange::parse(&admin::PolicyText {
            quota_messages: Some("1"),
            ..admin::PolicyText::default()
        })
        .unwrap();
        admin::set_user(&dir, "a@example.test", &one, None).unwrap();
        store
            .deliver(
                "a@example.test",
                &mut &b"Subject: fills it\r\n\r\nx\r\n"[..],
            )
            .unwrap();
        held(&store, "a@example.test", "held");
        let r = run(&config, &dir, &store, Some("a@example.test"), Schedule::Now).unwrap();
        assert!(r.sent.is_empty());
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].contains("over quota"), "{r:?}");
        // Room again: the same message is listed.
        let md = store.open("a@example.test").unwrap();
        md.commit(&[0]).unwrap();
        drop(md);
        let r = run(&config, &dir, &store, Some("A@example.test"), Schedule::Now).unwrap();
        assert_eq!(r.sent, vec![("a@example.test".to_owned(), 1)]);
    }

    #[test]
    fn web_page_follows_the_listeners() {
        let mut config = Config {
            hostname: "mx.test".into(),
            ..Config::default()
        };
        config.http.listen = vec!["127.0.0.1:8080".parse().unwrap()];
        config.http.listen_tls = Vec::new();
        assert_eq!(web_page(&config).as_deref(), Some("https://mx.test/me"));
        config.http.listen_tls = vec!["0.0.0.0:8443".parse().unwrap()];
        assert_eq!(
            web_page(&config).as_deref(),
            Some("https://mx.test:8443/me")
        );
        config.http.listen = Vec::new();
        config.http.listen_tls = Vec::new();
        assert_eq!(web_page(&config), None);
    }

    #[test]
    fn state_round_trip() {
        let s = State {
            sent: Some(42),
            listed: ["b".to_owned(), "a".to_owned()].into_iter().collect(),
        };
        assert_eq!(s.render(), b"sent 42\na\nb\n");
        assert_eq!(State::parse(&s.render()), s);
    }
}

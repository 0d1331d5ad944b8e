//! Login-failure accounting: slows down and then locks out password
//! guessing without handing attackers a lever against the account owner.
//!
//! The model (also in the README's Security section):
//!
//! - **Per user and network** — a (user name, client network) pair counts
//!   its failures; the delay grows with them and the pair is locked out
//!   after [`ThrottleConfig::lockout_after`]. A network is an IPv4 address
//!   or an IPv6 /64 (one host or customer usually holds a whole /64).
//!   A successful login clears only that pair.
//! - **Per network, across users** — password spraying (one guess each for
//!   many users) is counted per network and slowed and locked out the same
//!   way. A success does *not* clear it: an attacker who owns one account
//!   cannot log into it between guesses to reset the count.
//! - **Per user, across networks** — every failure for a user also counts
//!   towards that user's total, which only adds a *delay*, and only for
//!   networks that have already failed for that user. A botnet guessing one
//!   password from many addresses is slowed after each address's first
//!   try; the owner, logging in from a network that has not failed, is
//!   never delayed or locked out by failures made elsewhere.
//!
//! Lockouts end after [`ThrottleConfig::lockout`] and are not extended by
//! further failures during the lockout. Loopback and private addresses get
//! no exemption: a local proxy or webmail front end would otherwise be an
//! unthrottled path.
//!
//! Time is passed in (`now`) rather than read from the clock, which keeps
//! the logic deterministic and lets tests skip ahead without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Tuning for [`LoginThrottle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed without any delay (default 3), so ordinary typos
    /// cost nothing.
    pub free_failures: u32,
    /// Delay after the first non-free failure (default 1 s); it doubles with
    /// every further failure.
    pub base_delay: Duration,
    /// Upper bound for the delay (default 30 s).
    pub max_delay: Duration,
    /// Failures after which a (user, network) pair, or a network across
    /// users, is locked out (default 10); 0 disables lockouts.
    pub lockout_after: u32,
    /// How long a lockout lasts (default 5 min).
    pub lockout: Duration,
    /// Failures older than this are forgotten (default 15 min), measured
    /// from the most recent failure.
    pub forget_after: Duration,
    /// Maximum number of tracked networks, and separately of tracked
    /// (user, network) pairs and user names (default 100 000), so that a
    /// flood of random names cannot exhaust memory. When full, expired records go first, then the oldest
    /// unlocked ones.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            lockout_after: 10,
            lockout: Duration::from_secs(5 * 60),
            forget_after: Duration::from_secs(15 * 60),
            max_entries: 100_000,
        }
    }
}

/// What to do before verifying a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Verify the password, after waiting `delay` (zero for the first few
    /// failures). Waiting *before* verification keeps a guesser from getting
    /// quick answers by disconnecting early.
    Allow {
        /// How long to wait first.
        delay: Duration,
    },
    /// Refuse without verifying; the lockout ends in `remaining`.
    Locked {
        /// Time until the longer of the pair's and the network's lockouts
        /// ends.
        remaining: Duration,
    },
}

/// Counts after a failure, e.g. for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureState {
    /// Recent failures from this client's network, for any user.
    pub network_failures: u32,
    /// Recent failures for this user from this network.
    pub user_failures: u32,
    /// Recent failures for this user from anywhere.
    pub user_total: u32,
    /// Whether the pair or the network is now locked out.
    pub locked: bool,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    locked_at: Option<Instant>,
}

/// The state of one record at a given moment.
enum Live {
    Absent,
    Counting(u32),
    Locked { failures: u32, remaining: Duration },
}

impl Record {
    fn live(&self, now: Instant, cfg: &ThrottleConfig) -> Live {
        if let Some(at) = self.locked_at {
            let elapsed = now.saturating_duration_since(at);
            return if elapsed < cfg.lockout {
                Live::Locked {
                    failures: self.failures,
                    remaining: cfg.lockout - elapsed,
                }
            } else {
                // An expired lockout starts the count afresh, so the owner
                // is not re-locked by their first typo afterwards.
                Live::Absent
            };
        }
        if now.saturating_duration_since(self.last_failure) >= cfg.forget_after {
            Live::Absent
        } else {
            Live::Counting(self.failures)
        }
    }

    fn is_expired(&self, now: Instant, cfg: &ThrottleConfig) -> bool {
        matches!(self.live(now, cfg), Live::Absent)
    }
}

/// Thread-safe failure counters; share one per server via `Arc`.
#[derive(Debug)]
pub struct LoginThrottle {
    cfg: ThrottleConfig,
    /// Failures per network, any user (spraying).
    by_net: Mutex<HashMap<IpAddr, Record>>,
    /// Failures per (user, network).
    by_pair: Mutex<HashMap<(String, IpAddr), Record>>,
    /// Failures per user, any network (delay only; see the module docs).
    by_user: Mutex<HashMap<String, Record>>,
}

impl LoginThrottle {
    /// Creates an empty throttle.
    pub fn new(cfg: ThrottleConfig) -> Self {
        LoginThrottle {
            cfg,
            by_net: Mutex::new(HashMap::new()),
            by_pair: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    /// Decides whether a login attempt for `user` from `ip` may proceed to
    /// password verification, and after what delay.
    ///
    /// `Locked` while the (user, network) pair or the network is locked
    /// out. Otherwise the delay follows the largest count `n` of the pair,
    /// the network and — only if this pair has failed before — the user's
    /// total: zero while `n <= free_failures`, then
    /// `base_delay * 2^(n - free_failures - 1)` capped at `max_delay`.
    pub fn check(&self, ip: IpAddr, user: &str, now: Instant) -> Verdict {
        let net = net_key(ip);
        let user = user_key(user);
        let net_live = live_of(&mut lock(&self.by_net), &net, now, &self.cfg);
        let pair_live = live_of(
            &mut lock(&self.by_pair),
            &(user.clone(), net),
            now,
            &self.cfg,
        );
        let pair_failed = !matches!(pair_live, Live::Absent);
        let user_live = if pair_failed {
            match live_of(&mut lock(&self.by_user), &user, now, &self.cfg) {
                // The user's total never locks anyone out.
                Live::Locked { failures, .. } => Live::Counting(failures),
                live => live,
            }
        } else {
            Live::Absent
        };
        let mut failures = 0;
        let mut locked: Option<Duration> = None;
        for live in [net_live, pair_live, user_live] {
            match live {
                Live::Absent => {}
                Live::Counting(n) => failures = failures.max(n),
                Live::Locked { remaining, .. } => {
                    locked = Some(locked.map_or(remaining, |r| r.max(remaining)));
                }
            }
        }
        match locked {
            Some(remaining) => Verdict::Locked { remaining },
            None => Verdict::Allow {
                delay: self.delay_for(failures),
            },
        }
    }

    /// Records a failed login (wrong password, unknown or disabled user)
    /// and returns the updated counts.
    pub fn record_failure(&self, ip: IpAddr, user: &str, now: Instant) -> FailureState {
        let net = net_key(ip);
        let user = user_key(user);
        let (network_failures, net_locked) = bump(&mut lock(&self.by_net), net, now, &self.cfg);
        let (user_failures, pair_locked) = bump(
            &mut lock(&self.by_pair),
            (user.clone(), net),
            now,
            &self.cfg,
        );
        let (user_total, _) = bump(&mut lock(&self.by_user), user, now, &self.cfg);
        FailureState {
            network_failures,
            user_failures,
            user_total,
            locked: net_locked || pair_locked,
        }
    }

    /// Records a successful login: forgets this user's failures from this
    /// network (and the user's total: the owner knows the password). The
    /// network's count across users stays, so logging into one account
    /// between guesses at others resets nothing.
    pub fn record_success(&self, ip: IpAddr, user: &str, _now: Instant) {
        let user = user_key(user);
        lock(&self.by_pair).remove(&(user.clone(), net_key(ip)));
        lock(&self.by_user).remove(&user);
    }

    /// Drops every expired record. Optional: expired records are also
    /// dropped lazily; calling this from a periodic task keeps memory low
    /// after an attack has stopped.
    pub fn prune(&self, now: Instant) {
        lock(&self.by_net).retain(|_, r| !r.is_expired(now, &self.cfg));
        lock(&self.by_pair).retain(|_, r| !r.is_expired(now, &self.cfg));
        lock(&self.by_user).retain(|_, r| !r.is_expired(now, &self.cfg));
    }

    fn delay_for(&self, failures: u32) -> Duration {
        if failures <= self.cfg.free_failures {
            return Duration::ZERO;
        }
        let exponent = (failures - self.cfg.free_failures - 1).min(31);
        self.cfg
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.cfg.max_delay)
    }
}

fn live_of<K: Eq + Hash>(
    map: &mut HashMap<K, Record>,
    key: &K,
    now: Instant,
    cfg: &ThrottleConfig,
) -> Live {
    let Some(record) = map.get(key) else {
        return Live::Absent;
    };
    let live = record.live(now, cfg);
    if matches!(live, Live::Absent) {
        map.remove(key);
    }
    live
}

/// Adds one failure to `key`'s record; returns (failures, locked).
fn bump<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, Record>,
    key: K,
    now: Instant,
    cfg: &ThrottleConfig,
) -> (u32, bool) {
    let current = map.get(&key).map(|r| (r.live(now, cfg), r.locked_at));
    let record = match current {
        Some((Live::Locked { failures, .. }, locked_at)) => Record {
            // Counted, but the lockout is not extended.
            failures: failures.saturating_add(1),
            last_failure: now,
            locked_at,
        },
        Some((Live::Counting(n), _)) => new_count(n.saturating_add(1), now, cfg),
        Some((Live::Absent, _)) | None => new_count(1, now, cfg),
    };
    if !map.contains_key(&key) && map.len() >= cfg.max_entries {
        make_room(map, now, cfg);
    }
    let locked = record.locked_at.is_some();
    let failures = record.failures;
    map.insert(key, record);
    (failures, locked)
}

fn new_count(failures: u32, now: Instant, cfg: &ThrottleConfig) -> Record {
    let lock_now = cfg.lockout_after > 0 && failures >= cfg.lockout_after;
    Record {
        failures,
        last_failure: now,
        locked_at: lock_now.then_some(now),
    }
}

/// Frees space in a full map: expired records first, then the oldest tenth
/// of the remainder, unlocked records before locked ones so that a flood of
/// new names does not lift existing lockouts. Evicting a batch keeps the
/// cost amortised instead of scanning the map on every insert.
fn make_room<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, Record>,
    now: Instant,
    cfg: &ThrottleConfig,
) {
    map.retain(|_, r| !r.is_expired(now, cfg));
    if map.len() < cfg.max_entries {
        return;
    }
    let mut order: Vec<(bool, Instant, K)> = map
        .iter()
        .map(|(k, r)| (r.locked_at.is_some(), r.last_failure, k.clone()))
        .collect();
    let evict = (map.len() / 10)
        .max(map.len() + 1 - cfg.max_entries)
        .min(order.len());
    if evict == 0 {
        return;
    }
    order.select_nth_unstable_by(evict - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (_, _, key) in order.into_iter().take(evict) {
        map.remove(&key);
    }
}

/// The network a client address counts as: IPv6 clients per /64, because
/// one host or customer usually controls a whole /64 and could otherwise
/// rotate addresses for free; IPv4-mapped IPv6 addresses as the IPv4
/// address. Also what connection limits are keyed by.
pub fn net_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// User names are compared case-insensitively (like addresses) and capped
/// in length so that huge names cannot inflate memory use.
fn user_key(user: &str) -> String {
    const MAX: usize = 320;
    let mut end = user.len().min(MAX);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    user[..end].to_lowercase()
}

/// The maps hold plain counters; a panic elsewhere cannot leave them in a
/// state worse than slightly wrong counts, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const IP_B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    fn delay(v: Verdict) -> Duration {
        match v {
            Verdict::Allow { delay } => delay,
            Verdict::Locked { .. } => panic!("unexpectedly locked"),
        }
    }

    fn locked(v: Verdict) -> bool {
        matches!(v, Verdict::Locked { .. })
    }

    #[test]
    fn delays_grow_then_cap() {
        let t = LoginThrottle::new(ThrottleConfig {
            lockout_after: 0,
            ..ThrottleConfig::default()
        });
        let now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.push(delay(t.check(IP_A, "alice@x", now)).as_secs());
            t.record_failure(IP_A, "alice@x", now);
        }
        assert_eq!(seen, [0, 0, 0, 0, 1, 2, 4, 8, 16, 30]);
        // The network's count applies to other users from it (spraying)...
        assert_eq!(delay(t.check(IP_A, "bob@x", now)), Duration::from_secs(30));
        // ...but not to the user from a network that has not failed.
        assert_eq!(delay(t.check(IP_B, "alice@x", now)), Duration::ZERO);
        assert_eq!(delay(t.check(IP_B, "bob@x", now)), Duration::ZERO);
    }

    #[test]
    fn lockout_of_a_pair_after_n_failures_and_it_expires() {
        let cfg = ThrottleConfig::default();
        let t = LoginThrottle::new(cfg);
        let start = Instant::now();
        for i in 1..=10 {
            let state = t.record_failure(IP_A, "alice@x", start);
            assert_eq!(state.user_failures, i);
            assert_eq!(state.locked, i >= 10, "after {i}");
        }
        assert_eq!(
            t.check(IP_A, "alice@x", start),
            Verdict::Locked {
                remaining: cfg.lockout
            }
        );
        let later = start + Duration::from_secs(60);
        assert_eq!(
            t.check(IP_A, "Alice@X", later),
            Verdict::Locked {
                remaining: cfg.lockout - Duration::from_secs(60)
            }
        );
        // The owner, from a network that has not failed, is not locked out.
        assert_eq!(delay(t.check(IP_B, "alice@x", later)), Duration::ZERO);
        // Failures during the lockout do not extend it.
        assert!(t.record_failure(IP_A, "alice@x", later).locked);
        let after = start + cfg.lockout;
        assert!(!locked(t.check(IP_A, "alice@x", after)));
        // And the count starts over.
        assert_eq!(t.record_failure(IP_A, "alice@x", after).user_failures, 1);
    }

    #[test]
    fn failures_are_forgotten() {
        let cfg = ThrottleConfig::default();
        let t = LoginThrottle::new(cfg);
        let start = Instant::now();
        for _ in 0..6 {
            t.record_failure(IP_A, "alice@x", start);
        }
        assert!(delay(t.check(IP_A, "alice@x", start)) > Duration::ZERO);
        let later = start + cfg.forget_after;
        assert_eq!(delay(t.check(IP_A, "alice@x", later)), Duration::ZERO);
        assert_eq!(t.record_failure(IP_A, "alice@x", later).network_failures, 1);
    }

    #[test]
    fn success_clears_only_that_user_from_that_network() {
        let t = LoginThrottle::new(ThrottleConfig {
            lockout_after: 0,
            ..ThrottleConfig::default()
        });
        let now = Instant::now();
        for _ in 0..8 {
            t.record_failure(IP_A, "alice@x", now);
        }
        t.record_failure(IP_B, "alice@x", now);
        t.record_success(IP_A, "alice@x", now);
        // The pair starts over, but the network keeps its count...
        let s = t.record_failure(IP_A, "alice@x", now);
        assert_eq!((s.user_failures, s.network_failures), (1, 9));
        // ...and another network's failures for alice stay.
        assert_eq!(t.record_failure(IP_B, "alice@x", now).user_failures, 2);
    }

    /// The hole: an attacker holding one valid account logged into it every
    /// few guesses and so sprayed passwords at other users without delay.
    #[test]
    fn spraying_with_a_valid_account_in_between_is_still_locked_out() {
        let cfg = ThrottleConfig::default();
        let t = LoginThrottle::new(cfg);
        let now = Instant::now();
        let mut attempts = 0;
        for round in 0..20 {
            for v in 0..2 {
                let victim = format!("victim{}@x", round * 2 + v);
                if locked(t.check(IP_A, &victim, now)) {
                    break;
                }
                attempts += 1;
                t.record_failure(IP_A, &victim, now);
            }
            // The attacker's own account, with the right password.
            t.record_success(IP_A, "mallory@x", now);
        }
        assert_eq!(attempts, cfg.lockout_after, "spraying stops at the limit");
        assert!(locked(t.check(IP_A, "anyone@x", now)));
        assert!(!locked(t.check(IP_B, "victim0@x", now)));
    }

    #[test]
    fn distributed_guessing_is_slowed_after_each_networks_first_try() {
        let cfg = ThrottleConfig::default();
        let t = LoginThrottle::new(cfg);
        let now = Instant::now();
        for i in 0..50u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(
                delay(t.check(ip, "alice@x", now)),
                Duration::ZERO,
                "first try of {ip}"
            );
            t.record_failure(ip, "alice@x", now);
        }
        // A second try from one of those networks pays the user's total...
        let bot = IpAddr::V4(Ipv4Addr::from(0x0a00_0000));
        assert_eq!(delay(t.check(bot, "alice@x", now)), cfg.max_delay);
        // ...the owner from a clean network pays nothing and is never locked.
        assert_eq!(delay(t.check(IP_B, "alice@x", now)), Duration::ZERO);
    }

    #[test]
    fn loopback_is_not_exempt_and_ipv6_counts_per_64() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for i in 0..10 {
            t.record_failure(lo, &format!("u{i}@x"), now);
        }
        assert!(locked(t.check(lo, "other@x", now)));

        for i in 0..10u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i));
            t.record_failure(ip, &format!("v{i}@x"), now);
        }
        let same_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 99));
        let other_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(locked(t.check(same_64, "w@x", now)));
        assert!(!locked(t.check(other_64, "w@x", now)));
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert!(locked(t.check(mapped, "w@x", now)));
    }

    #[test]
    fn maps_stay_bounded_and_keep_lockouts() {
        let t = LoginThrottle::new(ThrottleConfig {
            max_entries: 20,
            ..ThrottleConfig::default()
        });
        let start = Instant::now();
        for _ in 0..10 {
            t.record_failure(IP_A, "victim@x", start);
        }
        for i in 0..200u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure(
                ip,
                &format!("random{i}@x"),
                start + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(lock(&t.by_net).len() <= 20);
        assert!(lock(&t.by_pair).len() <= 20);
        assert!(lock(&t.by_user).len() <= 20);
        assert!(locked(t.check(IP_A, "victim@x", start)));
        assert!(locked(t.check(IP_A, "x@x", start)));

        t.prune(start + Duration::from_secs(3600));
        assert!(lock(&t.by_net).is_empty());
        assert!(lock(&t.by_pair).is_empty());
        assert!(lock(&t.by_user).is_empty());
    }

    #[test]
    fn throttle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LoginThrottle>();
    }
}

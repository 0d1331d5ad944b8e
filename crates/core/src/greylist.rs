//! Greylisting (RFC 6647): the first delivery attempt of a (client
//! network, sender, recipient) triplet is refused with `451 4.7.1`; a retry
//! after `greylist_delay_secs` is accepted, and the client network is then
//! allowed for `greylist_lifetime_secs`. The state is a small file in
//! `data_dir` (`greylist.txt`), rewritten with `common::durable` on every
//! change, so a restart remembers it; with the PostgreSQL backend it is in
//! the database (`postoffice_pg::PgMarks`), so every node knows a triplet
//! another node saw (a sender retrying through another node is not
//! greylisted again). If the database cannot be asked, mail is accepted:
//! greylisting only delays, it must never block.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use postoffice_config::{Filter, cidr_contains, parse_cidr};
use postoffice_smtp::Reply;

/// The greylisting state and settings.
#[derive(Debug)]
pub struct Greylist {
    path: PathBuf,
    delay: u64,
    lifetime: u64,
    allow_nets: Vec<(IpAddr, u8)>,
    allow_domains: Vec<String>,
    state: Mutex<State>,
    shared: Option<std::sync::Arc<postoffice_pg::PgMarks>>,
}

#[derive(Debug, Default)]
struct State {
    /// Triplet key -> first attempt (Unix seconds).
    triplets: HashMap<String, u64>,
    /// Client network -> last accepted retry (Unix seconds).
    clients: HashMap<String, u64>,
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The /24 (IPv4) or /64 (IPv6) network of a client, as text.
fn network(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl Greylist {
    /// `None` when `filter.greylist` is off. Loads the state file (a
    /// missing file is an empty state; unreadable lines are skipped).
    pub fn open(
        filter: &Filter,
        data_dir: &std::path::Path,
        shared: Option<std::sync::Arc<postoffice_pg::PgMarks>>,
    ) -> Result<Option<Greylist>, String> {
        if !filter.greylist {
            return Ok(None);
        }
        let allow_nets = filter
            .greylist_allow
            .iter()
            .map(|s| {
                parse_cidr(s).ok_or_else(|| {
                    format!("filter.greylist_allow: {s:?} is not an IP address or CIDR network")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = data_dir.join("greylist.txt");
        let mut state = State::default();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                let mut parts = line.splitn(3, ' ');
                let (Some(kind), Some(t), Some(key)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Ok(t) = t.parse::<u64>() else { continue };
                match kind {
                    "t" => {
                        state.triplets.insert(key.to_string(), t);
                    }
                    "c" => {
                        state.clients.insert(key.to_string(), t);
                    }
                    _ => {}
                }
            }
        }
        Ok(Some(Greylist {
            path,
            delay: filter.greylist_delay_secs,
            lifetime: filter.greylist_lifetime_secs.max(1),
            allow_nets,
            allow_domains: filter
                .greylist_allow_domains
                .iter()
                .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                .collect(),
            state: Mutex::new(state),
            shared,
        }))
    }

    /// `Ok` to go on, or the 451 4.7.1 reply for this recipient.
    pub fn check(&self, ip: IpAddr, sender: &str, rcpt: &str) -> Result<(), Reply> {
        let ip = canonical(ip);
        if self
            .allow_nets
            .iter()
            .any(|(n, l)| cidr_contains(*n, *l, ip))
        {
            return Ok(());
        }
        let sender = sender.to_ascii_lowercase();
        let sender_domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        if !sender_domain.is_empty() && self.allow_domains.iter().any(|d| d == sender_domain) {
            return Ok(());
        }
        let net = network(ip);
        if let Some(marks) = &self.shared {
            return self.check_shared(marks, &net, &sender, rcpt);
        }
        let now = now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state
            .clients
            .get(&net)
            .is_some_and(|t| now.saturating_sub(*t) < self.lifetime)
        {
            return Ok(());
        }
        let key = format!("{net}|{sender}|{}", rcpt.to_ascii_lowercase());
        let first = match state.triplets.get(&key) {
            Some(first) if now.saturating_sub(*first) < self.lifetime => *first,
            _ => {
                state.triplets.insert(key, now);
                self.save(&mut state, now);
                return Err(Reply::greylisted(self.delay));
            }
        };
        let waited = now.saturating_sub(first);
        if waited < self.delay {
            return Err(Reply::greylisted(self.delay - waited));
        }
        state.triplets.remove(&key);
        state.clients.insert(net, now);
        self.save(&mut state, now);
        Ok(())
    }

    /// [`Greylist::check`] with the state in the database.
    fn check_shared(
        &self,
        marks: &postoffice_pg::PgMarks,
        net: &str,
        sender: &str,
        rcpt: &str,
    ) -> Result<(), Reply> {
        let lifetime = std::time::Duration::from_secs(self.lifetime);
        let client = format!("greylist c {net}");
        let triplet = format!("greylist t {net}|{sender}|{}", rcpt.to_ascii_lowercase());
        let decided = crate::inbound::blocking(|| {
            if marks.is_recent(&client, lifetime)? {
                return Ok(Ok(()));
            }
            let mark = marks.first_seen(&triplet, lifetime)?;
            if mark.fresh {
                return Ok(Err(Reply::greylisted(self.delay)));
            }
            if mark.age_secs < self.delay {
                return Ok(Err(Reply::greylisted(self.delay - mark.age_secs)));
            }
            marks.replace(&client, &triplet)?;
            marks.purge("greylist ", lifetime)?;
            Ok::<_, postoffice_pg::PgError>(Ok(()))
        });
        decided.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "greylisting cannot reach the database; accepting");
            Ok(())
        })
    }

    /// Drops expired entries and rewrites the file durably. A write error
    /// is logged: greylisting then only forgets, it never blocks mail.
    fn save(&self, state: &mut State, now: u64) {
        let lifetime = self.lifetime;
        state
            .triplets
            .retain(|_, t| now.saturating_sub(*t) < lifetime);
        state
            .clients
            .retain(|_, t| now.saturating_sub(*t) < lifetime);
        let mut text = String::new();
        for (k, t) in &state.triplets {
            text.push_str(&format!("t {t} {k}\n"));
        }
        for (k, t) in &state.clients {
            text.push_str(&format!("c {t} {k}\n"));
        }
        if let Err(e) = postoffice_common::durable::write(&self.path, text.as_bytes()) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot save the greylist");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::network;

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(network("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            network("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(network("::ffff:192.0.2.9".parse().unwrap()), "192.0.2.0/24");
    }
}

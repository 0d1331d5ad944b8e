//! The users a run logs in as, and the round-robin pool that hands them to
//! concurrent sessions.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// Users from a file: one address per line, or a Dovecot passwd-file
/// (`user@domain:{SCHEME}hash...`, only the part before the first `:` is
/// used). Blank lines and `#` comments are skipped. `limit` keeps the first
/// N.
pub fn from_file(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading users file {}", path.display()))?;
    let mut users: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').next().unwrap_or(l).to_string())
        .collect();
    if let Some(n) = limit {
        if users.len() < n {
            bail!(
                "{} lists {} users, fewer than the {n} asked for",
                path.display(),
                users.len()
            );
        }
        users.truncate(n);
    }
    if users.is_empty() {
        bail!("{} lists no users", path.display());
    }
    Ok(users)
}

/// Users from a pattern such as `user{n}@bench.test`, n = first..first+count.
pub fn from_pattern(pattern: &str, first: usize, count: usize) -> Result<Vec<String>> {
    if !pattern.contains("{n}") {
        bail!("--user-pattern {pattern:?} has no {{n}} placeholder");
    }
    if count == 0 {
        bail!("--users must be at least 1");
    }
    Ok((first..first + count)
        .map(|n| pattern.replace("{n}", &n.to_string()))
        .collect())
}

/// Hands out users round-robin, skipping users that are in a session, so
/// that with concurrency <= users no two sessions of one user overlap
/// (postoffice locks the maildrop; a second session would get IN-USE). With
/// more sessions than users, users are shared and IN-USE becomes possible,
/// which the report counts.
pub struct UserPool {
    users: Vec<String>,
    inner: Mutex<PoolState>,
}

struct PoolState {
    busy: Vec<u32>,
    next: usize,
}

impl UserPool {
    pub fn new(users: Vec<String>) -> UserPool {
        let n = users.len();
        UserPool {
            users,
            inner: Mutex::new(PoolState {
                busy: vec![0; n],
                next: 0,
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// The user at `index`.
    pub fn name(&self, index: usize) -> &str {
        &self.users[index]
    }

    /// Take the next free user (or, if all are busy, the next one anyway).
    pub fn acquire(&self) -> (usize, &str) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.users.len();
        let start = s.next;
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| s.busy[i] == 0)
            .unwrap_or(start % n);
        s.busy[pick] += 1;
        s.next = (pick + 1) % n;
        (pick, &self.users[pick])
    }

    pub fn release(&self, index: usize) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.busy[index] = s.busy[index].saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_and_file() {
        let u = from_pattern("user{n}@bench.test", 1, 3).unwrap();
        assert_eq!(
            u,
            ["user1@bench.test", "user2@bench.test", "user3@bench.test"]
        );
        assert!(from_pattern("user@x", 1, 3).is_err());
        let dir = std::env::temp_dir().join(format!("po-bench-users-{}", std::process::id()));
        std::fs::write(&dir, "# c\na@x:{SHA512-CRYPT}$6$s$h\n\nb@x\n").unwrap();
        assert_eq!(from_file(&dir, None).unwrap(), ["a@x", "b@x"]);
        assert_eq!(from_file(&dir, Some(1)).unwrap(), ["a@x"]);
        assert!(from_file(&dir, Some(3)).is_err());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn pool_never_doubles_up_while_users_are_free() {
        let pool = UserPool::new(from_pattern("u{n}", 1, 3).unwrap());
        let (a, _) = pool.acquire();
        let (b, _) = pool.acquire();
        let (c, _) = pool.acquire();
        assert_eq!([a, b, c], [0, 1, 2]);
        pool.release(1);
        // Round-robin continues at 0, which is busy: the free one is picked.
        assert_eq!(pool.acquire().0, 1);
        pool.release(0);
        pool.release(2);
        assert_eq!(pool.acquire().0, 2);
        assert_eq!(pool.acquire().0, 0);
        // All busy now: sharing is allowed rather than blocking.
        let (d, _) = pool.acquire();
        assert!(d < 3);
    }
}

//! Where the node secrets live: the SRS secret ([`crate::srs`]) and the
//! DKIM private keys ([`crate::dkim`]).
//!
//! A key has a name (`srs`, `dkim/<domain>`) and a value (the bytes of
//! what used to be its file: the base64 SRS secret, the PEM DKIM key).
//! With the Maildir backend a key is the file `<data_dir>/<name>.key`
//! (`srs.key`, `dkim/<domain>.key`), written with
//! [`postoffice_common::durable`] (mode 0600), exactly as before. With the
//! PostgreSQL backend it is a row of `node_keys` ([`postoffice_pg::PgKeys`]),
//! so every node signs with the same DKIM key and accepts the SRS
//! addresses another node made, without copying files between nodes.
//!
//! Making a key is [`KeyStore::create_if_absent`]: with PostgreSQL the first
//! insert wins (`ON CONFLICT DO NOTHING`, then read back), so two nodes
//! making the SRS secret at once end up with one secret.
//!
//! Reading is [`KeyStore::get_cached`] on the signing path: the file is
//! read every time (as before); a database value is kept [`CACHE_TTL`]
//! (a `postoffice dkim generate` on one node is used by every node within
//! that time, and a node signing many messages asks the database at most
//! once per domain per [`CACHE_TTL`]). When the database cannot be reached
//! the last value read is used.
//!
//! Calls may come from async worker threads (a bounce is signed there):
//! a database call then runs on a short-lived thread of its own, since the
//! pg client's blocking calls must not run on a runtime's thread.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postoffice_pg::PgKeys;

/// How long a key read from the database is used before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// The node secrets: files in the data directory, or the database.
#[derive(Clone)]
pub enum KeyStore {
    /// `<data_dir>/<name>.key`.
    Files(PathBuf),
    /// The `node_keys` table, with a short-lived cache.
    Postgres(Arc<PgKeyCache>),
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyStore::Files(dir) => f.debug_tuple("Files").field(dir).finish(),
            KeyStore::Postgres(p) => f.debug_tuple("Postgres").field(&p.keys).finish(),
        }
    }
}

/// A value read from the database (`None`: no such key), and when.
type Cached = (Instant, Option<Vec<u8>>);

/// [`PgKeys`] and the values read recently.
pub struct PgKeyCache {
    keys: PgKeys,
    cache: Mutex<HashMap<String, Cached>>,
}

/// Runs `f` off any tokio runtime thread (see the module documentation).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn db_error(e: postoffice_pg::PgError) -> io::Error {
    io::Error::other(e.to_string())
}

impl KeyStore {
    /// Keys as files of `data_dir`.
    pub fn files(data_dir: &Path) -> KeyStore {
        KeyStore::Files(data_dir.to_path_buf())
    }

    /// Keys in the database.
    pub fn postgres(keys: PgKeys) -> KeyStore {
        KeyStore::Postgres(Arc::new(PgKeyCache {
            keys,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// The file of key `name` (the Maildir backend's place for it).
    pub fn file_path(data_dir: &Path, name: &str) -> PathBuf {
        data_dir.join(format!("{name}.key"))
    }

    /// Where key `name` is, for messages.
    pub fn describe(&self, name: &str) -> String {
        match self {
            KeyStore::Files(dir) => Self::file_path(dir, name).display().to_string(),
            KeyStore::Postgres(p) => format!("key {name} in the database {}", p.keys.place()),
        }
    }

    /// The value of key `name` as stored now (`None`: there is none).
    pub fn get(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self {
            KeyStore::Files(dir) => match std::fs::read(Self::file_path(dir, name)) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            KeyStore::Postgres(p) => {
                let value = off_runtime(|| p.keys.get(name)).map_err(db_error)?;
                p.remember(name, value.clone());
                Ok(value)
            }
        }
    }

    /// The names of every key stored (`srs`, `dkim/<domain>`), sorted:
    /// with files, `<data_dir>/srs.key` and `<data_dir>/dkim/*.key`.
    pub fn names(&self) -> io::Result<Vec<String>> {
        match self {
            KeyStore::Files(dir) => {
                let mut names = Vec::new();
                if Self::file_path(dir, "srs").is_file() {
                    names.push("srs".to_string());
                }
                match std::fs::read_dir(dir.join("dkim")) {
                    Ok(entries) => {
                        for entry in entries {
                            let name = entry?.file_name();
                            if let Some(domain) = name.to_str().and_then(|n| n.strip_suffix(".key"))
                                && !domain.starts_with('.')
                            {
                                names.push(format!("dkim/{domain}"));
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                names.sort();
                Ok(names)
            }
            KeyStore::Postgres(p) => off_runtime(|| p.keys.list("")).map_err(db_error),
        }
    }

    /// [`KeyStore::get`], answered from memory when the database was
    /// asked less than [`CACHE_TTL`] ago (files are always read), or with
    /// the last value read when the database fails.
    pub fn get_cached(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let KeyStore::Postgres(p) = self else {
            return self.get(name);
        };
        let last = p
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some((at, value)) = &last
            && at.elapsed() < CACHE_TTL
        {
            return Ok(value.clone());
        }
        match self.get(name) {
            Ok(v) => Ok(v),
            Err(e) => match last {
                Some((_, value)) => {
                    tracing::warn!(key = name, error = %e, "cannot read a key; using the last value read");
                    Ok(value)
                }
                None => Err(e),
            },
        }
    }

    /// The value of key `name`, stored as `make()` returns it when there is
    /// none yet; `true` with it when this call stored it. With the
    /// database, of two callers at once exactly one stores its value and
    /// both get that one.
    pub fn create_if_absent(
        &self,
        name: &str,
        make: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<(Vec<u8>, bool)> {
        if let Some(v) = self.get(name)? {
            return Ok((v, false));
        }
        let ours = make()?;
        match self {
            KeyStore::Files(dir) => {
                let path = Self::file_path(dir, name);
                if let Some(parent) = path.parent() {
                    postoffice_common::durable::create_dir_all(parent)?;
                }
                postoffice_common::durable::write(&path, &ours)?;
                // Another process may have won the race: use what is there.
                let stored = std::fs::read(&path)?;
                let created = stored == ours;
                Ok((stored, created))
            }
            KeyStore::Postgres(p) => {
                let now = off_runtime(|| p.keys.create_if_absent(name, &ours)).map_err(db_error)?;
                p.remember(name, Some(now.clone()));
                let created = now == ours;
                Ok((now, created))
            }
        }
    }
}

impl PgKeyCache {
    fn remember(&self, name: &str, value: Option<Vec<u8>>) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_where_they_always_were() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::files(dir.path());
        assert_eq!(keys.get("dkim/a.test").unwrap(), None);
        let (v, created) = keys
            .create_if_absent("dkim/a.test", || Ok(b"one".to_vec()))
            .unwrap();
        assert_eq!((v.as_slice(), created), (&b"one"[..], true));
        let (v, created) = keys
            .create_if_absent("dkim/a.test", || Ok(b"two".to_vec()))
            .unwrap();
        assert_eq!((v.as_slice(), created), (&b"one"[..], false));
        assert_eq!(
            std::fs::read(dir.path().join("dkim/a.test.key")).unwrap(),
            b"one"
        );
        keys.create_if_absent("srs", || Ok(b"s".to_vec())).unwrap();
        assert!(dir.path().join("srs.key").exists());
    }
}

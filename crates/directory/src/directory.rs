//! The on-disk directory: `<data_dir>/directory.toml`, its automatic reload
//! and its crash- and race-safe mutation.
//!
//! Readers (the server) never lock: they compare the file's identity
//! (mtime, length, inode, ctime from one `stat`) with what they loaded and
//! re-read it when it changed. Writers (the CLI, possibly several at once)
//! serialise on an exclusive lock of `directory.lock`, re-read the file
//! under the lock, apply their change, and replace the file atomically
//! (write temp file, fsync, rename, fsync directory). Readers therefore see
//! either the old or the new file, never a half-written one, and no
//! writer's change is lost.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use postoffice_common::durable::{self, AtomicFile};

use crate::alias::{Alias, AliasChange};
use crate::data::DirectoryData;
use crate::error::{Error, Result};
use crate::password::validate_hash;
use crate::policy::{DomainPolicy, SendLimitOverrides, UserPolicy};

/// File name of the directory inside the data directory.
pub const DIRECTORY_FILE: &str = "directory.toml";
/// File name of the writers' lock file inside the data directory.
pub const LOCK_FILE: &str = "directory.lock";

/// Where the directory document lives when it is not `directory.toml`: a
/// database that several nodes share (`postoffice_pg::PgDirectory`). The
/// document is the same TOML text as the file, with a version number that
/// every update increases.
pub trait SharedDocument: Send + Sync {
    /// Where it is, for people (no password).
    fn place(&self) -> String;
    /// The current version (0: there is no document yet). Cheap: one
    /// small query.
    fn version(&self) -> Result<i64>;
    /// The document and its version (`None` and 0 when there is none).
    fn load(&self) -> Result<(Option<String>, i64)>;
    /// Replaces the document under an exclusive lock: `change` gets the
    /// current text (read under the lock) and returns the new one, which is
    /// stored with the next version; nothing is stored when `change`
    /// fails. `change` is called at most once. Returns the new version.
    fn update(&self, change: &mut dyn FnMut(Option<&str>) -> Result<String>) -> Result<i64>;
}

/// How often a directory in a [`SharedDocument`] is asked whether it
/// changed (by a background thread; `snapshot` never waits on it).
const SHARED_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Handle on `<data_dir>/directory.toml` (or a [`SharedDocument`]).
/// `Send + Sync`; share it via `Arc`.
pub struct Directory {
    data_dir: PathBuf,
    path: PathBuf,
    state: Arc<Mutex<State>>,
    shared: Option<Arc<dyn SharedDocument>>,
}

struct State {
    data: Arc<DirectoryData>,
    /// Identity of the file `data` came from (`None` = file was absent),
    /// or of the last file that failed to load, so a broken file is parsed
    /// once rather than on every snapshot.
    stamp: Option<Stamp>,
    /// The version of a shared document `data` came from.
    version: i64,
    last_error: Option<String>,
}

/// What identifies one version of the file. Inode and ctime are included
/// because the mtime alone can be coarse, and a rename always gives a new
/// inode and ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        let (ino, ctime, ctime_nsec) = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), meta.ctime(), meta.ctime_nsec())
        };
        #[cfg(not(unix))]
        let (ino, ctime, ctime_nsec) = (0, 0, 0);
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino,
            ctime,
            ctime_nsec,
        }
    }
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// Opens the directory stored in `data_dir`.
    ///
    /// A missing `directory.toml` is an empty directory (fresh install). An
    /// existing but invalid file is an error: starting a server that
    /// silently knows no users would be worse than not starting.
    pub fn open(data_dir: &Path) -> Result<Directory> {
        let path = data_dir.join(DIRECTORY_FILE);
        let (data, stamp) = read_file(&path)?;
        Ok(Directory {
            data_dir: data_dir.to_owned(),
            path,
            state: Arc::new(Mutex::new(State {
                data: Arc::new(data),
                stamp,
                version: 0,
                last_error: None,
            })),
            shared: None,
        })
    }

    /// Opens the directory kept in `doc` (shared by several nodes). Reads
    /// it now (an unreachable database is an error: a server that knows no
    /// users must not start); then a background thread asks every second
    /// whether another node or the CLI changed it, so changes take effect
    /// everywhere within seconds while [`Directory::snapshot`] stays a
    /// memory read. `data_dir` still holds what is per node (the lock file
    /// is not used).
    pub fn open_shared(data_dir: &Path, doc: Arc<dyn SharedDocument>) -> Result<Directory> {
        let (text, version) = doc.load()?;
        let data = parse_shared(doc.as_ref(), text.as_deref())?;
        let state = Arc::new(Mutex::new(State {
            data: Arc::new(data),
            stamp: None,
            version,
            last_error: None,
        }));
        let weak = Arc::downgrade(&state);
        let watcher = Arc::clone(&doc);
        let spawned = std::thread::Builder::new()
            .name("directory-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(SHARED_RECHECK);
                    let Some(state) = weak.upgrade() else { return };
                    refresh_shared(watcher.as_ref(), &state);
                }
            });
        if let Err(e) = spawned {
            return Err(Error::io("start the directory watcher for", data_dir, e));
        }
        Ok(Directory {
            data_dir: data_dir.to_owned(),
            path: data_dir.join(DIRECTORY_FILE),
            state,
            shared: Some(doc),
        })
    }

    /// Reads a shared directory again now if it changed (the background
    /// thread does this every second; tests and the CLI may want it at
    /// once). Does nothing for `directory.toml`.
    pub fn refresh(&self) {
        if let Some(doc) = &self.shared {
            refresh_shared(doc.as_ref(), &self.state);
        }
    }

    /// The whole directory as the TOML document `directory.toml` holds
    /// (for copying it to another storage backend).
    pub fn export(&self) -> Result<String> {
        self.snapshot().to_toml()
    }

    /// Replaces the whole directory with `text`, a document from
    /// [`Directory::export`], checked as a load would check it (nothing is
    /// stored when it is invalid). `false`: it already was exactly that.
    pub fn replace(&self, text: &str) -> Result<bool> {
        let new = DirectoryData::from_toml(text, &self.path)?;
        let wanted = new.to_toml()?;
        if self.export()? == wanted {
            return Ok(false);
        }
        self.mutate(|data| {
            *data = new;
            Ok(())
        })?;
        Ok(true)
    }

    /// Path of `directory.toml`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current directory contents.
    ///
    /// Costs one `stat` call; if the file changed since the last call (for
    /// example because the CLI added a user) it is re-read first. If the new
    /// file cannot be read or parsed, the previous data keeps being served
    /// and the problem is available from [`Directory::last_reload_error`]:
    /// a typo in a hand edit must not lock every user out.
    pub fn snapshot(&self) -> Arc<DirectoryData> {
        let mut st = lock(&self.state);
        if self.shared.is_some() {
            return Arc::clone(&st.data);
        }
        let current = match fs::metadata(&self.path) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                st.last_error = Some(Error::io("inspect", &self.path, e).to_string());
                return Arc::clone(&st.data);
            }
        };
        if current != st.stamp {
            match read_file(&self.path) {
                Ok((data, stamp)) => {
                    st.data = Arc::new(data);
                    st.stamp = stamp;
                    st.last_error = None;
                }
                Err(e) => {
                    st.stamp = current;
                    st.last_error = Some(e.to_string());
                }
            }
        }
        Arc::clone(&st.data)
    }

    /// Why the most recent reload attempt failed, if it did; `None` once a
    /// good file has been loaded again. The server may log this.
    pub fn last_reload_error(&self) -> Option<String> {
        lock(&self.state).last_error.clone()
    }

    /// Adds a domain; returns its canonical name.
    pub fn add_domain(&self, name: &str) -> Result<String> {
        self.mutate(|d| d.add_domain(name))
    }

    /// Removes a domain. Refused while it still has users, so that removing
    /// a domain never silently deletes accounts.
    pub fn remove_domain(&self, name: &str) -> Result<()> {
        self.mutate(|d| d.remove_domain(name))
    }

    /// Adds a user with an already-hashed password (see
    /// [`crate::hash_password`]); the domain must exist. Returns the
    /// canonical address.
    pub fn add_user(&self, address: &str, password_hash: &str) -> Result<String> {
        validate_hash(password_hash)?;
        self.mutate(|d| d.add_user(address, password_hash))
    }

    /// Adds an alias, or targets to an existing one (see
    /// [`AliasChange`]). `check` sees the directory as it would be and may
    /// refuse it (the core uses it to refuse loops and too deep
    /// expansions); nothing is written then. Returns the stored alias.
    pub fn add_alias(
        &self,
        change: &AliasChange<'_>,
        check: impl FnOnce(&DirectoryData, &Alias) -> Result<()>,
    ) -> Result<Alias> {
        self.mutate(|d| {
            let alias = d.add_alias(change)?;
            check(d, &alias)?;
            Ok(alias)
        })
    }

    /// Removes one target of an alias (the alias goes with its last
    /// target), or the whole alias when `target` is `None`. Returns what is
    /// left of it.
    pub fn remove_alias(&self, address: &str, target: Option<&str>) -> Result<Option<Alias>> {
        self.mutate(|d| d.remove_alias(address, target))
    }

    /// Makes `name` a domain alias of the existing domain `target`:
    /// `x@name` is `x@target`. Returns both canonical names.
    pub fn add_domain_alias(&self, name: &str, target: &str) -> Result<(String, String)> {
        self.mutate(|d| d.add_domain_alias(name, target))
    }

    /// Removes a domain alias; returns its canonical name.
    pub fn remove_domain_alias(&self, name: &str) -> Result<String> {
        self.mutate(|d| d.remove_domain_alias(name))
    }

    /// Removes a user from the directory. Their stored mail is not touched.
    pub fn remove_user(&self, address: &str) -> Result<()> {
        self.mutate(|d| d.remove_user(address))
    }

    /// Replaces a user's password hash.
    pub fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        validate_hash(password_hash)?;
        self.mutate(|d| {
            d.user_mut(address)?.password_hash = password_hash.to_owned();
            Ok(())
        })
    }

    /// Adds an administrator of the web interface with an already-hashed
    /// password; returns the canonical name.
    pub fn add_admin(&self, name: &str, password_hash: &str) -> Result<String> {
        validate_hash(password_hash)?;
        self.mutate(|d| d.add_admin(name, password_hash))
    }

    /// Replaces an administrator's password hash.
    pub fn set_admin_password(&self, name: &str, password_hash: &str) -> Result<()> {
        validate_hash(password_hash)?;
        self.mutate(|d| {
            d.admin_mut(name)?.password_hash = password_hash.to_owned();
            Ok(())
        })
    }

    /// Removes an administrator.
    pub fn remove_admin(&self, name: &str) -> Result<()> {
        self.mutate(|d| d.remove_admin(name))
    }

    /// Enables or disables a user's logins without deleting anything.
    pub fn set_user_disabled(&self, address: &str, disabled: bool) -> Result<()> {
        self.mutate(|d| {
            d.user_mut(address)?.disabled = disabled;
            Ok(())
        })
    }

    /// Edits a user's own sending limits under the writers' lock.
    pub fn update_user_send_limits(
        &self,
        address: &str,
        edit: impl FnOnce(&mut SendLimitOverrides),
    ) -> Result<()> {
        self.mutate(|d| {
            edit(&mut d.user_mut(address)?.send_limits);
            Ok(())
        })
    }

    /// Sets where a user's mail is forwarded (`targets`, normalised;
    /// empty: no forwarding) and whether a copy is kept.
    pub fn set_user_forward(
        &self,
        address: &str,
        targets: &[String],
        keep_copy: bool,
    ) -> Result<()> {
        let mut normalized = Vec::with_capacity(targets.len());
        for t in targets {
            let t = crate::normalize_address(t)?;
            if !normalized.contains(&t) {
                normalized.push(t);
            }
        }
        self.mutate(|d| {
            let user = d.user_mut(address)?;
            user.forward = normalized;
            user.forward_keep_copy = keep_copy;
            Ok(())
        })
    }

    /// Sets (or, with `None`, removes) a user's vacation auto-reply.
    pub fn set_user_vacation(
        &self,
        address: &str,
        vacation: Option<crate::data::Vacation>,
    ) -> Result<()> {
        self.mutate(|d| {
            d.user_mut(address)?.vacation = vacation;
            Ok(())
        })
    }

    /// Replaces all of a user's policy overrides with `policy` (`None`
    /// fields inherit from the domain). To change one field and keep the
    /// others, use [`Directory::update_user_policy`].
    pub fn set_user_policy(&self, address: &str, policy: UserPolicy) -> Result<()> {
        self.update_user_policy(address, |p| *p = policy)
    }

    /// Edits a user's policy overrides under the writers' lock, so
    /// concurrent edits of different fields do not overwrite each other.
    pub fn update_user_policy(
        &self,
        address: &str,
        edit: impl FnOnce(&mut UserPolicy),
    ) -> Result<()> {
        self.mutate(|d| {
            let user = d.user_mut(address)?;
            let mut policy = user.policy;
            edit(&mut policy);
            policy.validate()?;
            user.policy = policy;
            Ok(())
        })
    }

    /// Replaces all of a domain's policy overrides with `policy`.
    pub fn set_domain_policy(&self, name: &str, policy: DomainPolicy) -> Result<()> {
        self.update_domain_policy(name, |p| *p = policy)
    }

    /// Edits a domain's policy overrides under the writers' lock.
    pub fn update_domain_policy(
        &self,
        name: &str,
        edit: impl FnOnce(&mut DomainPolicy),
    ) -> Result<()> {
        self.mutate(|d| {
            let domain = d.domain_mut(name)?;
            let mut policy = domain.policy;
            edit(&mut policy);
            policy.validate()?;
            domain.policy = policy;
            Ok(())
        })
    }

    /// Runs `change` on the current file contents under the writers' lock
    /// and atomically replaces the file with the result. Nothing is written
    /// if `change` fails.
    pub(crate) fn mutate<T>(
        &self,
        change: impl FnOnce(&mut DirectoryData) -> Result<T>,
    ) -> Result<T> {
        if let Some(doc) = &self.shared {
            return self.mutate_shared(doc.as_ref(), change);
        }
        durable::create_dir_all(&self.data_dir)
            .map_err(|e| Error::io("create", &self.data_dir, e))?;
        let lock_path = self.data_dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(durable::FILE_MODE)
            .open(&lock_path)
            .map_err(|e| Error::io("open lock file", &lock_path, e))?;
        lock_file
            .lock()
            .map_err(|e| Error::io("lock", &lock_path, e))?;

        // Re-read under the lock: another writer may have changed the file
        // since our last snapshot, and its change must not be lost.
        let (mut data, _) = read_file(&self.path)?;
        let out = change(&mut data)?;
        data.clear_cache();
        let text = data.to_toml()?;
        self.write_atomically(text.as_bytes())?;

        // Publish our own result immediately, so a snapshot right after a
        // mutation sees it even on file systems with coarse timestamps.
        if let Ok(meta) = fs::metadata(&self.path) {
            let mut st = lock(&self.state);
            st.data = Arc::new(data);
            st.stamp = Some(Stamp::of(&meta));
            st.last_error = None;
        }
        // Dropping the file releases the lock as well; unlocking explicitly
        // just makes the end of the critical section obvious.
        let _ = lock_file.unlock();
        Ok(out)
    }

    /// [`Directory::mutate`] on a shared document: the read, the change
    /// and the write in one database transaction.
    fn mutate_shared<T>(
        &self,
        doc: &dyn SharedDocument,
        change: impl FnOnce(&mut DirectoryData) -> Result<T>,
    ) -> Result<T> {
        let mut change = Some(change);
        let mut out = None;
        let mut result = None;
        let version = doc.update(&mut |text| {
            let change = change.take().ok_or_else(|| Error::Shared {
                action: "update",
                place: doc.place(),
                message: "the change was asked for twice".into(),
            })?;
            let mut data = parse_shared(doc, text)?;
            out = Some(change(&mut data)?);
            data.clear_cache();
            let text = data.to_toml()?;
            result = Some(data);
            Ok(text)
        })?;
        let (Some(out), Some(data)) = (out, result) else {
            return Err(Error::Shared {
                action: "update",
                place: doc.place(),
                message: "the change was not applied".into(),
            });
        };
        let mut st = lock(&self.state);
        if version >= st.version {
            st.data = Arc::new(data);
            st.version = version;
            st.last_error = None;
        }
        Ok(out)
    }

    fn write_atomically(&self, contents: &[u8]) -> Result<()> {
        // Temporary file, fsync, rename, fsync of the directory; 0600 (the
        // file holds password hashes).
        let mut file = AtomicFile::create(&self.path)
            .map_err(|e| Error::io("create a temporary file for", &self.path, e))?;
        // Keep the previous file's owner, so that running the CLI as root
        // does not leave a file the server's user cannot read.
        if let Ok(old) = fs::metadata(&self.path) {
            use std::os::unix::fs::MetadataExt;
            let _ = std::os::unix::fs::fchown(file.file(), Some(old.uid()), Some(old.gid()));
        }
        file.write_all(contents)
            .map_err(|e| Error::io("write", &self.path, e))?;
        file.commit()
            .map_err(|e| Error::io("replace", &self.path, e))
    }
}

/// Reads and parses the file. Metadata comes from the opened handle so the
/// stamp describes exactly the bytes that were parsed.
fn read_file(path: &Path) -> Result<(DirectoryData, Option<Stamp>)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((DirectoryData::default(), None));
        }
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io("inspect", path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Parse {
        path: path.to_owned(),
        message: format!(
            "it is not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let data = DirectoryData::from_toml(&text, path)?;
    Ok((data, Some(Stamp::of(&meta))))
}

/// Parses a shared document (none yet: an empty directory).
fn parse_shared(doc: &dyn SharedDocument, text: Option<&str>) -> Result<DirectoryData> {
    match text {
        None => Ok(DirectoryData::default()),
        Some(text) => {
            DirectoryData::from_toml(text, Path::new("directory")).map_err(|e| Error::SharedParse {
                place: doc.place(),
                message: e.to_string(),
            })
        }
    }
}

/// Loads a shared document into `state` when its version moved on. On an
/// error the last good data keeps being served (and the error is kept for
/// [`Directory::last_reload_error`]).
fn refresh_shared(doc: &dyn SharedDocument, state: &Mutex<State>) {
    let known = lock(state).version;
    let result = doc.version().and_then(|v| {
        if v == known {
            return Ok(None);
        }
        let (text, version) = doc.load()?;
        Ok(Some((parse_shared(doc, text.as_deref())?, version)))
    });
    let mut st = lock(state);
    match result {
        Ok(None) => st.last_error = None,
        Ok(Some((data, version))) => {
            // A concurrent local update may already have published a newer one.
            if version >= st.version {
                st.data = Arc::new(data);
                st.version = version;
            }
            st.last_error = None;
        }
        Err(e) => st.last_error = Some(e.to_string()),
    }
}

/// A panic while holding the state lock leaves consistent data behind (all
/// fields are replaced whole), so poisoning is ignored rather than turned
/// into a panic in every later caller.
fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Giving up root: a server started as root (to listen on ports below
//! 1024) switches to its system user before it touches any data, and the
//! administration commands run as root switch the same way, so that every
//! file under the data directory belongs to that user.
//!
//! The switch goes through libc (`nix`): `initgroups`, `setgid`, `setuid`.
//! glibc applies `setuid`/`setgid` to every thread of the process, so it
//! stays correct even if a thread (jemalloc's background thread, say)
//! already exists. After the switch, getting root back is tried and must
//! fail.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// Why the switch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The user does not exist in the system's user database.
    #[error("user {0:?} does not exist (create it, e.g. `adduser --system --group {0}`)")]
    NoSuchUser(String),
    /// Looking the user up failed.
    #[error("cannot look up user {name:?}: {source}")]
    Lookup {
        /// The user.
        name: String,
        /// Why.
        source: nix::Error,
    },
    /// Only root can switch to another user.
    #[error(
        "cannot switch to user {name:?} (uid {target}): this process runs as uid {current}, not root"
    )]
    NotRoot {
        /// The user asked for.
        name: String,
        /// Its uid.
        target: u32,
        /// Ours.
        current: u32,
    },
    /// A system call of the switch failed.
    #[error("cannot switch to user {name:?}: {call} failed: {source}")]
    Switch {
        /// The user.
        name: String,
        /// initgroups, setgid or setuid.
        call: &'static str,
        /// Why.
        source: nix::Error,
    },
    /// After the switch the process could become root again.
    #[error("switched to user {0:?}, but the process could still become root again; stopping")]
    StillRoot(String),
    /// The data directory could not be prepared for the user.
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A system user looked up by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemUser {
    /// The login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    Uid::effective().as_raw()
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// Look `name` up in the system's user database.
pub fn lookup(name: &str) -> Result<SystemUser, PrivilegeError> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(SystemUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(PrivilegeError::NoSuchUser(name.to_string())),
        Err(source) => Err(PrivilegeError::Lookup {
            name: name.to_string(),
            source,
        }),
    }
}

/// Become `user`: its supplementary groups, its primary group, then its
/// uid (real, effective and saved). Nothing happens when the process
/// already runs as that uid; a process that is neither root nor `user`
/// gets [`PrivilegeError::NotRoot`].
pub fn switch_to(user: &SystemUser) -> Result<(), PrivilegeError> {
    let current = effective_uid();
    if current == user.uid {
        return Ok(());
    }
    if current != 0 {
        return Err(PrivilegeError::NotRoot {
            name: user.name.clone(),
            target: user.uid,
            current,
        });
    }
    let fail = |call, source| PrivilegeError::Switch {
        name: user.name.clone(),
        call,
        source,
    };
    let gid = Gid::from_raw(user.gid);
    let cname = CString::new(user.name.as_str())
        .map_err(|_| PrivilegeError::NoSuchUser(user.name.clone()))?;
    nix::unistd::initgroups(&cname, gid).map_err(|e| fail("initgroups", e))?;
    nix::unistd::setgid(gid).map_err(|e| fail("setgid", e))?;
    nix::unistd::setuid(Uid::from_raw(user.uid)).map_err(|e| fail("setuid", e))?;
    if user.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::StillRoot(user.name.clone()));
    }
    Ok(())
}

/// Make sure `data_dir` is usable by `user` before switching to it (we
/// are root): create it (mode 0700, owned by `user`) when it does not
/// exist; refuse one that belongs to somebody else, with the command that
/// fixes it, rather than fail later on the first file.
pub fn prepare_data_dir(data_dir: &Path, user: &SystemUser) -> Result<(), PrivilegeError> {
    use std::os::unix::fs::MetadataExt;
    let err = |message: String| PrivilegeError::DataDir {
        path: data_dir.to_path_buf(),
        message,
    };
    match std::fs::metadata(data_dir) {
        Ok(meta) => {
            if meta.uid() != user.uid {
                return Err(err(format!(
                    "belongs to uid {}, not to {} (uid {}), the user the server runs as: \
                     run `chown -R {}: {}`",
                    meta.uid(),
                    user.name,
                    user.uid,
                    user.name,
                    data_dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::durable::create_dir_all(data_dir)
                .map_err(|e| err(format!("cannot create it: {e}")))?;
            std::os::unix::fs::chown(data_dir, Some(user.uid), Some(user.gid))
                .map_err(|e| err(format!("cannot give it to {}: {e}", user.name)))
        }
        Err(e) => Err(err(format!("cannot read it: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_nobody_is_unknown() {
        let root = lookup("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(
            lookup("no-such-user-postoffice-test"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
    }

    /// Switching to the uid we already have does nothing and succeeds.
    #[test]
    fn switching_to_oneself_is_a_no_op() {
        let me = SystemUser {
            name: "me".into(),
            uid: effective_uid(),
            gid: nix::unistd::Gid::effective().as_raw(),
        };
        switch_to(&me).unwrap();
        assert_eq!(effective_uid(), me.uid);
    }

    #[test]
    fn a_data_dir_of_another_user_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let other = SystemUser {
            name: "someone".into(),
            uid: effective_uid().wrapping_add(4242),
            gid: 4242,
        };
        let e = prepare_data_dir(dir.path(), &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chown -R someone:"), "{e}");
        let me = SystemUser {
            name: "me".into(),
            uid: effective_uid(),
            gid: nix::unistd::Gid::effective().as_raw(),
        };
        let fresh = dir.path().join("data");
        prepare_data_dir(&fresh, &me).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}

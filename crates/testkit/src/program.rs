//! Finding third-party programs (dnsmasq, clamd, openssl, ...).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where daemons live; a non-root PATH often lacks them.
const SBIN: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// The executable `name` from PATH, then from the sbin directories, or
/// `None` when there is none.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The executable `name`, which the test needs: panics, naming the Debian
/// `package` to install, when it is missing. On every machine: a test that
/// cannot run must not pass.
#[track_caller]
pub fn program(name: &str, package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed, and this test needs it: \
             apt-get install -y --no-install-recommends {package}"
        )
    })
}

/// The executable `name`, or `None` (with a note on stderr) when it is
/// missing. Only for a test that says, in a comment where it calls this,
/// why it may be skipped; every other test uses [`program`].
pub fn optional_program(name: &str, package: &str) -> Option<PathBuf> {
    let found = find_program(name);
    if found.is_none() {
        eprintln!(
            "SKIPPED (optional): {name} not found; \
             apt-get install -y --no-install-recommends {package} to run this part"
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_a_made_up_name() {
        assert!(find_program("sh").is_some());
        assert_eq!(find_program("postoffice-testkit-no-such-program"), None);
        assert_eq!(
            optional_program("postoffice-testkit-no-such-program", "none"),
            None
        );
    }

    #[test]
    fn a_missing_program_fails_and_names_the_package() {
        let err = std::panic::catch_unwind(|| {
            program("postoffice-testkit-no-such-program", "some-package")
        })
        .expect_err("must panic");
        let msg = err
            .downcast_ref::<String>()
            .expect("formatted panic message");
        assert!(
            msg.contains("apt-get install -y --no-install-recommends some-package"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_without_execute_permission_is_not_a_program() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prog");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        assert!(!is_executable(&file));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(is_executable(&file));
        assert!(!is_executable(dir.path()));
    }
}

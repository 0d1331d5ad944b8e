//! Helpers for the integration tests: finding the third-party daemons,
//! free loopback ports, and killing what a test started.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;

/// Looks for an executable in PATH, then in the sbin directories (dnsmasq
/// and clamd live in /usr/sbin, which a non-root PATH often lacks).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The daemon binary, or `None` to skip the test. Under CI=true a missing
/// binary fails the test instead: CI must install the Debian package.
pub fn binary_or_skip(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = find_binary(name) {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is not installed but CI=true: apt-get install -y {package}");
    }
    eprintln!("SKIPPED: {name} not found; apt-get install -y {package} to run this test");
    None
}

/// A loopback port that was free for both TCP and UDP a moment ago.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// A child process killed (and reaped) when dropped.
pub struct Daemon {
    pub name: &'static str,
    pub child: Child,
    /// Where its output goes, shown when it misbehaves.
    pub log: PathBuf,
}

impl Daemon {
    /// Whether the process has exited already.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

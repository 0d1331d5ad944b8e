//! A private PostgreSQL server: initdb into a temporary directory, the
//! postmaster on a free loopback port with a private socket directory,
//! stopped (and its data removed) on drop. Never the machine's own
//! cluster.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::net::free_port;
use crate::wait::poll_until;

/// How long a new or restarted server may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long a stopping server may take before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// The database (and its owner, the superuser) every [`Postgres`] has.
const NAME: &str = "postoffice";

/// A private PostgreSQL server (the newest in `/usr/lib/postgresql/*/bin`,
/// from the Debian package `postgresql`) with the superuser `postoffice`
/// (trust authentication on loopback) and the database `postoffice`.
///
/// Runs with `fsync=on`, so what it acknowledged survives [`kill`]
/// (SIGKILL) and [`restart`](Self::restart). When the tests run as root
/// (CI) the server runs as the `postgres` system user, since initdb
/// refuses root; otherwise as the current user.
///
/// [`kill`]: Self::kill
#[derive(Debug)]
pub struct Postgres {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// `postgres://postoffice@127.0.0.1:PORT/postoffice`.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    as_postgres: bool,
    daemon: Option<Daemon>,
    starts: u32,
    /// More `-c` settings for every start.
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Creates and starts the server and the database; panics (naming the
    /// Debian package) when PostgreSQL is not installed, and with the
    /// server's log when it does not start within 30 s.
    #[track_caller]
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let as_postgres = running_as_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).expect("create the socket directory");
        if as_postgres {
            let (uid, gid) = postgres_user();
            for path in [dir.path(), &socket_dir] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
            }
        }
        let mut pg = Postgres {
            port: 0,
            url: String::new(),
            bin,
            data,
            socket_dir,
            as_postgres,
            daemon: None,
            starts: 0,
            extra: Vec::new(),
            dir,
        };
        let log = pg.dir.path().join("initdb.log");
        let out = pg
            .server_command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                NAME,
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
                "-D",
            ])
            .arg(&pg.data)
            .output()
            .unwrap_or_else(|e| panic!("run initdb: {e}"));
        if !out.status.success() {
            let _ = std::fs::write(&log, &out.stderr);
            panic!(
                "initdb failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut failures = String::new();
        // Another process may take the port between free_port and bind.
        for _ in 0..3 {
            pg.port = free_port();
            if pg.launch() {
                pg.url = format!("postgres://{NAME}@127.0.0.1:{}/{NAME}", pg.port);
                pg.create_database();
                return pg;
            }
            failures.push_str(&pg.log());
            pg.kill();
        }
        panic!("PostgreSQL did not start:\n{failures}");
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Daemon::id)
    }

    /// What the server logged so far (of its latest start).
    pub fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map_or_else(|| "(not running)".into(), Daemon::output)
    }

    /// A crash: SIGKILL to the postmaster and every process it started
    /// (backends, checkpointer, WAL writer...), then reaped. The data directory stays, so
    /// [`restart`](Self::restart) recovers from the WAL.
    pub fn kill(&mut self) {
        let mut pids = Vec::new();
        if let Some(mut daemon) = self.daemon.take() {
            pids = server_pids(daemon.id());
            signal(&pids, "KILL");
            daemon.kill();
        }
        // The backends are reparented and reaped; wait until none is left
        // holding the data directory's shared memory.
        let _ = poll_until(STOP_LIMIT, || !pids.iter().any(|&p| alive(p)));
    }

    /// A stalled database: SIGSTOP to the postmaster and every backend.
    /// Connections stay open and nothing answers until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        if let Some(d) = &self.daemon {
            signal(&server_pids(d.id()), "STOP");
        }
    }

    /// Lets a [`freeze`](Self::freeze)d server go on (SIGCONT).
    pub fn thaw(&self) {
        if let Some(d) = &self.daemon {
            signal(&server_pids(d.id()), "CONT");
        }
    }

    /// Stops the server (fast shutdown, SIGKILL if that takes over 15 s)
    /// if it runs, and starts it again on the same port and data. Panics
    /// when it does not come back within 30 s.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        if !self.launch() {
            panic!("PostgreSQL did not restart:\n{}", self.log());
        }
    }

    /// Fast shutdown (SIGINT: sessions are disconnected, the server
    /// checkpoints and exits), SIGKILL after 15 s.
    pub fn stop(&mut self) {
        self.thaw();
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &daemon.id().to_string()])
            .status();
        if !poll_until(STOP_LIMIT, || daemon.exited()) {
            signal(&server_pids(daemon.id()), "KILL");
        }
        daemon.kill();
        let _ = poll_until(STOP_LIMIT, || self.pid_file_pid().is_none_or(|p| !alive(p)));
    }

    /// Turns TLS on with this certificate chain and key (PEM), restarting
    /// the server: clients may then ask for TLS (plain connections are
    /// still accepted).
    #[track_caller]
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = self.data.join(name);
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            // The server refuses a key that others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod the TLS file");
            if self.as_postgres {
                let (uid, gid) = postgres_user();
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
            }
        }
        self.extra.push("ssl=on".into());
        self.restart();
    }

    /// Starts the postmaster on `self.port`; whether it accepts
    /// connections within [`START_LIMIT`].
    fn launch(&mut self) -> bool {
        self.starts += 1;
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.socket_dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "max_connections=200",
            ]);
        for setting in &self.extra {
            cmd.args(["-c", setting]);
        }
        let output = self
            .dir
            .path()
            .join(format!("postgres-{}.log", self.starts));
        let mut daemon = Daemon::spawn("postgres", cmd, &output);
        let ready = {
            let (bin, port) = (self.bin.clone(), self.port);
            daemon.wait_until(START_LIMIT, || accepts(&bin, port))
        };
        self.daemon = Some(daemon);
        ready
    }

    /// `CREATE DATABASE postoffice`, through psql over TCP.
    #[track_caller]
    fn create_database(&self) {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", NAME, "-d", "postgres"])
            .args(["-c", &format!("CREATE DATABASE {NAME}")])
            .output()
            .unwrap_or_else(|e| panic!("run psql: {e}"));
        assert!(
            out.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One of the server's programs, run as the `postgres` user when we
    /// are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
                .arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    /// The pid in the data directory's `postmaster.pid` (the server of a
    /// previous start that may still be winding down), if any.
    fn pid_file_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// Creates a new, empty database on the server `url` names (any database
/// of it, e.g. a [`Postgres`]'s `url`) and returns the URL of the new one.
/// Each call makes another (`t<pid>_<n>`), so every test has its own.
#[track_caller]
pub fn create_database(url: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let out = Command::new(bin_dir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url])
        .args(["-c", &format!("CREATE DATABASE {name}")])
        .output()
        .unwrap_or_else(|e| panic!("run psql: {e}"));
    assert!(
        out.status.success(),
        "CREATE DATABASE {name} on {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (server, _) = url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{url} does not name a database"));
    format!("{server}/{name}")
}

/// The rows `sql` returns from the database at `url` (psql, unaligned,
/// fields separated by a tab): for tests that look at what is stored.
#[track_caller]
pub fn query(url: &str, sql: &str) -> Vec<Vec<String>> {
    let out = Command::new(bin_dir().join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
            url,
        ])
        .args(["-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("run psql: {e}"));
    assert!(
        out.status.success(),
        "{sql} on {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The postmaster `pid` and the processes it started (each backend makes
/// itself a session leader, so a process group does not reach them).
fn server_pids(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(child) == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// The parent of process `pid` (from /proc/PID/stat: the field after the
/// state, which follows the parenthesised command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Sends `signal` (a name such as `KILL`) to every process in `pids`.
fn signal(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .args(pids.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether the server on `port` accepts connections (`pg_isready`).
fn accepts(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "2"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `postgres`.
#[track_caller]
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed, and this test needs it: \
             install the Debian package postgresql \
             (apt-get install -y --no-install-recommends postgresql)"
        ),
    }
}

/// Whether this process runs as root (the owner of /proc/self).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of the `postgres` system user (from /etc/passwd).
#[track_caller]
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != "postgres" {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .unwrap_or_else(|| {
            panic!(
                "there is no postgres system user to run PostgreSQL as (initdb refuses root): \
                 install the Debian package postgresql"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs PostgreSQL (Debian package `postgresql`); fails without it.
    #[test]
    fn starts_kills_restarts_and_stops() {
        let mut pg = Postgres::start();
        assert!(pg.url.ends_with(&format!(":{}/postoffice", pg.port)));
        assert!(accepts(&pg.bin, pg.port));
        let pid = pg.pid();
        assert!(pid > 0);
        pg.freeze();
        assert!(
            !accepts(&pg.bin, pg.port),
            "a frozen server does not answer"
        );
        pg.thaw();
        assert!(accepts(&pg.bin, pg.port));
        let children = server_pids(pid);
        assert!(
            children.len() > 1,
            "the postmaster's processes: {children:?}"
        );
        pg.kill();
        assert!(!accepts(&pg.bin, pg.port));
        assert!(children.iter().all(|&p| !alive(p)), "all of them killed");
        pg.restart();
        assert!(accepts(&pg.bin, pg.port), "{}", pg.log());
        assert_ne!(pg.pid(), pid);
        let data = pg.data.clone();
        drop(pg);
        assert!(!data.exists(), "the data directory is removed");
    }
}

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

/// The `application_name` a [`Postgres::start_standby`] streams as, and so
/// the primary's `synchronous_standby_names`.
pub const STANDBY_NAME: &str = "postoffice_standby";

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
    /// `name=value` settings of this server besides the common ones.
    settings: Vec<String>,
    daemon: Option<Daemon>,
    starts: u32,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Creates and starts the server and the database; panics (naming the
    /// Debian package) when PostgreSQL is not installed, and with the
    /// server's log when it does not start within 30 s.
    #[track_caller]
    pub fn start() -> Postgres {
        let mut pg = Postgres::new(Vec::new());
        pg.initdb();
        pg.start_on_free_port(true);
        pg
    }

    /// [`start`](Self::start) for a primary that a synchronous standby
    /// ([`start_standby`](Self::start_standby)) can follow: `wal_level =
    /// replica`, WAL senders, replication connections from 127.0.0.1
    /// trusted, `synchronous_commit = on`. Commits become synchronous once
    /// a standby is attached (`synchronous_standby_names` is set then, so
    /// that nothing waits for a standby that does not exist yet).
    #[track_caller]
    pub fn start_primary() -> Postgres {
        let mut pg = Postgres::new(
            [
                "wal_level=replica",
                "max_wal_senders=5",
                "synchronous_commit=on",
            ]
            .map(String::from)
            .to_vec(),
        );
        pg.initdb();
        let hba = pg.data.join("pg_hba.conf");
        let mut rules =
            std::fs::read_to_string(&hba).unwrap_or_else(|e| panic!("read {}: {e}", hba.display()));
        rules.push_str(&format!("host replication {NAME} 127.0.0.1/32 trust\n"));
        std::fs::write(&hba, rules).unwrap_or_else(|e| panic!("write {}: {e}", hba.display()));
        pg.start_on_free_port(true);
        pg
    }

    /// A hot standby of `primary` (one started by
    /// [`start_primary`](Self::start_primary)), made by `pg_basebackup -R`
    /// and streaming from it as the application [`STANDBY_NAME`], which is
    /// then made the primary's synchronous standby: returns once the
    /// primary reports it `sync` (a commit on the primary is then on both),
    /// or panics with both logs after 30 s. One standby per primary.
    #[track_caller]
    pub fn start_standby(primary: &Postgres) -> Postgres {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={NAME} application_name={STANDBY_NAME}",
            primary.port
        );
        let mut pg = Postgres::new(vec![
            "hot_standby=on".into(),
            format!("primary_conninfo={conninfo}"),
        ]);
        let out = pg
            .server_command("pg_basebackup")
            .args(["-d", &conninfo, "-R", "-X", "stream", "-c", "fast", "-D"])
            .arg(&pg.data)
            .output()
            .unwrap_or_else(|e| panic!("run pg_basebackup: {e}"));
        assert!(
            out.status.success(),
            "pg_basebackup failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_on_free_port(false);
        primary
            .sql(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"
            ))
            .and_then(|_| primary.sql("SELECT pg_reload_conf()"))
            .unwrap_or_else(|e| panic!("make the standby synchronous: {e}"));
        primary.wait_until_synchronous(&pg);
        pg
    }

    /// Waits until `standby` streams from this primary as its synchronous
    /// standby (`pg_stat_replication.sync_state = 'sync'`); panics with
    /// both logs after 30 s.
    #[track_caller]
    pub fn wait_until_synchronous(&self, standby: &Postgres) {
        let query = format!(
            "SELECT sync_state FROM pg_stat_replication \
             WHERE application_name = '{STANDBY_NAME}'"
        );
        let mut last = String::new();
        let synchronous = poll_until(START_LIMIT, || {
            last = self.sql(&query).unwrap_or_else(|e| e);
            last.trim() == "sync"
        });
        assert!(
            synchronous,
            "the standby is not synchronous (sync_state {last:?});\n\
             primary log:\n{}\nstandby log:\n{}",
            self.log(),
            standby.log()
        );
    }

    /// Promotes a standby to primary (`pg_promote()`, which waits until it
    /// accepts writes); panics when it does not within 30 s.
    #[track_caller]
    pub fn promote(&self) {
        let promoted = self
            .sql(&format!(
                "SELECT pg_promote(true, {})",
                START_LIMIT.as_secs()
            ))
            .unwrap_or_else(|e| panic!("pg_promote: {e}\n{}", self.log()));
        assert_eq!(promoted.trim(), "t", "promotion failed:\n{}", self.log());
    }

    /// A server not yet initialised: its temporary directory (owned by the
    /// `postgres` user when we are root) and the `-c` settings every
    /// start of it gets besides the common ones.
    fn new(settings: Vec<String>) -> Postgres {
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
        Postgres {
            port: 0,
            url: String::new(),
            bin,
            data,
            socket_dir,
            as_postgres,
            settings,
            daemon: None,
            starts: 0,
            dir,
        }
    }

    /// initdb into the data directory (superuser `postoffice`, trust).
    #[track_caller]
    fn initdb(&self) {
        let log = self.dir.path().join("initdb.log");
        let out = self
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
            .arg(&self.data)
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
    }

    /// Starts the server on a free port and sets `url`, creating the
    /// database `postoffice` when `create` (a standby has it from its
    /// primary); panics with the logs after three failed starts.
    #[track_caller]
    fn start_on_free_port(&mut self, create: bool) {
        let mut failures = String::new();
        // Another process may take the port between free_port and bind.
        for _ in 0..3 {
            self.port = free_port();
            if self.launch() {
                self.url = format!("postgres://{NAME}@127.0.0.1:{}/{NAME}", self.port);
                if create {
                    self.create_database();
                }
                return;
            }
            failures.push_str(&self.log());
            self.kill();
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
        self.settings.push("ssl=on".into());
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
        for setting in &self.settings {
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
        if let Err(e) = self.sql(&format!("CREATE DATABASE {NAME}")) {
            panic!("CREATE DATABASE failed: {e}");
        }
    }

    /// Runs `sql` in the database `postgres` through psql over TCP: its
    /// unaligned, tuples-only output, or psql's complaint.
    fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &self.port.to_string(), "-U", NAME, "-d", "postgres"])
            .args(["-c", sql])
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
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

    /// Needs PostgreSQL; a commit on the primary is on the standby, which
    /// after the primary's death and its promotion takes writes.
    #[test]
    fn a_synchronous_standby_has_every_commit_and_takes_over() {
        let mut primary = Postgres::start_primary();
        let standby = Postgres::start_standby(&primary);
        primary
            .sql("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
            .unwrap();
        assert_eq!(standby.sql("SELECT count(*) FROM t").unwrap().trim(), "1");
        assert!(
            standby.sql("INSERT INTO t VALUES (2)").is_err(),
            "read-only"
        );
        primary.kill();
        standby.promote();
        standby.sql("INSERT INTO t VALUES (2)").unwrap();
        assert_eq!(standby.sql("SELECT count(*) FROM t").unwrap().trim(), "2");
    }
}

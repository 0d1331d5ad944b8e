"""A private PostgreSQL server for the Python end-to-end tests: initdb into
a directory of the test's own, the postmaster on a free loopback port with
a private socket directory, stopped by its pid. Never the machine's default
cluster. The Rust tests have the same thing in crates/testkit/src/postgres.rs.

    cluster = Cluster(os.path.join(tmp, "pg"))   # initdb, start, CREATE DATABASE
    cluster.url                                  # postgres://postoffice@127.0.0.1:PORT/postoffice
    cluster.kill(); cluster.start()              # a crash, then recovery from the WAL
    cluster.stop()

PostgreSQL comes from the Debian package `postgresql` (the newest version
in /usr/lib/postgresql/*/bin). initdb refuses to run as root, and CI runs
the tests as root: then the server runs as the `postgres` system user
(setpriv), and its directories are chowned to that user.

`python3 tests/clients/pgcluster.py` checks this module by itself: rows
committed before a SIGKILL of the whole server are there after the restart.
"""

import glob
import os
import pwd
import signal
import subprocess
import time

from harness import free_port

USER = "postoffice"  # the superuser initdb creates, trust authentication
DATABASE = "postoffice"
START_LIMIT = 60  # seconds for a (re)start, WAL recovery included
STOP_LIMIT = 15


def bin_dir():
    """The newest /usr/lib/postgresql/<version>/bin that has the server."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        version = os.path.basename(os.path.dirname(d))
        if os.path.exists(os.path.join(d, "postgres")) and os.path.exists(os.path.join(d, "initdb")):
            try:
                found.append((tuple(int(p) for p in version.split(".")), d))
            except ValueError:
                continue
    if not found:
        raise SystemExit(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): "
            "apt-get install postgresql (.ci/run lists the Debian packages)"
        )
    return max(found)[1]


def _stat(pid):
    """(state, parent pid) of a process from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 1 :].split()
    return fields[0], int(fields[1])


def _alive(pid):
    """Whether process pid exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _children(pid):
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[1] == pid:
                pids.append(int(name))
    return pids


class Cluster:
    """One private PostgreSQL server; `start()` is called by the constructor."""

    def __init__(self, base, port=None):
        self.bin = bin_dir()
        self.base = os.path.abspath(base)
        self.data = os.path.join(self.base, "data")
        self.sockdir = os.path.join(self.base, "sock")
        self.as_postgres = os.geteuid() == 0
        self.proc = None
        self.starts = 0
        os.makedirs(self.sockdir, exist_ok=True)
        os.chmod(self.base, 0o700)
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            for p in (self.base, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            # The postgres user must be able to reach base: a mkdtemp
            # parent is 0700; let others through it (not list it).
            parent = os.path.dirname(self.base)
            st = os.stat(parent)
            if st.st_uid == os.geteuid() and st.st_mode & 0o001 == 0:
                os.chmod(parent, (st.st_mode & 0o7777) | 0o011)
        r = subprocess.run(
            self._as_server(os.path.join(self.bin, "initdb"))
            + ["-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C", "-D", self.data],
            capture_output=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}): {r.stdout.decode()}{r.stderr.decode()}")
        self.port = port
        for _ in range(3):  # another process may take a free port before we bind it
            if self.port is None:
                self.port = free_port()
            if self.start(raise_on_failure=False):
                break
            self.kill()
            self.port = None if port is None else port
        else:
            raise RuntimeError("PostgreSQL did not start; see " + self.logpath())
        self.url = f"postgres://{USER}@127.0.0.1:{self.port}/{DATABASE}"
        r = self.psql("CREATE DATABASE " + DATABASE, database="postgres")
        if r.returncode != 0:
            raise RuntimeError("CREATE DATABASE failed: " + r.stderr.decode())

    def _as_server(self, path):
        if self.as_postgres:
            return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--", path]
        return [path]

    def logpath(self, n=None):
        return os.path.join(self.base, f"postgres-{n or self.starts}.log")

    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, raise_on_failure=True):
        """Starts the postmaster on self.port (same data directory: after a
        kill, PostgreSQL recovers from its WAL) and waits, bounded, until
        it answers a query. Returns whether it did."""
        self.starts += 1
        logf = open(self.logpath(), "ab")
        self.proc = subprocess.Popen(
            self._as_server(os.path.join(self.bin, "postgres"))
            + ["-D", self.data, "-p", str(self.port), "-k", self.sockdir]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "max_connections=200"],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,  # no terminal's signals
        )
        logf.close()
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ready():
                return True
            time.sleep(0.1)
        if raise_on_failure:
            raise RuntimeError(f"PostgreSQL did not (re)start within {START_LIMIT} s; see {self.logpath()}")
        return False

    def _ready(self):
        r = subprocess.run(
            [os.path.join(self.bin, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER]
            + ["-d", "postgres", "-t", "2"],
            capture_output=True,
            timeout=10,
        )
        if r.returncode != 0:
            return False
        return self.psql("SELECT 1", database="postgres", timeout=10).returncode == 0

    def psql(self, sql, database=DATABASE, timeout=60):
        """Runs sql through psql over TCP; the CompletedProcess (unaligned,
        tuples only, so stdout is the bare values)."""
        return subprocess.run(
            [os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
            + ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database, "-c", sql],
            capture_output=True,
            timeout=timeout,
            env=dict(os.environ, PGCONNECT_TIMEOUT="5"),
        )

    def query(self, sql):
        """The rows of a query (each a list of strings); raises on failure."""
        r = self.psql(sql)
        if r.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {r.stderr.decode()}")
        return [line.split("|") for line in r.stdout.decode().splitlines() if line]

    def kill(self):
        """A crash: SIGKILL to the postmaster and every process it started
        (backends, checkpointer, WAL writer...; each makes itself a session
        leader, so a process group does not reach them); returns once every
        one is gone, so that start() can reuse the data directory at once.
        The postmaster is stopped first so that it forks no new backend
        while its children are listed."""
        if self.proc is None:
            return
        pid = self.proc.pid
        pids = [pid]
        if self.proc.poll() is None:
            os.kill(pid, signal.SIGSTOP)
            pids += _children(pid)
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + STOP_LIMIT
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = [p for p in pids if _alive(p)]
        if left:
            raise RuntimeError(f"PostgreSQL processes {left} outlived a SIGKILL for {STOP_LIMIT} s")

    def stop(self):
        """SIGTERM (a smart shutdown), a bounded wait, then SIGKILL to the
        whole group. Safe to call more than once."""
        if self.proc is None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_LIMIT)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


def _self_test():
    import tempfile

    tmp = tempfile.mkdtemp(prefix="postoffice-pgcluster-")
    cluster = Cluster(os.path.join(tmp, "pg"))
    try:
        t0 = time.monotonic()
        print(f"started on port {cluster.port} pid {cluster.pid()} in {tmp}", flush=True)
        cluster.query("CREATE TABLE t (n int PRIMARY KEY)")
        committed = 0
        for round_ in range(5):
            for _ in range(20):
                committed += 1
                cluster.query(f"INSERT INTO t VALUES ({committed})")
            old = cluster.pid()
            backends = _children(old)
            assert backends, "no process of the server besides the postmaster?"
            cluster.kill()
            assert not any(_alive(p) for p in [old] + backends), "a server process survived SIGKILL"
            k = time.monotonic()
            cluster.start()
            rows = int(cluster.query("SELECT count(*) FROM t")[0][0])
            print(f"round {round_}: killed pid {old}, back as pid {cluster.pid()} on port {cluster.port} "
                  f"in {time.monotonic() - k:.2f} s; {rows}/{committed} rows", flush=True)
            assert rows == committed, f"{committed - rows} committed rows lost"
        pid = cluster.pid()
        cluster.stop()
        assert not _alive(pid), "postmaster survived stop()"
        print(f"ok: {committed} rows survived 5 SIGKILLs; {time.monotonic() - t0:.1f} s", flush=True)
    finally:
        cluster.stop()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    _self_test()

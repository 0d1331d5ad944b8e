#!/usr/bin/env python3
"""Crash-kill test: SIGKILL the real server at random moments while mail
flows in over SMTP and out over POP3, restart it on the same ports and data
directory, and check at the end that no accepted message was lost or
duplicated.

    python3 tests/crash/crash.py PATH/TO/postoffice [--kills 50] [--seed N] [--postgres]

Python 3 standard library only. Exit status 0 only if lost=0 and
duplicated=0 and every post-restart check passed.

Accounting, per message number n (subject "crash-<n>"):
  accepted      the SMTP client got 250 after DATA
  committed     n was retrieved in a POP3 session whose QUIT got +OK
  maybe         n was retrieved in a session whose QUIT reply was lost
                (the deletion may or may not have been applied)
  remaining     n is still in a maildrop at the end (final drain)
  lost          accepted, and never committed, maybe-downloaded or remaining
  duplicated    committed twice; or twice in one listing; or committed and
                also remaining (a lost QUIT reply counts as "maybe", never
                as committed, so that case is allowed)
Other checks: after every restart a login works at once (no stale lock);
no UIDL ever names a file that is in a tmp/ directory; every retrieved
message is complete (its last line is present).

Outbound queue: a second sender submits numbered messages ("out-<n>") as
an authenticated local user over the submission port to a remote domain
whose transport is a sink SMTP server on loopback (this script, never
killed), which counts every complete delivery. After the last restart the
queue is flushed and drained; then
  out_lost        accepted by submission (250) but never delivered
  out_redelivered delivered more than once: only possible when a kill falls
                  between the sink's 250 and the removal of the spool entry
                  (SMTP's at-least-once window, RFC 1047); reported, not
                  an error
  out_partial     a delivery that arrived incomplete (an error)

--postgres: the same test on the PostgreSQL storage backend. A private
PostgreSQL (tests/clients/pgcluster.py: initdb in the temporary directory,
a free loopback port, run as the `postgres` user when we are root) holds
the mail; `postoffice db migrate` runs before anything else. Differences:
  - one kill in five (drawn from the killer's seeded rng) is a SIGKILL of
    PostgreSQL itself (the postmaster and every backend), restarted after
    0 to CONNECT_TIMEOUT_SECS + 2 s on the same port and data directory (it
    recovers from its WAL); the server is NOT restarted then and must
    reconnect by itself;
  - the maildrop lock is a lease row (lease_secs = LEASE_SECS here): after a
    SIGKILL of the server the old process's leases must expire, so "a login
    works at once" becomes "a login works within the lease" (bounded by
    lease + RELOGIN_MARGIN; the times are reported). After a PostgreSQL kill
    the same bound holds (plus the connect timeout);
  - while PostgreSQL is down, 4xx SMTP replies and POP3 -ERR ([SYS/TEMP],
    [IN-USE] while a lease runs out) are expected: counted, not errors. A
    250 for a message that is then missing still counts as lost;
  - the Maildir-only check "no UIDL names a file in tmp/" is skipped
    (PostgreSQL stores a message in one transaction: there is no tmp/);
    every retrieved message is still checked complete, and at the end the
    database is checked for leftovers of half-stored messages (see
    pg_consistency).
"""

import argparse
import os
import poplib
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients"))
from harness import NO_DNS  # noqa: E402

DOMAIN = "example.test"
USERS = [f"user{i}@{DOMAIN}" for i in range(4)]
PROBE = f"probe@{DOMAIN}"
OUT_USER = f"outbound@{DOMAIN}"
REMOTE = "remote.test"
OUT_SUBJECT_RE = re.compile(rb"^Subject: out-(\d+)\r?$", re.M)
OUT_END_RE = re.compile(rb"^end out-(\d+)\r?$", re.M)
PASSWORD = "crash test password"
IO_TIMEOUT = 10
SUBJECT_RE = re.compile(rb"^Subject: crash-(\d+)$")
END_RE = re.compile(rb"^end crash-(\d+)$")
# --postgres: the maildrop lease, and how much longer than the lease a login
# may take after a kill (restarting the server, an argon2 verification per
# attempt in a debug build on a loaded machine).
LEASE_SECS = 3
CONNECT_TIMEOUT_SECS = 5
RELOGIN_MARGIN = 12
PG_KILL_ONE_IN = 5


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Server:
    """Starts and kills `postoffice serve`; fixes its ports after the first start."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.config = os.path.join(workdir, "postoffice.toml")
        self.logpath = os.path.join(workdir, "server.log")
        self.proc = None
        self.ports = None  # {"POP3": port, "POP3S": port, "SMTP": port, "SUBMIT": port}
        self.lock = threading.Lock()
        self.sink_port = None
        self.pg = None  # the pgcluster.Cluster with --postgres

    def write_config(self, ports):
        text = f"""data_dir = "data"
hostname = "crash.test"
shutdown_timeout_secs = 2
[pop3]
listen = ["127.0.0.1:{ports['POP3']}"]
listen_tls = ["127.0.0.1:{ports['POP3S']}"]
[smtp]
listen = ["127.0.0.1:{ports['SMTP']}"]
[submission]
listen = ["127.0.0.1:{ports['SUBMIT']}"]
listen_tls = []
allow_plaintext_auth_loopback = true
[queue]
retry_schedule_secs = [1]
[queue.transports]
"{REMOTE}" = "127.0.0.1:{self.sink_port}"
[auth]
free_failures = 1000
lockout_after = 100000
[limits]
max_connections_per_ip = 1000
[http]
listen = []
""" + self.storage_config() + NO_DNS
        with open(self.config, "w") as f:
            f.write(text)

    def storage_config(self):
        if self.pg is None:
            return ""
        return f"""[storage]
backend = "postgres"
url = "{self.pg.url}"
lease_secs = {LEASE_SECS}
connect_timeout_secs = {CONNECT_TIMEOUT_SECS}
statement_timeout_secs = 30
"""

    def cli(self, args, stdin=b""):
        return subprocess.run(
            [self.binary, "--config", self.config] + args,
            input=stdin,
            capture_output=True,
            cwd=self.workdir,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "POSTOFFICE_CONFIG")},
        )

    def start(self):
        deadline = time.monotonic() + 60
        while True:
            logf = open(self.logpath, "ab")
            proc = subprocess.Popen(
                [self.binary, "--config", self.config, "serve"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=logf,
                cwd=self.workdir,
                env={k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "POSTOFFICE_CONFIG")},
            )
            logf.close()
            found = {}
            while len(found) < 4:
                line = proc.stdout.readline()
                if not line:
                    break
                words = line.decode("utf-8", "replace").split()
                if len(words) >= 2 and words[0] in ("POP3", "POP3S", "SMTP", "SUBMIT"):
                    found[words[0]] = int(words[1].rsplit(":", 1)[1])
            if len(found) == 4:
                # Keep draining stdout so the server never blocks on it.
                threading.Thread(target=self._drain, args=(proc.stdout,), daemon=True).start()
                break
            proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start; see " + self.logpath)
            time.sleep(0.1)  # e.g. the port is not free yet: retry
        if self.ports is None:
            self.ports = found
            self.write_config(found)
        elif found != self.ports:
            raise RuntimeError(f"server came back on other ports: {found} != {self.ports}")
        self.proc = proc

    @staticmethod
    def _drain(stream):
        try:
            while stream.read(4096):
                pass
        except Exception:
            pass

    def kill(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def pid(self):
        return self.proc.pid if self.proc else None


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.accepted = set()
        self.maybe_accepted = set()
        self.committed = Counter()
        self.maybe = Counter()
        self.remaining = Counter()
        self.dup_in_listing = set()
        self.errors = []
        self.sessions_ok = 0
        self.sessions_lost_quit = 0
        self.sessions_failed = 0
        self.out_sent = 0
        self.out_accepted = set()
        self.out_maybe = set()
        self.out_received = Counter()
        self.out_partial = 0
        # Temporary refusals (expected while a server restarts or the
        # database is down; counted, not errors).
        self.smtp_4xx = 0
        self.pop_err = Counter()  # "[IN-USE]", "[SYS/TEMP]", "other"
        self.pop_err_samples = set()  # a few "other" replies, for the report
        self.node_kills = 0
        self.pg_kills = 0
        self.relogin = {"node": [], "pg": []}  # seconds from a kill to a working login
        self.sightings = defaultdict(list)  # message number -> how/where/when it was downloaded

    def note(self, seen, uids_of, user, how):
        """Remembers where each message was seen (for the report of a
        duplicate: the same UIDL twice means a deletion that did not hold,
        two UIDLs a message stored twice). Call with self.lock held."""
        t = time.strftime("%H:%M:%S")
        for n in seen:
            if len(self.sightings[n]) < 6:
                self.sightings[n].append(f"{how} {user} {uids_of.get(n)} {t}")

    def temp_failure(self, exc):
        """Counts an SMTP 4xx or a POP3 -ERR carried by exc, if it is one."""
        with self.lock:
            if isinstance(exc, smtplib.SMTPResponseException) and 400 <= exc.smtp_code < 500:
                self.smtp_4xx += 1
            elif isinstance(exc, poplib.error_proto):
                text = exc.args[0] if exc.args else b""
                if isinstance(text, str):
                    text = text.encode()
                # (poplib's own "-ERR EOF" is a cut connection, not a reply)
                if text.startswith(b"-ERR") and text != b"-ERR EOF":
                    kind = next((k for k in ("[IN-USE]", "[SYS/TEMP]") if k.encode() in text), "other")
                    self.pop_err[kind] += 1
                    if kind == "other" and len(self.pop_err_samples) < 5:
                        self.pop_err_samples.add(text.decode("utf-8", "replace")[:100])

    def error(self, msg):
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(msg)
        log("ERROR: " + msg)


def message_bytes(n, rng):
    body_lines = [f"line {i} of message {n} " + "x" * rng.randint(0, 200) for i in range(rng.randint(1, 40))]
    if rng.random() < 0.1:
        body_lines.append("." + "dot-stuffed line")
    text = (
        f"From: sender@remote.example\r\nTo: someone@{DOMAIN}\r\nSubject: crash-{n}\r\n"
        f"Message-ID: <crash-{n}@remote.example>\r\n\r\n" + "\r\n".join(body_lines) + f"\r\nend crash-{n}\r\n"
    )
    return text.encode()


def sender(server, state, stop, rng):
    n = 0
    while not stop.is_set():
        n += 1
        user = USERS[n % len(USERS)]
        msg = message_bytes(n, rng)
        with state.lock:
            state.sent += 1
        data_sent = False
        try:
            s = smtplib.SMTP(timeout=IO_TIMEOUT)
            s.connect("127.0.0.1", server.ports["SMTP"])
            s.ehlo("crash.client")
            code, resp = s.mail("sender@remote.example")
            if code != 250:
                raise smtplib.SMTPResponseException(code, resp)
            code, resp = s.rcpt(user)
            if code != 250:
                raise smtplib.SMTPResponseException(code, resp)
            data_sent = True
            code, resp = s.data(msg)
            if code == 250:
                with state.lock:
                    state.accepted.add(n)
            else:
                state.temp_failure(smtplib.SMTPResponseException(code, resp))
                with state.lock:
                    state.maybe_accepted.add(n)
            try:
                s.quit()
            except Exception:
                pass
        except (OSError, smtplib.SMTPException) as e:
            state.temp_failure(e)
            if data_sent:
                with state.lock:
                    state.maybe_accepted.add(n)
            time.sleep(0.02)


class Sink:
    """A minimal SMTP server on loopback standing in for a remote MX: it
    accepts every transaction and records each complete message's number
    before answering 250 to the end of DATA."""

    def __init__(self, state):
        self.state = state
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(60)
        f = conn.makefile("rb")
        try:
            conn.sendall(b"220 sink.remote.test ESMTP\r\n")
            while True:
                line = f.readline(4096)
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    data = []
                    while True:
                        l = f.readline(65536)
                        if not l:
                            return  # cut off mid-DATA: nothing recorded
                        if l == b".\r\n":
                            break
                        data.append(l)
                    self._record(b"".join(data))
                    conn.sendall(b"250 2.0.0 stored\r\n")
                elif verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 sink.remote.test\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def _record(self, data):
        subj = OUT_SUBJECT_RE.search(data)
        end = OUT_END_RE.search(data)
        with self.state.lock:
            if subj and end and subj.group(1) == end.group(1):
                self.state.out_received[int(subj.group(1))] += 1
            else:
                self.state.out_partial += 1
        if not (subj and end and subj.group(1) == end.group(1)):
            self.state.error(f"sink: incomplete delivery (subject {subj!r}, end {end!r})")


def out_sender(server, state, stop, rng):
    """Submits numbered messages for the remote domain as OUT_USER, many per
    authenticated connection (each login is an argon2 verification)."""
    n = 0
    s = None
    while not stop.is_set():
        n += 1
        body = "\r\n".join(f"out line {i} " + "y" * rng.randint(0, 200) for i in range(rng.randint(1, 40)))
        msg = (
            f"From: <{OUT_USER}>\r\nTo: <peer@{REMOTE}>\r\nSubject: out-{n}\r\n"
            f"Message-ID: <out-{n}@{DOMAIN}>\r\n\r\n{body}\r\nend out-{n}\r\n"
        ).encode()
        with state.lock:
            state.out_sent += 1
        data_sent = False
        try:
            if s is None:
                s = smtplib.SMTP(timeout=IO_TIMEOUT)
                s.connect("127.0.0.1", server.ports["SUBMIT"])
                s.ehlo("crash.client")
                s.login(OUT_USER, PASSWORD)
            code, resp = s.mail(OUT_USER)
            if code != 250:
                raise smtplib.SMTPResponseException(code, resp)
            code, resp = s.rcpt(f"peer@{REMOTE}")
            if code != 250:
                raise smtplib.SMTPResponseException(code, resp)
            data_sent = True
            code, resp = s.data(msg)
            if code != 250:
                state.temp_failure(smtplib.SMTPResponseException(code, resp))
            with state.lock:
                (state.out_accepted if code == 250 else state.out_maybe).add(n)
            time.sleep(0.05)
        except (OSError, smtplib.SMTPException) as e:
            state.temp_failure(e)
            if data_sent:
                with state.lock:
                    state.out_maybe.add(n)
            try:
                if s is not None:
                    s.close()
            except Exception:
                pass
            s = None
            time.sleep(0.05)


def queue_entries(server):
    d = os.path.join(server.workdir, "data", "queue")
    try:
        return sum(1 for f in os.listdir(d) if f.endswith(".env"))
    except FileNotFoundError:
        return 0


# --postgres: the database's equivalent of "nothing half-stored" (on Maildir,
# no UIDL names a file in tmp/). Each query lists what breaks the rule.
PG_CHECKS = [
    (
        "messages whose chunks do not add up to their size (a half-stored body)",
        """SELECT m.uid, m.size, coalesce(sum(octet_length(c.data)), 0), count(c.seq), coalesce(max(c.seq), -1)
           FROM messages m LEFT JOIN message_chunks c ON c.message_id = m.id
           GROUP BY m.id
           HAVING m.size <> coalesce(sum(octet_length(c.data)), 0) OR count(c.seq) <> coalesce(max(c.seq), -1) + 1
           LIMIT 10""",
    ),
    (
        "mailboxes whose counters disagree with their messages (a half-applied delivery or QUIT)",
        """SELECT b.name, b.messages, b.bytes, count(m.id), coalesce(sum(m.size), 0)
           FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id AND NOT m.quarantined
           GROUP BY b.id
           HAVING b.messages <> count(m.id) OR b.bytes <> coalesce(sum(m.size), 0)
           LIMIT 10""",
    ),
]


def pg_consistency(server, state, when):
    """Runs PG_CHECKS; returns how many messages the database holds."""
    for what, sql in PG_CHECKS:
        try:
            rows = server.pg.query(sql)
        except RuntimeError as e:
            state.error(f"database check ({when}) failed to run: {e}")
            continue
        if rows:
            state.error(f"{when}: {what}: {rows}")
    try:
        return int(server.pg.query("SELECT count(*) FROM messages")[0][0])
    except RuntimeError as e:
        state.error(f"database check ({when}) failed to run: {e}")
        return -1


def pop_session(server, state, user, final=False):
    """One login/RETR all/DELE all/QUIT. Returns the subjects seen (Counter),
    or None if the session could not complete its listing."""
    try:
        p = poplib.POP3("127.0.0.1", server.ports["POP3"], timeout=IO_TIMEOUT)
    except OSError:
        return None
    try:
        p.user(user)
        p.pass_(PASSWORD)
        _, uidl_lines, _ = p.uidl()
        uids = [l.split(b" ", 1)[1].decode() for l in uidl_lines]
        if server.pg is None:  # Maildir only: PostgreSQL has no tmp/
            tmpdir = os.path.join(server.workdir, "data", "mail", DOMAIN, user.split("@")[0], "tmp")
            try:
                tmp_names = {f.split(",")[0].split(":")[0] for f in os.listdir(tmpdir)}
            except FileNotFoundError:
                tmp_names = set()
            for u in uids:
                if u in tmp_names:
                    state.error(f"{user}: UIDL lists {u}, a file in tmp/")
        seen = Counter()
        uids_of = {}  # message number -> the UIDLs it was listed under
        for i in range(1, len(uids) + 1):
            _, lines, _ = p.retr(i)
            nums = [int(m.group(1)) for l in lines for m in [SUBJECT_RE.match(l)] if m]
            ends = [int(m.group(1)) for l in lines for m in [END_RE.match(l)] if m]
            if len(nums) != 1 or ends != nums:
                state.error(f"{user}: message {i} is incomplete or malformed: subjects={nums} ends={ends}")
                continue
            seen[nums[0]] += 1
            uids_of.setdefault(nums[0], []).append(uids[i - 1])
        for n, c in seen.items():
            if c > 1:
                with state.lock:
                    state.dup_in_listing.add(n)
                state.error(f"{user}: crash-{n} appears {c} times in one listing (UIDLs {uids_of[n]})")
        if final:
            with state.lock:
                state.remaining.update(seen)
                state.note(seen, uids_of, user, "remaining")
        for i in range(1, len(uids) + 1):
            p.dele(i)
    except (OSError, poplib.error_proto, EOFError) as e:
        state.temp_failure(e)
        try:
            p.close()
        except Exception:
            pass
        with state.lock:
            state.sessions_failed += 1
        return None
    try:
        resp = p.quit()
        ok = resp.startswith(b"+OK")
    except poplib.error_proto as e:
        # An explicit -ERR to QUIT: deletions not (all) applied; the
        # messages may reappear. Treat like a lost reply.
        state.temp_failure(e)
        ok = None
    except (OSError, EOFError):
        ok = None
    with state.lock:
        if ok:
            state.sessions_ok += 1
            if not final:
                state.committed.update(seen)
                state.note(seen, uids_of, user, "committed")
        else:
            state.sessions_lost_quit += 1
            if not final:
                state.maybe.update(seen)
                state.note(seen, uids_of, user, "maybe")
    if final and not ok:
        return None
    return seen


def popper(server, state, stop, user):
    # Each login costs the server an argon2 verification (about a second of
    # CPU in a debug build): pause between sessions so that the logins do
    # not starve everything else on a small CI machine.
    while not stop.is_set():
        if pop_session(server, state, user) is None:
            time.sleep(0.1)
        else:
            time.sleep(0.3)


def probe_login(server, state, since=None, kind=None):
    """Right after a restart a login must work: no stale lock. The probe
    user's previous session was left open (logged in, holding the maildrop
    lock) when the server was killed, and nobody else uses that maildrop,
    so [IN-USE] now could only come from a lock that outlived its server.
    Returns the new session, left open for the next kill.

    With --postgres the lock is a lease row that the killed server no longer
    renews: [IN-USE] (and [SYS/TEMP] while the database comes back) are
    retried until LEASE_SECS + RELOGIN_MARGIN after `since` (the kill, or
    PostgreSQL's return; plus the connect timeout then), and the time to
    the first working login is recorded under `kind` ("node" or "pg")."""
    pg = server.pg is not None
    if since is None:
        since = time.monotonic()
    bound = 15
    if pg:
        bound = LEASE_SECS + RELOGIN_MARGIN + (CONNECT_TIMEOUT_SECS if kind == "pg" else 0)
    deadline = (since if pg else time.monotonic()) + bound
    last = None
    while time.monotonic() < deadline:
        p = None
        try:
            p = poplib.POP3("127.0.0.1", server.ports["POP3"], timeout=IO_TIMEOUT)
            p.user(PROBE)
            p.pass_(PASSWORD)
            p.stat()
            if kind is not None:
                with state.lock:
                    state.relogin[kind].append(time.monotonic() - since)
            return p
        except (OSError, EOFError) as e:
            last = e
            time.sleep(0.05)
        except poplib.error_proto as e:
            last = e
            if not pg:
                break
            state.temp_failure(e)
            if p is not None:
                p.close()
            time.sleep(0.2)
    if pg:
        what = "the server's restart" if kind == "node" else "PostgreSQL's restart" if kind == "pg" else "the start"
        state.error(f"no login within {bound} s of {what} (a lease that outlived its holder?): {last!r}")
    else:
        state.error(f"login after restart failed (stale lock?): {last!r}")
    return None


def killer(server, state, stop, kills, rng, done):
    """SIGKILLs the server (and with --postgres, one time in PG_KILL_ONE_IN,
    PostgreSQL instead) at random moments, restarts what it killed, and
    checks a login after each."""
    try:
        _kill_loop(server, state, stop, kills, rng)
    except Exception as e:  # noqa: BLE001 - a restart that failed ends the test
        state.error(f"killer: {e!r}")
    finally:
        done.set()


def _kill_loop(server, state, stop, kills, rng):
    count = 0
    probe = probe_login(server, state)
    while count < kills and not stop.is_set():
        time.sleep(rng.uniform(0.05, 0.5))
        pg_kill = server.pg is not None and rng.randrange(PG_KILL_ONE_IN) == 0
        if pg_kill:
            # The server keeps running and must reconnect by itself. The
            # outage sometimes outlasts the lease and the connect timeout
            # (then SMTP must answer 451, POP3 -ERR [SYS/TEMP]).
            downtime = rng.uniform(0, CONNECT_TIMEOUT_SECS + 2)
            server.pg.kill()
            time.sleep(downtime)
            server.pg.start()
            since = time.monotonic()
            with state.lock:
                state.pg_kills += 1
            log(f"PostgreSQL killed, down {downtime:.1f} s, back as pid {server.pg.pid()}")
        else:
            since = time.monotonic()
            with server.lock:
                server.kill()
                server.start()
            with state.lock:
                state.node_kills += 1
        count += 1
        if probe is not None:
            if pg_kill:
                # The server lives on: end the session for real (the
                # makefile keeps the socket open after sock.close()), so
                # that the server lets its lease go.
                probe.close()
            else:
                probe.sock.close()
        probe = probe_login(server, state, since, "pg" if pg_kill else "node")
        if count % 25 == 0:
            log(f"{count} kills")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="store mail in a private PostgreSQL (started here) and SIGKILL it too",
    )
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="postoffice-crash-")
    server = Server(binary, workdir)
    state = State()
    sink = Sink(state)
    server.sink_port = sink.port
    server.write_config({"POP3": 0, "POP3S": 0, "SMTP": 0, "SUBMIT": 0})
    ok = False
    try:
        if args.postgres:
            import pgcluster  # tests/clients, on sys.path above

            server.pg = pgcluster.Cluster(os.path.join(workdir, "pg"))
            log(f"PostgreSQL pid {server.pg.pid()} on 127.0.0.1:{server.pg.port} ({server.pg.bin})")
            server.write_config({"POP3": 0, "POP3S": 0, "SMTP": 0, "SUBMIT": 0})
            r = server.cli(["db", "migrate"])
            if r.returncode != 0:
                raise RuntimeError(f"db migrate: {r.stdout.decode()}{r.stderr.decode()}")
        for u in USERS + [PROBE, OUT_USER]:
            r = server.cli(["user", "add", u, "--password-stdin"], (PASSWORD + "\n").encode())
            if r.returncode != 0:
                raise RuntimeError(f"user add {u}: {r.stderr.decode()}")
        server.start()
        log(f"server pid {server.pid()} ports {server.ports}; data in {workdir}; seed {args.seed}")
        stop = threading.Event()
        done = threading.Event()
        threads = [threading.Thread(target=sender, args=(server, state, stop, random.Random(rng.random())))]
        threads += [threading.Thread(target=out_sender, args=(server, state, stop, random.Random(rng.random())))]
        threads += [threading.Thread(target=popper, args=(server, state, stop, u)) for u in USERS]
        kt = threading.Thread(target=killer, args=(server, state, stop, args.kills, random.Random(rng.random()), done))
        for t in threads + [kt]:
            t.daemon = True
            t.start()
        # Generous: a debug build spends ~1 s per argon2 login.
        per_kill = 6 + (LEASE_SECS + 4 if args.postgres else 0)
        limit = time.monotonic() + max(180, args.kills * per_kill)
        while not done.wait(1):
            if time.monotonic() > limit:
                state.error("time limit reached before all kills were done")
                break
        stop.set()
        for t in threads + [kt]:
            t.join(timeout=60)
        # One more restart, then drain every maildrop.
        since = time.monotonic()
        with server.lock:
            server.kill()
            server.start()
        probe = probe_login(server, state, since)
        if probe is not None:
            probe.quit()
        if args.postgres:
            n = pg_consistency(server, state, "before the drain")
            log(f"database consistent before the drain: {n} messages stored")
        # (postgres: a lease of the killed server may still run; the probe
        # has waited for its own, and the others were taken before the kill)
        drain_deadline = since + (LEASE_SECS + RELOGIN_MARGIN if args.postgres else 0)
        left = {}
        for u in USERS:
            tries = 0
            while (got := pop_session(server, state, u, final=True)) is None:
                tries += 1
                if tries >= 20 and time.monotonic() > drain_deadline:
                    state.error(f"could not drain {u}")
                    break
                time.sleep(0.1)
            left[u.split("@")[0]] = sum(got.values()) if got is not None else "?"
        log(f"drained: {left}")
        # Drained maildrops must now be empty.
        for u in USERS:
            p = poplib.POP3("127.0.0.1", server.ports["POP3"], timeout=IO_TIMEOUT)
            p.user(u)
            p.pass_(PASSWORD)
            count, _ = p.stat()
            p.quit()
            if count != 0:
                state.error(f"{u}: {count} messages left after the drain")
        if args.postgres:
            pg_consistency(server, state, "after the drain")

        # Outbound: retry whatever waits now, then wait for the queue to
        # drain (bounded) and for every accepted message to reach the sink.
        server.cli(["queue", "flush"])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with state.lock:
                missing = [n for n in state.out_accepted if n not in state.out_received]
            if not missing and queue_entries(server) == 0:
                break
            time.sleep(0.2)
        left_in_queue = queue_entries(server)
        if left_in_queue:
            state.error(f"{left_in_queue} entries still in the outbound queue after 180 s")
        out_lost = sorted(n for n in state.out_accepted if n not in state.out_received)
        out_redelivered = sorted(n for n, c in state.out_received.items() if c > 1)
        out_unknown = sorted(
            n for n in state.out_received if n not in state.out_accepted and n not in state.out_maybe
        )
        if out_unknown:
            state.error(f"outbound messages delivered that were never sent: {out_unknown[:10]}")

        seen_all = set(state.committed) | set(state.maybe) | set(state.remaining)
        lost = sorted(n for n in state.accepted if n not in seen_all)
        dup = set(state.dup_in_listing)
        for n in seen_all:
            c = state.committed[n]
            r = state.remaining[n]
            if c >= 2 or r >= 2 or (c >= 1 and r >= 1):
                dup.add(n)
        downloaded = len(set(state.committed))
        remaining = sum(state.remaining.values())
        unknown = sorted(n for n in seen_all if n not in state.accepted and n not in state.maybe_accepted)
        if unknown:
            state.error(f"messages seen that were never sent: {unknown[:10]}")
        print(
            f"kills={args.kills} sent={state.sent} accepted={len(state.accepted)} "
            f"maybe_accepted={len(state.maybe_accepted)} downloaded={downloaded} "
            f"maybe_downloaded={len(set(state.maybe) - set(state.committed))} remaining={remaining} "
            f"lost={len(lost)} duplicated={len(dup)} sessions_ok={state.sessions_ok} "
            f"sessions_lost_quit={state.sessions_lost_quit} sessions_failed={state.sessions_failed} "
            f"out_sent={state.out_sent} out_accepted={len(state.out_accepted)} "
            f"out_maybe_accepted={len(state.out_maybe)} out_delivered={len(state.out_received)} "
            f"out_lost={len(out_lost)} out_redelivered={len(out_redelivered)} out_partial={state.out_partial} "
            f"errors={len(state.errors)}",
            flush=True,
        )

        def times(ts):
            if not ts:
                return "-"
            ts = sorted(ts)
            return f"median {ts[len(ts) // 2]:.1f} s, max {ts[-1]:.1f} s"

        print(
            f"node_kills={state.node_kills} pg_kills={state.pg_kills} "
            f"temporary refusals (not errors): smtp_4xx={state.smtp_4xx} "
            f"pop3_in_use={state.pop_err['[IN-USE]']} pop3_sys_temp={state.pop_err['[SYS/TEMP]']} "
            f"pop3_other_err={state.pop_err['other']}; "
            f"login after a server kill: {times(state.relogin['node'])}; "
            f"after PostgreSQL came back: {times(state.relogin['pg'])}",
            flush=True,
        )
        for text in sorted(state.pop_err_samples):
            print(f"POP3 -ERR seen: {text}")
        if out_lost:
            print(f"outbound lost: {out_lost[:20]}")
        if lost:
            print(f"lost: {lost[:20]}")
        if dup:
            print(f"duplicated: {sorted(dup)[:20]}")
            for n in sorted(dup)[:20]:
                print(f"  crash-{n}: " + "; ".join(state.sightings[n]))
        for e in state.errors:
            print("error:", e)
        ok = (
            not lost
            and not dup
            and not out_lost
            and not state.errors
            and len(state.accepted) > 0
            and len(state.out_accepted) > 0
        )
        if len(state.accepted) == 0 or len(state.out_accepted) == 0:
            print("error: no message was accepted at all (inbound or outbound)")
    finally:
        server.kill()
        if server.pg is not None:
            server.pg.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"data kept in {workdir}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

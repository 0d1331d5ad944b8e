#!/usr/bin/env python3
"""Durability at the system-call level: every acknowledgement postoffice
gives comes after the fsyncs that make the acknowledged thing survive a
power cut.

    python3 tests/durability/durability.py PATH/TO/postoffice

The crash-kill test (tests/crash) uses SIGKILL, which the page cache
survives, so it cannot notice a missing fsync. This test runs the real
binary under `strace -f -yy` (-yy prints the path behind every file
descriptor and the addresses behind every socket, so an fsync(fd) can be
matched to the file or directory it made durable, and a write to a socket
to the client it answered), drives it with smtplib, poplib and the CLI on
ephemeral loopback ports in a temporary directory, then reads the traces
and checks the order of events for every message:

  SMTP (MX port), submission to a local user, submission to a remote user
  (outbound spool): the message file is written, fsynced, renamed into
  new/ (the spool: <id>.msg, then <id>.env, each fsynced before its
  rename), the directory is fsynced, and only then is `250` written to the
  client's socket.
  `postoffice deliver ADDR < msg`: the same, before the process exits 0.
  POP3 DELE + QUIT: every deleted file is unlinked and its directory
  fsynced before the `+OK` to QUIT is written.
  `postoffice fetch` (keep mode, and delete mode) into a Maildir: the file
  is fsynced, renamed into new/ and new/ fsynced before its UIDL first
  appears in a write to the state file; the UIDL's record is durable (an
  append followed by fsync/fdatasync of the state file, or a temporary
  file fsynced, renamed over the state file and the directory fsynced)
  before QUIT is sent, and in delete mode before the message's DELE.

In every case a directory created on the way to an acknowledged file
(mkdir) must have its parent fsynced before the acknowledgement. And in
every trace, every file written and then renamed must have been fsynced
between its last write and the rename, with the target directory fsynced
after the rename; every directory created must have its parent fsynced.

Events are ordered by their position in strace's output, which respects
causality across threads: a thread stopped at a system call's exit stays
stopped until strace has printed that exit, so anything the thread does
afterwards is printed later. "A before B" means A's system call had
returned before B's was entered.

Python 3 standard library and strace. Prints one line per check and
"N passed, M failed"; exits 1 if any check failed (the temporary directory,
with the traces, is then kept and named).
"""

import os
import poplib
import re
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import traceback

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
DOMAIN = "example.test"
REMOTE = "remote.test"
PASSWORD = "durable pw"
TRACED = ("openat,write,writev,sendto,sendmsg,fsync,fdatasync,rename,renameat,renameat2,"
          "unlink,unlinkat,close,mkdir,mkdirat")
PASSED, FAILED = [], []


def check(name):
    """Run the decorated function now as one named check and record it."""

    def wrap(fn):
        try:
            fn()
            PASSED.append(name)
            print(f"ok   {name}", flush=True)
        except Exception:  # noqa: BLE001 - report every failure and go on
            FAILED.append(name)
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        return fn

    return wrap


def strace_cmd(log):
    return ["strace", "-f", "-tt", "-yy", "-s", "65536", "-o", log, "-e", f"trace={TRACED}", "--"]


# ---------------------------------------------------------------------------
# Reading strace output.

class Arg:
    """One top-level system call argument: its raw text, the path strace
    printed for it if it is a file descriptor (-y), and every string
    literal inside it (decoded)."""

    def __init__(self):
        self.text = ""
        self.fdpath = None
        self.strings = []

    @property
    def string(self):
        return self.strings[0] if self.strings else None


class Event:
    def __init__(self, pid, name, args, start):
        self.pid, self.name, self.args, self.start = pid, name, args, start
        self.end = None
        self.ret = None

    @property
    def ok(self):
        return self.ret is not None and self.ret >= 0

    @property
    def fdpath(self):
        return self.args[0].fdpath if self.args else None

    def data(self):
        """Bytes written by write/writev/sendto/sendmsg."""
        return b"".join(s for a in self.args[1:] for s in a.strings)

    def __repr__(self):
        return f"<{self.name} line {self.start + 1}-{self.end + 1} = {self.ret}>"


ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v", "f": b"\f", "\\": b"\\", '"': b'"',
           "a": b"\a", "b": b"\b"}


def c_string(s, i):
    """Decode the C string literal starting at s[i] == '"'; return (bytes, index after it)."""
    out = bytearray()
    i += 1
    while i < len(s):
        c = s[i]
        if c == '"':
            return bytes(out), i + 1
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        e = s[i + 1] if i + 1 < len(s) else ""
        if e == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        elif e.isdigit():
            j = i + 1
            while j < len(s) and j < i + 4 and s[j] in "01234567":
                j += 1
            out.append(int(s[i + 1:j], 8) & 0xFF)
            i = j
        else:
            out += ESCAPES.get(e, e.encode())
            i += 2
    return bytes(out), i


def annotation_end(s, i):
    """The index of the '>' closing the -y annotation that opens at s[i]."""
    j = i
    while True:
        j = s.find(">", j + 1)
        if j < 0:
            return len(s)
        rest = s[j + 1:]
        if rest == "" or rest[0] in ",)" or rest.startswith(" <unfinished"):
            return j


def scan_args(s, i):
    """Parse system call arguments from s[i:] up to the closing ')'.
    Returns (args, index after ')' or None if the text ends first)."""
    args, cur, depth = [], Arg(), 0
    while i < len(s):
        c = s[i]
        if c == '"':
            value, i = c_string(s, i)
            cur.strings.append(value)
            if s.startswith("...", i):
                i += 3
            continue
        if c == "<" and depth == 0 and re.fullmatch(r"\s*(-?\d+|AT_FDCWD)", cur.text):
            j = annotation_end(s, i)
            cur.fdpath = s[i + 1:j]
            i = j + 1
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == ")" and depth == 0:
            args.append(cur)
            return args, i + 1
        elif c == "," and depth == 0:
            args.append(cur)
            cur = Arg()
            i += 1
            continue
        cur.text += c
        i += 1
    if cur.text.strip() or cur.strings or cur.fdpath:
        args.append(cur)
    return args, None


RET = re.compile(r"\s*=\s*(-?\d+|\?)")
LINE = re.compile(r"^(?:(\d+)\s+)?\d\d:\d\d:\d\d\.\d+\s+(.*)$")


def parse_ret(s, i):
    m = RET.match(s, i) if i is not None else None
    if not m or m.group(1) == "?":
        return None
    return int(m.group(1))


def join(dirpath, path):
    path = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
    if not path.startswith("/") and dirpath:
        path = os.path.join(dirpath, path)
    return os.path.normpath(path)


class Trace:
    """The system calls in one strace -f -yy log, in output order."""

    def __init__(self, path):
        self.path = path
        self.events = []
        self.exits = {}  # pid -> (line index, exit code)
        self.first_pid = None
        pending = {}
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
        self.nlines = len(lines)
        for n, line in enumerate(lines):
            m = LINE.match(line)
            if not m:
                continue
            pid, rest = int(m.group(1) or 0), m.group(2)
            if self.first_pid is None:
                self.first_pid = pid
            if rest.startswith("+++ exited with "):
                self.exits[pid] = (n, int(rest.split()[3]))
                continue
            if rest.startswith("+++") or rest.startswith("---"):
                continue
            r = re.match(r"<\.\.\. (\w+) resumed>(.*)$", rest)
            if r:
                ev = pending.pop(pid, None)
                if ev is None or ev.name != r.group(1):
                    continue
                more, end = scan_args(r.group(2), 0)
                ev.args += [a for a in more if a.text.strip() or a.strings or a.fdpath]
                ev.ret, ev.end = parse_ret(r.group(2), end), n
                self.events.append(ev)
                continue
            c = re.match(r"(\w+)\(", rest)
            if not c:
                continue
            unfinished = rest.endswith(" <unfinished ...>")
            if unfinished:
                rest = rest[:-len(" <unfinished ...>")]
            args, end = scan_args(rest, c.end())
            ev = Event(pid, c.group(1), args, n)
            if unfinished:
                pending[pid] = ev
            else:
                ev.ret, ev.end = parse_ret(rest, end), n
                self.events.append(ev)
        self.events.sort(key=lambda e: e.end)
        ok = [e for e in self.events if e.ok]
        self.writes = [e for e in ok if e.name in ("write", "writev", "sendto", "sendmsg")]
        self.syncs = [e for e in ok if e.name in ("fsync", "fdatasync")]
        self.renames = [e for e in ok if e.name in ("rename", "renameat", "renameat2")]
        self.unlinks = [e for e in ok if e.name in ("unlink", "unlinkat")]
        self.mkdirs = [e for e in ok if e.name in ("mkdir", "mkdirat")]

    @staticmethod
    def paths(ev):
        """The path arguments of a rename/unlink/mkdir, made absolute."""
        a = ev.args
        if ev.name == "rename":
            return [join(None, a[0].string), join(None, a[1].string)]
        if ev.name in ("renameat", "renameat2"):
            return [join(a[0].fdpath, a[1].string), join(a[2].fdpath, a[3].string)]
        if ev.name in ("unlink", "mkdir"):
            return [join(None, a[0].string)]
        return [join(a[0].fdpath, a[1].string)]  # unlinkat, mkdirat

    def socket_writes(self, peer_port=None, local_port=None):
        """Writes to the TCP socket whose peer (or local) port is given."""
        out = []
        for w in self.writes:
            m = re.fullmatch(r"TCP:\[[\d.]+:(\d+)->[\d.]+:(\d+)\]", w.fdpath or "")
            if m and (peer_port is None or int(m.group(2)) == peer_port) \
                    and (local_port is None or int(m.group(1)) == local_port):
                out.append(w)
        return out

    def no_addresses(self):
        """An explanation when strace printed no TCP addresses at all."""
        if any((w.fdpath or "").startswith("TCP:[") for w in self.writes):
            return ""
        return (" (strace -yy printed no TCP socket addresses: it needs the kernel's sock_diag "
                "netlink interface)")

    def exit_of_main(self):
        """(line index, exit code) of the traced program's first process."""
        return self.exits.get(self.first_pid, (self.nlines, None))

    # -- the rules ------------------------------------------------------------

    def synced(self, path, after, before):
        """An fsync/fdatasync of `path` entered after line `after` and
        returned before line `before`."""
        return next((f for f in self.syncs if f.fdpath == path and f.start > after and f.end < before),
                    None)

    def file_synced_before_rename(self, rename, what):
        """The renamed file was fsynced after its last write, before the rename."""
        src = self.paths(rename)[0]
        writes = [w for w in self.writes if w.fdpath == src and w.end < rename.start]
        if not writes:
            return [f"{what}: no write to {src} before its rename ({rename})"]
        last = max(w.end for w in writes)
        if not self.synced(src, last, rename.start):
            return [f"{what}: {src} was not fsynced between its last write (line {last + 1}) "
                    f"and its rename ({rename})"]
        return []

    def dir_synced_after(self, ev, path, ack, what):
        """The directory holding `path` was fsynced after `ev` and before line `ack`."""
        d = os.path.dirname(path)
        f = self.synced(d, ev.end, ack)
        if not f:
            return [f"{what}: directory {d} not fsynced after {ev} and before the "
                    f"acknowledgement (line {ack + 1})"]
        return []

    def created_dirs_synced(self, path, ack, what):
        """Every directory on the way to `path` that was created (mkdir) before
        line `ack` had its parent fsynced after the mkdir, before `ack`."""
        problems = []
        for m in self.mkdirs:
            d = self.paths(m)[0]
            if path.startswith(d + "/") and m.end < ack:
                problems += self.dir_synced_after(m, d, ack, f"{what}: created directory {d}")
        return problems

    def published(self, rename, ack, what):
        """All of: the file fsynced after its last write and before the
        rename, the rename, the fsync of the target directory (and of the
        parents of directories created for it), all before line `ack`."""
        dst = self.paths(rename)[1]
        if rename.end >= ack:
            return [f"{what}: rename into {dst} ({rename}) is not before the acknowledgement "
                    f"(line {ack + 1})"]
        return (self.file_synced_before_rename(rename, what)
                + self.dir_synced_after(rename, dst, ack, what)
                + self.created_dirs_synced(dst, ack, what))

    def global_problems(self):
        """Every file written and renamed in this trace was fsynced before the
        rename and its directory after; every created directory's parent
        was fsynced after the mkdir."""
        problems = []
        for r in self.renames:
            src, dst = self.paths(r)
            if os.path.basename(dst) in CACHES:
                continue
            if any(w.fdpath == src and w.end < r.start for w in self.writes):
                problems += self.file_synced_before_rename(r, f"rename to {dst}")
                problems += self.dir_synced_after(r, dst, self.nlines, f"rename to {dst}")
        for m in self.mkdirs:
            d = self.paths(m)[0]
            problems += self.dir_synced_after(m, d, self.nlines, f"mkdir {d}")
        return problems


# Files that are only caches, written atomically but deliberately not
# fsynced: losing one costs a directory listing, and their readers reject a
# torn or stale copy (crates/store/src/maildir/cache.rs says why).
CACHES = {"postoffice-listing"}


def expect_none(problems):
    assert not problems, "\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------
# Running things.

def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


class Server:
    """postoffice serve under strace."""

    def __init__(self, work):
        self.work = work
        self.config = os.path.join(work, "postoffice.toml")
        self.trace = os.path.join(work, "server.strace")
        nowhere = closed_port()
        with open(self.config, "w") as f:
            f.write(f"""data_dir = "data"
hostname = "localhost"
shutdown_timeout_secs = 5
[pop3]
listen = ["127.0.0.1:0"]
listen_tls = []
[smtp]
listen = ["127.0.0.1:0"]
[submission]
listen = ["127.0.0.1:0"]
listen_tls = []
[queue.transports]
"{REMOTE}" = "127.0.0.1:{nowhere}"
[dns]
nameservers = ["127.0.0.1:{nowhere}"]
timeout_secs = 1
[filter]
spf = "off"
dkim = "off"
dmarc = "off"
""")
        self.data = os.path.join(work, "data")
        self.proc = None

    def cli(self, *args, stdin=b""):
        r = subprocess.run([BIN, "--config", self.config, *args], input=stdin,
                           capture_output=True, timeout=120)
        assert r.returncode == 0, f"postoffice {' '.join(args)}: {r.stderr.decode()}"

    def start(self):
        self.log = open(os.path.join(self.work, "server.log"), "wb")
        self.proc = subprocess.Popen(strace_cmd(self.trace) + [BIN, "--config", self.config, "serve"],
                                     stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        self.ports, buf = {}, b""
        deadline = time.monotonic() + 60
        while len(self.ports) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for m in re.finditer(rb"^\s+(POP3|SMTP|SUBMIT)\s+127\.0\.0\.1:(\d+)", buf, re.M):
                self.ports[m.group(1).decode()] = int(m.group(2))
        if len(self.ports) < 3:
            self.stop()
            raise SystemExit(f"postoffice did not start under strace; see {self.log.name}")
        children = []
        deadline = time.monotonic() + 30
        while not children and time.monotonic() < deadline:
            children = proc_children(self.proc.pid)
            if not children:
                time.sleep(0.05)
        if not children:
            self.stop()
            raise SystemExit("cannot find the traced server process")
        self.pid = children[0]

    def stop(self):
        """SIGTERM the server; strace exits when it has, with the log complete."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(getattr(self, "pid", self.proc.pid), signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=60)

    def maildir(self, user):
        return os.path.join(self.data, "mail", DOMAIN, user)

    def files(self, user):
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir(user), sub)
            if os.path.isdir(d):
                out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
        return out


def message(tag, sender="someone@example.net", rcpt=f"user@{DOMAIN}"):
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.net>\r\n\r\nbody of {tag}\r\n").encode()


def smtp_session(port, sender, rcpt, tag, login=None):
    """One message per connection; returns the client's local port and the
    DATA reply."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    try:
        s.ehlo("client.test")
        if login:
            s.login(login, PASSWORD)
        code, _ = s.mail(sender)
        assert code == 250, code
        code, _ = s.rcpt(rcpt)
        assert code == 250, code
        cport = s.sock.getsockname()[1]
        code, reply = s.data(message(tag, sender, rcpt))
        assert code == 250, (code, reply)
        s.quit()
    finally:
        s.close()
    return cport, reply


def data_reply(trace, cport):
    """The write of the reply to DATA on the session with client port
    `cport`: the first write after the 354."""
    writes = trace.socket_writes(peer_port=cport)
    k = next((i for i, w in enumerate(writes) if w.data().startswith(b"354")), None)
    assert k is not None and k + 1 < len(writes), \
        f"no 354 and reply on the session from port {cport}" + trace.no_addresses()
    ack = writes[k + 1]
    assert ack.data().startswith(b"250"), ack.data()
    return writes[k], ack


def renames_into(trace, directory, after):
    return [r for r in trace.renames
            if os.path.dirname(trace.paths(r)[1]) == directory and r.start > after]


def check_smtp_local(trace, cport, maildir, what):
    go, ack = data_reply(trace, cport)
    renames = renames_into(trace, os.path.join(maildir, "new"), go.end)
    assert len(renames) == 1, f"{what}: expected one rename into {maildir}/new after the 354, got {renames}"
    expect_none(trace.published(renames[0], ack.start, what))


def check_pop3_quit(trace, cport, files, what):
    """The files were unlinked and their directories fsynced before the
    last write on the session (the +OK to QUIT)."""
    writes = trace.socket_writes(peer_port=cport)
    assert writes, f"{what}: no writes on the session from port {cport}" + trace.no_addresses()
    ack = writes[-1]
    assert ack.data().startswith(b"+OK"), ack.data()
    problems = []
    for path in files:
        unlinks = [u for u in trace.unlinks if trace.paths(u)[0] == path]
        if not unlinks:
            problems.append(f"{what}: {path} was never unlinked")
            continue
        u = unlinks[0]
        if u.end >= ack.start:
            problems.append(f"{what}: {path} unlinked ({u}) after the +OK to QUIT ({ack})")
            continue
        problems += trace.dir_synced_after(u, path, ack.start, f"{what}: unlink of {path}")
    expect_none(problems)
    for path in files:
        assert not os.path.exists(path), f"{path} still exists"


def traced_deliver(srv, addr, tag, work):
    log = os.path.join(work, f"deliver-{tag}.strace")
    r = subprocess.run(strace_cmd(log) + [BIN, "--config", srv.config, "deliver", addr],
                       input=message(tag, rcpt=addr), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return Trace(log)


def run_fetch(srv, work, name, user, policy):
    cfg = os.path.join(work, f"fetch-{name}.toml")
    state = os.path.join(work, "fetch-state", f"{name}.state")
    maildir = os.path.join(work, "fetched", name)
    with open(cfg, "w") as f:
        f.write(f"""[[account]]
name = "{name}"
server = "127.0.0.1"
port = {srv.ports['POP3']}
tls = "none"
user = "{user}"
password = "{PASSWORD}"
policy = "{policy}"
state_file = "{state}"
[account.destination]
maildir = "{maildir}"
""")
    os.chmod(cfg, 0o600)
    log = os.path.join(work, f"fetch-{name}.strace")
    r = subprocess.run(strace_cmd(log) + [BIN, "fetch", "--config-file", cfg], capture_output=True,
                       timeout=120, env=dict(os.environ, HOME=work), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.returncode, r.stderr.decode())
    return Trace(log), state, maildir


def server_messages(srv, user):
    """(number, uidl, subject) of every message in `user`'s maildrop."""
    p = poplib.POP3("127.0.0.1", srv.ports["POP3"], timeout=60)
    try:
        p.user(user)
        p.pass_(PASSWORD)
        out = []
        for line in p.uidl()[1]:
            num, uid = line.decode().split()
            head = b"\n".join(p.top(int(num), 0)[1])
            subject = re.search(rb"^Subject: (.*)$", head, re.M).group(1).decode()
            out.append((int(num), uid, subject))
        p.quit()
    finally:
        p.close()
    return out


def record_point(trace, state, uid, after):
    """The line where the record of `uid` in the state file became durable
    (at or after line `after`), or None: an append to the state file
    followed by its fsync/fdatasync, or a temporary file holding it,
    fsynced, renamed over the state file, the directory fsynced."""
    line = f" {uid}\n".encode()
    points = []
    for w in trace.writes:
        if w.fdpath == state and line in w.data() and w.start > after:
            f = trace.synced(state, w.end, trace.nlines)
            if f:
                points.append(f.end)
    for r in trace.renames:
        src, dst = trace.paths(r)
        if dst != state or r.start <= after:
            continue
        if not any(w.fdpath == src and line in w.data() for w in trace.writes):
            continue
        if trace.file_synced_before_rename(r, "state"):
            continue
        f = trace.synced(os.path.dirname(state), r.end, trace.nlines)
        if f:
            points.append(f.end)
    return min(points) if points else None


def check_fetch(trace, state, maildir, msgs, policy, pop3_port):
    """For every message: delivered durably before its UIDL is first written
    to the state file; the record durable before QUIT (and its DELE)."""
    writes = trace.socket_writes(local_port=None, peer_port=pop3_port)
    assert writes, "fetch: no writes to the POP3 server" + trace.no_addresses()

    def command(cmd):
        return [w for w in writes if cmd.encode() in w.data().split(b"\r\n")]

    quit_ = command("QUIT")
    assert len(quit_) == 1, quit_
    quit_ = quit_[0]
    state_dir, state_base = os.path.split(state)
    problems = []
    for num, uid, subject in msgs:
        what = f"message {num} ({subject})"
        tmps = {w.fdpath for w in trace.writes
                if (w.fdpath or "").startswith(os.path.join(maildir, "tmp") + "/")
                and subject.encode() in w.data()}
        assert len(tmps) == 1, (what, tmps)
        tmp = tmps.pop()
        renames = [r for r in trace.renames if trace.paths(r)[0] == tmp]
        assert len(renames) == 1, (what, renames)
        r = renames[0]
        assert os.path.dirname(trace.paths(r)[1]) == os.path.join(maildir, "new"), trace.paths(r)
        # The first time the UIDL reaches the state file (or its temporary).
        first = [w for w in trace.writes
                 if w.fdpath and os.path.dirname(w.fdpath) == state_dir
                 and os.path.basename(w.fdpath).lstrip(".").startswith(state_base)
                 and f" {uid}\n".encode() in w.data()]
        assert first, f"{what}: UIDL {uid} never written to the state file"
        first = min(first, key=lambda w: w.start)
        problems += trace.published(r, first.start, f"{what}, before its UIDL is recorded")
        point = record_point(trace, state, uid, r.end)
        if point is None:
            problems.append(f"{what}: the record of UIDL {uid} never became durable")
            continue
        problems += trace.created_dirs_synced(state, point, f"{what}: state file")
        if point >= quit_.start:
            problems.append(f"{what}: UIDL {uid} durably recorded (line {point + 1}) only after "
                            f"QUIT was sent ({quit_})")
        dele = command(f"DELE {num}")
        if policy == "keep":
            if dele:
                problems.append(f"{what}: DELE sent in keep mode")
        elif len(dele) != 1:
            problems.append(f"{what}: expected one DELE {num}, got {dele}")
        elif point >= dele[0].start:
            problems.append(f"{what}: DELE {num} sent ({dele[0]}) before UIDL {uid} was durably "
                            f"recorded (line {point + 1})")
    expect_none(problems)


def fetch_client_port(trace, pop3_port):
    for w in trace.socket_writes(peer_port=pop3_port):
        return int(re.match(r"TCP:\[[\d.]+:(\d+)", w.fdpath).group(1))
    raise AssertionError("fetch: no POP3 connection in the trace")


# ---------------------------------------------------------------------------

def main():
    if not shutil.which("strace"):
        raise SystemExit("strace is not installed (Debian package strace; .ci/run installs it)")
    work = os.path.realpath(tempfile.mkdtemp(prefix="postoffice-durability-"))
    srv = Server(work)
    try:
        run(srv, work)
    finally:
        srv.stop()
        if FAILED:
            print(f"traces and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


def run(srv, work):
    users = ["out", "sub", "mx", "pop", "fkeep", "fdel"]
    for u in users:
        srv.cli("user", "add", f"{u}@{DOMAIN}", "--password-stdin", stdin=(PASSWORD + "\n").encode())
    srv.start()
    sessions = {}

    # The server-side sessions; their traces are read once the server stops.
    # The remote submission goes first, before anything else was written.
    sessions["remote"] = smtp_session(srv.ports["SUBMIT"], f"out@{DOMAIN}", f"someone@{REMOTE}",
                                      "submit-remote", login=f"out@{DOMAIN}")
    sessions["local"] = smtp_session(srv.ports["SUBMIT"], f"out@{DOMAIN}", f"sub@{DOMAIN}",
                                     "submit-local", login=f"out@{DOMAIN}")
    sessions["mx"] = smtp_session(srv.ports["SMTP"], "someone@example.net", f"mx@{DOMAIN}", "mx")

    for u in ("pop", "fkeep", "fdel"):
        for i in range(2):
            tag = f"{u}-{i}"

            @check(f"postoffice deliver ({tag}): file fsynced, renamed, new/ fsynced before exit 0")
            def _():
                t = traced_deliver(srv, f"{u}@{DOMAIN}", tag, work)
                line, code = t.exit_of_main()
                assert code == 0, code
                new = os.path.join(srv.maildir(u), "new")
                renames = renames_into(t, new, -1)
                assert len(renames) == 1, renames
                expect_none(t.published(renames[0], line, tag) + t.global_problems())

    pop_files = srv.files("pop")
    assert len(pop_files) == 2, pop_files
    p = poplib.POP3("127.0.0.1", srv.ports["POP3"], timeout=60)
    sessions["pop"] = p.sock.getsockname()[1]
    p.user(f"pop@{DOMAIN}")
    p.pass_(PASSWORD)
    p.dele(1)
    p.dele(2)
    assert p.quit().startswith(b"+OK")

    fetched = {}
    for name, policy in (("fkeep", "keep"), ("fdel", "delete")):
        msgs = server_messages(srv, f"{name}@{DOMAIN}")
        files = srv.files(name)
        assert len(msgs) == 2 and len(files) == 2, (msgs, files)

        @check(f"postoffice fetch, {policy}: delivered durably, then the UIDL recorded durably, "
               f"then {'QUIT' if policy == 'keep' else 'DELE and QUIT'}")
        def _():
            trace, state, maildir = run_fetch(srv, work, name, f"{name}@{DOMAIN}", policy)
            fetched[name] = (trace, files)
            assert len(os.listdir(os.path.join(maildir, "new"))) == 2
            check_fetch(trace, state, maildir, msgs, policy, srv.ports["POP3"])
            expect_none(trace.global_problems())

    srv.stop()
    trace = Trace(srv.trace)

    @check("submission to a remote user: spool .msg and .env fsynced, renamed (.env last), "
           "spool directory fsynced before 250")
    def _():
        cport, reply = sessions["remote"]
        go, ack = data_reply(trace, cport)
        qid = re.search(rb"queued as (\S+)", ack.data()).group(1).decode()
        problems = []
        found = {}
        for ext in ("msg", "env"):
            r = [r for r in trace.renames if os.path.basename(trace.paths(r)[1]) == f"{qid}.{ext}"]
            assert r, f"no rename to {qid}.{ext}"
            found[ext] = r[0]
            problems += trace.published(r[0], ack.start, f"spool {qid}.{ext}")
        if not found["msg"].end < found["env"].start:
            problems.append(f"{qid}.env renamed before {qid}.msg")
        expect_none(problems)

    @check("submission to a local user: file fsynced, renamed into new/, new/ fsynced before 250")
    def _():
        check_smtp_local(trace, sessions["local"][0], srv.maildir("sub"), "submission")

    @check("SMTP (MX): file fsynced, renamed into new/, new/ fsynced before 250")
    def _():
        check_smtp_local(trace, sessions["mx"][0], srv.maildir("mx"), "smtp")

    @check("POP3 DELE + QUIT: files unlinked and their directories fsynced before +OK")
    def _():
        check_pop3_quit(trace, sessions["pop"], pop_files, "pop3")

    @check("POP3 DELE + QUIT from postoffice fetch (delete mode): the same")
    def _():
        assert "fdel" in fetched, "the fetch did not run"
        ftrace, files = fetched["fdel"]
        check_pop3_quit(trace, fetch_client_port(ftrace, srv.ports["POP3"]), files, "pop3 (fetch)")

    @check("server: every renamed file fsynced first, its directory after; every new "
           "directory's parent fsynced")
    def _():
        expect_none(trace.global_problems())


if __name__ == "__main__":
    main()

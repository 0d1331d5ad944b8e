#!/usr/bin/env python3
"""Migration keeping UIDLs: `postoffice import` from a real Dovecot.

Usage: migrate.py PATH/TO/postoffice

Starts a private Dovecot (Debian dovecot-pop3d) with one user's Maildir,
lets `postoffice fetch` (policy keep) download everything from it, as a
mail client that leaves mail on the server would, then imports the user's
mail into postoffice both ways: over POP3 (interrupted by SIGKILL part-way,
then resumed, then run once more) and from the Dovecot Maildir with its
dovecot-uidlist. Each time: the UIDL lists and every message's bytes equal
Dovecot's, and `postoffice fetch` with the same state file pointed at
postoffice downloads 0 messages. Prints "N passed, M failed"; exits 1 on
failure.
"""

import glob
import os
import poplib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from harness import FAILED, PASSED, check
from fetch_compare import Postoffice, start_dovecot

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
SOURCE = "migr@example.test"
COUNT = 300


def messages():
    out = []
    for i in range(COUNT):
        body = "".join(f"line {j} of message {i}\n" for j in range(400))
        m = (f"Received: from relay.example.net by mx.example.org; Tue, 14 Nov 2023 22:{i // 60:02}:{i % 60:02} +0000\n"
             f"From: sender{i}@example.net\nTo: {SOURCE}\nSubject: migrated {i}\n"
             f"Message-ID: <m{i}@example.net>\n\n{body}.a dot line\n")
        if i == 7:
            m = m.rstrip("\n")  # no final newline
        out.append(m.encode())
    return out


def listing(port, user):
    """UIDLs in order and every message's bytes, as a POP3 client sees them."""
    p = poplib.POP3("127.0.0.1", port, timeout=120)
    p.user(user)
    p.pass_("pw")
    uidl = [line.split()[1].decode() for line in p.uidl()[1]]
    bodies = [b"\r\n".join(p.retr(n + 1)[1]) for n in range(len(uidl))]
    p.quit()
    return uidl, bodies


def fetch_keep(work, port, user):
    """`postoffice fetch`, policy keep, one state file for all runs."""
    cfg = os.path.join(work, f"fetch-{port}-{user}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[[account]]
name = "migration"
server = "127.0.0.1"
port = {port}
tls = "none"
user = "{user}"
password = "pw"
policy = "keep"
state_file = "{work}/fetch-state"
[account.destination]
maildir = "{work}/client-maildir"
""")
    os.chmod(cfg, 0o600)
    r = subprocess.run([BIN, "fetch", "--config-file", cfg], capture_output=True, timeout=600,
                       env=dict(os.environ, HOME=work))
    assert r.returncode == 0, (r.returncode, r.stdout.decode(), r.stderr.decode())
    m = re.search(r"migration: (\d+) messages? \(", r.stdout.decode() + r.stderr.decode())
    assert m, (r.stdout.decode(), r.stderr.decode())
    return int(m.group(1))


def main():
    work = tempfile.mkdtemp(prefix="postoffice-migrate-")
    os.chmod(work, 0o755)
    dpid = None
    po = None
    try:
        dport, dpid = start_dovecot(work, {SOURCE: messages()})
        dovecot_maildir = os.path.join(work, "dovecot", "migr", "Maildir")

        @check("postoffice fetch (keep) downloads every message from Dovecot")
        def _():
            assert fetch_keep(work, dport, SOURCE) == COUNT
            assert fetch_keep(work, dport, SOURCE) == 0

        want_uidl, want_bodies = listing(dport, SOURCE)
        assert len(want_uidl) == COUNT
        po = Postoffice(work)
        for u in ("a@example.test", "b@example.test"):
            po.cli("user", "add", u, "--password-stdin", stdin=b"pw\n")
        a_new = os.path.join(work, "data", "mail", "example.test", "a", "new")

        def imp(*args):
            return subprocess.run([BIN, "--config", po.config, "import", *args], input=b"pw\n",
                                  capture_output=True, timeout=600)

        pop3_args = ["a@example.test", "--pop3", f"127.0.0.1:{dport}", "--login", SOURCE,
                     "--password-stdin", "--tls", "none"]

        @check("import over POP3, killed part-way, then resumed")
        def _():
            proc = subprocess.Popen([BIN, "--config", po.config, "import", *pop3_args],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            proc.stdin.write(b"pw\n")
            proc.stdin.close()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if len(glob.glob(os.path.join(a_new, "*"))) >= 5:
                    break
                time.sleep(0.005)
            proc.kill()
            proc.wait()
            done = len(glob.glob(os.path.join(a_new, "*")))
            assert 0 < done < COUNT, f"not interrupted part-way: {done} of {COUNT}"
            r = imp(*pop3_args)
            assert r.returncode == 0, r.stderr.decode()
            out = r.stdout.decode()
            assert f"{COUNT - done} of {COUNT} messages imported" in out, out
            assert f"{done} already there" in out, out

        @check("import over POP3 again imports nothing (idempotent)")
        def _():
            r = imp(*pop3_args)
            assert r.returncode == 0, r.stderr.decode()
            assert f"0 of {COUNT} messages imported" in r.stdout.decode(), r.stdout.decode()

        @check("after the POP3 import: same UIDLs, same bytes as Dovecot")
        def _():
            uidl, bodies = listing(po.port, "a@example.test")
            assert uidl == want_uidl, (uidl[:3], want_uidl[:3])
            assert bodies == want_bodies

        @check("postoffice fetch with the same state file, pointed at postoffice: 0 messages")
        def _():
            assert fetch_keep(work, po.port, "a@example.test") == 0

        @check("import from the Dovecot Maildir (dovecot-uidlist): same UIDLs, same bytes")
        def _():
            r = imp("b@example.test", "--dovecot-maildir", dovecot_maildir)
            assert r.returncode == 0, r.stderr.decode()
            assert f"{COUNT} of {COUNT} messages imported" in r.stdout.decode(), r.stdout.decode()
            r = imp("b@example.test", "--dovecot-maildir", dovecot_maildir)
            assert f"0 of {COUNT} messages imported" in r.stdout.decode(), r.stdout.decode()
            uidl, bodies = listing(po.port, "b@example.test")
            assert uidl == want_uidl, (uidl[:3], want_uidl[:3])
            assert bodies == want_bodies
            assert fetch_keep(work, po.port, "b@example.test") == 0

        @check("import refuses an unknown user and a maildrop in a session")
        def _():
            r = imp("nobody@example.test", "--dovecot-maildir", dovecot_maildir)
            assert r.returncode == 67, r
            p = poplib.POP3("127.0.0.1", po.port, timeout=60)
            p.user("b@example.test")
            p.pass_("pw")
            r = imp("b@example.test", "--dovecot-maildir", dovecot_maildir)
            p.quit()
            assert r.returncode == 75 and b"in use" in r.stderr, r
    finally:
        if po:
            po.stop()
        if dpid and os.path.exists(dpid):
            os.kill(int(open(dpid).read().strip()), signal.SIGTERM)
        if FAILED:
            for n in ("dovecot.log", "server.log"):
                p = os.path.join(work, n)
                if os.path.exists(p):
                    print(f"--- {n}")
                    sys.stdout.write(open(p, "rb").read()[-3000:].decode(errors="replace"))
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

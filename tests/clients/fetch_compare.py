#!/usr/bin/env python3
"""`postoffice fetch` against a real Dovecot and against postoffice itself.

Usage: fetch_compare.py PATH/TO/postoffice

Starts a private Dovecot (Debian dovecot-pop3d) on a loopback port with a
passwd-file and Maildirs, and a postoffice server, seeds the same messages
into both, then runs `postoffice fetch` with the keep and delete policies
into a Maildir and an mbox, twice. Both servers must give the same result:
keep leaves everything on the server and a rerun fetches nothing twice;
delete empties the maildrop; every message arrives exactly once with the
right content. Prints "N passed, M failed"; exits 1 on failure.
"""

import glob
import mailbox
import os
import poplib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from harness import FAILED, NO_DNS, PASSED, check, free_port

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
MAIL_USER = "pofetch"


def wait_port(port, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"+OK"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answers on port {port}")


def messages(tag):
    return [
        (f"From: someone@example.net\nTo: user@example.test\nSubject: {tag} {i}\n"
         f"Message-ID: <{tag}.{i}@example.net>\n\nbody of {tag} {i}\n.dot line\nFrom here on\n").encode()
        for i in range(3)
    ]


def mail_uid():
    try:
        return pwd.getpwnam(MAIL_USER).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", MAIL_USER], check=True)
        return pwd.getpwnam(MAIL_USER).pw_uid


def start_dovecot(work, users):
    uid = mail_uid()
    port = free_port()
    home = os.path.join(work, "dovecot")
    pw_hash = subprocess.run(["openssl", "passwd", "-6", "-salt", "fetchtest", "pw"],
                             capture_output=True, check=True).stdout.decode().strip()
    with open(os.path.join(work, "dovecot.passwd"), "w") as f:
        for u in users:
            f.write(f"{u}:{{SHA512-CRYPT}}{pw_hash}\n")
    for u, msgs in users.items():
        local = u.split("@")[0]
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(home, local, "Maildir", sub))
        for i, m in enumerate(msgs):
            # Dovecot-style LF files in new/.
            with open(os.path.join(home, local, "Maildir", "new", f"17000000{i:02}.M{i}P1.seed"), "wb") as f:
                f.write(m)
    subprocess.run(["chown", "-R", f"{uid}:{uid}", home], check=True)
    os.chmod(work, 0o755)
    run = os.path.join(work, "drun")
    os.makedirs(run)
    conf = os.path.join(work, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(f"""base_dir = {run}
instance_name = postoffice-fetch-test
state_dir = {work}/dstate
log_path = {work}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_uid = {uid}
mail_gid = {uid}
first_valid_uid = 100
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {work}/dovecot.passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={home}/%n
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
""")
    subprocess.run(["dovecot", "-c", conf], check=True)
    wait_port(port)
    return port, os.path.join(run, "master.pid")


class Postoffice:
    def __init__(self, work):
        self.config = os.path.join(work, "postoffice.toml")
        with open(self.config, "w") as f:
            f.write('data_dir = "data"\nhostname = "localhost"\n[pop3]\nlisten = ["127.0.0.1:0"]\n'
                    'listen_tls = ["127.0.0.1:0"]\n[smtp]\nlisten = []\n[submission]\nlisten = []\nlisten_tls = []\n[http]\nlisten = []\n'
                    + NO_DNS)
        self.log = open(os.path.join(work, "server.log"), "wb")
        self.proc = subprocess.Popen([BIN, "--config", self.config, "serve"], stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        self.port = None
        deadline = time.monotonic() + 60
        while self.port is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = re.match(r"\s+POP3\s+127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
        if self.port is None:
            raise SystemExit("postoffice did not start")

    def cli(self, *args, stdin=b""):
        r = subprocess.run([BIN, "--config", self.config, *args], input=stdin, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def stat(port, user):
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user(user)
    p.pass_("pw")
    n = p.stat()[0]
    p.quit()
    return n


def fetch(work, name, port, user, policy, dest_kind, dest):
    cfg = os.path.join(work, f"fetch-{name}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[[account]]
name = "{name}"
server = "127.0.0.1"
port = {port}
tls = "none"
user = "{user}"
password = "pw"
policy = "{policy}"
state_file = "{work}/state-{name}"
[account.destination]
{dest_kind} = "{dest}"
""")
    os.chmod(cfg, 0o600)
    r = subprocess.run([BIN, "fetch", "--config-file", cfg], capture_output=True, timeout=300,
                       env=dict(os.environ, HOME=work))
    assert r.returncode == 0, (r.returncode, r.stdout.decode(), r.stderr.decode())
    return r.stderr.decode()


def scenario(label, work, port, prefix):
    """Keep into a Maildir (twice), delete into an mbox (twice)."""
    keep_user, del_user = f"keep{prefix}@example.test", f"del{prefix}@example.test"
    maildir = os.path.join(work, f"{label}-maildir")
    mbox = os.path.join(work, f"{label}.mbox")
    fetch(work, f"{label}-keep", port, keep_user, "keep", "maildir", maildir)
    fetch(work, f"{label}-keep", port, keep_user, "keep", "maildir", maildir)
    files = sorted(glob.glob(os.path.join(maildir, "new", "*")) + glob.glob(os.path.join(maildir, "cur", "*")))
    got = sorted(open(p, "rb").read() for p in files)
    want = sorted(messages("keep"))
    assert got == want, (label, got, want)
    assert stat(port, keep_user) == 3, "keep must leave the mail on the server"

    fetch(work, f"{label}-del", port, del_user, "delete", "mbox", mbox)
    fetch(work, f"{label}-del", port, del_user, "delete", "mbox", mbox)
    data = open(mbox, "rb").read()
    assert b"\r" not in data
    assert len(re.findall(rb"^From ", data, re.M)) == 3, data
    for i in range(3):
        assert data.count(f"Subject: del {i}\n".encode()) == 1, data
    assert b"\n>From here on\n" in data, "mboxrd quoting"
    assert stat(port, del_user) == 0, "delete must empty the maildrop"
    # Standard readers (the formats mutt reads) see the same messages.
    subjects = sorted(m["Subject"] for m in mailbox.mbox(mbox))
    assert subjects == [f"del {i}" for i in range(3)], subjects
    subjects = sorted(m["Subject"] for m in mailbox.Maildir(maildir, create=False))
    assert subjects == [f"keep {i}" for i in range(3)], subjects
    return len(files), data.count(b"\nFrom ") + 1


def main():
    work = tempfile.mkdtemp(prefix="postoffice-fetch-")
    os.chmod(work, 0o755)
    dpid = None
    po = None
    results = {}
    try:
        users = {"keepd@example.test": messages("keep"), "deld@example.test": messages("del")}
        dport, dpid = start_dovecot(work, users)

        @check("postoffice fetch against Dovecot: keep (twice) into a Maildir, delete (twice) into an mbox")
        def _():
            results["dovecot"] = scenario("dovecot", work, dport, "d")

        po = Postoffice(work)
        for u, tag in (("keepp@example.test", "keep"), ("delp@example.test", "del")):
            po.cli("user", "add", u, "--password-stdin", stdin=b"pw\n")
            for m in messages(tag):
                po.cli("deliver", u, stdin=m)

        @check("postoffice fetch against postoffice: the same scenario")
        def _():
            results["postoffice"] = scenario("postoffice", work, po.port, "p")

        @check("both servers give the same result")
        def _():
            assert results.get("dovecot") == results.get("postoffice") == (3, 3), results
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

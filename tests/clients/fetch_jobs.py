#!/usr/bin/env python3
"""Server-run fetch jobs: one postoffice pulls a user's mail from another.

Usage: fetch_jobs.py PATH/TO/postoffice

Starts two postoffice servers on loopback: the "remote" one holds
rem@remote.test's mail, the local one has loc@example.test with a fetch job
(`postoffice user fetch add`) for that account. Checks, with poplib on the
local server: every message arrives exactly once, with the verification
pipeline's verdict headers; the remote maildrop is emptied (policy delete);
while the remote server is down the job fails and is retried with doubling
back-off (read from the local server's log); mail delivered to the remote
meanwhile arrives once it is back. Bounded polls only. Prints "N passed,
M failed"; exits 1 on failure.
"""

import os
import poplib
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from harness import FAILED, PASSED, check, free_port, wait_for

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")

FILTERS = """
[dns]
nameservers = ["127.0.0.1:9"]
timeout_secs = 1
[filter]
spf = "tag"
dkim = "tag"
dmarc = "off"
"""


class Server:
    def __init__(self, work, name, pop3_port, extra=""):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "postoffice.toml")
        with open(self.config, "w") as f:
            f.write(f'data_dir = "data"\nhostname = "{name}.test"\n{extra}\n'
                    f'[pop3]\nlisten = ["127.0.0.1:{pop3_port}"]\nlisten_tls = []\n'
                    '[smtp]\nlisten = []\n[submission]\nlisten = []\nlisten_tls = []\n'
                    # Two servers run at once: neither takes the web listener's default port.
                    '[http]\nlisten = []\n' + FILTERS)
        self.port = pop3_port
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BIN, "--config", self.config, "serve"], stdout=subprocess.DEVNULL,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        wait_for(lambda: pop3_answers(self.port), f"{self.dir} answers POP3")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def cli(self, *args, stdin=b""):
        r = subprocess.run([BIN, "--config", self.config, *args], input=stdin, capture_output=True, timeout=120)
        assert r.returncode == 0, (args, r.stdout.decode(), r.stderr.decode())
        return r.stdout.decode()

    def logged(self):
        return open(self.log_path, "rb").read().decode(errors="replace")


def pop3_answers(port):
    try:
        p = poplib.POP3("127.0.0.1", port, timeout=5)
        p.quit()
        return True
    except OSError:
        return False


def mailbox(port, user):
    """The messages (bytes) of a maildrop, left on the server."""
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user(user)
    p.pass_("pw")
    n = p.stat()[0]
    out = [b"\r\n".join(p.retr(i + 1)[1]) for i in range(n)]
    p.quit()
    return out


def subjects(msgs):
    return sorted(re.search(rb"^Subject: ([^\r\n]*)", m, re.M).group(1).decode() for m in msgs)


def message(i):
    return (f"Return-Path: <sender{i}@example.net>\nReceived: from mail.example.net (mail.example.net [192.0.2.7])\n"
            f"\tby remote.test; Tue, 14 Nov 2023 22:13:2{i} +0000\nFrom: sender{i}@example.net\n"
            f"To: rem@remote.test\nSubject: fetched {i}\nMessage-ID: <f{i}@example.net>\n\nbody {i}\n").encode()


def main():
    work = tempfile.mkdtemp(prefix="postoffice-fetchjobs-")
    remote = Server(work, "remote", free_port())
    local = Server(work, "local", free_port(),
                   "[fetch_jobs]\ninterval_secs = 1\nmax_backoff_secs = 8\n")
    try:
        remote.cli("user", "add", "rem@remote.test", "--password-stdin", stdin=b"pw\n")
        for i in range(3):
            remote.cli("deliver", "rem@remote.test", stdin=message(i))
        remote.start()
        local.cli("user", "add", "loc@example.test", "--password-stdin", stdin=b"pw\n")
        local.cli("user", "fetch", "add", "loc@example.test", "--name", "remote", "--server",
                  f"127.0.0.1:{remote.port}", "--login", "rem@remote.test", "--password-stdin",
                  "--tls", "none", stdin=b"pw\n")
        listed = local.cli("user", "fetch", "list")
        assert "loc@example.test/remote: rem@remote.test@127.0.0.1" in listed, listed
        assert "pw" not in open(os.path.join(local.dir, "data", "fetch-jobs.toml")).read().replace(
            'password = "pw"', ""), "the password is only in its key"
        assert oct(os.stat(os.path.join(local.dir, "data", "fetch-jobs.toml")).st_mode & 0o777) == "0o600"
        local.start()

        @check("fetched messages arrive once, through the verification pipeline")
        def _():
            wait_for(lambda: len(mailbox(local.port, "loc@example.test")) >= 3, "3 messages fetched")
            msgs = mailbox(local.port, "loc@example.test")
            assert subjects(msgs) == [f"fetched {i}" for i in range(3)], subjects(msgs)
            for m in msgs:
                assert re.search(rb"^X-Postoffice-Verdict: ", m, re.M), m
                assert re.search(rb"^Authentication-Results: local\.test;", m, re.M), m
                assert b"Received: from mail.example.net ([192.0.2.7])" in m or b"[192.0.2.7]" in m, m
            wait_for(lambda: len(mailbox(remote.port, "rem@remote.test")) == 0, "the remote maildrop is emptied")

        @check("new remote mail arrives once; nothing twice on later rounds")
        def _():
            for i in (3, 4):
                remote.cli("deliver", "rem@remote.test", stdin=message(i))
            wait_for(lambda: len(mailbox(local.port, "loc@example.test")) >= 5, "5 messages fetched")
            rounds = local.logged().count("fetch job")
            wait_for(lambda: local.logged().count("fetch job") >= rounds + 3, "three more rounds")
            assert subjects(mailbox(local.port, "loc@example.test")) == [f"fetched {i}" for i in range(5)]

        @check("remote down: the job fails and is retried with doubling back-off, then catches up")
        def _():
            remote.stop()
            remote.cli("deliver", "rem@remote.test", stdin=message(5))
            retries = lambda: [int(x) for x in re.findall(r"fetch job failed; retrying later.*retry_in_secs=(\d+)",
                                                          local.logged())]
            wait_for(lambda: len(retries()) >= 4, "four failed rounds", seconds=120)
            r = retries()
            assert r[:4] == [1, 2, 4, 8], r
            remote.start()
            wait_for(lambda: len(mailbox(local.port, "loc@example.test")) >= 6, "the message from the downtime")
            assert subjects(mailbox(local.port, "loc@example.test")) == [f"fetched {i}" for i in range(6)]
            out = local.cli("user", "fetch", "run", "loc@example.test")
            assert "loc@example.test/remote: 0 messages" in out, out
    finally:
        remote.stop()
        local.stop()
        if FAILED:
            for s in (remote, local):
                print(f"--- {s.log_path}")
                sys.stdout.write(s.logged()[-4000:])
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Provider policy a POP3 user can see: quota warnings and retention notices.

Usage: policy.py PATH/TO/postoffice

One postoffice server on loopback with retention "days" of one second
(`[policy] retention_day_secs = 1`, the documented test knob). Checks, with
smtplib and poplib: filling a mailbox across 80 % and 95 % of its quota
brings exactly one warning per level, none on further deliveries (refused
when full), and a new one after the mailbox was emptied and filled again;
with retention counted from the first retrieval, CAPA after login shows the
user's EXPIRE, a retrieved message is announced by one retention notice
(listing its sender and subject) and then deleted, while the notice itself
stays. Bounded polls only. Prints "N passed, M failed"; exits 1 on failure.
"""

import os
import poplib
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile

from harness import FAILED, NO_DNS, PASSED, check, free_port, wait_for

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
FULL = "full@example.test"
OLD = "old@example.test"


def heads(port, user):
    """(subject, notice kind, whole header) of every message, via TOP (which
    does not count as retrieval)."""
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user(user)
    p.pass_("pw")
    out = []
    for i in range(p.stat()[0]):
        lines = p.top(i + 1, 0)[1]
        head = b"\r\n".join(lines).decode(errors="replace")
        subj = re.search(r"^Subject: ([^\r\n]*)", head, re.M)
        kind = re.search(r"^X-Postoffice-Notice: ([^\r\n]*)", head, re.M)
        out.append((subj.group(1) if subj else "", kind.group(1) if kind else None, head))
    p.quit()
    return out


def warnings(port):
    return [s for s, k, _ in heads(port, FULL) if k == "quota-warning"]


def send(port, rcpt, subject, size):
    body = "x" * 70 + "\r\n"
    msg = (f"From: sender@example.net\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n" + body * (size // 72))
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail("sender@example.net", [rcpt], msg.encode())


def main():
    work = tempfile.mkdtemp(prefix="postoffice-policy-")
    smtp_port, pop3_port = free_port(), free_port()
    config = os.path.join(work, "postoffice.toml")
    with open(config, "w") as f:
        f.write(f'''data_dir = "data"
hostname = "mx.example.test"
[pop3]
listen = ["127.0.0.1:{pop3_port}"]
listen_tls = []
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[submission]
listen = []
listen_tls = []
[policy]
quota_warning_percent = [80, 95]
retention_from = "retrieval"
retention_notice_days = 2
retention_day_secs = 1
expire_interval_secs = 1
''' + NO_DNS)

    def cli(*args, stdin=b""):
        r = subprocess.run([BIN, "--config", config, *args], input=stdin, capture_output=True, timeout=120)
        assert r.returncode == 0, (args, r.stderr.decode())
        return r.stdout.decode()

    for u in (FULL, OLD):
        cli("user", "add", u, "--password-stdin", stdin=b"pw\n")
    cli("user", "set", FULL, "--quota-bytes", "100000")
    cli("user", "set", OLD, "--retention-days", "3")
    log = open(os.path.join(work, "server.log"), "wb")
    proc = subprocess.Popen([BIN, "--config", config, "serve"], stdout=subprocess.DEVNULL, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{pop3_port}"],
                                        stderr=subprocess.DEVNULL).returncode == 0, "the server listens")

        @check("quota warnings: one at 80 %, one at 95 %, none when full, again after emptying")
        def _():
            sent = 0
            for size in (10_000, 2_000):  # big steps, then small ones up to the brim
                refused = None
                while refused is None and sent < 80:
                    try:
                        send(smtp_port, FULL, f"fill {sent}", size)
                        sent += 1
                    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as e:
                        refused = e
                    if sent == 7:
                        assert warnings(pop3_port) == [], "70 % is below the first level"
                    if sent == 8:
                        assert len(warnings(pop3_port)) == 1, "80 % crossed"
                assert refused is not None, "the mailbox never filled up"
            w = warnings(pop3_port)
            assert len(w) == 2 and all("% full" in s for s in w), w
            for _ in range(2):  # still full: refused, no more warnings
                try:
                    send(smtp_port, FULL, "more", 10_000)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError):
                    pass
            assert len(warnings(pop3_port)) == 2
            p = poplib.POP3("127.0.0.1", pop3_port, timeout=60)
            p.user(FULL)
            p.pass_("pw")
            for i in range(p.stat()[0]):
                p.dele(i + 1)
            p.quit()
            for i in range(8):
                send(smtp_port, FULL, f"again {i}", 10_000)
            assert len(warnings(pop3_port)) == 1, heads(pop3_port, FULL)

        @check("retention from retrieval: EXPIRE per user, one notice, then deletion")
        def _():
            p = poplib.POP3("127.0.0.1", pop3_port, timeout=60)
            before = p.capa()
            assert before.get("EXPIRE", [None])[-1] == "USER", before
            p.quit()
            send(smtp_port, OLD, "read and left on the server", 500)
            p = poplib.POP3("127.0.0.1", pop3_port, timeout=60)
            p.user(OLD)
            p.pass_("pw")
            assert p.capa()["EXPIRE"] == ["3"], p.capa()
            assert p.stat()[0] == 1
            p.retr(1)
            p.quit()
            wait_for(lambda: any(k == "retention" for _, k, _ in heads(pop3_port, OLD)), "a retention notice")
            notices = [h for _, k, h in heads(pop3_port, OLD) if k == "retention"]
            assert len(notices) == 1, notices
            p = poplib.POP3("127.0.0.1", pop3_port, timeout=60)
            p.user(OLD)
            p.pass_("pw")
            n = p.stat()[0]
            text = b"\r\n".join(p.top(n, 100)[1]).decode()
            p.quit()
            assert "read and left on the server" in text and "sender@example.net" in text, text
            wait_for(lambda: [s for s, _, _ in heads(pop3_port, OLD)] == [notices and re.search(
                r"^Subject: ([^\r\n]*)", notices[0], re.M).group(1)], "the retrieved message is deleted")
            left = heads(pop3_port, OLD)
            assert len(left) == 1 and left[0][1] == "retention", left
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if FAILED:
            sys.stdout.write(open(os.path.join(work, "server.log"), "rb").read()[-4000:].decode(errors="replace"))
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

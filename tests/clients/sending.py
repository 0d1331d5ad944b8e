#!/usr/bin/env python3
"""Sending mail between two real postoffice servers.

Usage: sending.py PATH/TO/postoffice

Two postoffice instances on 127.0.0.1 (domain a.test) and 127.0.0.2 (b.test)
and a private dnsmasq publishing their MX records, a.test's SPF, DMARC and
DKIM key (made with `postoffice dkim generate`). A user of a.test submits
with swaks (587, STARTTLS, AUTH), Python smtplib (465, implicit TLS) and
`postoffice sendmail`; b.test's user pops the mail with DKIM verified.
Failure paths: a 4xx (b.test user over quota) retried and delivered once
the quota is raised; a 5xx (unknown user) bounced to the sender's maildrop;
a destination that is down retried, visible in `postoffice queue list`,
then bounced after a shortened expiry.

Prints one line per check and "N passed, M failed"; exits 1 on failure.
"""

import os
import poplib
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time

from harness import FAILED, PASSED, check, find, free_port

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
CHILDREN = []


def wait_until(what, predicate, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = predicate()
        if r:
            return r
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def txt(name, text):
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)]
    return f"txt-record={name}," + ",".join(f'"{c}"' for c in chunks)


class Instance:
    def __init__(self, work, name, ip, smtp_port, dns_port, extra=""):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "postoffice.toml")
        with open(self.config, "w") as f:
            f.write(
                f'data_dir = "data"\nhostname = "mx.{name}.test"\nshutdown_timeout_secs = 5\n'
                f'[pop3]\nlisten = ["{ip}:0"]\nlisten_tls = []\n'
                f'[smtp]\nlisten = ["{ip}:{smtp_port}"]\n'
                f'[submission]\nlisten = ["{ip}:0"]\nlisten_tls = ["{ip}:0"]\n'
                '[http]\nlisten = []\n'
                f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout_secs = 3\n'
                f'[queue]\nremote_port = {smtp_port}\nretry_schedule_secs = [2]\nmax_age_secs = 40\n'
                'delay_warning_secs = 0\nconnect_timeout_secs = 5\ncommand_timeout_secs = 30\n'
                '[filter]\nspf = "tag"\ndkim = "tag"\ndmarc = "reject"\n' + extra
            )
        self.proc = None

    def cli(self, *args, stdin=b"", check=True):
        r = subprocess.run([BIN, "--config", self.config, *args], input=stdin, capture_output=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"postoffice {' '.join(args)}: {r.stderr.decode()}")
        return r

    def start(self):
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen([BIN, "--config", self.config, "serve"], stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        self.ports = {}
        deadline = time.monotonic() + 60
        while len(self.ports) < 4 and time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = re.match(r"\s+(POP3|SMTP|SUBMIT|SUBMITS)\s+[\d.]+:(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
        if len(self.ports) < 4:
            raise SystemExit(f"postoffice {self.dir} did not start")

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def pop(inst, ip, user, pw="pw"):
    p = poplib.POP3(ip, inst.ports["POP3"], timeout=60)
    p.user(user)
    p.pass_(pw)
    out = []
    for i in range(p.stat()[0]):
        out.append(b"\r\n".join(p.retr(i + 1)[1]).decode(errors="replace"))
    p.quit()
    return out


def main():
    work = tempfile.mkdtemp(prefix="postoffice-sending-")
    a = b = None
    try:
        smtp_port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
        dns_port = free_port("127.0.0.1")
        a = Instance(work, "a", "127.0.0.1", smtp_port, dns_port)
        b = Instance(work, "b", "127.0.0.2", smtp_port, dns_port)
        a.cli("user", "add", "alice@a.test", "--password-stdin", stdin=b"pw\n")
        b.cli("user", "add", "bob@b.test", "--password-stdin", stdin=b"pw\n")
        out = a.cli("dkim", "generate", "a.test", "--algorithm", "ed25519").stdout.decode()
        record = re.search(r'IN TXT "(.*)"', out).group(1).replace('" "', "")
        conf = os.path.join(work, "dnsmasq.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "mx-host=a.test,mx.a.test,10", "host-record=mx.a.test,127.0.0.1",
                "mx-host=b.test,mx.b.test,10", "host-record=mx.b.test,127.0.0.2",
                "mx-host=down.test,mx.down.test,10", "host-record=mx.down.test,127.0.0.3",
                txt("a.test", "v=spf1 ip4:127.0.0.0/8 -all"),
                txt("_dmarc.a.test", "v=DMARC1; p=reject"),
                txt("postoffice._domainkey.a.test", record),
            ]) + "\n")
        CHILDREN.append(subprocess.Popen(
            [find("dnsmasq"), "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
             f"--port={dns_port}", "--listen-address=127.0.0.1", "--bind-interfaces",
             f"--conf-file={conf}", "--pid-file=", "--log-facility=-", "--local=/test/"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "dnsmasq.log"), "wb")))
        a.start()
        b.start()
        run(a, b)
    finally:
        for inst in (a, b):
            if inst:
                inst.stop()
        for c in CHILDREN:
            c.kill()
            c.wait()
        if FAILED:
            for name in ("a/server.log", "b/server.log"):
                p = os.path.join(work, name)
                if os.path.exists(p):
                    print(f"--- {name}")
                    sys.stdout.write(open(p, "rb").read()[-4000:].decode(errors="replace"))
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


def run(a, b):
    cert_a = os.path.join(a.dir, "data", "tls", "cert.pem")
    bob_count = [0]

    def bob_has(subject):
        msgs = pop(b, "127.0.0.2", "bob@b.test")
        hits = [m for m in msgs if f"Subject: {subject}" in m]
        return hits[0] if hits else None

    @check("swaks: submission over 587 with STARTTLS + AUTH, delivered to b.test by MX, DKIM verified there")
    def _():
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{a.ports['SUBMIT']}", "--tls",
                            "--auth", "PLAIN", "--auth-user", "alice@a.test", "--auth-password", "pw",
                            "--from", "alice@a.test", "--to", "bob@b.test", "--helo", "client.a.test",
                            "--header", "Subject: over-submission", "--body", "Hello Bob",
                            "--timeout", "60"], capture_output=True, timeout=120)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        m = wait_until("the message at b.test", lambda: bob_has("over-submission"))
        assert "DKIM-Signature:" in m and "d=a.test" in m, m
        assert re.search(r"dkim=pass", m) and re.search(r"spf=pass", m) and re.search(r"dmarc=pass", m), m
        assert "Hello Bob" in m
        assert a.cli("queue", "list").stdout.decode().strip() in ("", "queue is empty", "Mail queue is empty"), \
            a.cli("queue", "list").stdout.decode()

    @check("smtplib: submission over 465 (implicit TLS) with LOGIN")
    def _():
        ctx = ssl.create_default_context(cafile=cert_a)
        ctx.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", a.ports["SUBMITS"], context=ctx, timeout=60) as s:
            s.login("alice@a.test", "pw")
            s.sendmail("alice@a.test", ["bob@b.test"],
                       b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: over-465\r\n\r\nvia 465\r\n")
        wait_until("the 465 message at b.test", lambda: bob_has("over-465"))

    @check("postoffice sendmail -t queues and delivers")
    def _():
        r = a.cli("sendmail", "-t", "-f", "alice@a.test",
                  stdin=b"From: alice@a.test\nTo: bob@b.test\nBcc: bob@b.test\nSubject: via-sendmail\n\ncron says hi\n")
        assert r.returncode == 0, r.stderr
        m = wait_until("the sendmail message at b.test", lambda: bob_has("via-sendmail"))
        assert "Bcc:" not in m, m

    @check("5xx from the destination (unknown user) bounces to the sender's maildrop")
    def _():
        with smtplib.SMTP("127.0.0.1", a.ports["SUBMIT"], timeout=60) as s:
            s.login("alice@a.test", "pw")
            s.sendmail("alice@a.test", ["nobody@b.test"],
                       b"From: alice@a.test\r\nTo: nobody@b.test\r\nSubject: to-nobody\r\n\r\nx\r\n")

        def bounce():
            for m in pop(a, "127.0.0.1", "alice@a.test"):
                if "Subject: to-nobody" in m and "delivery-status" in m:
                    return m
            return None
        m = wait_until("the bounce", bounce)
        assert "Return-Path: <>" in m, m
        assert "5.1.1" in m and "nobody@b.test" in m, m

    @check("4xx (recipient over quota) is retried and delivered once the quota allows")
    def _():
        n = len(pop(b, "127.0.0.2", "bob@b.test"))
        b.cli("user", "set", "bob@b.test", "--quota-messages", str(n))
        with smtplib.SMTP("127.0.0.1", a.ports["SUBMIT"], timeout=60) as s:
            s.login("alice@a.test", "pw")
            s.sendmail("alice@a.test", ["bob@b.test"],
                       b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: after-quota\r\n\r\nx\r\n")
        wait_until("a 452 in the queue", lambda: "452" in a.cli("queue", "list").stdout.decode())
        assert bob_has("after-quota") is None
        b.cli("user", "set", "bob@b.test", "--quota-messages", "inherit")
        a.cli("queue", "flush")
        wait_until("delivery after the quota was raised", lambda: bob_has("after-quota"))
        # Delivered once: the entry leaves the queue, and flushing again
        # sends nothing more.
        wait_until("the entry to leave the queue",
                   lambda: "bob@b.test" not in a.cli("queue", "list").stdout.decode())
        a.cli("queue", "flush")
        copies = [m for m in pop(b, "127.0.0.2", "bob@b.test") if "Subject: after-quota" in m]
        assert len(copies) == 1, f"{len(copies)} copies delivered"

    @check("a destination that is down is retried, listed in the queue, then bounced after expiry")
    def _():
        with smtplib.SMTP("127.0.0.1", a.ports["SUBMIT"], timeout=60) as s:
            s.login("alice@a.test", "pw")
            s.sendmail("alice@a.test", ["someone@down.test"],
                       b"From: alice@a.test\r\nTo: someone@down.test\r\nSubject: to-down\r\n\r\nx\r\n")
        listing = wait_until("the entry in the queue with an error",
                             lambda: (lambda o: o if "someone@down.test" in o else None)(a.cli("queue", "list").stdout.decode()))
        qid = re.search(r"^(\S+)", listing.strip().splitlines()[-1] if "ID" in listing else listing.strip()).group(1)
        show = a.cli("queue", "show", qid, check=False).stdout.decode()
        assert "someone@down.test" in show or "someone@down.test" in listing

        def bounce():
            for m in pop(a, "127.0.0.1", "alice@a.test"):
                if "Subject: to-down" in m and "delivery-status" in m:
                    return m
            return None
        m = wait_until("the expiry bounce", bounce, 120)
        assert "someone@down.test" in m, m
        assert "someone@down.test" not in a.cli("queue", "list").stdout.decode()


if __name__ == "__main__":
    main()

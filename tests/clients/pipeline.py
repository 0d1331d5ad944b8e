#!/usr/bin/env python3
"""The receiving server end to end, with real verification components.

Usage: pipeline.py PATH/TO/postoffice

Starts a private dnsmasq (SPF and DMARC records for good.test and bad.test,
a DNSBL zone listing 127.0.0.2) and a private clamd (its only signatures
are written here: EICAR and a marker string), then postoffice configured
to use both, and sends mail with swaks and Python's smtplib:

- a clean message from good.test passes every stage and is read back over
  POP3 byte-identical, plus the trace and verdict headers;
- a virus sample, a client listed in the DNSBL, a DMARC-failing message and
  a relay attempt are each refused with the configured reply;
- a quarantined message is invisible to POP3 until `postoffice quarantine
  release`;
- the quarantine digest: three held messages are listed in one message
  popped with poplib (date, sender, subject, reason, release command), one
  is released with the command the digest gives, and a second run lists
  nothing again;
- clamd going away makes the server answer 451 (fail closed).

Prints one line per check and "N passed, M failed"; exits 1 on failure.
"""

import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from harness import FAILED, PASSED, check, find, free_port

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
EICAR = (r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*").encode()
MARKER = b"POSTOFFICE-QUARANTINE-MARKER-7f3a"
CHILDREN = []


def wait(what, predicate, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up within {seconds} s")


def start_dns(work):
    port = free_port()
    conf = os.path.join(work, "dnsmasq.conf")
    records = [
        'txt-record=good.test,"v=spf1 ip4:127.0.0.1 -all"',
        'txt-record=_dmarc.good.test,"v=DMARC1; p=reject"',
        'txt-record=bad.test,"v=spf1 ip4:192.0.2.1 -all"',
        'txt-record=_dmarc.bad.test,"v=DMARC1; p=reject"',
        "host-record=2.0.0.127.dnsbl.test,127.0.0.2",
        'txt-record=2.0.0.127.dnsbl.test,"Listed for testing"',
    ]
    with open(conf, "w") as f:
        f.write("\n".join(records) + "\n")
    p = subprocess.Popen(
        [find("dnsmasq"), "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
         f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
         f"--conf-file={conf}", "--pid-file=", "--log-facility=-", "--local=/test/"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "dnsmasq.log"), "wb"))
    CHILDREN.append(p)

    def answers():
        # A raw DNS query for good.test TXT.
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04good\x04test\x00\x00\x10\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            try:
                s.sendto(q, ("127.0.0.1", port))
                return s.recv(512)[:2] == b"\x12\x34"
            except OSError:
                return False
    wait("dnsmasq", answers)
    return port


def start_clamd(work):
    port = free_port()
    db = os.path.join(work, "clamdb")
    os.makedirs(db)
    with open(os.path.join(db, "test.ndb"), "w") as f:
        f.write(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
        f.write(f"Postoffice.Test.Marker:0:*:{MARKER.hex()}\n")
    conf = os.path.join(work, "clamd.conf")
    with open(conf, "w") as f:
        f.write(f"TCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {db}\nForeground yes\n"
                f"LogFile {work}/clamd.log\nPidFile {work}/clamd.pid\nMaxThreads 4\n")
    p = subprocess.Popen([find("clamd"), "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, "clamd.err"), "wb"))
    CHILDREN.append(p)

    def pong():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False
    wait("clamd", pong, 120)
    return port, p


class Server:
    def __init__(self, work, dns_port, clamd_port, virus="reject"):
        self.dns_port, self.clamd_port = dns_port, clamd_port
        self.config = os.path.join(work, "postoffice.toml")
        with open(self.config, "w") as f:
            f.write(
                'data_dir = "data"\nhostname = "mx.example.test"\n'
                '[pop3]\nlisten = ["127.0.0.1:0"]\nlisten_tls = ["127.0.0.1:0"]\n'
                '[smtp]\nlisten = ["127.0.0.1:0"]\n[submission]\nlisten = []\nlisten_tls = []\n[http]\nlisten = []\n'
                f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout_secs = 3\n'
                '[filter]\ndnsbl_zones = ["dnsbl.test"]\ndnsbl = "reject"\n'
                'spf = "tag"\ndkim = "tag"\ndmarc = "reject"\n'
                f'clamd = "127.0.0.1:{clamd_port}"\nvirus = "{virus}"\nclamd_failure = "closed"\n'
                'clamd_timeout_secs = 10\nsender_block = ["@spammer.test"]\n'
            )
        self.log = open(os.path.join(work, "server.log"), "wb")
        self.proc = subprocess.Popen([BIN, "--config", self.config, "serve"], stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        self.ports = {}
        deadline = time.monotonic() + 60
        while len(self.ports) < 3 and time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = re.match(r"\s+(POP3S?|SMTP)\s+127\.0\.0\.1:(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
        if len(self.ports) < 3:
            self.stop()
            raise SystemExit("postoffice did not start; see " + self.log.name)

    def cli(self, *args, stdin=b""):
        r = subprocess.run([BIN, "--config", self.config, *args], input=stdin, capture_output=True,
                           timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"postoffice {' '.join(args)}: {r.stderr.decode()}")
        return r.stdout.decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def swaks(srv, *args, source=None):
    cmd = ["swaks", "--server", "127.0.0.1", "--port", str(srv.ports["SMTP"]), "--helo", "client.good.test",
           "--timeout", "60", "--hide-all", *args]
    if source:
        cmd += ["--local-interface", source]
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def swaks_transcript(srv, *args, source=None):
    cmd = ["swaks", "--server", "127.0.0.1", "--port", str(srv.ports["SMTP"]), "--helo", "client.good.test",
           "--timeout", "60", *args]
    if source:
        cmd += ["--local-interface", source]
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def pop_all(srv, user, pw="pw"):
    p = poplib.POP3("127.0.0.1", srv.ports["POP3"], timeout=60)
    p.user(user)
    p.pass_(pw)
    out = []
    for i in range(p.stat()[0]):
        _, lines, _ = p.retr(i + 1)
        out.append(b"\r\n".join(lines) + b"\r\n")
    p.quit()
    return out


def main():
    work = tempfile.mkdtemp(prefix="postoffice-pipeline-")
    srv = None
    try:
        dns_port = start_dns(work)
        clamd_port, clamd = start_clamd(work)
        srv = Server(work, dns_port, clamd_port)
        for u in ("alice@example.test", "bob@example.test", "carol@example.test"):
            srv.cli("user", "add", u, "--password-stdin", stdin=b"pw\n")
        run(srv, clamd)
    finally:
        if srv:
            srv.stop()
        for c in CHILDREN:
            c.kill()
            c.wait()
        if FAILED:
            for name in ("server.log", "dnsmasq.log", "clamd.log"):
                path = os.path.join(work, name)
                if os.path.exists(path):
                    print(f"--- {name}")
                    sys.stdout.write(open(path, "rb").read()[-3000:].decode(errors="replace"))
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


def run(srv, clamd):
    body = ("From: Sender <sender@good.test>\r\nTo: alice@example.test\r\nSubject: pipeline ok\r\n"
            "Message-ID: <pipeline-1@good.test>\r\n\r\nA clean message.\r\n.leading dot\r\n")

    @check("swaks: a clean message from good.test passes every stage, read back byte-identical")
    def _():
        # swaks ends the data with CRLF "." CRLF: give it the body without
        # its final CRLF, so what it sends is exactly `body`.
        rc, out = swaks(srv, "--from", "sender@good.test", "--to", "alice@example.test",
                        "--data", body[:-2])
        assert rc == 0, out
        msgs = pop_all(srv, "alice@example.test")
        assert len(msgs) == 1, msgs
        m = msgs[0]
        assert m.endswith(body.encode()), m
        head = m[: len(m) - len(body)].decode()
        assert head.startswith("Return-Path: <sender@good.test>\r\nReceived: from client.good.test ([127.0.0.1])"), head
        assert "spf=pass" in head and "dmarc=pass" in head, head
        assert re.search(r"X-Postoffice-Verdict: clean;.*virus=clean", head.replace("\r\n\t", " ").replace("\r\n ", " ")), head

    @check("smtplib: STARTTLS, SMTPUTF8 off, message delivered and verified")
    def _():
        ctx = ssl.create_default_context(cafile=os.path.join(os.path.dirname(srv.config), "data/tls/cert.pem"))
        ctx.check_hostname = False
        with smtplib.SMTP("127.0.0.1", srv.ports["SMTP"], local_hostname="client.good.test", timeout=60) as s:
            s.starttls(context=ctx)
            s.ehlo("client.good.test")
            refused = s.sendmail("sender@good.test", ["bob@example.test"], body.replace("alice", "bob").encode())
            assert refused == {}, refused
        m = pop_all(srv, "bob@example.test")[0].decode()
        assert "with ESMTPS" in m and "(using TLS" in m, m

    @check("virus sample (EICAR) is refused with 554 5.7.1 naming the signature; nothing stored")
    def _():
        rc, out = swaks_transcript(srv, "--from", "sender@good.test", "--to", "carol@example.test", "--data",
                                   "Subject: virus\r\n\r\n" + EICAR.decode() + "\r\n")
        assert rc != 0 and re.search(r"554 5\.7\.1 .*Eicar-Test-Signature", out), out
        assert pop_all(srv, "carol@example.test", "pw") == []

    @check("a client listed in the DNSBL gets 554 5.7.1 naming the list")
    def _():
        rc, out = swaks_transcript(srv, "--from", "sender@good.test", "--to", "carol@example.test",
                                   "--quit-after", "CONNECT", source="127.0.0.2")
        assert re.search(r"554 5\.7\.1 .*dnsbl\.test", out), out

    @check("a DMARC-failing message (bad.test, SPF fail, p=reject) is refused")
    def _():
        rc, out = swaks_transcript(srv, "--from", "sender@bad.test", "--to", "carol@example.test", "--data",
                                   "From: <sender@bad.test>\r\nSubject: forged\r\n\r\nx\r\n")
        assert rc != 0 and re.search(r"550 5\.7\.1 .*DMARC", out), out
        assert pop_all(srv, "carol@example.test", "pw") == []

    @check("relay attempts are refused: other domain, percent hack, source route")
    def _():
        for rcpt in ["someone@elsewhere.example", "someone%elsewhere.example@example.test",
                     "@example.test:someone@elsewhere.example"]:
            rc, out = swaks_transcript(srv, "--from", "alice@example.test", "--to", rcpt)
            assert rc != 0 and re.search(r"\n<[~*]* +5[05]\d 5\.", out), (rcpt, out)

    @check("a blocked sender domain is refused at MAIL FROM")
    def _():
        rc, out = swaks_transcript(srv, "--from", "x@spammer.test", "--to", "carol@example.test")
        assert rc != 0 and "550 5.7.1" in out, out

    @check("quarantine: hidden from POP3, listed, shown and released by the CLI")
    def _():
        qwork = os.path.join(os.path.dirname(srv.config), "q")
        os.makedirs(qwork)
        q = Server(qwork, srv.dns_port, srv.clamd_port, virus="quarantine")
        try:
            q.cli("user", "add", "dave@example.test", "--password-stdin", stdin=b"pw\n")
            rc, out = swaks(q, "--from", "sender@good.test", "--to", "dave@example.test", "--data",
                            "Subject: suspicious\r\n\r\n" + MARKER.decode() + "\r\n")
            assert rc == 0, out
            assert pop_all(q, "dave@example.test") == []
            listing = q.cli("quarantine", "list", "dave@example.test")
            uid = listing.split()[0]
            assert "suspicious" in q.cli("quarantine", "show", "dave@example.test", uid)
            q.cli("quarantine", "release", "dave@example.test", uid)
            msgs = pop_all(q, "dave@example.test")
            assert len(msgs) == 1 and MARKER in msgs[0], msgs
            assert q.cli("quarantine", "list", "dave@example.test").strip() == ""
        finally:
            q.stop()

    @check("quarantine digest: three held messages listed once over poplib, one released by its command")
    def _():
        dwork = os.path.join(os.path.dirname(srv.config), "digest")
        os.makedirs(dwork)
        q = Server(dwork, srv.dns_port, srv.clamd_port, virus="quarantine")
        user = "erin@example.test"
        try:
            q.cli("user", "add", user, "--password-stdin", stdin=b"pw\n")
            subjects = ["held one", "held two", "held three"]
            for subject in subjects:
                rc, out = swaks(q, "--from", "sender@good.test", "--to", user, "--data",
                                f"From: Mallory <sender@good.test>\r\nSubject: {subject}\r\n\r\n"
                                + MARKER.decode() + "\r\n")
                assert rc == 0, out
            assert pop_all(q, user) == []
            out = q.cli("quarantine", "digest", "--user", user)
            assert "digest of 3 quarantined message(s) delivered" in out, out
            msgs = pop_all(q, user)
            assert len(msgs) == 1, msgs
            digest = msgs[0].decode()
            assert "\r\nX-Postoffice-Notice: quarantine-digest\r\n" in digest, digest
            assert MARKER.decode() not in digest, "the digest never carries the held content"
            entries = re.findall(
                r"\d+\. ([^\r\n]+)\r\n   From:    ([^\r\n]*)\r\n   Subject: ([^\r\n]*)\r\n"
                r"   Reason:  ([^\r\n]*)\r\n   Release: (postoffice quarantine release [^\r\n]+)\r\n",
                digest)
            assert sorted(e[2] for e in entries) == sorted(subjects), digest
            for date, sender, _subject, reason, _release in entries:
                assert re.match(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$", date), date
                assert sender == "Mallory <sender@good.test>", sender
                assert reason.startswith("virus Postoffice.Test.Marker"), reason
            release = next(e[4] for e in entries if e[2] == "held two")
            q.cli(*release.split()[1:])
            msgs = pop_all(q, user)
            assert len(msgs) == 2, msgs
            released = [m for m in msgs if MARKER in m]
            assert len(released) == 1 and b"Subject: held two" in released[0], msgs
            # Listed once: a second run has nothing to say, and delivers nothing.
            out = q.cli("quarantine", "digest")
            assert "no quarantined messages" in out, out
            assert len(pop_all(q, user)) == 2
            assert len(q.cli("quarantine", "list", user).splitlines()) == 2
        finally:
            q.stop()

    @check("clamd down: the server answers 451 4.7.1 (fail closed) and stores nothing")
    def _():
        clamd.kill()
        clamd.wait()
        rc, out = swaks_transcript(srv, "--from", "sender@good.test", "--to", "carol@example.test",
                                   "--data", "Subject: unscanned\r\n\r\nx\r\n")
        assert rc != 0 and "451 4.7.1" in out, out
        assert pop_all(srv, "carol@example.test", "pw") == []


if __name__ == "__main__":
    main()

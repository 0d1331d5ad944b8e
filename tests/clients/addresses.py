#!/usr/bin/env python3
"""Role addresses over real SMTP and POP3: postmaster@ and abuse@ of every
local domain, and a bare `postmaster` (RFC 5321 §4.5.1).

Usage: addresses.py PATH/TO/postoffice

One postoffice server on loopback with two local domains, a per-domain
override for one of them, and `[addresses] postmaster` for the rest. Checks,
with smtplib and poplib: postmaster@/abuse@ (any case) reach the configured
mailbox, the per-domain override wins, a message to several role addresses
that lead to one mailbox is stored once, a user named abuse@ keeps its own
mail, other unknown local parts stay refused, and relay tricks around the
role addresses (percent hack, source route, a foreign postmaster@) do not
relay. `config check` warns when a role address reaches no mailbox.
Aliases set up with the CLI: an alias to two users (one copy each, a
Delivered-To: naming the alias), a catch-all, a domain alias, and
sub-addressing (the tag kept in Delivered-To:; control characters in a tag
refused).
Bounded polls only. Prints "N passed, M failed"; exits 1 on failure.
"""

import os
import poplib
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile

from harness import FAILED, NO_DNS, PASSED, check, free_port, wait_for

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
ADMIN = "admin@example.test"
HOST = "hostmaster@example.org"
ABUSE_USER = "abuse@example.net"


def subjects(port, user):
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user(user)
    p.pass_("pw")
    out = []
    for i in range(p.stat()[0]):
        head = b"\r\n".join(p.top(i + 1, 0)[1]).decode(errors="replace")
        for line in head.split("\r\n"):
            if line.startswith("Subject: "):
                out.append(line[len("Subject: "):])
    p.quit()
    return sorted(out)


def delivered_to(port, user, subject):
    """The Delivered-To: values of each message with this subject."""
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user(user)
    p.pass_("pw")
    out = []
    for i in range(p.stat()[0]):
        lines = [l.decode(errors="replace") for l in p.top(i + 1, 0)[1]]
        if f"Subject: {subject}" in lines:
            out.append([l[len("Delivered-To: "):] for l in lines if l.startswith("Delivered-To: ")])
    p.quit()
    return out


def send(port, rcpts, subject):
    msg = f"From: sender@example.net\r\nTo: someone\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        return s.sendmail("sender@remote.test", rcpts, msg.encode())


def rcpt_code(port, rcpt):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.test")
        s.mail("sender@remote.test")
        return s.rcpt(rcpt)[0]


def main():
    work = tempfile.mkdtemp(prefix="postoffice-addresses-")
    smtp_port, pop3_port = free_port(), free_port()
    config = os.path.join(work, "postoffice.toml")
    base = f'''data_dir = "data"
hostname = "mx.example.test"
[pop3]
listen = ["127.0.0.1:{pop3_port}"]
listen_tls = []
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[submission]
listen = []
listen_tls = []
''' + NO_DNS

    def write(extra):
        with open(config, "w") as f:
            f.write(base + extra)

    def cli(*args, stdin=b"", ok=True):
        r = subprocess.run([BIN, "--config", config, *args], input=stdin, capture_output=True, timeout=120)
        if ok:
            assert r.returncode == 0, (args, r.stderr.decode())
        return r

    write("")
    for u in (ADMIN, HOST, ABUSE_USER):
        cli("user", "add", u, "--password-stdin", stdin=b"pw\n")
    cli("alias", "add", "sales@example.test", ADMIN, HOST)
    cli("alias", "add", "@example.net", ADMIN)
    cli("domain", "alias", "example.com", "example.test")

    @check("config check warns while postmaster@ reaches no mailbox, and not once it does")
    def _():
        err = cli("config", "check").stderr.decode()
        assert "postmaster@example.test reaches no mailbox" in err, err
        write('[addresses]\npostmaster = ["admin@example.test"]\n'
              '[addresses.domain_postmaster]\n"example.org" = ["hostmaster@example.org"]\n')
        err = cli("config", "check").stderr.decode()
        assert "reaches no mailbox" not in err, err

    log = open(os.path.join(work, "server.log"), "wb")
    proc = subprocess.Popen([BIN, "--config", config, "serve"], stdout=subprocess.DEVNULL, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{pop3_port}"],
                                        stderr=subprocess.DEVNULL).returncode == 0, "the server listens")

        @check("postmaster@ and abuse@ (any case) reach [addresses] postmaster, each message once")
        def _():
            send(smtp_port, ["postmaster@example.test"], "pm")
            send(smtp_port, ["Abuse@EXAMPLE.test"], "abuse")
            # Two role addresses leading to one mailbox: one copy.
            send(smtp_port, ["postmaster@example.test", "abuse@example.test", ADMIN], "merged")
            assert subjects(pop3_port, ADMIN) == ["abuse", "merged", "pm"], subjects(pop3_port, ADMIN)

        @check("the per-domain override wins for its domain")
        def _():
            send(smtp_port, ["postmaster@example.org"], "org pm")
            assert subjects(pop3_port, HOST) == ["org pm"], subjects(pop3_port, HOST)
            assert "org pm" not in subjects(pop3_port, ADMIN)

        @check("a user named abuse@ keeps its own mail")
        def _():
            send(smtp_port, [ABUSE_USER], "to the user")
            assert subjects(pop3_port, ABUSE_USER) == ["to the user"]
            assert "to the user" not in subjects(pop3_port, ADMIN)

        @check("bare postmaster (RFC 5321 §4.5.1) is accepted and delivered")
        def _():
            send(smtp_port, ["postmaster"], "bare")
            assert "bare" in subjects(pop3_port, ADMIN)

        @check("other unknown local parts stay refused; relay tricks around postmaster do not relay")
        def _():
            assert rcpt_code(smtp_port, "nobody@example.test") == 550
            for trick in ("postmaster@remote.test", "postmaster%remote.test@example.test",
                          "@example.test:postmaster@remote.test", "remote.test!postmaster@example.test"):
                code = rcpt_code(smtp_port, trick)
                assert code >= 500, (trick, code)

        @check("an alias to two users: one copy each, with Delivered-To: naming the alias")
        def _():
            send(smtp_port, ["sales@example.test"], "to sales")
            assert delivered_to(pop3_port, ADMIN, "to sales") == [["sales@example.test"]]
            assert delivered_to(pop3_port, HOST, "to sales") == [["sales@example.test"]]

        @check("a catch-all takes unknown addresses of its domain, not its users")
        def _():
            send(smtp_port, ["whoever@example.net"], "catch-all")
            assert delivered_to(pop3_port, ADMIN, "catch-all") == [["whoever@example.net"]]
            assert "catch-all" not in subjects(pop3_port, ABUSE_USER)
            send(smtp_port, [ABUSE_USER], "user first")
            assert "user first" in subjects(pop3_port, ABUSE_USER)
            assert "user first" not in subjects(pop3_port, ADMIN)

        @check("a domain alias delivers x@example.com as x@example.test")
        def _():
            send(smtp_port, ["Admin@Example.COM"], "domain alias")
            assert delivered_to(pop3_port, ADMIN, "domain alias") == [["admin@example.com"]]

        @check("sub-addressing keeps the tag in Delivered-To:; control characters are refused")
        def _():
            send(smtp_port, ["admin+Lists@example.test"], "tagged")
            assert delivered_to(pop3_port, ADMIN, "tagged") == [["admin+lists@example.test"]]
            for bad in ("admin+\x01x@example.test", "admin+\x7fx@example.test"):
                assert rcpt_code(smtp_port, bad) >= 500, bad

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

#!/usr/bin/env python3
"""Real third-party POP3 clients against a real postoffice server.

Usage: run_clients.py PATH/TO/postoffice

Starts the server on ephemeral loopback ports in a temporary directory, adds
users, delivers mail with `postoffice deliver`, then retrieves, deletes and
keeps mail with curl (pop3:// with STLS, pop3s://), Python's poplib (plain on
loopback, STLS and POP3S with certificate verification) and fetchmail (STLS
with the certificate checked, keep and delete modes, into an mbox). Every
check compares what the client got with what was delivered.

Prints one line per check and ends with "N passed, M failed"; exits 1 if any
check failed.
"""

import os
import poplib
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time

from harness import FAILED, NO_DNS, PASSED, check

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")


def crlf(data: bytes) -> bytes:
    """The message as the server stores and serves it: CRLF line ends, final CRLF."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


class Server:
    def __init__(self, workdir):
        self.workdir = workdir
        self.config = os.path.join(workdir, "postoffice.toml")
        with open(self.config, "w") as f:
            f.write(
                'data_dir = "data"\nhostname = "localhost"\n'
                '[pop3]\nlisten = ["127.0.0.1:0"]\nlisten_tls = ["127.0.0.1:0"]\n'
                '[smtp]\nlisten = ["127.0.0.1:0"]\n[submission]\nlisten = []\nlisten_tls = []\n[http]\nlisten = []\n'
                + NO_DNS
            )
        self.log = open(os.path.join(workdir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [BIN, "--config", self.config, "serve"],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
        )
        self.pop3 = self.pop3s = None
        deadline = time.monotonic() + 60
        while (self.pop3 is None or self.pop3s is None) and time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = re.match(r"\s+(POP3S?)\s+127\.0\.0\.1:(\d+)", line)
            if m:
                if m.group(1) == "POP3":
                    self.pop3 = int(m.group(2))
                else:
                    self.pop3s = int(m.group(2))
        if self.pop3 is None or self.pop3s is None:
            self.stop()
            raise SystemExit("server did not start; see " + self.log.name)
        self.cert = os.path.join(workdir, "data", "tls", "cert.pem")

    def cli(self, *args, stdin=b""):
        r = subprocess.run([BIN, "--config", self.config, *args], input=stdin,
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"postoffice {' '.join(args)} failed: {r.stderr.decode()}")
        return r.stdout.decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def tls_context(cert):
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = True
    return ctx


def messages(tag, n):
    out = []
    for i in range(n):
        body = (
            f"From: sender@example.net\nTo: user@example.test\nSubject: {tag} {i}\n"
            f"Message-ID: <{tag}.{i}@example.net>\n\n"
            f"Hello {tag} {i}.\n.a line starting with a dot\n..two dots\n\nbye\n"
        ).encode()
        out.append(body)
    return out


def main():
    work = tempfile.mkdtemp(prefix="postoffice-clients-")
    srv = Server(work)
    try:
        run(srv, work)
    finally:
        srv.stop()
        if FAILED:
            print(f"server log: {srv.log.name}")
            with open(srv.log.name, "rb") as f:
                sys.stdout.write(f.read()[-4000:].decode(errors="replace"))
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


def run(srv, work):
    users = {
        "curl@example.test": messages("curl", 3),
        "poplib@example.test": messages("poplib", 4),
        "keep@example.test": messages("keep", 3),
        "fetch@example.test": messages("fetch", 3),
    }
    for addr, msgs in users.items():
        srv.cli("user", "add", addr, "--password-stdin", stdin=b"s3cret pw\n")
        for m in msgs:
            srv.cli("deliver", addr, stdin=m)

    base = f"pop3://127.0.0.1:{srv.pop3}"
    curl_auth = ["-u", "curl@example.test:s3cret pw"]

    def curl(*args):
        r = subprocess.run(["curl", "-sS", "--max-time", "60", *curl_auth, *args],
                           capture_output=True, timeout=90)
        if r.returncode != 0:
            raise AssertionError(f"curl {args} exit {r.returncode}: {r.stderr.decode()}")
        return r.stdout

    @check("curl: LIST over STLS with the certificate verified")
    def _():
        out = curl("--ssl-reqd", "--cacert", srv.cert, "--resolve", f"localhost:{srv.pop3}:127.0.0.1",
                   f"pop3://localhost:{srv.pop3}/")
        lines = out.decode().split("\r\n")
        sizes = [len(crlf(m)) for m in users["curl@example.test"]]
        assert lines[:3] == [f"{i + 1} {s}" for i, s in enumerate(sizes)], lines

    @check("curl: RETR returns the delivered message byte for byte")
    def _():
        out = curl(f"{base}/2")
        assert out == crlf(users["curl@example.test"][1]), out

    @check("curl: pop3s:// (implicit TLS) RETR with the certificate verified")
    def _():
        out = curl("--cacert", srv.cert, "--resolve", f"localhost:{srv.pop3s}:127.0.0.1",
                   f"pop3s://localhost:{srv.pop3s}/1")
        assert out == crlf(users["curl@example.test"][0])

    @check("curl: a wrong certificate authority is refused")
    def _():
        r = subprocess.run(["curl", "-sS", "--max-time", "30", *curl_auth,
                            f"pop3s://localhost:{srv.pop3s}/1", "--resolve",
                            f"localhost:{srv.pop3s}:127.0.0.1"], capture_output=True)
        assert r.returncode != 0, "curl accepted a self-signed certificate without --cacert"

    @check("curl: DELE removes the message, the others stay")
    def _():
        curl("-X", "DELE", "-I", f"{base}/1")
        out = curl(f"{base}/").decode().split("\r\n")
        assert [l for l in out if l] == [f"1 {len(crlf(users['curl@example.test'][1]))}",
                                         f"2 {len(crlf(users['curl@example.test'][2]))}"], out
        assert curl(f"{base}/1") == crlf(users["curl@example.test"][1])

    @check("curl: a wrong password is refused")
    def _():
        r = subprocess.run(["curl", "-sS", "-u", "curl@example.test:nope", f"{base}/"],
                           capture_output=True)
        assert r.returncode == 67, r  # CURLE_LOGIN_DENIED

    pl = users["poplib@example.test"]

    @check("poplib: STLS, CAPA, login, STAT/LIST/UIDL/TOP/RETR")
    def _():
        p = poplib.POP3("127.0.0.1", srv.pop3, timeout=60)
        caps = p.capa()
        for cap in ["STLS", "TOP", "UIDL", "USER", "SASL", "RESP-CODES", "PIPELINING",
                    "AUTH-RESP-CODE", "EXPIRE", "LOGIN-DELAY", "IMPLEMENTATION", "UTF8"]:
            assert cap in caps, (cap, caps)
        ctx = tls_context(srv.cert)
        ctx.check_hostname = False  # connected by IP; the CA check still applies
        p.stls(context=ctx)
        assert "STLS" not in p.capa()
        p.user("poplib@example.test")
        p.pass_("s3cret pw")
        count, size = p.stat()
        assert count == 4 and size == sum(len(crlf(m)) for m in pl), (count, size)
        _, listing, _ = p.list()
        assert [int(l.split()[1]) for l in listing] == [len(crlf(m)) for m in pl]
        _, uidls, _ = p.uidl()
        assert len({u.split()[1] for u in uidls}) == 4
        for i, m in enumerate(pl):
            _, lines, octets = p.retr(i + 1)
            # poplib undoes dot-stuffing and strips CRLF.
            assert b"\r\n".join(lines) + b"\r\n" == crlf(m), (lines, m)
        _, top, _ = p.top(1, 0)
        header = crlf(pl[0]).split(b"\r\n\r\n")[0].split(b"\r\n")
        assert top == header + [b""], top
        p.quit()

    @check("poplib: DELE + QUIT deletes; DELE without QUIT and RSET do not")
    def _():
        p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=_noname(srv.cert), timeout=60)
        p.user("poplib@example.test")
        p.pass_("s3cret pw")
        _, before, _ = p.uidl()
        p.dele(1)
        p.quit()
        p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=_noname(srv.cert), timeout=60)
        p.user("poplib@example.test")
        p.pass_("s3cret pw")
        _, after, _ = p.uidl()
        assert [u.split()[1] for u in after] == [u.split()[1] for u in before[1:]], (before, after)
        p.dele(1)
        p.rset()
        p.dele(2)
        p.sock.close()  # dropped: no QUIT, nothing deleted
        p = poplib.POP3("127.0.0.1", srv.pop3, timeout=60)
        p.user("poplib@example.test")
        p.pass_("s3cret pw")
        assert p.stat()[0] == 3
        p.quit()

    @check("poplib: second session gets [IN-USE], wrong password gets [AUTH]")
    def _():
        a = poplib.POP3("127.0.0.1", srv.pop3, timeout=60)
        a.user("poplib@example.test")
        a.pass_("s3cret pw")
        b = poplib.POP3("127.0.0.1", srv.pop3, timeout=60)
        b.user("poplib@example.test")
        try:
            b.pass_("s3cret pw")
            raise AssertionError("second session was let in")
        except poplib.error_proto as e:
            assert b"[IN-USE]" in e.args[0], e
        a.quit()
        b.user("poplib@example.test")
        try:
            b.pass_("wrong")
            raise AssertionError("wrong password accepted")
        except poplib.error_proto as e:
            assert e.args[0].startswith(b"-ERR [AUTH]"), e
        b.quit()

    fetch_dir = os.path.join(work, "fetchmail")
    os.makedirs(fetch_dir, mode=0o700)

    def fetchmail(user, keep, mbox):
        rc = os.path.join(fetch_dir, f"rc-{user}")
        with open(rc, "w") as f:
            f.write(
                "set no syslog\n"
                f"poll localhost via 127.0.0.1 with proto POP3 port {srv.pop3} uidl\n"
                f'  user "{user}" there with password "s3cret pw" is "{os.environ.get("USER", "root")}" here\n'
                f"  sslproto tls1.2+ sslcertck sslcertfile {srv.cert} sslcommonname localhost\n"
                f"  {'keep' if keep else 'nokeep fetchall'}\n"
                f"  mda \"/bin/sh -c 'cat >> {mbox}'\"\n"
            )
        os.chmod(rc, 0o600)
        env = dict(os.environ, FETCHMAILHOME=fetch_dir, HOME=fetch_dir)
        r = subprocess.run(["fetchmail", "-f", rc, "--nodetach", "-v", "--idfile",
                            os.path.join(fetch_dir, f"ids-{user}")],
                           env=env, capture_output=True, timeout=120)
        # fetchmail exits 1 when there was no new mail.
        if r.returncode not in (0, 1):
            raise AssertionError(f"fetchmail exit {r.returncode}: {r.stdout.decode()} {r.stderr.decode()}")
        return r

    def count_in(mbox, subjects):
        data = open(mbox, "rb").read() if os.path.exists(mbox) else b""
        return [data.count(s) for s in subjects]

    @check("fetchmail: keep mode over STLS leaves mail on the server and never fetches it twice")
    def _():
        mbox = os.path.join(fetch_dir, "keep.mbox")
        subjects = [f"Subject: keep {i}\r\n".encode() for i in range(3)]
        fetchmail("keep@example.test", True, mbox)
        got = count_in(mbox, [s.replace(b"\r\n", b"\n") for s in subjects])
        got_crlf = count_in(mbox, subjects)
        assert [a + b for a, b in zip(got, got_crlf)] == [1, 1, 1], (got, got_crlf)
        fetchmail("keep@example.test", True, mbox)  # UIDL: nothing new
        got2 = [a + b for a, b in zip(count_in(mbox, [s.replace(b"\r\n", b"\n") for s in subjects]),
                                      count_in(mbox, subjects))]
        assert got2 == [1, 1, 1], got2
        p = poplib.POP3("127.0.0.1", srv.pop3, timeout=60)
        p.user("keep@example.test")
        p.pass_("s3cret pw")
        assert p.stat()[0] == 3
        p.quit()

    @check("fetchmail: delete mode downloads everything and empties the maildrop")
    def _():
        mbox = os.path.join(fetch_dir, "fetch.mbox")
        fetchmail("fetch@example.test", False, mbox)
        data = open(mbox, "rb").read().replace(b"\r\n", b"\n")
        for i in range(3):
            assert data.count(f"Subject: fetch {i}\n".encode()) == 1, data
            assert b"\n.a line starting with a dot\n" in data
        p = poplib.POP3("127.0.0.1", srv.pop3, timeout=60)
        p.user("fetch@example.test")
        p.pass_("s3cret pw")
        assert p.stat() == (0, 0), p.stat()
        p.quit()

    @check("postoffice user info reports the remaining mail")
    def _():
        out = srv.cli("user", "info", "keep@example.test")
        assert re.search(r"messages:\s+3\b", out), out


def _noname(cert):
    ctx = tls_context(cert)
    ctx.check_hostname = False
    return ctx


if __name__ == "__main__":
    main()

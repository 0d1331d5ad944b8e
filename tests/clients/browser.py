#!/usr/bin/env python3
"""The web interface in a real browser: headless Chromium driven over
WebDriver (chromedriver), plus Prometheus' promtool and a real XML parser
for what machines read.

Usage: browser.py PATH/TO/postoffice [SCREENSHOT_DIR]

Starts a private dnsmasq (an SPF record that makes mail from bad.test fail)
and postoffice with SPF in quarantine mode and its web interface on an
ephemeral loopback port, then, in Chromium:

- the administrator (added with `postoffice admin add`) signs in, adds a
  user, sets its quota;
- the test sends that user a message over SMTP, and the dashboard's live
  numbers show it;
- a message from bad.test is quarantined by SPF; the administrator finds it
  on the quarantine page and releases it;
- the user signs in with the mail password, sees usage against the quota,
  and changes the password; the new password then works over POP3 (and the
  old one does not).

Besides: `promtool check metrics` accepts /metrics and its counters moved
with the traffic; the Thunderbird autoconfig XML parses and names the ports
and socket types of the listeners; an unknown domain gets 404.

A screenshot of every page goes to SCREENSHOT_DIR (default: a new temporary
directory), printed at the end; they are artifacts, not committed.

WebDriver is spoken directly (JSON over HTTP with urllib): nothing beyond
the Debian packages chromium and chromium-driver is needed.

Prints one line per check and "N passed, M failed"; exits 1 on failure.
"""

import base64
import json
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

from harness import FAILED, PASSED, check, find, free_port

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
SHOTS = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="postoffice-screenshots-")
CHILDREN = []
ADMIN_PW = "admin-Secret-1"
USER = "alice@example.test"
USER_PW = "first-Password-1"
USER_PW2 = "second-Password-2"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def wait(what, predicate, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not happen within {seconds} s")


def start_dns(work):
    port = free_port()
    conf = os.path.join(work, "dnsmasq.conf")
    with open(conf, "w") as f:
        f.write('txt-record=bad.test,"v=spf1 ip4:192.0.2.1 -all"\n')
    p = subprocess.Popen(
        [find("dnsmasq"), "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
         f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
         f"--conf-file={conf}", "--pid-file=", "--log-facility=-", "--local=/test/"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "dnsmasq.log"), "wb"))
    CHILDREN.append(p)

    def answers():
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03bad\x04test\x00\x00\x10\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            try:
                s.sendto(q, ("127.0.0.1", port))
                return s.recv(512)[:2] == b"\x12\x34"
            except OSError:
                return False
    wait("dnsmasq", answers)
    return port


class Server:
    def __init__(self, work, dns_port):
        self.config = os.path.join(work, "postoffice.toml")
        with open(self.config, "w") as f:
            f.write(
                'data_dir = "data"\nhostname = "mail.example.test"\nshutdown_timeout_secs = 5\n'
                '[pop3]\nlisten = ["127.0.0.1:0"]\nlisten_tls = ["127.0.0.1:0"]\n'
                '[smtp]\nlisten = ["127.0.0.1:0"]\n'
                '[submission]\nlisten = ["127.0.0.1:0"]\nlisten_tls = ["127.0.0.1:0"]\n'
                '[http]\nlisten = ["127.0.0.1:0"]\n'
                f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout_secs = 3\n'
                '[filter]\nspf = "quarantine"\ndkim = "off"\ndmarc = "off"\n'
            )
        self.cli("admin", "add", "root", "--password-stdin", stdin=(ADMIN_PW + "\n").encode())
        self.log = open(os.path.join(work, "server.log"), "wb")
        self.proc = subprocess.Popen([BIN, "--config", self.config, "serve"], stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        CHILDREN.append(self.proc)
        self.ports = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line or "TLS certificate" in line:
                break
            m = re.match(r"\s+(POP3S?|SMTP|SUBMITS?|HTTP)\s+127\.0\.0\.1:(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
        if "HTTP" not in self.ports or "SMTP" not in self.ports:
            raise SystemExit(f"postoffice did not start ({self.ports}); see {self.log.name}")
        self.base = f"http://127.0.0.1:{self.ports['HTTP']}"

    def cli(self, *args, stdin=b""):
        r = subprocess.run([BIN, "--config", self.config, *args], input=stdin, capture_output=True,
                           timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"postoffice {' '.join(args)}: {r.stderr.decode()}")
        return r.stdout.decode()

    def get(self, path, headers=None):
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self):
        status, text = self.get("/metrics")
        assert status == 200, status
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return text, values

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Browser:
    """Chromium under chromedriver, spoken to in WebDriver's JSON."""

    def __init__(self, work):
        self.port = free_port()
        self.driver = subprocess.Popen(
            [find("chromedriver"), f"--port={self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "chromedriver.log"), "wb"))
        CHILDREN.append(self.driver)
        self.base = f"http://127.0.0.1:{self.port}"
        wait("chromedriver", lambda: self._ready())
        profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=work)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find("chromium"),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1200,1000",
                         # Nothing leaves the machine: no proxy, and every
                         # name but loopback's fails to resolve.
                         "--no-proxy-server",
                         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                         f"--user-data-dir={profile}"],
            },
        }}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _ready(self):
        try:
            with urllib.request.urlopen(self.base + "/status", timeout=2) as r:
                return json.load(r)["value"]["ready"]
        except (OSError, ValueError, KeyError):
            return False

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read().decode()}") from None

    def s(self, path, method="GET", body=None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def go(self, url):
        self.s("/url", "POST", {"url": url})

    def url(self):
        return self.s("/url")

    def find(self, css):
        return self.s("/element", "POST", {"using": "css selector", "value": css})[ELEMENT]

    def find_all(self, css):
        return [e[ELEMENT] for e in self.s("/elements", "POST", {"using": "css selector", "value": css})]

    def text(self, css):
        """The element's text. The dashboard reloads itself every 10 s: an
        element found just before a reload is stale after it, so the
        lookup is repeated (a bounded number of times) when that happens."""
        for attempt in range(5):
            try:
                return self.s(f"/element/{self.find(css)}/text")
            except AssertionError as e:
                if "stale element" not in str(e) or attempt == 4:
                    raise

    def type(self, css, text, clear=True):
        el = self.find(css)
        if clear:
            self.s(f"/element/{el}/clear", "POST", {})
        self.s(f"/element/{el}/value", "POST", {"text": text})

    def click(self, css):
        """Click, and wait (bounded) until the page it leads to has loaded:
        a click that submits a form may return before the navigation has
        ended, so the new document is recognised by its root element
        being another one than before."""
        old = self.find("html")
        self.s(f"/element/{self.find(css)}/click", "POST", {})

        def new_page():
            try:
                return self.find("html") != old
            except AssertionError:
                return False
        wait(f"the page after clicking {css}", new_page, 30)

    def source(self):
        return self.s("/source")

    def shot(self, name):
        png = base64.b64decode(self.s("/screenshot"))
        path = os.path.join(SHOTS, f"{name}.png")
        with open(path, "wb") as f:
            f.write(png)
        assert png.startswith(b"\x89PNG"), name
        return path

    def quit(self):
        try:
            self._call("DELETE", f"/session/{self.session}")
        except (AssertionError, OSError):
            pass


def send(srv, sender, subject, body="Hello from the test.\r\n"):
    msg = (f"From: <{sender}>\r\nTo: <{USER}>\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '-')}@test>\r\n\r\n{body}")
    with smtplib.SMTP("127.0.0.1", srv.ports["SMTP"], local_hostname="client.test", timeout=60) as s:
        s.sendmail(sender, [USER], msg.encode())


def run(srv, b):
    _, before = srv.metrics()

    @check("the administrator signs in")
    def _():
        b.go(srv.base + "/")
        assert b.url().endswith("/login"), b.url()
        b.shot("01-sign-in")
        b.type("#name", "root")
        b.type("#password", ADMIN_PW)
        b.click("#signin")
        assert b.url().endswith("/admin"), b.url()
        assert b.text("#who") == "root"
        b.shot("02-dashboard")

    @check("the administrator adds a user")
    def _():
        b.go(srv.base + "/admin/users")
        b.type("#new-address", USER)
        b.type("#new-password", USER_PW)
        b.shot("03-users")
        b.click("#add-user")
        assert "/admin/users/alice@example.test" in b.url(), b.url()
        assert b.text("h1") == USER
        assert b.text("#user-state") == "active"
        b.shot("04-user-added")
        assert "alice@example.test" in srv.cli("user", "list")

    @check("the administrator sets the user's quota")
    def _():
        b.type("input[name=quota_bytes]", "5000000")
        b.click("#save-policy")
        assert b.text("#notice") == "User saved.", b.source()[:2000]
        assert "5.0 MB" in b.text("div.box"), b.text("div.box")
        b.shot("05-quota-set")
        info = srv.cli("user", "info", USER)
        assert re.search(r"quota bytes:\s+5000000", info), info

    @check("a message sent over SMTP shows in the live statistics")
    def _():
        b.go(srv.base + "/admin")
        shown_before = int(b.text("#stat-delivered"))
        send(srv, "friend@good.test", "Welcome aboard")
        b.go(srv.base + "/admin")
        assert int(b.text("#stat-delivered")) == shown_before + 1, b.text("#stat-delivered")
        b.shot("06-live-stats")
        b.go(srv.base + "/admin/sessions")
        b.shot("07-sessions")

    @check("a message failing SPF is quarantined, and the administrator releases it")
    def _():
        send(srv, "forger@bad.test", "Held by SPF")
        b.go(srv.base + "/admin/quarantine")
        assert "Held by SPF" in b.text("#quarantine"), b.source()[:3000]
        b.shot("08-quarantine")
        b.click("#quarantine a[href^='/admin/quarantine/']")
        assert "spf=fail" in b.text("#headers"), b.text("#headers")
        b.shot("09-quarantined-message")
        b.click("#release")
        assert b.text("#notice") == "The message was released into the mailbox."
        assert b.text("#quarantine-empty") == "Nothing is quarantined."
        b.shot("10-released")

    @check("queue and domains pages render")
    def _():
        b.go(srv.base + "/admin/queue")
        assert "0 message(s) waiting" in b.text("form.box")
        b.shot("11-queue")
        b.go(srv.base + "/admin/domains")
        assert "example.test" in b.text("#domains")
        b.shot("12-domains")

    @check("the user signs in and sees usage against the quota")
    def _():
        b.click("#signout")
        assert b.url().endswith("/login"), b.url()
        b.type("#name", USER)
        b.type("#password", USER_PW)
        b.click("#signin")
        assert b.url().endswith("/me"), b.url()
        assert b.text("#usage-messages") == "2", b.text("#usage-messages")
        assert b.text("#quota-bytes") == "5.0 MB", b.text("#quota-bytes")
        b.shot("13-my-mailbox")
        # A user is not an administrator.
        b.go(srv.base + "/admin/users")
        assert "403" in b.text("h1"), b.text("h1")
        b.shot("14-user-on-admin-page")

    @check("the user changes the password, and the new one works over POP3")
    def _():
        b.go(srv.base + "/me")
        b.type("#current-password", USER_PW)
        b.type("#new-password", USER_PW2)
        b.type("#confirm-password", USER_PW2)
        b.click("#change-password")
        assert b.url().endswith("/me?done=password-changed"), (b.url(), b.text("main"))
        assert b.text("#notice") == "Password changed.", b.text("main")
        b.shot("15-password-changed")
        p = poplib.POP3("127.0.0.1", srv.ports["POP3"], timeout=60)
        p.user(USER)
        p.pass_(USER_PW2)
        count, _ = p.stat()
        assert count == 2, count
        subjects = [b"\r\n".join(p.retr(i + 1)[1]) for i in range(count)]
        assert any(b"Subject: Held by SPF" in m for m in subjects)
        p.quit()
        p = poplib.POP3("127.0.0.1", srv.ports["POP3"], timeout=60)
        p.user(USER)
        try:
            p.pass_(USER_PW)
            raise AssertionError("the old password still works")
        except poplib.error_proto:
            pass
        p.quit()

    @check("promtool accepts /metrics, and the counters moved with the traffic")
    def _():
        text, after = srv.metrics()
        r = subprocess.run([find("promtool"), "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()

        def moved(name):
            return after.get(name, 0) - before.get(name, 0)

        assert moved('postoffice_smtp_transactions_total{service="mx",outcome="delivered"}') == 1
        assert moved('postoffice_smtp_transactions_total{service="mx",outcome="quarantined"}') == 1
        assert moved('postoffice_filter_verdicts_total{stage="spf",result="fail"}') == 1
        assert moved('postoffice_logins_total{protocol="pop3",result="ok"}') == 1
        assert moved('postoffice_logins_total{protocol="pop3",result="failed"}') == 1
        assert moved('postoffice_logins_total{protocol="web",result="ok"}') >= 2
        assert moved("postoffice_pop3_retrieved_messages_total") == 2
        assert moved('postoffice_sessions_total{protocol="smtp"}') == 2
        assert moved('postoffice_delivery_duration_seconds_count{path="inbound"}') == 2

    @check("Thunderbird autoconfig parses and names the listeners; unknown domains get 404")
    def _():
        for path in ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                     "/mail/config-v1.1.xml?emailaddress=nobody%40example.test"):
            status, text = srv.get(path)
            assert status == 200, (path, status)
            root = ET.fromstring(text)
            assert root.tag == "clientConfig" and root.get("version") == "1.1"
            provider = root.find("emailProvider")
            assert provider.get("id") == "example.test"
            assert provider.findtext("domain") == "example.test"
            incoming = [(s.get("type"), int(s.findtext("port")), s.findtext("socketType"))
                        for s in provider.findall("incomingServer")]
            outgoing = [(s.get("type"), int(s.findtext("port")), s.findtext("socketType"))
                        for s in provider.findall("outgoingServer")]
            assert incoming == [("pop3", srv.ports["POP3S"], "SSL"), ("pop3", srv.ports["POP3"], "STARTTLS")], incoming
            assert outgoing == [("smtp", srv.ports["SUBMITS"], "SSL"), ("smtp", srv.ports["SUBMIT"], "STARTTLS")], outgoing
            for s in provider.findall("incomingServer") + provider.findall("outgoingServer"):
                assert s.findtext("hostname") == "mail.example.test"
                assert s.findtext("username") == "%EMAILADDRESS%"
                assert s.findtext("authentication") == "password-cleartext"
        # The same answer whether the address exists or not.
        assert srv.get(path)[1] == srv.get(path.replace("nobody", "alice"))[1]
        status, text = srv.get("/mail/config-v1.1.xml?emailaddress=alice%40elsewhere.test")
        assert status == 404 and "elsewhere" not in text, (status, text)
        status, _ = srv.get("/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.test"})
        assert status == 200, status


def main():
    os.makedirs(SHOTS, exist_ok=True)
    work = tempfile.mkdtemp(prefix="postoffice-browser-")
    srv = b = None
    try:
        dns_port = start_dns(work)
        srv = Server(work, dns_port)
        b = Browser(work)
        run(srv, b)
    finally:
        if b:
            b.quit()
        if srv:
            srv.stop()
        for c in CHILDREN:
            if c.poll() is None:
                c.kill()
                c.wait()
        if FAILED:
            print(f"(work directory kept: {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots: {SHOTS}")
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Running in production, with the real programs: systemd's socket
activation, a switch to an unprivileged user, certificates that reload,
SNI, JSON logs and `postoffice dns check` against a private DNS server.

Usage: production.py PATH/TO/postoffice

- socket activation: systemd-socket-activate (Debian's systemd package)
  opens five loopback sockets named pop3, pop3s, smtp, submission and
  submissions and starts `serve` on them; mail goes in over SMTP and
  submission and comes out over POP3 and POP3S; the config's own listen
  addresses stay closed.
- privileges: started as root with `user = "po-test"` (a system user this
  script creates, and removes after), the server runs as that user and
  every file under data_dir belongs to it; without `user` it refuses to run
  as root; with only CAP_NET_BIND_SERVICE (as systemd's
  AmbientCapabilities= gives) an unprivileged server binds a port below 1024.
- certificates: replaced files plus SIGHUP, and (in another server) only
  replaced files through a certbot-like symlink swap, change the
  certificate new TLS clients see (SHA-256 of what the client received),
  while a session opened before goes on; a corrupt key keeps the old
  certificate and logs one error; the certbot deploy hook of the package
  installs a renewed lineage; a certificate near expiry is warned about;
  `config check` shows names and expiry.
- SNI: two names, two certificates; openssl s_client gets the right one for
  each name and the first for no name.
- logs: with [log] format = "json" every line is a JSON object, and the
  session and delivery lines carry the documented fields.
- DNS: a private dnsmasq serves the records `postoffice dns` printed
  (converted to dnsmasq syntax): `dns check` exits 0; then each record in
  turn is removed or made wrong, and `dns check` exits 1 naming it.

Parts that need root (user switch, capabilities, the deploy hook's
chown) fail when not run as root: tests never skip. Prints one line per check and
"N passed, M failed"; exits 1 on failure.
"""

import glob
import hashlib
import json
import os
import poplib
import pwd
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

from harness import FAILED, NO_DNS, PASSED, check, find, free_port

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/postoffice")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROOT = os.geteuid() == 0
TEST_USER = "po-test"
CHILDREN = []
WORK = tempfile.mkdtemp(prefix="postoffice-production-")
os.chmod(WORK, 0o755)  # the test user must reach its data directory


def env(allow_root=True):
    e = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "POSTOFFICE_CONFIG")}
    if allow_root:
        e["POSTOFFICE_ALLOW_ROOT"] = "1"
    else:
        e.pop("POSTOFFICE_ALLOW_ROOT", None)
    return e


def wait_until(what, predicate, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


def run(args, input=b"", allow_root=True, check_rc=True, **kw):
    p = subprocess.run(args, input=input, capture_output=True, env=env(allow_root), timeout=120, **kw)
    if check_rc and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p


def openssl_cert(directory, stem, names, days=30):
    """A self-signed EC certificate for `names` made by the openssl CLI;
    returns (cert path, key path, SHA-256 of its DER)."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, f"{stem}.pem")
    key = os.path.join(directory, f"{stem}.key")
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", str(days), "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True)
    return cert, key, der_sha256(cert)


def der_sha256(pem_path):
    der = subprocess.run(["openssl", "x509", "-in", pem_path, "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def tls_fingerprint(port, sni=None):
    """SHA-256 of the certificate a new TLS client (Python's ssl, OpenSSL)
    receives on `port`."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def s_client_fingerprint(port, sni=None):
    """The same through `openssl s_client`, the real command-line client."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    args += ["-servername", sni] if sni else ["-noservername"]
    out = subprocess.run(args, input=b"", capture_output=True, timeout=30).stdout
    pem = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert pem, f"s_client printed no certificate: {out[-500:]!r}"
    der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=pem.group(0),
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


class Server:
    """`postoffice serve` with a config written here; addresses from its
    start-up banner."""

    def __init__(self, name, body, allow_root=True, wrap=(), expect_start=True):
        self.dir = os.path.join(WORK, name)
        os.makedirs(self.dir, exist_ok=True)
        if os.stat(self.dir).st_uid == os.geteuid():
            os.chmod(self.dir, 0o755)
        self.config = os.path.join(self.dir, "postoffice.toml")
        with open(self.config, "w") as f:
            f.write(body)
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = subprocess.Popen(
            [*wrap, BIN, "--config", self.config, "serve"], stdout=subprocess.PIPE,
            stderr=open(self.log_path, "wb"), stdin=subprocess.DEVNULL, env=env(allow_root))
        CHILDREN.append(self.proc)
        self.addrs = {}
        if expect_start:
            self.read_banner()

    def read_banner(self):
        names = {"POP3": "pop3", "POP3S": "pop3s", "SMTP": "smtp", "SUBMIT": "submission",
                 "SUBMITS": "submissions"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise AssertionError(f"server exited: {self.log()}")
            m = re.match(r"\s+(POP3S?|SMTP|SUBMITS?)\s+\S+:(\d+)", line)
            if m:
                self.addrs[names[m.group(1)]] = int(m.group(2))
            if line.startswith("Stop with"):
                return
        raise AssertionError("no banner")

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def cli(self, *args, input=b"", allow_root=True):
        return run([BIN, "--config", self.config, *args], input=input, allow_root=allow_root)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def listens(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def message(subject, to="alice@example.test", sender="bob@remote.test"):
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\nbody of {subject}\r\n").encode()


def pop_all(port, user="alice@example.test", password="secret", tls=False):
    """Every message of the maildrop, read over POP3 (no deletion)."""
    if tls:
        ctx = ssl._create_unverified_context()
        p = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=30)
    else:
        p = poplib.POP3("127.0.0.1", port, timeout=30)
    p.user(user)
    p.pass_(password)
    n = len(p.list()[1])
    bodies = [b"\r\n".join(p.retr(i + 1)[1]) for i in range(n)]
    p.quit()
    return bodies


def loopback_ports(n):
    return [free_port() for _ in range(n)]


def listen_config(pop3=0, pop3s=0, smtp=0, submission=0, submissions=0):
    return (f'pop3.listen = ["127.0.0.1:{pop3}"]\npop3.listen_tls = ["127.0.0.1:{pop3s}"]\n'
            f'smtp.listen = ["127.0.0.1:{smtp}"]\nsubmission.listen = ["127.0.0.1:{submission}"]\n'
            f'submission.listen_tls = ["127.0.0.1:{submissions}"]\nhttp.listen = []\n')


BASE = 'data_dir = "data"\nhostname = "mail.example.test"\nshutdown_timeout_secs = 5\n'


# --- socket activation ------------------------------------------------------
@check("socket activation: systemd-socket-activate passes five named sockets; mail in over SMTP "
       "and submission, out over POP3 and POP3S; the listen keys stay unused")
def _():
    activate = find("systemd-socket-activate")
    ports = dict(zip(["pop3", "pop3s", "smtp", "submission", "submissions"], loopback_ports(5)))
    unused = loopback_ports(5)  # what the config says: never bound
    d = os.path.join(WORK, "activated")
    os.makedirs(d)
    cfg = os.path.join(d, "postoffice.toml")
    with open(cfg, "w") as f:
        f.write(BASE + listen_config(*unused) + NO_DNS)
    run([BIN, "--config", cfg, "user", "add", "alice@example.test", "--password-stdin"],
        input=b"secret\n", cwd=d)
    args = [activate]
    for name in ports:
        args += ["-l", f"127.0.0.1:{ports[name]}"]
    args += ["--fdname=" + ":".join(ports), "-E", "POSTOFFICE_ALLOW_ROOT=1",
             BIN, "--config", cfg, "serve"]
    log = open(os.path.join(d, "server.log"), "wb")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, cwd=d)
    CHILDREN.append(proc)
    try:
        wait_until("activator listening", lambda: listens(ports["smtp"]))
        # The first connection starts the server; SMTP delivers to alice.
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as s:
            s.sendmail("bob@remote.test", ["alice@example.test"], message("over smtp"))
        # Submission (implicit TLS) by alice to herself.
        ctx = ssl._create_unverified_context()
        with smtplib.SMTP_SSL("127.0.0.1", ports["submissions"], context=ctx, timeout=60) as s:
            s.login("alice@example.test", "secret")
            s.sendmail("alice@example.test", ["alice@example.test"],
                       message("over submissions", sender="alice@example.test"))
        with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=60) as s:
            s.starttls(context=ctx)
            s.login("alice@example.test", "secret")
            s.sendmail("alice@example.test", ["alice@example.test"],
                       message("over submission", sender="alice@example.test"))
        plain = pop_all(ports["pop3"])
        tls = pop_all(ports["pop3s"], tls=True)
        assert plain == tls and len(plain) == 3, (len(plain), len(tls))
        for subject in (b"over smtp", b"over submissions", b"over submission"):
            assert any(b"Subject: " + subject in m for m in plain), subject
        for port in unused:
            assert not listens(port), f"the config's port {port} was bound"
        text = open(os.path.join(d, "server.log"), errors="replace").read()
        assert "using the sockets passed by systemd" in text, text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@check("socket activation: a socket named other than a service is refused with the fix")
def _():
    activate = find("systemd-socket-activate")
    port = free_port()
    d = os.path.join(WORK, "badname")
    os.makedirs(d)
    cfg = os.path.join(d, "postoffice.toml")
    with open(cfg, "w") as f:
        f.write(BASE + NO_DNS)
    err = open(os.path.join(d, "err"), "wb")
    proc = subprocess.Popen([activate, "-l", f"127.0.0.1:{port}", "--fdname=imap", "-E",
                             "POSTOFFICE_ALLOW_ROOT=1", BIN, "--config", cfg, "serve"],
                            stdout=subprocess.DEVNULL, stderr=err, cwd=d)
    CHILDREN.append(proc)
    wait_until("activator listening", lambda: listens(port))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        pass
    assert proc.wait(60) != 0
    text = open(os.path.join(d, "err"), errors="replace").read()
    assert '"imap"' in text and "FileDescriptorName=" in text, text


# --- privileges -------------------------------------------------------------
CREATED_USER = False


def need_root(what):
    # Tests never skip: a part that cannot run fails, with the reason.
    if not ROOT:
        raise AssertionError(f"{what} needs root (CI runs as root)")
    return True


def test_user():
    global CREATED_USER
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", TEST_USER], check=True)
        CREATED_USER = True
        return pwd.getpwnam(TEST_USER)


def proc_ids(pid):
    status = open(f"/proc/{pid}/status").read()
    uids = [int(x) for x in re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()]
    gids = [int(x) for x in re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()]
    groups = re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()
    return uids, gids, [int(g) for g in groups]


@check("privileges: started as root with user = po-test, the server runs as po-test and every "
       "file it and the admin commands create belongs to po-test")
def _():
    if not need_root("the user switch"):
        return
    u = test_user()
    srv = Server("dropped", BASE + f'user = "{TEST_USER}"\n' + listen_config() + NO_DNS,
                 allow_root=False)
    try:
        uids, gids, groups = proc_ids(srv.proc.pid)
        assert uids == [u.pw_uid] * 4, uids
        assert gids == [u.pw_gid] * 4, gids
        assert 0 not in groups, groups
        # An admin command run as root switches too.
        srv.cli("user", "add", "alice@example.test", "--password-stdin", input=b"secret\n",
                allow_root=False)
        with smtplib.SMTP("127.0.0.1", srv.addrs["smtp"], timeout=60) as s:
            s.sendmail("bob@remote.test", ["alice@example.test"], message("to the dropped server"))
        assert len(pop_all(srv.addrs["pop3"])) == 1
        data = os.path.join(srv.dir, "data")
        owners = {}
        for dirpath, dirnames, filenames in os.walk(data):
            for n in dirnames + filenames + ["."]:
                p = os.path.join(dirpath, n)
                owners[p] = os.lstat(p).st_uid
        assert len(owners) > 10, owners
        wrong = {p: o for p, o in owners.items() if o != u.pw_uid}
        assert not wrong, wrong
        assert any("/mail/example.test/alice/" in p for p in owners), owners
        assert f"now running as {TEST_USER}" in srv.log(), srv.log()
    finally:
        srv.stop()


@check("privileges: as root without user the server refuses a public address before binding it, "
       "and says what to do; on loopback only (a trial) it starts with a warning")
def _():
    if not need_root("the root refusal"):
        return
    # A wildcard address the test never binds: the refusal comes first.
    public = listen_config().replace('pop3.listen = ["127.0.0.1:0"]', 'pop3.listen = ["0.0.0.0:0"]')
    assert "0.0.0.0" in public, public
    srv = Server("refused", BASE + public + NO_DNS, allow_root=False, expect_start=False)
    assert srv.proc.wait(60) != 0
    text = srv.log()
    assert "refusing to run as root listening on 0.0.0.0" in text, text
    assert 'user = "postoffice"' in text and "allow_root" in text, text
    trial = Server("trial", BASE + listen_config() + NO_DNS, allow_root=False)
    try:
        assert "running as root" in trial.log(), trial.log()
    finally:
        trial.stop()
    allowed = Server("allowed", BASE + "allow_root = true\n" + listen_config() + NO_DNS,
                     allow_root=False)
    allowed.stop()


@check("privileges: an unprivileged server with only CAP_NET_BIND_SERVICE (AmbientCapabilities=) "
       "listens on a port below 1024")
def _():
    if not need_root("the capability test"):
        return
    test_user()
    port = None
    for candidate in range(900, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
                port = candidate
                break
            except OSError:
                continue
    assert port, "no free port below 1024"
    # The unprivileged server creates its data directory here.
    d = os.path.join(WORK, "capability")
    os.makedirs(d)
    os.chown(d, pwd.getpwnam(TEST_USER).pw_uid, -1)
    wrap = [find("setpriv"), f"--reuid={TEST_USER}", f"--regid={TEST_USER}", "--init-groups",
            "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    srv = Server("capability", BASE + listen_config(pop3=port) + NO_DNS, wrap=wrap)
    try:
        assert srv.addrs["pop3"] == port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            assert c.recv(100).startswith(b"+OK")
        uids, _, _ = proc_ids(srv.proc.pid)
        assert uids[1] == pwd.getpwnam(TEST_USER).pw_uid, uids
    finally:
        srv.stop()


# --- certificates -------------------------------------------------------------
def tls_config(pairs, reload_secs):
    text = BASE + listen_config() + NO_DNS + f"[tls]\nreload_check_secs = {reload_secs}\n"
    text += "certificates = [" + ", ".join(f'{{ cert = "{c}", key = "{k}" }}' for c, k in pairs) + "]\n"
    return text


def _group_exists(name):
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def open_pop3s_session(port):
    ctx = ssl._create_unverified_context()
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    tls = ctx.wrap_socket(raw)
    assert tls.recv(200).startswith(b"+OK")
    return tls


def still_up(session):
    session.sendall(b"CAPA\r\n")
    data = b""
    while not data.endswith(b"\r\n.\r\n"):
        chunk = session.recv(4096)
        assert chunk, "session closed"
        data += chunk
    assert data.startswith(b"+OK"), data
    session.sendall(b"QUIT\r\n")
    assert session.recv(200).startswith(b"+OK")
    session.close()


@check("certificates: replaced files + SIGHUP: new clients get the new certificate, an open "
       "session goes on; a corrupt key keeps the old one with one error")
def _():
    d = os.path.join(WORK, "hup-certs")
    cert, key, first = openssl_cert(d, "live", ["mail.example.test"])
    srv = Server("hup", tls_config([(cert, key)], 0))
    try:
        port = srv.addrs["pop3s"]
        assert tls_fingerprint(port) == first
        session = open_pop3s_session(port)
        c2, k2, second = openssl_cert(os.path.join(d, "next"), "live", ["mail.example.test"])
        os.replace(k2, key)
        os.replace(c2, cert)
        # reload_check_secs = 0: nothing happens until SIGHUP.
        assert tls_fingerprint(port) == first
        srv.proc.send_signal(signal.SIGHUP)
        wait_until("new certificate after SIGHUP", lambda: tls_fingerprint(port) == second)
        assert s_client_fingerprint(port) == second
        still_up(session)
        # A corrupt key: the certificate in use stays, one error is logged.
        with open(key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        srv.proc.send_signal(signal.SIGHUP)
        wait_until("reload error logged", lambda: "TLS certificate not reloaded" in srv.log())
        assert tls_fingerprint(port) == second
        assert srv.log().count("TLS certificate not reloaded") == 1, srv.log()
        assert srv.proc.poll() is None
    finally:
        srv.stop()


@check("certificates: a certbot-style symlink swap alone (no signal) is picked up; the deploy "
       "hook installs a renewed lineage the same way")
def _():
    d = os.path.join(WORK, "swap-certs")
    archive = os.path.join(d, "archive")
    live = os.path.join(d, "live")
    os.makedirs(live)
    c1, k1, first = openssl_cert(archive, "cert1", ["mail.example.test"])
    c2, k2, second = openssl_cert(archive, "cert2", ["mail.example.test"])
    cert, key = os.path.join(live, "fullchain.pem"), os.path.join(live, "privkey.pem")
    os.symlink(c1, cert)
    os.symlink(k1, key)
    srv = Server("swap", tls_config([(cert, key)], 1))
    try:
        port = srv.addrs["pop3s"]
        assert tls_fingerprint(port) == first
        session = open_pop3s_session(port)
        for target, link in ((k2, key), (c2, cert)):
            tmp = link + ".new"
            os.symlink(target, tmp)
            os.replace(tmp, link)
        wait_until("new certificate after the swap", lambda: tls_fingerprint(port) == second)
        still_up(session)
        assert "TLS certificate not reloaded" not in srv.log(), srv.log()
        # The package's deploy hook, as certbot runs it (RENEWED_LINEAGE),
        # into a directory of our own instead of /etc/postoffice/tls.
        assert ROOT, "the deploy hook test needs root (install -o root)"
        if ROOT:
            hook_dir = os.path.join(d, "hooked")
            os.makedirs(hook_dir)
            lineage = os.path.join(d, "letsencrypt", "live", "mail.example.test")
            c3, k3, third = openssl_cert(lineage, "x", ["mail.example.test"])
            os.rename(c3, os.path.join(lineage, "fullchain.pem"))
            os.rename(k3, os.path.join(lineage, "privkey.pem"))
            grp = "postoffice" if _group_exists("postoffice") else "root"
            hook = open(os.path.join(REPO, "packaging", "certbot-deploy-hook")).read()
            hook = hook.replace("-g postoffice", f"-g {grp}")
            hook_path = os.path.join(d, "hook.sh")
            with open(hook_path, "w") as f:
                f.write(hook)
            subprocess.run(["sh", hook_path], check=True, capture_output=True,
                           env={**os.environ, "RENEWED_LINEAGE": lineage, "POSTOFFICE_TLS_DIR": hook_dir})
            # Point the live links at what the hook installed.
            for name, link in (("privkey.pem", key), ("fullchain.pem", cert)):
                tmp = link + ".new"
                os.symlink(os.path.join(hook_dir, name), tmp)
                os.replace(tmp, link)
            assert oct(os.stat(os.path.join(hook_dir, "privkey.pem")).st_mode & 0o777) == "0o640"
            wait_until("the hook's certificate", lambda: tls_fingerprint(port) == third)
    finally:
        srv.stop()


@check("SNI: two names, two certificates; openssl s_client gets each one by name and the "
       "first without a name or for an unknown name")
def _():
    d = os.path.join(WORK, "sni-certs")
    ca, ka, fa = openssl_cert(d, "a", ["mail.a.test"])
    cb, kb, fb = openssl_cert(d, "b", ["pop.b.test", "*.wild.b.test"])
    srv = Server("sni", tls_config([(ca, ka), (cb, kb)], 5))
    try:
        for port in (srv.addrs["pop3s"], srv.addrs["submissions"]):
            assert s_client_fingerprint(port, "mail.a.test") == fa
            assert s_client_fingerprint(port, "pop.b.test") == fb
            assert s_client_fingerprint(port, "x.wild.b.test") == fb
            assert s_client_fingerprint(port, "other.test") == fa
            assert s_client_fingerprint(port) == fa
        # STLS on the plain POP3 port uses the same certificates.
        p = poplib.POP3("127.0.0.1", srv.addrs["pop3"], timeout=30)
        ctx = ssl._create_unverified_context()
        p.stls(context=ctx)
        assert hashlib.sha256(p.sock.getpeercert(binary_form=True)).hexdigest() == fa
        p.quit()
    finally:
        srv.stop()


@check("certificates: expiry within 14 days is warned about at start; config check shows each "
       "certificate's names and expiry, and fails on a broken one")
def _():
    d = os.path.join(WORK, "expiry-certs")
    c, k, _ = openssl_cert(d, "soon", ["soon.example.test"], days=5)
    srv = Server("expiry", tls_config([(c, k)], 0))
    try:
        wait_until("expiry warning", lambda: "renew it" in srv.log())
        assert "soon.example.test" in srv.log()
        out = srv.cli("config", "check")
        text = out.stdout.decode()
        assert f"# TLS certificate {c}" in text, text
        assert "names:   soon.example.test" in text, text
        assert re.search(r"expires: .* \(in [45] days\)", text), text
        assert "expires in" in out.stderr.decode(), out.stderr
    finally:
        srv.stop()
    with open(k, "w") as f:
        f.write("broken")
    bad = run([BIN, "--config", srv.config, "config", "check"], check_rc=False)
    assert bad.returncode != 0 and k in bad.stderr.decode(), bad.stderr


# --- logs ---------------------------------------------------------------------
SESSION_FIELDS = {
    "pop3 session": {"user", "ip", "tls", "end", "retr", "retr_bytes", "top", "dele", "dele_bytes",
                     "bad_commands", "auth_failures", "bytes_in", "bytes_out", "duration_ms"},
    "smtp session": {"ip", "submission", "user", "helo", "tls", "end", "messages", "rejected_rcpts",
                     "errors", "duration_ms"},
    "smtp transaction": {"id", "ip", "helo", "from", "rcpts", "size", "tls", "connect", "verdict",
                         "result", "reply"},
    "submitted": {"from", "local", "remote", "queue_id", "size"},
}


@check("logs: format = json writes one JSON object per line; session and delivery lines carry "
       "the documented fields")
def _():
    srv = Server("json", BASE + listen_config() + NO_DNS + '[log]\nformat = "json"\n')
    try:
        srv.cli("user", "add", "alice@example.test", "--password-stdin", input=b"secret\n")
        with smtplib.SMTP("127.0.0.1", srv.addrs["smtp"], timeout=60) as s:
            s.sendmail("bob@remote.test", ["alice@example.test"], message("json logged"))
        with smtplib.SMTP("127.0.0.1", srv.addrs["submission"], timeout=60) as s:
            s.login("alice@example.test", "secret")  # loopback: AUTH before TLS is allowed
            s.sendmail("alice@example.test", ["alice@example.test"],
                       message("json submitted", sender="alice@example.test"))
        assert len(pop_all(srv.addrs["pop3"])) == 2
    finally:
        srv.stop()
    lines = [l for l in srv.log().splitlines() if l.strip()]
    assert lines
    events = [json.loads(l) for l in lines]  # every line parses
    for e in events:
        assert {"timestamp", "level", "message"} <= e.keys(), e
    for name, fields in SESSION_FIELDS.items():
        found = [e for e in events if e["message"] == name]
        assert found, f"no {name!r} line in {lines}"
        missing = fields - found[0].keys()
        assert not missing, f"{name}: missing {missing} in {found[0]}"
    pop = next(e for e in events if e["message"] == "pop3 session" and e["user"] != "-")
    assert pop["user"] == "alice@example.test" and pop["retr"] == 2, pop
    assert pop["span"]["name"] == "pop3" and "peer" in pop["span"], pop
    tx = next(e for e in events if e["message"] == "smtp transaction")
    assert tx["result"] == "delivered" and tx["rcpts"] == "alice@example.test", tx


# --- DNS ----------------------------------------------------------------------
def zone_from_printout(text):
    """dnsmasq directives for the zone lines `postoffice dns` printed."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        m = re.match(r"(\S+)\s+\d+\s+IN\s+(\S+)\s+(.*)$", line)
        assert m, line
        name, rtype, value = m.group(1).rstrip("."), m.group(2), m.group(3)
        if rtype == "MX":
            pref, host = value.split()
            out.append(f"mx-host={name},{host.rstrip('.')},{pref}")
        elif rtype in ("A", "AAAA"):
            out.append(f"host-record={name},{value}")
        elif rtype == "PTR":
            pass  # host-record above makes the reverse record
        elif rtype == "TXT":
            parts = re.findall(r'"([^"]*)"', value)
            out.append(f"txt-record={name}," + ",".join(f'"{p}"' for p in parts))
        elif rtype == "SRV":
            prio, weight, port, target = value.split()
            out.append(f"srv-host={name},{target.rstrip('.')},{port},{prio},{weight}")
        elif rtype == "CNAME":
            out.append(f"cname={name},{value.rstrip('.')}")
        else:
            raise AssertionError(f"unexpected record type {rtype}: {line}")
    return out


class Dnsmasq:
    def __init__(self, lines):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(dir=WORK)
        conf = os.path.join(self.dir, "dnsmasq.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [find("dnsmasq"), "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
             f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
             f"--conf-file={conf}", "--pid-file=", "--log-facility=-", "--local=/test/",
             "--local=/in-addr.arpa/"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "wb"))
        CHILDREN.append(self.proc)
        wait_until("dnsmasq answering", self.answers)

    def answers(self):
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x0f\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            try:
                s.sendto(q, ("127.0.0.1", self.port))
                return s.recv(512)[:2] == b"\x12\x34"
            except OSError:
                return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


DNS_DIR = os.path.join(WORK, "dns")


def dns_config(port):
    return (BASE + 'pop3.listen = ["127.0.0.1:110"]\npop3.listen_tls = ["127.0.0.1:995"]\n'
            'submission.listen = ["127.0.0.1:587"]\nsubmission.listen_tls = ["127.0.0.1:465"]\n'
            'http.listen = []\n'
            f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout_secs = 2\n')


def dns_check(lines):
    server = Dnsmasq(lines)
    try:
        cfg = os.path.join(DNS_DIR, "postoffice.toml")
        with open(cfg, "w") as f:
            f.write(dns_config(server.port))
        p = run([BIN, "--config", cfg, "dns", "check", "example.test"], check_rc=False, cwd=DNS_DIR)
        return p.returncode, p.stdout.decode()
    finally:
        server.stop()


def verdicts(output):
    """{(kind, name): verdict} from `dns check` lines."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"(OK|MISSING|WRONG|ERROR)\s+(\S+)\s+(\S+):", line)
        if m:
            found[(m.group(2), m.group(3))] = m.group(1)
    return found


ZONE = []


@check("dns: the records `postoffice dns` prints, served by dnsmasq, pass `dns check` (exit 0)")
def _():
    os.makedirs(DNS_DIR)
    with open(os.path.join(DNS_DIR, "postoffice.toml"), "w") as f:
        f.write(dns_config(9))
    run([BIN, "--config", os.path.join(DNS_DIR, "postoffice.toml"), "dkim", "generate", "example.test"],
        cwd=DNS_DIR)
    printed = run([BIN, "--config", os.path.join(DNS_DIR, "postoffice.toml"), "dns", "example.test",
                   "--ip", "192.0.2.25"], cwd=DNS_DIR).stdout.decode()
    ZONE.extend(zone_from_printout(printed))
    assert any(z.startswith("txt-record=postoffice._domainkey.example.test,") for z in ZONE), ZONE
    assert len([z for z in ZONE if z.startswith("srv-host=")]) == 4, ZONE
    rc, out = dns_check(ZONE)
    assert rc == 0, out
    v = verdicts(out)
    assert len(v) == 12 and set(v.values()) == {"OK"}, out


def without(prefix):
    return [z for z in ZONE if not z.startswith(prefix)]


def replaced(prefix, line):
    return without(prefix) + [line]


VARIANTS = [
    ("MX missing", lambda: without("mx-host=example.test,"), ("MX", "example.test."), "MISSING"),
    ("MX wrong", lambda: replaced("mx-host=example.test,", "mx-host=example.test,mx.elsewhere.test,10"),
     ("MX", "example.test."), "WRONG"),
    ("address missing", lambda: [z for z in ZONE if not z.startswith("host-record=mail.")
                                 and not z.startswith("cname=")],
     ("address", "mail.example.test."), "MISSING"),
    ("PTR missing", lambda: [z.replace("host-record=mail.example.test,192.0.2.25",
                                       "address=/mail.example.test/192.0.2.25") for z in ZONE
                             if not z.startswith("cname=")] +
     ["address=/autoconfig.example.test/192.0.2.25", "address=/autodiscover.example.test/192.0.2.25"],
     ("PTR", "25.2.0.192.in-addr.arpa."), "MISSING"),
    ("PTR wrong", lambda: [z.replace("host-record=mail.example.test,192.0.2.25",
                                     "address=/mail.example.test/192.0.2.25") for z in ZONE
                           if not z.startswith("cname=")] +
     ["address=/autoconfig.example.test/192.0.2.25", "address=/autodiscover.example.test/192.0.2.25",
      "ptr-record=25.2.0.192.in-addr.arpa,elsewhere.test"],
     ("PTR", "25.2.0.192.in-addr.arpa."), "WRONG"),
    ("SPF missing", lambda: without('txt-record=example.test,"v=spf1'), ("SPF", "example.test."), "MISSING"),
    ("SPF wrong", lambda: replaced('txt-record=example.test,"v=spf1', 'txt-record=example.test,"v=spf1 ip4:192.0.2.1 -all"'),
     ("SPF", "example.test."), "WRONG"),
    ("SPF twice", lambda: ZONE + ['txt-record=example.test,"v=spf1 a -all"'], ("SPF", "example.test."), "WRONG"),
    ("DKIM missing", lambda: without("txt-record=postoffice._domainkey."),
     ("DKIM", "postoffice._domainkey.example.test."), "MISSING"),
    ("DKIM wrong", lambda: replaced("txt-record=postoffice._domainkey.",
                                    'txt-record=postoffice._domainkey.example.test,"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="'),
     ("DKIM", "postoffice._domainkey.example.test."), "WRONG"),
    ("DMARC missing", lambda: without("txt-record=_dmarc."), ("DMARC", "_dmarc.example.test."), "MISSING"),
    ("DMARC wrong", lambda: replaced("txt-record=_dmarc.", 'txt-record=_dmarc.example.test,"v=DMARC1; rua=mailto:x@example.test"'),
     ("DMARC", "_dmarc.example.test."), "WRONG"),
    ("SRV pop3s missing", lambda: without("srv-host=_pop3s."), ("SRV", "_pop3s._tcp.example.test."), "MISSING"),
    ("SRV pop3 missing", lambda: without("srv-host=_pop3."), ("SRV", "_pop3._tcp.example.test."), "MISSING"),
    ("SRV submission wrong", lambda: replaced("srv-host=_submission.", "srv-host=_submission._tcp.example.test,mail.example.test,2525,10,1"),
     ("SRV", "_submission._tcp.example.test."), "WRONG"),
    ("SRV submissions missing", lambda: without("srv-host=_submissions."),
     ("SRV", "_submissions._tcp.example.test."), "MISSING"),
    ("autoconfig missing", lambda: without("cname=autoconfig."), ("autoconfig", "autoconfig.example.test."), "MISSING"),
    ("autodiscover wrong", lambda: replaced("cname=autodiscover.", "host-record=autodiscover.example.test,192.0.2.9"),
     ("autodiscover", "autodiscover.example.test."), "WRONG"),
]

for label, zone, key, expected in VARIANTS:
    @check(f"dns: {label}: dns check exits 1 and says {expected} for {key[1]}")
    def _(zone=zone, key=key, expected=expected, label=label):
        assert ZONE, "the correct zone was not built"
        rc, out = dns_check(zone())
        assert rc == 1, out
        v = verdicts(out)
        assert v.get(key) == expected, out
        # Records that do not depend on the broken one stay right. (The
        # address records feed PTR, SPF and the autoconfig names; the MX
        # feeds the SPF policy "mx".)
        if not label.startswith(("address", "PTR")):
            depends = {"SPF"} if label.startswith("MX") else set()
            others = {k: x for k, x in v.items()
                      if k != key and x != "OK" and k[0] not in depends}
            assert not others, out
            if depends:
                assert v[("SPF", "example.test.")] == "WRONG", out


def cleanup():
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()
    if CREATED_USER:
        subprocess.run(["userdel", TEST_USER], check=False)
    shutil.rmtree(WORK, ignore_errors=True)


cleanup()
print(f"{len(PASSED)} passed, {len(FAILED)} failed")
sys.exit(1 if FAILED else 0)

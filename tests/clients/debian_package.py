#!/usr/bin/env python3
"""The Debian package, installed on this machine and taken away again.

Usage: debian_package.py PATH/TO/postoffice

This changes the machine: it installs the package (dpkg -i), which creates
the postoffice system user, /etc/postoffice and /var/lib/postoffice, and
registers /usr/sbin/sendmail; then removes (dpkg -r) and purges (dpkg -P)
it. It needs root, and refuses to run where postoffice is installed
already or /etc/postoffice exists (it would destroy a real set-up). CI
machines are thrown away after the run; the script still leaves nothing
behind (it purges on failure too, and removes the system user it made).

Steps, as the README's "Running in production" takes them:
- scripts/build-deb.sh packages the binary; dpkg -i installs it;
  systemd-analyze verify accepts the units;
- the admin commands run as root without --config (the package's config is
  the default) and create files owned by postoffice;
- the unit's ExecStart line runs as the unit's User= with five named
  loopback sockets from systemd-socket-activate (as the .socket units pass
  them); mail sent over SMTP and through /usr/sbin/sendmail is popped over
  POP3S; the certbot deploy hook's certificate is served without a restart;
- dpkg -r keeps mail and config; dpkg -P removes both.

Prints one line per check and "N passed, M failed"; exits 1 on failure.
"""

import configparser
import glob
import hashlib
import os
import poplib
import pwd
import re
import shlex
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
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = tempfile.mkdtemp(prefix="postoffice-deb-")
UNITS = "/lib/systemd/system"
SERVICES = ["pop3", "pop3s", "smtp", "submission", "submissions"]
STATE = {}
CHILDREN = []


def sh(*args, input=b"", ok=True, env=None):
    e = {k: v for k, v in os.environ.items()
         if k not in ("POSTOFFICE_CONFIG", "POSTOFFICE_ALLOW_ROOT", "RUST_LOG")}
    e.update(env or {})
    p = subprocess.run(list(args), input=input, capture_output=True, timeout=300, env=e)
    if ok and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}:\n{p.stdout.decode()}\n{p.stderr.decode()}")
    return p


def installed():
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "postoffice"], capture_output=True)
    return p.returncode == 0 and b"installed" in p.stdout


def wait_until(what, predicate, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


if os.geteuid() != 0:
    # Tests never skip: without root the package cannot be installed.
    print("FAIL the package test installs a .deb and needs root (CI runs as root)")
    print("0 passed, 1 failed")
    sys.exit(1)
if installed() or os.path.exists("/etc/postoffice") or os.path.exists("/var/lib/postoffice"):
    print("FAIL postoffice is installed here already (or its directories exist): "
          "this test would destroy that set-up; it runs on throw-away machines only")
    print("0 passed, 1 failed")
    sys.exit(1)
USER_EXISTED = True
try:
    pwd.getpwnam("postoffice")
except KeyError:
    USER_EXISTED = False


@check("build: scripts/build-deb.sh packages the binary with dpkg-deb")
def _():
    out = sh(os.path.join(REPO, "scripts", "build-deb.sh"), "--binary", BIN, "--out", WORK)
    deb = out.stdout.decode().strip().splitlines()[-1]
    assert deb.endswith(".deb") and os.path.exists(deb), out.stdout
    info = sh("dpkg-deb", "-I", deb).stdout.decode()
    assert "Package: postoffice" in info and "Depends:" in info, info
    files = sh("dpkg-deb", "-c", deb).stdout.decode()
    for path in ["./usr/bin/postoffice", "./etc/postoffice/postoffice.toml",
                 "./lib/systemd/system/postoffice.service",
                 "./usr/share/postoffice/certbot-deploy-hook"] + \
            [f"./lib/systemd/system/postoffice-{s}.socket" for s in SERVICES]:
        assert path in files, f"{path} not in the package:\n{files}"
    STATE["deb"] = deb


SENDMAIL_LINKS = ["/usr/sbin/sendmail", "/usr/lib/sendmail"]


def file_identity(path):
    """What a file is, through a symlink's own target text."""
    if os.path.islink(path):
        return ("link", os.readlink(path))
    if os.path.exists(path):
        with open(path, "rb") as f:
            return ("file", hashlib.sha256(f.read()).hexdigest())
    return None


def foreign_sendmail():
    """The package owning /usr/sbin/sendmail when it is not an alternative
    (Postfix, Exim: a plain file), else None."""
    path = "/usr/sbin/sendmail"
    if not os.path.lexists(path):
        return None
    if os.path.islink(path) and os.readlink(path).startswith("/etc/alternatives/"):
        return None
    p = subprocess.run(["dpkg-query", "-S", path], capture_output=True)
    return p.stdout.decode().split(":")[0] if p.returncode == 0 else "an unpackaged file"


def divert(path):
    sh("dpkg-divert", "--local", "--rename", "--divert", path + ".before-postoffice-test",
       "--add", path)
    STATE.setdefault("diverted", []).append(path)


def undivert():
    for path in STATE.pop("diverted", []):
        subprocess.run(["dpkg-divert", "--local", "--rename", "--divert",
                        path + ".before-postoffice-test", "--remove", path], capture_output=True)


@check("dpkg -i: system user, private data directory, config, certificate; sendmail taken "
       "only when no other mail server's package owns it")
def _():
    other = foreign_sendmail()
    before = {p: file_identity(p) for p in SENDMAIL_LINKS}
    STATE["sendmail_before"] = before
    out = sh("dpkg", "-i", STATE["deb"])
    if other:
        # Another MTA's sendmail (Postfix here) is left alone, and the
        # package says how to hand it over; then hand it over the way a
        # user removing that MTA would see it (its files diverted away).
        after = {p: file_identity(p) for p in SENDMAIL_LINKS}
        assert after == before, (before, after)
        err = out.stderr.decode()
        assert f"/usr/sbin/sendmail belongs to {other}" in err, err
        assert "dpkg-reconfigure postoffice" in err, err
        for path in SENDMAIL_LINKS:
            if os.path.lexists(path):
                divert(path)
        sh("dpkg-reconfigure", "postoffice", env={"DEBIAN_FRONTEND": "noninteractive"})
    assert installed()
    u = pwd.getpwnam("postoffice")
    st = os.stat("/var/lib/postoffice")
    assert (st.st_uid, st.st_mode & 0o777) == (u.pw_uid, 0o700), (st.st_uid, oct(st.st_mode))
    conf = os.stat("/etc/postoffice/postoffice.toml")
    assert conf.st_gid == u.pw_gid and conf.st_mode & 0o777 == 0o640, oct(conf.st_mode)
    key = os.stat("/etc/postoffice/tls/privkey.pem")
    assert key.st_uid == 0 and key.st_gid == u.pw_gid and key.st_mode & 0o777 == 0o640
    assert os.path.realpath("/usr/sbin/sendmail") == "/usr/bin/postoffice"
    conffiles = sh("dpkg-query", "-W", "-f=${Conffiles}", "postoffice").stdout.decode()
    assert "/etc/postoffice/postoffice.toml" in conffiles, conffiles


@check("systemd-analyze verify: the service and its five socket units")
def _():
    units = [f"{UNITS}/postoffice.service"] + [f"{UNITS}/postoffice-{s}.socket" for s in SERVICES]
    p = sh(find("systemd-analyze"), "verify", *units, ok=False)
    text = (p.stdout + p.stderr).decode()
    ours = [l for l in text.splitlines() if "postoffice" in l]
    assert p.returncode == 0 and not ours, text
    for s in SERVICES:
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(f"{UNITS}/postoffice-{s}.socket")
        assert unit["Socket"]["FileDescriptorName"] == s
        assert unit["Socket"]["Service"] == "postoffice.service"
    service = open(f"{UNITS}/postoffice.service").read()
    for hardening in ["ProtectSystem=strict", "NoNewPrivileges=yes",
                      "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "User=postoffice",
                      "ReadWritePaths=/var/lib/postoffice"]:
        assert hardening in service, hardening


@check("admin commands as root, without --config: they use the package's config and the "
       "files they create belong to postoffice")
def _():
    # The hostname the README sets, on the test machine's loopback.
    conf = "/etc/postoffice/postoffice.toml"
    text = open(conf).read().replace('# hostname = "mail.example.org"', 'hostname = "mail.example.test"')
    text += '\n[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout_secs = 1\n'
    with open(conf, "w") as f:
        f.write(text)
    sh("postoffice", "user", "add", "alice@example.test", "--password-stdin", input=b"secret\n")
    sh("postoffice", "user", "add", "postmaster@example.test", "--password-stdin", input=b"secret2\n")
    sh("postoffice", "dkim", "generate", "example.test")
    records = sh("postoffice", "dns", "example.test", "--ip", "192.0.2.25").stdout.decode()
    assert "IN MX    10 mail.example.test." in records, records
    check_out = sh("postoffice", "config", "check")
    assert "config file: /etc/postoffice/postoffice.toml" in check_out.stderr.decode()
    assert "# TLS certificate /etc/postoffice/tls/fullchain.pem" in check_out.stdout.decode()
    u = pwd.getpwnam("postoffice")
    wrong = [p for p in glob.glob("/var/lib/postoffice/**", recursive=True)
             if os.lstat(p).st_uid != u.pw_uid]
    assert not wrong, wrong


def pop_all(port):
    ctx = ssl._create_unverified_context()
    p = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=30)
    p.user("alice@example.test")
    p.pass_("secret")
    n = len(p.list()[1])
    msgs = [b"\r\n".join(p.retr(i + 1)[1]) for i in range(n)]
    p.quit()
    return msgs


def fingerprint(port):
    ctx = ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


@check("the unit's ExecStart as its User= on five named sockets: SMTP and sendmail in, "
       "POP3S out; the certbot deploy hook's certificate is served without a restart")
def _():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(f"{UNITS}/postoffice.service")
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    user, group = unit["Service"]["User"], unit["Service"]["Group"]
    ports = {s: free_port() for s in SERVICES}
    args = [find("systemd-socket-activate")]
    for s in SERVICES:
        args += ["-l", f"127.0.0.1:{ports[s]}"]
    args += ["--fdname=" + ":".join(SERVICES),
             find("setpriv"), f"--reuid={user}", f"--regid={group}", "--init-groups", *exec_start]
    log = open(os.path.join(WORK, "server.log"), "wb")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                            cwd="/")
    CHILDREN.append(proc)

    def listening():
        try:
            socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=1).close()
            return True
        except OSError:
            return False
    try:
        wait_until("sockets", listening)
        msg = (b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: from afar\r\n"
               b"Message-ID: <1@remote.test>\r\n\r\nhello from the package test\r\n")
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as s:
            s.sendmail("bob@remote.test", ["alice@example.test"], msg)
        # The server runs as the unit's user.
        server_pid = proc.pid
        status = open(f"/proc/{server_pid}/status").read()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        assert uid == pwd.getpwnam(user).pw_uid, status
        # A local program's mail through the sendmail alternative (root's
        # cron, say).
        sh("/usr/sbin/sendmail", "alice@example.test",
           input=b"Subject: from cron\r\n\r\nthe nightly job ran\r\n")
        got = pop_all(ports["pop3s"])
        assert any(b"hello from the package test" in m for m in got), got
        assert any(b"the nightly job ran" in m for m in got), got
        STATE["messages"] = len(got)
        # certbot's deploy hook (RENEWED_LINEAGE) installs a new certificate.
        before = fingerprint(ports["pop3s"])
        lineage = os.path.join(WORK, "letsencrypt", "live", "mail.example.test")
        os.makedirs(lineage)
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-days", "90", "-subj", "/CN=mail.example.test",
           "-addext", "subjectAltName=DNS:mail.example.test",
           "-keyout", f"{lineage}/privkey.pem", "-out", f"{lineage}/fullchain.pem")
        der = sh("openssl", "x509", "-in", f"{lineage}/fullchain.pem", "-outform", "DER").stdout
        renewed = hashlib.sha256(der).hexdigest()
        assert renewed != before
        sh("/usr/share/postoffice/certbot-deploy-hook", env={"RENEWED_LINEAGE": lineage})
        wait_until("the renewed certificate", lambda: fingerprint(ports["pop3s"]) == renewed)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


@check("dpkg -r keeps the mail and the config; the program and sendmail are gone")
def _():
    sh("dpkg", "-r", "postoffice")
    assert not os.path.exists("/usr/bin/postoffice")
    assert not os.path.lexists("/usr/sbin/sendmail")
    assert os.path.exists("/etc/postoffice/postoffice.toml")
    kept = glob.glob("/var/lib/postoffice/mail/example.test/alice/*/*")
    assert len(kept) == STATE["messages"], kept
    assert os.path.exists("/var/lib/postoffice/directory.toml")


@check("dpkg -P removes the mail and the config without asking")
def _():
    sh("dpkg", "-P", "postoffice")
    assert not os.path.exists("/var/lib/postoffice")
    assert not os.path.exists("/etc/postoffice")
    assert not installed()


@check("afterwards the other mail server's sendmail is exactly as it was")
def _():
    undivert()
    after = {p: file_identity(p) for p in SENDMAIL_LINKS}
    assert after == STATE["sendmail_before"], (STATE["sendmail_before"], after)


for p in CHILDREN:
    if p.poll() is None:
        p.kill()
        p.wait()
if installed() or os.path.exists("/etc/postoffice"):
    subprocess.run(["dpkg", "-P", "postoffice"], capture_output=True)
    shutil.rmtree("/var/lib/postoffice", ignore_errors=True)
    shutil.rmtree("/etc/postoffice", ignore_errors=True)
undivert()
if not USER_EXISTED:
    subprocess.run(["userdel", "postoffice"], capture_output=True)
    subprocess.run(["groupdel", "postoffice"], capture_output=True)
for link in glob.glob("/etc/systemd/system/*.wants/postoffice*"):
    os.unlink(link)
shutil.rmtree(WORK, ignore_errors=True)
print(f"{len(PASSED)} passed, {len(FAILED)} failed")
sys.exit(1 if FAILED else 0)

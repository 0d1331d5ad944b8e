"""Shared pieces of the real-client test scripts in this directory: the
pass/fail bookkeeping, bounded waits, free loopback ports and finding a
daemon's binary.
Imported by name: Python puts the running script's directory on sys.path."""

import os
import shutil
import socket
import time
import traceback

PASSED, FAILED = [], []


def check(name):
    """Run the decorated function now as one named check; record and print
    its result, and go on after a failure (every failure is reported)."""

    def wrap(fn):
        try:
            fn()
            PASSED.append(name)
            print(f"ok   {name}", flush=True)
        except Exception:  # noqa: BLE001 - report every failure and go on
            FAILED.append(name)
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        return fn

    return wrap


def wait_for(cond, what, seconds=90):
    """Poll `cond` until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def free_port(*hosts):
    """A TCP port free on every given loopback address (default 127.0.0.1)."""
    hosts = hosts or ("127.0.0.1",)
    for _ in range(100):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as t:
                try:
                    t.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise SystemExit("no common free port")


def find(binary):
    """The path of a daemon or tool; the sbin directories first (a non-root
    PATH often lacks them)."""
    for d in ("/usr/sbin", "/usr/bin", "/sbin"):
        p = os.path.join(d, binary)
        if os.path.exists(p):
            return p
    p = shutil.which(binary)
    if not p:
        raise SystemExit(f"{binary} is not installed (.ci/run lists the Debian packages)")
    return p


# Config for a server whose test does not exercise DNS: the checks that need
# DNS are off, and the resolver is a loopback port where nothing answers, so
# a lookup nobody expected fails here instead of reaching the machine's
# resolver (no test sends traffic off the machine).
NO_DNS = """
[dns]
nameservers = ["127.0.0.1:9"]
timeout_secs = 1
[filter]
spf = "off"
dkim = "off"
dmarc = "off"
"""

#!/usr/bin/env python3
"""The README's quick start, run as a new user would: from a fresh clone.

Usage: quickstart.py [REPO]   (default: the repository this script is in)

1. Clones REPO (what is committed: a fresh clone) into a temporary directory.
2. Reads the quick start's first command from README.md (the line marked
   `# 1.` in the first ```sh block) and runs it there, literally, through
   the shell, with no configuration: the defaults must give a working
   server.
3. Waits for the POP3 greeting on 127.0.0.1:2110 (the README's banner says
   it listens there) and the banner, then follows the banner's own advice:
   runs the "add a user" line it printed, delivers a message with
   `postoffice deliver` and reads it back over POP3 with curl, as the
   README's next block does.
4. Stops the server with SIGINT to its process group (what Ctrl-C does) and
   expects a clean exit.

The release build is shared with the repository's target/ directory
(CARGO_TARGET_DIR), so CI builds it once; everything else is what a user
types. Exits 1 on any failure, with the server's output.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DEADLINE = 1800  # a cold release build on a 2-core machine
STOP_DEADLINE = 60


def fail(msg, out=""):
    print(f"FAIL quick start: {msg}")
    if out:
        print("---- server output ----")
        print(out[-6000:])
    sys.exit(1)


def first_command(readme):
    """The first command of the README's quick start block."""
    text = open(readme, encoding="utf-8").read()
    start = text.index("## Quick start")
    block = text[start:].split("```sh", 1)[1].split("```", 1)[0]
    for line in block.splitlines():
        if "# 1." in line:
            return line.split("#", 1)[0].strip()
    fail("README.md has no line marked '# 1.' in its quick start block")


def greeting(port):
    """The POP3 greeting on 127.0.0.1:port, or None if nothing listens yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(10)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
            s.sendall(b"QUIT\r\n")
            return data.decode(errors="replace")
    except OSError:
        return None


def main():
    with tempfile.TemporaryDirectory(prefix="postoffice-quickstart-") as tmp:
        clone = os.path.join(tmp, "postoffice")
        subprocess.run(["git", "clone", "--quiet", REPO, clone], check=True)
        cmd = first_command(os.path.join(clone, "README.md"))
        print(f"running the README's first command in a fresh clone: {cmd}", flush=True)
        env = dict(os.environ)
        env.setdefault("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
        # A new user has none of the test suite's settings (as root, the
        # loopback-only trial must start without POSTOFFICE_ALLOW_ROOT).
        for k in ("POSTOFFICE_ALLOW_ROOT", "POSTOFFICE_CONFIG"):
            env.pop(k, None)
        out_path = os.path.join(tmp, "server.out")
        out = open(out_path, "w+b")
        # `exec`: the shell becomes the command (cargo in turn execs the
        # server), so the exit status seen here is the server's own.
        proc = subprocess.Popen(
            ["sh", "-c", f"exec {cmd}"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

        def output():
            out.flush()
            with open(out_path, "rb") as f:
                return f.read().decode(errors="replace")

        try:
            deadline = time.monotonic() + BUILD_DEADLINE
            hello = None
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    fail(f"the command exited with status {proc.returncode}", output())
                if "postoffice is running" in output():
                    hello = greeting(2110)
                    if hello:
                        break
                time.sleep(0.5)
            if not hello:
                fail("no POP3 greeting on 127.0.0.1:2110 in time", output())
            if not hello.startswith("+OK"):
                fail(f"unexpected greeting {hello!r}", output())
            print(f"ok   greeting on 2110: {hello.strip()}", flush=True)

            banner = output()
            for expected in ("POP3   127.0.0.1:2110", "SMTP   127.0.0.1:2525", "No users yet"):
                if expected not in banner:
                    fail(f"banner lacks {expected!r}", banner)
            add = re.search(r"^  (printf 'secret\\n' \| .* user add alice@localhost --password-stdin)$", banner, re.M)
            if not add:
                fail("the banner does not print the line that adds a user", banner)
            r = subprocess.run(add.group(1), shell=True, cwd=clone, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"the banner's add-user line failed: {r.stdout}{r.stderr}", banner)
            binary = add.group(1).split("|", 1)[1].split()[0]
            msg = b"Subject: Hello\n\nHi Alice!\n"
            r = subprocess.run([binary, "deliver", "alice@localhost"], cwd=clone, input=msg, capture_output=True)
            if r.returncode != 0:
                fail(f"deliver failed: {r.stderr.decode()}", output())
            r = subprocess.run(
                ["curl", "-sS", "-u", "alice@localhost:secret", "pop3://127.0.0.1:2110/1"],
                capture_output=True, timeout=30,
            )
            if r.returncode != 0 or r.stdout.replace(b"\r\n", b"\n") != msg:
                fail(f"curl got {r.stdout!r} (status {r.returncode}, {r.stderr!r})", output())
            print("ok   user added as the banner says, message delivered and read back with curl", flush=True)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=STOP_DEADLINE)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    fail("the server did not stop on Ctrl-C (SIGINT)", output())
        if proc.returncode != 0:
            fail(f"the server exited with status {proc.returncode} after Ctrl-C", output())
        print("ok   Ctrl-C stops the server cleanly", flush=True)
        print("quick start: 3 passed, 0 failed")


if __name__ == "__main__":
    main()

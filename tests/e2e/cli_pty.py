#!/usr/bin/env python3
"""Drives `ds4` interactively through a pseudo-terminal.

usage: cli_pty.py DS4_BINARY MODEL
Checks: the prompt appears; a turn streams text; Ctrl+C during a long
generation returns to the prompt without killing the process; /nothink and
/help work; /quit exits with status 0."""
import os
import pty
import select
import sys
import time

binary, model = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.environ["HOME"] = os.environ.get("TMPDIR", "/tmp")
    os.execv(binary, [binary, "-m", model, "--temp", "0", "-c", "2048", "--nothink", "-t", "2"])

buf = b""


def read_until(marker, timeout):
    global buf
    end = time.time() + timeout
    while time.time() < end:
        if marker in buf:
            return True
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return marker in buf


def fail(msg):
    sys.stderr.write("FAIL: %s\n--- terminal output ---\n%s\n" % (msg, buf.decode("utf-8", "replace")[-3000:]))
    try:
        os.kill(pid, 9)
    except OSError:
        pass
    sys.exit(1)


if not read_until(b"ds4> ", 60):
    fail("no prompt")
buf = b""
os.write(fd, "Renzo e Lucia\r".encode())
# a short turn: generation ends at EOS or the context; wait for the stats line
if not read_until(b"generation", 120):
    fail("first turn did not finish")
if not read_until(b"ds4> ", 30):
    fail("no prompt after the first turn")
buf = b""
os.write(fd, b"/help\r")
if not read_until(b"/think-max", 10):
    fail("/help did not list commands")
# a long generation, interrupted
buf = b""
os.write(fd, b"/ctx 100000\r")
if not read_until(b"context 100000", 10):
    fail("/ctx did not answer")
buf = b""
os.write(fd, "Write a very long story about Milano.\r".encode())
time.sleep(1.5)
os.write(fd, b"\x03")
if not read_until(b"[interrupted]", 30):
    fail("Ctrl+C did not stop the generation")
if not read_until(b"ds4> ", 30):
    fail("no prompt after Ctrl+C")
buf = b""
os.write(fd, b"/quit\r")
_, status = os.waitpid(pid, 0)
if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
    fail("exit status %r" % status)
print("interactive session ok")

"""mxtest_core: loopback ports, bounded waits, skips, the reaper and message
helpers shared by every part of the integration harness (see mxtest.py)."""

import atexit
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest


HOST = "127.0.0.1"
DOMAIN = "example.test"
# Known recipients of the backends; anything else @example.test is rejected
# at RCPT with 550 5.1.1.
RECIPIENTS = (
    "alice@example.test",
    "bob@example.test",
    "carol@example.test",
    "dave@example.test",
    "erin@example.test",
    "sink@example.test",
    "δοκιμή@example.test",
)
EXIM_CACHE = os.environ.get("MXTEST_EXIM_CACHE", "/var/cache/mxgate-test/exim")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the usual out-of-tree build: <repository>/build/proxy/mxgate
DEFAULT_MXGATE = os.path.join(REPO, "build", "proxy", "mxgate")
MAKE_TEST_DB = os.path.join(REPO, "deploy", "clamav", "make-test-db.sh")
# What the test signature set detects (deploy/clamav/make-test-db.sh).
EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
TEST_MARKER = b"MXGATE-TEST-MARKER-7f3a"


_clamav_db = None


def make_clamav_db(path):
    """Write the test signature set (EICAR by MD5, mxgate's .ndb markers) into path."""
    subprocess.run(["sh", MAKE_TEST_DB, path], check=True, timeout=60,
                   stdout=subprocess.DEVNULL)
    return path


def clamav_test_db():
    """One test signature directory per test process, shared by its mxgate instances."""
    global _clamav_db
    if _clamav_db is None:
        if shutil.which("sigtool") is None:
            raise AssertionError("sigtool not found: install Debian package clamav")
        d = tempfile.mkdtemp(prefix="mxtest-clamdb-")
        atexit.register(shutil.rmtree, d, True)
        _clamav_db = make_clamav_db(d)
    return _clamav_db


# ---------------------------------------------------------------- waiting

def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a true value; raise after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


_ports_given = set()
_ports_lock = threading.Lock()


def free_port(host=HOST):
    """A TCP port on host that nothing listens on now (never the same twice)."""
    with _ports_lock:
        for _ in range(200):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port")


def port_open(port, host=HOST):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port, timeout=15, host=HOST, proc=None, probe=None):
    """Wait until something accepts on host:port (probe(port, host), by
    default a connection); fail early if proc died."""
    probe = probe or port_open

    def ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d"
                               % (proc.returncode, port))
        return probe(port, host)
    wait_until(ready, timeout, 0.05, "port %d" % port)


# ---------------------------------------------------------------- skipping

def read_text(path):
    """A log file's text so far ("" when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def maildir_new(maildir):
    """Paths of the messages in maildir/new, oldest first ([] if none)."""
    new = os.path.join(maildir, "new")
    try:
        names = sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns)
    except OSError:
        return []
    return [os.path.join(new, n) for n in names]


def require_root():
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root (private Postfix/Exim instances)")


def require_program(path, package):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise unittest.SkipTest("%s not found: install Debian package %s" % (path, package))


def require_postfix():
    require_root()
    require_program("/usr/sbin/postfix", "postfix")
    require_program("/usr/lib/postfix/sbin/master", "postfix")


def mxgate_binary():
    """The daemon under test: $MXGATE_BIN (set by ctest) or the usual build path.

    A missing binary is a failure, not a skip: these tests exist to run it."""
    path = os.environ.get("MXGATE_BIN", DEFAULT_MXGATE)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError("mxgate binary not found at %s (set MXGATE_BIN)" % path)
    return path


def mxgatectl_binary():
    """The operator's tool: $MXGATECTL_BIN (set by ctest), else next to the
    daemon under test. Missing is a failure, as for mxgate."""
    path = os.environ.get("MXGATECTL_BIN") or os.path.join(
        os.path.dirname(os.environ.get("MXGATE_BIN", DEFAULT_MXGATE)), "mxgatectl")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError("mxgatectl binary not found at %s (set MXGATECTL_BIN)" % path)
    return path


# ---------------------------------------------------------------- reaper

_REAPER_SRC = r"""
import json, os, signal, subprocess, sys
pending = {}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("op") == "add":
        pending[m["key"]] = m
    else:
        pending.pop(m.get("key"), None)
for m in reversed(list(pending.values())):
    try:
        if m.get("cmd"):
            subprocess.run(m["cmd"], timeout=30, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if m.get("pid"):
            os.kill(m["pid"], signal.SIGKILL)
    except Exception:
        pass
"""


class _Reaper:
    """One helper process per test process; runs clean-ups if we vanish."""

    def __init__(self):
        self._proc = None
        self._lock = threading.Lock()
        self._n = 0

    def _send(self, msg):
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", _REAPER_SRC], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True)
            self._proc.stdin.write((json.dumps(msg) + "\n").encode())
            self._proc.stdin.flush()

    def add(self, pid=None, cmd=None):
        with self._lock:
            self._n += 1
            key = "k%d" % self._n
        self._send({"op": "add", "key": key, "pid": pid, "cmd": cmd})
        return key

    def remove(self, key):
        if key:
            self._send({"op": "del", "key": key})


reaper = _Reaper()


def stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Signal proc and wait; SIGKILL after timeout. Returns the exit code
    (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return None


# ---------------------------------------------------------------- messages

def as_stored(msg):
    """A message as an MTA stores and delivers it: lines end in LF."""
    return msg.replace(b"\r\n", b"\n")


def split_header(data):
    """Split off the first header field (with its folded lines).

    Returns (field, rest); field keeps its line endings."""
    m = re.match(rb"[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*", data)
    if not m:
        return b"", data
    return m.group(0), data[m.end():]


def unfold(field):
    """A header field as one line: CRLF/LF + WSP becomes one space."""
    return re.sub(rb"\r?\n[ \t]+", b" ", field).rstrip(b"\r\n").decode("utf-8", "replace")


def headers_of(data):
    """All header fields of a stored message, unfolded, in order."""
    out = []
    rest = data
    while rest and not rest.startswith((b"\n", b"\r\n")):
        field, rest2 = split_header(rest)
        if not field:
            break
        out.append(unfold(field))
        rest = rest2
    return out


# mxgate's trace header (RFC 5321 4.4): from HELO ([IP]) by HOST (mxgate)
# with PROTO id SID; DATE. An optional reverse name before the address
# ("unknown [IP]") and a "for <rcpt>" clause are the usual forms.
MXGATE_RECEIVED = re.compile(
    r"^Received: from (?P<helo>\S+) \((?:\S+ )?\[(?P<ip>[0-9a-fA-F.:]+)\]\) "
    r"by (?P<by>\S+) \(mxgate\) with (?P<proto>\S+) id (?P<id>[^\s;]+)"
    r"(?: for <[^>]*>)?; (?P<date>.+)$")


def varint(n):
    """n as a protobuf varint (the tests encode records and feeds by hand)."""
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def make_message(subject="mxgate test", body=None, extra_headers=(), sender="sender@client.test",
                 to="alice@example.test"):
    """A message with CRLF line endings, ending in CRLF (not dot-stuffed)."""
    if body is None:
        body = b"Hello from the mxgate integration tests.\r\n"
    hdr = [
        b"From: <" + sender.encode() + b">",
        b"To: <" + to.encode() + b">",
        b"Subject: " + subject.encode(),
        b"Date: Mon, 02 Jan 2023 10:00:00 +0000",
        b"Message-ID: <" + str(time.time_ns()).encode() + b"@client.test>",
    ] + [h if isinstance(h, bytes) else h.encode() for h in extra_headers]
    return b"\r\n".join(hdr) + b"\r\n\r\n" + body


def dot_stuff(msg):
    """RFC 5321 4.5.2 transparency plus the terminating dot."""
    out = re.sub(rb"(^|\r\n)\.", rb"\1..", msg)
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out + b".\r\n"


class Delivery:
    """One delivered copy: envelope and the bytes as written by the MTA."""

    def __init__(self, path, sender, recipient, data, queue_id=""):
        self.path, self.sender, self.recipient = path, sender, recipient
        self.data, self.queue_id = data, queue_id

    def __repr__(self):
        return "<Delivery %s -> %s, %d bytes>" % (self.sender, self.recipient, len(self.data))

    def strip_received(self, by_marker):
        """Remove the MTA's own top Received header; assert it is the MTA's.

        Returns (the MTA's header unfolded, the rest of the bytes)."""
        field, rest = split_header(self.data)
        line = unfold(field)
        if not line.startswith("Received:") or by_marker not in line:
            raise AssertionError("first header is not the backend's Received (%s): %r"
                                 % (by_marker, line))
        return line, rest




# ---------------------------------------------------------------- memcached

class Memcached:
    """A private memcached on 127.0.0.1:port (no UDP, 32 MB), in the
    foreground, stopped by the reaper if the test process dies.

    kill() is SIGKILL (a crash: clients see refused connections), pause()
    SIGSTOP (a hang: connections are accepted by the kernel, nothing is
    answered) and resume() SIGCONT. get/set/delete speak the text protocol
    directly, for tests that look at or tamper with what is stored."""

    BINARY = "/usr/bin/memcached"

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None
        self._reap_key = None

    @property
    def address(self):
        return "%s:%d" % (HOST, self.port)

    def start(self, timeout=10):
        require_program(self.BINARY, "memcached")
        self.proc = subprocess.Popen(
            [self.BINARY, "-u", "nobody", "-l", HOST, "-p", str(self.port), "-U", "0",
             "-m", "32"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._reap_key = reaper.add(pid=self.proc.pid)
        try:
            wait_port(self.port, timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise
        return self

    def _state(self):
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "?"

    def pause(self, timeout=5):
        """SIGSTOP, and wait until the process is really stopped."""
        self.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: self._state() in ("T", "t"), timeout, 0.01,
                   "memcached %d stopped" % self.port)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop_process(self.proc, signal.SIGTERM, 5)
        reaper.remove(self._reap_key)
        self._reap_key = None
        self.proc = None

    def _talk(self, data, until, timeout=2):
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.sendall(data)
            buf = b""
            while not any(buf.endswith(u) for u in until):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf

    def get(self, key):
        """The stored bytes of key, or None."""
        r = self._talk(b"get %s\r\n" % key.encode(), (b"END\r\n",))
        if not r.startswith(b"VALUE "):
            return None
        head, _, rest = r.partition(b"\r\n")
        n = int(head.split()[3])
        return rest[:n]

    def set(self, key, value, exptime=0):
        r = self._talk(b"set %s 0 %d %d\r\n%s\r\n" % (key.encode(), exptime, len(value), value),
                       (b"STORED\r\n", b"ERROR\r\n", b"NOT_STORED\r\n"))
        if r != b"STORED\r\n":
            raise RuntimeError("memcached set %s: %r" % (key, r))

    def delete(self, key):
        return self._talk(b"delete %s\r\n" % key.encode(),
                          (b"DELETED\r\n", b"NOT_FOUND\r\n")) == b"DELETED\r\n"

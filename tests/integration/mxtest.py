"""mxtest: the harness shared by mxgate's integration tests (stdlib only).

What it owns:
  - free loopback ports and bounded waits (`free_port`, `wait_port`, `wait_until`);
  - a reaper process that stops every daemon a test started, even when the
    test process is killed (ctest timeout, SIGKILL): it reads registrations
    on a pipe and runs the pending clean-ups when the pipe closes;
  - `PostfixInstance`: a private Postfix (own config, queue and data
    directories, one smtpd on 127.0.0.1:PORT, its own log file) that delivers
    every recipient of example.test through pipe(8) into a file per
    recipient, byte for byte as stored in its queue;
  - `EximInstance`: a private Exim 4.96 unpacked from Debian's
    exim4-daemon-heavy (the only Debian build with PROXY protocol support),
    delivering into a maildir;
  - `Mxgate`: writes a config, runs the daemon in the foreground, collects
    its key=value log lines, stops it with SIGTERM and reports the exit code;
  - `FakeBackend`: a scriptable SMTP server for faults a real MTA will not
    produce on cue (4xx/5xx at a chosen stage, hang, close, garbage);
  - `SmtpClient`: a raw-socket SMTP client for pipelining, BDAT and malformed
    input that smtplib refuses to send.
  - TLS material (`TlsCa`, `TlsCert`, `make_ticket_keys`): a throwaway CA
    and server certificates with subjectAltName DNS/IP names, and session
    ticket key files, all made with the openssl command;
  - `HaproxyInstance`: HAProxy in the foreground running
    deploy/haproxy/haproxy.cfg itself, its addresses set through the
    environment variables that file reads; `start_mxgate_quietly` and
    `wait_listening` start a node without opening a session to it.

Split by part: mxtest_core (ports, waits, reaper, messages), mxtest_tls,
mxtest_mta (Postfix, Exim), mxtest_fake, mxtest_haproxy; this module holds
the mxgate wrapper, the raw client and the test base, and re-exports the
rest, so tests use one name: `import mxtest as mt`.

What it promises: every wait is bounded; nothing listens outside 127.0.0.1;
the system Postfix (/etc/postfix, port 25) is never touched.

Delivered bytes: Postfix and Exim store lines without their CRLF and deliver
them with LF, so `as_stored()` is the form a sent message takes in a
delivered file. Postfix's smtpd prepends exactly one "Received:" header
(no other header is added: local_header_rewrite_clients is empty); Exim
prepends exactly one "Received:" header too.
"""

import http.client
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


from mxtest_core import *  # noqa: F401,F403
from mxtest_tls import *  # noqa: F401,F403
from mxtest_mta import *  # noqa: F401,F403
from mxtest_fake import *  # noqa: F401,F403
from mxtest_haproxy import *  # noqa: F401,F403

# ---------------------------------------------------------------- mxgate

def parse_kv(line):
    """Parse a key=value log line; values may be "double quoted"."""
    out = {}
    for m in re.finditer(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        out[m.group(1)] = v
    return out


class Mxgate:
    """The daemon under test, in the foreground, with a config written here.

    conf: {"section.key": value}; merged over defaults that listen on a free
    loopback port with an admin port, log at debug level and use one worker.
    """

    def __init__(self, tmpdir, conf=None, binary=None, name="mxgate"):
        self.binary = binary or mxgate_binary()
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = os.path.join(tmpdir, "%s-%d" % (name, self.port))
        os.makedirs(self.dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "mxgate.conf")
        self.conf = {
            "smtp.listen": "%s:%d" % (HOST, self.port),
            "smtp.hostname": "mxgate.example.test",
            "smtp.workers": "1",
            "smtp.idle_timeout": "30",
            "smtp.data_timeout": "30",
            "backend.connect_timeout": "3",
            "backend.command_timeout": "10",
            "backend.forward": "xclient",
            "smtp.drain_timeout": "10",
            "admin.listen": "%s:%d" % (HOST, self.admin_port),
            "log.level": "debug",
            # Scanning is on in every test, with the generated signature
            # set; the X-Virus-Scanned header is off so delivered bytes
            # compare exactly (tests of the header turn it on).
            "clamav.database": clamav_test_db(),
            "clamav.tmpdir": os.path.join(self.dir, "clamtmp"),
            "clamav.add_header": "false",
            # Automatic reputation would remember every hostile session a
            # test sends from 127.0.0.1 and refuse the next test's client;
            # the reputation tests turn it on.
            "reputation.enabled": "false",
        }
        os.makedirs(os.path.join(self.dir, "clamtmp"), exist_ok=True)
        self.conf.update(conf or {})
        self.proc = None
        self.lines = []
        self._cond = threading.Condition()
        self._reader = None
        self._reap_key = None
        self.logfile = os.path.join(self.dir, "mxgate.log")
        self.returncode = None

    def write_config(self, conf=None, path=None):
        conf = self.conf if conf is None else conf
        sections = {}
        for k, v in conf.items():
            sec, _, key = k.partition(".")
            sections.setdefault(sec, []).append((key, v))
        text = ""
        for sec, kvs in sections.items():
            text += "[%s]\n" % sec
            for k, v in kvs:
                text += "%s = %s\n" % (k, v)
            text += "\n"
        with open(path or self.config_path, "w") as f:
            f.write(text)
        return path or self.config_path

    def set(self, **kw):
        """Change keys (section__key=value) and rewrite the config file."""
        for k, v in kw.items():
            self.conf[k.replace("__", ".")] = v
        self.write_config()

    def _read(self, stream):
        with open(self.logfile, "ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                with self._cond:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._cond.notify_all()
        stream.close()

    def start(self, wait=True, extra_args=()):
        self.write_config()
        self.proc = subprocess.Popen([self.binary, "-c", self.config_path] + list(extra_args),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self._reap_key = reaper.add(pid=self.proc.pid)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()
        if wait:
            try:
                wait_port(self.port, 15, proc=self.proc)
            except Exception as e:
                self.kill()
                raise AssertionError("mxgate did not start: %s\n%s" % (e, self.log_text()))
        return self

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return self.returncode
        rc = stop_process(self.proc, signal.SIGTERM, timeout)
        if self._reader:
            self._reader.join(5)
        reaper.remove(self._reap_key)
        self._reap_key = None
        self.proc = None
        self.returncode = rc
        return rc

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            if self._reader:
                self._reader.join(5)
            reaper.remove(self._reap_key)
            self.returncode = self.proc.returncode
            self.proc = None

    def log_text(self):
        with self._cond:
            return "\n".join(self.lines)

    def events(self, name=None):
        with self._cond:
            lines = list(self.lines)
        out = []
        for line in lines:
            kv = parse_kv(line)
            if name is None or kv.get("event") == name:
                out.append(kv)
        return out

    def messages_from(self, senders, timeout=10):
        """{sender: its event=message line} for every sender, waiting for
        lines still on their way: a client can hold its reply before the
        log reader has seen the line written with it. After timeout s,
        what there is (the caller names the missing)."""
        want = set(senders)
        deadline = time.monotonic() + timeout
        while True:
            got = {e.get("from"): e for e in self.events("message")}
            if want <= set(got) or time.monotonic() >= deadline:
                return got
            time.sleep(0.05)

    def wait_event(self, timeout=10, **match):
        """Wait for a log line whose fields include all of match."""
        def find():
            for kv in self.events():
                if all(kv.get(k) == v for k, v in match.items()):
                    return kv
            return None
        return wait_until(find, timeout, 0.05, "mxgate log line with %r" % match)

    def check_config(self, path=None, extra=()):
        """Run `mxgate --check`; returns CompletedProcess (text output)."""
        return subprocess.run([self.binary, "--check", "-c", path or self.config_path] + list(extra),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=20, text=True, errors="replace")

    def admin_get(self, path, timeout=5):
        """GET path on the admin port: (status, body)."""
        c = http.client.HTTPConnection(HOST, self.admin_port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def health(self, timeout=5):
        """GET /health on the admin port: (status, body)."""
        return self.admin_get("/health", timeout)

    def client(self, source=None, timeout=20, read_banner=True):
        c = SmtpClient(self.port, source=source, timeout=timeout)
        if read_banner:
            c.banner = c.reply()
        return c

    def smtplib(self, source=None, timeout=20):
        import smtplib
        return smtplib.SMTP(HOST, self.port, local_hostname="client.example.net", timeout=timeout,
                            source_address=(source, 0) if source else None)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc is not None:
            self.stop()


# ---------------------------------------------------------------- raw client

class SmtpError(Exception):
    pass


class Reply:
    def __init__(self, code, lines):
        self.code, self.lines = code, lines

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def cls(self):
        return self.code // 100

    def __repr__(self):
        return "<Reply %d %r>" % (self.code, self.lines)


class SmtpClient:
    """A raw SMTP client: send exact bytes, read replies one at a time."""

    def __init__(self, port, host=HOST, source=None, timeout=20):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""
        self.banner = None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def cmd(self, line):
        """Send one command line and return its reply."""
        self.send(line + ("\r\n" if isinstance(line, str) else b"\r\n"))
        return self.reply()

    def _line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by server (buffered %r)" % self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self):
        """Read one (possibly multi-line) reply."""
        lines = []
        while True:
            line = self._line()
            if len(line) < 3 or not line[:3].isdigit():
                raise SmtpError("malformed reply line %r" % line)
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(int(line[:3]), lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def ehlo(self, name="client.example.net"):
        r = self.cmd("EHLO " + name)
        self.extensions = [l[4:].split(" ")[0].upper() for l in r.lines[1:]]
        return r

    def transact(self, sender, rcpts, msg, mail_params="", rcpt_params=""):
        """One MAIL/RCPT.../DATA transaction, one command at a time.

        Returns {"mail": Reply, "rcpt": [Reply], "data": Reply|None,
        "final": Reply|None}; stops at a failed MAIL or when no RCPT passed."""
        out = {"mail": None, "rcpt": [], "data": None, "final": None}
        out["mail"] = self.cmd("MAIL FROM:<%s>%s" % (sender, mail_params))
        if out["mail"].cls != 2:
            return out
        for r in rcpts:
            out["rcpt"].append(self.cmd("RCPT TO:<%s>%s" % (r, rcpt_params)))
        if not any(r.cls == 2 for r in out["rcpt"]):
            return out
        out["data"] = self.cmd("DATA")
        if out["data"].code != 354:
            return out
        self.send(dot_stuff(msg))
        out["final"] = self.reply()
        return out

    def starttls(self, context=None, server_hostname=None):
        """STARTTLS, then the handshake on this socket. Returns the 220
        reply; raises SmtpError when the reply is not 220."""
        r = self.cmd("STARTTLS")
        if r.code != 220:
            raise SmtpError("STARTTLS answered %r" % r)
        self.wrap_tls(context, server_hostname)
        return r

    def wrap_tls(self, context=None, server_hostname=None):
        """TLS handshake on the connection as it is (implicit TLS, or after
        a 220 to STARTTLS). Plaintext the server sent before the handshake
        is an error: nothing may follow its go-ahead."""
        if self.buf:
            raise SmtpError("plaintext after the TLS go-ahead: %r" % self.buf)
        ctx = context or tls_client_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    def unsolicited(self, wait=1.0):
        """Bytes the server sends within wait seconds without being asked
        (b"" for none); they stay buffered for reply()."""
        old = self.sock.gettimeout()
        deadline = time.monotonic() + wait
        got = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    break
                if not chunk:
                    break
                got += chunk
        finally:
            self.sock.settimeout(old)
        self.buf += got
        return got

    def closed_by_peer(self, timeout=5):
        """True when the server closes the connection within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if r:
                try:
                    chunk = self.sock.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    return True
                if not chunk:
                    return True
                self.buf += chunk
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- test base

def scrape_metrics(gw):
    """The text of GET /metrics on the gateway's admin listener (200 or raise)."""
    status, body = gw.admin_get("/metrics")
    if status != 200:
        raise AssertionError("GET /metrics: %d %s" % (status, body))
    return body


def metrics(gw):
    """/metrics as {"name{labels}": float}."""
    out = {}
    for line in scrape_metrics(gw).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def first_reply(port, source=None, timeout=5):
    """The first reply a connection (from source) gets: the banner, or a
    refusal before it. A banner is followed by QUIT."""
    c = SmtpClient(port, source=source, timeout=timeout)
    try:
        r = c.reply()
        if r.code == 220:
            try:
                c.cmd("QUIT")
            except (OSError, EOFError, SmtpError):
                pass
        return r
    finally:
        c.close()


class IntegrationCase(unittest.TestCase):
    """A TestCase with a private temp dir and clean-up of everything started.

    On failure, the tail of each daemon's log goes to stderr. Set
    MXTEST_KEEP=1 to keep the temp dir for inspection."""

    maxDiff = 4000

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mxtest-")
        os.chmod(self.tmp, 0o755)
        self._logs = []
        self.addCleanup(self._cleanup_tmp)

    def _failed(self):
        # failures are reported to the result as they happen (subtests too),
        # so look there: the outcome's own flag is reset for each clean-up
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return True
        for t, _ in list(getattr(result, "errors", [])) + list(getattr(result, "failures", [])):
            if t is self or getattr(t, "test_case", None) is self:
                return True
        return False

    def _cleanup_tmp(self):
        if self._failed():
            for name, fn in self._logs:
                try:
                    text = fn()
                except Exception as e:
                    text = "(log unavailable: %s)" % e
                sys.stderr.write("\n----- %s (last 60 lines) -----\n%s\n"
                                 % (name, "\n".join(text.splitlines()[-60:])))
        if os.environ.get("MXTEST_KEEP"):
            sys.stderr.write("kept %s\n" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def postfix(self, **kw):
        p = PostfixInstance(self.tmp, **kw)
        self.addCleanup(p.stop)
        p.start()
        self._logs.append(("postfix %d" % p.port, p.log))
        return p

    def exim(self, **kw):
        e = EximInstance(self.tmp, **kw)
        self.addCleanup(e.stop)
        e.start()
        self._logs.append(("exim %d" % e.port, e.log))
        return e

    def fake(self, script=None, **kw):
        f = FakeBackend(script, **kw)
        self.addCleanup(f.stop)
        return f.start()

    def mxgate(self, backends, conf=None, start=True, forward=None):
        """Start mxgate in front of backends (ports or objects with .port)."""
        ports = [b if isinstance(b, int) else b.port for b in backends]
        c = {"backend.servers": ";".join("%s:%d" % (HOST, p) for p in ports)}
        if forward:
            c["backend.forward"] = forward
        c.update(conf or {})
        m = Mxgate(self.tmp, c)
        self.addCleanup(self._stop_mxgate, m)
        self._logs.append(("mxgate %d" % m.port, m.log_text))
        if start:
            m.start()
        return m

    def _stop_mxgate(self, m):
        """Every test ends with SIGTERM: the daemon must exit 0 by itself."""
        if m.proc is None:
            return
        rc = m.stop()
        if rc != 0:
            raise AssertionError("mxgate exit code %r after SIGTERM (expected 0)" % rc)

    def assertExitsCleanly(self, m):
        rc = m.stop()
        self.assertEqual(rc, 0, "mxgate exit code %r after SIGTERM\n%s" % (rc, m.log_text()[-3000:]))

    def assertMxgateDelivery(self, delivery, original, by_marker, helo=None, ip=None):
        """delivered == backend Received + mxgate Received + original (as stored)."""
        backend_hdr, rest = delivery.strip_received(by_marker)
        field, body = split_header(rest)
        line = unfold(field)
        m = MXGATE_RECEIVED.match(line)
        self.assertTrue(m, "second header is not mxgate's Received: %r" % line)
        if helo:
            self.assertEqual(m.group("helo"), helo)
        if ip:
            self.assertEqual(m.group("ip"), ip)
        self.assertEqual(body, as_stored(original), "message body changed in transit")
        self.assertNotIn(b"(mxgate)", body, "more than one mxgate Received header")
        return backend_hdr, m


def main():
    """Run the calling module's tests; exit 77 (ctest SKIP_RETURN_CODE)
    when every test was skipped, 1 on any failure."""
    prog = unittest.main(verbosity=2, exit=False)
    r = prog.result
    if not r.wasSuccessful():
        sys.exit(1)
    if r.testsRun and len(r.skipped) == r.testsRun:
        sys.exit(77)
    sys.exit(0)


# ---------------------------------------------------------------- by hand

def _cli(argv):
    """Run one peer in the foreground for manual work or benchmarks:
    python3 mxtest.py postfix|exim|fake [--port N] [--dir D]"""
    import argparse
    ap = argparse.ArgumentParser(prog="mxtest.py", description=_cli.__doc__)
    ap.add_argument("peer", choices=("postfix", "exim", "fake"))
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work directory (default: a new temp dir)")
    a = ap.parse_args(argv)
    d = a.dir or tempfile.mkdtemp(prefix="mxtest-")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    peer = {"postfix": lambda: PostfixInstance(d, port=a.port),
            "exim": lambda: EximInstance(d, port=a.port),
            "fake": lambda: FakeBackend(port=a.port)}[a.peer]()
    peer.start()
    print("%s listening on %s:%d (dir %s); Ctrl-C stops it"
          % (a.peer, HOST, peer.port, getattr(peer, "base", d)), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))

"""mxtest_haproxy: HAProxy in the foreground running deploy/haproxy/haproxy.cfg
itself, and starting nodes without opening a session to them (see mxtest.py)."""

import os
import signal
import socket
import subprocess


from mxtest_core import *  # noqa: F401,F403

# ---------------------------------------------------------------- HAProxy

DEPLOY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "deploy")
HAPROXY_CFG = os.path.join(DEPLOY_DIR, "haproxy", "haproxy.cfg")
HAPROXY_BIN = "/usr/sbin/haproxy"


def listening(port, host=HOST):
    """True when a socket listens on host:port (or the wildcard address).

    Looks in /proc/net/tcp instead of connecting: on a proxy_protocol
    listener a probe connection would itself be a (headerless) session."""
    want = {socket.inet_aton(host)[::-1].hex().upper(), "00000000"}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, _, p = fields[1].partition(":")
                if fields[3] == "0A" and int(p, 16) == port and addr in want:
                    return True
    except OSError:
        pass
    return False


def wait_listening(port, timeout=15, host=HOST, proc=None):
    """wait_port without connecting (see listening())."""
    wait_port(port, timeout, host, proc, probe=listening)


def start_mxgate_quietly(m, timeout=15):
    """Start an Mxgate whose smtp.listen is m.port, maybe with the
    proxy_protocol flag, and wait for its SMTP and admin listeners without
    opening a session (Mxgate.start would connect once to m.port)."""
    m.start(wait=False)
    try:
        wait_listening(m.port, timeout, proc=m.proc)
        if m.conf.get("admin.listen"):
            wait_listening(m.admin_port, timeout, proc=m.proc)
    except Exception as e:
        m.kill()
        raise AssertionError("mxgate did not start: %s\n%s" % (e, m.log_text()))
    return m


def require_haproxy():
    require_program(HAPROXY_BIN, "haproxy")
    if not os.path.isfile(HAPROXY_CFG):
        raise AssertionError("%s is missing" % HAPROXY_CFG)


class HaproxyInstance:
    """HAProxy in the foreground (-db) running deploy/haproxy/haproxy.cfg
    as shipped: that file takes every address from environment variables
    ("${NAME-default}"), which are set here to loopback ports.

    nodes: [(smtp_port, check_port)] for servers mx1, mx2 (both required by
    the file; a port nothing listens on is simply a DOWN server). The
    frontend listens on 127.0.0.1:port; the admin socket is <base>/admin.sock
    and HAProxy's log (stdout) is <base>/haproxy.log."""

    BACKEND = "mxgate_nodes"

    def __init__(self, tmpdir, nodes, check="http", inter="200ms", fall=1, rise=1,
                 port=None, cfg=HAPROXY_CFG):
        require_haproxy()
        if len(nodes) != 2:
            raise ValueError("the shipped haproxy.cfg has two servers")
        self.cfg = cfg
        self.port = port or free_port()
        self.base = os.path.join(tmpdir, "haproxy-%d" % self.port)
        os.makedirs(self.base, exist_ok=True)
        self.stats_path = os.path.join(self.base, "admin.sock")
        self.logfile = os.path.join(self.base, "haproxy.log")
        self.nodes = list(nodes)
        self.vars = {
            "MXGATE_HAPROXY_BIND": "%s:%d" % (HOST, self.port),
            "MXGATE_HAPROXY_STATS": self.stats_path,
            "MXGATE_HAPROXY_LOG": "stdout",
            "MXGATE_HAPROXY_CHECK": check,
            "MXGATE_CHECK_INTER": str(inter),
            "MXGATE_CHECK_FALL": str(fall),
            "MXGATE_CHECK_RISE": str(rise),
        }
        for i, (smtp_port, check_port) in enumerate(self.nodes, 1):
            self.vars["MXGATE_NODE%d" % i] = "%s:%d" % (HOST, smtp_port)
            self.vars["MXGATE_NODE%d_CHECK_PORT" % i] = str(check_port)
        self.proc = None
        self._out = None
        self._reap_key = None

    def env(self):
        e = dict(os.environ)
        e.update(self.vars)
        return e

    def check_config(self):
        """haproxy -c on the file with this instance's variables."""
        return subprocess.run([HAPROXY_BIN, "-c", "-f", self.cfg], env=self.env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30, text=True, errors="replace")

    def start(self):
        r = self.check_config()
        if r.returncode != 0:
            raise AssertionError("haproxy -c rejects %s:\n%s" % (self.cfg, r.stdout))
        self._out = open(self.logfile, "ab")
        self.proc = subprocess.Popen([HAPROXY_BIN, "-f", self.cfg, "-db"], env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        self._reap_key = reaper.add(pid=self.proc.pid)
        try:
            wait_listening(self.port, 15, proc=self.proc)
            wait_until(lambda: os.path.exists(self.stats_path), 10, 0.05, "haproxy admin socket")
        except Exception as e:
            self.stop()
            raise AssertionError("haproxy did not start: %s\n%s" % (e, self.log()))
        return self

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 10)
            self.proc = None
        reaper.remove(self._reap_key)
        self._reap_key = None
        if self._out:
            self._out.close()
            self._out = None

    def command(self, line, timeout=5):
        """One command on the admin socket; returns the answer text."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.stats_path)
            s.sendall(line.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        finally:
            s.close()
        return out.decode("utf-8", "replace")

    def stats(self):
        """"show stat" as a list of dicts (CSV columns: pxname, svname,
        status, scur, stot, ...)."""
        text = self.command("show stat")
        lines = [l for l in text.splitlines() if l.strip()]
        if not lines or not lines[0].startswith("# "):
            raise AssertionError("unexpected 'show stat' answer: %r" % text[:300])
        head = lines[0][2:].split(",")
        return [dict(zip(head, l.split(","))) for l in lines[1:]]

    def server(self, name):
        for row in self.stats():
            if row.get("pxname") == self.BACKEND and row.get("svname") == name:
                return row
        raise AssertionError("no server %s/%s in haproxy stats" % (self.BACKEND, name))

    def status(self, name):
        """"UP", "DOWN", "UP 1/2", "DOWN 1/2", "MAINT"..."""
        return self.server(name).get("status", "")

    def wait_status(self, name, status, timeout=15):
        """Wait until server name's status is exactly status (UP, DOWN)."""
        return wait_until(lambda: self.status(name) == status, timeout, 0.05,
                          "haproxy %s/%s %s (is %s)" % (self.BACKEND, name, status,
                                                       self.status(name)))

    def log(self):
        return read_text(self.logfile)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()



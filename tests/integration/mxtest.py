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

What it promises: every wait is bounded; nothing listens outside 127.0.0.1;
the system Postfix (/etc/postfix, port 25) is never touched.

Delivered bytes: Postfix and Exim store lines without their CRLF and deliver
them with LF, so `as_stored()` is the form a sent message takes in a
delivered file. Postfix's smtpd prepends exactly one "Received:" header
(no other header is added: local_header_rewrite_clients is empty); Exim
prepends exactly one "Received:" header too.
"""

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
# the usual out-of-tree build: <repository>/build/proxy/mxgate
DEFAULT_MXGATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "build", "proxy", "mxgate")


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


# ---------------------------------------------------------------- TLS material

OPENSSL_BIN = "/usr/bin/openssl"

_OPENSSL_CNF = """# throwaway test PKI: nothing here comes from the system openssl.cnf
[req]
distinguished_name = dn
prompt = no
[dn]
CN = %(cn)s
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = %(san)s
"""


def require_openssl():
    require_program(OPENSSL_BIN, "openssl")


def run_openssl(args, timeout=60, input=None):
    """Run `openssl ARGS...`; raise with its output when it fails."""
    r = subprocess.run([OPENSSL_BIN] + list(args), input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s" % (" ".join(args), r.returncode,
                                                         r.stderr.decode("utf-8", "replace")))
    return r.stdout


def _openssl_cnf(path, cn, san="DNS:unused.invalid"):
    with open(path, "w") as f:
        f.write(_OPENSSL_CNF % {"cn": cn, "san": san})
    return path


def _new_key(path, key_type):
    if key_type == "ec":
        run_openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-out", path])
    else:
        run_openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                     "-out", path])
    os.chmod(path, 0o600)
    return path


def cert_fingerprint(pem_or_der):
    """SHA-256 of a certificate's DER form, as hex: from a PEM file path,
    PEM text or DER bytes (ssl's getpeercert(binary_form=True))."""
    import hashlib
    import ssl
    data = pem_or_der
    if isinstance(data, str) and os.path.exists(data):
        with open(data) as f:
            data = f.read()
    if isinstance(data, str):
        m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", data, re.S)
        data = ssl.PEM_cert_to_DER_cert(m.group(0))
    return hashlib.sha256(data).hexdigest()


class TlsCa:
    """A throwaway certificate authority: <dir>/<name>.pem and .key.

    issue() makes server certificates signed by it."""

    def __init__(self, directory, name="ca", cn="mxtest CA", key_type="rsa", days=2):
        require_openssl()
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self.name = name
        self.cert = os.path.join(directory, name + ".pem")
        self.key = _new_key(os.path.join(directory, name + ".key"), key_type)
        cnf = _openssl_cnf(os.path.join(directory, name + ".cnf"), cn)
        run_openssl(["req", "-new", "-x509", "-config", cnf, "-extensions", "v3_ca",
                     "-key", self.key, "-days", str(days), "-sha256", "-out", self.cert])
        self._serial = int.from_bytes(os.urandom(8), "big") >> 1

    def issue(self, name, dns=("mxgate.example.test",), ips=(HOST,), cn=None,
              key_type="rsa", days=2):
        """A server certificate and key signed by this CA, subjectAltName
        DNS:<each of dns>, IP:<each of ips>. Returns a TlsCert."""
        san = ",".join(["DNS:" + d for d in dns] + ["IP:" + i for i in ips])
        cn = cn or (dns[0] if dns else (ips[0] if ips else name))
        key = _new_key(os.path.join(self.dir, name + ".key"), key_type)
        cnf = _openssl_cnf(os.path.join(self.dir, name + ".cnf"), cn, san)
        csr = os.path.join(self.dir, name + ".csr")
        cert = os.path.join(self.dir, name + ".pem")
        run_openssl(["req", "-new", "-config", cnf, "-key", key, "-out", csr])
        self._serial += 1
        run_openssl(["x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                     "-set_serial", str(self._serial), "-days", str(days), "-sha256",
                     "-extfile", cnf, "-extensions", "v3_server", "-out", cert])
        return TlsCert(cert, key, self)


class TlsCert:
    """A certificate file, its key file and the CA that signed it."""

    def __init__(self, cert, key, ca=None):
        self.cert, self.key, self.ca = cert, key, ca

    @property
    def fingerprint(self):
        return cert_fingerprint(self.cert)

    def text(self):
        return run_openssl(["x509", "-noout", "-text", "-in", self.cert]).decode()

    def __repr__(self):
        return "<TlsCert %s>" % self.cert


def make_ticket_keys(path, n=1):
    """A session ticket key file of n fresh 80-byte keys (`openssl rand`),
    nginx's layout: 16-byte name, 32-byte HMAC secret, 32-byte AES key."""
    run_openssl(["rand", "-out", path, str(80 * n)])
    os.chmod(path, 0o600)
    return path


def join_ticket_keys(path, *sources):
    """Concatenate key files (first key first): a rotated key file."""
    with open(path, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                out.write(f.read())
    os.chmod(path, 0o600)
    return path


def tls_client_context(ca=None, version=None, hostname_check=True):
    """An ssl client context. ca: a CA file to verify the server against
    (None: no verification). version: "TLSv1.2" or "TLSv1.3" to pin it."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        ctx.load_verify_locations(ca)
        ctx.check_hostname = hostname_check
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if version:
        v = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}[version]
        ctx.minimum_version = ctx.maximum_version = v
    return ctx


def make_tls_material(directory, dns=("mxgate.example.test",), ips=(HOST,), tickets=True):
    """One CA, one server certificate for dns/ips, and (tickets) a ticket
    key file. Returns (ca, cert, ticket_keys_path or None)."""
    ca = TlsCa(directory)
    cert = ca.issue("server", dns=dns, ips=ips)
    keys = make_ticket_keys(os.path.join(directory, "ticket.key")) if tickets else None
    return ca, cert, keys


# ---------------------------------------------------------------- Postfix

_DELIVER_SH = """#!/bin/sh
# pipe(8) delivery: one file per recipient, the message exactly as queued.
# $1 queue id, $2 sender, $3 recipient. Exit 75 (tempfail) on any error.
umask 022
d="%(maildir)s"
n="$1.$$.$(date +%%s%%N)"
cat > "$d/tmp/$n.eml" || exit 75
printf '%%s\\n%%s\\n%%s\\n' "$1" "$2" "$3" > "$d/tmp/$n.env" || exit 75
mv "$d/tmp/$n.env" "$d/new/$n.env" && mv "$d/tmp/$n.eml" "$d/new/$n.eml" || exit 75
exit 0
"""

_POSTFIX_MASTER = """# private test instance: nothing chrooted, one smtpd on loopback
%(host)s:%(port)d inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
mxdeliver unix  - n n - - pipe
  user=nobody argv=/bin/sh %(deliver)s ${queue_id} ${sender} ${recipient}
"""


def _chown_tree(path, user):
    import pwd
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)


class PostfixInstance:
    """A private Postfix listening on 127.0.0.1:port.

    main.cf/master.cf live in <base>/conf, the queue in <base>/queue, the log
    in <base>/log/maillog, deliveries in <base>/mail/new as <id>.eml + <id>.env.
    XCLIENT and XFORWARD are allowed from 127.0.0.0/8. Postfix's own SMTP
    smuggling defence (smtpd_forbid_bare_newline) is off on purpose, so a bare
    LF passed through by the gateway would show up as a second message.
    """

    QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")

    def __init__(self, tmpdir, port=None, recipients=RECIPIENTS, main_cf=None, tls=None):
        require_postfix()
        self.port = port or free_port()
        self.base = os.path.join(tmpdir, "postfix-%d" % self.port)
        self.conf = os.path.join(self.base, "conf")
        self.queue = os.path.join(self.base, "queue")
        self.data = os.path.join(self.base, "data")
        self.maildir = os.path.join(self.base, "mail")
        self.logdir = os.path.join(self.base, "log")
        self.logfile = os.path.join(self.logdir, "maillog")
        self.recipients = recipients
        self.main_cf = dict(main_cf or {})
        # tls: a TlsCert (or anything with .cert and .key): smtpd offers
        # STARTTLS with it (smtpd_tls_security_level = may) and logs each
        # handshake ("... TLS connection established from ...")
        self.tls = tls
        self._reap_key = None
        self.running = False

    def _main(self):
        cf = {
            "compatibility_level": "3.6",
            "config_directory": self.conf,
            "queue_directory": self.queue,
            "data_directory": self.data,
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-mxtest-%d" % self.port,
            "maillog_file": self.logfile,
            "maillog_file_prefixes": self.logdir,
            "myhostname": "backend.example.test",
            "mydomain": "example.test",
            "myorigin": "example.test",
            "mydestination": "",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP Postfix",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_maps": "texthash:" + os.path.join(self.conf, "recipients"),
            "virtual_transport": "mxdeliver",
            "mxdeliver_destination_recipient_limit": "1",
            "default_transport": "discard:no remote delivery in tests",
            "relay_transport": "discard:no remote delivery in tests",
            "local_transport": "discard:no local delivery in tests",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtpd_forbid_bare_newline": "no",
            "local_header_rewrite_clients": "",
            "always_add_missing_headers": "no",
            "smtputf8_enable": "yes",
            "message_size_limit": "20480000",
            "delay_warning_time": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "200",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "in_flow_delay": "0",
            "notify_classes": "",
        }
        if self.tls is not None:
            cf.update({
                "smtpd_tls_cert_file": self.tls.cert,
                "smtpd_tls_key_file": self.tls.key,
                "smtpd_tls_security_level": "may",
                "smtpd_tls_loglevel": "1",
                "smtpd_tls_received_header": "yes",
            })
        cf.update(self.main_cf)
        return "".join("%s = %s\n" % kv for kv in cf.items())

    def _write_config(self):
        for d in (self.conf, self.queue, self.data, self.logdir):
            os.makedirs(d, exist_ok=True)
        for sub in ("tmp", "new"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        _chown_tree(self.maildir, "nobody")
        _chown_tree(self.data, "postfix")
        for d in (os.path.dirname(self.base), self.base, self.maildir):
            os.chmod(d, 0o755)
        deliver = os.path.join(self.conf, "deliver.sh")
        with open(deliver, "w") as f:
            f.write(_DELIVER_SH % {"maildir": self.maildir})
        os.chmod(deliver, 0o755)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(self._main())
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(_POSTFIX_MASTER % {"host": HOST, "port": self.port, "deliver": deliver})
            if self.tls is not None:
                f.write("tlsmgr    unix  - - n 1000? 1 tlsmgr\n")
        with open(os.path.join(self.conf, "recipients"), "w") as f:
            for r in self.recipients:
                f.write("%s OK\n" % r)

    def postfix(self, *args, timeout=60, check=True):
        return subprocess.run(["/usr/sbin/postfix", "-c", self.conf] + list(args),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, check=check)

    def start(self):
        self._write_config()
        self._reap_key = reaper.add(cmd=["/usr/sbin/postfix", "-c", self.conf, "abort"])
        r = self.postfix("start", check=False)
        if r.returncode != 0:
            raise RuntimeError("postfix start failed: %s\n%s" % (r.stdout.decode(), self.log()))
        self.running = True
        wait_port(self.port, 20)
        return self

    def stop(self):
        if self.running:
            self.running = False
            r = self.postfix("stop", check=False)
            if r.returncode != 0:
                self.postfix("abort", check=False)
            wait_until(lambda: not os.path.exists(os.path.join(self.queue, "pid", "master.pid"))
                       or not self._master_alive(), 20, what="postfix master exit")
        reaper.remove(self._reap_key)
        self._reap_key = None

    def _master_alive(self):
        pid = self.master_pid()
        if not pid:
            return False
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def smtpd_pids(self):
        """The smtpd processes of this instance (children of its master)."""
        master = self.master_pid()
        out = []
        if not master:
            return out
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
                comm = st[st.index("(") + 1:st.rindex(")")]
                ppid = int(st[st.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == master and comm == "smtpd":
                out.append(int(d))
        return out

    def kill_smtpd(self):
        """SIGKILL every smtpd of this instance (a backend crash mid-session)."""
        pids = self.smtpd_pids()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    # -- what happened

    def log(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout, 0.1, "postfix log /%s/" % pattern)

    def deliveries(self):
        new = os.path.join(self.maildir, "new")
        out = []
        try:
            names = sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns)
        except OSError:
            return out
        for n in names:
            if not n.endswith(".eml"):
                continue
            p = os.path.join(new, n)
            with open(p, "rb") as f:
                data = f.read()
            try:
                with open(p[:-4] + ".env", "rb") as f:
                    qid, sender, rcpt = f.read().decode("utf-8", "replace").split("\n")[:3]
            except (OSError, ValueError):
                qid, sender, rcpt = "", "", ""
            out.append(Delivery(p, sender, rcpt, data, qid))
        return out

    def wait_deliveries(self, n, timeout=20):
        """Wait for at least n deliveries; returns them all."""
        return wait_until(lambda: (lambda d: d if len(d) >= n else None)(self.deliveries()),
                          timeout, 0.1, "%d postfix deliveries (have %d)" % (n, len(self.deliveries())))

    def queue_files(self):
        out = []
        for q in self.QUEUES:
            for root, _, files in os.walk(os.path.join(self.queue, q)):
                out += [os.path.join(root, f) for f in files]
        return out

    def wait_idle(self, timeout=20):
        """Wait until the queue is empty (everything delivered or dropped)."""
        wait_until(lambda: not self.queue_files(), timeout, 0.1, "empty postfix queue")

    def clear(self):
        """Forget earlier deliveries (between cases sharing one instance)."""
        new = os.path.join(self.maildir, "new")
        for n in os.listdir(new):
            os.unlink(os.path.join(new, n))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- Exim

def ensure_exim(cache=EXIM_CACHE):
    """Unpack exim4-base + exim4-daemon-heavy into cache (download once).

    Returns the unpacked root. Skips the test when apt cannot provide it."""
    root = os.path.join(cache, "root")
    binary = os.path.join(root, "usr/sbin/exim4")
    if not os.path.exists(binary):
        require_root()
        if not shutil.which("apt-get") or not shutil.which("dpkg"):
            raise unittest.SkipTest("apt-get/dpkg needed to fetch exim4-daemon-heavy")
        debs = os.path.join(cache, "debs")
        os.makedirs(debs, exist_ok=True)
        have = [f for f in os.listdir(debs) if f.endswith(".deb")]
        if not any(f.startswith("exim4-daemon-heavy_") for f in have) or \
                not any(f.startswith("exim4-base_") for f in have):
            r = subprocess.run(["apt-get", "download", "exim4-base", "exim4-daemon-heavy"],
                               cwd=debs, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=300)
            if r.returncode != 0:
                raise unittest.SkipTest("apt-get download exim4-daemon-heavy failed: %s"
                                        % r.stdout.decode()[-500:])
        tmp = root + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for f in sorted(os.listdir(debs)):
            if f.endswith(".deb"):
                subprocess.run(["dpkg", "-x", os.path.join(debs, f), tmp], check=True, timeout=120)
        os.rename(tmp, root)
    return root


def ensure_exim_user():
    import pwd
    try:
        pwd.getpwnam("Debian-exim")
    except KeyError:
        require_root()
        subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                        "Debian-exim"], check=True, timeout=30)


_EXIM_CONF = """# private test instance of Exim 4.96
exim_path = %(exim)s
spool_directory = %(spool)s
log_file_path = %(log)s/%%slog
pid_file_path = %(base)s/exim.pid
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
keep_environment =
primary_hostname = exim.example.test
qualify_domain = example.test
domainlist local_domains = example.test
daemon_smtp_ports = %(port)d
local_interfaces = 127.0.0.1
hosts_proxy = 127.0.0.1
proxy_protocol_timeout = 5s
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
smtputf8_advertise_hosts = *
chunking_advertise_hosts = *
pipelining_advertise_hosts = *
accept_8bitmime = true
message_size_limit = 20M
smtp_banner = exim.example.test ESMTP Exim $version_number
smtp_accept_max = 50
acl_smtp_rcpt = mx_rcpt
split_spool_directory = false
queue_run_max = 1
log_selector = +received_recipients +smtp_connection +proxy +incoming_interface

begin acl

mx_rcpt:
  accept  domains = +local_domains
          recipients = lsearch;%(recipients)s
  deny    message = 5.1.1 <$local_part@$domain>: unknown user

begin routers

mx_local:
  driver = accept
  domains = +local_domains
  transport = mx_maildir

begin transports

mx_maildir:
  driver = appendfile
  directory = %(maildir)s
  maildir_format
  create_directory
  user = Debian-exim
  group = Debian-exim
  mode = 0644
  envelope_to_add = false
  return_path_add = false
  delivery_date_add = false
  message_prefix = "MXTEST-ENVELOPE $message_exim_id <$sender_address> <$local_part@$domain>\\n"

begin retry

*  *  F,1m,5s
"""


class EximInstance:
    """A private Exim listening on 127.0.0.1:port, run in the foreground.

    Connections from 127.0.0.1 must start with a PROXY header (hosts_proxy);
    from any other loopback address they are plain SMTP. Deliveries land in
    <base>/mail/new, one file per recipient, behind an envelope line that
    `deliveries()` strips."""

    def __init__(self, tmpdir, port=None, recipients=RECIPIENTS):
        require_root()
        self.root = ensure_exim()
        ensure_exim_user()
        self.port = port or free_port()
        self.base = os.path.join(tmpdir, "exim-%d" % self.port)
        self.spool = os.path.join(self.base, "spool")
        self.logdir = os.path.join(self.base, "log")
        self.maildir = os.path.join(self.base, "mail")
        self.conf = os.path.join(self.base, "exim.conf")
        self.binary = os.path.join(self.root, "usr/sbin/exim4")
        self.recipients = recipients
        self.proc = None
        self._reap_key = None
        self._out = None

    def env(self):
        e = dict(os.environ)
        e["LD_LIBRARY_PATH"] = "%s/usr/lib/x86_64-linux-gnu:%s/usr/lib" % (self.root, self.root)
        return e

    def _write_config(self):
        for d in (self.spool, self.logdir, os.path.join(self.maildir, "new"),
                  os.path.join(self.maildir, "cur"), os.path.join(self.maildir, "tmp")):
            os.makedirs(d, exist_ok=True)
        os.chmod(os.path.dirname(self.base), 0o755)
        os.chmod(self.base, 0o755)
        _chown_tree(self.spool, "Debian-exim")
        _chown_tree(self.logdir, "Debian-exim")
        _chown_tree(self.maildir, "Debian-exim")
        rfile = os.path.join(self.base, "recipients")
        with open(rfile, "w") as f:
            for r in self.recipients:
                f.write("%s: ok\n" % r)
        with open(self.conf, "w") as f:
            f.write(_EXIM_CONF % {"exim": self.binary, "spool": self.spool, "log": self.logdir,
                                  "base": self.base, "port": self.port, "recipients": rfile,
                                  "maildir": self.maildir})
        os.chmod(self.conf, 0o644)

    def start(self):
        self._write_config()
        self._out = open(os.path.join(self.logdir, "daemon.out"), "wb")
        self.proc = subprocess.Popen([self.binary, "-C", self.conf, "-bdf", "-q5s"],
                                     env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self._reap_key = reaper.add(pid=self.proc.pid)
        try:
            wait_port(self.port, 20, proc=self.proc)
        except Exception:
            raise RuntimeError("exim did not start: %s" % self.log("paniclog") + self.log())
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

    def log(self, name="mainlog"):
        try:
            with open(os.path.join(self.logdir, name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout, 0.1, "exim log /%s/" % pattern)

    def deliveries(self):
        new = os.path.join(self.maildir, "new")
        out = []
        try:
            names = sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns)
        except OSError:
            return out
        for n in names:
            p = os.path.join(new, n)
            with open(p, "rb") as f:
                data = f.read()
            first, _, rest = data.partition(b"\n")
            m = re.match(rb"MXTEST-ENVELOPE (\S+) <(.*)> <(.*)>$", first)
            if not m:
                out.append(Delivery(p, "", "", data))
                continue
            out.append(Delivery(p, m.group(2).decode("utf-8", "replace"),
                                m.group(3).decode("utf-8", "replace"), rest,
                                m.group(1).decode()))
        return out

    def wait_deliveries(self, n, timeout=20):
        return wait_until(lambda: (lambda d: d if len(d) >= n else None)(self.deliveries()),
                          timeout, 0.1, "%d exim deliveries" % n)

    def queue_files(self):
        out = []
        for sub in ("input",):
            for root, _, files in os.walk(os.path.join(self.spool, sub)):
                out += [os.path.join(root, f) for f in files]
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


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
        }
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

    def health(self, timeout=5):
        """GET /health on the admin port: (status, body)."""
        import http.client
        c = http.client.HTTPConnection(HOST, self.admin_port, timeout=timeout)
        try:
            c.request("GET", "/health")
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

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


# ---------------------------------------------------------------- fake backend

class Hang:
    """Stop answering; keep the socket open until the peer leaves."""


class Close:
    """Close the connection instead of answering."""


class Garbage:
    """Answer with bytes that are not an SMTP reply."""

    def __init__(self, data=b"\x00\x01garbage that is not smtp\r\n"):
        self.data = data


class FakeBackend:
    """A scriptable SMTP server on 127.0.0.1:port (one thread per connection).

    script maps a stage to an action: a reply string, Hang(), Close() or
    Garbage(). Stages: greeting, ehlo, helo, xclient, xforward, mail, rcpt,
    data (the 354), eod (the final reply after the dot or BDAT LAST), rset,
    noop, quit, other. A PROXY v1/v2 header is accepted and recorded.
    Everything received is kept per connection in `conns`; every message
    answered with 2xx is appended to `accepted`.
    """

    EHLO = ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
            "DSN", "XCLIENT NAME ADDR PROTO HELO LOGIN PORT DESTADDR DESTPORT",
            "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT"]

    DEFAULTS = {
        "greeting": "220 fake.example.test ESMTP fake",
        "helo": "250 fake.example.test",
        "xclient": "220 fake.example.test ESMTP fake",
        "xforward": "250 2.0.0 Ok",
        "mail": "250 2.1.0 Ok",
        "rcpt": "250 2.1.5 Ok",
        "data": "354 End data with <CR><LF>.<CR><LF>",
        "eod": "250 2.0.0 Ok: queued as FAKE%(n)d",
        "rset": "250 2.0.0 Ok",
        "noop": "250 2.0.0 Ok",
        "quit": "221 2.0.0 Bye",
        "other": "502 5.5.2 Error: command not recognized",
    }

    class Conn:
        def __init__(self, sock):
            self.sock = sock
            self.lines = []       # command lines as received
            self.proxy = None     # PROXY header bytes, if any
            self.messages = []    # raw DATA payloads (dot-unstuffed, CRLF kept)
            self.closed = threading.Event()

    def __init__(self, script=None, port=None, ehlo=None):
        self.script = dict(script or {})
        self.port = port or free_port()
        self.ehlo_ext = list(self.EHLO if ehlo is None else ehlo)
        self.conns = []
        self.accepted = []
        self.n = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = []
        self.lsock = None

    def set(self, stage, action):
        with self._lock:
            if action is None:
                self.script.pop(stage, None)
            else:
                self.script[stage] = action

    def start(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((HOST, self.port))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        if self.lsock:
            self.lsock.close()
        with self._lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.sock.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept(self):
        while not self._stop.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c = self.Conn(s)
            with self._lock:
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)

    def _action(self, stage):
        with self._lock:
            a = self.script.get(stage, self.DEFAULTS.get(stage))
            if stage == "eod":
                self.n += 1
            n = self.n
        if isinstance(a, str):
            a = a % {"n": n} if "%(n)" in a else a
        return a

    def _do(self, c, stage, on_ok=None):
        """Perform the action for stage; returns the reply sent (or None).

        on_ok runs before a 2xx reply is sent, so whoever reads the reply
        already finds its effect recorded."""
        a = self._action(stage)
        if on_ok is not None and isinstance(a, str) and a.startswith("2"):
            on_ok()
        if isinstance(a, Hang):
            while not self._stop.is_set():
                r, _, _ = select.select([c.sock], [], [], 0.2)
                if r:
                    try:
                        if not c.sock.recv(65536):
                            break
                    except OSError:
                        break
            raise EOFError
        if isinstance(a, Close):
            raise EOFError
        if isinstance(a, Garbage):
            c.sock.sendall(a.data)
            return None
        if stage == "ehlo" and a is None:
            lines = ["fake.example.test"] + self.ehlo_ext
            out = "".join("250%s%s\r\n" % ("-" if i < len(lines) - 1 else " ", l)
                          for i, l in enumerate(lines))
            c.sock.sendall(out.encode())
            return "250"
        c.sock.sendall(a.encode("utf-8") + b"\r\n")
        return a

    def _serve(self, c):
        s = c.sock
        s.settimeout(60)
        buf = b""

        def fill():
            nonlocal buf
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                if len(buf) > 100000:
                    raise EOFError
                fill()
            l, _, buf = buf.partition(b"\r\n")
            return l

        try:
            # a PROXY v2 header starts with this signature, v1 with "PROXY "
            while len(buf) < 12 and not self._stop.is_set():
                r, _, _ = select.select([s], [], [], 0.05)
                if r:
                    fill()
                else:
                    break
            if buf.startswith(b"\r\n\r\n\x00\r\nQUIT\n"):
                while len(buf) < 16:
                    fill()
                ln = int.from_bytes(buf[14:16], "big")
                while len(buf) < 16 + ln:
                    fill()
                c.proxy, buf = buf[:16 + ln], buf[16 + ln:]
            elif buf.startswith(b"PROXY "):
                c.proxy = line() + b"\r\n"
            if self._do(c, "greeting") is None:
                pass
            while not self._stop.is_set():
                l = line()
                c.lines.append(l)
                verb = l.split(b" ", 1)[0].upper().decode("ascii", "replace")
                if verb == "EHLO":
                    self._do(c, "ehlo")
                elif verb == "HELO":
                    self._do(c, "helo")
                elif verb in ("XCLIENT", "XFORWARD"):
                    self._do(c, verb.lower())
                elif verb == "MAIL":
                    self._do(c, "mail")
                    c.rcpts = []
                    c.mail_from = l
                elif verb == "RCPT":
                    r = self._do(c, "rcpt")
                    if r and r.startswith("2"):
                        c.rcpts.append(l)
                elif verb == "DATA":
                    r = self._do(c, "data")
                    if not (r and r.startswith("3")):
                        continue
                    # the payload ends at CRLF.CRLF; an empty one is just ".CRLF"
                    while (b"\r\n" + buf).find(b"\r\n.\r\n") < 0:
                        fill()
                    whole = b"\r\n" + buf
                    i = whole.find(b"\r\n.\r\n")
                    raw, buf = whole[2:i + 2], whole[i + 5:]
                    body = re.sub(rb"(^|\r\n)\.", rb"\1", raw)
                    c.messages.append(body)
                    self._do(c, "eod", lambda: self._accept_msg(c, body))
                elif verb == "BDAT":
                    parts = l.split()
                    size = int(parts[1])
                    last = len(parts) > 2 and parts[2].upper() == b"LAST"
                    while len(buf) < size:
                        fill()
                    chunk, buf = buf[:size], buf[size:]
                    c.chunk = getattr(c, "chunk", b"") + chunk
                    if not last:
                        s.sendall(b"250 2.0.0 Ok: %d octets\r\n" % size)
                        continue
                    body, c.chunk = c.chunk, b""
                    c.messages.append(body)
                    self._do(c, "eod", lambda: self._accept_msg(c, body))
                elif verb == "RSET":
                    self._do(c, "rset")
                elif verb == "NOOP":
                    self._do(c, "noop")
                elif verb == "QUIT":
                    self._do(c, "quit")
                    break
                else:
                    self._do(c, "other")
        except (EOFError, OSError, ValueError):
            pass
        finally:
            c.closed.set()
            try:
                s.close()
            except OSError:
                pass

    def _accept_msg(self, c, body):
        with self._lock:
            self.accepted.append((c.mail_from, list(c.rcpts), body))

    def all_lines(self):
        with self._lock:
            return [l for c in self.conns for l in c.lines]


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
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- test base

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

"""mxtest_mta: the private backends, a Postfix and an Exim 4.96 on loopback
with their own config and spool directories (see mxtest.py)."""

import atexit
import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest


from mxtest_core import *  # noqa: F401,F403

POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
_queue_template = None

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

    def _make_queue(self):
        """Queue directories as `postfix check` makes them (owners, modes,
        the setgid maildrop). The check takes about 2 s, so it runs once per
        test process, and later instances copy its fresh, empty result."""
        global _queue_template
        if _queue_template is None:
            r = self.postfix("check", check=False)
            if r.returncode != 0:
                raise RuntimeError("postfix check failed: %s\n%s" % (r.stdout.decode(), self.log()))
            _queue_template = tempfile.mkdtemp(prefix="mxtest-pfqueue-")
            atexit.register(shutil.rmtree, _queue_template, True)
            subprocess.run(["cp", "-a", self.queue + "/.", _queue_template], check=True)
        else:
            subprocess.run(["cp", "-a", _queue_template + "/.", self.queue], check=True)

    def start(self):
        self._write_config()
        self._reap_key = reaper.add(cmd=["/usr/sbin/postfix", "-c", self.conf, "abort"])
        self._make_queue()
        # master -w returns once the daemon has initialised (what
        # `postfix start` runs after its check).
        r = subprocess.run([POSTFIX_MASTER, "-c", self.conf, "-w"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("postfix master failed: %s\n%s" % (r.stdout.decode(), self.log()))
        self.running = True
        wait_port(self.port, 20)
        return self

    def stop(self):
        if self.running:
            self.running = False
            pid = self.master_pid()
            try:
                if pid:
                    os.kill(pid, signal.SIGTERM) # master stops its children and exits
            except ProcessLookupError:
                pass
            try:
                wait_until(lambda: not self._master_alive(), 10, interval=0.02,
                           what="postfix master exit")
            except AssertionError:
                self.postfix("abort", check=False)
                wait_until(lambda: not self._master_alive(), 10, what="postfix master exit")
        reaper.remove(self._reap_key)
        self._reap_key = None

    def _master_alive(self):
        pid = self.master_pid()
        if not pid:
            return False
        # The daemonised master's parent is init, which may take a second
        # to reap it: a zombie has exited.
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
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
        return read_text(self.logfile)

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout, 0.1, "postfix log /%s/" % pattern)

    def deliveries(self):
        out = []
        for p in maildir_new(self.maildir):
            if not p.endswith(".eml"):
                continue
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
        return read_text(os.path.join(self.logdir, name))

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout, 0.1, "exim log /%s/" % pattern)

    def deliveries(self):
        out = []
        for p in maildir_new(self.maildir):
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



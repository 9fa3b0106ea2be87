#!/usr/bin/env python3
"""HAProxy in front of two mxgate nodes in front of one private Postfix.

    client --> HAProxy (deploy/haproxy/haproxy.cfg) --PROXY v2--> mx1, mx2
           --XCLIENT--> Postfix

HAProxy runs the shipped deploy/haproxy/haproxy.cfg itself, in the
foreground, with its addresses given through the environment variables the
file reads (mxtest.HaproxyInstance), so the example and this test cannot
drift apart. Each node is an mxgate with one "proxy_protocol" listener and
its admin port, which HAProxy checks with GET /health. The check interval
is shortened (200 ms, fall 1, rise 1) so that failover happens within the
test's bounds; everything else is the file as shipped.

Cases: the client's address reaches Postfix; a node killed with SIGKILL
under load (no message lost or doubled); a node drained with SIGTERM (no
session cut, exit 0); what the health checks leave in the nodes' logs, for
the HTTP check and for the SMTP check with PROXY v2 LOCAL headers; /health
following the backend, so HAProxy stops using nodes that cannot deliver.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

POSTFIX = "(Postfix)"
SUBJECT = re.compile(rb"^Subject: (\S+)$", re.M)


def message(tag):
    """A message whose Subject and Message-ID name it uniquely."""
    return (b"From: <load@client.test>\r\n"
            b"To: <alice@example.test>\r\n"
            b"Subject: " + tag.encode() + b"\r\n"
            b"Date: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
            b"Message-ID: <" + tag.encode() + b"@client.test>\r\n"
            b"\r\n"
            b"body of " + tag.encode() + b"\r\n")


class Attempt:
    """One try at delivering a message through the balancer.

    outcome: "accepted" (250 after the dot), "tempfail" (4xx anywhere),
    "permfail" (5xx), "lost" (connection error before the dot was sent:
    certainly not accepted), "ambiguous" (connection lost after the dot,
    before its reply: the message may or may not have been accepted)."""

    def __init__(self, tag):
        self.tag = tag
        self.outcome = None
        self.detail = ""
        self.node = None
        self.started = time.monotonic()
        self.ended = None

    def __repr__(self):
        return "<%s %s via %s: %s>" % (self.tag, self.outcome, self.node, self.detail)


def deliver_once(port, tag, source=None, timeout=10):
    """One SMTP session through the balancer with one message."""
    a = Attempt(tag)
    dot_sent = False
    c = None
    try:
        c = mt.SmtpClient(port, source=source, timeout=timeout)
        banner = c.reply()
        a.node = banner.lines[0].split()[1] if len(banner.lines[0].split()) > 1 else "?"
        if banner.code != 220:
            a.outcome = "tempfail" if banner.cls == 4 else "permfail"
            a.detail = "banner %r" % banner
            return a
        r = c.ehlo()
        if r.cls != 2:
            a.outcome, a.detail = ("tempfail" if r.cls == 4 else "permfail"), "EHLO %r" % r
            return a
        for cmd in ("MAIL FROM:<load@client.test>", "RCPT TO:<alice@example.test>", "DATA"):
            r = c.cmd(cmd)
            if r.cls not in (2, 3):
                a.outcome = "tempfail" if r.cls == 4 else "permfail"
                a.detail = "%s %r" % (cmd.split()[0], r)
                return a
        c.send(mt.dot_stuff(message(tag)))
        dot_sent = True
        r = c.reply()
        if r.code == 250:
            a.outcome = "accepted"
        else:
            a.outcome = "tempfail" if r.cls == 4 else "permfail"
        a.detail = "final %r" % r
        try:
            c.cmd("QUIT")
        except (OSError, EOFError, mt.SmtpError):
            pass
        return a
    except (OSError, EOFError, mt.SmtpError) as e:
        a.outcome = "ambiguous" if dot_sent else "lost"
        a.detail = "%s: %s" % (type(e).__name__, e)
        return a
    finally:
        a.ended = time.monotonic()
        if c is not None:
            c.close()


def delivered_tags(pf):
    """{tag: number of deliveries} over Postfix's delivered files."""
    out = {}
    for d in pf.deliveries():
        m = SUBJECT.search(d.data)
        tag = m.group(1).decode() if m else "?"
        out[tag] = out.get(tag, 0) + 1
    return out


class HaproxyCase(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        mt.require_postfix()
        mt.require_haproxy()
        self.pf = self.postfix()

    def node(self, name, **conf):
        """An mxgate node: one proxy_protocol listener, admin port for
        /health, smtp.hostname = name (so a banner tells the node)."""
        c = {"smtp.hostname": name, "smtp.drain_timeout": "20",
             "backend.health_interval": "1"}
        c.update({k.replace("__", "."): str(v) for k, v in conf.items()})
        gw = self.mxgate([self.pf], conf=c, start=False)
        gw.conf["smtp.listen"] = "%s:%d proxy_protocol" % (mt.HOST, gw.port)
        gw.name = name
        return mt.start_mxgate_quietly(gw)

    def balancer(self, nodes, check="http", **kw):
        if check == "http":
            ports = [(n.port, n.admin_port) for n in nodes]
        else:
            ports = [(n.port, n.port) for n in nodes]
        h = mt.HaproxyInstance(self.tmp, ports, check=check, **kw)
        self.addCleanup(h.stop)
        self._logs.append(("haproxy %d" % h.port, h.log))
        h.start()
        for s in ("mx1", "mx2"):
            self.wait_up(h, s)
        return h

    def finished_check(self, h, name):
        """The server's stats row once no check is running: "* L7OK" means
        one is in progress right now (its code and status are not final)."""
        return mt.wait_until(lambda: (lambda r: r if not r["check_status"].startswith("*")
                                      else None)(h.server(name)), 5, 0.02,
                             "a finished check of %s" % name)

    def wait_up(self, h, server, timeout=15):
        """UP after a passed check (servers start UP before any check)."""
        mt.wait_until(lambda: (lambda r: r["status"] == "UP" and r["check_status"] == "L7OK")(
            h.server(server)), timeout, 0.05,
            "haproxy %s UP with a passed check (%r)" % (server, h.server(server)))

    def assertDeliveredOnce(self, tags, timeout=30):
        want = set(tags)
        mt.wait_until(lambda: want <= set(delivered_tags(self.pf)), timeout, 0.2,
                      "deliveries of %d messages" % len(want))
        self.pf.wait_idle(timeout)
        got = delivered_tags(self.pf)
        self.assertEqual({t: got.get(t) for t in want}, {t: 1 for t in want})
        return got


class TestShippedConfig(mt.IntegrationCase):

    def test_file_is_valid_as_shipped_with_either_check(self):
        mt.require_haproxy()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MXGATE_")}
        for check in ("http", "smtp"):
            with self.subTest(check=check):
                e = dict(env, MXGATE_HAPROXY_CHECK=check)
                r = subprocess.run([mt.HAPROXY_BIN, "-c", "-f", mt.HAPROXY_CFG], env=e,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=30)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertNotIn("WARNING", r.stdout + r.stderr)


class TestClientAddress(HaproxyCase):

    def test_client_address_reaches_postfix_through_xclient(self):
        mx1, mx2 = self.node("mx1.example.test"), self.node("mx2.example.test")
        h = self.balancer([mx1, mx2])
        for i, src in enumerate(("127.0.0.44", "127.0.0.45")):
            msg = mt.make_message(subject="via haproxy %d" % i)
            with mt.SmtpClient(h.port, source=src) as c:
                self.assertEqual(c.reply().code, 220)
                c.ehlo("client.example.net")
                t = c.transact("sender@client.test", ["alice@example.test"], msg)
                self.assertEqual(t["final"] and t["final"].code, 250, t)
                c.cmd("QUIT")
            d = self.pf.wait_deliveries(i + 1, 20)[i]
            pf_hdr, m = self.assertMxgateDelivery(d, msg, POSTFIX, helo="client.example.net",
                                                  ip=src)
            self.assertIn("[%s]" % src, pf_hdr)       # Postfix's Received: XCLIENT
            self.pf.wait_log(r"%s: client=\S*\[%s\]" % (re.escape(d.queue_id), re.escape(src)))
            node = mx1 if m.group("by") == "mx1.example.test" else mx2
            ev = node.wait_event(event="disconnect", client=src)
            self.assertEqual(ev.get("level"), "info", ev)
        # Postfix never saw a session as coming from the balancer or a node
        self.assertNotRegex(self.pf.log(), r": client=\S*\[127\.0\.0\.1\]")
        # every session came with a valid header
        for n in (mx1, mx2):
            self.assertEqual(n.events("proxy_error") + n.events("proxy_refused"), [])


class TestFailover(HaproxyCase):

    THREADS = 4
    MESSAGES = 100
    KILL_AFTER = 30
    MAX_TRIES = 6
    LOAD_DEADLINE = 120

    def test_sigkill_one_node_under_load_no_message_lost_or_doubled(self):
        mx1, mx2 = self.node("mx1.example.test"), self.node("mx2.example.test")
        h = self.balancer([mx1, mx2])
        # Part of the load is held back until HAProxy has marked the killed
        # node down, so sessions certainly start after that point however
        # fast the first part goes.
        todo = queue.Queue()
        held = ["load-%03d" % i for i in range(self.MESSAGES)]
        for tag in held[:self.KILL_AFTER + 10]:
            todo.put(tag)
        held = held[self.KILL_AFTER + 10:]
        all_queued = threading.Event()
        attempts, lock = [], threading.Lock()
        accepted = []
        stop = threading.Event()
        deadline = time.monotonic() + self.LOAD_DEADLINE

        def worker(k):
            source = "127.0.0.%d" % (80 + k)
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    tag = todo.get_nowait()
                except queue.Empty:
                    if all_queued.is_set():
                        return
                    time.sleep(0.02)
                    continue
                for _ in range(self.MAX_TRIES):
                    a = deliver_once(h.port, tag, source=source)
                    with lock:
                        attempts.append(a)
                        if a.outcome == "accepted":
                            accepted.append(tag)
                    if a.outcome in ("accepted", "permfail"):
                        break
                    time.sleep(0.1)  # 4xx or a lost connection: try again

        threads = [threading.Thread(target=worker, args=(k,), daemon=True)
                   for k in range(self.THREADS)]
        for t in threads:
            t.start()
        try:
            mt.wait_until(lambda: len(accepted) >= self.KILL_AFTER, 60, 0.02,
                          "%d messages accepted before the kill" % self.KILL_AFTER)
            served_by_mx1 = len(mx1.events("message"))
            mx1.kill()  # SIGKILL: no drain, sessions in flight are cut
            killed_at = time.monotonic()
            h.wait_status("mx1", "DOWN", 5)
            down_at = time.monotonic()
        finally:
            for tag in held:
                todo.put(tag)
            all_queued.set()
            for t in threads:
                t.join(max(1, deadline - time.monotonic()))
            stop.set()
        self.assertFalse(any(t.is_alive() for t in threads), "load did not finish in time")
        self.assertEqual(mx1.returncode, -signal.SIGKILL)
        self.assertGreater(served_by_mx1, 0, "mx1 served nothing before it was killed")

        by_outcome = {}
        for a in attempts:
            by_outcome.setdefault(a.outcome, []).append(a)
        summary = {k: len(v) for k, v in by_outcome.items()}
        sys.stderr.write("\nload: %d attempts %r; mx1 down %.2fs after the kill\n"
                         % (len(attempts), summary, down_at - killed_at))
        self.assertEqual(by_outcome.get("permfail", []), [], "5xx under failover")
        self.assertEqual(len(set(accepted)), self.MESSAGES,
                         "not every message got a 250: %r"
                         % [a for a in attempts if a.outcome != "accepted"][-10:])
        self.assertEqual(len(accepted), len(set(accepted)), "a message got 250 twice")
        # once HAProxy marked mx1 down, every new session went to mx2 and
        # succeeded at the first try
        late = [a for a in attempts if a.started > down_at + 0.05]
        self.assertTrue(late, "no session started after mx1 was marked down")
        self.assertEqual([a for a in late if a.outcome != "accepted" or
                          a.node != "mx2.example.test"], [])

        # Postfix: every accepted message exactly once. An attempt cut
        # after its dot (the node died between Postfix's 250 and relaying
        # it) may have been delivered too: SMTP cannot tell the client
        # (RFC 5321 4.1.1.4 / RFC 1047), so its retry may add a second copy.
        ambiguous = {a.tag for a in by_outcome.get("ambiguous", [])}
        want = set(accepted)
        mt.wait_until(lambda: want <= set(delivered_tags(self.pf)), 60, 0.2,
                      "deliveries of every accepted message")
        self.pf.wait_idle(30)
        got = delivered_tags(self.pf)
        self.assertEqual(set(got) - want, set(), "delivered without any 250")
        wrong = {t: got[t] for t in want if got[t] != 1 and not (t in ambiguous and got[t] == 2)}
        self.assertEqual(wrong, {}, "messages not delivered exactly once")
        doubled = sorted(t for t in want if got[t] == 2)
        if doubled:
            sys.stderr.write("delivered twice after a connection lost after the dot "
                             "(allowed): %s\n" % doubled)
        self.assertExitsCleanly(mx2)


class TestDrain(HaproxyCase):

    GRACE = 4

    def open_session(self, h, source):
        c = mt.SmtpClient(h.port, source=source, timeout=30)
        self.addCleanup(c.close)
        c.banner = c.reply()
        self.assertEqual(c.banner.code, 220, c.banner)
        c.node = c.banner.lines[0].split()[1]
        self.assertEqual(c.ehlo().code, 250)
        return c

    def begin_transaction(self, c, tag):
        """MAIL, RCPT, DATA and the first half of the message."""
        self.assertEqual(c.cmd("MAIL FROM:<drain@client.test>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        data = mt.dot_stuff(message(tag))
        c.rest = data[len(data) // 2:]
        c.send(data[:len(data) // 2])
        c.tag = tag

    def test_sigterm_drains_node_without_cutting_sessions(self):
        mx1 = self.node("mx1.example.test", smtp__drain_grace=self.GRACE)
        mx2 = self.node("mx2.example.test")
        h = self.balancer([mx1, mx2])

        # six sessions: leastconn spreads them three and three
        sessions = [self.open_session(h, "127.0.0.%d" % (71 + i)) for i in range(6)]
        on1 = [c for c in sessions if c.node == "mx1.example.test"]
        on2 = [c for c in sessions if c.node == "mx2.example.test"]
        self.assertEqual((len(on1), len(on2)), (3, 3), [c.node for c in sessions])
        busy1, idle1 = on1[:2], on1[2]
        for i, c in enumerate(busy1 + on2[:1]):
            self.begin_transaction(c, "drain-open-%d" % i)

        mx1.signal(signal.SIGTERM)
        t0 = time.monotonic()
        # at once: before HAProxy's next check, long before the grace ends
        mt.wait_until(lambda: mx1.health(timeout=2)[0] == 503, 0.5, 0.02,
                      "/health 503 right after SIGTERM")
        h.wait_status("mx1", "DOWN", 3)
        self.assertIsNone(mx1.proc.poll(), "mx1 exited during its grace period")

        # during the grace period: new sessions through HAProxy go to mx2 ...
        tags = []
        for i in range(4):
            a = deliver_once(h.port, "drain-new-%d" % i, source="127.0.0.77")
            self.assertEqual((a.outcome, a.node), ("accepted", "mx2.example.test"), a)
            tags.append(a.tag)
        # ... and mx1 still serves whoever reaches it (a balancer that has
        # not noticed yet): a session sent straight to its listener
        self.assertTrue(mt.listening(mx1.port), "mx1 stopped listening before drain_grace")
        with mt.SmtpClient(mx1.port, timeout=10) as c:
            c.send(b"PROXY TCP4 192.0.2.77 127.0.0.1 40077 25\r\n")
            self.assertEqual(c.reply().code, 220)
            c.ehlo()
            t = c.transact("late@client.test", ["alice@example.test"], message("drain-grace"))
            self.assertEqual(t["final"] and t["final"].code, 250, t)
            tags.append("drain-grace")
        self.assertLess(time.monotonic() - t0, self.GRACE, "test too slow for drain_grace")

        # after the grace period: listener closed, the idle session told 421
        mt.wait_until(lambda: not mt.listening(mx1.port), self.GRACE + 5, 0.05,
                      "mx1 to close its listener")
        self.assertGreater(time.monotonic() - t0, self.GRACE - 0.5, "listener closed early")
        r = idle1.reply()
        self.assertEqual(r.code, 421, r)
        self.assertTrue(idle1.closed_by_peer(5))
        self.assertIsNone(mx1.proc.poll(), "mx1 exited with transactions open")

        # the open transactions finish normally, on both nodes
        for c in busy1 + on2[:1]:
            c.send(c.rest)
            r = c.reply()
            self.assertEqual(r.code, 250, "%s on %s: %r" % (c.tag, c.node, r))
            tags.append(c.tag)
            try:
                q = c.cmd("QUIT")
                self.assertIn(q.code, (221, 421), q)
            except (OSError, EOFError):
                pass  # a draining node may close right after the 250
        rc = mx1.proc.wait(15)
        self.assertEqual(rc, 0, "mx1 exit code after SIGTERM")
        self.assertLess(time.monotonic() - t0, 15)
        mx1.stop()  # collects the log reader
        # mx2 never noticed; its idle sessions still work
        for c in on2[1:]:
            self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertDeliveredOnce(tags)
        self.assertEqual([e for e in mx1.events("message") if e.get("outcome") != "accepted"],
                         [], "mx1 logged a message it did not accept while draining")


class TestHealthChecks(HaproxyCase):

    def sessions_logged(self, n):
        return [e for e in n.events() if e.get("event") in ("connect", "disconnect", "proxy",
                                                             "proxy_error", "proxy_refused",
                                                             "reject")]

    def test_http_check_opens_no_smtp_session(self):
        # The default check talks to admin.listen: the SMTP side of a node
        # sees nothing of it, at any level.
        mx1, mx2 = self.node("mx1.example.test"), self.node("mx2.example.test")
        h = self.balancer([mx1, mx2], inter="100ms")
        before = int(h.server("mx1")["chkfail"] or 0), int(h.server("mx2")["chkfail"] or 0)
        time.sleep(2)
        for name, n in (("mx1", mx1), ("mx2", mx2)):
            row = self.finished_check(h, name)
            self.assertEqual((row["status"], row["check_status"], row["check_code"]),
                             ("UP", "L7OK", "200"), row)
            self.assertEqual(self.sessions_logged(n), [], "%s: check left SMTP log lines" % name)
        after = int(h.server("mx1")["chkfail"] or 0), int(h.server("mx2")["chkfail"] or 0)
        self.assertEqual(before, after, "failed checks while serving")

    def test_smtp_check_with_proxy_v2_local_is_logged_at_debug_only(self):
        # The alternative check: option smtpchk on the proxy_protocol
        # listener; HAProxy opens each check with a v2 LOCAL header (crc32c).
        mx1, mx2 = self.node("mx1.example.test"), self.node("mx2.example.test")
        h = self.balancer([mx1, mx2], check="smtp", inter="200ms")
        time.sleep(2)
        for name, n in (("mx1", mx1), ("mx2", mx2)):
            row = self.finished_check(h, name)
            self.assertEqual((row["status"], row["check_status"]), ("UP", "L7OK"), row)
            disc = n.events("disconnect")
            self.assertGreaterEqual(len(disc), 3, "%s: no check sessions seen" % name)
            self.assertEqual([e for e in disc if e.get("level") != "debug"], [],
                             "%s: health check disconnects above debug level" % name)
            self.assertEqual({e.get("client") for e in disc}, {"127.0.0.1"})
            self.assertEqual(n.events("proxy_error") + n.events("proxy_refused") +
                             n.events("reject"), [])
            noisy = [e for e in n.events() if e.get("level") in ("info", "warning", "error")
                     and e.get("sid")]
            self.assertEqual(noisy, [], "%s: session lines above debug for checks" % name)
        # and real traffic still carries the client's address
        a = deliver_once(h.port, "smtpchk-traffic", source="127.0.0.46")
        self.assertEqual(a.outcome, "accepted", a)
        d = self.pf.wait_deliveries(1, 20)[0]
        self.assertIn("[127.0.0.46]", d.strip_received(POSTFIX)[0])

    def test_backend_outage_takes_nodes_out_of_rotation(self):
        # /health follows the backend: with Postfix gone both nodes say 503
        # and HAProxy marks them down (its clients then get a connection
        # refusal from the balancer, and retry later, instead of 4xx).
        mx1, mx2 = self.node("mx1.example.test"), self.node("mx2.example.test")
        h = self.balancer([mx1, mx2])
        self.pf.stop()
        for name in ("mx1", "mx2"):
            h.wait_status(name, "DOWN", 15)
            self.assertEqual(h.server(name)["check_code"], "503")
        self.pf.start()
        for name in ("mx1", "mx2"):
            self.wait_up(h, name, 20)
        a = deliver_once(h.port, "after-outage", source="127.0.0.47")
        self.assertEqual(a.outcome, "accepted", a)
        self.assertDeliveredOnce(["after-outage"])


if __name__ == "__main__":
    mt.main()

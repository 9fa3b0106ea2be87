#!/usr/bin/env python3
"""What the gateway handled, cluster-wide: mxgatectl report and explain.

    127.0.0.1 (outside) --\\
                           mx1, mx2 --> one FakeBackend
    127.0.0.2 (internal) -/     \\ /
                            memcached x 2

Both nodes have domains.local = local.test and networks.internal =
127.0.0.2, and one rate limit (one message per sender an hour). A known
mix goes through them, alternating nodes:

  inbound clean       4 messages, 5 recipients (bulk@ext.test's first one
                      included)
  inbound malware     1 message,  2 recipients (EICAR, 554)
  rate-limited        1 message,  1 recipient  (bulk@ext.test again: 451
                      at MAIL; its RCPT gets 503 and is counted with it)
  outbound            1 message,  2 recipients (internal client, remote
                      domains)
  internal            1 message,  1 recipient  (internal client, local)
  relay attempt       1 message,  1 recipient  (outside client, remote
                      domain: 550 5.7.1 from mxgate)

and mxgatectl report (json and text, run with the other node's config)
must show exactly those counts and percentages, in messages and in
recipients; explain on the id of each refusal names what decided it. The
same mix on one node with the embedded store gives the same report through
admin.listen. The html report is drawn by headless Chromium.
"""

import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402
from test_clamav import TEXT_PART, attachment, mime_message  # noqa: E402

OUTSIDE = "127.0.0.1"
INTERNAL = "127.0.0.2"
ID = re.compile(r"\[id (?P<id>[0-9A-F]{16}\.\d+)\]$")

DIRECTIONS = ["inbound", "outbound", "internal", "relay-denied"]
OUTCOMES = ["delivered", "rejected-malware", "rejected-reputation", "rejected-ratelimit",
            "rejected-relay", "rejected-backend", "rejected-protocol", "tempfailed"]

# (direction, outcome) -> (messages, recipients) the mix must give
EXPECTED = {
    ("inbound", "delivered"): (4, 5),
    ("inbound", "rejected-malware"): (1, 2),
    ("inbound", "rejected-ratelimit"): (1, 1),
    ("outbound", "delivered"): (1, 2),
    ("internal", "delivered"): (1, 1),
    ("relay-denied", "rejected-relay"): (1, 1),
}


def ctl(*args, config):
    return subprocess.run([mt.mxgatectl_binary(), "-c", config] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                          text=True, errors="replace")


class ReportCase(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        self.fake_backend = self.fake()

    def node(self, memcached=None):
        c = {
            "reputation.enabled": "true",
            "domains.local": "local.test",
            "networks.internal": INTERNAL,
            "ratelimit:per_sender.key": "sender",
            "ratelimit:per_sender.count": "messages",
            "ratelimit:per_sender.limit": "1",
            "ratelimit:per_sender.window": "3600",
        }
        if memcached:
            c["cluster.memcached"] = ";".join(m.address for m in memcached)
            c["cluster.key_file"] = self.key_file
        return self.mxgate([self.fake_backend], conf=c)

    def memcacheds(self, n):
        self.key_file = os.path.join(self.tmp, "cluster.key")
        with open(self.key_file, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        os.chmod(self.key_file, stat.S_IRUSR | stat.S_IWUSR)
        out = []
        for _ in range(n):
            m = mt.Memcached()
            self.addCleanup(m.stop)
            m.start()
            out.append(m)
        return out

    # ---- the mix ----

    def transaction(self, node, source, sender, rcpts, msg=None):
        """One session: MAIL, every RCPT (even after a refused MAIL, as a
        pipelining client would), DATA when a recipient passed. Returns
        (mail, [rcpt], final)."""
        with node.client(source=source) as c:
            c.ehlo("client.example.net")
            mail = c.cmd("MAIL FROM:<%s>" % sender)
            rcpt = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
            final = None
            if mail.cls == 2 and any(r.cls == 2 for r in rcpt):
                d = c.cmd("DATA")
                self.assertEqual(d.code, 354, d)
                body = msg or mt.make_message(subject="report", sender=sender, to=rcpts[0])
                c.send(mt.dot_stuff(body))
                final = c.reply()
            c.cmd("QUIT")
        return mail, rcpt, final

    def send_mix(self, nodes):
        """The mix of the module docstring; returns the ids of the refusals."""
        n = lambda i: nodes[i % len(nodes)]  # noqa: E731
        ids = {}
        # inbound clean: 1 + 2 + 1 recipients
        for i, rcpts in enumerate([["a@local.test"], ["b@local.test", "c@local.test"],
                                   ["d@local.test"]]):
            mail, rcpt, final = self.transaction(n(i), OUTSIDE, "clean%d@ext.test" % i, rcpts)
            self.assertEqual(final.code, 250, (mail, rcpt, final))
        # inbound malware, two recipients
        msg = mime_message([TEXT_PART, attachment(mt.EICAR, name="eicar.com")], "malware",
                           sender="infected@ext.test")
        mail, rcpt, final = self.transaction(n(1), OUTSIDE, "infected@ext.test",
                                             ["a@local.test", "b@local.test"], msg)
        self.assertEqual(final.code, 554, final)
        ids["malware"] = ID.search(final.text).group("id")
        # the limited sender: its first message passes on one node, the
        # second is refused on the other
        mail, rcpt, final = self.transaction(n(0), OUTSIDE, "bulk@ext.test", ["a@local.test"])
        self.assertEqual(final.code, 250, final)
        mail, rcpt, final = self.transaction(n(1), OUTSIDE, "bulk@ext.test", ["b@local.test"])
        self.assertEqual(mail.code, 451, mail)
        self.assertEqual(rcpt[0].code, 503, rcpt)
        ids["ratelimit"] = ID.search(mail.text).group("id")
        # outbound: the internal client to two outside domains
        mail, rcpt, final = self.transaction(n(0), INTERNAL, "staff@local.test",
                                             ["x@remote.test", "y@other.test"])
        self.assertEqual(final.code, 250, (mail, rcpt, final))
        # internal: local to local
        mail, rcpt, final = self.transaction(n(1), INTERNAL, "staff2@local.test",
                                             ["a@local.test"])
        self.assertEqual(final.code, 250, (mail, rcpt, final))
        # a relay attempt from outside
        mail, rcpt, final = self.transaction(n(0), OUTSIDE, "spammer@ext.test",
                                             ["victim@remote.test"])
        self.assertEqual(rcpt[0].code, 550, rcpt)
        self.assertRegex(rcpt[0].text, r"^550 5\.7\.1 Relay access denied: remote\.test is "
                                       r"not a local domain \[id [0-9A-F]{16}\.\d+\]$")
        self.assertIsNone(final)
        ids["relay"] = ID.search(rcpt[0].text).group("id")
        # mxgate refused it itself: the backend (which would take anything)
        # never saw the recipient
        self.assertFalse([l for l in self.fake_backend.all_lines() if b"victim@remote.test" in
                          (l if isinstance(l, bytes) else l.encode())])
        # what reached the backend: the 6 delivered messages, nothing else
        mt.wait_until(lambda: len(self.fake_backend.accepted) >= 6, 5, what="6 deliveries")
        time.sleep(0.2)
        self.assertEqual(len(self.fake_backend.accepted), 6)
        return ids

    # ---- the report ----

    def report(self, config, fmt="json", since=None):
        """The report once every node has flushed its counts (about once
        a second; a flush lands on each memcached in turn, so the two
        units may be read a moment apart)."""
        args = ["report", "--format", fmt] + (["--since", since] if since else [])
        got = {}

        def ready():
            p = ctl("report", "--format", "json", config=config)
            self.assertEqual(p.returncode, 0, p.stderr)
            got["json"] = json.loads(p.stdout)
            u = got["json"]["units"]
            return u["messages"]["total"] >= 9 and u["recipients"]["total"] >= 12
        mt.wait_until(ready, 10, what="9 messages and 12 recipients in the report")
        if fmt == "json":
            return got["json"]
        p = ctl(*args, config=config)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout

    def assertMixReported(self, rep):
        self.assertEqual(rep["missing"], 0)
        for ui, unit in enumerate(["messages", "recipients"]):
            u = rep["units"][unit]
            total = sum(v[ui] for v in EXPECTED.values())
            self.assertEqual(u["total"], total, unit)
            for d in DIRECTIONS:
                dd = u["directions"][d]
                count = sum(v[ui] for (ed, _), v in EXPECTED.items() if ed == d)
                self.assertEqual(dd["count"], count, (unit, d))
                self.assertEqual(dd["percent"], round(100.0 * count / total, 1), (unit, d))
                for o in OUTCOMES:
                    self.assertEqual(dd["outcomes"][o], EXPECTED.get((d, o), (0, 0))[ui],
                                     (unit, d, o))
        # the timeline: everything in this hour (or the previous one, if
        # the mix straddled the hour)
        hours = rep["hours"]
        msgs = sum(sum(sum(oc.values()) for oc in h["messages"].values()) for h in hours)
        self.assertEqual(msgs, 9)

    def assertTextReport(self, text):
        # totals and shares, in both units: 9 messages, 12 recipients
        lines = text.splitlines()
        def row(name):
            for l in lines:
                if l.split()[:1] == [name]:
                    return l.split()
            self.fail("no %s row in:\n%s" % (name, text))
        self.assertEqual(row("all")[1:3], ["9", "12"])
        self.assertEqual(row("inbound")[1:5], ["6", "66.7%", "8", "66.7%"])
        self.assertEqual(row("outbound")[1:5], ["1", "11.1%", "2", "16.7%"])
        self.assertEqual(row("internal")[1:5], ["1", "11.1%", "1", "8.3%"])
        self.assertEqual(row("relay-denied")[1:5], ["1", "11.1%", "1", "8.3%"])
        self.assertIn("messages", text)
        self.assertIn("recipients", text)

    def assertExplained(self, config, ids):
        want = {
            "malware": [r"^outcome: rejected-malware$", r"^scan: infected Mxgate\.Test\.EICAR",
                        r"^decided by: malware Mxgate\.Test\.EICAR",
                        r"^  <a@local\.test> inbound rejected-malware"],
            "ratelimit": [r"^outcome: rejected-ratelimit$",
                          r"^decided by: ratelimit per_sender sender=bulk@ext\.test messages 2 > 1",
                          r"^  \[mail\] ratelimit per_sender: sender=bulk@ext\.test, counts "
                          r"messages, counter 1 -> 2, limit 1: over$"],
            "relay": [r"^direction: relay-denied$", r"^outcome: rejected-relay$",
                      r"^decided by: relay denied",
                      r"^  <victim@remote\.test> relay-denied rejected-relay: 550 5\.7\.1"],
        }
        for what, id_ in ids.items():
            def found():
                return ctl("explain", id_, config=config).returncode == 0
            mt.wait_until(found, 5, what="the record of %s" % id_)
            p = ctl("explain", id_, config=config)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("trace: %s " % id_, p.stdout)
            self.assertIn("client: %s" % OUTSIDE, p.stdout)
            for pat in want[what]:
                self.assertRegex(p.stdout, re.compile(pat, re.M), "%s:\n%s" % (what, p.stdout))
            j = ctl("explain", id_, "--json", config=config)
            self.assertEqual(j.returncode, 0, j.stderr)
            rec = json.loads(j.stdout)
            self.assertEqual(rec["id"], id_)
            self.assertEqual(rec["client"], OUTSIDE)
        # an id nobody gave
        p = ctl("explain", "0000000000000000.1", config=config)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no decision record", p.stderr)


class TestClusterReport(ReportCase):

    def test_known_mix_through_two_nodes(self):
        mcs = self.memcacheds(2)
        nodes = [self.node(mcs), self.node(mcs)]
        ids = self.send_mix(nodes)
        # any node's configuration reads the whole cluster
        rep = self.report(nodes[1].config_path)
        self.assertEqual(rep["store"], "memcached")
        self.assertMixReported(rep)
        self.assertTextReport(self.report(nodes[0].config_path, fmt="text"))
        csv = self.report(nodes[0].config_path, fmt="csv", since="2h")
        rows = [l.split(",") for l in csv.splitlines() if l and not l.startswith(("#", "hour"))]
        self.assertEqual(sum(int(r[4]) for r in rows if r[3] == "messages"), 9)
        self.assertEqual(sum(int(r[4]) for r in rows if r[3] == "recipients"), 12)
        self.assertExplained(nodes[0].config_path, ids)
        for nd in nodes:
            self.assertExitsCleanly(nd)


class TestEmbeddedReport(ReportCase):

    def test_known_mix_on_one_node(self):
        node = self.node()
        ids = self.send_mix([node])
        rep = self.report(node.config_path)
        self.assertEqual(rep["store"], "embedded")
        self.assertMixReported(rep)
        self.assertTextReport(self.report(node.config_path, fmt="text"))
        self.assertExplained(node.config_path, ids)
        # a connection refused before any transaction has a record too,
        # under the session id
        p = ctl("rep", "block", "ip", "127.0.0.3", "--reason", "test listing",
                config=node.config_path)
        self.assertEqual(p.returncode, 0, p.stderr)
        refused = mt.first_reply(node.port, "127.0.0.3")
        self.assertEqual(refused.code, 554, refused)
        sid = re.search(r"\[id ([0-9A-F]{16})\]$", refused.text).group(1)
        mt.wait_until(lambda: ctl("explain", sid, config=node.config_path).returncode == 0, 5,
                      what="the record of %s" % sid)
        out = ctl("explain", sid, config=node.config_path).stdout
        self.assertRegex(out, re.compile(r"^decided by: reputation ip:127\.0\.0\.3 blocked "
                                         r"\(mxgatectl: test listing\)$", re.M), out)
        self.assertRegex(out, re.compile(r"^  \[connect\] ip:127\.0\.0\.3: record, score 0, "
                                         r"blocked, from store", re.M), out)
        # the page, drawn by headless Chromium: the real report this time
        html = self.report(node.config_path, fmt="html")
        self.assertIn("<svg", html)
        self.assertNotIn("<script", html)
        self.assertIsNone(re.search(r"https?:|//|@import|url\(", html.split("<body", 1)[1]))
        page = os.path.join(self.tmp, "report.html")
        with open(page, "w") as f:
            f.write(html)
        show = os.path.join(self.tmp, "show-report")
        with open(show, "w") as f:
            f.write("#!/bin/sh\ncat '%s'\n" % page)
        os.chmod(show, 0o755)
        render = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit",
                              "render_report.sh")
        p = subprocess.run(["sh", render, show], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=180, text=True)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertExitsCleanly(node)


if __name__ == "__main__":
    mt.main()

#!/usr/bin/env python3
"""GET /metrics on admin.listen: the Prometheus exposition as a whole.

What must hold, on a node with scanning, reputation and a rate limit rule
(embedded store), on a node in front of a closed backend port, and on a
node with two memcached servers (so the breaker and store lines are there):

  - `promtool check metrics` (Debian package prometheus) accepts the whole
    output: exit 0 and nothing printed. Without promtool the test fails: it
    exists to run it;
  - every family has HELP and TYPE, and the families dashboards read are
    there: build info, messages and recipients by direction x outcome with
    every combination present (zeros included), the transaction, scan and
    store latency histograms, backend errors by kind;
  - histogram buckets are cumulative, in ascending order, end with
    le="+Inf", and that bucket equals _count;
  - every scanned message is in mxgate_scan_duration_seconds; a delivered
    and a refused message are counted once each, by outcome;
  - a message to a closed backend port gets 451 and adds exactly one to
    mxgate_backend_errors_total{kind="connect"}.
"""

import os
import re
import secrets
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

RCPT = "alice@example.test"
DIRECTIONS = ("inbound", "outbound", "internal", "relay-denied")
OUTCOMES = ("delivered", "rejected-malware", "rejected-reputation", "rejected-ratelimit",
            "rejected-relay", "rejected-backend", "rejected-protocol", "tempfailed")
BACKEND_ERRORS = ("connect", "timeout", "lost", "protocol")
HISTOGRAMS = ("mxgate_transaction_duration_seconds", "mxgate_scan_duration_seconds",
              "mxgate_store_duration_seconds")
# name -> type: what every node shows whatever its configuration
ALWAYS = {
    "mxgate_build_info": "gauge",
    "mxgate_sessions": "gauge",
    "mxgate_backend_up": "gauge",
    "mxgate_draining": "gauge",
    "mxgate_spool_bytes": "gauge",
    "mxgate_messages_total": "counter",
    "mxgate_recipients_total": "counter",
    "mxgate_backend_errors_total": "counter",
    "mxgate_store_info": "gauge",
    "mxgate_scanner_up": "gauge",
    "mxgate_scanner_info": "gauge",
    "mxgate_scanner_signatures": "gauge",
    "mxgate_scans_total": "counter",
    "mxgate_scan_queue": "gauge",
}
ALWAYS.update({h: "histogram" for h in HISTOGRAMS})

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def promtool_path():
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not os.access(path, os.X_OK):
        raise AssertionError("promtool not found: install the Debian package prometheus "
                             "(deploy/install-deps.sh does); this test checks /metrics with it")
    return path


scrape = mt.scrape_metrics


def parse(text):
    """{family: {"help": str, "type": str, "samples": [(name, {label: value}, float)]}}.

    A sample belongs to the family whose TYPE came last, as the format says;
    a line that fits no rule is an error here, whatever promtool thinks."""
    fams = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, kind, name, rest = (line.split(" ", 3) + [""])[:4]
            f = fams.setdefault(name, {"help": None, "type": None, "samples": []})
            f[kind.lower()] = rest
            cur = name
            continue
        m = SAMPLE.match(line)
        if not m:
            raise AssertionError("unparsable line %r" % line)
        name, labels, value = m.groups()
        if cur is None or not name.startswith(cur):
            raise AssertionError("sample %r outside its family (after %r)" % (line, cur))
        lab = dict(LABEL.findall(labels or ""))
        fams[cur]["samples"].append((name, lab, float(value)))
    return fams


def value(fams, family, name=None, **labels):
    """The value of the one sample of family with these labels."""
    hits = [v for n, lab, v in fams[family]["samples"]
            if n == (name or family) and all(lab.get(k) == x for k, x in labels.items())]
    if len(hits) != 1:
        raise AssertionError("%d samples of %s%r" % (len(hits), name or family, labels))
    return hits[0]


class MetricsCase(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        self.promtool = promtool_path()

    def node(self, backends, **conf):
        c = {"reputation.enabled": "true",
             "ratelimit:senders.key": "sender",
             "ratelimit:senders.count": "messages",
             "ratelimit:senders.limit": "1000",
             "ratelimit:senders.window": "3600"}
        c.update({k.replace("__", "."): str(v) for k, v in conf.items()})
        return self.mxgate(backends, conf=c)

    def send(self, node, msg, source=None, sender="sender@client.test"):
        with node.client(source=source) as c:
            self.assertEqual(c.ehlo().code, 250)
            t = c.transact(sender, [RCPT], msg)
            c.cmd("QUIT")
        return t

    def checked(self, node):
        """Scrape, have promtool check it, parse it; the parsed families."""
        text = scrape(node)
        p = subprocess.run([self.promtool, "check", "metrics"], input=text, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual((p.returncode, p.stdout), (0, ""),
                         "promtool check metrics:\n%s\n--- the exposition:\n%s" % (p.stdout, text))
        fams = parse(text)
        self.assertFamilies(fams)
        return fams

    def assertFamilies(self, fams):
        for name, f in fams.items():
            self.assertTrue(f["help"], "%s has no HELP" % name)
            self.assertTrue(f["type"], "%s has no TYPE" % name)
        for name, typ in ALWAYS.items():
            self.assertIn(name, fams, "family %s missing" % name)
            self.assertEqual(fams[name]["type"], typ, name)
        version = subprocess.run([mt.mxgate_binary(), "--version"], stdout=subprocess.PIPE,
                                 text=True, timeout=10).stdout.split()[-1]
        self.assertEqual(value(fams, "mxgate_build_info", version=version), 1)
        for fam in ("mxgate_messages_total", "mxgate_recipients_total"):
            series = sorted((lab.get("direction"), lab.get("outcome"))
                            for _, lab, _ in fams[fam]["samples"])
            self.assertEqual(series, sorted((d, o) for d in DIRECTIONS for o in OUTCOMES),
                             "%s: every direction x outcome, once each" % fam)
        kinds = sorted(lab.get("kind") for _, lab, _ in fams["mxgate_backend_errors_total"]["samples"])
        self.assertEqual(kinds, sorted(BACKEND_ERRORS))
        for h in HISTOGRAMS:
            self.assertHistogram(fams, h)

    def assertHistogram(self, fams, h):
        samples = fams[h]["samples"]
        buckets = [(lab["le"], v) for n, lab, v in samples if n == h + "_bucket"]
        self.assertGreaterEqual(len(buckets), 2, h)
        self.assertEqual(buckets[-1][0], "+Inf", "%s: last bucket %r" % (h, buckets[-1]))
        bounds = [float(le) for le, _ in buckets]
        self.assertEqual(bounds, sorted(set(bounds)), "%s: bounds not ascending" % h)
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts), "%s: buckets not cumulative" % h)
        self.assertEqual(value(fams, h, h + "_count"), counts[-1], "%s: +Inf != _count" % h)
        self.assertGreaterEqual(value(fams, h, h + "_sum"), 0, h)


class TestMetrics(MetricsCase):

    def test_exposition_of_a_scanning_node(self):
        fake = self.fake()
        gw = self.node([fake])
        self.checked(gw)  # before any traffic, with every count at 0
        clean = self.send(gw, mt.make_message(subject="clean"), source="127.0.0.81")
        self.assertEqual(clean["final"].code, 250, clean)
        # the test signature set's body signature (Mxgate.Test.Marker)
        marked = self.send(gw, mt.make_message(subject="marked", body=mt.TEST_MARKER + b"\r\n",
                                               sender="bad@evil.test"),
                           source="127.0.0.82", sender="bad@evil.test")
        self.assertEqual(marked["final"].code, 554, marked)
        # a transaction may be counted just after its reply went out
        mt.wait_until(lambda: sum(v for _, _, v in
                                  parse(scrape(gw))["mxgate_messages_total"]["samples"]) >= 2,
                      5, 0.05, "both transactions in mxgate_messages_total")
        fams = self.checked(gw)
        self.assertGreaterEqual(value(fams, "mxgate_scan_duration_seconds",
                                      "mxgate_scan_duration_seconds_count"), 2)
        self.assertEqual(value(fams, "mxgate_scans_total", verdict="infected"), 1)
        # one message delivered and one refused, whatever their direction
        by_outcome = {}
        for _, lab, v in fams["mxgate_messages_total"]["samples"]:
            by_outcome[lab["outcome"]] = by_outcome.get(lab["outcome"], 0) + v
        self.assertEqual({o: v for o, v in by_outcome.items() if v},
                         {"delivered": 1, "rejected-malware": 1}, by_outcome)
        self.assertGreaterEqual(value(fams, "mxgate_transaction_duration_seconds",
                                      "mxgate_transaction_duration_seconds_count"), 2)
        self.assertEqual(value(fams, "mxgate_store_info", backend="embedded"), 1)
        self.assertEqual(sum(v for _, _, v in fams["mxgate_backend_errors_total"]["samples"]), 0)
        # the old family {outcome=accepted|rejected|tempfail} is gone
        for _, lab, _ in fams["mxgate_messages_total"]["samples"]:
            self.assertIn("direction", lab)

    def test_closed_backend_port_counts_a_connect_error(self):
        closed = mt.free_port()  # nothing listens there
        gw = self.node([closed])
        before = value(self.checked(gw), "mxgate_backend_errors_total", kind="connect")
        t = self.send(gw, mt.make_message(subject="nowhere"))
        last = t["final"] or t["data"] or (t["rcpt"] or [None])[-1] or t["mail"]
        self.assertEqual(last.code, 451, t)
        fams = self.checked(gw)
        self.assertEqual(value(fams, "mxgate_backend_errors_total", kind="connect"), before + 1)
        for kind in ("timeout", "lost", "protocol"):
            self.assertEqual(value(fams, "mxgate_backend_errors_total", kind=kind), 0, kind)

    def test_exposition_with_memcached(self):
        mt.require_program(mt.Memcached.BINARY, "memcached")
        mcs = []
        for _ in range(2):
            m = mt.Memcached()
            self.addCleanup(m.stop)
            mcs.append(m.start())
        key_file = os.path.join(self.tmp, "cluster.key")
        with open(key_file, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        os.chmod(key_file, 0o600)
        fake = self.fake()
        gw = self.node([fake], cluster__memcached=";".join(m.address for m in mcs),
                       cluster__key_file=key_file)
        t = self.send(gw, mt.make_message(subject="through memcached"))
        self.assertEqual(t["final"].code, 250, t)
        fams = self.checked(gw)
        self.assertEqual(value(fams, "mxgate_store_info", backend="memcached"), 1)
        for name in ("mxgate_store_errors_total", "mxgate_store_fast_failed_total",
                     "mxgate_store_bad_records_total"):
            self.assertEqual(fams.get(name, {}).get("type"), "counter", name)
        servers = sorted(lab.get("server")
                         for _, lab, _ in fams["mxgate_store_breaker_state"]["samples"])
        self.assertEqual(servers, sorted(m.address for m in mcs))


if __name__ == "__main__":
    mt.main()

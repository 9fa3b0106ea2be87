"""mxtest_fake: a scriptable SMTP backend for faults a real MTA will not
produce on cue (see mxtest.py)."""

import re
import select
import socket
import threading


from mxtest_core import *  # noqa: F401,F403

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



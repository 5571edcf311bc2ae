"""The deployment as shipped: deploy/build-image builds the image with no registry (a debootstrap base, wheels built
here), and docker-compose.yml runs it with Debian's docker-compose on a private dockerd, secure by default (nkey
users, TLS, the agent's own seed and policy); the systemd unit passes `systemd-analyze verify`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .stack import BUSYBOX_IMAGE, Dockerd, venv_bin

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
HOST_ID = "compose-host"
ON_STOP = "volume-agent.backup.on-stop=true"


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run scripts/test, which installs them")


class Compose:
    """docker-compose.yml as an operator runs it, on a private dockerd, under a project name of its own."""

    def __init__(self, docker: Dockerd) -> None:
        self.docker = docker
        self.project = f"va{uuid.uuid4().hex[:8]}"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")},
                    "DOCKER_HOST": docker.url, "VOLUME_AGENT_HOST_ID": HOST_ID,
                    "VOLUME_AGENT_DOCKER_SOCKET": str(docker.sock),
                    "VOLUME_AGENT_VOLUMES_DIR": str(docker.root / "data" / "volumes")}

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["docker-compose", "-p", self.project, "-f", str(REPO / "docker-compose.yml"), *args],
                             env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
        return out

    def volumectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("run", "--rm", "-T", "volumectl", *args, check=check)

    def volumectl_json(self, *args: str) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.volumectl("--json", *args).stdout)
        assert reply["ok"], reply
        return reply["result"]  # type: ignore[no-any-return]

    def until_answer(self, timeout: float = 90) -> float:
        """Seconds until volumectl gets an answer from the agent."""
        start = time.monotonic()
        while True:
            out = self.volumectl("ls", check=False)
            if out.returncode == 0:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"no answer from the compose stack's agent in {timeout} s:\n{out.stderr}\n"
                                     + self.run("logs", "--tail", "40", check=False).stdout)
            time.sleep(0.5)

    def backups(self, volume: str) -> list[dict[str, Any]]:
        return list(self.volumectl_json("backups", volume)["backups"])


@pytest.fixture(scope="module")
def compose_docker(stack_dir: Path) -> Iterator[Dockerd]:
    """A dockerd of this module's own: compose makes a network on it (user networks work without the default
    bridge), and the image it builds stays out of the session's daemon."""
    _need("dockerd", "docker-compose", "debootstrap")
    d = Dockerd(stack_dir / "dkc").start()
    d.import_busybox()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def image(compose_docker: Dockerd) -> str:
    """deploy/build-image, end to end (the debootstrap base is cached in /var/cache/volume-agent-base)."""
    env = {**os.environ, "DOCKER_HOST": compose_docker.url, "PYTHON": sys.executable}
    out = subprocess.run([str(REPO / "deploy" / "build-image")], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=900, check=False)
    assert out.returncode == 0, out.stderr
    return "volume-agent:0.1.0"


@pytest.fixture
def stack(compose_docker: Dockerd, image: str) -> Iterator[Compose]:
    c = Compose(compose_docker)
    yield c
    c.run("down", "-v", "--timeout", "20", check=False)


@pytest.mark.timeout(1200)
def test_compose_stack_secure_backs_up_and_keeps_backups_across_down_and_up(stack: Compose) -> None:
    """up; the agent answers volumectl over TLS with the operator's seed; create and back up a volume; a labelled
    container's stop backs it up; down and up again: both backups are still listed."""
    stack.run("up", "-d")
    stack.until_answer()
    config = stack.run("exec", "-T", "agent", "sh", "-c", "env | grep ^VOLUME_AGENT_ | sort").stdout
    assert "VOLUME_AGENT_INSECURE" not in config
    assert "VOLUME_AGENT_NATS=tls://nats:4222" in config

    made = stack.volumectl_json("create", "appdata")
    # The agent sees the volume's directory where Docker has it: backups read it directly (no archive API).
    stack.run("exec", "-T", "agent", "test", "-d", made["mountpoint"])
    stack.docker.docker("run", "--rm", "-v", "appdata:/d", BUSYBOX_IMAGE, "sh", "-c",
                        "echo hello > /d/greeting && mkdir /d/sub && echo deep > /d/sub/file")
    first = stack.volumectl_json("backup", "appdata")
    assert first["size"] > 0

    stack.docker.docker("run", "-d", "--name", "app", "--label", ON_STOP, "-v", "appdata:/d", BUSYBOX_IMAGE,
                        "sleep", "600")
    stack.docker.docker("stop", "app")
    deadline = time.monotonic() + 60
    while not any(b["trigger"] == "on-stop" for b in stack.backups("appdata")):
        assert time.monotonic() < deadline, "the container's stop made no backup"
        time.sleep(0.5)

    before = {b["backup_id"] for b in stack.backups("appdata")}
    assert len(before) == 2
    stack.run("down", "--timeout", "30")
    stack.run("up", "-d")
    stack.until_answer()
    assert {b["backup_id"] for b in stack.backups("appdata")} == before
    # NATS admits no one without a seed: the same volumectl without one is refused.
    anonymous = stack.run("run", "--rm", "-T", "-e", "VOLUME_AGENT_SEED=", "volumectl", "ls", check=False)
    assert anonymous.returncode != 0


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """deploy/volume-agent.service as systemd reads it: no unknown key, no bad value (ExecStart pointed at this
    checkout's volume-agent, since systemd-analyze checks that it is there)."""
    _need("systemd-analyze")
    unit = (REPO / "deploy" / "volume-agent.service").read_text()
    assert "ExecStart=/opt/volume-agent/bin/volume-agent\n" in unit
    path = tmp_path / "volume-agent.service"
    path.write_text(unit.replace("/opt/volume-agent/bin/volume-agent", venv_bin("volume-agent")))
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr

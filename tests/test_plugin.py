"""A real Docker volume plugin: rclone's `serve docker` (FUSE), one per private dockerd, allowed by the agents'
policy file (`[volumes] drivers`). A volume of that driver is used from a container, backed up, restored, cloned,
migrated to another host and seen in the inventory with its driver; with the plugin stopped, the agent answers
`unavailable` naming it.

Each dockerd here has a plugin directory of its own (`Dockerd.plugins`): plugins are found in the fixed
/run/docker/plugins, and a socket there would be listed, and its volumes removed, by every other test daemon."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest

from agent.docker import _translate
from agent.errors import Internal, Unavailable
from volumectl.client import AgentClient

from .conftest import Host
from .identities import Identities
from .stack import BUSYBOX_IMAGE, Agent, Dockerd, NatsServer

A, B = "plug-a", "plug-b"
# A name of this run's own: the plugin's socket is <name>.sock, and its name is the volume driver's.
DRIVER = f"rclone-{uuid.uuid4().hex[:6]}"


@dataclass
class PluginHost:
    """A Docker host with the rclone plugin: its dockerd, the plugin process, where rclone keeps volumes' files."""

    docker: Dockerd
    root: Path
    plugin: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        assert self.docker.plugins is not None
        return self.docker.plugins / f"{DRIVER}.sock"

    def start_plugin(self) -> None:
        self.sock.unlink(missing_ok=True)
        argv = ["rclone", "serve", "docker", "--socket-addr", str(self.sock), "--base-dir", str(self.root / "mnt"),
                "--cache-dir", str(self.root / "cache"), "--config", "/dev/null"]
        with open(self.root / "rclone.log", "ab") as log:
            self.plugin = subprocess.Popen(self.docker.in_namespace(argv), stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert self.plugin.poll() is None, (self.root / "rclone.log").read_text()
            assert time.monotonic() < deadline, "rclone serve docker made no socket"
            time.sleep(0.05)

    def stop_plugin(self) -> None:
        proc, self.plugin = self.plugin, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)

    def files(self, name: str) -> Path:
        """A directory of the plugin's (rclone's `local` backend) for one volume: `-o path=` of it."""
        d = self.root / "files" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def opts(self, name: str) -> dict[str, str]:
        # rclone 1.60 forgets a volume made with `-o type=local -o path=DIR` when it restarts ("cannot parse path");
        # one made with `-o remote=:local:DIR` it keeps.
        return {"remote": f":local:{self.files(name)}"}


def _plugin_host(root: Path) -> Iterator[PluginHost]:
    d = Dockerd(root / "dk", plugins=root / "plugins").start()
    h = PluginHost(d, root)
    try:
        d.import_busybox()
        h.start_plugin()
        yield h
        d.reset()
    finally:
        h.stop_plugin()
        d.stop()


@pytest.fixture(scope="module")
def plug_a(stack_dir: Path) -> Iterator[PluginHost]:
    yield from _plugin_host(stack_dir / "pla")


@pytest.fixture(scope="module")
def plug_b(stack_dir: Path) -> Iterator[PluginHost]:
    yield from _plugin_host(stack_dir / "plb")


@pytest.fixture(scope="module")
def plugin_policy(identities: Identities) -> Path:
    """The session's policy with the plugin allowed: `[volumes] drivers = ["local", DRIVER]`."""
    for h in (A, B):  # both agents' keys listed before either starts: B restores what A wrote (migrate)
        identities.agent(h)
    return identities.write_policy("plugin-policy.toml", **identities.policy_options, drivers=["local", DRIVER])


@pytest.fixture(scope="module")
def plug_agents(plug_a: PluginHost, plug_b: PluginHost, nats_server: NatsServer, stack_dir: Path,
                identities: Identities, plugin_policy: Path) -> Iterator[dict[str, Agent]]:
    made = {h: Agent(h, p.docker.url, nats_server.url, stack_dir / f"agent-{h}", ["--ack-wait", "2"],
                     auth=identities, policy=plugin_policy).start()
            for h, p in ((A, plug_a), (B, plug_b))}
    yield made
    for a in made.values():
        a.stop()


@pytest.fixture
def hosts(plug_agents: dict[str, Agent], plug_a: PluginHost, plug_b: PluginHost, client: AgentClient
          ) -> Iterator[dict[str, Host]]:
    for p in (plug_a, plug_b):
        p.docker.reset()
    yield {A: Host(A, plug_a.docker, plug_agents[A], client), B: Host(B, plug_b.docker, plug_agents[B], client)}
    for p in (plug_a, plug_b):
        p.docker.reset()


FILES = ("greeting", "sub/deeper/file", "n")
FILL = "echo hello > /d/greeting && mkdir -p /d/sub/deeper && echo deep > /d/sub/deeper/file && echo 1 > /d/n"


def _listing(d: Dockerd, volume: str) -> str:
    """A volume's tree and its files' content, as a container that mounts it sees them."""
    return d.docker("run", "--rm", "--network", "none", "-v", f"{volume}:/d:ro", BUSYBOX_IMAGE, "sh", "-c",
                    f"cd /d && ls -R . && cat {' '.join(FILES)}")


@pytest.mark.integration
async def test_a_plugin_volume_round_trip(hosts: dict[str, Host], plug_a: PluginHost, plug_b: PluginHost) -> None:
    """Create with the plugin's driver (allowed by the policy), use it from a container, see its driver in the
    inventory, back it up, restore it into a new plugin volume, clone it, migrate it to another host."""
    a, b = hosts[A], hosts[B]
    made = await a.ok("create", {"name": "pvol", "driver": DRIVER, "driver_opts": plug_a.opts("pvol")})
    assert made["driver"] == DRIVER
    a.docker.docker("run", "--rm", "--network", "none", "-v", "pvol:/d", BUSYBOX_IMAGE, "sh", "-c", FILL)
    # The plugin keeps the files where its options say: rclone's local backend writes them through.
    assert (plug_a.files("pvol") / "sub" / "deeper" / "file").read_text() == "deep\n"
    before = _listing(a.docker, "pvol")

    inventory = await a.ok("inventory")
    assert {v["name"]: v["driver"] for v in inventory["volumes"]}["pvol"] == DRIVER

    backup = await a.ok("backup", {"volume": "pvol"})
    assert backup["volume_driver"] == DRIVER and backup["size"] > 0

    # Restore into a new volume of the plugin, with options of its own (the driver comes from the record).
    restored = await a.ok("restore", {"backup_id": backup["backup_id"], "volume": "pvol-restored",
                                      "driver_opts": plug_a.opts("pvol-restored")})
    assert restored["created_volume"] is True
    assert (await a.ok("inspect", {"name": "pvol-restored"}))["driver"] == DRIVER
    assert _listing(a.docker, "pvol-restored") == before

    # Clone into a plugin volume made first with its own options.
    await a.ok("create", {"name": "pvol-clone", "driver": DRIVER, "driver_opts": plug_a.opts("pvol-clone")})
    await a.ok("clone", {"source": "pvol", "target": "pvol-clone"})
    assert _listing(a.docker, "pvol-clone") == before
    assert (await a.ok("digest", {"volume": "pvol-clone"}))["sha256"] == (
        await a.ok("digest", {"volume": "pvol"}))["sha256"]

    # Migrate to host B, into a plugin volume of B's own; the source is removed only after B's digest agrees.
    await b.ok("create", {"name": "pvol", "driver": DRIVER, "driver_opts": plug_b.opts("pvol")})
    moved = await a.ok("migrate", {"volume": "pvol", "to": B, "remove_source": True})
    assert moved["source_removed"] is True and moved["created_volume"] is False
    assert _listing(b.docker, "pvol") == before
    assert (await b.ok("digest", {"volume": "pvol"}))["sha256"] == moved["sha256"]


@pytest.mark.integration
async def test_cloning_a_plugin_volume_onto_a_new_name_never_writes_into_the_source(
    hosts: dict[str, Host], plug_a: PluginHost
) -> None:
    """A clone made with the source's options would be the source's storage (rclone's `path`): refused as not
    empty, and the source is as it was."""
    a = hosts[A]
    await a.ok("create", {"name": "shared", "driver": DRIVER, "driver_opts": plug_a.opts("shared")})
    a.docker.docker("run", "--rm", "--network", "none", "-v", "shared:/d", BUSYBOX_IMAGE, "sh", "-c", FILL)
    before = _listing(a.docker, "shared")
    code, msg = await a.error("clone", {"source": "shared", "target": "shared-copy"})
    assert code == "conflict" and "not empty" in msg
    assert _listing(a.docker, "shared") == before


@pytest.mark.integration
@pytest.mark.slow  # about 45 s: Docker's own retries of the plugin
@pytest.mark.timeout(240)
async def test_a_stopped_plugin_is_unavailable_naming_it(hosts: dict[str, Host], plug_a: PluginHost) -> None:
    """Docker itself retries a plugin that does not answer for about 15 s per call before it reports it."""
    a = hosts[A]
    await a.ok("create", {"name": "orphan", "driver": DRIVER, "driver_opts": plug_a.opts("orphan")})
    plug_a.stop_plugin()
    try:
        for op, body in (("inspect", {"name": "orphan"}), ("backup", {"volume": "orphan"})):
            reply = await a.req(op, body, timeout=120)
            assert not reply.ok and reply.error is not None, reply.result
            assert reply.error.code == "unavailable", (op, reply.error)
            assert f"volume plugin {DRIVER!r}" in reply.error.message, reply.error.message
            assert "start the plugin" in reply.error.message
    finally:
        plug_a.start_plugin()
    assert (await a.ok("inspect", {"name": "orphan"}))["driver"] == DRIVER


@pytest.mark.parametrize(("status", "message", "name"), [
    (500, 'get v: error while checking if volume "v" exists in driver "rclone-x": Post '
          '"http://%2Frun%2Fdocker%2Fplugins%2Frclone-x.sock/VolumeDriver.Get": dial unix '
          '/run/docker/plugins/rclone-x.sock: connect: no such file or directory', "rclone-x"),
    (500, 'create v: Post "http://%2Frun%2Fdocker%2Fplugins%2Fsshfs.sock/VolumeDriver.Create": dial unix '
          '/run/docker/plugins/sshfs.sock: connect: connection refused', "sshfs"),
    (404, 'error looking up volume plugin nosuch: plugin "nosuch" not found', "nosuch"),
])
def test_docker_saying_a_plugin_does_not_answer_is_unavailable(status: int, message: str, name: str) -> None:
    err = _translate(aiodocker.DockerError(status, message), "volume 'v'")
    assert type(err) is Unavailable and f"volume plugin {name!r}" in err.message


def test_a_plugins_own_refusal_is_not_taken_for_a_stopped_plugin() -> None:
    err = _translate(aiodocker.DockerError(500, "create v: VolumeDriver.Create: unknown option"), "volume 'v'")
    assert type(err) is Internal

"""Session fixtures: one private dockerd, one nats-server, one agent; every test starts from an empty host."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from contracts import Reply
from volumectl.client import AgentClient

from .identities import Identities
from .stack import BUSYBOX_IMAGE, Agent, Dockerd, NatsServer

HOST_ID = "host-a"


def _require_root_and_dockerd() -> None:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.fail("integration tests need root and dockerd: run scripts/test, which installs docker.io")


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short paths: a unix socket path must stay under 108 bytes.
    return Path(tmp_path_factory.mktemp("s", numbered=True))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for a daemon of a test's own: dockerd's containerd socket lies deep under it,
    and a unix socket path must stay under 108 bytes (a test's tmp_path, under a worker's dir, may not)."""
    path = Path(tempfile.mkdtemp(prefix="va-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def dockerd(stack_dir: Path) -> Iterator[Dockerd]:
    _require_root_and_dockerd()
    d = Dockerd(stack_dir / "dk").start()
    d.import_busybox()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def nats_server(stack_dir: Path, identities: Identities) -> Iterator[NatsServer]:
    """As a fleet runs it: TLS, and nkey users with the generated least-privilege permissions."""
    yield from identities.running(NatsServer(stack_dir / "nats"))


@pytest.fixture(scope="session")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    """Keys and the policy every test agent runs under: host paths under the tests' temporary directory may be
    mounted (bind_roots), and the test image may be shared (and `nope:1`, which is never there: not_found).
    Besides ops, viewer and agents: `far`, an operator only on host `elsewhere`."""
    return Identities.make(tmp_path_factory.mktemp("keys"), bind_roots=[tmp_path_factory.getbasetemp()],
                           images=[BUSYBOX_IMAGE, "nope:1"], extra=[("far", "operator", ["elsewhere"])])


@pytest.fixture(scope="session")
def agent(dockerd: Dockerd, nats_server: NatsServer, stack_dir: Path, identities: Identities) -> Iterator[Agent]:
    extra = ["--ack-wait", "2", "--max-body", "65536"]
    a = Agent(HOST_ID, dockerd.url, nats_server.url, stack_dir / "agent-a", extra, auth=identities).start()
    yield a
    a.stop()


ARCHIVE_HOST_ID = "host-arch"


@pytest.fixture(scope="session")
def archive_agent(
    dockerd: Dockerd, nats_server: NatsServer, stack_dir: Path, identities: Identities
) -> Iterator[Agent]:
    """A second agent on the same Docker host that reaches volume files only through the archive API."""
    a = Agent(ARCHIVE_HOST_ID, dockerd.url, nats_server.url, stack_dir / "agent-arch",
              ["--data-path", "archive"], auth=identities).start()
    yield a
    a.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(nats_server: NatsServer, identities: Identities) -> AsyncIterator[AgentClient]:
    """Signs as the operator `ops`."""
    c = await identities.connect([nats_server.url])
    yield c
    await c.close()


@dataclass
class Host:
    """The agent under test and its Docker host, as a test talks to them."""

    id: str
    docker: Dockerd
    agent: Agent
    client: AgentClient

    async def req(self, op: str, body: dict[str, Any] | bytes | None = None, timeout: float = 30) -> Reply:
        return await self.client.request(self.id, op, body, timeout=timeout)

    async def ok(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.req(op, body)
        assert reply.ok, reply.error
        assert reply.result is not None
        return reply.result

    async def error(self, op: str, body: dict[str, Any] | bytes | None = None) -> tuple[str, str]:
        reply = await self.req(op, body)
        assert not reply.ok and reply.error is not None, reply.result
        return reply.error.code, reply.error.message


@pytest.fixture
def host(dockerd: Dockerd, agent: Agent, client: AgentClient) -> Iterator[Host]:
    dockerd.reset()
    yield Host(HOST_ID, dockerd, agent, client)
    dockerd.reset()


@pytest.fixture(params=["host", "archive"])
def any_path_host(request: pytest.FixtureRequest, dockerd: Dockerd, client: AgentClient) -> Iterator[Host]:
    """The same tests through both data paths: the host directory and the Engine's archive API."""
    if request.param == "host":
        a, host_id = request.getfixturevalue("agent"), HOST_ID
    else:
        a, host_id = request.getfixturevalue("archive_agent"), ARCHIVE_HOST_ID
    dockerd.reset()
    yield Host(host_id, dockerd, a, client)
    dockerd.reset()


@pytest.fixture
def make_agent(dockerd: Dockerd, nats_server: NatsServer, tmp_path: Path, identities: Identities) -> Iterator[Any]:
    """Agents of a test's own (a fresh host id each), on the shared dockerd and nats-server; stopped after.
    `policy`: another policy file for the same keys (default: the session's)."""
    made: list[Agent] = []
    dockerd.reset()

    def make(data_dir: Path | None = None, extra: list[str] | None = None, *, start: bool = True,
             policy: Path | None = None, host_id: str | None = None) -> Agent:
        a = Agent(host_id or f"own-{uuid.uuid4().hex[:8]}", dockerd.url, nats_server.url,
                  data_dir or tmp_path / "agent", extra or ["--ack-wait", "2"], auth=identities, policy=policy)
        made.append(a)
        return a.start() if start else a

    yield make
    for a in made:
        a.stop()
    dockerd.reset()


@pytest_asyncio.fixture(loop_scope="session")
async def policies(client: AgentClient, identities: Identities) -> AsyncIterator[Any]:
    """Backup policies a test sets (signed as `ops`), removed (signed) after it."""
    from .test_policies import Policies  # the helper lives with the policy tests; imported late: no cycle

    p = Policies(client, identities)
    yield p
    await p.clean()

"""What is waited out rather than final: a JetStream leader election, a Docker Engine that is restarting."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiodocker
import nats.errors
import nats.js.errors
import pytest

from agent import elections
from agent.bus import Bus
from agent.config import Settings
from agent.docker import _translate
from agent.elections import through_elections
from agent.errors import AgentError, Internal, Unavailable

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("message", [
    "create pgdata: database not open",
    "get keep: database not open",
    "error while mounting volume '/var/lib/docker/volumes/keep/_data': get keep: database not open",
    "transport is closing: unavailable",
    "failed to update store for object type *libnetwork.endpoint: open : no such file or directory",
    'connection error: desc = "transport: Error while dialing dial unix /run/containerd.sock": unavailable',
])
def test_the_engines_answers_while_it_restarts_are_unavailable(message: str) -> None:
    err = _translate(aiodocker.DockerError(500, message), "volume 'pgdata'")
    assert type(err) is Unavailable and "not ready" in err.message and message in err.message


@pytest.mark.parametrize("message", [
    "error evaluating symlinks from mount source \"/srv/x\": lstat /srv/x: no such file or directory",
    "create pgdata: VolumeDriver.Create: plugin failed",
    "unavailable",
])
def test_other_500s_stay_internal(message: str) -> None:
    err = _translate(aiodocker.DockerError(500, message), "volume 'pgdata'")
    assert type(err) is Internal and err.code == "internal"


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elections, "FIRST_PAUSE_S", 0.01)
    monkeypatch.setattr(elections, "MAX_PAUSE_S", 0.02)


async def test_an_election_is_waited_out(fast: None) -> None:
    failures: list[BaseException] = [nats.js.errors.NoStreamResponseError(), nats.errors.TimeoutError()]

    async def attempt(timeout: float) -> str:
        assert 0 < timeout <= elections.ATTEMPT_TIMEOUT_S
        if failures:
            raise failures.pop(0)
        return "ack"

    assert await through_elections("publishing", attempt) == "ack"


async def test_an_election_longer_than_the_budget_and_other_failures_are_raised(fast: None) -> None:
    calls = 0

    async def leaderless(timeout: float) -> None:
        nonlocal calls
        calls += 1
        raise nats.js.errors.NoStreamResponseError

    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await through_elections("publishing", leaderless, budget_s=0.2)
    assert calls > 2

    async def closed(timeout: float) -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.ConnectionClosedError

    calls = 0
    with pytest.raises(nats.errors.ConnectionClosedError):
        await through_elections("publishing", closed, budget_s=5)
    assert calls == 1


class FakeJs:
    """js.publish that fails `failures` times (the stream has no leader yet), then acks."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    async def publish(self, subject: str, payload: bytes, timeout: float, headers: dict[str, Any]) -> None:
        self.sent.append((subject, payload, headers))
        if self.failures:
            self.failures -= 1
            raise nats.js.errors.NoStreamResponseError


def bus_with(js: FakeJs) -> Bus:
    bus = Bus(Settings(nats_urls=["nats://x"], docker_url="unix:///x", host_id="h1", data_dir=Path("/x")), [])
    bus._nc, bus._js = SimpleNamespace(max_payload=1 << 20), js  # type: ignore[assignment]
    return bus


async def test_an_outcome_is_published_through_an_election_under_one_message_id(fast: None) -> None:
    js = FakeJs(failures=2)
    await bus_with(js).result("create", b'{"id":"k1"}', durable=True)
    assert [s for s, _, _ in js.sent] == ["vol.res.h1.create"] * 3
    ids = {h["Nats-Msg-Id"] for _, _, h in js.sent}
    assert len(ids) == 1  # a retry the stream already has is dropped, not kept twice
    other = FakeJs(failures=0)
    await bus_with(other).result("create", b'{"id":"k2"}', durable=True)
    assert other.sent[0][2]["Nats-Msg-Id"] not in ids


async def test_an_outcome_nats_never_takes_is_not_transient(fast: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elections, "BUDGET_S", 0.1)
    with pytest.raises(Unavailable):  # past the budget: the durable command is delivered again later
        await bus_with(FakeJs(failures=1000)).result("create", b"{}", durable=True)
    bus = bus_with(FakeJs(failures=0))
    with pytest.raises(AgentError) as too_big:
        await bus.result("prune", b"x" * ((1 << 20) + 1), durable=True)
    assert type(too_big.value) is AgentError and "max payload" in too_big.value.message

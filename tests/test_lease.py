"""One host id, one agent (agent/lease.py), with real agents on the secured nats-server: a second agent with a running
agent's host id exits 2 naming it; a killed agent's id is taken over, at once on its own machine and after the TTL
from a machine that cannot tell (here: a frozen agent); a thawed agent that lost its id stops; a clean stop releases
it."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from volumectl.client import AgentClient

from .stack import Agent
from .test_events import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEFAULT_TTL_S = 15.0  # agent/config.py DEFAULT_LEASE_TTL_S: the takeover time docs/running.md states


def events(agent: Agent, name: str, *, since: int = 0) -> list[dict[str, Any]]:
    """The log lines of event `name`, from the `since`-th start of the agent on (0: its first)."""
    runs = agent.log().split('"event":"agent.starting"')
    text = "".join(runs[since + 1:])
    return [json.loads("{" + x.split("{", 1)[1]) for x in text.splitlines() if f'"event":"{name}"' in x]


def runs(agent: Agent) -> int:
    return agent.log().count('"event":"agent.starting"')


async def answers(client: AgentClient, agent: Agent) -> bool:
    return (await client.request(agent.host_id, "list", {}, timeout=10)).ok


async def test_a_second_agent_with_a_running_agents_host_id_exits_2_naming_it_and_the_first_goes_on(
    make_agent: Any, client: AgentClient, tmp_path: Path
) -> None:
    first = make_agent(host_id=f"dup-{uuid.uuid4().hex[:6]}")  # the default TTL: as a fleet runs it
    assert first.proc is not None
    second = make_agent(tmp_path / "second" / "agent", start=False, host_id=first.host_id)
    second.start(wait=False)
    assert await asyncio.to_thread(second.wait, DEFAULT_TTL_S + 30) == 2
    [refused] = events(second, "agent.refused")
    assert f"pid {first.proc.pid} on {socket.gethostname()}" in refused["error"]
    assert refused["holder_pid"] == first.proc.pid and refused["holder_hostname"] == socket.gethostname()
    assert refused["holder_renewed_at"] and "renewed its lease at" in refused["error"]
    assert "--host-id" in refused["error"]
    assert events(second, "agent.ready") == [] and events(second, "lease.claimed") == []
    assert await answers(client, first)
    assert first.proc.poll() is None and events(first, "agent.fatal") == []


async def test_a_killed_agents_id_is_taken_over_at_once_on_its_machine_and_a_clean_stop_releases_it(
    make_agent: Any, client: AgentClient
) -> None:
    a = make_agent(host_id=f"crash-{uuid.uuid4().hex[:6]}")
    a.signal(signal.SIGKILL)
    await asyncio.to_thread(a.wait, 10)
    began = time.monotonic()
    a.start()  # same machine, and the holder's process is gone: no TTL to wait
    assert time.monotonic() - began < DEFAULT_TTL_S
    [taken] = events(a, "lease.taken_over", since=1)
    assert "process on this machine is gone" in taken["why"]
    assert await answers(client, a)

    assert a.stop() == 0
    assert events(a, "lease.released", since=1)
    a.start()
    assert events(a, "lease.claimed", since=2) and events(a, "lease.taken_over", since=2) == []
    assert await answers(client, a)


async def test_a_frozen_agents_id_is_taken_over_after_the_ttl_and_once_thawed_it_stops_with_2(
    make_agent: Any, client: AgentClient, tmp_path: Path
) -> None:
    """A frozen process (SIGSTOP: as a paused VM, or an agent cut off from NATS) is alive to this machine, so the
    newcomer cannot tell it is gone: it takes over once the lease goes a TTL without renewal."""
    ttl = 4.0
    extra = ["--ack-wait", "2", "--lease-ttl", f"{ttl:g}"]
    first = make_agent(extra=extra, host_id=f"frozen-{uuid.uuid4().hex[:6]}")
    second = make_agent(tmp_path / "second" / "agent", extra, start=False, host_id=first.host_id)
    first.signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        second.start(wait=False)
        await asyncio.to_thread(second.wait_ready, ttl + 30)
        took = time.monotonic() - began
        assert events(second, "lease.held") and events(second, "lease.taken_over")
        assert ttl <= took < ttl + 20, took
    finally:
        first.signal(signal.SIGCONT)
    assert second.proc is not None
    assert await asyncio.to_thread(first.wait, 60) == 2
    [fatal] = events(first, "agent.fatal")
    assert f"pid {second.proc.pid} on {socket.gethostname()}" in fatal["error"] and fatal["exit_code"] == 2
    assert await eventually(lambda: answers(client, second), 20, "the newcomer answers")
    assert second.proc.poll() is None

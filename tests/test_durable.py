"""Durable commands, idempotency across paths and restarts, events and the audit stream."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import Reply, Subjects
from volumectl.client import AgentClient, NoAgent

from .conftest import Host
from .identities import Identities
from .stack import Agent, Dockerd, NatsServer
from .test_events import eventually

pytestmark = pytest.mark.integration

SUBJECTS = Subjects("vol")
SERVICE = "volume-agent"


async def next_outcome(
    client: AgentClient, host: str, op: str, cmd_id: str, timeout: float = 20, *, until_ok: bool = False
) -> Reply:
    """The outcome of command `cmd_id` (with `until_ok`, its first success), from the audit stream."""
    js = client.nc.jetstream()
    sub = await js.subscribe(f"vol.res.{host}.{op}", ordered_consumer=True)
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                reply = msgspec.json.decode(msg.data, type=Reply)
                if reply.id == cmd_id and (reply.ok or not until_ok):
                    return reply
    finally:
        await sub.unsubscribe()


async def count_outcomes(client: AgentClient, host: str, op: str, cmd_id: str) -> int:
    """How many outcomes of `cmd_id` the audit stream holds, read to its last message on the subject now.

    The caller first waits for a marker that the agent is done with the command; this only reads.
    """
    js = client.nc.jetstream()
    subject = SUBJECTS.res(host, op)
    last = (await js.get_last_msg(SUBJECTS.stream_name("res"), subject)).seq
    sub = await js.subscribe(subject, ordered_consumer=True)
    n = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            n += msgspec.json.decode(msg.data, type=Reply).id == cmd_id
            if msg.metadata.sequence.stream >= last:
                return n
    finally:
        await sub.unsubscribe()


async def consumed(client: AgentClient, host: str, op: str, *, acked: bool = True, timeout: float = 20) -> None:
    """Until the agent's durable consumer has taken the last `op` command sent to `host`: acked it (it was
    handled to the end: outcome recorded and published, or found already recorded), or with `acked=False`
    only received it."""
    js = client.nc.jetstream()
    stream = SUBJECTS.cmd_stream
    seq = (await js.get_last_msg(stream, SUBJECTS.cmd(host, op))).seq

    async def taken() -> bool:
        info = await js.consumer_info(stream, SUBJECTS.consumer(host))
        got = info.ack_floor if acked else info.delivered
        return got is not None and got.stream_seq is not None and got.stream_seq >= seq

    await eventually(taken, timeout, f"the agent {'acking' if acked else 'receiving'} command {seq}")


async def redelivered(client: AgentClient, host: str, timeout: float = 30) -> None:
    """Until the agent's durable consumer has delivered a command again: an attempt came back for a retry."""
    js = client.nc.jetstream()

    async def again() -> bool:
        return (await js.consumer_info(SUBJECTS.cmd_stream, SUBJECTS.consumer(host))).num_redelivered > 0

    await eventually(again, timeout, f"a command of {host} delivered again")


async def logged(agent: Agent, event: str, timeout: float = 30) -> dict[str, Any]:
    """Until the agent's log has `event` (e.g. "agent.stopping"); its first such line."""

    async def line() -> dict[str, Any] | None:
        found = next((x for x in agent.log().splitlines() if f'"event":"{event}"' in x), None)
        return json.loads(found) if found else None

    return await eventually(line, timeout, f"{event} in the log of agent {agent.host_id}")


async def requests_taken(client: AgentClient, host: str) -> int:
    """Requests `host`'s agent has taken so far, from its micro service's stats (counted on arrival)."""
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish(f"$SRV.STATS.{SERVICE}", b"", reply=inbox)
    try:
        while True:
            stats = msgspec.json.decode((await sub.next_msg(timeout=5)).data)
            if stats["metadata"]["host"] == host:
                return sum(e["num_requests"] for e in stats["endpoints"] if e["name"] == "req")
    finally:
        await sub.unsubscribe()


async def test_durable_command_is_applied_and_its_outcome_is_on_the_audit_stream(host: Host) -> None:
    cmd_id = await host.client.command(host.id, "create", {"name": "durable1"})
    reply = await next_outcome(host.client, host.id, "create", cmd_id)
    assert reply.ok and reply.result["name"] == "durable1" and reply.host == host.id
    assert "durable1" in host.docker.docker("volume", "ls", "-q").split()


async def test_request_outcomes_are_published_on_the_audit_stream_too(host: Host) -> None:
    cmd_id = uuid.uuid4().hex
    code, _ = await host.error("remove", {"name": "ghost", "id": cmd_id})
    assert code == "not_found"
    reply = await next_outcome(host.client, host.id, "remove", cmd_id)
    assert reply.error is not None and reply.error.code == "not_found"


async def test_same_id_on_both_paths_is_applied_once_and_returns_the_stored_outcome(host: Host) -> None:
    cmd_id = f"idem-{uuid.uuid4().hex}"
    first = await host.req("create", {"name": "once", "id": cmd_id})
    assert first.ok
    host.docker.docker("volume", "rm", "once")  # if the agent applied it again, it would come back
    again = await host.req("create", {"name": "once", "id": cmd_id})
    assert again == first
    await host.client.command(host.id, "create", {"name": "once"}, cmd_id=cmd_id)
    await consumed(host.client, host.id, "create")
    assert "once" not in host.docker.docker("volume", "ls", "-q").split()
    # A replay is no new outcome: the stream holds the one outcome under this id.
    assert await count_outcomes(host.client, host.id, "create", cmd_id) == 1


async def test_an_id_reused_for_another_command_is_conflict(host: Host) -> None:
    cmd_id = f"reuse-{uuid.uuid4().hex}"
    assert (await host.req("create", {"name": "first1", "id": cmd_id})).ok
    code, msg = await host.error("create", {"name": "other1", "id": cmd_id})
    assert code == "conflict" and cmd_id in msg
    assert "other1" not in host.docker.docker("volume", "ls", "-q").split()


async def test_concurrent_duplicates_of_one_id_apply_once(host: Host) -> None:
    cmd_id = f"dup-{uuid.uuid4().hex}"
    replies = await asyncio.gather(*(host.req("create", {"name": "dup1", "id": cmd_id}) for _ in range(8)))
    assert all(r.ok for r in replies)
    assert len({r.result["created_at"] for r in replies}) == 1
    # A reply goes out before its outcome is published: wait for the outcome, then for a later command's,
    # which the agent publishes after anything the eight could still publish (one connection, in order).
    await next_outcome(host.client, host.id, "create", cmd_id)
    later = uuid.uuid4().hex
    assert (await host.req("create", {"name": "dup2", "id": later})).ok
    await next_outcome(host.client, host.id, "create", later)
    assert await count_outcomes(host.client, host.id, "create", cmd_id) == 1


async def test_expired_durable_command_is_not_applied_and_gets_expired(host: Host) -> None:
    cmd_id = await host.client.command(host.id, "create", {"name": "late1", "deadline": "2001-01-01T00:00:00Z"})
    reply = await next_outcome(host.client, host.id, "create", cmd_id)
    assert reply.error is not None and reply.error.code == "expired"
    assert "late1" not in host.docker.docker("volume", "ls", "-q").split()


async def test_invalid_durable_command_is_answered_invalid_on_the_audit_stream(host: Host) -> None:
    cmd_id = uuid.uuid4().hex
    await host.client.command(host.id, "create", b'{"name": 1}', cmd_id=cmd_id)
    reply = await next_outcome(host.client, host.id, "create", cmd_id)
    assert reply.error is not None and reply.error.code == "invalid"


async def test_volume_events_are_published_with_the_command_id(host: Host) -> None:
    sub = await host.client.nc.subscribe(f"vol.evt.{host.id}.>")
    cmd_id = uuid.uuid4().hex
    await host.ok("create", {"name": "ev1", "id": cmd_id})
    await host.ok("remove", {"name": "ev1"})
    created = await sub.next_msg(timeout=5)
    removed = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    assert created.subject == f"vol.evt.{host.id}.volume.created"
    assert msgspec.json.decode(created.data)["cmd_id"] == cmd_id
    assert removed.subject == f"vol.evt.{host.id}.volume.removed"
    assert msgspec.json.decode(removed.data)["volume"] == "ev1"


async def test_micro_service_is_discoverable_with_host_metadata(host: Host) -> None:
    inbox = host.client.nc.new_inbox()
    sub = await host.client.nc.subscribe(inbox)
    await host.client.nc.publish("$SRV.PING.volume-agent", b"", reply=inbox)
    try:
        while (pong := msgspec.json.decode((await sub.next_msg(timeout=5)).data))["metadata"]["host"] != host.id:
            pass  # another agent on this bus
    finally:
        await sub.unsubscribe()
    assert pong["name"] == "volume-agent" and pong["metadata"]["version"]


# Faults: a second agent of our own, so the shared one is not disturbed.


@pytest.fixture
def own_agent(make_agent) -> Agent:
    return make_agent(start=False)


async def test_command_published_while_the_agent_is_down_is_applied_when_it_starts(
    own_agent: Agent, client: AgentClient, dockerd: Dockerd
) -> None:
    own_agent.start()
    own_agent.stop()  # returns once the process has exited: nothing can apply the command now
    cmd_id = await client.command(own_agent.host_id, "create", {"name": "while-down"})
    assert "while-down" not in dockerd.docker("volume", "ls", "-q").split()
    own_agent.start()
    reply = await next_outcome(client, own_agent.host_id, "create", cmd_id)
    assert reply.ok
    assert "while-down" in dockerd.docker("volume", "ls", "-q").split()


async def test_idempotency_survives_an_agent_restart(own_agent: Agent, client: AgentClient, dockerd: Dockerd) -> None:
    own_agent.start()
    cmd_id = uuid.uuid4().hex
    first = await client.request(own_agent.host_id, "create", {"name": "restart1", "id": cmd_id})
    own_agent.stop()
    dockerd.docker("volume", "rm", "restart1")
    own_agent.start()
    again = await client.request(own_agent.host_id, "create", {"name": "restart1", "id": cmd_id})
    assert again == first
    assert "restart1" not in dockerd.docker("volume", "ls", "-q").split()


async def test_sigterm_during_a_command_lets_it_finish_replies_and_exits_zero(
    own_agent: Agent, client: AgentClient, dockerd: Dockerd
) -> None:
    own_agent.start()
    dockerd.pause()  # the create will hang inside Docker until we resume it
    try:
        pending = asyncio.create_task(client.request(own_agent.host_id, "create", {"name": "inflight"}, timeout=30))

        async def taken() -> bool:
            return await requests_taken(client, own_agent.host_id) >= 1

        await eventually(taken, 10, "the request reaching the agent")
        own_agent.signal(signal.SIGTERM)
        assert (await logged(own_agent, "agent.stopping"))["in_flight"] == 1
        # In the drain stage, waiting for the command (Docker is paused: it cannot have finished).
        assert (await logged(own_agent, "tasks.draining"))["running"] == 1
        assert own_agent.proc is not None and own_agent.proc.poll() is None, "exited before its command finished"
    finally:
        dockerd.resume()
    reply = await pending
    assert reply.ok and reply.result["name"] == "inflight"
    assert await asyncio.to_thread(own_agent.wait, 30) == 0
    assert "inflight" in dockerd.docker("volume", "ls", "-q").split()
    assert (await next_outcome(client, own_agent.host_id, "create", reply.id)).ok


async def test_agent_killed_mid_command_applies_it_after_restart(
    own_agent: Agent, client: AgentClient, dockerd: Dockerd
) -> None:
    own_agent.start()
    dockerd.pause()
    try:
        cmd_id = await client.command(own_agent.host_id, "create", {"name": "survivor"})
        await consumed(client, own_agent.host_id, "create", acked=False)  # delivered: in hand, not acked
        own_agent.signal(signal.SIGKILL)
        own_agent.wait(10)
    finally:
        dockerd.resume()
    own_agent.start()
    reply = await next_outcome(client, own_agent.host_id, "create", cmd_id, timeout=30)
    assert reply.ok
    assert "survivor" in dockerd.docker("volume", "ls", "-q").split()


async def test_docker_down_is_unavailable_and_the_agent_recovers_when_it_returns(
    nats_server: NatsServer, client: AgentClient, tmp_path: Path, identities: Identities,
    short_dir: Path,
) -> None:
    d = Dockerd(short_dir / "dk2").start()
    a = Agent("flaky", d.url, nats_server.url, tmp_path / "agent", auth=identities).start()
    try:
        d.stop()
        reply = await client.request("flaky", "list", {})
        assert reply.error is not None and reply.error.code == "unavailable"
        assert "unreachable" in reply.error.message and "Traceback" not in reply.error.message
        # A durable command meeting Docker down is retried, not recorded as failed.
        cmd_id = await client.command("flaky", "create", {"name": "later"})
        await redelivered(client, "flaky")  # attempted while Docker was down, and put back for a retry
        d.start()
        # Only the final outcome is on the audit stream: the unavailable attempts, retried, are not.
        reply = await next_outcome(client, "flaky", "create", cmd_id, timeout=30)
        assert reply.ok, reply.error
        assert "later" in d.docker("volume", "ls", "-q").split()
    finally:
        a.stop()
        d.stop()


async def test_stuck_docker_is_timeout(
    nats_server: NatsServer, client: AgentClient, tmp_path: Path, identities: Identities,
    short_dir: Path,
) -> None:
    d = Dockerd(short_dir / "dk3").start()
    a = Agent("stuck", d.url, nats_server.url, tmp_path / "agent", ["--docker-timeout", "1"],
              auth=identities).start()
    try:
        d.pause()
        reply = await client.request("stuck", "inspect", {"name": "any1"})
        assert reply.error is not None and reply.error.code == "timeout"
    finally:
        d.resume()
        a.stop()
        d.stop()


async def test_agent_started_before_docker_waits_and_says_so(
    nats_server: NatsServer, client: AgentClient, tmp_path: Path, identities: Identities,
    short_dir: Path,
) -> None:
    d = Dockerd(short_dir / "dk4")
    a = Agent("early", d.url, nats_server.url, tmp_path / "agent", auth=identities).start(wait=False)
    try:
        said = await logged(a, "docker.unreachable")
        assert said["url"] == d.url and "Traceback" not in a.log()
        d.start()
        await asyncio.to_thread(a.wait_ready, 40)
        assert (await client.request("early", "list", {})).ok
    finally:
        a.stop()
        d.stop()


async def test_agent_started_before_nats_says_so_and_connects_when_it_comes(
    dockerd: Dockerd, tmp_path: Path, identities: Identities
) -> None:
    late = identities.secure(NatsServer(tmp_path / "nats-late"))
    a = Agent("early-nats", dockerd.url, late.url, tmp_path / "agent", auth=identities).start(wait=False)
    try:
        said = await logged(a, "nats.unreachable")
        assert said["urls"] == [late.url] and "Traceback" not in a.log()
        late.start()
        await asyncio.to_thread(a.wait_ready, 60)
        c = await identities.connect([late.url])
        try:
            assert (await c.request("early-nats", "list", {})).ok
        finally:
            await c.close()
    finally:
        a.stop()
        late.stop()


async def test_agent_reconnects_after_the_nats_server_restarts(
    dockerd: Dockerd, tmp_path: Path, identities: Identities
) -> None:
    n = identities.secure(NatsServer(tmp_path / "nats")).start()
    a = Agent("reconnects", dockerd.url, n.url, tmp_path / "agent", auth=identities).start()
    try:
        n.stop()
        await logged(a, "nats.disconnected")

        async def attempts_failed() -> bool:  # each failed reconnect attempt is logged as a nats.error
            return a.log().split('"nats.disconnected"', 1)[1].count('"event":"nats.error"') >= 3

        await eventually(attempts_failed, 30, "three failed reconnect attempts")
        n.start()  # same port, same JetStream store
        c = await identities.connect([n.url])
        try:
            for _ in range(100):
                try:
                    if (await c.request("reconnects", "list", {}, timeout=1)).ok:
                        break
                except NoAgent:
                    await asyncio.sleep(0.2)
            else:
                raise AssertionError("the agent did not come back after the NATS restart")
            cmd_id = await c.command("reconnects", "create", {"name": "after-restart"})
            assert (await next_outcome(c, "reconnects", "create", cmd_id)).ok
        finally:
            await c.close()
    finally:
        a.stop()
        n.stop()
        dockerd.reset()

"""Generated messages on every subject and op, against a real agent on a real secured NATS server: whatever arrives
gets exactly one envelope, the agent stays up, and a valid signed durable command still applies after each batch.

`FUZZ_EXAMPLES` (default 20) sets how many batches run; docs/development.md has a longer run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from contracts import ERROR_CODES, FLEET_OPS, OPS, Reply
from contracts.auth import HEADER_KEY, HEADER_SIG, HEADER_TIME
from contracts.bounds import BoundedDecoder
from volumectl.client import AgentClient
from volumectl.signing import Signer, new_user_seed

from .identities import Identities
from .stack import Agent, NatsServer
from .test_durable import SUBJECTS
from .test_events import eventually

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
MAX_BODY = 65536
T = TypeVar("T")


@dataclass(frozen=True)
class Probe:
    path: str
    """req (vol.req.<host>.<op>), all (vol.all.<op>) or cmd (durable, vol.cmd.<host>.<op>)."""
    op: str
    body: bytes
    signing: str
    """none, valid, garbage (signature headers of random text) or stranger (a key the policy does not know)."""
    extra: dict[str, str]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from(["id", "name", "volume", "labels", "driver", "options", "deadline", "store", "backup_id",
                           "to", "filters", "force", "target", "compression", "encrypt_to", "keep", "mounts"])


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "fields", "deep", "huge", "bytes", "empty"]))
    if kind == "json":
        return msgspec.json.encode(draw(_json))
    if kind == "fields":  # close to a request: the op's own field names, values of any type
        return msgspec.json.encode(draw(st.dictionaries(_fields, _json, max_size=5)))
    if kind == "deep":
        depth = draw(st.integers(10, 30_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        tail = closer * depth if draw(st.booleans()) else b""  # closed or truncated
        return (b'{"labels":' + opener * depth + tail + b"}")[:MAX_BODY]
    if kind == "huge":
        return b'{"name": "' + b"x" * draw(st.integers(MAX_BODY - 20, MAX_BODY + 1000)) + b'"}'
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return b""


_header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)
_probes = st.builds(
    Probe,
    path=st.sampled_from(["req", "all", "cmd"]),
    op=st.sampled_from(sorted(OPS)) | st.sampled_from(["nope", "create.x", "policies-", "_"]),
    body=_bodies(),
    signing=st.sampled_from(["none", "valid", "garbage", "stranger"]),
    # Not NATS' own headers (Nats-Expected-*): those are JetStream's to refuse, before any agent sees the message.
    extra=st.dictionaries(st.from_regex(r"\AX-[A-Za-z0-9-]{0,15}\Z"), _header_text, max_size=2),
)


class _Loop:
    """An event loop in a thread of its own: hypothesis drives a synchronous test, the client is asynchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def fuzzed(make_agent: Any, nats_server: NatsServer, identities: Identities) -> Iterator[tuple[Agent, _Loop, Any]]:
    agent = make_agent(extra=["--ack-wait", "2", "--max-body", str(MAX_BODY)])
    runner = _Loop()
    client = runner.run(identities.connect([nats_server.url]))
    try:
        yield agent, runner, (client, Signer(new_user_seed()))
    finally:
        runner.run(client.close())
        runner.close()


async def _send(client: AgentClient, stranger: Any, host: str, probe: Probe) -> tuple[Probe, list[Reply] | str]:
    """One probe; the replies of this host (for req and all), or the command id (cmd)."""
    nc: Client = client.nc
    assert client.signer is not None
    if probe.path == "req":
        subject = f"vol.req.{host}.{probe.op}"
    elif probe.path == "all":
        subject = f"vol.all.{probe.op}"
    else:
        subject = f"vol.cmd.{host}.{probe.op}"
    msg_id = uuid.uuid4().hex if probe.path == "cmd" else None
    headers: dict[str, str] = dict(probe.extra)
    if probe.signing == "valid":
        headers |= client.signer.headers(subject, probe.body, msg_id)
    elif probe.signing == "stranger":
        headers |= stranger.headers(subject, probe.body, msg_id)
    elif probe.signing == "garbage":
        headers |= {HEADER_KEY: "U" + "A" * 55, HEADER_TIME: probe.extra.get("X", "12x"), HEADER_SIG: "%%%"}
    if msg_id is not None:
        headers["Nats-Msg-Id"] = msg_id
        await nc.jetstream().publish(subject, probe.body, headers=headers or None)
        return probe, msg_id
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.flush()
    replies: list[Reply] = []
    try:
        await nc.publish(subject, probe.body, reply=inbox, headers=headers or None)
        while not any(r.host == host for r in replies):
            msg = await sub.next_msg(timeout=30)
            reply = msgspec.json.decode(msg.data, type=Reply)  # an envelope, or this fails
            replies.append(reply)
    finally:
        await sub.unsubscribe()
    return probe, [r for r in replies if r.host == host]


class _Id(msgspec.Struct):
    id: Any = None


_ID = BoundedDecoder(_Id)


def _ids(probe: Probe, msg_id: str) -> set[str]:
    """The ids a durable probe's outcome may carry: its body's `id`, if it has a readable one, else its msg id."""
    try:
        given = _ID.decode(probe.body).id
    except msgspec.DecodeError:
        given = None
    return {msg_id, given} if isinstance(given, str) else {msg_id}


async def _outcome_of(client: AgentClient, host: str, op: str, ids: set[str]) -> Reply:
    sub = await client.nc.jetstream().subscribe(f"vol.res.{host}.{op}", ordered_consumer=True)
    try:
        while True:
            reply = msgspec.json.decode((await sub.next_msg(timeout=30)).data, type=Reply)
            if reply.id in ids:
                return reply
    finally:
        await sub.unsubscribe()


async def _batch(client: AgentClient, stranger: Any, host: str, probes: list[Probe]) -> None:
    results = await asyncio.gather(*(_send(client, stranger, host, p) for p in probes))
    for probe, got in results:
        if isinstance(got, str):
            continue
        assert len(got) == 1, (probe, got)  # exactly one envelope from this host
        _check(probe, got[0])
    # A valid signed durable command still applies, after everything the batch put in front of it.
    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    cmd_id = await client.command(host, "create", {"name": name})
    reply = await _outcome_of(client, host, "create", {cmd_id})
    assert reply.ok, reply.error
    for probe, got in results:  # every durable probe has its one outcome on the audit stream by now
        if isinstance(got, str) and probe.op in OPS:
            outcome = await _outcome_of(client, host, probe.op, _ids(probe, got))
            _check(probe, outcome)


def _check(probe: Probe, reply: Reply) -> None:
    assert reply.ok or (reply.error is not None and reply.error.code in ERROR_CODES), reply
    assert reply.error is None or reply.error.code != "internal", (probe, reply)
    if probe.signing != "valid":
        assert reply.error is not None and reply.error.code == "forbidden", (probe, reply)
    if probe.op not in OPS and probe.signing == "valid":
        assert reply.error is not None and reply.error.code == "invalid", (probe, reply)


def test_generated_messages_on_every_subject_get_one_envelope_and_the_agent_goes_on(
    fuzzed: tuple[Agent, _Loop, Any],
) -> None:
    agent, runner, (client, stranger) = fuzzed
    sent: list[Probe] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(_probes, min_size=1, max_size=8))
    def batch(probes: list[Probe]) -> None:
        # Fleet reads other than the agent's own ops go nowhere: ask only what agents answer on vol.all.
        probes = [p for p in probes if p.path != "all" or p.op in FLEET_OPS]
        runner.run(_batch(client, stranger, agent.host_id, probes), timeout=120)
        sent.extend(probes)
        assert agent.proc is not None and agent.proc.poll() is None, "the agent died"

    batch()
    print(f"fuzz: {len(sent)} messages in {EXAMPLES} batches:",
          {path: sum(p.path == path for p in sent) for path in ("req", "all", "cmd")})
    log = agent.log()
    assert "RecursionError" not in log and "loop_crashed" not in log and "command.crashed" not in log

    async def drained() -> bool:
        js = client.nc.jetstream()
        info = await js.consumer_info(SUBJECTS.cmd_stream, SUBJECTS.consumer(agent.host_id))
        return info.num_pending == 0 and info.num_ack_pending == 0

    runner.run(eventually(drained, 30, "every durable command acked or terminated"))

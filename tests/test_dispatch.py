"""The dispatcher's rules, with fakes behind the seams: idempotency, deadlines, errors, serialization."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from agent.auth.policy import Policy, VolumesPolicy
from agent.auth.rules import Rules
from agent.causes import Causes
from agent.dispatch import Dispatcher, Outcome
from agent.errors import Conflict, Unavailable
from agent.locks import KeyedLocks
from agent.tasks import Tasks
from agent.volumes import Volumes
from contracts import BackupRecord, CreateRequest, Reply

from .fakes import FakeEngine, MemoryOutcomes, RecordingSink, TrustAll, fake_handlers

pytestmark = pytest.mark.timeout(10)


def make(max_body: int = 4096) -> tuple[Dispatcher, FakeEngine, RecordingSink, MemoryOutcomes]:
    engine, sink, outcomes = FakeEngine(), RecordingSink(), MemoryOutcomes()
    dispatcher = Dispatcher("h1", fake_handlers(engine, sink), outcomes, sink, Tasks(8), TrustAll(),
                            max_body=max_body)
    return dispatcher, engine, sink, outcomes


def reply(outcome_bytes: bytes) -> Reply:
    return msgspec.json.decode(outcome_bytes, type=Reply)


async def test_a_repeated_id_is_applied_once_and_answered_with_the_stored_outcome() -> None:
    d, engine, sink, _ = make()
    first = await d.execute("create", b'{"name": "v1", "id": "k1"}')
    del engine.volumes["v1"]
    second = await d.execute("create", b'{"name": "v1", "id": "k1"}')
    assert second.reply == first.reply
    assert engine.calls.count("create:v1") == 1 and "v1" not in engine.volumes
    assert len(sink.results) == 1


async def test_the_durable_message_id_names_a_command_without_an_id() -> None:
    d, engine, _, _ = make()
    first = await d.execute("create", b'{"name": "v1"}', fallback_id="m1")
    assert reply(first.reply).id == "m1"
    await d.execute("create", b'{"name": "v1"}', fallback_id="m1")
    assert engine.calls.count("create:v1") == 1


async def test_reusing_an_id_for_another_body_is_conflict_and_not_applied() -> None:
    d, engine, _, _ = make()
    await d.execute("create", b'{"name": "v1", "id": "k1"}')
    out = await d.execute("create", b'{"name": "v2", "id": "k1"}')
    assert out.error is not None and out.error.code == "conflict"
    assert "v2" not in engine.volumes


async def test_label_order_does_not_make_a_retry_look_like_another_command() -> None:
    d, _, _, _ = make()
    await d.execute("create", b'{"name": "v1", "id": "k1", "labels": {"a": "1", "b": "2"}}')
    out = await d.execute("create", b'{"labels": {"b": "2", "a": "1"}, "id": "k1", "name": "v1"}')
    assert out.error is None


async def test_transient_failures_are_not_stored_so_a_retry_is_applied() -> None:
    d, engine, _, outcomes = make()
    engine.fail_with = Unavailable("Docker Engine is unreachable.")
    out = await d.execute("create", b'{"name": "v1", "id": "k1"}')
    assert out.retry and not out.final and out.error is not None and out.error.code == "unavailable"
    assert outcomes.items == {}
    engine.fail_with = None
    assert (await d.execute("create", b'{"name": "v1", "id": "k1"}')).error is None
    assert "v1" in engine.volumes


async def test_an_unexpected_exception_is_internal_without_a_python_repr_and_is_logged() -> None:
    d, engine, _, _ = make()
    engine.fail_with = ZeroDivisionError("boom")
    with capture_logs(processors=[merge_contextvars]) as logs:
        out = await d.execute("create", b'{"name": "v1", "id": "k1"}')
    assert out.error is not None and out.error.code == "internal"
    assert "boom" not in out.error.message and "ZeroDivisionError" not in out.error.message
    assert "k1" in out.error.message
    crash = [e for e in logs if e["event"] == "command.crashed"]
    assert crash and crash[0]["cmd_id"] == "k1" and crash[0]["op"] == "create" and crash[0]["volume"] == "v1"


async def test_a_passed_deadline_is_expired_and_not_applied() -> None:
    d, engine, _, _ = make()
    out = await d.execute("create", b'{"name": "v1", "deadline": "2001-01-01T00:00:00Z"}')
    assert out.error is not None and out.error.code == "expired"
    assert engine.calls == []


async def test_reads_are_not_deduplicated_and_published_without_waiting_for_jetstream() -> None:
    d, engine, sink, _ = make()
    await d.execute("create", b'{"name": "v1"}')
    await d.execute("inspect", b'{"name": "v1", "id": "r1"}')
    engine.volumes["v1"]["Labels"] = {"changed": "yes"}
    out = await d.execute("inspect", b'{"name": "v1", "id": "r1"}')
    assert reply(out.reply).result["labels"] == {"changed": "yes"}
    assert [durable for op, _, durable in sink.results if op == "inspect"] == [False, False]


async def test_body_over_the_limit_is_invalid() -> None:
    d, _, _, _ = make(max_body=64)
    out = await d.execute("create", b'{"name": "v1", "labels": {"k": "' + b"v" * 100 + b'"}}')
    assert out.error is not None and out.error.code == "invalid" and "limit of 64" in out.error.message


async def test_operations_on_one_volume_are_serialized_and_others_are_not_blocked() -> None:
    d, engine, _, _ = make()
    engine.gate = asyncio.Event()
    create = asyncio.create_task(d.execute("create", b'{"name": "v1"}'))
    await engine.reached("create:v1")  # the create holds v1's lock, stopped at the gate
    remove = asyncio.create_task(d.execute("remove", b'{"name": "v1"}'))
    other = await asyncio.wait_for(d.execute("inspect", b'{"name": "nope1"}'), 1)
    assert other.error is not None and other.error.code == "not_found"  # answered while v1 is busy
    engine.gate.set()
    assert (await create).error is None
    # The remove found v1, so it waited for the create: before it, v1 did not exist and it was not_found.
    assert (await remove).error is None
    assert engine.calls.index("create:v1") < engine.calls.index("remove:v1") == len(engine.calls) - 1


async def test_concurrent_duplicates_share_one_application() -> None:
    d, engine, _, _ = make()
    engine.gate = asyncio.Event()
    cmd = b'{"name": "v1", "id": "same"}'
    tasks = [asyncio.create_task(d.execute("create", cmd)) for _ in range(5)]
    await engine.reached("create:v1")  # the first is applying; the others started with it and wait on it
    engine.gate.set()
    outs = await asyncio.gather(*tasks)
    assert len({o.reply for o in outs}) == 1
    assert engine.calls.count("create:v1") == 1


async def test_interrupted_reply_keeps_the_callers_id() -> None:
    d, _, _, _ = make()
    out = d.interrupted("create", b'{"name": "v1", "id": "mine"}')
    r = reply(out.reply)
    assert r.id == "mine" and r.error is not None and r.error.code == "unavailable"


async def test_keyed_locks_forget_keys_nobody_holds() -> None:
    locks = KeyedLocks()
    async with locks.hold_all(["b", "a", "b"]):
        assert len(locks) == 2
    assert len(locks) == 0


async def test_ids_are_generated_when_absent_and_unique() -> None:
    d, _, _, _ = make()
    ids = {reply((await d.execute("list", b"")).reply).id for _ in range(3)}
    assert len(ids) == 3 and all(uuid.UUID(i) for i in ids)


async def test_an_id_reused_while_the_first_command_still_runs_is_conflict() -> None:
    d, engine, _, _ = make()
    engine.gate = asyncio.Event()
    first = asyncio.create_task(d.execute("create", b'{"name": "v1", "id": "k1"}'))
    await engine.reached("create:v1")  # k1 is being applied
    other = await asyncio.wait_for(d.execute("create", b'{"name": "v2", "id": "k1"}'), 1)
    assert other.error is not None and other.error.code == "conflict"
    engine.gate.set()
    assert (await first).error is None
    assert "v2" not in engine.volumes


async def test_a_reuse_conflict_is_published_but_never_replaces_the_stored_outcome() -> None:
    d, _, sink, _ = make()
    first = await d.execute("create", b'{"name": "v1", "id": "k1"}')
    refused = await d.execute("create", b'{"name": "v2", "id": "k1"}')
    assert refused.error is not None and refused.error.code == "conflict"
    assert [r for _, r, _ in sink.results][-1] == refused.reply  # the refusal is on the audit stream
    again = await d.execute("create", b'{"name": "v1", "id": "k1"}')
    assert again.reply == first.reply


class FlakySink(RecordingSink):
    """A ResultSink that fails as NATS does past a leader election while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def result(self, op: str, reply: bytes, *, durable: bool) -> None:
        if self.down:
            raise Unavailable("NATS failed while publishing the outcome: NoStreamResponseError.")
        await super().result(op, reply, durable=durable)


def durable(outcome: Outcome) -> bool:
    """The durable path's decision for a delivery that is not the last one: transient outcomes come again."""
    return outcome.retry


async def test_on_the_durable_path_only_final_outcomes_are_published() -> None:
    d, engine, sink, _ = make()
    engine.fail_with = Unavailable("Docker Engine is unreachable.")
    out = await d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable)
    assert out.retry and out.published and sink.results == []
    engine.fail_with = None
    out = await d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable)
    assert out.error is None and [r for _, r, _ in sink.results] == [out.reply]
    # The last delivery's transient outcome is final: published.
    engine.fail_with = Unavailable("Docker Engine is unreachable.")
    out = await d.execute("create", b'{"name": "v2", "id": "k2"}', redelivers=lambda _: False)
    assert out.retry and [r for _, r, _ in sink.results][-1] == out.reply


async def test_a_durable_command_whose_outcome_is_recorded_publishes_it_again() -> None:
    d, engine, sink, _ = make()
    first = await d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable)
    again = await d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable)
    assert again.reply == first.reply and again.published
    assert [r for _, r, _ in sink.results] == [first.reply, first.reply]  # the stream keeps one (Nats-Msg-Id)
    assert engine.calls.count("create:v1") == 1


async def test_an_outcome_nats_will_not_take_is_recorded_and_reported_unpublished() -> None:
    engine, sink, outcomes = FakeEngine(), FlakySink(), MemoryOutcomes()
    d = Dispatcher("h1", fake_handlers(engine, sink), outcomes, sink, Tasks(8), TrustAll(), max_body=4096)
    sink.down = True
    out = await d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable)
    assert out.error is None and not out.published
    assert len(outcomes.items) == 1 and sink.results == []  # recorded all the same
    sink.down = False
    again = await d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable)
    assert again.published and [r for _, r, _ in sink.results] == [out.reply]
    assert engine.calls.count("create:v1") == 1


async def test_a_durable_duplicate_of_a_running_command_leaves_the_ack_to_a_later_delivery() -> None:
    d, engine, sink, _ = make()
    engine.gate = asyncio.Event()
    first = asyncio.create_task(d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable))
    await asyncio.sleep(0.01)
    dup = asyncio.create_task(d.execute("create", b'{"name": "v1", "id": "k1"}', redelivers=durable))
    await asyncio.sleep(0.01)
    engine.gate.set()
    assert (await first).published
    assert not (await dup).published and (await dup).reply == (await first).reply
    assert len(sink.results) == 1


class CutShort(FakeEngine):
    """Docker 20.10 going down mid-create: it makes the volume, loses its labels, answers "database not open"."""

    def __init__(self) -> None:
        super().__init__()
        self.going_down = True

    async def volume_create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        if self.going_down:
            self.going_down = False
            await super().volume_create({**spec, "Labels": {}})
            raise Unavailable(f"Docker Engine is not ready for volume {spec['Name']!r}: create v1: database not open.")
        return await super().volume_create(spec)


async def test_a_create_docker_cut_short_going_down_is_made_again_whole_when_retried() -> None:
    engine, sink, outcomes = CutShort(), RecordingSink(), MemoryOutcomes()
    d = Dispatcher("h1", fake_handlers(engine, sink), outcomes, sink, Tasks(8), TrustAll(), max_body=4096)
    cmd = b'{"name": "v1", "id": "k1", "labels": {"team": "db"}}'
    assert (await d.execute("create", cmd, redelivers=durable)).retry
    assert engine.volumes["v1"]["Labels"] == {}  # what Docker left
    out = await d.execute("create", cmd, redelivers=durable)
    assert out.error is None and reply(out.reply).result["labels"] == {"team": "db"}
    assert engine.volumes["v1"]["Labels"] == {"team": "db"}


async def test_an_unlabelled_volume_the_agent_did_not_make_is_still_conflict() -> None:
    d, engine, _, _ = make()
    await engine.volume_create({"Name": "v1"})  # someone's own `docker volume create v1`
    out = await d.execute("create", b'{"name": "v1", "labels": {"team": "db"}}')
    assert out.error is not None and out.error.code == "conflict"
    assert "remove:v1" not in engine.calls


class MadeNow(FakeEngine):
    """Docker's `CreatedAt` as it is: the second a volume was made."""

    async def volume_create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        fresh = spec["Name"] not in self.volumes
        v = await super().volume_create(spec)
        if fresh:
            v["CreatedAt"] = datetime.now(UTC).isoformat(timespec="seconds")
        return v


def volumes_over(engine: FakeEngine, drivers: tuple[str, ...] = ("local",)) -> Volumes:
    rules = Rules(Policy(volumes=VolumesPolicy(drivers=list(drivers))), "policy.toml")
    return Volumes(engine, KeyedLocks(), Causes(), rules, final_backup=no_backup)


async def no_backup(name: str) -> BackupRecord:
    raise AssertionError("no backup is asked for")


async def test_a_create_asks_docker_once_and_a_volume_made_now_has_no_users() -> None:
    engine = MadeNow()
    rec = await volumes_over(engine).create(CreateRequest(name="v1", labels={"team": "db"}))
    assert engine.calls == ["create:v1"] and rec.used_by == [] and rec.labels == {"team": "db"}


async def test_a_create_that_finds_the_volume_lists_its_users_and_refuses_another_spec() -> None:
    engine = FakeEngine()  # its volumes were made in 2026's first second: long before this create
    await engine.volume_create({"Name": "v1", "Labels": {"team": "db"}})
    engine.add_container("db", ["v1"])
    volumes = volumes_over(engine)
    rec = await volumes.create(CreateRequest(name="v1", labels={"team": "db"}))
    assert [u.container for u in rec.used_by] == ["db"]
    with pytest.raises(Conflict, match="already exists with other labels"):
        await volumes.create(CreateRequest(name="v1", labels={"team": "web"}))


async def test_a_volume_of_another_driver_is_conflict_naming_the_driver_as_before() -> None:
    engine = FakeEngine()
    await engine.volume_create({"Name": "v1", "Driver": "rclone"})
    with pytest.raises(Conflict, match="already exists with other driver 'rclone'"):
        await volumes_over(engine, ("local", "rclone")).create(CreateRequest(name="v1"))


async def test_a_managed_plugin_named_with_its_tag_is_the_same_driver() -> None:
    engine = FakeEngine()
    await engine.volume_create({"Name": "v1", "Driver": "sshfs:latest"})
    engine.volumes["v1"]["Driver"] = "sshfs:latest"
    rec = await volumes_over(engine, ("sshfs",)).create(CreateRequest(name="v1", driver="sshfs"))
    assert rec.driver == "sshfs:latest"

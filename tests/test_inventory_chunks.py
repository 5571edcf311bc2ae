"""The inventory in chunks, over fakes: the codec and `assemble`, which chunks a change writes, the layout, the
value old readers find under `<host>`, the `inventory` op by chunk, and a read reply too large for NATS."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.backup.stores import Stores
from agent.dispatch import Dispatcher
from agent.errors import Invalid
from agent.events.chunks import Chunks, layout
from agent.events.inventory import Inventory
from agent.tasks import Tasks
from contracts import (
    EngineInfo,
    IncompleteInventory,
    InventoryChunk,
    InventoryHead,
    InventoryRequest,
    InventorySnapshot,
    InventoryVolume,
    assemble,
    chunk_key,
    chunk_of,
    head_key,
)

from .fakes import FakeEngine, MemoryOutcomes, MemoryStore, RecordingSink, TrustAll

HOST = "h1"


class CountingEngine(FakeEngine):
    """Counts the full lists: a change of one volume must not need one."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    async def volume_list(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        self.lists += 1
        return await super().volume_list(filters)


def inventory(engine: FakeEngine, sink: RecordingSink, per_chunk: int = 4) -> Inventory:
    return Inventory(engine, Stores(MemoryStore("local", Path("/nonexistent"))), sink, HOST, heartbeat_s=60,
                     sizes_every_s=0, per_chunk=per_chunk)


async def engine_with(n: int, engine: FakeEngine | None = None) -> FakeEngine:
    engine = engine or CountingEngine()
    for i in range(n):
        await engine.volume_create({"Name": f"v{i:03d}", "Labels": {"i": str(i)}})
    return engine


def volume_event(action: str, name: str) -> dict[str, Any]:
    return {"Type": "volume", "Action": action, "Actor": {"ID": name}}


def names(sink: RecordingSink) -> list[str]:
    [snapshot] = sink.snapshots()
    return [v.name for v in snapshot.volumes]


def test_a_volumes_chunk_is_a_stable_hash_and_the_layout_has_hysteresis() -> None:
    # crc32: the same on every host, every run and every Python (hash() is salted per process).
    assert [chunk_of("web-data", 64), chunk_of("redis", 64), chunk_of("redis", 1), chunk_of("", 8)] == [57, 23, 0, 0]
    assert [layout(c, 1, 512) for c in (0, 512, 513, 1024, 1025, 20_000)] == [1, 1, 2, 2, 4, 64]
    assert layout(20_000, 64, 512) == 64
    assert layout(8_192, 64, 512) == 64  # a quarter of 64 x 512: not yet smaller
    assert layout(8_191, 64, 512) == 32


async def test_every_chunk_then_the_head_are_written_and_assemble_gives_the_whole_host() -> None:
    engine, sink = await engine_with(30), RecordingSink()
    inv = inventory(engine, sink)
    plan = await inv.publish()
    assert plan.n == 8  # 30 volumes, 4 a chunk on average at most
    chunk_keys = {chunk_key(HOST, i) for i in range(8)}
    assert [set(p) for p in sink.puts] == [chunk_keys, {head_key(HOST), HOST}]  # the chunks, then the head
    assert names(sink) == sorted(engine.volumes)
    head = msgspec.json.decode(sink.bucket[head_key(HOST)], type=InventoryHead)
    assert head.volume_count == 30 and sum(r.volumes for r in head.chunks) == 30
    for ref in head.chunks:
        chunk = msgspec.json.decode(sink.bucket[chunk_key(HOST, ref.index)], type=InventoryChunk)
        assert all(chunk_of(v.name, 8) == ref.index for v in chunk.volumes)


async def test_a_change_of_one_volume_looks_at_it_alone_and_writes_its_chunk_and_the_head() -> None:
    engine, sink = await engine_with(30), RecordingSink()
    inv = inventory(engine, sink)
    await inv.publish()
    lists, puts = engine.lists, len(sink.puts)

    await engine.volume_create({"Name": "new1"})
    await inv.on_docker_event(volume_event("create", "new1"))
    await inv.publish()
    assert sink.puts[puts:] == [[chunk_key(HOST, chunk_of("new1", 8))], [head_key(HOST)]]
    assert "new1" in names(sink) and "inspect:new1" in engine.calls and engine.lists == lists

    del engine.volumes["v007"]
    await inv.on_docker_event(volume_event("destroy", "v007"))
    await inv.publish()
    assert sink.puts[puts + 2:] == [[chunk_key(HOST, chunk_of("v007", 8))], [head_key(HOST)]]
    assert "v007" not in names(sink) and engine.lists == lists

    # A container that starts using a volume: the containers are listed again, the volumes are not.
    engine.add_container("db", ["v003"])
    await inv.on_docker_event({"Type": "container", "Action": "start", "Actor": {"ID": "db-id"}})
    await inv.publish()
    assert sink.puts[puts + 4:] == [[chunk_key(HOST, chunk_of("v003", 8))], [head_key(HOST)]]
    [snapshot] = sink.snapshots()
    assert [u.container for u in next(v for v in snapshot.volumes if v.name == "v003").used_by] == ["db"]

    # Nothing changed: the head alone (a heartbeat), and the heartbeat lists every volume again.
    await inv.publish(relist=True)
    assert sink.puts[puts + 6:] == [[head_key(HOST)]] and engine.lists == lists + 1


async def test_a_host_that_grows_past_its_layout_is_written_again_and_old_chunks_are_removed() -> None:
    engine, sink = await engine_with(30), RecordingSink()
    inv = inventory(engine, sink)
    await inv.publish()
    await engine_with(70, engine)  # v030 .. v069 more: 70 volumes, 32 chunks
    await inv.publish(relist=True)
    assert inv.chunks.n == 32 and len(sink.puts[-2]) == 32
    assert len(names(sink)) == 70
    for name in list(engine.volumes)[5:]:  # 5 left: fewer than a quarter of 4 a chunk, down to 4 chunks
        del engine.volumes[name]
    await inv.publish(relist=True)
    assert inv.chunks.n == 4 and names(sink) == ["v000", "v001", "v002", "v003", "v004"]
    assert sorted(k for k in sink.bucket if ".chunk." in k) == [chunk_key(HOST, i) for i in range(4)]


async def test_a_restarted_agent_goes_on_from_the_last_head_and_removes_the_chunks_it_no_longer_has() -> None:
    engine, sink = await engine_with(30), RecordingSink()
    await inventory(engine, sink).publish()  # 8 chunks, seq 1
    for name in list(engine.volumes)[4:]:
        del engine.volumes[name]
    again = inventory(engine, sink)
    await again._continue_from_last_run()
    plan = await again.publish()
    assert plan.seq == 2 and plan.n == 1
    assert [k for k in sink.bucket if ".chunk." in k] == [chunk_key(HOST, 0)]
    assert names(sink) == ["v000", "v001", "v002", "v003"]


async def test_an_old_reader_reads_a_one_chunk_host_whole_and_fails_on_a_bigger_one_saying_why() -> None:
    """Readers before contract 2.2 read `<host>` as an InventorySnapshot, strictly."""
    old_reader = msgspec.json.Decoder(InventorySnapshot)
    engine, sink = await engine_with(3), RecordingSink()
    inv = inventory(engine, sink)
    await inv.publish()
    assert [v.name for v in old_reader.decode(sink.bucket[HOST]).volumes] == ["v000", "v001", "v002"]
    await engine_with(30, engine)
    await inv.publish(relist=True)
    with pytest.raises(msgspec.ValidationError, match="unknown field `inventory_in_chunks`"):
        old_reader.decode(sink.bucket[HOST])
    assert len(names(sink)) == 30  # a new reader reads the chunks
    puts = len(sink.puts)
    await inv.publish(relist=True)
    assert sink.puts[puts:] == [[head_key(HOST)]]  # the pointer is written once


def _chunk(index: int, n: int, seq: int, *vols: str) -> bytes:
    volumes = [InventoryVolume(name=v, driver="local", labels={}, options={}, mountpoint="", created_at="",
                               used_by=[], last_backup=None) for v in vols]
    return msgspec.json.encode(InventoryChunk(host=HOST, seq=seq, index=index, chunks=n, volumes=volumes))


async def test_a_read_that_meets_a_chunk_older_than_its_head_or_of_another_layout_is_incomplete() -> None:
    engine, sink = await engine_with(2), RecordingSink()
    await inventory(engine, sink).publish()
    head = msgspec.json.decode(sink.bucket[head_key(HOST)], type=InventoryHead)
    refs = [msgspec.structs.replace(head.chunks[0], index=i, seq=5) for i in range(2)]
    bucket = {head_key(HOST): msgspec.json.encode(msgspec.structs.replace(head, chunks=refs, seq=5)),
              "other": msgspec.json.encode(msgspec.json.decode(sink.bucket[HOST], type=InventorySnapshot)
                                           ).replace(b'"h1"', b'"other"', 1)}
    assert [s.host for s in assemble({**bucket, chunk_key(HOST, 0): _chunk(0, 2, 5, "a"),
                                      chunk_key(HOST, 1): _chunk(1, 2, 6, "b")})] == [HOST, "other"]
    for torn in ({chunk_key(HOST, 0): _chunk(0, 2, 5, "a")},  # a chunk missing
                 {chunk_key(HOST, 0): _chunk(0, 2, 5, "a"), chunk_key(HOST, 1): _chunk(1, 2, 4, "b")},  # older
                 {chunk_key(HOST, 0): _chunk(0, 4, 6, "a"), chunk_key(HOST, 1): _chunk(1, 4, 6, "b")}):  # layout
        with pytest.raises(IncompleteInventory, match="h1 was being written"):
            assemble({**bucket, **torn})
    with pytest.raises(ValueError, match=r"'h1\.chunk\.1' is not valid"):
        assemble({**bucket, chunk_key(HOST, 0): _chunk(0, 2, 5, "a"), chunk_key(HOST, 1): b"[" * 10})


async def test_the_inventory_op_answers_chunk_by_chunk_and_refuses_a_chunk_that_is_not_there() -> None:
    engine, sink = await engine_with(30), RecordingSink()
    inv = inventory(engine, sink)
    first = await inv.snapshot(InventoryRequest(chunk=0))
    assert first.chunks == 8 and first.chunk == 0
    pages = [first] + [await inv.snapshot(InventoryRequest(chunk=i)) for i in range(1, 8)]
    assert sorted(v.name for p in pages for v in p.volumes) == sorted(engine.volumes)
    whole = await inv.snapshot()
    assert whole.chunks is None and len(whole.volumes) == 30
    assert b'"chunks"' not in inv.encode(whole)  # a reader before 2.2 reads the whole reply as before
    with pytest.raises(Invalid, match="has 8 chunk"):
        await inv.snapshot(InventoryRequest(chunk=8))


async def test_a_read_reply_too_large_for_nats_is_refused_with_a_sentence_never_dropped() -> None:
    engine, sink = await engine_with(30), RecordingSink()
    handlers = {"inventory": inventory(engine, sink).snapshot}
    d = Dispatcher(HOST, handlers, MemoryOutcomes(), sink, Tasks(4), TrustAll(), max_body=1 << 20, max_reply=4096)
    out = await d.execute("inventory", b"{}", new_id="x")
    assert out.error is not None and out.error.code == "invalid"
    assert "over the NATS server's max payload of 4,096" in out.error.message and "chunk by chunk" in out.error.message
    out = await d.execute("inventory", b'{"chunk": 3}', new_id="y")
    assert out.error is None and len(out.reply) < 4096


def test_a_chunk_larger_than_the_byte_limit_makes_the_layout_finer() -> None:
    chunks = Chunks(HOST, per_chunk=512, max_bytes=2000)
    volumes = [InventoryVolume(name=f"v{i:03d}", driver="local", labels={"x": "y" * 100}, options={},
                               mountpoint="", created_at="", used_by=[], last_backup=None) for i in range(40)]
    plan = chunks.plan(volumes, 1)
    assert plan.n > 1 and all(len(data) <= 2000 for data in plan.chunks.values())
    assert sum(len(g) for g in plan.groups) == 40


def test_one_hosts_unreadable_value_is_left_out_with_why_not_the_fleet() -> None:
    """An agent may write anything under its own keys: a value nested past any parser, or garbage, hides that host
    (said) and no other; without `unreadable`, the reader is told by an error, never a partial table silently."""
    good = msgspec.json.encode(InventorySnapshot(
        host="ok1", agent_version="x", engine=EngineInfo("20.10", "1.41", "overlay2"), volumes=[], plugins=[],
        taken_at="2026-12-05T00:00:00+00:00", seq=1, heartbeat_s=30))
    values = {"ok1": good, "deep": b"[" * 50_000 + b"]" * 50_000, "junk": b"\xff not json",
              "bad.head": b'{"host": 5}'}
    unreadable: list[str] = []
    snapshots = assemble(values, unreadable)
    assert [s.host for s in snapshots] == ["ok1"]
    assert len(unreadable) == 3 and any("nests deeper than 32" in u for u in unreadable), unreadable
    assert all(u.startswith("Host ") for u in unreadable)
    with pytest.raises(ValueError, match="is not valid"):
        assemble(values)

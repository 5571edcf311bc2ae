"""Unit tests of the logic behind events and the fleet: labels, the event cursor, causes, the inventory, the
fleet view. Small fakes; the integration tests run the real thing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import structlog

from agent.causes import Causes
from agent.errors import Invalid
from agent.events import inventory as inventory_module
from agent.events.onstop import options_from_labels
from agent.events.watch import Cursor
from contracts import BackupRecord, InventoryHead, InventorySnapshot
from volumectl.fleet import fleet_rows, is_stale, unprotected

from .fakes import HEARTBEAT_S, FakeEngine, MemoryStore, RecordingSink, fake_agent, run_in_virtual_time

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_labels_pick_a_subset_and_options() -> None:
    labels = {"volume-agent.backup.volumes": "a, c", "volume-agent.backup.keep": "3",
              "volume-agent.backup.compression": "gzip", "volume-agent.backup.store": "nats"}
    volumes, options = options_from_labels(labels, ["a", "b", "c"])
    assert volumes == ["a", "c"] and options == {"keep": 3, "compression": "gzip", "store": "nats"}
    assert options_from_labels({}, ["a", "b"]) == (["a", "b"], {})


@pytest.mark.parametrize(("labels", "words"), [
    ({"volume-agent.backup.volumes": "a,zz"}, "does not mount: zz"),
    ({"volume-agent.backup.keep": "many"}, "keep"),
    ({"volume-agent.backup.keep": "0"}, "keep"),
    ({"volume-agent.backup.compression": "lz4"}, "compression"),
    ({"volume-agent.backup.store": "s3 bucket"}, "store"),
])
def test_bad_labels_are_refused_with_a_sentence(labels: dict[str, str], words: str) -> None:
    with pytest.raises(Invalid, match=words):
        options_from_labels(labels, ["a"])


def _evt(ns: int, action: str = "die", cid: str = "c1") -> dict[str, object]:
    return {"timeNano": ns, "Action": action, "id": cid}


def test_the_cursor_drops_repeats_and_resumes_before_work_in_flight(tmp_path: Path) -> None:
    c = Cursor(tmp_path / "cursor")
    assert c.is_new(_evt(100)) and c.is_new(_evt(100, "destroy")) and c.is_new(_evt(200))
    assert not c.is_new(_evt(100)) and not c.is_new(_evt(200)) and not c.is_new(_evt(50))
    c.hold(100)
    assert Cursor(tmp_path / "cursor").last == 100  # a restart replays the held event
    c.release(100)
    assert Cursor(tmp_path / "cursor").last == 200
    assert c.since() == "0.000000200"


def test_causes_credit_the_command_and_are_taken_once() -> None:
    causes = Causes()
    with structlog.contextvars.bound_contextvars(cmd_id="cmd-1"):
        causes.note("volume.created", "v1")
    assert causes.take("volume.created", "v1") == (True, "cmd-1")
    assert causes.take("volume.created", "v1") == (False, None)
    assert causes.take("stop", "c9") == (False, None)


def _record(volume: str, created_at: str, host: str = "h1") -> BackupRecord:
    return BackupRecord(backup_id=f"{volume}.{created_at}", volume=volume, host=host, trigger="request", size=1,
                        stored_size=1, sha256="0" * 64, compression="none", store="local", location="/x",
                        created_at=created_at, duration_s=0.1, stopped_containers=[])


def test_the_inventory_publishes_one_snapshot_per_burst_at_most_once_a_second_and_a_heartbeat() -> None:
    """On a virtual clock (tests/fakes.py VirtualClockLoop): each snapshot's time is exact, so "no other
    snapshot came in between" is a fact of the schedule, not a hope after a real sleep."""
    d, m = inventory_module.DEBOUNCE_S, inventory_module.MIN_INTERVAL_S
    burst_at = 5.0  # five changes within the debounce of the first: one snapshot
    burst_published = burst_at + d
    late_change_at = burst_published + d / 10  # waits out the minimum interval, then the debounce
    late_published = burst_published + m + d
    heartbeat_published = late_published + m + HEARTBEAT_S  # nothing changes: the heartbeat
    published: list[tuple[float, int]] = []

    class TimedSink(RecordingSink):
        async def inventory_put(self, values: Mapping[str, bytes]) -> None:
            await super().inventory_put(values)
            if "h1.head" in values:
                published.append((_loop_time(), msgspec.json.decode(values["h1.head"], type=InventoryHead).seq))

    async def until(t: float) -> None:
        await asyncio.sleep(t - _loop_time())

    async def scenario() -> None:
        engine = FakeEngine()
        inv = fake_agent(engine, TimedSink(), MemoryStore("local", Path("/nonexistent"))).inventory
        await engine.volume_create({"Name": "v1"})
        await inv.on_resync()
        await inv.start()  # a first snapshot, debounced like any change
        await until(burst_at)
        for i in range(5):
            await until(burst_at + i * d / 6)
            inv.changed()
        await until(late_change_at)
        inv.changed()
        await until(heartbeat_published + HEARTBEAT_S / 2)
        await inv.stop()

    run_in_virtual_time(scenario())
    assert published == [(pytest.approx(d), 1), (pytest.approx(burst_published), 2),
                         (pytest.approx(late_published), 3), (pytest.approx(heartbeat_published), 4)]


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


async def test_the_inventory_shows_this_hosts_newest_backup_and_rereads_the_stores_when_it_is_forgotten(
    tmp_path: Path,
) -> None:
    engine, store = FakeEngine(), MemoryStore("local", tmp_path)
    inv = fake_agent(engine, RecordingSink(), store).inventory
    await engine.volume_create({"Name": "v1"})
    at_start = _record("v1", "2026-11-28T08:00:00+00:00")
    store.records[at_start.backup_id] = at_start
    store.records["v1.other"] = _record("v1", "2026-11-28T08:30:00+00:00", host="other")
    await inv.on_resync()

    async def last_backup() -> str | None:
        last = (await inv.snapshot()).volumes[0].last_backup
        return last.created_at if last else None

    assert await last_backup() == at_start.created_at  # read from the stores: this host's newest
    newest = _record("v1", "2026-11-28T10:00:00+00:00")
    inv.backed_up(newest)
    inv.backed_up(_record("v1", "2026-11-28T09:00:00+00:00"))  # older: not the last
    inv.backed_up(_record("v1", "2026-11-28T11:00:00+00:00", host="other"))  # another host's: not ours
    assert await last_backup() == newest.created_at
    inv.forgotten(newest)  # not in the store: the stores' newest of this host is the last again
    snap = await inv.snapshot()
    assert await last_backup() == at_start.created_at
    assert snap.host == "h1" and snap.engine.storage_driver == "overlay2" and snap.sizes_at is None
    assert snap.volumes[0].size is None


def _snap(host: str, taken: datetime, volumes: dict[str, datetime | None]) -> InventorySnapshot:
    vols = [{"name": n, "driver": "local", "labels": {}, "options": {}, "mountpoint": "", "created_at": "",
             "used_by": [], "last_backup": None if t is None else {"backup_id": "b", "created_at": t.isoformat(),
                                                                   "store": "local", "size": 1, "trigger": "request"}}
            for n, t in volumes.items()]
    return msgspec.convert({"host": host, "agent_version": "x", "engine": {"version": "", "api_version": "",
                            "storage_driver": ""}, "volumes": vols, "plugins": [], "taken_at": taken.isoformat(),
                            "seq": 1, "heartbeat_s": 60.0}, InventorySnapshot)


def test_the_fleet_view_marks_stale_hosts_and_finds_unprotected_volumes() -> None:
    fresh = _snap("a", NOW - timedelta(seconds=30), {"db": NOW - timedelta(hours=2), "cache": None})
    stale = _snap("b", NOW - timedelta(minutes=10), {"logs": NOW - timedelta(hours=30)})
    empty = _snap("c", NOW, {})
    assert not is_stale(fresh, NOW) and is_stale(stale, NOW)
    rows = fleet_rows([fresh, stale, empty], NOW)
    assert [(r.host, r.volume.name if r.volume else None, r.stale) for r in rows] == [
        ("a", "db", False), ("a", "cache", False), ("b", "logs", True), ("c", None, False)]
    assert [r.volume.name for r in unprotected([fresh, stale, empty], 24, NOW) if r.volume] == ["cache", "logs"]
    assert [r.volume.name for r in unprotected([fresh, stale, empty], 1, NOW) if r.volume] == ["db", "cache", "logs"]


def test_unprotected_is_policy_aware_and_says_why() -> None:
    snap = _snap("a", NOW, {"ok": NOW, "bare": None, "late": NOW - timedelta(days=3), "broken": NOW, "new": None})
    said = {"ok": ("ok", None), "bare": ("uncovered", "No backup policy covers this volume."),
            "late": ("overdue", "The last successful backup is old."), "broken": ("failing", "tar: exit 2"),
            "new": ("pending", None)}
    snap.volumes = [msgspec.structs.replace(v, protection=said[v.name][0], protection_reason=said[v.name][1])
                    for v in snap.volumes]
    rows = {r.volume.name: r.why for r in unprotected([snap], None, NOW) if r.volume}
    assert rows == {"bare": "uncovered: No backup policy covers this volume.",
                    "late": "overdue: The last successful backup is old.", "broken": "failing: tar: exit 2"}
    with_hours = {r.volume.name: r.why for r in unprotected([snap], 24, NOW) if r.volume}
    assert with_hours["new"] == "no backup in the last 24 h" and "no backup in the last 24 h" in with_hours["late"]

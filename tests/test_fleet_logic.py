"""Unit tests of the logic behind events and the fleet: labels, the event cursor, causes, the inventory, the
fleet view. Small fakes; the integration tests run the real thing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import structlog

from agent.backup.local_store import LocalStore
from agent.backup.stores import Stores
from agent.causes import Causes
from agent.errors import Invalid
from agent.events.inventory import Inventory
from agent.events.onstop import options_from_labels
from agent.events.watch import Cursor
from contracts import BackupRecord, InventorySnapshot
from volumectl.fleet import fleet_rows, is_stale, unprotected

from .fakes import FakeEngine, RecordingSink

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
    ({"volume-agent.backup.store": "s3"}, "store"),
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


async def test_the_inventory_debounces_a_burst_and_follows_backups(tmp_path: Path) -> None:
    engine, sink = FakeEngine(), RecordingSink()
    await engine.volume_create({"Name": "v1"})
    inv = Inventory(engine, Stores(LocalStore(tmp_path)), sink, "h1", heartbeat_s=60,  # type: ignore[arg-type]
                    sizes_every_s=0)
    await inv.on_resync()
    await inv.start()
    await asyncio.sleep(0.5)
    for _ in range(20):
        inv.changed()
    inv.backed_up(_record("v1", "2026-11-28T10:00:00+00:00"))
    inv.backed_up(_record("v1", "2026-11-28T09:00:00+00:00"))  # older: not the last
    inv.backed_up(_record("v1", "2026-11-28T11:00:00+00:00", host="other"))  # another host's: not ours
    await asyncio.sleep(1.2)
    await inv.stop()
    assert len(sink.snapshots) == 2  # the start, then one for the whole burst (at most one a second)
    snap = msgspec.json.decode(sink.snapshots[-1], type=InventorySnapshot)
    assert snap.host == "h1" and snap.seq == 2 and snap.engine.storage_driver == "overlay2"
    assert snap.volumes[0].last_backup is not None
    assert snap.volumes[0].last_backup.created_at == "2026-11-28T10:00:00+00:00"
    assert snap.sizes_at is None and snap.volumes[0].size is None


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

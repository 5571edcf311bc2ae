"""Unit tests of the fleet page's server side: the aggregation, the feed and audit, who may look (`access`),
and the follower's handling of inventory messages. The browser tests (tests/test_web.py) run the real thing."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import (
    ChunkRef,
    EngineInfo,
    InventoryChunk,
    InventoryHead,
    InventorySnapshot,
    InventoryVolume,
    LastBackup,
    LastVerify,
    Reply,
    VolumeEvent,
)
from contracts.envelope import ErrorBody
from volumectl.web.access import Passwords, add_user, exposure, parse_listen
from volumectl.web.activity import Activity
from volumectl.web.model import Fleet

from .stack import venv_bin

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ENGINE = EngineInfo(version="20.10", api_version="1.41", storage_driver="overlay2")


def _vol(name: str, protection: str | None, why: str | None = None, size: int = 10) -> InventoryVolume:
    last = LastBackup(backup_id=f"{name}.1", created_at=(NOW - timedelta(hours=1)).isoformat(), store="local",
                      size=5, trigger="schedule")
    return InventoryVolume(name=name, driver="local", labels={}, options={}, mountpoint="", created_at="",
                           used_by=[], last_backup=last, size=size, policies=["p"] if protection != "uncovered" else [],
                           protection=protection, protection_reason=why)  # type: ignore[arg-type]


def _snap(host: str, volumes: list[InventoryVolume], taken: datetime = NOW, seq: int = 1,
          insecure: list[str] | None = None) -> InventorySnapshot:
    return InventorySnapshot(host=host, agent_version="0.1.0", engine=ENGINE, volumes=volumes, plugins=["local"],
                             taken_at=taken.isoformat(), seq=seq, heartbeat_s=30, insecure=insecure or [])


def test_the_summary_counts_the_fleet_lists_what_fails_first_and_colours_each_host_by_its_worst_volume() -> None:
    f = Fleet()
    f.replace([
        _snap("a", [_vol("a1", "ok"), _vol("a2", "overdue", "no success for 3 days")]),
        _snap("b", [_vol("b1", "failing", "exit 3"), _vol("b2", "uncovered", "no policy")]),
        _snap("c", [_vol("c1", None)], taken=NOW - timedelta(minutes=5),
              insecure=["NATS at nats://u:secret@far:4222 without TLS"]),
        _snap("d", []),
    ])
    s = f.summary(NOW)
    assert s["hosts"] == {"total": 4, "up": 3, "stale": 1, "insecure": 1}
    assert s["volumes"] == 5 and s["size"] == 50 and s["protected"] == 1
    assert s["at_risk"] == {"failing": 1, "suspect": 0, "overdue": 1, "uncovered": 1}
    assert [(a["host"], a["volume"], a["status"]) for a in s["attention"]] == [("b", "b1", "failing"),
                                                                                ("a", "a2", "overdue")]
    assert s["attention"][0]["why"] == "exit 3"
    assert s["grid"] == [["a", "overdue", False, False], ["b", "failing", False, False],
                         ["c", "unknown", True, True], ["d", "empty", False, False]]
    rows = f.host_rows(now=NOW)["hosts"]
    assert [r["host"] for r in rows] == ["b", "a", "c", "d"]  # worst first
    assert "secret" not in msgspec.json.encode(f.host_rows(now=NOW)).decode()  # URL credentials never shown
    assert [r["host"] for r in f.host_rows(status="stale", now=NOW)["hosts"]] == ["c"]
    detail = f.host("b", now=NOW)
    assert detail is not None and [v["name"] for v in detail["volume_rows"]] == ["b1", "b2"]
    assert f.policy_hosts()["p"]["applying"] == [{"host": "a", "volumes": 2}, {"host": "b", "volumes": 1},
                                                  {"host": "c", "volumes": 1}]


def test_drills_and_suspect_volumes_are_counted_and_listed_with_why() -> None:
    """A volume whose last restore drill failed is counted and listed (newest first, its sentence redacted);
    `suspect` (the guard held retention) is at risk and listed with its reason; hosts and volumes carry the drill."""
    failed = LastVerify(backup_id="a1.7", verified_at=(NOW - timedelta(minutes=10)).isoformat(), ok=False,
                        error="content digest differs; store at nats://u:secret@far:4222", policy="nightly")
    older = LastVerify(backup_id="b1.3", verified_at=(NOW - timedelta(hours=3)).isoformat(), ok=False,
                       error="corrupt: sha256 differs")
    passed = LastVerify(backup_id="a2.2", verified_at=(NOW - timedelta(hours=2)).isoformat(), ok=True)
    f = Fleet()
    f.replace([
        _snap("a", [msgspec.structs.replace(_vol("a1", "failing", "the last restore drill failed"), last_verify=failed),
                    msgspec.structs.replace(_vol("a2", "ok"), last_verify=passed),
                    _vol("a3", "suspect", "the newest backup is 2% of the one before: retention held")]),
        _snap("b", [msgspec.structs.replace(_vol("b1", "ok"), last_verify=older), _vol("b2", "overdue", "late")]),
        _snap("c", [_vol("c1", "ok")]),
    ])
    s = f.summary(NOW)
    assert s["at_risk"] == {"failing": 1, "suspect": 1, "overdue": 1, "uncovered": 0}
    assert [(a["volume"], a["status"]) for a in s["attention"]] == [("a1", "failing"), ("a3", "suspect"),
                                                                     ("b2", "overdue")]
    assert "retention held" in s["attention"][1]["why"]
    assert s["drills"] == {"passed": 1, "failed": 2, "never": 3}
    assert [(d["host"], d["volume"], d["backup_id"]) for d in s["drill_failures"]] == [("a", "a1", "a1.7"),
                                                                                       ("b", "b1", "b1.3")]
    assert "content digest differs" in s["drill_failures"][0]["why"]
    assert "secret" not in msgspec.json.encode(s).decode()
    assert s["grid"][0][:2] == ["a", "failing"] and s["grid"][1][:2] == ["b", "overdue"]
    # The hosts table: each host's drills; a filter for the hosts with a failed drill.
    rows = {r["host"]: r for r in f.host_rows(now=NOW)["hosts"]}
    assert rows["a"]["drills"] == {"failed": 1, "passed": 1, "never": 1} and rows["c"]["drills"] == {"never": 1}
    assert rows["a"]["newest_drill"] == (NOW - timedelta(minutes=10)).timestamp()
    assert [r["host"] for r in f.host_rows(status="drill-failed", now=NOW)["hosts"]] == ["a", "b"]
    # The host's and the volume's view: the last drill, when, which backup, why.
    detail = f.host("a", now=NOW)
    assert detail is not None
    drills = {v["name"]: v["last_verify"] for v in detail["volume_rows"]}
    assert drills["a3"] is None and drills["a2"]["ok"] and drills["a2"]["age_s"] == 7200
    assert drills["a1"] == {"backup_id": "a1.7", "verified_at": failed.verified_at, "ok": False, "policy": "nightly",
                            "error": drills["a1"]["error"], "age_s": 600}
    assert "secret" not in drills["a1"]["error"]
    # A status from a newer agent than this page is shown as unknown, not a crash.
    f.put(_snap("d", [msgspec.structs.replace(_vol("d1", "ok"), protection="someday")]))  # type: ignore[arg-type]
    assert f.hosts["d"].worst == "unknown"


def test_drill_outcomes_are_feed_items_and_mark_the_backup_they_verified() -> None:
    a = Activity()
    ok = Reply(id="c1", host="h", op="verify", ok=True, caller="ops",
               result={"backup_id": "v.1", "volume": "v", "verified_at": NOW.isoformat(), "duration_s": 1.0,
                       "checked": ["stored bytes", "extraction", "content digest"]})
    item = a.outcome(ok)
    assert item is not None and (item["kind"], item["state"], item["volume"], item["backup_id"]) == (
        "drill", "passed", "v", "v.1")
    assert a.drill("h", "v.1") == {"ok": True, "at": NOW.isoformat(), "error": None}
    # A policy's drill that failed names its volume in its id only.
    bad = Reply(id="verify.nightly.my.vol.20261205T120000Z", host="h", op="verify", ok=False,
                error=ErrorBody(code="corrupt", message="<img src=x onerror=alert(1)> differs"))
    item = a.outcome(bad)
    assert item is not None and (item["kind"], item["state"], item["volume"], item["policy"]) == (
        "drill", "failed", "my.vol", "nightly")
    assert item["code"] == "corrupt" and a.commands("h", "my.vol")[0]["id"] == bad.id
    refused = Reply(id="c3", host="h", op="verify", ok=False, caller="viewer",
                    error=ErrorBody(code="forbidden", message="viewer may not verify on h"))
    item = a.outcome(refused)
    assert item is not None and item["kind"] == "outcome" and item["state"] == "refused"


def test_a_late_snapshot_does_not_replace_a_newer_one() -> None:
    f = Fleet()
    assert f.put(_snap("a", [_vol("new", "ok")], seq=5))
    assert not f.put(_snap("a", [_vol("old", "ok")], taken=NOW - timedelta(seconds=30), seq=4))
    assert f.volume("a", "new") is not None


def _evt(kind: str, **kw: Any) -> VolumeEvent:
    return VolumeEvent(host="h", kind=kind, volume="v", at=NOW.isoformat(), **kw)  # type: ignore[arg-type]


def test_a_backup_is_one_feed_item_from_start_to_end_and_its_outcome_is_filed_under_its_volume() -> None:
    a = Activity()
    a.event(_evt("backup.started", cmd_id="c1"))
    a.event(_evt("backup.progress", cmd_id="c1", bytes_done=100))
    done = a.event(_evt("backup.completed", cmd_id="c1", bytes_done=300, backup_id="v.1"))
    assert done is not None and done["state"] == "completed" and done["bytes_done"] == 300
    assert len(a.feed()) == 1
    # The same message again (history read, then live) changes nothing.
    raw = msgspec.json.encode(_evt("volume.created"))
    assert a.event(_evt("volume.created"), raw) is not None and a.event(_evt("volume.created"), raw) is None
    ok = Reply(id="c1", host="h", op="backup", ok=True, result={"volume": "v", "backup_id": "v.1"}, caller="ops")
    assert a.outcome(ok) is None  # its events told it
    refused = Reply(id="c2", host="h", op="remove", ok=False, caller="far",
                    error=ErrorBody(code="forbidden", message="far may not remove on h"))
    item = a.outcome(refused)
    assert item is not None and item["state"] == "refused"
    # A failed command names no volume: its events do (`cmd_id`).
    a.event(_evt("backup.started", cmd_id="c3"))
    a.outcome(Reply(id="c3", host="h", op="backup", ok=False, error=ErrorBody(code="conflict", message="hook")))
    assert [c["id"] for c in a.commands("h", "v")] == ["c3", "c1"]
    # Reads are not activity.
    assert a.outcome(Reply(id="r", host="h", op="backups", ok=True, result={"backups": []}, caller="viewer")) is None


def test_serving_off_loopback_needs_passwords_and_tls_and_says_what_to_set(tmp_path: Path) -> None:
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError, match="must look like"):
        parse_listen("8080")
    assert exposure("127.0.0.1", auth=False, tls=False) is None
    assert exposure("0.0.0.0", auth=True, tls=True) is None
    why = exposure("0.0.0.0", auth=True, tls=False)
    assert why is not None and "--tls-cert" in why and "--auth" not in why.split("without")[1].split(":")[0]
    out = subprocess.run([venv_bin("volumectl"), "web", "--listen", "0.0.0.0:8080"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 2 and "--auth FILE" in out.stderr and "--tls-cert" in out.stderr
    auth = tmp_path / "users"
    add_user(auth, "ana", "correct horse")
    assert auth.stat().st_mode & 0o077 == 0
    p = Passwords(auth)
    assert p.check("ana", "correct horse") and not p.check("ana", "wrong") and not p.check("bob", "correct horse")
    assert base64.b64encode(b"x").decode() not in auth.read_text()


def test_the_follower_assembles_a_host_from_its_chunks_and_head_as_they_are_published() -> None:
    from volumectl.web.follower import Follower

    sent: list[tuple[str, Any]] = []

    class _Client:
        from contracts import Subjects
        subjects = Subjects("vol")

    f = Follower(_Client(), lambda k, d: sent.append((k, d)))  # type: ignore[arg-type]
    f._held = None
    vols = [_vol("x", "ok"), _vol("y", "failing", "exit 3")]
    chunk = InventoryChunk(host="h", seq=2, index=0, chunks=1, volumes=vols)
    head = InventoryHead(host="h", agent_version="0.1.0", engine=ENGINE, plugins=[], taken_at=NOW.isoformat(), seq=2,
                         heartbeat_s=30, chunks=[ChunkRef(index=0, seq=2, volumes=2)], volume_count=2)
    f._inventory_message("h.head", msgspec.json.encode(head))  # before its chunk: not taken
    assert "h" not in f.fleet.hosts
    f._inventory_message("h.chunk.0", msgspec.json.encode(chunk))
    f._inventory_message("h.head", msgspec.json.encode(head))
    assert f.fleet.hosts["h"].worst == "failing"
    f._inventory_message("h.head", b"[" * 100 + b"]" * 100)  # bounded: left out, counted
    assert f.bad_messages == 1 and f.fleet.hosts["h"].worst == "failing"
    f.tick(NOW)
    kind, data = sent[-1]
    assert kind == "fleet" and data["cells"] == [["h", "failing", False, False]] and data["changed"] == ["h"]
    sent.clear()
    f.tick(NOW)
    assert sent == []  # nothing changed, nothing sent

"""Metrics (agent/metrics.py) rendered and parsed as Prometheus parses them, served over real HTTP; what the
dispatcher and every backup tell them (fakes behind the seams)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from agent import __version__
from agent.auth.verify import Caller
from agent.backup.observed import BackupObserver
from agent.dispatch import Dispatcher
from agent.errors import Forbidden, Invalid
from agent.metrics import Metrics
from agent.startup import warn_if_exposed
from agent.tasks import Tasks
from contracts import BackupRecord, BackupRequest
from tests.stack import free_port

from .fakes import FakeEngine, MemoryOutcomes, RecordingMetrics, RecordingNotifier, RecordingSink, TrustAll, fake_agent

pytestmark = pytest.mark.timeout(20)


def samples(text: bytes | str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    text = text.decode() if isinstance(text, bytes) else text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_every_metric_is_rendered_under_its_documented_name_and_labels() -> None:
    m = Metrics("web-1")
    m.request("create", "ok", 0.02)
    m.request("create", "forbidden", 0.001)
    m.backup_started()
    m.backup_started()
    m.backup_finished("pg", "schedule", "nightly", ok=True, tar_bytes=1000, stored_bytes=300, seconds=2.5)
    m.next_run("nightly", "pg", 1_900_000_000.0)
    m.coverage({"nightly": 3, "hourly": 1}, 2)
    s = samples(m.render())
    assert value(s, "volume_agent_requests_total", op="create", code="ok") == 1
    assert value(s, "volume_agent_requests_total", op="create", code="forbidden") == 1
    assert value(s, "volume_agent_request_duration_seconds_count", op="create") == 2
    assert value(s, "volume_agent_backups_running") == 1
    assert value(s, "volume_agent_backups_total", trigger="schedule", result="ok") == 1
    assert value(s, "volume_agent_backup_bytes_total", kind="tar") == 1000
    assert value(s, "volume_agent_backup_bytes_total", kind="stored") == 300
    assert value(s, "volume_agent_backup_duration_seconds_sum") == 2.5
    assert abs((value(s, "volume_agent_last_backup_success_timestamp_seconds", volume="pg") or 0) - time.time()) < 5
    assert value(s, "volume_agent_next_backup_timestamp_seconds", policy="nightly", volume="pg") == 1_900_000_000
    assert value(s, "volume_agent_policy_volumes", policy="hourly") == 1
    assert value(s, "volume_agent_uncovered_volumes") == 2
    assert value(s, "volume_agent_info", host="web-1", version=__version__) == 1


def test_a_failed_backup_counts_but_sets_no_success_time() -> None:
    m = Metrics("h1")
    m.backup_started()
    m.backup_finished("pg", "on-stop", None, ok=False, seconds=0.3)
    s = samples(m.render())
    assert value(s, "volume_agent_backups_total", trigger="on-stop", result="failed") == 1
    assert value(s, "volume_agent_backups_running") == 0
    assert value(s, "volume_agent_backup_bytes_total", kind="tar") == 0
    assert not any(name == "volume_agent_last_backup_success_timestamp_seconds" for name, _ in s)


def test_no_next_run_removes_the_series_and_coverage_replaces_the_last() -> None:
    m = Metrics("h1")
    m.next_run("p", "a", 100.0)
    m.next_run("p", "b", 200.0)
    m.next_run("p", "a", None)
    m.next_run("gone", "never-set", None)
    m.coverage({"old": 5}, 1)
    m.coverage({"new": 2}, 0)
    s = samples(m.render())
    assert [dict(labels) for name, labels in s if name == "volume_agent_next_backup_timestamp_seconds"] == [
        {"policy": "p", "volume": "b"}]
    assert [dict(labels) for name, labels in s if name == "volume_agent_policy_volumes"] == [{"policy": "new"}]
    assert value(s, "volume_agent_uncovered_volumes") == 0


def test_the_last_success_is_seeded_from_earlier_backups_and_never_moves_back() -> None:
    m = Metrics("h1")
    m.backup_started()
    m.backup_finished("now", "request", None, ok=True)
    old = [_record("old", "2026-01-02T03:04:05+00:00", 5.0), _record("old", "2025-01-01T00:00:00+00:00", 1.0),
           _record("now", "2026-01-01T00:00:00+00:00", 1.0)]
    m.backed_up_before(old)
    s = samples(m.render())
    assert value(s, "volume_agent_last_backup_success_timestamp_seconds", volume="old") == 1767323050.0
    assert abs((value(s, "volume_agent_last_backup_success_timestamp_seconds", volume="now") or 0) - time.time()) < 5


def test_two_agents_in_one_process_keep_their_figures_apart() -> None:
    a, b = Metrics("a"), Metrics("b")
    a.request("list", "ok", 0.1)
    assert value(samples(b.render()), "volume_agent_requests_total", op="list", code="ok") is None


async def test_the_endpoint_serves_the_exposition_over_http_and_start_and_stop_are_idempotent() -> None:
    m = Metrics("h1")
    port = free_port()
    await m.start(f"127.0.0.1:{port}")
    await m.start(f"127.0.0.1:{port}")
    try:
        m.request("inspect", "not_found", 0.01)
        with await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read()
        assert value(samples(body), "volume_agent_requests_total", op="inspect", code="not_found") == 1
    finally:
        await m.stop()
        await m.stop()
    with pytest.raises(OSError):
        await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", timeout=5)


async def test_an_address_in_use_is_invalid_and_says_which() -> None:
    first, second = Metrics("a"), Metrics("b")
    port = free_port()
    await first.start(f"127.0.0.1:{port}")
    try:
        with pytest.raises(Invalid, match=f"127.0.0.1:{port}"):
            await second.start(f"127.0.0.1:{port}")
    finally:
        await first.stop()
        await second.stop()


async def test_every_backup_is_counted_and_a_failed_one_notified(tmp_path: Path) -> None:
    metrics, notifier = RecordingMetrics(), RecordingNotifier()
    agent = fake_agent(FakeEngine(root=tmp_path / "volumes"), observer=BackupObserver(metrics, notifier))
    await agent.engine.volume_create({"Name": "v1"})
    (tmp_path / "volumes" / "v1" / "data").write_bytes(b"x" * 50_000)
    record = await agent.backups.backup(BackupRequest(volume="v1", compression="gzip"))
    with pytest.raises(Exception, match="ghost"):
        await agent.backups.backup(BackupRequest(volume="ghost"))
    made, failed = metrics.finished
    assert made.ok and made.volume == "v1" and made.trigger == "request"
    assert made.tar_bytes == record.size > 50_000 and made.stored_bytes == record.stored_size > 0
    assert not failed.ok and failed.volume == "ghost" and metrics.running == 0
    assert notifier.sent == [("backup_failed", "ghost", "request: Volume 'ghost' does not exist on this host.", None)]


async def test_an_on_stop_backup_is_seen_with_its_trigger(tmp_path: Path) -> None:
    metrics, notifier = RecordingMetrics(), RecordingNotifier()
    agent = fake_agent(FakeEngine(root=tmp_path / "volumes"), observer=BackupObserver(metrics, notifier))
    with pytest.raises(Exception, match="gone"):
        await agent.backups.backup_locked(BackupRequest(volume="gone"), trigger="on-stop", container="web")
    assert [(f.trigger, f.ok) for f in metrics.finished] == [("on-stop", False)]
    assert notifier.sent[0][:2] == ("backup_failed", "gone") and notifier.sent[0][2].startswith("on-stop: ")


class RefuseCreate:
    """A Verifier that refuses `create` and lets everything else through."""

    def caller(self, op: str, subject: str, headers: Mapping[str, str] | None, body: bytes, *, durable: bool) -> Caller:
        if op == "create":
            raise Forbidden("Not you.", caller="mallory")
        return TrustAll().caller(op, subject, headers, body, durable=durable)


async def test_the_dispatcher_counts_every_answer_by_op_and_code() -> None:
    engine, sink, metrics = FakeEngine(), RecordingSink(), RecordingMetrics()
    trusting = Dispatcher("h1", fake_agent(engine, sink).handlers, MemoryOutcomes(), sink, Tasks(8), TrustAll(),
                          max_body=4096, metrics=metrics)
    await trusting.execute("create", b'{"name": "v1"}')
    await trusting.execute("inspect", b'{"name": "nope"}')
    await trusting.execute("create", b'{"name": "bad name!"}')
    await trusting.execute("no-such-op", b"{}")
    await trusting.execute("remove", b'{"name": "missing", "id": "r1"}')
    await trusting.execute("remove", b'{"name": "missing", "id": "r1"}')  # answered from the record
    refusing = Dispatcher("h1", fake_agent(engine, sink).handlers, MemoryOutcomes(), sink, Tasks(8), RefuseCreate(),
                          max_body=4096, metrics=metrics)
    await refusing.execute("create", b'{"name": "v2"}')
    assert metrics.requests == [("create", "ok"), ("inspect", "not_found"), ("create", "invalid"),
                                ("unknown", "invalid"), ("remove", "not_found"), ("remove", "not_found"),
                                ("create", "forbidden")]


def _record(volume: str, created_at: str, duration_s: float) -> BackupRecord:
    return BackupRecord(backup_id=f"{volume}.x", volume=volume, host="h1", trigger="request", size=1, stored_size=1,
                        sha256="0" * 64, compression="none", store="local", location="/x", created_at=created_at,
                        duration_s=duration_s, stopped_containers=[], volume_driver="local", volume_labels={})


def test_a_metrics_address_off_this_host_is_warned_of_once() -> None:
    with capture_logs() as logs:
        warn_if_exposed("127.0.0.1:9101")
        warn_if_exposed("[::1]:9101")
        warn_if_exposed("localhost:9101")
        warn_if_exposed("0.0.0.0:9101")
    assert [(e["event"], e["address"]) for e in logs] == [("metrics.exposed", "0.0.0.0:9101")]

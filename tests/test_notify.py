"""Notifications (agent/notify.py) against a real webhook receiver on 127.0.0.1, and the --notify setting."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from agent.config import parse_args
from agent.errors import Invalid
from agent.notify import STOP_GRACE_S, Notifier
from tests.stack import free_port

from .receiver import Receiver

pytestmark = pytest.mark.timeout(30)

BASE = ["--nats", "nats://127.0.0.1:4222", "--host-id", "h1"]


async def test_a_failed_backup_is_posted_naming_host_volume_error_trigger_and_policy() -> None:
    with Receiver() as r:
        n = Notifier([r.url("/hook")], "web-1")
        await n.start()
        await n.backup_failed("pgdata", "The pre hook in container 'db' failed (exit 3)", trigger="schedule",
                              policy="nightly")
        path, body = await r.next()
        await n.stop()
    assert path == "/hook" and body["type"] == "failure"
    text = body["title"] + "\n" + body["message"]
    for word in ("web-1", "pgdata", "exit 3", "schedule", "nightly"):
        assert word in text


async def test_notifications_arrive_in_order_with_their_kind() -> None:
    with Receiver() as r:
        n = Notifier([r.url()], "web-1")
        await n.start()
        await n.overdue("uploads", "hourly", "no backup for 3 h")
        await n.recovered("uploads", "hourly")
        first, second = (await r.next())[1], (await r.next())[1]
        await n.stop()
    assert first["type"] == "warning" and "no backup for 3 h" in first["message"] and "hourly" in first["message"]
    assert second["type"] == "success" and "uploads" in second["message"]


async def test_every_url_gets_each_notification() -> None:
    with Receiver() as a, Receiver() as b:
        n = Notifier([a.url("/a"), b.url("/b")], "h1")
        await n.start()
        await n.backup_failed("v1", "boom", trigger="request", policy=None)
        assert (await a.next())[0] == "/a" and (await b.next())[0] == "/b"
        await n.stop()


async def test_a_refused_notification_is_logged_without_its_url_and_never_raises() -> None:
    with Receiver(status=500) as r, capture_logs() as logs:
        url = f"json://user:s3cr3t@127.0.0.1:{r.port}/hook-token-xyz"
        n = Notifier([url], "h1")
        await n.start()
        await n.backup_failed("v1", "boom", trigger="on-stop", policy=None)
        await r.next()  # it was tried
        await n.stop()  # sends what is queued, so its outcome is logged by now
    failed = [e for e in logs if e["event"] == "notify.failed"]
    assert failed and failed[0]["service"] == "#1 json" and failed[0]["volume"] == "v1"
    assert not any(secret in repr(logs) for secret in ("s3cr3t", "hook-token-xyz", str(r.port)))


async def test_an_unreachable_service_costs_bounded_time() -> None:
    n = Notifier([f"json://127.0.0.1:{free_port()}/nobody"], "h1")
    with capture_logs() as logs:
        await n.start()
        await n.overdue("v1", "p", "late")
        started = time.monotonic()
        await n.stop()
    assert time.monotonic() - started < STOP_GRACE_S + 2
    assert [e["event"] for e in logs if e["event"].startswith("notify.")] == ["notify.ready", "notify.failed"]


async def test_without_urls_nothing_is_queued_and_stop_is_idempotent() -> None:
    n = Notifier([], "h1")
    await n.start()
    await n.backup_failed("v1", "boom", trigger="request", policy=None)
    await n.stop()
    await n.stop()


async def test_a_notification_after_stop_is_dropped_and_logged() -> None:
    with Receiver() as r:
        n = Notifier([r.url()], "h1")
        await n.start()
        await n.stop()
        await n.stop()
        with capture_logs() as logs:
            await n.recovered("v1", "p")
    assert [e["event"] for e in logs] == ["notify.dropped"]


def test_an_unknown_url_is_invalid_without_echoing_it() -> None:
    with pytest.raises(Invalid) as info:
        Notifier(["json://127.0.0.1/ok", "bogus://user:s3cr3t@host"], "h1")
    assert "#2 bogus" in info.value.message and "s3cr3t" not in info.value.message


def test_bad_notify_urls_exit_2_naming_them_by_position_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args([*BASE, "--notify", "json://host/ok", "--notify", "nope://tok3n@x", "--notify", "s3cr3t-no-scheme"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "#2 nope" in err and "#3 (no scheme)" in err
    assert "tok3n" not in err and "s3cr3t" not in err


def test_notify_urls_come_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLUME_AGENT_NOTIFY", " json://a/hook\n  ntfy://topic ")
    settings = parse_args(BASE)
    assert settings.notify == ("json://a/hook", "ntfy://topic")
    assert "json://a" not in repr(settings)  # URLs hold secrets: the settings never print them
    assert parse_args([*BASE, "--notify", "mailto://u:p@example.com"]).notify == ("mailto://u:p@example.com",)


def test_metrics_listen_is_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(BASE).metrics_listen is None
    assert parse_args([*BASE, "--metrics-listen", "[::1]:9101"]).metrics_listen == "[::1]:9101"
    monkeypatch.setenv("VOLUME_AGENT_METRICS_LISTEN", "127.0.0.1:9101")
    assert parse_args(BASE).metrics_listen == "127.0.0.1:9101"
    for bad in ("9101", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "http://h:1/metrics"):
        with pytest.raises(SystemExit):
            parse_args([*BASE, "--metrics-listen", bad])

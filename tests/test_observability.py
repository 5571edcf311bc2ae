"""An agent's metrics endpoint scraped over HTTP, and its notifications posted to a real webhook receiver, against
a real dockerd and nats-server."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from volumectl.client import AgentClient

from .receiver import Receiver
from .stack import BUSYBOX_IMAGE, Dockerd, free_port

pytestmark = pytest.mark.integration

FAILING_PRE_HOOK = "volume-agent.backup.exec-pre=echo cannot dump; exit 3"


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(await asyncio.to_thread(get)) for s in f.samples}


async def scrape_until(port: int, name: str, **labels: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape that has the sample `name{labels}`: a command is counted once its outcome is recorded and
    published, just after its caller has the reply."""
    end = time.monotonic() + 10
    while (found := await scrape(port)).get((name, frozenset(labels.items()))) is None:
        assert time.monotonic() < end, f"no {name}{labels} in the metrics within 10 s"
        await asyncio.sleep(0.1)
    return found


def of(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def ok(client: AgentClient, host: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await client.request(host, op, body)
    assert reply.ok, reply.error
    assert reply.result is not None
    return reply.result


async def test_the_metrics_endpoint_counts_requests_and_backups(make_agent, client: AgentClient) -> None:
    port = free_port()
    a = make_agent(extra=["--ack-wait", "2", "--metrics-listen", f"127.0.0.1:{port}"])
    await ok(client, a.host_id, "create", {"name": "scraped1"})
    refused = await client.request(a.host_id, "create", {"name": "bad name"})
    assert refused.error is not None and refused.error.code == "invalid"
    record = await ok(client, a.host_id, "backup", {"volume": "scraped1", "compression": "none"})
    done_at = time.time()
    found = await scrape_until(port, "volume_agent_requests_total", op="backup", code="ok")
    assert of(found, "volume_agent_requests_total", op="create", code="ok") == 1
    assert of(found, "volume_agent_requests_total", op="create", code="invalid") == 1
    assert of(found, "volume_agent_requests_total", op="backup", code="ok") == 1
    assert (of(found, "volume_agent_request_duration_seconds_count", op="backup") or 0) >= 1
    assert of(found, "volume_agent_backups_total", trigger="request", result="ok") == 1
    assert of(found, "volume_agent_backup_bytes_total", kind="tar") == record["size"] > 0
    assert of(found, "volume_agent_backup_bytes_total", kind="stored") == record["stored_size"] > 0
    assert of(found, "volume_agent_backups_running") == 0
    last = of(found, "volume_agent_last_backup_success_timestamp_seconds", volume="scraped1")
    assert last is not None and abs(last - done_at) < 10
    assert of(found, "volume_agent_info", host=a.host_id, version="0.1.0") == 1

    await ok(client, a.host_id, "create", {"name": "gone1"})
    await ok(client, a.host_id, "backup", {"volume": "gone1", "compression": "none"})
    await ok(client, a.host_id, "remove", {"name": "gone1"})
    a.stop()  # a restarted agent still knows when each volume it has was last backed up (from its catalog)
    a.start()
    found = await scrape(port)
    again = of(found, "volume_agent_last_backup_success_timestamp_seconds", volume="scraped1")
    assert again is not None and abs(again - last) < 5
    assert of(found, "volume_agent_last_backup_success_timestamp_seconds", volume="gone1") is None


async def test_a_failed_backup_is_notified_whatever_triggered_it(
    make_agent, client: AgentClient, dockerd: Dockerd
) -> None:
    with Receiver() as receiver:
        a = make_agent(extra=["--ack-wait", "2", "--notify", receiver.url("/hook")])
        await ok(client, a.host_id, "create", {"name": "hooked1"})
        dockerd.docker("run", "-d", "--name", "dumper", "--network", "none", "-v", "hooked1:/data",
                       "--label", FAILING_PRE_HOOK, BUSYBOX_IMAGE, "sleep", "600")
        failed = await client.request(a.host_id, "backup", {"volume": "hooked1"})
        assert failed.error is not None and failed.error.code == "conflict"
        path, body = await receiver.next(timeout=30)
        assert path == "/hook" and body["type"] == "failure"
        text = body["title"] + "\n" + body["message"]
        assert a.host_id in text and "hooked1" in text and "exit 3" in text and "cannot dump" in text
        assert "request" in body["message"]

        # On stop: the stopped container runs no hook, but the volume's other running user fails its own.
        dockerd.docker("run", "-d", "--name", "app", "--network", "none", "-v", "hooked1:/d",
                       "--label", "volume-agent.backup.on-stop=true", BUSYBOX_IMAGE, "sleep", "600")
        dockerd.docker("stop", "app")
        _, body = await receiver.next(timeout=30)
        assert "on-stop" in body["message"] and "hooked1" in body["message"] and "exit 3" in body["message"]

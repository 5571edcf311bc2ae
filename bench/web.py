"""Figures of the fleet page (`volumectl web`) at fleet scale: first paint, event-to-page latency, server RSS,
page weight and requests.

Writes synthetic inventories of HOSTS hosts x VOLUMES volumes into the KV bucket as agents lay them out (a head,
its chunk and the whole snapshot per host: `contracts.inventory_chunks`), with some volumes failing, overdue and
uncovered and some hosts stale; starts the real `volumectl web` process against it; keeps a heartbeat of head
updates going (every host once per HEARTBEAT seconds, as agents do) while it measures:

1. first paint over HTTP: the page, its three assets and `/api/summary` (what the overview draws from), fetched
   as a browser does (the page, then the rest together), ROUNDS times;
2. first paint in Debian's chromium (Playwright), when installed: from `goto` to the overview drawn
   (`body[data-ready]`), with the requests and bytes the page transferred;
3. event to page: a `volume.created` event published on `vol.evt.<host>.volume.created` until it arrives on the
   server-sent events stream (and, with the browser, until it is in the page's feed);
4. the server's RSS (and its peak) with all of that loaded.

Starts its own nats-server (nothing else is needed). Run: .venv/bin/python bench/web.py [--hosts 1000] [--volumes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.streams import kv_stream, policies_stream, streams
from contracts import (
    ChunkRef,
    EngineInfo,
    InventoryChunk,
    InventoryHead,
    InventorySnapshot,
    InventoryVolume,
    LastBackup,
    Subjects,
    VolumeEvent,
)
from tests.natsd import NatsServer
from tests.stack import free_port, venv_bin

S = Subjects("vol")
ENGINE = EngineInfo(version="27.3.1", api_version="1.47", storage_driver="overlay2")
ASSETS = ("/static/app.css", "/static/charts.js", "/static/app.js")


def volumes_of(host: int, n: int, now: datetime, rnd: random.Random) -> list[InventoryVolume]:
    out = []
    for i in range(n):
        roll = rnd.random()
        status, why = ("ok", None)
        if roll < 0.01:
            status, why = "failing", ("The last scheduled backup failed: The exec-pre hook in container 'db' failed "
                                      "(exit 3).")
        elif roll < 0.03:
            status, why = "overdue", "No successful backup for 2 days (twice the interval)."
        elif roll < 0.07:
            status, why = "uncovered", "No policy selects this volume."
        name = f"vol-{host:04d}-{i:02d}"
        last = LastBackup(backup_id=f"{name}.20261205T030000Z.ab12", created_at=(now - timedelta(hours=9)).isoformat(),
                          store="local", size=rnd.randint(1, 1 << 30), trigger="schedule")
        out.append(InventoryVolume(
            name=name, driver="local", labels={"team": f"t{i % 7}", "app": f"app-{host % 50}"}, options={},
            mountpoint=f"/var/lib/docker/volumes/{name}/_data", created_at=now.isoformat(), used_by=[],
            last_backup=last, size=rnd.randint(1 << 20, 1 << 34), policies=[] if status == "uncovered" else ["nightly"],
            protection=status, protection_reason=why))  # type: ignore[arg-type]
    return out


def host_values(h: int, n: int, seq: int, now: datetime, rnd: random.Random, stale: bool) -> dict[str, bytes]:
    host = f"host-{h:04d}"
    taken = (now - timedelta(hours=1)) if stale else now
    vols = volumes_of(h, n, now, rnd)
    chunk = InventoryChunk(host=host, seq=seq, index=0, chunks=1, volumes=vols)
    head = InventoryHead(host=host, agent_version="0.1.0", engine=ENGINE, plugins=["local"],
                         taken_at=taken.isoformat(), seq=seq, heartbeat_s=30.0,
                         chunks=[ChunkRef(index=0, seq=seq, volumes=n)], volume_count=n)
    whole = InventorySnapshot(host=host, agent_version="0.1.0", engine=ENGINE, volumes=vols, plugins=["local"],
                              taken_at=taken.isoformat(), seq=seq, heartbeat_s=30.0)
    enc = msgspec.json.encode
    return {f"{host}.chunk.0": enc(chunk), f"{host}.head": enc(head), host: enc(whole)}


async def fill(nc: Any, hosts: int, volumes: int) -> tuple[float, int]:
    js = nc.jetstream()
    for cfg in [*streams(S, 1), kv_stream(S.inventory_bucket, replicas=1), kv_stream(S.catalog_bucket, replicas=1),
                policies_stream(S, 1)]:
        await js.add_stream(cfg)
    kv = await js.key_value(S.inventory_bucket)
    rnd, now, total = random.Random(7), datetime.now(UTC), 0
    t = time.perf_counter()
    sem = asyncio.Semaphore(256)

    async def put(k: str, v: bytes) -> None:
        async with sem:
            await kv.put(k, v)

    for h in range(hosts):
        values = host_values(h, volumes, 1, now, rnd, stale=h % 100 == 99)
        total += sum(map(len, values.values()))
        await asyncio.gather(*(put(k, v) for k, v in values.items()))
    return time.perf_counter() - t, total


async def heartbeats(nc: Any, hosts: int, every_s: float) -> None:
    """Every live host's head again once per `every_s`, spread evenly, as agents publish theirs."""
    js = nc.jetstream()
    kv = await js.key_value(S.inventory_bucket)
    seq, pause = 2, every_s / hosts
    while True:
        for h in range(hosts):
            if h % 100 == 99:
                continue  # the stale ones stay stale
            host = f"host-{h:04d}"
            head = InventoryHead(host=host, agent_version="0.1.0", engine=ENGINE, plugins=["local"],
                                 taken_at=datetime.now(UTC).isoformat(), seq=seq, heartbeat_s=30.0,
                                 chunks=[ChunkRef(index=0, seq=1, volumes=20)], volume_count=20)
            data = msgspec.json.encode(head)
            await nc.publish(S.inv(f"{host}.head"), data)
            await kv.put(f"{host}.head", data)
            await asyncio.sleep(pause)
        seq += 1


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def http_first_paint(url: str, rounds: int) -> tuple[list[float], int, int]:
    """(seconds per round, bytes transferred gzip'd, bytes uncompressed) of the page, its assets and the summary."""
    times, wire, raw = [], 0, 0
    for _ in range(rounds):
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            wire = raw = 0
            t = time.perf_counter()

            async def fetch(path: str) -> None:
                nonlocal wire, raw
                async with s.get(url + path, headers={"Accept-Encoding": "gzip"}) as r:
                    body = await r.read()
                    assert r.status == 200, (path, r.status)
                    wire += len(body)
                    raw += len(await _decoded(r, body))

            await fetch("/")
            await asyncio.gather(*(fetch(p) for p in (*ASSETS, "/api/summary")))
            times.append(time.perf_counter() - t)
    return times, wire, raw


async def _decoded(r: aiohttp.ClientResponse, body: bytes) -> bytes:
    if r.headers.get("Content-Encoding") == "gzip":
        import gzip
        return gzip.decompress(body)
    return body


async def sse_latency(url: str, nc: Any, samples: int) -> list[float]:
    """Publish a volume.created event, wait for it on the SSE stream; seconds each."""
    out = []
    async with aiohttp.ClientSession() as s, s.get(url + "/api/events", timeout=aiohttp.ClientTimeout(total=None)) as r:
        lines = r.content
        await lines.readline()  # retry:
        for _ in range(samples):
            name = f"lat-{uuid.uuid4().hex[:8]}"
            evt = VolumeEvent(host="host-0001", kind="volume.created", volume=name, at=datetime.now(UTC).isoformat())
            t = time.perf_counter()
            await nc.publish(S.evt("host-0001", "volume.created"), msgspec.json.encode(evt))
            await nc.flush()
            while True:
                line = await asyncio.wait_for(lines.readline(), 10)
                if line.startswith(b"data:") and name.encode() in line:
                    out.append(time.perf_counter() - t)
                    break
            await asyncio.sleep(0.05)
    return out


async def browser(url: str, nc: Any, rounds: int, shot: Path | None) -> dict[str, Any] | None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    if not Path("/usr/bin/chromium").exists():
        return None
    paint, inside, requests, transferred, events = [], [], 0, 0, []
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for i in range(rounds):
            ctx = await b.new_context(viewport={"width": 1400, "height": 900})
            page = await ctx.new_page()
            seen: list[str] = []
            page.on("request", lambda r, seen=seen: seen.append(r.url))
            t = time.perf_counter()
            await page.goto(url + "/")
            await page.wait_for_selector('body[data-ready="overview"]', timeout=30_000)
            paint.append(time.perf_counter() - t)
            inside.append(int(await page.get_attribute("body", "data-ready-ms")) / 1000)
            if i == 0:
                requests = len([u for u in seen if not u.endswith("/api/events")])
                transferred = await page.evaluate(
                    "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
                    ".filter(e => !e.name.endsWith('/api/events')).reduce((n, e) => n + e.transferSize, 0)")
                await page.wait_for_selector("#live.on", timeout=10_000)
                for _ in range(10):
                    name = f"lat-{uuid.uuid4().hex[:8]}"
                    evt = VolumeEvent(host="host-0002", kind="volume.created", volume=name,
                                      at=datetime.now(UTC).isoformat())
                    t = time.perf_counter()
                    await nc.publish(S.evt("host-0002", "volume.created"), msgspec.json.encode(evt))
                    await page.wait_for_selector(f'#feed li[data-volume="{name}"]', timeout=10_000)
                    events.append(time.perf_counter() - t)
                if shot is not None:
                    await page.screenshot(path=str(shot))
            await ctx.close()
        await b.close()
    return {"paint": paint, "inside": inside, "requests": requests, "bytes": transferred, "events": events}


def fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
    return f"median {statistics.median(xs) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--volumes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--heartbeat", type=float, default=30.0, help="seconds between two heads of one host")
    ap.add_argument("--screenshot", type=Path, help="save the overview, as the browser drew it, here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vweb") as tmp:
        server = NatsServer(Path(tmp, "nats")).start()
        nc = await nats.connect(server.url)
        proc = None
        beat = None
        try:
            took, size = await fill(nc, a.hosts, a.volumes)
            print(f"{a.hosts} hosts x {a.volumes} volumes written to the inventory bucket in {took:.1f} s "
                  f"({size / 1e6:.1f} MB of values)")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            t = time.perf_counter()
            with open(Path(tmp, "web.log"), "wb") as log:
                proc = subprocess.Popen(
                    [venv_bin("volumectl"), "--nats", server.url, "web", "--listen", f"127.0.0.1:{port}"],
                    stdout=subprocess.DEVNULL, stderr=log,
                    env={k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")})
            async with aiohttp.ClientSession() as s:
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(url + "/api/summary") as r:
                            if r.status == 200:
                                break
                    assert proc.poll() is None, Path(tmp, "web.log").read_text()
                    await asyncio.sleep(0.05)
            print(f"server up (fleet read whole) {time.perf_counter() - t:.2f} s after start")
            beat = asyncio.create_task(heartbeats(nc, a.hosts, a.heartbeat))
            await asyncio.sleep(2)
            times, wire, raw = await http_first_paint(url, a.rounds)
            print(f"first paint over HTTP (page + 3 assets + /api/summary, 5 requests), {a.rounds} rounds: "
                  f"{fmt(times)}; {wire / 1024:.0f} KB on the wire gzip'd ({raw / 1024:.0f} KB uncompressed)")
            lat = await sse_latency(url, nc, 50)
            print(f"event to page (vol.evt publish -> SSE), 50 events: {fmt(lat)}")
            found = await browser(url, nc, 5, a.screenshot)
            if found is None:
                print("browser: playwright or /usr/bin/chromium not installed; skipped")
            else:
                print(f"first paint in chromium (goto -> overview drawn), 5 fresh pages: {fmt(found['paint'])}; "
                      f"{found['requests']} requests, {found['bytes'] / 1024:.0f} KB transferred; as the page "
                      f"counts it (navigation start -> drawn): {fmt(found['inside'])}")
                print(f"event to page in chromium (publish -> item in the feed), 10 events: {fmt(found['events'])}")
            rss, peak = rss_kib(proc.pid)
            print(f"server RSS {rss / 1024:.0f} MiB (peak {peak / 1024:.0f} MiB) with {a.hosts * a.volumes} volumes "
                  f"and heartbeats of {a.hosts / a.heartbeat:.0f} heads/s")
        finally:
            if beat is not None:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            await nc.close()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""What JetStream's `sync_interval: always` costs the agent, against the server's default (fsync every 2 minutes).

Two stacks side by side, each its own private dockerd, nats-server (or three-node cluster) and agent: one server
with the default sync, one with `always`. For each it prints:
1. create+remove p50/p95 as durable commands (JetStream publish -> the outcome on `vol.res`) and as requests,
   interleaved in blocks between the two stacks so that drift on the machine hits both alike;
2. a backup of a `--size` MiB volume of random bytes to the shared (nats) store and its restore, with the
   local store beside it (which fsyncs by itself: a control for the machine's drift). This is bench/fleet.py's
   code; `--rounds` times, the stacks taking turns (`--always-first` starts with `always`), each after an
   `os.sync()`.

Starts its own daemons (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/durability.py [--size 768] [--ops 200] [--rounds 3] [--max-payload 8MB] [--replicas 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet import HOST, backup_restore, fill_big
from contracts import Reply
from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsCluster, NatsServer
from volumectl.client import AgentClient

BLOCK = 20  # ops per stack before switching to the other
WARMUP = 10
Row = tuple[str, float, float]  # store, backup seconds, restore seconds


@dataclass
class Side:
    """One stack: a dockerd, a nats-server (or cluster) with one sync setting, an agent, a client."""

    label: str
    host: str
    dockerd: Dockerd
    client: AgentClient
    waiting: dict[str, asyncio.Future[Reply]] = field(default_factory=dict)
    durable: list[float] = field(default_factory=list)
    request: list[float] = field(default_factory=list)

    async def listen(self) -> None:
        decode = msgspec.json.Decoder(Reply).decode

        async def on_outcome(msg: Msg) -> None:
            reply = decode(msg.data)
            fut = self.waiting.pop(reply.id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

        await self.client.nc.subscribe(f"vol.res.{self.host}.>", cb=on_outcome)
        await self.client.nc.flush()

    async def command(self, op: str, name: str) -> None:
        """A durable command, until its outcome is on the audit stream (recorded, published: what acks it)."""
        cmd_id = uuid.uuid4().hex
        fut = self.waiting[cmd_id] = asyncio.get_running_loop().create_future()
        await self.client.command(self.host, op, {"name": name}, cmd_id=cmd_id)
        reply = await asyncio.wait_for(fut, 30)
        assert reply.ok, reply.error

    async def durable_pairs(self, n: int, start: int) -> list[float]:
        times = []
        for i in range(start, start + n):
            t = time.perf_counter()
            await self.command("create", f"dur-{i}")
            await self.command("remove", f"dur-{i}")
            times.append(time.perf_counter() - t)
        return times

    async def request_pairs(self, n: int, start: int) -> list[float]:
        times = []
        for i in range(start, start + n):
            t = time.perf_counter()
            r1 = await self.client.request(self.host, "create", {"name": f"req-{i}"})
            r2 = await self.client.request(self.host, "remove", {"name": f"req-{i}"})
            times.append(time.perf_counter() - t)
            assert r1.ok and r2.ok, (r1.error, r2.error)
        return times


def pct(xs: list[float]) -> str:
    p95 = statistics.quantiles(xs, n=20)[18] if len(xs) >= 20 else max(xs)
    return f"p50 {statistics.median(xs) * 1000:6.2f} ms  p95 {p95 * 1000:6.2f} ms"


async def start_side(
    root: Path, label: str, sync: str | None, a: argparse.Namespace, stop: list[Callable[[], object]]
) -> Side:
    d = Dockerd(root / "dk").start()
    stop.append(d.stop)
    d.import_busybox()
    if a.replicas == 1:
        n = NatsServer(root / "nats", max_payload=a.max_payload, sync=sync).start()
        stop.append(n.stop)
        urls = [n.url]
    else:
        c = NatsCluster(root / "nats", size=a.replicas, sync=sync, max_payload=a.max_payload).start()
        stop.append(c.stop)
        urls = c.urls
    host = HOST  # what bench/fleet.py's store_throughput talks to; each stack has its own bus
    ids = Identities.make(root / "keys", tls=False)  # plain NATS, as the earlier figures
    agent = Agent(host, d.url, ",".join(urls), root / "agent", ["--replicas", str(a.replicas)],
                  auth=ids).start(wait=False)
    stop.append(agent.stop)
    agent.wait_ready(120)  # a cluster elects its meta leader first
    client = await AgentClient.connect(urls, signer=ids.operator)
    side = Side(label, host, d, client)
    await side.listen()
    return side


async def measure_ops(sides: list[Side], ops: int) -> None:
    for side in sides:  # warm up both paths
        await side.durable_pairs(WARMUP, -WARMUP)
        await side.request_pairs(WARMUP, -WARMUP)
    done = 0
    while done < ops:
        n = min(BLOCK, ops - done)
        order = sides if (done // BLOCK) % 2 == 0 else sides[::-1]
        for side in order:
            side.durable += await side.durable_pairs(n, done)
        for side in order:
            side.request += await side.request_pairs(n, done)
        done += n


async def measure_backups(sides: list[Side], size: int, rounds: int, always_first: bool) -> dict[str, list[Row]]:
    """Each round backs up and restores on both stacks, in turns (ABBA...), each after an `os.sync()`."""
    for side in sides:
        await fill_big(side.dockerd, side.client, size)
    rows: dict[str, list[Row]] = {side.label: [] for side in sides}
    for r in range(rounds):
        for side in sides[::-1] if (r % 2 == 0) == always_first else sides:
            os.sync()  # no dirty pages from the fill or from the other stack's deferred writes
            rows[side.label] += await backup_restore(side.client)
            for store in ("local", "nats"):
                await side.client.request(HOST, "remove", {"name": f"big-{store}"})
    return rows


def backup_lines(rows: dict[str, list[Row]], size: int) -> list[str]:
    lines = []
    for label, results in rows.items():
        for store in ("local", "nats"):
            b = [x[1] for x in results if x[0] == store]
            r = [x[2] for x in results if x[0] == store]
            mb, mr = statistics.median(b), statistics.median(r)
            lines.append(f"  {label:8} {store:6} backup {' '.join(f'{x:5.2f}' for x in b)} -> {mb:5.2f} "
                         f"({size / mb:4.0f} MiB/s)   restore {' '.join(f'{x:5.2f}' for x in r)} -> {mr:5.2f} "
                         f"({size / mr:4.0f} MiB/s)")
    return lines


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=768, help="MiB of random bytes to back up (default 768)")
    p.add_argument("--ops", type=int, default=200, help="create+remove pairs per path and setting")
    p.add_argument("--max-payload", default=None, help="the nats-server max_payload, e.g. 8MB (default: 1 MiB)")
    p.add_argument("--replicas", type=int, default=1, help="1: one nats-server per setting; 3: a cluster each")
    p.add_argument("--rounds", type=int, default=3, help="backup+restore rounds per stack (0: none)")
    p.add_argument("--always-first", action="store_true", help="back up on the `always` stack first")
    a = p.parse_args()
    load_before = os.getloadavg()
    stop: list[Callable[[], object]] = []
    with tempfile.TemporaryDirectory(prefix="vdu", dir="/var/tmp") as tmp:
        try:
            sides = [await start_side(Path(tmp, "d"), "default", None, a, stop),
                     await start_side(Path(tmp, "a"), "always", "always", a, stop)]
            t = time.perf_counter()
            await measure_ops(sides, a.ops)
            ops_s = time.perf_counter() - t
            rows = {} if a.rounds == 0 else await measure_backups(sides, a.size, a.rounds, a.always_first)
            for side in sides:
                await side.client.close()
        finally:
            for halt in reversed(stop):
                halt()
    load_after = os.getloadavg()
    print(f"nats-server sync_interval: default (2m) vs always; replicas {a.replicas}; max_payload "
          f"{a.max_payload or '1MB'}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"({os.cpu_count()} cores, shared)")
    print(f"create+remove, {a.ops} pairs per path, interleaved in blocks of {BLOCK} ({ops_s:.0f} s):")
    for side in sides:
        print(f"  {side.label:8} durable commands {pct(side.durable)}   requests {pct(side.request)}")
    if rows:
        first = "always" if a.always_first else "default"
        print(f"{a.size} MiB of random bytes (zstd), {a.rounds} rounds taking turns ({first} first); seconds of "
              f"each round -> median (MiB/s):")
        print("\n".join(backup_lines(rows, a.size)))


if __name__ == "__main__":
    asyncio.run(main())

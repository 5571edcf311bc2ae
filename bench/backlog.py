"""Draining a backlog: N signed durable creates published while the agent is down, then the agent started.

Prints the time from the agent's start until every outcome is on the audit stream (`vol.res`), the rate, the span
from the first outcome to the last, and the CPU seconds each process spent (less moved by other load on the
machine than wall time). Then checks that it happened exactly once: every command id has one outcome on the audit
stream and it is `ok`, every volume exists once, and the consumer has nothing pending or unacknowledged.

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/backlog.py [--commands 10000] [--agent-args="--concurrency 64"]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lifecycle import cpu_s
from contracts import Reply, Subjects
from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsServer, venv_bin
from volumectl.client import AgentClient

HOST = "bench"
SUBJECTS = Subjects("vol")
PUBLISHING = 256  # publishes in flight while the backlog is made


async def publish_backlog(client: AgentClient, n: int) -> list[str]:
    """N durable creates of distinct volumes, each signed and acked by the stream; their ids."""
    ids = [uuid.uuid4().hex for _ in range(n)]
    slots = asyncio.Semaphore(PUBLISHING)

    async def one(i: int) -> None:
        async with slots:
            await client.command(HOST, "create", {"name": f"backlog-{i:05d}"}, cmd_id=ids[i])

    await asyncio.gather(*(one(i) for i in range(n)))
    return ids


async def outcomes_stored(client: AgentClient) -> int:
    info = await client.nc.jetstream().stream_info(SUBJECTS.res_stream)
    return int(info.state.messages)


async def read_outcomes(client: AgentClient, n: int) -> list[Reply]:
    """Every outcome on the audit stream (there are `n`), in stream order."""
    js = client.nc.jetstream()
    sub = await js.subscribe(f"vol.res.{HOST}.>", ordered_consumer=True)
    decode = msgspec.json.Decoder(Reply).decode
    try:
        return [decode((await sub.next_msg(timeout=10)).data) for _ in range(n)]
    finally:
        await sub.unsubscribe()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--commands", type=int, default=10_000)
    p.add_argument("--agent-args", default="", help="more volume-agent arguments, e.g. '--concurrency 128'")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the drain")
    p.add_argument("--log", type=Path, help="keep the agent's log there")
    p.add_argument("--profile", type=Path,
                   help="py-spy's samples of the agent during the drain (raw format) there (pip install py-spy)")
    a = p.parse_args()
    n = a.commands
    with tempfile.TemporaryDirectory(prefix="vbl", dir="/var/tmp") as tmp:
        d = Dockerd(Path(tmp, "dk")).start()
        nats = NatsServer(Path(tmp, "nats")).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)  # plain NATS, as bench/lifecycle.py
        agent = Agent(HOST, d.url, nats.url, Path(tmp, "agent"), shlex.split(a.agent_args), auth=ids)
        client = None
        try:
            agent.start()  # makes the streams and its durable consumer, as an agent that ran before
            agent.stop()
            client = await AgentClient.connect([nats.url], signer=ids.operator)
            before = await outcomes_stored(client)
            t = time.perf_counter()
            cmd_ids = await publish_backlog(client, n)
            published_s = time.perf_counter() - t
            assert nats.proc is not None and d.proc is not None
            cpu0 = {"nats-server": cpu_s(nats.proc.pid), "dockerd": cpu_s(d.proc.pid)}
            load_before = os.getloadavg()[0]

            started = time.perf_counter()
            agent.start(wait=False)
            assert agent.proc is not None
            ready_s = first_s = None
            spy: subprocess.Popen[bytes] | None = None
            agent_cpu_first = 0.0
            deadline = started + a.timeout
            while (done := await outcomes_stored(client) - before) < n:
                now = time.perf_counter()
                if ready_s is None and agent._count_ready() > agent._readies:
                    ready_s = now - started
                if first_s is None and done > 0:
                    first_s, agent_cpu_first = now - started, cpu_s(agent.proc.pid)
                    if a.profile is not None:
                        spy = subprocess.Popen([venv_bin("py-spy"), "record", "--pid", str(agent.proc.pid), "--format",
                                                "raw", "-o", str(a.profile), "--nonblocking"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if now > deadline or agent.proc.poll() is not None:
                    raise SystemExit(f"only {done} of {n} outcomes after {now - started:.0f} s; see {agent.log_path}")
                await asyncio.sleep(0.02)
            drained_s = time.perf_counter() - started
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            agent_cpu = cpu_s(agent.proc.pid)
            cpu = {name: cpu_s(pid) - cpu0[name] for name, pid in
                   (("nats-server", nats.proc.pid), ("dockerd", d.proc.pid))}
            load_after = os.getloadavg()[0]

            # Exactly once: one ok outcome per id, every volume there once, nothing left to deliver or to ack.
            replies = await read_outcomes(client, before + n)
            replies = replies[before:]
            per_id = Counter(r.id for r in replies)
            failed = [r for r in replies if not r.ok]
            js = client.nc.jetstream()
            consumer = await js.consumer_info(SUBJECTS.cmd_stream, SUBJECTS.consumer(HOST))
            for _ in range(100):  # the ack follows the outcome's publish
                if consumer.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.05)
                consumer = await js.consumer_info(SUBJECTS.cmd_stream, SUBJECTS.consumer(HOST))
            volumes = [v for v in d.docker("volume", "ls", "-q").split() if v.startswith("backlog-")]
        finally:
            if client is not None:
                await client.close()
            agent.stop()
            nats.stop()
            d.stop()
            if a.log is not None:
                a.log.write_bytes(agent.log_path.read_bytes())

    first = first_s or 0.0
    print(f"backlog of {n} signed durable creates, published in {published_s:.1f} s while the agent was down; "
          f"load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} cores, shared)")
    print(f"  drained in {drained_s:.1f} s from the agent's start: {n / drained_s:.0f} commands/s "
          f"(ready after {ready_s or 0:.1f} s; first outcome after {first:.1f} s, then {n / (drained_s - first):.0f} "
          f"commands/s)")
    print(f"  CPU: agent {agent_cpu:.1f} s in all, {(agent_cpu - agent_cpu_first) / n * 1000:.2f} ms per command "
          f"after the first outcome; nats-server {cpu['nats-server']:.1f} s; dockerd {cpu['dockerd']:.1f} s")
    once = (sorted(per_id) == sorted(cmd_ids) and set(per_id.values()) == {1} and not failed
            and len(volumes) == len(set(volumes)) == n and consumer.num_pending == 0 and consumer.num_ack_pending == 0)
    print(f"  exactly once: {'yes' if once else 'NO'}: {len(per_id)} ids with an outcome, {len(replies)} outcomes, "
          f"{len(failed)} failed, {len(volumes)} volumes; consumer: {consumer.num_pending} pending, "
          f"{consumer.num_ack_pending} unacknowledged, {consumer.num_redelivered} redelivered")
    if failed:
        print(f"  first failure: {failed[0].error}")
    if not once:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())

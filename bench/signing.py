"""What signed requests cost: request latency p50 signed and verified against unsigned and unchecked, in one run,
and the agent's CPU per request; plus signing and verifying alone, in this process.

Two agents on one private dockerd and nats-server, the same code: one checks signatures as always, the other has
its check replaced by one that trusts every message (for this benchmark only: the agent has no such switch).
Requests alternate between them in blocks, so drift on the machine hits both alike.
Run: .venv/bin/python bench/signing.py [--rounds N]  (root and docker.io: scripts/test installs them)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.auth.policy import load_policy
from agent.auth.verify import Verifier
from bench.procstats import TICKS, cpu_s
from tests.identities import Identities
from tests.stack import Dockerd, NatsServer, wait_for
from volumectl.client import AgentClient

# The agent, with its signature check replaced when BENCH_TRUST_ALL is set (both agents start through this).
LAUNCH = """
import os, sys
if os.environ.get("BENCH_TRUST_ALL"):
    from agent.auth import verify
    trusted = verify.Caller("bench", "admin", "U" + "A" * 55)
    verify.Verifier.caller = lambda self, *a, **k: trusted
from agent.daemon import main
sys.exit(main())
"""


def start_agent(host: str, d: Dockerd, n: NatsServer, ids: Identities, root: Path, *, trust_all: bool
                ) -> subprocess.Popen[bytes]:
    log_path = root / f"{host}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")}
    if trust_all:
        env["BENCH_TRUST_ALL"] = "1"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "--nats", n.url, "--docker", d.url, "--host-id", host,
             "--data-dir", str(root / host), "--heartbeat", "3600", "--sizes-every", "0", *ids.agent_args(host)],
            stdout=log, stderr=log, env=env)
    wait_for(lambda: '"agent.ready"' in log_path.read_text(), 30, f"agent {host}", proc)
    return proc


async def block(client: AgentClient, host: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        reply = await client.request(host, "inspect", {"name": "bench-vol"})
        times.append(time.perf_counter() - t)
        assert reply.ok, reply.error
    return times


def alone(ids: Identities, rounds: int) -> tuple[float, float]:
    """Microseconds to sign one request, and to verify it, in this process."""
    subject, body = "vol.req.h.inspect", b'{"name": "bench-vol"}'
    signer = ids.operator
    t = time.perf_counter()
    signed = [signer.headers(subject, body) for _ in range(rounds)]
    sign_us = (time.perf_counter() - t) / rounds * 1e6
    v = Verifier(load_policy(ids.policy), ids.policy, host="h")
    t = time.perf_counter()
    for headers in signed:
        v.caller("inspect", subject, headers, body, durable=False)
    return sign_us, (time.perf_counter() - t) / rounds * 1e6


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2000, help="requests to each agent")
    p.add_argument("--control", action="store_true",
                   help="both agents trust all and both clients send unsigned: the difference is the noise floor")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vsg") as tmp:
        root = Path(tmp)
        d = Dockerd(root / "dk").start()
        n = NatsServer(root / "nats").start()
        ids = Identities.make(root / "keys", tls=False)  # plain NATS, as the earlier figures
        checked = start_agent("checked", d, n, ids, root, trust_all=a.control)
        trusting = start_agent("trusting", d, n, ids, root, trust_all=True)
        try:
            d.docker("volume", "create", "bench-vol")
            signed = await AgentClient.connect([n.url], signer=None if a.control else ids.operator)
            unsigned = await AgentClient.connect([n.url])
            await block(signed, "checked", 100)  # warm up both sides
            await block(unsigned, "trusting", 100)
            on: list[float] = []
            off: list[float] = []
            cpu_on = cpu_off = 0.0
            for _ in range(20):
                c = cpu_s(checked.pid)
                on += await block(signed, "checked", a.rounds // 20)
                cpu_on += cpu_s(checked.pid) - c
                c = cpu_s(trusting.pid)
                off += await block(unsigned, "trusting", a.rounds // 20)
                cpu_off += cpu_s(trusting.pid) - c
            await signed.close()
            await unsigned.close()
        finally:
            for proc in (checked, trusting):
                proc.terminate()
                proc.wait(60)
            n.stop()
            d.stop()
        sign_us, verify_us = alone(ids, 5000)
    p50_on, p50_off = statistics.median(on), statistics.median(off)
    print(f"inspect request p50, {len(on)} each, interleaved in 20 blocks" + (
        " (CONTROL: both unsigned and trusting)" if a.control else "") + ":")
    print(f"  signed, verified by the agent     {p50_on * 1000:7.3f} ms")
    print(f"  unsigned, agent trusts all        {p50_off * 1000:7.3f} ms")
    print(f"  difference                        {(p50_on - p50_off) * 1000:+7.3f} ms")
    print("agent CPU per request (utime+stime from /proc/<pid>/stat, clock ticks of "
          f"{1000 / TICKS:.0f} ms):")
    print(f"  verifying                         {cpu_on / len(on) * 1000:7.3f} ms")
    print(f"  trusting                          {cpu_off / len(off) * 1000:7.3f} ms")
    print(f"in this process, 5000 each: sign {sign_us:.1f} us, verify {verify_us:.1f} us per request")


if __name__ == "__main__":
    asyncio.run(main())

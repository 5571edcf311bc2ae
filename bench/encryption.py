"""What encryption at rest costs: the agent's backup and restore of one volume (768 MiB of random bytes: all of it
goes through age, the worst case) unencrypted and encrypted to one age recipient, in the same run, rounds taking
turns (the order swapped each round), page cache warm; medians in seconds, encrypted / unencrypted, and the CPU
seconds of the agent and its processes (tar, zstd, age) per operation.

Starts its own private dockerd, nats-server and agent (root, docker.io and age needed: scripts/test installs them).
Run: .venv/bin/python bench/encryption.py [--mib 768] [--rounds 3] [--data random|text] [--store local|nats]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backup import fill_random, fill_text
from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsServer
from volumectl.client import AgentClient


def cpu_s(pid: int) -> float:
    """CPU seconds of the agent and of its children it has waited for (tar, zstd, age): /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def timed(client: AgentClient, op: str, body: dict[str, Any], pid: int = 0
                ) -> tuple[float, float, dict[str, Any]]:
    """Seconds, CPU seconds (of `pid` and its children), and the result."""
    cpu, t = cpu_s(pid) if pid else 0.0, time.perf_counter()
    reply = await client.request("bench", op, body, timeout=600)
    took = time.perf_counter() - t
    assert reply.ok and reply.result is not None, reply.error
    return took, (cpu_s(pid) - cpu if pid else 0.0), reply.result


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=768)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", choices=["random", "text"], default="random")
    p.add_argument("--store", choices=["local", "nats"], default="local")
    a = p.parse_args()
    load_before = os.getloadavg()[0]
    times: dict[tuple[str, str], list[float]] = {(op, kind): [] for op in ("backup", "restore")
                                                 for kind in ("plain", "age")}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in times}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="venc", dir="/var/tmp") as tmp:
        key = Path(tmp, "identity.txt")
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True,
                                   text=True).stdout.strip()
        d = Dockerd(Path(tmp, "dk")).start()
        n = NatsServer(Path(tmp, "nats")).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)
        agent = Agent("bench", d.url, n.url, Path(tmp, "agent"), ["--age-identity", str(key)], auth=ids).start()
        client = await AgentClient.connect([n.url], signer=ids.operator)
        assert agent.proc is not None
        pid = agent.proc.pid
        try:
            await client.request("bench", "create", {"name": "bench-enc"})
            src = Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "bench-enc").strip())
            (fill_random if a.data == "random" else fill_text)(src, a.mib)
            subprocess.run(f"cat {src}/* > /dev/null", shell=True, check=True)  # warm the page cache
            for r in range(a.rounds):
                kinds = ["plain", "age"] if r % 2 == 0 else ["age", "plain"]
                for kind in kinds:
                    body: dict[str, Any] = {"volume": "bench-enc", "store": a.store}
                    if kind == "age":
                        body["encrypt_to"] = [recipient]
                    took, used, rec = await timed(client, "backup", body, pid)
                    times["backup", kind].append(took)
                    cpu["backup", kind].append(used)
                    sizes[kind] = rec["stored_size"]
                    target = f"bench-enc-{kind}-{r}"
                    took, used, _ = await timed(client, "restore", {"backup_id": rec["backup_id"], "volume": target},
                                                pid)
                    times["restore", kind].append(took)
                    cpu["restore", kind].append(used)
                    await timed(client, "forget", {"backup_id": rec["backup_id"]})
                    await timed(client, "remove", {"name": target})
        finally:
            await client.close()
            agent.stop()
            n.stop()
            d.stop()
    print(f"{a.mib} MiB of {a.data} bytes, zstd, store {a.store}; {a.rounds} rounds taking turns; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} cores)")
    print(f"stored: {sizes['plain'] / 2**20:.1f} MiB unencrypted, {sizes['age'] / 2**20:.1f} MiB encrypted")
    for op in ("backup", "restore"):
        plain, enc = (statistics.median(times[op, k]) for k in ("plain", "age"))
        rounds = "  ".join(f"{p:.2f}/{e:.2f}" for p, e in zip(times[op, "plain"], times[op, "age"], strict=True))
        cpu_plain, cpu_enc = (statistics.median(cpu[op, k]) for k in ("plain", "age"))
        print(f"{op:8} unencrypted {plain:6.2f} s   encrypted {enc:6.2f} s   ratio {enc / plain:.2f}x   "
              f"CPU {cpu_plain:.2f} -> {cpu_enc:.2f} s   (rounds, unencrypted/encrypted: {rounds})")
    print("target: encrypted within 1.1x of unencrypted")


if __name__ == "__main__":
    asyncio.run(main())

"""Restore drill figures: the time `verify` takes for a volume of N MiB (default 1 GiB of random bytes in one file
plus 2,000 small files), from the local store and from the NATS store, beside what the same steps take typed by
hand (`zstd -d | tar -x` into a directory, `tar -c | sha256sum` of it, `rm -rf`); and what taking the content
digest while backing up costs: the agent's backup beside `tar | zstd` and `tar | tee | zstd` with a digest reader.

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/drill.py [--mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procstats import peak_rss_mib, timed
from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsServer
from volumectl.client import AgentClient


async def request(client: AgentClient, op: str, body: dict[str, object]) -> tuple[dict[str, object], float]:
    t = time.perf_counter()
    reply = await client.request("bench", op, body, timeout=1800)
    took = time.perf_counter() - t
    assert reply.ok and reply.result is not None, reply.error
    return reply.result, took


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=2, help="each figure is the best of this many")
    p.add_argument("--backups-only", action="store_true",
                   help="no drills: to time an agent without them (PYTHONPATH=<an older checkout>)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vdr", dir="/var/tmp") as tmp:
        d = Dockerd(Path(tmp, "dk")).start()
        n = NatsServer(Path(tmp, "nats")).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)
        agent = Agent("bench", d.url, n.url, Path(tmp, "agent"), auth=ids).start()
        assert agent.proc is not None
        client = await AgentClient.connect([n.url], signer=ids.operator)
        figures: dict[str, float] = {}

        def best(name: str, seconds: float) -> None:
            figures[name] = min(figures.get(name, seconds), seconds)

        try:
            vol = "bench-drill"
            await request(client, "create", {"name": vol})
            src = Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", vol).strip())
            with open(src / "random.bin", "wb") as f:
                for _ in range(a.mib):
                    f.write(os.urandom(1 << 20))
            (src / "small").mkdir()
            for i in range(2000):
                (src / "small" / f"f{i}").write_text(f"{i}\n" * 10)
            subprocess.run(f"cat {src}/random.bin > /dev/null", shell=True, check=True)  # warm the page cache
            native = Path(tmp, "native.tar.zst")
            scratch = Path(tmp, "scratch")
            digester = f"{sys.executable} -c 'import sys; from agent.backup.digest import tree_digest; " \
                       f"print(tree_digest(sys.stdin.buffer))' > /dev/null"
            for _ in range(a.rounds):
                best("tar | zstd", timed(f"tar -C {src} -cf - . | zstd -q -T0 -3 > {native}"))
                best("tar | tee (digest) | zstd", timed(
                    f"tar -C {src} -cf - . | tee >(cd {Path(__file__).resolve().parents[1]} && {digester}) "
                    f"| zstd -q -T0 -3 > {native}"))
                local, took = await request(client, "backup", {"volume": vol})
                best("agent backup, local (with digest)", took)
                shared, took = await request(client, "backup", {"volume": vol, "store": "nats"})
                best("agent backup, nats (with digest)", took)
                best("by hand: zstd -d | tar -x, tar -c | sha256sum, rm", timed(
                    f"mkdir {scratch} && zstd -q -dc {native} | tar -xpf - -C {scratch} && "
                    f"tar -C {scratch} -cf - . | sha256sum > /dev/null && rm -rf {scratch}"))
                if a.backups_only:
                    for r in (local, shared):
                        await request(client, "forget", {"backup_id": r["backup_id"]})
                    continue
                _, took = await request(client, "verify", {"backup_id": local["backup_id"]})
                best("agent verify, local", took)
                _, took = await request(client, "verify", {"backup_id": shared["backup_id"]})
                best("agent verify, nats", took)
                for r in (local, shared):
                    await request(client, "forget", {"backup_id": r["backup_id"]})
            rss = peak_rss_mib(agent.proc.pid)
        finally:
            await client.close()
            agent.stop()
            n.stop()
            d.stop()
    print(f"{a.mib} MiB of random bytes + 2,000 small files, page cache warm; best of {a.rounds}; "
          f"{os.cpu_count()} cores; seconds")
    for name, seconds in figures.items():
        print(f"  {name:52} {seconds:7.2f}")
    print(f"agent peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())

"""Backup and restore figures: the agent against the native pipeline a careful admin would type, and against
`docker cp` (the Engine archive API), on two 768 MiB volumes (random bytes; log-like text); the agent's peak RSS.

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/backup.py [--mib 768]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procstats import peak_rss_mib, timed
from tests.identities import Identities
from tests.stack import BUSYBOX_IMAGE, Agent, Dockerd, NatsServer
from volumectl.client import AgentClient


def fill_random(root: Path, mib: int) -> None:
    with open(root / "random.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def fill_text(root: Path, mib: int) -> None:
    rng = random.Random(7)
    words = ["GET", "POST", "/api/v1/items", "/health", "200", "404", "500", "user", "session", "cache", "miss"]
    with open(root / "app.log", "w") as f:
        written = 0
        while written < mib << 20:
            line = (f"2026-11-28T07:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z "
                    f"INFO {' '.join(rng.choices(words, k=8))} id={rng.getrandbits(48):x} ms={rng.randrange(900)}\n")
            written += f.write(line)




async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=768)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vbk", dir="/var/tmp") as tmp:
        d = Dockerd(Path(tmp, "dk")).start()
        d.import_busybox()
        n = NatsServer(Path(tmp, "nats")).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)  # plain NATS, as the earlier figures
        agent = Agent("bench", d.url, n.url, Path(tmp, "agent"), auth=ids).start()
        assert agent.proc is not None
        client = await AgentClient.connect([n.url], signer=ids.operator)
        rows = []
        try:
            for kind, fill in (("random", fill_random), ("text", fill_text)):
                vol = f"bench-{kind}"
                await client.request("bench", "create", {"name": vol})
                src = Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", vol).strip())
                fill(src, a.mib)
                subprocess.run(f"cat {src}/* > /dev/null", shell=True, check=True)  # warm the page cache
                native_file = Path(tmp, f"{kind}.tar.zst")
                native_b = timed(f"tar -C {src} -cf - . | zstd -q -T0 -3 > {native_file}")
                native_file.unlink()
                # The agent's backups are durable (fsync before they count): the same, with a sync.
                native_sync = timed(f"tar -C {src} -cf - . | zstd -q -T0 -3 > {native_file} && sync -d {native_file}")
                t = time.perf_counter()
                rec = await client.request("bench", "backup", {"volume": vol}, timeout=600)
                agent_b = time.perf_counter() - t
                assert rec.ok, rec.error
                out = Path(tmp, f"{kind}-native-restore")
                out.mkdir()
                native_r = timed(f"zstd -q -dc {native_file} | tar -xpf - -C {out}")
                shutil.rmtree(out)
                t = time.perf_counter()
                res = await client.request("bench", "restore", {"backup_id": rec.result["backup_id"],
                                                               "volume": f"{vol}-restored"}, timeout=600)
                agent_r = time.perf_counter() - t
                assert res.ok, res.error
                d.docker("create", "--name", f"cp-{kind}", "--network", "none", "-v", f"{vol}:/data", BUSYBOX_IMAGE)
                cp_file = Path(tmp, f"{kind}-cp.tar")
                cp_b = timed(f"docker -H {d.url} cp cp-{kind}:/data/. - > {cp_file}")
                d.docker("volume", "create", f"{vol}-cp")
                d.docker("create", "--name", f"cpr-{kind}", "--network", "none", "-v", f"{vol}-cp:/data",
                         BUSYBOX_IMAGE)
                cp_r = timed(f"docker -H {d.url} cp - cpr-{kind}:/data < {cp_file}")
                rows.append((kind, native_b, native_sync, agent_b, cp_b, native_r, agent_r, cp_r,
                             rec.result["stored_size"] / rec.result["size"]))
                for f in (native_file, cp_file):
                    f.unlink()
                await client.request("bench", "forget", {"backup_id": rec.result["backup_id"]})
            rss = peak_rss_mib(agent.proc.pid)
        finally:
            await client.close()
            agent.stop()
            n.stop()
            d.stop()
    print(f"{a.mib} MiB per volume, page cache warm; seconds (agent / native ratio in brackets)")
    print(f"{'data':8} {'tar|zstd':>9} {'+ fdatasync':>11} {'agent backup':>25} {'docker cp out':>14} "
          f"{'zstd|tar':>9} {'agent restore':>18} {'docker cp in':>13} {'stored/tar':>10}")
    for kind, nb, ns, ab, cb, nr, ar, cr, ratio in rows:
        print(f"{kind:8} {nb:9.2f} {ns:11.2f} {ab:7.2f} ({ab / nb:.2f}x; {ab / ns:.2f}x) {cb:14.2f} {nr:9.2f} "
              f"{ar:7.2f} ({ar / nr:.2f}x) {cr:13.2f} {ratio:10.2f}")
    print("ratios: agent / native, and for backup also agent / native with fdatasync (both are durable)")
    print(f"agent peak RSS: {rss:.0f} MiB (target < 200 MiB); targets: backup and restore within 1.25x of native")


if __name__ == "__main__":
    asyncio.run(main())

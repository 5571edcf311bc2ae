"""Restic stores: the issue's five targets, each beside restic alone on the same data, in one run.

- unchanged re-backup of a volume of N files (default 10 GiB in 10,000): target <= 1.5 s (restic alone: the floor);
- first backup within 1.1x of `restic backup` of the same directory to a repository of its own;
- restore within 1.1x of `restic restore` (the agent's own snapshot; and another host's, checked member by member
  first, beside it);
- after changing 1% of the files, the repository grows by at most 1.2x the changed data;
- two hosts backing up the same data (default 1 GiB): the repository grows by at most 1.05x it for both;
- the agent's peak RSS < 100 MiB, restic's own beside it.
restic alone runs before and after the agent for each timed figure (their mean): the order favours neither.

Starts its own private dockerd, nats-server and two agents (root, docker.io and restic needed: scripts/test installs
them); repositories are directories (restic's local backend), the page cache warm for both sides.
Run: .venv/bin/python bench/restic.py [--gib 10 --files 10000 --dedup-gib 1]  (a quick run: --gib 1 --files 1000)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procstats import peak_rss_mib
from tests.identities import Identities
from tests.restic_backends import write_stores
from tests.stack import Agent, Dockerd, NatsServer
from volumectl.client import AgentClient

A, B = "bench-a", "bench-b"


def fill(root: Path, total: int, files: int) -> None:
    """`files` files of random bytes, `total` bytes in all, in 100 directories."""
    each = total // files
    for i in range(files):
        d = root / f"d{i % 100:02d}"
        d.mkdir(exist_ok=True)
        with open(d / f"f{i:06d}.bin", "wb") as f:
            left = each
            while left > 0:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


CPU: dict[str, float] = {}
"""CPU seconds of the last timed run, by side: wall times on a shared 2-core machine move with the neighbours' load,
CPU seconds do not."""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _agent_cpu(pid: int) -> float:
    """The agent's own CPU seconds and its finished children's (restic), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def restic(repo: Path, pw: Path, *args: str, cwd: Path | None = None) -> float:
    t, c = time.perf_counter(), _children_cpu()
    subprocess.run(["restic", "-r", str(repo), "--password-file", str(pw), "-q", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)
    CPU["alone"] = _children_cpu() - c
    return time.perf_counter() - t



PIDS: dict[str, int] = {}


async def timed(client: AgentClient, host: str, op: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t, c = time.perf_counter(), _agent_cpu(PIDS[host])
    reply = await client.request(host, op, body, timeout=3600)
    assert reply.ok and reply.result is not None, reply.error
    CPU["agent"] = _agent_cpu(PIDS[host]) - c
    return time.perf_counter() - t, reply.result


def mountpoint(d: Dockerd, vol: str) -> Path:
    return Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", vol).strip())


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=10.0)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--dedup-gib", type=float, default=1.0)
    p.add_argument("--dir", default="/var/tmp", help="where the volumes and repositories go (needs ~5x --gib)")
    a = p.parse_args()
    total, dedup_total = int(a.gib * (1 << 30)), int(a.dedup_gib * (1 << 30))
    with tempfile.TemporaryDirectory(prefix="vrb", dir=a.dir) as tmp_s:
        tmp = Path(tmp_s)
        pw = tmp / "restic.pass"
        pw.write_text("bench\n")
        pw.chmod(0o600)
        alone, alone2, through, shared = tmp / "repo-alone", tmp / "repo-alone2", tmp / "repo-agent", tmp / "repo-dedup"
        for repo in (alone, alone2, through, shared):
            restic(repo, pw, "init")
        entry = {"kind": "restic", "password_file": str(pw)}
        stores = write_stores(tmp / "stores.toml", {
            "repo": {**entry, "repository": str(through), "shared": False},
            "dedup": {**entry, "repository": str(shared)},
        })
        d = Dockerd(tmp / "dk").start()
        n = NatsServer(tmp / "nats").start()
        ids = Identities.make(tmp / "keys", tls=False)
        for h in (A, B):
            ids.agent(h)
        agents = {h: Agent(h, d.url, n.url, tmp / f"agent-{h}", ["--stores", str(stores)], auth=ids).start()
                  for h in (A, B)}
        client = await AgentClient.connect([n.url], signer=ids.operator)
        PIDS.update({h: ag.proc.pid for h, ag in agents.items() if ag.proc is not None})
        fig: dict[str, float] = {}
        load = os.getloadavg()[0]
        try:
            for h in (A, B):  # each agent asks restic for the repositories' ids once: not part of the figures
                await client.request(h, "create", {"name": f"warm-{h}"})
                (mountpoint(d, f"warm-{h}") / "x").write_text("x")
                for store in ("repo", "dedup"):
                    await timed(client, h, "backup", {"volume": f"warm-{h}", "store": store})
            await client.request(A, "create", {"name": "big"})
            src = mountpoint(d, "big")
            t = time.perf_counter()
            fill(src, total, a.files)
            print(f"made {a.gib:g} GiB in {a.files} files in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            subprocess.run(f"find {src} -type f -exec cat {{}} + > /dev/null", shell=True, check=True)

            # restic alone before and after the agent (the mean): the order favours neither.
            before_s = restic(alone, pw, "backup", "--host", "alone", ".", cwd=src)
            fig["first_agent"], first = await timed(client, A, "backup", {"volume": "big", "store": "repo"})
            fig["first_agent_cpu"] = CPU["agent"]
            fig["first_alone"] = (before_s + restic(alone2, pw, "backup", "--host", "alone", ".", cwd=src)) / 2
            fig["first_alone_cpu"] = CPU["alone"]
            shutil.rmtree(alone2)
            before_s = restic(alone, pw, "backup", "--host", "alone", ".", cwd=src)
            fig["again_agent"], again = await timed(client, A, "backup", {"volume": "big", "store": "repo"})
            fig["again_alone"] = (before_s + restic(alone, pw, "backup", "--host", "alone", ".", cwd=src)) / 2
            fig["again_unmodified"] = again["restic"].get("files_unmodified", 0)

            changed_files = sorted(src.rglob("*.bin"))[:: 100]  # 1%
            before_alone, before_agent = du(alone), du(through)
            changed = 0
            for f in changed_files:
                size = f.stat().st_size
                f.write_bytes(os.urandom(size))
                changed += size
            fig["changed"] = changed
            restic(alone, pw, "backup", "--host", "alone", ".", cwd=src)
            fig["grow_alone"] = du(alone) - before_alone
            fig["changed_agent_s"], _ = await timed(client, A, "backup", {"volume": "big", "store": "repo"})
            fig["grow_agent"] = du(through) - before_agent

            out = tmp / "restored-alone"
            before_s = restic(alone, pw, "restore", "latest", "--target", str(out))
            shutil.rmtree(out)
            fig["restore_agent"], _ = await timed(client, A, "restore", {"backup_id": first["backup_id"],
                                                                         "volume": "big-restored"})
            fig["restore_agent_cpu"] = CPU["agent"]
            d.docker("volume", "rm", "big-restored")
            fig["restore_alone"] = (before_s + restic(alone, pw, "restore", "latest", "--target", str(out))) / 2
            fig["restore_alone_cpu"] = CPU["alone"]
            shutil.rmtree(out)
            fig["restore_other"], _ = await timed(client, B, "restore", {"backup_id": first["backup_id"],
                                                                         "volume": "big-on-b"})
            d.docker("volume", "rm", "big-on-b")
            rss_restic = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

            for h in (A, B):
                await client.request(h, "create", {"name": f"same-{h}"})
            fill(mountpoint(d, f"same-{A}"), dedup_total, max(1, a.files // 10))
            shutil.copytree(mountpoint(d, f"same-{A}"), mountpoint(d, f"same-{B}"), dirs_exist_ok=True)
            before = du(shared)
            await timed(client, A, "backup", {"volume": f"same-{A}", "store": "dedup"})
            await timed(client, B, "backup", {"volume": f"same-{B}", "store": "dedup"})
            fig["dedup_grow"] = du(shared) - before
            rss = {h: peak_rss_mib(ag.proc.pid) for h, ag in agents.items() if ag.proc is not None}
        finally:
            await client.close()
            for ag in agents.values():
                ag.stop()
            n.stop()
            d.stop()

    gib = 1 << 30
    print(f"restic {subprocess.run(['restic', 'version'], capture_output=True, text=True).stdout.split()[1]}, "
          f"{a.gib:g} GiB in {a.files} files (random), local repositories, page cache warm; seconds "
          f"(load average at the start: {load:.1f} on {os.cpu_count()} cores)")
    print(f"{'':34} {'agent':>9} {'restic alone':>13} {'ratio':>7}  target")
    rows = [
        ("unchanged re-backup (s)", fig["again_agent"], fig["again_alone"], "agent <= 1.5 s"),
        ("first backup (s)", fig["first_agent"], fig["first_alone"], "<= 1.1x"),
        ("  CPU seconds (agent + restic)", fig["first_agent_cpu"], fig["first_alone_cpu"], ""),
        ("restore, own snapshot (s)", fig["restore_agent"], fig["restore_alone"], "<= 1.1x"),
        ("  CPU seconds (agent + restic)", fig["restore_agent_cpu"], fig["restore_alone_cpu"], ""),
        ("restore, another host's (s)", fig["restore_other"], fig["restore_alone"], "(checked first)"),
        ("1% changed: backup (s)", fig["changed_agent_s"], float("nan"), ""),
        ("1% changed: growth / changed", fig["grow_agent"] / fig["changed"], fig["grow_alone"] / fig["changed"],
         "<= 1.2"),
    ]
    for name, ours, theirs, target in rows:
        print(f"{name:34} {ours:9.2f} {theirs:13.2f} {ours / theirs:7.2f}  {target}")
    print(f"{'unchanged re-backup: files not read':34} {fig['again_unmodified']:9.0f} of {a.files}")
    print(f"{'two hosts, same data: growth (GiB)':34} {fig['dedup_grow'] / gib:9.3f} for {a.dedup_gib:g} GiB each "
          f"(target <= {1.05 * a.dedup_gib:.2f})")
    print(f"{'peak RSS (MiB)':34} " + ", ".join(f"{h} {v:.0f}" for h, v in rss.items())
          + f"; restic {rss_restic:.0f} (target: agent < 100)")


if __name__ == "__main__":
    asyncio.run(main())

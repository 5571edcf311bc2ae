"""Backup policy figures.

1. Evaluating every policy against 2,000 volumes: which of 20 policies cover each volume (selectors by host,
   volume glob and labels), and each covered pair's next run (cold: nothing cached; warm: the scheduler's look
   when nothing is due).
2. 200 small volumes on one host, all scheduled for the same second (spread 0, the worst case): time from the
   slot until every backup is done, the most backups running at once (from the agent's events), and the agent's
   peak RSS (VmHWM).

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/policies.py [--volumes 200] [--max-backups 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.policies.coverage import Rule, covered
from agent.policies.scheduler import Scheduler
from agent.policies.timing import next_due, offset_s, spread_window_s
from contracts import BackupPolicy, Reply, Subjects
from contracts.cron import parse_schedule
from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsServer
from volumectl.client import AgentClient
from volumectl.policies import remove_policy, set_policy

S = Subjects("vol")


def _rules(n: int) -> list[Rule]:
    rules = []
    for i in range(n):
        selector: dict[str, object] = [{"volumes": [f"app{i}-*"]}, {"labels": [f"team=t{i}"]},
                                       {"hosts": ["bench*", "web-*"], "volumes": [f"*-{i}"]},
                                       {"labels": ["backup"], "volumes": ["db-*", f"app{i}*"]}][i % 4]
        p = msgspec.convert({"name": f"p{i}", "schedule": ["@daily", "0 */4 * * *", "30 2 * * 1-5", "@hourly"][i % 4],
                             "keep": {"daily": 7, "weekly": 4}, "selector": selector,
                             "timezone": ["UTC", "Europe/Berlin"][i % 2]}, BackupPolicy)
        sched = parse_schedule(p.schedule, p.timezone)
        interval = sched.interval_s()
        rules.append(Rule(p, sched, interval, spread_window_s(p, interval), "ops", ""))
    return rules


def evaluation(volumes: int, policies: int, rounds: int = 5) -> None:
    rules = _rules(policies)
    vols = [{"Name": f"app{i % 20}-{i}", "Labels": {"team": f"t{i % 20}", **({"backup": ""} if i % 3 == 0 else {})}}
            for i in range(volumes)]
    now = datetime.now(UTC)
    cold, warm = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        cover = covered(rules, "bench-1", vols)
        dues = {(r.name, v): next_due(r.schedule, offset_s(r.name, "bench-1", v, r.window_s), done_through=now,
                                      now=now) for v, rs in cover.items() for r in rs}
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        cover = covered(rules, "bench-1", vols)
        assert all(dues[(r.name, v)].at > now for v, rs in cover.items() for r in rs)  # what a warm look checks
        warm.append(time.perf_counter() - t)
    pairs = sum(len(rs) for rs in cover.values())
    print(f"evaluate {policies} policies x {volumes} volumes ({pairs} covered pairs): "
          f"cold {statistics.median(cold) * 1000:.1f} ms (selectors + next run of every pair), "
          f"warm {statistics.median(warm) * 1000:.1f} ms (selectors only, next runs cached)")


async def same_second(n: int, max_backups: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vabench-") as tmp:
        d = Dockerd(Path(tmp, "dk")).start()
        nats = NatsServer(Path(tmp, "nats")).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)
        agent = Agent("bench", d.url, nats.url, Path(tmp, "agent"), ["--max-backups", str(max_backups)],
                      auth=ids).start()
        client = await AgentClient.connect([nats.url], signer=ids.operator)
        try:
            for i in range(n):
                assert (await client.request("bench", "create", {"name": f"small-{i}"})).ok
                mp = Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", f"small-{i}").strip())
                for j in range(10):
                    (mp / f"f{j}.txt").write_text(f"volume {i} file {j}\n" * 200)
            running, peak, done = 0, 0, 0
            finished = asyncio.Event()
            last_done = 0.0

            async def on_event(msg: object) -> None:
                nonlocal running, peak
                kind = msg.subject.rsplit(".", 2)[-2:]  # type: ignore[attr-defined]
                if kind == ["backup", "started"]:
                    running += 1
                    peak = max(peak, running)
                elif kind in (["backup", "completed"], ["backup", "failed"]):
                    running -= 1

            async def on_result(msg: object) -> None:
                nonlocal done, last_done
                reply = msgspec.json.decode(msg.data, type=Reply)  # type: ignore[attr-defined]
                if reply.caller == "policy:burst":
                    assert reply.ok, reply.error
                    done += 1
                    last_done = time.time()
                    if done == n:
                        finished.set()

            await client.nc.subscribe(S.evt("bench", "backup.>"), cb=on_event)
            await client.nc.subscribe(S.res("bench", "backup"), cb=on_result)
            await client.nc.flush()
            slot = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
            policy = msgspec.convert({"name": "burst", "schedule": f"{slot.second} {slot.minute} {slot.hour} * * *",
                                      "keep": {"last": 3}, "spread_s": 0, "selector": {"volumes": ["small-*"]}},
                                     BackupPolicy)
            await set_policy(client.nc.jetstream(), S, ids.operator, policy)
            await asyncio.wait_for(finished.wait(), 600)
            took = last_done - slot.timestamp()
            rss = _vm_hwm(agent)
            print(f"{n} small volumes scheduled for the same second, --max-backups {max_backups}: all done "
                  f"{took:.1f} s after the slot ({n / took:.1f} backups/s), peak {peak} at once, "
                  f"agent peak RSS {rss / 1024:.0f} MiB")
            await remove_policy(client.nc.jetstream(), S, ids.operator, "burst")
        finally:
            await client.close()
            agent.stop()
            nats.stop()
            d.stop()


def _vm_hwm(agent: Agent) -> int:
    assert agent.proc is not None
    for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--volumes", type=int, default=200)
    p.add_argument("--max-backups", type=int, default=4)
    a = p.parse_args()
    evaluation(2000, 20)
    asyncio.run(same_second(a.volumes, a.max_backups))
    assert Scheduler  # the code under measurement


if __name__ == "__main__":
    main()

"""A host whose inventory takes several chunks, against a real agent, dockerd and nats-server: the fleet shows
every volume, a change of one volume rewrites its chunk and the head and nothing else, removed volumes vanish, and
the `inventory` request answers with every volume. (`--inventory-chunk 32`: 300 volumes make 16 chunks, as
20,000 make 64 under the default; bench/inventory.py runs the 20,000.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from nats.js.kv import KeyValue

from agent.docker import DockerEngine
from contracts import chunk_key, chunk_of, head_key
from tests.identities import Identities
from tests.stack import Dockerd, NatsServer, venv_bin
from volumectl.client import AgentClient

from .test_events import eventually

VOLUMES = 300
PER_CHUNK = 32
CHUNKS = 16


async def make_volumes(dockerd: Dockerd, names: list[str], *, remove: bool = False) -> None:
    """Through the Engine API (about 1.6 ms a volume; the CLI takes 10 to 50 ms)."""
    engine = DockerEngine(dockerd.url)
    await engine.start()
    try:
        sem = asyncio.Semaphore(16)

        async def one(name: str) -> None:
            async with sem:
                if remove:
                    await engine.volume_remove(name, force=False)
                else:
                    await engine.volume_create({"Name": name, "Labels": {"team": name[-1]}})

        await asyncio.gather(*(one(n) for n in names))
    finally:
        await engine.stop()


async def fleet_names(client: AgentClient, host: str) -> set[str]:
    snapshot = next((s for s in await client.inventories() if s.host == host), None)
    return {v.name for v in snapshot.volumes} if snapshot is not None else set()


async def revisions(kv: KeyValue, host: str) -> dict[str, int]:
    keys = [head_key(host), host, *(chunk_key(host, i) for i in range(CHUNKS))]
    return {k: (await kv.get(k)).revision or 0 for k in keys}


def fleet_json(identities: Identities, url: str) -> list[dict[str, Any]]:
    out = subprocess.run([venv_bin("volumectl"), "--nats", url, "--json", "fleet"], capture_output=True, text=True,
                         timeout=60, env=identities.env())
    assert out.returncode == 0, out.stderr
    snapshots: list[dict[str, Any]] = json.loads(out.stdout)
    return snapshots


async def test_an_inventory_in_chunks_is_whole_in_the_fleet_and_a_change_rewrites_one_chunk(
    make_agent: Any, dockerd: Dockerd, client: AgentClient, nats_server: NatsServer, identities: Identities
) -> None:
    names = [f"scale-{i:03d}" for i in range(VOLUMES)]
    await make_volumes(dockerd, names)
    a = make_agent(extra=["--ack-wait", "2", "--inventory-chunk", str(PER_CHUNK), "--sizes-every", "0"])
    host = a.host_id

    async def all_there() -> bool:
        return await fleet_names(client, host) == set(names)

    await eventually(all_there, 20, f"{VOLUMES} volumes in the fleet")
    [mine] = [s for s in fleet_json(identities, nats_server.url) if s["host"] == host]
    assert len(mine["volumes"]) == VOLUMES  # volumectl fleet, the command
    kv = await client.nc.jetstream().key_value("vol_inventory")
    before = await revisions(kv, host)

    # One volume made through the agent: its chunk and the head are written again, nothing else.
    assert (await client.request(host, "create", {"name": "scale-extra"})).ok

    async def extra_there() -> bool:
        return "scale-extra" in await fleet_names(client, host)

    await eventually(extra_there, 10, "the new volume in the fleet")
    after = await revisions(kv, host)
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {head_key(host), chunk_key(host, chunk_of("scale-extra", CHUNKS))}

    # One removed through the agent: the same, and it is gone.
    assert (await client.request(host, "remove", {"name": "scale-007"})).ok

    async def gone() -> bool:
        return "scale-007" not in await fleet_names(client, host)

    await eventually(gone, 10, "the removed volume gone from the fleet")
    again = await revisions(kv, host)
    changed = {k for k in after if again[k] != after[k]}
    assert changed == {head_key(host), chunk_key(host, chunk_of("scale-007", CHUNKS))}

    # 100 removed outside the agent at once (a burst of events): gone too.
    await make_volumes(dockerd, names[100:200], remove=True)
    left = {*names[:100], *names[200:], "scale-extra"} - {"scale-007"}

    async def burst_gone() -> bool:
        return await fleet_names(client, host) == left

    await eventually(burst_gone, 10, "the 100 removed volumes gone from the fleet")

    # The inventory request: chunk by chunk, every volume (and the whole, which fits here, as before 2.2).
    reply = await client.inventory(host)
    assert reply.ok and reply.result is not None, reply.error
    assert {v["name"] for v in reply.result["volumes"]} == left and "chunks" not in reply.result
    first = await client.request(host, "inventory", {"chunk": 0})
    assert first.result is not None and first.result["chunks"] == CHUNKS
    whole = await client.request(host, "inventory", {})
    assert whole.result is not None and len(whole.result["volumes"]) == len(left)
    [gathered] = [r for r in await client.gather_inventories(window=1.5) if r.host == host]
    assert gathered.result is not None and len(gathered.result["volumes"]) == len(left)
    assert '"inventory.not_published"' not in a.log()

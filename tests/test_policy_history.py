"""A host-limited operator cannot take a fleet policy away from a freshly started agent (empty data dir).

`far` is an operator only of host `elsewhere`: NATS lets it write the policies bucket, but an agent elsewhere
applies only what `ops` (an operator of every host) signed. Each test sets a policy as `ops`, attacks it as `far`
(overwrite, rollback to an older genuine version, signed removal, a flood or purge of the key's history), then
starts an agent that has never seen the policy: it applies `ops`'s newest version.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.js.errors import APIError

from agent.streams import policies_stream
from contracts import BackupPolicy, PolicyView, Subjects
from volumectl.client import AgentClient
from volumectl.policies import remove_policy, set_policy, sign_entry

from .identities import Identities
from .stack import Agent
from .test_events import eventually
from .test_policies import Policies, view

pytestmark = pytest.mark.integration

S = Subjects("vol")
# More than any KV history the server allows (64): whatever the bucket keeps, the genuine revision is gone.
FLOOD = 70


@pytest_asyncio.fixture(loop_scope="session")
async def far(nats_server: Any, identities: Identities) -> AsyncIterator[AgentClient]:
    """Connected as `far`, the operator of host `elsewhere` only. The policies bucket exists (made as the agents
    make it, by the admin: no agent need have run, so none holds a copy of the tests' policies)."""
    admin = await identities.nats([nats_server.url])
    try:
        await admin.jetstream().add_stream(policies_stream(S, 1))
    finally:
        await admin.close()
    c = await identities.connect([nats_server.url], "far")
    yield c
    await c.close()


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(client: AgentClient, identities: Identities) -> AsyncIterator[Policies]:
    """Policies set as `ops`, removed (signed by ops) after the test, whatever the bucket holds then: a removal
    signed by `far` does not remove them."""
    p = Policies(client, identities)
    yield p
    for name in p.names:
        await remove_policy(client.nc.jetstream(), S, identities.operator, name)


def _name() -> str:
    return f"fleet-{uuid.uuid4().hex[:8]}"


async def _set(fleet: Policies, name: str, fresh: Agent, keep: int) -> BackupPolicy:
    """`ops` sets the fleet policy `name`, covering the fresh agent's host and `elsewhere`."""
    return await fleet.set(name, fresh.host_id, schedule="@yearly", keep={"yearly": keep},
                              selector={"hosts": [fresh.host_id, "elsewhere"]})


async def _applied(client: AgentClient, host: str, name: str) -> PolicyView:
    """The version of `name` the agent on `host` applies, once it applies one."""
    async def check() -> PolicyView | None:
        return next((p for p in (await view(client, host)).policies if p.policy.name == name), None)
    found: PolicyView = await eventually(check, 10, f"{host} to apply {name}")
    return found


async def _as_far(far: AgentClient, identities: Identities, genuine: BackupPolicy) -> None:
    """`far` signs its own version of the policy (keep 1 instead of ops' rules)."""
    mine = msgspec.structs.replace(genuine, keep=msgspec.convert({"yearly": 1}, type(genuine.keep)))
    await set_policy(far.nc.jetstream(), S, identities.signers["far"], mine)


async def test_an_entry_far_writes_over_a_fleet_policy_does_not_delete_it_on_a_fresh_host(
    make_agent: Any, client: AgentClient, far: AgentClient, identities: Identities, fleet: Policies,
) -> None:
    """(a) The key's current entry is signed by `far`, whom this host does not trust."""
    fresh: Agent = make_agent(start=False)
    name = _name()
    genuine = await _set(fleet, name, fresh, keep=7)
    await _as_far(far, identities, genuine)
    fresh.start()
    applied = await _applied(client, fresh.host_id, name)
    assert (applied.policy, applied.signed_by) == (genuine, "ops")
    why = {r.name: r.reason for r in (await view(client, fresh.host_id)).rejected}
    assert "far" in why[name] and "stays in force" in why[name]


async def test_an_older_genuine_version_written_back_is_not_applied_by_a_fresh_host(
    make_agent: Any, client: AgentClient, far: AgentClient, fleet: Policies,
) -> None:
    """(b) Rollback: `far` writes ops' own first version back over ops' second."""
    fresh: Agent = make_agent(start=False)
    name = _name()
    await _set(fleet, name, fresh, keep=3)
    kv = await far.nc.jetstream().key_value(S.policies_bucket)
    first = (await kv.get(name)).value
    newest = await _set(fleet, name, fresh, keep=9)
    assert first is not None
    await kv.put(name, first)  # a genuine signature of ops, only older
    fresh.start()
    applied = await _applied(client, fresh.host_id, name)
    assert applied.policy == newest and applied.policy.keep.yearly == 9


async def test_a_removal_far_signs_does_not_remove_a_fleet_policy_on_a_fresh_host(
    make_agent: Any, client: AgentClient, far: AgentClient, identities: Identities, fleet: Policies,
) -> None:
    """(c) A signed removal, but by an operator of another host."""
    fresh: Agent = make_agent(start=False)
    name = _name()
    genuine = await _set(fleet, name, fresh, keep=5)
    await remove_policy(far.nc.jetstream(), S, identities.signers["far"], name)
    fresh.start()
    applied = await _applied(client, fresh.host_id, name)
    assert (applied.policy, applied.signed_by) == (genuine, "ops")


@pytest.mark.parametrize("attack", ["flood", "purge", "wipe"])
async def test_a_policy_pushed_out_of_the_buckets_history_is_still_applied_by_a_fresh_host(
    attack: str, make_agent: Any, client: AgentClient, far: AgentClient, identities: Identities,
    fleet: Policies, tmp_path: Path,
) -> None:
    """(d) `far` wrote more entries under the key than its history keeps: the genuine revision is gone from the
    bucket. An agent that applied it (here: stopped since) kept a copy of the signed entry that every agent can
    verify. Purging the key (a KV purge removes every revision) or wiping the whole bucket (one publish with
    `Nats-Rollup: all`) is refused: the bucket takes no rollup headers (buckets made by older versions did, until
    `volume-agent auth harden-buckets`; the copies cover those too, tests/test_policy_logic.py)."""
    witness: Agent = make_agent(tmp_path / "witness")
    fresh: Agent = make_agent(tmp_path / "fresh", start=False)
    name = _name()
    genuine = await _set(fleet, name, fresh, keep=4)
    assert (await _applied(client, witness.host_id, name)).policy == genuine
    witness.stop()
    kv = await far.nc.jetstream().key_value(S.policies_bucket)
    if attack == "flood":
        junk = msgspec.structs.replace(genuine, keep=msgspec.convert({"yearly": 1}, type(genuine.keep)))
        for _ in range(FLOOD):
            await kv.put(name, msgspec.json.encode(sign_entry(identities.signers["far"], S, name, junk)))
    elif attack == "purge":
        with pytest.raises(APIError):
            await kv.purge(name)
    else:
        with pytest.raises(APIError):
            await far.nc.jetstream().publish(S.policy_subject(name), b"", headers={"Nats-Rollup": "all"})
    info = await far.nc.jetstream().stream_info(f"KV_{S.policies_bucket}",
                                                subjects_filter=S.policy_subject(name))
    kept = (info.state.subjects or {}).get(S.policy_subject(name), 0)
    # Flood: the genuine revision is gone (the bucket kept fewer than were written, the oldest go first).
    assert kept < 1 + FLOOD if attack == "flood" else kept >= 1
    fresh.start()
    applied = await _applied(client, fresh.host_id, name)
    assert (applied.policy, applied.signed_by) == (genuine, "ops")

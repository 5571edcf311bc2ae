"""Through a real nats-server: a slow operation does not hold up other requests on the same endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.bus import Bus
from agent.config import NatsAuth, Settings
from agent.dispatch import Dispatcher
from agent.outcomes import KvOutcomes
from agent.requests import RequestService
from agent.tasks import Tasks
from volumectl.client import AgentClient

from .fakes import FakeEngine, TrustAll, fake_handlers
from .identities import Identities
from .stack import NatsServer

pytestmark = pytest.mark.integration


async def test_a_blocked_request_does_not_block_the_next_ones(
    nats_server: NatsServer, client: AgentClient, identities: Identities
) -> None:
    seed, ca = identities.agent("conc"), identities.tls.ca if identities.tls else None
    settings = Settings(nats_urls=[nats_server.url], docker_url="unix:///nowhere", host_id="conc",
                        data_dir=Path("/nonexistent"),
                        auth=NatsAuth(nkey_seed=str(seed), tls_ca=str(ca) if ca else None))
    bus = Bus(settings, settings.nats_urls)
    await bus.start()
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    tasks = Tasks(limit=8)
    dispatcher = Dispatcher("conc", fake_handlers(engine, bus), KvOutcomes(bus), bus, tasks, TrustAll(),
                            max_body=4096)
    service = RequestService(bus, dispatcher, tasks)
    await service.start()
    try:
        # Straight after start(): the service must answer at once (Bus.settle makes its subscriptions land).
        slow = asyncio.create_task(client.request("conc", "create", {"name": "slow1"}, timeout=10))
        await engine.reached("create:slow1")  # the request is being applied, stopped at the gate
        assert not slow.done()
        fast = await asyncio.wait_for(client.request("conc", "inspect", {"name": "other1"}), 2)
        assert fast.error is not None and fast.error.code == "not_found"
        engine.gate.set()
        assert (await slow).ok
    finally:
        await service.stop()
        await service.stop()  # idempotent
        await tasks.drain(5)
        await bus.stop()
        await bus.stop()


async def test_sixty_four_concurrent_inspects_are_all_answered(host) -> None:
    await host.ok("create", {"name": "shared1"})
    replies = await asyncio.gather(*(host.req("inspect", {"name": "shared1"}) for _ in range(64)))
    assert all(r.ok and r.result["name"] == "shared1" for r in replies)
    assert len({r.id for r in replies}) == 64

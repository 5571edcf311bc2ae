"""Request/reply: the NATS micro service `volume-agent` on `<prefix>.req.<host>.>` and `<prefix>.all.<op>`."""

from __future__ import annotations

import asyncio
import functools

import structlog
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from contracts import CONTRACT_VERSION, ERROR_STATUS, FLEET_OPS, OPS, SERVICE_NAME

from . import __version__
from .bus import Bus
from .compat import reply_subject
from .dispatch import Dispatcher, Outcome
from .tasks import Tasks

__all__ = ["RequestService"]

log = structlog.get_logger(__name__)



class RequestService:
    """Answers requests; nats.micro calls a handler one at a time, so each request runs as its own task."""

    def __init__(self, bus: Bus, dispatcher: Dispatcher, tasks: Tasks) -> None:
        self.bus = bus
        self.dispatcher = dispatcher
        self.tasks = tasks
        self._service: Service | None = None
        self._req_prefix = bus.subjects.req(bus.host, "")

    async def start(self) -> None:
        if self._service is not None:
            return
        host, subjects = self.bus.host, self.bus.subjects
        self._service = await add_service(
            self.bus.nc,
            name=SERVICE_NAME,
            version=__version__,
            description="Docker volumes of one host",
            metadata={"host": host, "version": __version__, "contract": CONTRACT_VERSION},
        )
        await self._service.add_endpoint(
            EndpointConfig(
                name="req",
                subject=f"{self._req_prefix}>",
                handler=self._on_request,
                metadata={"ops": ",".join(sorted(OPS))},
            )
        )
        for op in FLEET_OPS:
            await self._service.add_endpoint(
                EndpointConfig(
                    name=f"all-{op}",
                    subject=subjects.all(op),
                    # Every agent must answer a fleet read: a queue group of its own.
                    queue_group=f"{SERVICE_NAME}-{host}",
                    handler=functools.partial(self._spawn, op=op),
                )
            )
        # add_endpoint does not flush: without this, "ready" could come before the server knows our subscriptions.
        await self.bus.settle()
        log.info("requests.listening", subject=f"{self._req_prefix}>", fleet=[subjects.all(op) for op in FLEET_OPS])

    async def stop(self) -> None:
        """Stop taking requests; those already running go on (the daemon drains them)."""
        service, self._service = self._service, None
        if service is not None:
            await service.stop()

    async def _on_request(self, req: Request) -> None:
        await self._spawn(req, op=req.subject[len(self._req_prefix):])

    async def _spawn(self, req: Request, *, op: str) -> None:
        cmd_id = self.dispatcher.command_id(req.data)
        await self.tasks.spawn(cmd_id, self._answer(req, op, cmd_id))

    async def _answer(self, req: Request, op: str, cmd_id: str) -> None:
        replied = False

        async def respond(outcome: Outcome) -> None:
            nonlocal replied
            replied = True
            await self._respond(req, outcome)

        try:
            await self.dispatcher.execute(op, req.data, subject=req.subject, headers=req.headers, new_id=cmd_id,
                                          early=respond)
        except asyncio.CancelledError:
            if not replied:
                await asyncio.shield(self._respond(req, self.dispatcher.interrupted(op, req.data)))
            raise

    async def _respond(self, req: Request, outcome: Outcome) -> None:
        if reply_subject(req) is None:
            return  # published rather than requested: the outcome is on `res` all the same
        if outcome.error is None:
            await req.respond(outcome.reply)
        else:
            status = str(ERROR_STATUS[outcome.error.code])
            await req.respond_error(status, outcome.error.message, data=outcome.reply)

"""Volume news: every `volume.*` event Docker reports, published on the bus whoever caused it."""

from __future__ import annotations

from typing import Any

import structlog

from contracts import labels

from ..causes import Causes
from ..errors import AgentError
from ..typing import EventSink

__all__ = ["VolumeNews"]

log = structlog.get_logger(__name__)

_VOLUME_KINDS = {"create": "volume.created", "destroy": "volume.removed", "mount": "volume.mounted",
                 "unmount": "volume.unmounted"}


class VolumeNews:
    """Publishes `volume.created|removed|mounted|unmounted` from Docker's events, whoever caused them.

    An event the agent caused carries the command's id. The agent's helper containers are left out.
    """

    def __init__(self, events: EventSink, causes: Causes) -> None:
        self.events = events
        self.causes = causes
        self._helpers: set[str] = set()

    async def on_resync(self) -> None:
        return None

    async def on_docker_event(self, evt: dict[str, Any]) -> None:
        actor = evt.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        action = str(evt.get("Action") or "")
        if evt.get("Type") == "container":
            if labels.HELPER in attrs:
                if action == "create":
                    self._helpers.add(actor.get("ID", ""))
                elif action == "destroy":
                    self._helpers.discard(actor.get("ID", ""))
            return
        kind = _VOLUME_KINDS.get(action)
        if evt.get("Type") != "volume" or kind is None:
            return
        name = str(actor.get("ID") or "")
        container = attrs.get("container")
        if container in self._helpers:
            return
        _, cmd_id = self.causes.take(kind, name) if kind in ("volume.created", "volume.removed") else (False, None)
        with structlog.contextvars.bound_contextvars(cmd_id=cmd_id):
            try:
                await self.events.event(kind, name, container=container)
            except AgentError as exc:  # NATS away: the inventory carries the state once it is back
                log.warning("events.not_published", kind=kind, volume=name, error=exc.message)

"""What the agent did itself, so that Docker's report of it can be told apart and credited to the command."""

from __future__ import annotations

import time

import structlog

__all__ = ["Causes"]

# Docker reports an action within milliseconds; an entry never claimed (the action failed) goes after this.
TTL_S = 120.0


class Causes:
    """`note` before asking Docker to act; `take` when Docker's event about it arrives."""

    def __init__(self) -> None:
        self._noted: dict[tuple[str, str], tuple[float, str | None]] = {}

    def note(self, action: str, subject: str) -> None:
        """The agent is about to do `action` to `subject`, on behalf of the command being applied."""
        cmd_id = structlog.contextvars.get_contextvars().get("cmd_id")
        now = time.monotonic()
        self._noted = {k: v for k, v in self._noted.items() if now - v[0] < TTL_S}
        self._noted[(action, subject)] = (now, cmd_id)

    def take(self, action: str, subject: str) -> tuple[bool, str | None]:
        """Whether the agent did it, and the id of the command that did."""
        entry = self._noted.pop((action, subject), None)
        if entry is None or time.monotonic() - entry[0] >= TTL_S:
            return False, None
        return True, entry[1]

"""Publishes the NATS server refused for want of permission, matched to the calls that made them.

A publish the server's authorization denies is dropped and reported only asynchronously, as
`-ERR 'Permissions Violation for Publish to "<subject>"'` (nats-py hands it to `error_cb`, in lower case). A
JetStream API request that is denied so gets no reply and would only time out: `Denials.call` ends it as soon as
the server says why, with `Denied`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["Denials", "Denied", "denied_subject"]

T = TypeVar("T")

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)


class Denied(Exception):
    """The server refused a publish to `subject` (this identity's NATS permissions do not allow it)."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"The NATS server refused a publish to {subject!r}: this identity's permissions do not "
                         "allow it.")
        self.subject = subject


def denied_subject(error_text: str) -> tuple[str, str] | None:
    """("publish" or "subscription", the subject in lower case) of a permissions violation error, else None."""
    m = _VIOLATION.search(error_text)
    return (m.group(1).lower(), m.group(2).lower()) if m else None


class Denials:
    """Feed it every error the connection reports (`report`); `call` waits for a reply or a denial."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}

    def report(self, error_text: str) -> bool:
        """True if the error is a permissions violation; wakes the calls waiting on its subject."""
        found = denied_subject(error_text)
        if found is None:
            return False
        for fut in self._waiting.pop(found[1], []):
            if not fut.done():
                fut.set_result(None)
        return True

    async def call(self, subject: str, aw: Awaitable[T]) -> T:
        """Await `aw`, a request published on `subject`; raise `Denied` once the server refuses that publish."""
        key = subject.lower()
        denied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(denied)
        task = asyncio.ensure_future(aw)
        either: set[asyncio.Future[Any]] = {task, denied}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise Denied(subject)
        finally:
            if not task.done():
                task.cancel()
            waiting = self._waiting.get(key, [])
            if denied in waiting:
                waiting.remove(denied)
            if not waiting:
                self._waiting.pop(key, None)
            denied.cancel()

"""What the NATS server refused this connection, said at once and with the fix.

A publish or subscription that the server's authorization denies gets no reply: the server drops it and reports
`-ERR 'Permissions Violation for Publish to "<subject>"'` (or `Subscription to`) to the client alone, which
nats-py hands to the error callback (in lower case). Without this, a request whose reply the caller may not
receive, or that it may not publish, would wait out its timeout and look like a dead agent. `Refusals.race` ends
the command as soon as the server says why (the agent's own `agent/denials.py` does the same per call).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from contracts import Subjects
from contracts.auth import ROLE_OPS, ROLES

__all__ = ["Refusals", "Refused"]

T = TypeVar("T")

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)


@dataclass(frozen=True)
class Who:
    """What the sentence names: the identity's name (None: no --name), the host asked, the subject prefix."""

    name: str | None
    host: str
    subjects: Subjects


class Refused(Exception):
    """The NATS server refused a publish or subscription of this identity; the message names the fix."""

    def __init__(self, kind: str, subject: str, who: Who) -> None:
        super().__init__(_sentence(kind, subject, who))
        self.kind, self.subject = kind, subject


def _roles_for(op: str) -> str:
    return " or ".join(r for r in ROLES if r != "agent" and op in ROLE_OPS[r])


def _sentence(kind: str, subject: str, who: Who) -> str:
    s, low = who.subjects, subject.lower()
    if kind == "subscription" and low.startswith("_inbox"):
        if who.name is None:
            return (f"NATS refused to let this connection receive replies (a subscription to {subject}): your "
                    "identity may receive them only under _INBOX_<its name>. Pass --name NAME (or set "
                    "VOLUME_AGENT_NAME), the identity's name in the policy file; it defaults to the seed file's name "
                    "without its extension (auth init writes seeds/<name>.nk).")
        return (f"NATS refused to let this connection receive replies under _INBOX_{who.name} (a subscription to "
                f"{subject}): your identity may not use the name {who.name!r}. Pass --name with the identity's "
                "name in the policy file (the seed file's name without its extension, as auth init writes it).")
    if kind == "publish":
        for verb, base in (("request", f"{s.prefix}.req."), ("durable command", f"{s.prefix}.cmd.")):
            if low.startswith(base.lower()):
                host, _, op = subject[len(base):].partition(".")
                roles = _roles_for(op)
                need = (f"`{op}` needs role {roles} in the policy file" if roles else f"`{op}` is no op of the "
                        "contract")
                return (f"NATS refused the {verb} `{op}` for host {host!r} (a publish to {subject}): your identity "
                        f"may not ask for it there. {need}, and an operator limited to some hosts must have "
                        f"{host!r} among them; an admin adds one with `volume-agent auth init DIR --operator "
                        "NAME[:HOSTS]`.")
        if low.startswith(f"$kv.{s.policies_bucket}.".lower()):
            return (f"NATS refused to write the policy (a publish to {subject}): setting or removing policies needs "
                    f"role {_roles_for('policy.set')} in the policy file.")
    what = "publish to" if kind == "publish" else "subscribe to"
    return (f"NATS refused a {kind} to {subject}: your identity may not {what} it. Check its role in the policy "
            "file, and that the NATS server's authorization was made from that file (volume-agent auth init) and "
            "reloaded.")


class Refusals:
    """Give `report` to nats-py as `error_cb`; `race(aw)` raises `Refused` as soon as the server refuses something."""

    def __init__(self, who: Who) -> None:
        self.who = who
        self.first: Refused | None = None
        self._refused = asyncio.Event()

    async def report(self, exc: Exception) -> None:
        """nats-py's error callback: note a permissions violation; anything else is the caller's to report."""
        m = _VIOLATION.search(str(exc))
        if m is None or self.first is not None:
            return
        self.first = Refused(m.group(1).lower(), self._cased(m.group(2)), self.who)
        self._refused.set()

    def _cased(self, subject: str) -> str:
        """The subject as we wrote it (nats-py lower-cases the server's message), where we can tell."""
        s = self.who.subjects
        if subject.startswith(f"{s.prefix}.".lower()):
            return s.prefix + subject[len(s.prefix):]
        if subject.startswith("_inbox"):
            return "_INBOX" + subject[len("_inbox"):]
        if subject.startswith("$kv."):
            return "$KV." + subject[len("$kv."):]
        return subject

    async def race(self, aw: Awaitable[T]) -> T:
        """`aw`'s result, unless the server refuses something of this connection first: then `Refused`."""
        task: asyncio.Future[T] = asyncio.ensure_future(aw)
        refused = asyncio.ensure_future(self._refused.wait())
        either: set[asyncio.Future[Any]] = {task, refused}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.first is not None and not (task.done() and not task.cancelled() and task.exception() is None):
            raise self.first  # a better reason than the timeout or error the refusal caused
        return task.result()

"""The volume-agent client: the bus API from another service (`AgentClient`), and the `volumectl` command.

Needs only `contracts` and nats-py, never the agent: another service can use it without the daemon. The client is
imported when first used (PEP 562), so that `volumectl --version` or `--help` does not load nats-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import AgentClient, NoAgent

__all__ = ["AgentClient", "NoAgent"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

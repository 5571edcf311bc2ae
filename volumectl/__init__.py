"""The volume-agent client: the bus API from another service (`AgentClient`), and the `volumectl` command.

Needs only `contracts` and nats-py, never the agent: another service can use it without the daemon.
"""

from .client import AgentClient, NoAgent

__all__ = ["AgentClient", "NoAgent"]

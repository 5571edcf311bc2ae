"""Every subject of the bus, built in one place.

    <prefix>.req.<host>.<op>     request/reply
    <prefix>.cmd.<host>.<op>     durable commands (JetStream)
    <prefix>.res.<host>.<op>     every outcome (JetStream, for audit)
    <prefix>.all.<op>            read-only ops every agent answers
    <prefix>.evt.<host>.<kind>   events
    <prefix>.inv.<host>          inventory snapshots (also in the KV bucket `<prefix>_inventory`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "HOST_ID_PATTERN", "PREFIX_PATTERN", "Subjects", "valid_host_id"]

DEFAULT_PREFIX = "vol"
HOST_ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
# One or more NATS tokens; no wildcards, no spaces.
PREFIX_PATTERN = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$"
_RESERVED_HOSTS = frozenset({"all"})


def valid_host_id(host: str) -> bool:
    """True when `host` may name a host on the bus (`all` is reserved)."""
    return re.match(HOST_ID_PATTERN, host) is not None and host not in _RESERVED_HOSTS


@dataclass(frozen=True)
class Subjects:
    """Subject builders for one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not re.match(PREFIX_PATTERN, self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} is not a dotted list of NATS tokens")

    def req(self, host: str, op: str) -> str:
        return f"{self.prefix}.req.{host}.{op}"

    def cmd(self, host: str, op: str) -> str:
        return f"{self.prefix}.cmd.{host}.{op}"

    def res(self, host: str, op: str) -> str:
        return f"{self.prefix}.res.{host}.{op}"

    def all(self, op: str) -> str:
        return f"{self.prefix}.all.{op}"

    def evt(self, host: str, kind: str) -> str:
        return f"{self.prefix}.evt.{host}.{kind}"

    def inv(self, host: str) -> str:
        return f"{self.prefix}.inv.{host}"

    def stream_name(self, family: str) -> str:
        """JetStream stream holding `<prefix>.<family>.>`, e.g. `VOL_CMD`."""
        return f"{self.prefix.replace('.', '_').upper()}_{family.upper()}"

    def bucket_name(self, what: str) -> str:
        """JetStream KV bucket, e.g. `vol_outcomes`."""
        return f"{self.prefix.replace('.', '_')}_{what}"

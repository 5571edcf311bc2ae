"""Every subject of the bus, built in one place.

    <prefix>.req.<host>.<op>     request/reply
    <prefix>.cmd.<host>.<op>     durable commands (JetStream)
    <prefix>.res.<host>.<op>     every outcome (JetStream, for audit)
    <prefix>.all.<op>            read-only ops every agent answers
    <prefix>.evt.<host>.<kind>   events
    <prefix>.inv.<host>          inventory snapshots (also in the KV bucket `<prefix>_inventory`)

and every other name on the bus: the JetStream streams, the agents' durable consumers, the KV buckets and the
Object Store, the NATS micro service, and how keys are encoded in the buckets.

    stream  <PREFIX>_CMD, <PREFIX>_RES, <PREFIX>_EVT      (prefix `vol`: VOL_CMD, ...)
    consumer agent_<host>                                 on <PREFIX>_CMD, filter <prefix>.cmd.<host>.>
    KV      <prefix>_outcomes        key outcome_key(host, id) = <host>.<sha256(id) hex>
    KV      <prefix>_inventory       key <host>
    KV      <prefix>_backup_catalog  key catalog_key(backup_id) = base64url(backup_id)
    objects <prefix>_backups         name <backup_id>
    service volume-agent             (NATS micro)
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PREFIX",
    "HOST_ID_PATTERN",
    "PREFIX_PATTERN",
    "SERVICE_NAME",
    "Subjects",
    "catalog_key",
    "outcome_key",
    "valid_host_id",
]

DEFAULT_PREFIX = "vol"
HOST_ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
# One or more NATS tokens; no wildcards, no spaces.
PREFIX_PATTERN = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$"
_RESERVED_HOSTS = frozenset({"all"})
SERVICE_NAME = "volume-agent"
"""The NATS micro service every agent registers (`nats micro ls volume-agent`)."""


def outcome_key(host: str, cmd_id: str) -> str:
    """The key of a command's recorded outcome: ids may hold characters KV keys may not."""
    return f"{host}.{hashlib.sha256(cmd_id.encode()).hexdigest()}"


def catalog_key(backup_id: str) -> str:
    """The key of a backup's record in the shared catalog: KV keys are subject tokens, and a volume name
    may hold `..`, so the id is encoded."""
    return base64.urlsafe_b64encode(backup_id.encode()).decode()


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

    def consumer(self, host: str) -> str:
        """The durable consumer of `host`'s commands on the command stream."""
        return f"agent_{host}"

    @property
    def cmd_stream(self) -> str:
        return self.stream_name("cmd")

    @property
    def res_stream(self) -> str:
        return self.stream_name("res")

    @property
    def evt_stream(self) -> str:
        return self.stream_name("evt")

    @property
    def outcomes_bucket(self) -> str:
        return self.bucket_name("outcomes")

    @property
    def inventory_bucket(self) -> str:
        return self.bucket_name("inventory")

    @property
    def catalog_bucket(self) -> str:
        return self.bucket_name("backup_catalog")

    @property
    def backups_bucket(self) -> str:
        """The Object Store of the shared (`nats`) backups."""
        return self.bucket_name("backups")

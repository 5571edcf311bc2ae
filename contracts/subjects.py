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
    KV      <prefix>_backup_catalog  key catalog_key(host, backup_id) = <host>.<base64url(backup_id)>
    KV      <prefix>_policies        key <policy name>       written by operators only (contracts.policies)
    KV      <prefix>_leases          key <host>              the agent that holds the host id (agent/lease.py)
    KV      <prefix>_policy_copies   key policy_copy_key(host, name) = <host>.<policy name>: the signed entry
                                     that host's agent applies, kept for agents that start later
    objects <prefix>_backups_<host>  name <backup_id>       (one Object Store per host: backups_bucket_of(host))
    service volume-agent             (NATS micro)
    inbox   _INBOX_<identity>        every client's inbox prefix (inbox_prefix(name)), so NATS permissions can
                                     give each identity its own replies only

Each host writes only under its own name (`<host>` in a subject, a key, or a bucket name): NATS permissions
scope writes by subject, and an Object Store's subjects cannot be scoped inside one bucket, so every host has
its own backup bucket and its own catalog keys.
"""

from __future__ import annotations

import base64
import binascii
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
    "catalog_key_parts",
    "inbox_prefix",
    "outcome_key",
    "policy_copy_key",
    "policy_copy_key_parts",
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


def catalog_key(host: str, backup_id: str) -> str:
    """The key of a backup's record in the shared catalog, under the host that made it (only that host may
    write there): KV keys are subject tokens, and a volume name may hold `..`, so the id is encoded."""
    return f"{host}.{base64.urlsafe_b64encode(backup_id.encode()).decode()}"


def catalog_key_parts(key: str) -> tuple[str, str] | None:
    """(host, backup_id) of a catalog key; None for a key of another shape (e.g. contract 1.x's bare id)."""
    host, dot, encoded = key.partition(".")
    if not dot or not valid_host_id(host):
        return None
    try:
        return host, base64.urlsafe_b64decode(encoded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def policy_copy_key(host: str, name: str) -> str:
    """The key of `host`'s copy of the signed entry of policy `name` it applies (only that host may write it)."""
    return f"{host}.{name}"


def policy_copy_key_parts(key: str) -> tuple[str, str] | None:
    """(host, policy name) of a key of the policy copies bucket; None for a key of another shape."""
    host, dot, name = key.partition(".")
    return (host, name) if dot and valid_host_id(host) and name else None


def inbox_prefix(identity: str) -> str:
    """The inbox prefix of an identity's connections (nats-py `inbox_prefix=`): `_INBOX_<name>`. The generated
    NATS permissions let an identity subscribe to `_INBOX_<name>.>` and no other inbox."""
    return f"_INBOX_{identity}"


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
    def policies_bucket(self) -> str:
        return self.bucket_name("policies")

    @property
    def leases_bucket(self) -> str:
        """One key per host id, held by the one agent running under it (agent/lease.py)."""
        return self.bucket_name("leases")

    @property
    def maintenance_bucket(self) -> str:
        """One key per restic repository (its id): the host running its maintenance now, and the slots done."""
        return self.bucket_name("maintenance")

    @property
    def policy_copies_bucket(self) -> str:
        return self.bucket_name("policy_copies")

    def policy_subject(self, name: str) -> str:
        """The subject a policy's KV entry is written on, and signed for: `$KV.<prefix>_policies.<name>`."""
        return f"$KV.{self.policies_bucket}.{name}"

    def backups_bucket_of(self, host: str) -> str:
        """The Object Store of `host`'s shared (`nats`) backups, e.g. `vol_backups_web-1`."""
        return self.bucket_name(f"backups_{host}")

"""Who may ask an agent for what: signed requests, roles, and the ops each role may run.

Every request (`<prefix>.req.<host>.<op>`, `<prefix>.all.<op>`) and every durable command
(`<prefix>.cmd.<host>.<op>`) carries three headers, set by the caller:

    Vol-Key    the caller's public nkey (`U...`, 56 characters): who signs
    Vol-Time   when it was signed: Unix time in nanoseconds, decimal
    Vol-Sig    base64url (no padding) of the Ed25519 signature, by the caller's nkey, of `signed_bytes(...)`

    signed_bytes = "volume-agent-sig-v1\n" + subject + "\n" + Vol-Time + "\n" + Nats-Msg-Id (or "") + "\n"
                   + hex(sha256(body))

The subject, the time, the durable command's `Nats-Msg-Id` and the body are all signed: a signature is good for
one message on one subject, and a durable command's dedupe id cannot be changed under it. The agent looks the
key up in its local policy file (never on the bus), checks the signature, refuses a request signed more than
`max_skew` away from its clock or seen before, and a durable command older than `max_command_age`.
Needs only the standard library: another service signs with any Ed25519 library.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = [
    "HEADER_KEY",
    "HEADER_SIG",
    "HEADER_TIME",
    "ROLES",
    "ROLE_OPS",
    "SIGNATURE_VERSION",
    "Role",
    "signed_bytes",
]

HEADER_KEY = "Vol-Key"
HEADER_TIME = "Vol-Time"
HEADER_SIG = "Vol-Sig"
SIGNATURE_VERSION = "volume-agent-sig-v1"

Role = Literal["reader", "operator", "agent", "admin"]
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]

_READS = frozenset({"inspect", "list", "backups", "inventory", "digest", "policies", "policy.get", "policy.list"})
_ALL = frozenset({*_READS, "create", "remove", "prune", "share", "backup", "restore", "clone", "forget", "migrate",
                  "policy.set", "policy.remove", "verify"})

ROLE_OPS: dict[str, frozenset[str]] = {
    "reader": _READS,
    "operator": _ALL,
    # Another host's agent, for `migrate`: it restores its backup here and compares digests; nothing else.
    "agent": frozenset({"inspect", "list", "backups", "inventory", "digest", "restore"}),
    "admin": _ALL,
}
"""The ops each role may run. An operator's policy entry may also limit it to some hosts. `policy.*` are writes and
reads of the policies bucket (contracts.policies): an agent applies a policy only if its signer's role may run
`policy.set` here. `verify` (a restore drill) is an operator's: it only writes a scratch directory, but it reads
a whole backup and takes as long as a restore, which a reader must not be able to start at will."""


def signed_bytes(subject: str, time_ns: str, msg_id: str | None, body: bytes) -> bytes:
    """What the caller signs (see the module's docstring)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{SIGNATURE_VERSION}\n{subject}\n{time_ns}\n{msg_id or ''}\n{digest}".encode()

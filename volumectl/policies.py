"""Backup policies from the client's side: signed, written to and read from the policies bucket
(`contracts.policies`), and what a change of keep rules would delete, before it does.

Setting or removing a policy is a write of a signed entry to the bucket: no agent is asked, and no agent could
write it for you (their NATS permissions do not allow it). Every agent reads the bucket and applies what an
operator it trusts signed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from contracts import BackupPolicy, BackupRecord, PolicyEntry, Subjects, check_policy
from contracts.bounds import BoundedDecoder
from contracts.explain import sentence
from contracts.policies import POLICY_NAME_PATTERN, entry_signed_bytes
from contracts.retention import retain, to_forget

from .kv import READ_TIMEOUT_S, read_bucket
from .signing import Signer

__all__ = ["PolicyRefused", "Preview", "preview", "read_policies", "remove_policy", "set_policy", "sign_entry",
           "valid_policy"]

_ENTRY = BoundedDecoder(PolicyEntry, what="The entry")
_POLICY = BoundedDecoder(BackupPolicy, what="The policy")
PUT_TIMEOUT_S = 10.0


class PolicyRefused(ValueError):
    """The policy is not written; the message says why, as a sentence."""


def valid_policy(raw: dict[str, object] | bytes) -> BackupPolicy:
    """The policy, checked whole; `PolicyRefused` naming everything wrong (nothing is written)."""
    try:
        policy = _POLICY.decode(raw) if isinstance(raw, bytes) else msgspec.convert(raw, BackupPolicy)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PolicyRefused(sentence(str(exc), "The policy")) from None
    if not re.match(POLICY_NAME_PATTERN, policy.name):
        raise PolicyRefused(f"The policy's name {policy.name!r} must match {POLICY_NAME_PATTERN} (it is its key in "
                            "the bucket; `container:` names are for containers' labels).")
    if problems := check_policy(policy):
        raise PolicyRefused("The policy is not valid: " + " ".join(problems))
    return policy


def sign_entry(signer: Signer, subjects: Subjects, name: str, policy: BackupPolicy | None,
               *, now_ns: int | None = None) -> PolicyEntry:
    """The bucket entry for `policy` (None: its removal), signed."""
    body = msgspec.json.encode(policy).decode() if policy is not None else ""
    entry = PolicyEntry(name=name, body=body, key=signer.public_key,
                        signed_at=time.time_ns() if now_ns is None else now_ns, sig="")
    entry.sig = signer.sign(entry_signed_bytes(entry, subjects.policy_subject(name)))
    return entry


async def _put(js: JetStreamContext, subjects: Subjects, entry: PolicyEntry) -> int:
    try:
        kv = await js.key_value(subjects.policies_bucket)
        return int(await kv.put(entry.name, msgspec.json.encode(entry)))
    except nats.js.errors.BucketNotFoundError:
        raise PolicyRefused(f"The policies bucket {subjects.policies_bucket} does not exist yet: it is made by the "
                            "first agent that starts (contract 2.1 or later).") from None
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
        raise PolicyRefused(
            f"The policy was not written (no acknowledgement from {subjects.policies_bucket}): writing policies "
            "needs an identity with role operator or admin, whose NATS permissions allow publishing to "
            f"{subjects.policy_subject('<name>')} (volume-agent auth init gives them that).") from None


async def set_policy(js: JetStreamContext, subjects: Subjects, signer: Signer, policy: BackupPolicy) -> PolicyEntry:
    """Check, sign and write `policy`; returns the entry written."""
    valid_policy(msgspec.to_builtins(policy))
    entry = sign_entry(signer, subjects, policy.name, policy)
    await _put(js, subjects, entry)
    return entry


async def remove_policy(js: JetStreamContext, subjects: Subjects, signer: Signer, name: str) -> PolicyEntry:
    """Write a signed removal of `name` (agents ignore a bare KV delete: anybody who could write could do that)."""
    # Written even when the bucket has no entry under the name (a bare delete or purge took it): agents that
    # hold the policy keep applying it until a signed removal comes.
    entry = sign_entry(signer, subjects, name, None)
    await _put(js, subjects, entry)
    return entry


async def read_policies(js: JetStreamContext, subjects: Subjects, timeout: float = READ_TIMEOUT_S  # noqa: ASYNC109
                        ) -> dict[str, PolicyEntry]:
    """Every entry of the bucket (removals included: `body` empty), read completely or `IncompleteRead`. An entry
    that does not decode is left out: agents ignore it too, and say so in their `policies` answer."""
    try:
        values = await read_bucket(js, subjects.policies_bucket, timeout=timeout)
    except nats.js.errors.BucketNotFoundError:
        return {}
    out = {}
    for key, raw in values.items():
        try:
            out[key] = _ENTRY.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    return out


def policy_of(entry: PolicyEntry) -> BackupPolicy | None:
    """The policy an entry holds (None: a removal, or a body that is not a policy)."""
    if not entry.body:
        return None
    try:
        return _POLICY.decode(entry.body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


@dataclass(frozen=True)
class Preview:
    host: str
    volume: str
    kept: int
    forgotten: list[BackupRecord]


def preview(policy: BackupPolicy, backups: Iterable[BackupRecord], now: datetime | None = None) -> list[Preview]:
    """What `policy`'s keep rules would delete at its next run on each host, of the backups it made (every
    host's own, each volume and store apart, as the agents apply them), counting the backup that run adds."""
    groups: dict[tuple[str, str, str], list[BackupRecord]] = {}
    for b in backups:
        if b.policy == policy.name:
            groups.setdefault((b.host, b.volume, b.store), []).append(b)
    at = (now or datetime.now(UTC)).isoformat()
    out = []
    for (host, volume, _), records in sorted(groups.items()):
        upcoming = msgspec.structs.replace(records[0], backup_id="(next run)", created_at=at)
        forgotten = [r for r in to_forget(retain([*records, upcoming], policy.keep, policy.timezone))
                     if r is not upcoming]
        out.append(Preview(host, volume, len(records) - len(forgotten), forgotten))
    return out

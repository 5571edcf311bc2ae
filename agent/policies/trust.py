"""Whether this agent may apply a policy entry read from the bus: signed by whom, for where, and valid whole.

The bucket is written by operators only (NATS permissions), but the agent does not take that on trust: the entry
must carry the signature of a key that the local policy file (never the bus) gives a role that may run
`policy.set`, on this host. Every refusal is a sentence that names the setting that would allow it.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from contracts import BackupPolicy, PolicyEntry, Subjects, check_policy
from contracts.auth import ROLE_OPS, ROLES
from contracts.bounds import BoundedDecoder
from contracts.policies import entry_signed_bytes

from ..auth.keys import verify
from ..auth.policy import Policy

__all__ = ["PolicyTrust", "SignedAhead", "Untrusted", "Verified"]

_NS = 1_000_000_000
_ENTRY = BoundedDecoder(PolicyEntry, what="The entry")
_POLICY = BoundedDecoder(BackupPolicy, what="The policy")


class Untrusted(ValueError):
    """The entry is not applied here; the message says why, as a sentence."""


class SignedAhead(Untrusted):
    """Signed further ahead of this host's clock than allowed: it may be applied later."""


@dataclass(frozen=True)
class Verified:
    entry: PolicyEntry
    policy: BackupPolicy | None
    """None: a signed removal."""
    signer: str
    """The signer's identity name in the local policy file."""


class PolicyTrust:
    """Checks entries of the policies bucket against the local policy file as last read."""

    def __init__(
        self, local: Policy, source: str, *, host: str, subjects: Subjects, now_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.host = host
        self.subjects = subjects
        self.adopt(local, source)
        self._now_ns = now_ns
        self._writers = " or ".join(r for r in ROLES if "policy.set" in ROLE_OPS[r])

    def adopt(self, local: Policy, source: str) -> None:
        """Trust who `local` names from now on (the file reread), in one step."""
        self.local, self.source, self._keys = local, source, local.by_key()

    def verify(self, key: str, raw: bytes, *, check_clock: bool = True) -> Verified:
        """The entry stored under `key`, verified; `Untrusted` with a sentence otherwise. `check_clock`: refuse an
        entry signed further ahead of this host's clock than `max_skew_s` (not for a copy verified before)."""
        try:
            entry = _ENTRY.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise Untrusted(f"The entry under {key!r} is not a signed policy entry: {exc}.") from None
        if entry.name != key:
            raise Untrusted(f"The entry under {key!r} is signed for the policy {entry.name!r}: a signed policy "
                            "cannot be moved to another name.")
        who = self._keys.get(entry.key)
        if who is None:
            raise Untrusted(f"Policy {key!r} is signed by key {entry.key[:60]}, which has no [[identity]] in the "
                            f"policy file {self.source}: add it there with role {self._writers}.")
        if "policy.set" not in ROLE_OPS[who.role]:
            raise Untrusted(f"Policy {key!r} is signed by {who.name}, whose role {who.role} may not set policies: "
                            f"its `role` in the policy file {self.source} would have to be {self._writers}.")
        if who.hosts is not None and self.host not in who.hosts:
            raise Untrusted(f"Policy {key!r} is signed by {who.name}, who may act only on hosts "
                            f"{', '.join(who.hosts) or '(none)'}: add {self.host} to `hosts` of identity {who.name} "
                            f"in the policy file {self.source}.")
        try:
            sig = base64.b64decode(entry.sig + "=" * (-len(entry.sig) % 4), b"-_", validate=True)
        except (binascii.Error, ValueError):
            sig = b""
        if not verify(entry.key, entry_signed_bytes(entry, self.subjects.policy_subject(key)), sig):
            raise Untrusted(f"The signature of policy {key!r} does not match key {entry.key} ({who.name}): the "
                            "entry was changed after it was signed, or signed for another bucket.")
        ahead = entry.signed_at - self._now_ns()
        skew = self.local.signatures.max_skew_s
        if check_clock and ahead > skew * _NS:
            raise SignedAhead(f"Policy {key!r} was signed {ahead / _NS:.0f} s ahead of this host's clock, more than "
                            f"[signatures] max_skew_s = {skew:g} in the policy file {self.source} allows: check the "
                            "clocks (NTP) and set it again.")
        if not entry.body:
            return Verified(entry, None, who.name)
        try:
            policy = _POLICY.decode(entry.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise Untrusted(f"Policy {key!r} (signed by {who.name}) is not valid: {exc}.") from None
        if policy.name != key:
            raise Untrusted(f"Policy {key!r} (signed by {who.name}) names itself {policy.name!r}.")
        if problems := check_policy(policy):
            raise Untrusted(f"Policy {key!r} (signed by {who.name}) is not valid: {' '.join(problems)}")
        return Verified(entry, policy, who.name)

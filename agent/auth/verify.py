"""Who sent a command, and may they: the signature headers checked against the local policy (`contracts.auth`).

The dispatcher asks `Verifier.caller(op, subject, headers, body, durable=...)` before it decodes anything;
every refusal is `Forbidden`, with a sentence that names the policy setting that would allow the request.
Requests are refused when signed further than `max_skew_s` from the agent's clock, or seen before (a bounded
cache of recent signatures), or signed before this process started: the cache lives in memory, so a request
captured before a restart is refused, never applied again. Durable commands are refused when signed longer ago
than `max_command_age_s`; their replays are not looked up here (a redelivery is the same message): the command
id's recorded outcome catches them (a command without id or Nats-Msg-Id is named by its signature's digest).
"""

from __future__ import annotations

import base64
import binascii
import heapq
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from contracts import OPS
from contracts.auth import HEADER_KEY, HEADER_SIG, HEADER_TIME, ROLE_OPS, ROLES, signed_bytes

from ..errors import Forbidden
from .keys import verify_key, verify_with
from .policy import IdentityEntry, Policy

__all__ = ["Caller", "Verifier"]

REPLAY_CACHE_SIZE = 100_000
"""Signatures remembered at most (about 20 MB): 800 requests a second for the default 120 s window."""
_NS = 1_000_000_000
_SIG_BYTES = 64  # Ed25519


@dataclass(frozen=True)
class Caller:
    """A verified caller: its name and role in the policy file, and its public key."""

    name: str
    role: str
    key: str


class _SeenSignatures:
    """Signatures of requests still inside the skew window. Full, it forgets the oldest-signed and refuses
    anything signed at or before it from then on, so a replay is never let through because it was forgotten."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.floor_ns = 0
        self._heap: list[tuple[int, bytes]] = []
        self._seen: set[bytes] = set()

    def add(self, sig: bytes, signed_ns: int, oldest_ns: int) -> str | None:
        """Remember `sig`; None if new, else why it is refused."""
        while self._heap and self._heap[0][0] < oldest_ns:  # too old to be accepted again anyway
            self._seen.discard(heapq.heappop(self._heap)[1])
        if sig in self._seen:
            return "replayed"
        if signed_ns <= self.floor_ns:
            return "full"
        if len(self._heap) >= self.size:
            dropped_ns, dropped = heapq.heappop(self._heap)
            self._seen.discard(dropped)
            self.floor_ns = max(self.floor_ns, dropped_ns)
            if signed_ns <= self.floor_ns:
                return "full"
        heapq.heappush(self._heap, (signed_ns, sig))
        self._seen.add(sig)
        return None


class Verifier:
    """Checks signatures, clocks, replays, roles and hosts for one agent, against the policy file as last read."""

    def __init__(
        self, policy: Policy, source: Path | str, *, host: str, now_ns: Callable[[], int] = time.time_ns,
        cache_size: int = REPLAY_CACHE_SIZE,
    ) -> None:
        self.host = host
        self._now_ns = now_ns
        self.adopt(policy, source)
        self._seen = _SeenSignatures(cache_size)
        self.started_ns = now_ns()
        """Requests signed before this are refused: the replay cache does not outlive the process."""

    def adopt(self, policy: Policy, source: Path | str) -> None:
        """Check against `policy` from now on (the file reread: agent/auth/policy_file.py); in one step, without
        an await, so no request sees half of it. The signatures seen stay: a replay is refused across a reload."""
        # Decoded once: a U... key is base32 with a checksum, in pure Python.
        keys = policy.by_key()
        verify_keys = {key: verify_key(key) for key in keys}
        self.policy, self.source, self._keys, self._verify_keys = policy, str(source), keys, verify_keys
        self._skew_ns = int(policy.signatures.max_skew_s * _NS)
        self._max_age_ns = int(policy.signatures.max_command_age_s * _NS)

    def caller(
        self, op: str, subject: str, headers: Mapping[str, str] | None, body: bytes, *, durable: bool
    ) -> Caller:
        """The verified caller of one message, if the policy lets it run `op` here; else `Forbidden`."""
        identity = self._authenticate(subject, headers or {}, body, durable=durable)
        self._authorize(identity, op)
        return Caller(identity.name, identity.role, identity.key)

    def _authenticate(
        self, subject: str, headers: Mapping[str, str], body: bytes, *, durable: bool
    ) -> IdentityEntry:
        missing = [h for h in (HEADER_KEY, HEADER_TIME, HEADER_SIG) if not headers.get(h)]
        if missing:
            raise Forbidden(
                f"The message on {subject} is not signed (no {', '.join(missing)} header): sign it with a key "
                f"that has an [[identity]] in the policy file {self.source} (volumectl --seed; see contracts.auth).")
        key, stamp = headers[HEADER_KEY], headers[HEADER_TIME]
        identity = self._keys.get(key)
        if identity is None:
            raise Forbidden(
                f"Key {key[:60]} is not in the policy file {self.source}: add an [[identity]] for it there.")
        try:
            signed_ns = int(stamp)
            sig = base64.b64decode(headers[HEADER_SIG] + "=" * (-len(headers[HEADER_SIG]) % 4), b"-_", validate=True)
            if len(sig) != _SIG_BYTES:
                raise ValueError
        except (ValueError, binascii.Error):
            raise Forbidden(f"The {HEADER_TIME} or {HEADER_SIG} header of {identity.name}'s message is malformed "
                            "(Unix nanoseconds; unpadded base64url): sign it as contracts.auth says.") from None
        self._check_time(signed_ns, durable=durable)
        msg_id = headers.get("Nats-Msg-Id")
        vk = self._verify_keys[key]
        if vk is None or not verify_with(vk, signed_bytes(subject, stamp, msg_id, body), sig):
            raise Forbidden(
                f"The signature does not match key {key} ({identity.name}) for subject {subject}, this time, "
                "message id and body: the message was changed or signed for another subject; sign it as published.")
        if not durable:
            why = self._seen.add(sig, signed_ns, self._now_ns() - self._skew_ns)
            if why == "replayed":
                raise Forbidden(f"This request by {identity.name} was seen before (a replay): sign every request "
                                f"anew; signatures are remembered for [signatures] max_skew_s in {self.source}.")
            if why is not None:
                raise Forbidden(f"The agent's replay cache is full and this request by {identity.name} is older than "
                                "anything it still remembers: sign it anew and send it again.")
        return identity

    def _check_time(self, signed_ns: int, *, durable: bool) -> None:
        ahead = signed_ns - self._now_ns()
        sigs = self.policy.signatures
        if ahead > self._skew_ns:
            raise Forbidden(
                f"The message was signed {ahead / _NS:.0f} s ahead of this host's clock, more than [signatures] "
                f"max_skew_s = {sigs.max_skew_s:g} in the policy file {self.source} allows: check the clocks (NTP).")
        if durable and -ahead > self._max_age_ns:
            raise Forbidden(
                f"The command was signed {-ahead / _NS:.0f} s ago, more than [signatures] max_command_age_s = "
                f"{sigs.max_command_age_s:g} in the policy file {self.source} allows: publish it anew.")
        if not durable and -ahead > self._skew_ns:
            raise Forbidden(
                f"The request was signed {-ahead / _NS:.0f} s ago, more than [signatures] max_skew_s = "
                f"{sigs.max_skew_s:g} in the policy file {self.source} allows: sign every request anew, and check "
                "the clocks (NTP).")
        if not durable and signed_ns < self.started_ns:
            raise Forbidden(
                f"The request was signed {(self.started_ns - signed_ns) / _NS:.1f} s before this agent started: a "
                "request from before a restart is never applied (it may be a replay); sign it anew, and check the "
                "clocks (NTP) if this repeats.")

    def _authorize(self, identity: IdentityEntry, op: str) -> None:
        if op in OPS and op not in ROLE_OPS[identity.role]:
            roles = " or ".join(r for r in ROLES if op in ROLE_OPS[r])
            raise Forbidden(
                f"Identity {identity.name} has role {identity.role}, which may not run {op}: its `role` in the policy "
                f"file {self.source} would have to be {roles}.", caller=identity.name)
        if identity.hosts is not None and self.host not in identity.hosts:
            raise Forbidden(
                f"Identity {identity.name} may act only on hosts {', '.join(identity.hosts) or '(none)'}, not on "
                f"{self.host}: add {self.host} to `hosts` of identity {identity.name} in the policy file "
                f"{self.source}.",
                caller=identity.name)

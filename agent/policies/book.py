"""The policies this agent applies: the verified entries of the policies bucket, kept on disk between runs.

Each read of the bucket is offered whole (`reconcile`). An entry is applied only when `PolicyTrust` verifies it,
and only when it is newer than the version held (no rollback to an older signed version). What cannot remove a
policy: an unsigned write, a bare KV delete or purge, a bucket that lost the key. The agent keeps applying the
version it holds and reports why (`rejected`). The last verified entry of each name (a policy or a signed
removal) is saved under `<data dir>/policies/`, so a restart neither forgets a policy nor accepts a rollback.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import structlog

from contracts import BackupPolicy, PolicyEntry

from ..private_files import open_private, private_dir
from .trust import PolicyTrust, Untrusted, Verified

__all__ = ["Accepted", "PolicyBook"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Accepted:
    policy: BackupPolicy
    signer: str
    signed_at_ns: int

    @property
    def signed_at(self) -> str:
        return datetime.fromtimestamp(self.signed_at_ns / 1e9, UTC).isoformat()


class PolicyBook:
    """Accepted and rejected policies by name; `changes` grows whenever what is applied changes."""

    def __init__(self, trust: PolicyTrust, directory: Path | None = None) -> None:
        self.trust = trust
        self.directory = directory
        self.accepted: dict[str, Accepted] = {}
        self.rejected: dict[str, str] = {}
        self.changes = 0
        self._held: dict[str, PolicyEntry] = {}

    def load_saved(self) -> None:
        """At start: the entries saved by the last run, verified again (the local policy file may have changed)."""
        if self.directory is None or not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                # Not against the clock: it was checked when it came, and a host may boot with its clock behind.
                self._take(self.trust.verify(path.stem, path.read_bytes(), check_clock=False), save=False)
            except (Untrusted, OSError) as exc:
                self._reject(path.stem, f"The saved copy of policy {path.stem!r} is no longer applied: {exc}")

    def reconcile(self, values: dict[str, bytes]) -> bool:
        """A complete read of the bucket (key -> value); True if what is applied changed."""
        before = self.changes
        for key, raw in values.items():
            self.offer(key, raw)
        for name in sorted(set(self.rejected) - set(values) - set(self.accepted)):
            del self.rejected[name]  # gone from the bucket, and never applied: nothing to say any more
        for name in sorted(set(self.accepted) - set(values)):
            held = self.accepted[name]
            self._reject(name, f"Policy {name!r} was removed from the bucket without a signed removal (a bare "
                               f"delete or purge): the version signed by {held.signer} at {held.signed_at} stays in "
                               "force; remove it with `volumectl policy rm`.")
        return self.changes != before

    def offer(self, key: str, raw: bytes) -> None:
        """One entry of the bucket."""
        try:
            verified = self.trust.verify(key, raw)
        except Untrusted as exc:
            self._reject(key, str(exc) + self._stays(key))
            return
        held = self._held.get(key)
        if held is not None and verified.entry.signed_at <= held.signed_at:
            if verified.entry.signed_at == held.signed_at and verified.entry.sig == held.sig:
                self._clear(key)  # the version held, read again
                return
            self._reject(key, f"Policy {key!r} in the bucket was signed at {_iso(verified.entry.signed_at)}, not "
                              f"after the version this agent holds ({_iso(held.signed_at)}): an older version is "
                              "never applied again (set it anew to change it)." + self._stays(key))
            return
        self._take(verified, save=True)

    def _take(self, v: Verified, *, save: bool) -> None:
        name = v.entry.name
        self._held[name] = v.entry
        self._clear(name)
        if save:
            self._save(v.entry)
        if v.policy is None:
            if self.accepted.pop(name, None) is not None:
                self.changes += 1
                log.info("policy.removed", policy=name, signer=v.signer)
            return
        current = self.accepted.get(name)
        if current is None or current.policy != v.policy or current.signed_at_ns != v.entry.signed_at:
            self.accepted[name] = Accepted(v.policy, v.signer, v.entry.signed_at)
            self.changes += 1
            log.info("policy.applied", policy=name, signer=v.signer, schedule=v.policy.schedule)

    def _stays(self, name: str) -> str:
        held = self.accepted.get(name)
        return f" The version signed by {held.signer} at {held.signed_at} stays in force." if held else ""

    def _reject(self, name: str, reason: str) -> None:
        if self.rejected.get(name) != reason:
            log.warning("policy.rejected", policy=name, reason=reason)
            self.rejected[name] = reason

    def _clear(self, name: str) -> None:
        self.rejected.pop(name, None)

    def _save(self, entry: PolicyEntry) -> None:
        if self.directory is None:
            return
        path = self.directory / f"{entry.name}.json"
        tmp = path.with_suffix(".tmp")
        try:
            private_dir(self.directory)
            with open_private(tmp) as f:
                f.write(msgspec.json.encode(entry))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("policy.not_saved", policy=entry.name, error=exc.strerror or str(exc))
            with contextlib.suppress(OSError):
                tmp.unlink()


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()

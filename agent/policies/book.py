"""The policies this agent applies: the verified entries of the policies bucket, kept on disk between runs.

Each read of the bucket is offered whole (`reconcile`): every key's current entry, and the other signed entries
known for its names (earlier revisions the bucket keeps, other agents' copies: `copies.py`). Per name, the entry
applied is the newest (by `signed_at`) that `PolicyTrust` verifies for this host, and only when it is newer than
the version held (no rollback to an older signed version). So an entry this host does not trust (an operator of
other hosts, a reader, an unsigned write) neither applies nor hides the version it was written over: an agent
that never saw the policy still finds that version in the history or in a copy. What cannot remove a policy: an
unsigned write, a bare KV delete or purge, a bucket that lost the key, a removal signed by someone this host does
not trust. The agent keeps applying the version it holds and reports why the bucket's entry is not applied
(`rejected`). The last verified entry of each name (a policy or a signed removal) is saved under
`<data dir>/policies/`, so a restart neither forgets a policy nor accepts a rollback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import structlog

from contracts import BackupPolicy, PolicyEntry

from ..private_files import open_private, private_dir
from .trust import PolicyTrust, SignedAhead, Untrusted, Verified

__all__ = ["Accepted", "PolicyBook"]

log = structlog.get_logger(__name__)

_ENTRY = msgspec.json.Decoder(PolicyEntry)


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
        self._checked: dict[tuple[str, bytes], Verified | Untrusted] = {}

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

    def reconcile(self, values: Mapping[str, bytes], older: Iterable[tuple[str, bytes]] = ()) -> bool:
        """A complete read of the bucket (key -> current value), and other signed entries of its names (name,
        entry); True if what is applied changed."""
        before = self.changes
        found: dict[str, set[bytes]] = {}
        for name, raw in (*values.items(), *older):
            found.setdefault(name, set()).add(raw)
        checked: dict[tuple[str, bytes], Verified | Untrusted] = {}
        for name, raws in sorted(found.items()):
            mine = self._held.get(name)
            # Newest first, by what each entry claims: the first that verifies wins. One signed no later than the
            # version held could not be taken, so it is not even verified (a signature check costs ~1 ms).
            for claimed, raw in sorted(((_claimed(raw), raw) for raw in raws), reverse=True):
                if mine is not None and claimed[0] <= mine.signed_at:
                    break
                v = checked[name, raw] = self._check(name, raw)
                if isinstance(v, Verified):
                    self._take(v, save=True)
                    break
        for key, raw in values.items():
            if (key, raw) not in checked:
                checked[key, raw] = self._check(key, raw)
            self._judge(key, checked[key, raw])
        # Verdicts are kept for the entries still there, except that an entry signed ahead of this host's clock
        # is checked again: time makes it valid.
        self._checked = {k: v for k, v in checked.items() if not isinstance(v, SignedAhead)}
        for name in sorted(set(self.rejected) - set(values) - set(self.accepted)):
            del self.rejected[name]  # gone from the bucket, and never applied: nothing to say any more
        for name in sorted(set(self.accepted) - set(values)):
            held = self.accepted[name]
            self._reject(name, f"Policy {name!r} was removed from the bucket without a signed removal (a bare "
                               f"delete or purge): the version signed by {held.signer} at {held.signed_at} stays in "
                               "force; remove it with `volumectl policy rm`.")
        return self.changes != before

    def trust_changed(self) -> None:
        """The local policy file was reread: every entry held is verified again at once, as at start (`load_saved`):
        one whose signer the file no longer lets set it here stops being applied, so revoking an operator's key takes
        effect with the reload, not at the next restart. The bucket's entries are judged anew at its next read."""
        self._checked.clear()
        for name, entry in sorted(self._held.items()):
            try:
                self.trust.verify(name, msgspec.json.encode(entry), check_clock=False)
            except Untrusted as exc:
                del self._held[name]
                if self.accepted.pop(name, None) is not None:
                    self.changes += 1
                    log.warning("policy.unapplied", policy=name, why=str(exc))
                self._reject(name, f"Policy {name!r} is no longer applied since the policy file was reread: {exc}")

    def entries(self) -> list[PolicyEntry]:
        """The verified entry held of each name: the policies applied, and the signed removals."""
        return [self._held[name] for name in sorted(self._held)]

    def _check(self, name: str, raw: bytes) -> Verified | Untrusted:
        """The verdict on an entry, as given the last time it was read if it was (verdicts are forgotten when
        the local policy file is reread: `trust_changed`)."""
        if (name, raw) in self._checked:
            return self._checked[name, raw]
        try:
            return self.trust.verify(name, raw)
        except Untrusted as exc:
            return exc

    def _judge(self, key: str, checked: Verified | Untrusted) -> None:
        """Why the bucket's current entry under `key` is not the version applied, if it is not."""
        if isinstance(checked, Untrusted):
            self._reject(key, str(checked) + self._stays(key))
            return
        held = self._held.get(key)
        if held is None or (checked.entry.signed_at == held.signed_at and checked.entry.sig == held.sig):
            self._clear(key)  # the version held, read again
            return
        self._reject(key, f"Policy {key!r} in the bucket was signed at {_iso(checked.entry.signed_at)}, not after "
                          f"the version this agent holds ({_iso(held.signed_at)}): an older version is never "
                          "applied again (set it anew to change it)." + self._stays(key))

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


def _claimed(raw: bytes) -> tuple[int, str]:
    """(signed_at, sig) as the entry claims them, unchecked: the order in which entries are verified. Two signed in
    the same nanosecond are ordered by signature, so every agent picks the same one. (-1, ""): not an entry."""
    try:
        entry = _ENTRY.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return -1, ""
    return entry.signed_at, entry.sig


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()

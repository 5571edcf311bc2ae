"""The local policy file as last read: read at start, read again on SIGHUP, swapped whole or not at all.

The policy file decides who may ask for what (`Verifier`), what may be made or mounted (`Rules`) and whose backup
policies are applied (`PolicyTrust`). Each of them reads the policy this holder adopted last. A reload reads and
checks the whole file first; only then does every part adopt it, in one step without an await, so no request is
checked against half of the old file and half of the new. A file that cannot be read or is not valid changes
nothing: the agent keeps the policy it had and logs why (`policy.reload_failed`).

Other files reread on SIGHUP register with `also` (the stores file, when it exists, adds itself there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from ..policies.trust import PolicyTrust
from .policy import Policy, load_policy
from .rules import Rules
from .verify import Verifier

__all__ = ["PolicyFile", "Reloadable"]

log = structlog.get_logger(__name__)

Reloadable = Callable[[], bool]
"""Reads its file again; True if it adopted it, False if it kept the old one (having logged why)."""


class PolicyFile:
    """The one holder of the local policy: the parts built from it adopt each new reading together."""

    def __init__(self, path: Path, policy: Policy, verifier: Verifier, rules: Rules) -> None:
        self.path, self.policy, self.verifier, self.rules = path, policy, verifier, rules
        self.trust: PolicyTrust | None = None
        self.on_trust_changed: list[Callable[[], None]] = []
        """Told after each reload that the policy (whose policies are trusted) may have changed."""
        self.also: list[Reloadable] = []
        """Other files reread on the same signal (the stores file)."""
        self.reloads = 0
        """Reloads adopted so far (tests wait for one)."""

    def reload(self) -> bool:
        """Read the file again and adopt it whole; on any problem keep the policy held and log why."""
        try:
            policy = load_policy(self.path)
            rules = Rules(policy, self.path)  # checks the bind roots
        except (ValueError, OSError) as exc:
            log.error("policy.reload_failed", file=str(self.path), why=str(exc),
                      kept="the policy read before, unchanged")
            return False
        # One step, no await: every check from here on sees the new file.
        self.policy = policy
        self.verifier.adopt(policy, self.path)
        self.rules.adopt(rules)
        if self.trust is not None:
            self.trust.adopt(policy, str(self.path))
        self.reloads += 1
        v = policy.volumes
        log.info("policy.reloaded", file=str(self.path), identities=len(policy.identity), bind_roots=v.bind_roots,
                 drivers=v.drivers, local_types=v.local_types, share_images=policy.share.images)
        for told in self.on_trust_changed:
            told()
        return True

    def reload_all(self) -> None:
        """SIGHUP: this file, then every other file registered in `also`, each adopted or kept on its own."""
        self.reload()
        for other in self.also:
            other()

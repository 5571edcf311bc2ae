"""Keys and a local policy file for tests and benchmarks: agents refuse what is not signed by a key in it.

`Identities.make(root)` writes a seed per identity (mode 600) and `policy.toml`: `ops` (operator), `viewer`
(reader), `agents` (role agent: every test agent signs its own peer requests with it) and any extra ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.auth.policy import IdentityEntry, Policy, SharePolicy, SignaturePolicy, VolumesPolicy, render_policy
from volumectl.signing import Signer, new_user_seed

from .stack import BUSYBOX_IMAGE

__all__ = ["Identities"]

OPERATOR, READER, AGENT = "ops", "viewer", "agents"


@dataclass
class Identities:
    root: Path
    signers: dict[str, Signer] = field(default_factory=dict)
    roles: dict[str, tuple[str, list[str] | None]] = field(default_factory=dict)
    policy: Path = Path()

    @classmethod
    def make(
        cls, root: Path, *, bind_roots: Sequence[str | Path] = (), images: Sequence[str] = (BUSYBOX_IMAGE,),
        extra: Sequence[tuple[str, str, list[str] | None]] = (),
    ) -> Identities:
        """Seeds for ops, viewer, agents and `extra` (name, role, hosts), and the policy that lists them."""
        ids = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        for name, role, hosts in [(OPERATOR, "operator", None), (READER, "reader", None), (AGENT, "agent", None),
                                  *extra]:
            seed = ids.seed(name)
            seed.write_bytes(new_user_seed())
            seed.chmod(0o600)
            ids.signers[name] = Signer.from_file(seed)
            ids.roles[name] = (role, hosts)
        ids.policy = ids.write_policy("policy.toml", bind_roots=bind_roots, images=images)
        return ids

    def seed(self, name: str) -> Path:
        return self.root / f"{name}.seed"

    @property
    def operator(self) -> Signer:
        return self.signers[OPERATOR]

    @property
    def reader(self) -> Signer:
        return self.signers[READER]

    def write_policy(
        self, filename: str, *, bind_roots: Sequence[str | Path] = (), images: Sequence[str] = (BUSYBOX_IMAGE,),
        max_skew_s: float = 120.0, max_command_age_s: float = 86400.0,
    ) -> Path:
        """Another policy file for the same keys (a test's own agent with other settings)."""
        policy = Policy(
            identity=[IdentityEntry(name, s.public_key, role, hosts)  # type: ignore[arg-type]
                      for name, s in self.signers.items() for role, hosts in [self.roles[name]]],
            volumes=VolumesPolicy(bind_roots=[str(r) for r in bind_roots]),
            share=SharePolicy(images=list(images)),
            signatures=SignaturePolicy(max_skew_s=max_skew_s, max_command_age_s=max_command_age_s),
        )
        path = self.root / filename
        path.write_text(render_policy(policy))
        return path

    def agent_args(self, policy: Path | None = None) -> list[str]:
        """The command-line options of an agent under this policy, signing as `agents`."""
        return ["--policy", str(policy or self.policy), "--nats-nkey-seed", str(self.seed(AGENT))]

    def env(self, name: str = OPERATOR) -> dict[str, str]:
        """The environment of a volumectl that signs as `name`."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")},
                "VOLUME_AGENT_SEED": str(self.seed(name))}

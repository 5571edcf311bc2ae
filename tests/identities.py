"""The test fleet's security, as a production fleet has it: nkey identities, the NATS authorization generated
for them (least privilege per role, `agent/auth/permissions.py`), TLS with a CA of the tests' own, and the
agents' local policy file.

`Identities.make(root)` makes `ops` (operator), `viewer` (reader), `admin` (the tests' own eyes on JetStream)
and any extra ones; each agent host gets its identity when an agent is first started for it (`agent_args`),
which rewrites the authorization of every server using it and reloads them, as an operator does after
`volume-agent auth init`. Servers are set up with `secure(server)`, clients with `connect`/`nats`/`env`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client

from agent.auth.permissions import render_authorization
from agent.auth.policy import IdentityEntry, Policy, SharePolicy, SignaturePolicy, VolumesPolicy, render_policy
from volumectl.client import AgentClient
from volumectl.signing import Signer, new_user_seed

from .natsd import NatsCluster, NatsServer
from .tls import TestCA, TlsFiles

__all__ = ["Identities"]

OPERATOR, READER, ADMIN = "ops", "viewer", "admin"
S = TypeVar("S", NatsServer, NatsCluster)
AUTH_FILE = "nats-auth.conf"


@dataclass
class Identities:
    root: Path
    signers: dict[str, Signer] = field(default_factory=dict)
    roles: dict[str, tuple[str, list[str] | None]] = field(default_factory=dict)
    policy: Path = Path()
    tls: TlsFiles | None = None
    """The servers' certificate and the CA every client trusts; None: plain connections (a few tests)."""
    policy_options: dict[str, Any] = field(default_factory=dict)
    servers: list[NatsServer | NatsCluster] = field(default_factory=list)

    @classmethod
    def make(
        cls, root: Path, *, bind_roots: Sequence[str | Path] = (), images: Sequence[str] = (),
        extra: Sequence[tuple[str, str, list[str] | None]] = (), tls: bool = True,
    ) -> Identities:
        """Seeds for ops, viewer, admin and `extra` (name, role, hosts); the policy that lists them; a CA."""
        ids = cls(root, policy_options={"bind_roots": bind_roots, "images": images})
        root.mkdir(parents=True, exist_ok=True)
        for name, role, hosts in [(OPERATOR, "operator", None), (READER, "reader", None), (ADMIN, "admin", None),
                                  *extra]:
            ids._add(name, role, hosts)
        if tls:
            ids.tls = TestCA(root / "ca").make().issue("nats-server")
        ids.policy = ids.write_policy("policy.toml", **ids.policy_options)
        return ids

    def _add(self, name: str, role: str, hosts: list[str] | None) -> None:
        seed = self.seed(name)
        seed.write_bytes(new_user_seed())
        seed.chmod(0o600)
        self.signers[name] = Signer.from_file(seed)
        self.roles[name] = (role, hosts)

    def seed(self, name: str) -> Path:
        return self.root / f"{name}.seed"

    @property
    def operator(self) -> Signer:
        return self.signers[OPERATOR]

    @property
    def reader(self) -> Signer:
        return self.signers[READER]

    def entries(self) -> list[IdentityEntry]:
        return [IdentityEntry(name, s.public_key, role, hosts)  # type: ignore[arg-type]
                for name, s in self.signers.items() for role, hosts in [self.roles[name]]]

    def write_policy(
        self, filename: str, *, bind_roots: Sequence[str | Path] = (), images: Sequence[str] = (),
        max_skew_s: float = 120.0, max_command_age_s: float = 86400.0, drivers: Sequence[str] = ("local",),
    ) -> Path:
        """A policy file for these keys (the session's, or a test's own agent's with other settings)."""
        policy = Policy(
            identity=self.entries(),
            volumes=VolumesPolicy(bind_roots=[str(r) for r in bind_roots], drivers=list(drivers)),
            share=SharePolicy(images=list(images)),
            signatures=SignaturePolicy(max_skew_s=max_skew_s, max_command_age_s=max_command_age_s),
        )
        path = self.root / filename
        path.write_text(render_policy(policy))
        return path

    # Servers

    def secure(self, server: NatsServer | NatsCluster) -> NatsServer | NatsCluster:
        """Set a server up, before it starts, with TLS and the generated authorization; kept up to date."""
        server.tls = self.tls
        server.config += f"include {AUTH_FILE}\n"
        self.servers.append(server)
        self._write_authorization(server)
        return server

    def running(self, server: S) -> Iterator[S]:
        """A fixture's body: `server` secured, started, yielded, stopped (`yield from identities.running(...)`)."""
        self.secure(server)
        server.start()
        yield server
        server.stop()

    def _write_authorization(self, server: NatsServer | NatsCluster) -> None:
        text = render_authorization(self.entries())
        for d in server.conf_dirs:
            d.mkdir(parents=True, exist_ok=True)
            (d / AUTH_FILE).write_text(text)

    def agent(self, host: str) -> Path:
        """The seed of `host`'s agent: made the first time, with its NATS user on every server (reloaded)."""
        if host not in self.signers:
            self._add(host, "agent", None)
            self.policy = self.write_policy("policy.toml", **self.policy_options)
            for server in self.servers:
                self._write_authorization(server)
                server.reload()
        return self.seed(host)

    def agent_args(self, host: str, policy: Path | None = None) -> list[str]:
        """The options of `host`'s agent: its policy file, its own key (NATS user and peer signer), the CA."""
        seed = self.agent(host)
        return ["--policy", str(policy or self.policy), "--nats-nkey-seed", str(seed),
                *(["--nats-tls-ca", str(self.tls.ca)] if self.tls else [])]

    # Clients

    def options(self, name: str = OPERATOR) -> dict[str, Any]:
        """nats-py's connect options of `name`: its seed, its own inbox prefix, TLS from the first byte."""
        kw: dict[str, Any] = {"nkeys_seed": str(self.seed(name)), "inbox_prefix": f"_INBOX_{name}"}
        if self.tls is not None:
            kw.update(tls=ssl.create_default_context(cafile=str(self.tls.ca)), tls_handshake_first=True)
        return kw

    async def connect(self, urls: list[str], name: str = OPERATOR, **kw: Any) -> AgentClient:
        """An AgentClient that connects and signs as `name`."""
        options = self.options(name)
        prefix = options.pop("inbox_prefix")
        return await AgentClient.connect(urls, signer=self.signers[name], inbox_prefix=prefix, **options, **kw)

    async def nats(self, urls: list[str], name: str = ADMIN, **kw: Any) -> Client:
        """A plain nats-py connection as `name` (the tests' admin by default: it reads streams and consumers)."""
        return await nats.connect(servers=urls, **self.options(name), **kw)

    def env(self, name: str = OPERATOR) -> dict[str, str]:
        """The environment of a volumectl that connects and signs as `name`."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")},
                "VOLUME_AGENT_SEED": str(self.seed(name)), "VOLUME_AGENT_NAME": name,
                **({"VOLUME_AGENT_NATS_TLS_CA": str(self.tls.ca)} if self.tls else {})}

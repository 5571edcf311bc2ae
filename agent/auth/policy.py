"""The agent's local policy: who may do what on this host, and which risky requests are allowed at all.

It lives in a file on the host (`--policy`, TOML) and is read at start and on SIGHUP (`policy_file.py`);
nothing that arrives over the bus can change it. Every refusal names the policy key that would allow the request.

    [[identity]]                 one per caller: its public nkey, its name (in outcomes), its role
    name = "alice"
    key = "UA..."
    role = "operator"            reader | operator | agent | admin (contracts.auth.ROLE_OPS)
    hosts = ["web-1"]            optional: only on these hosts (default: every host)

    [volumes]
    bind_roots = []              host directories under which bind-mount and device volumes may be made
    drivers = ["local"]          volume drivers allowed (plugins by name)
    local_types = ["tmpfs", "nfs", "nfs4", "cifs"]   `type` options of the local driver allowed

    [share]
    images = []                  images `share` may run containers from

    [signatures]
    max_skew_s = 120             a request signed further from the agent's clock is refused
    max_command_age_s = 86400    a durable command signed longer ago is refused
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from contracts.auth import Role

__all__ = ["IdentityEntry", "Policy", "load_policy", "render_policy", "repeats_identity"]

Name = Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]


class IdentityEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Name
    key: Annotated[str, msgspec.Meta(pattern="^U[A-Z2-7]{55}$")]
    role: Role
    hosts: list[str] | None = None
    """None: every host."""


class VolumesPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    bind_roots: list[str] = []
    drivers: list[str] = msgspec.field(default_factory=lambda: ["local"])
    local_types: list[str] = msgspec.field(default_factory=lambda: ["tmpfs", "nfs", "nfs4", "cifs"])


class SharePolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    images: list[str] = []


class SignaturePolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_skew_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    max_command_age_s: Annotated[float, msgspec.Meta(gt=0)] = 86400.0


class Policy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    identity: list[IdentityEntry] = []
    volumes: VolumesPolicy = msgspec.field(default_factory=VolumesPolicy)
    share: SharePolicy = msgspec.field(default_factory=SharePolicy)
    signatures: SignaturePolicy = msgspec.field(default_factory=SignaturePolicy)

    def by_key(self) -> dict[str, IdentityEntry]:
        return {i.key: i for i in self.identity}


def load_policy(path: Path) -> Policy:
    """The policy in `path`; `ValueError` with a sentence (the file and what is wrong) if it is not valid."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"Cannot read the policy file {path}: {exc.strerror or exc}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"The policy file {path} is not valid TOML: {exc}.") from exc
    try:
        policy = msgspec.convert(data, Policy)
    except msgspec.ValidationError as exc:
        raise ValueError(f"The policy file {path} is not valid: {exc}.") from exc
    if repeats_identity(policy.identity):
        raise ValueError(f"The policy file {path} names an identity or a key twice.")
    return policy


def repeats_identity(identities: list[IdentityEntry]) -> bool:
    """Whether a name or a key stands twice (in a policy file or the `auth init` registry)."""
    names, keys = [i.name for i in identities], [i.key for i in identities]
    return len(set(names)) != len(names) or len(set(keys)) != len(keys)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


def render_policy(policy: Policy) -> str:
    """The policy as a commented TOML file (what `volume-agent auth init` writes)."""
    out = ["# volume-agent local policy: who may do what on this host. Read at start and on SIGHUP (systemctl reload",
           "# volume-agent); nothing on the bus changes it.",
           "# Copy it to every host (it holds public keys only). Roles: reader, operator, agent, admin.", ""]
    for i in policy.identity:
        out += ["[[identity]]", f'name = "{i.name}"', f'key = "{i.key}"', f'role = "{i.role}"']
        if i.hosts is not None:
            out.append(f"hosts = {_toml_list(i.hosts)}")
        out.append("")
    v, s, g = policy.volumes, policy.share, policy.signatures
    out += ["[volumes]",
            "# Host directories under which bind-mount (o=bind) and device volumes may be made; none by default.",
            f"bind_roots = {_toml_list(v.bind_roots)}",
            "# Volume drivers allowed, and the `type` options of the local driver (plain volumes are always allowed).",
            f"drivers = {_toml_list(v.drivers)}", f"local_types = {_toml_list(v.local_types)}", "",
            "[share]", "# Images `share` may run containers from; none by default.",
            f"images = {_toml_list(s.images)}", "",
            "[signatures]", f"max_skew_s = {g.max_skew_s:g}", f"max_command_age_s = {g.max_command_age_s:g}", ""]
    return "\n".join(out)

"""The public registry of a fleet's identities (`identities.json`), and the files made from it.

It holds names, roles, public keys and operators' hosts, never a seed. `volume-agent auth init` re-reads it on
every run, so a re-run adds names without changing existing keys; removing a name from it and running again
revokes that identity (its user leaves the NATS config and the policy).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from contracts import DEFAULT_PREFIX

from .policy import IdentityEntry, Policy, load_policy, repeats_identity

__all__ = ["REGISTRY", "Registry", "encode_registry", "load_registry", "merged_policy", "write_atomically"]

REGISTRY = "identities.json"


class Registry(msgspec.Struct, forbid_unknown_fields=True):
    prefix: str = DEFAULT_PREFIX
    identities: list[IdentityEntry] = []

    def by_name(self) -> dict[str, IdentityEntry]:
        return {i.name: i for i in self.identities}

    def agents(self) -> list[str]:
        return [i.name for i in self.identities if i.role == "agent"]


def load_registry(path: Path) -> Registry | None:
    """The registry in `path`, None if there is none; `ValueError` with a sentence if it is not valid."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        registry = msgspec.json.decode(data, type=Registry)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path} is not a valid registry: {exc}.") from exc
    if repeats_identity(registry.identities):
        raise ValueError(f"{path} names an identity or a key twice.")
    return registry


def encode_registry(registry: Registry) -> bytes:
    return msgspec.json.format(msgspec.json.encode(registry), indent=2) + b"\n"


def merged_policy(path: Path, identities: list[IdentityEntry]) -> Policy:
    """The policy to write: the existing file's settings (an admin may have edited them), with `identities`."""
    if not path.exists():
        return Policy(identity=identities)
    return msgspec.structs.replace(load_policy(path), identity=identities)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`data` into `path`, whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)

"""This host's own identities for the embedded nats-server, made at the agent's first start.

    <data dir>/auth/          0700: root only (the agent runs as root)
      agent.nk                the agent's nkey seed: it connects to its embedded server with it
      local-operator.nk       the local operator's seed: `volumectl` on this host finds it here
      policy.toml             the local policy (`agent.auth.policy`): the local operator as `operator` on this
                              host, the agent itself as `agent`

Seeds are files of mode 0600, written whole (a temporary file, fsynced, renamed) and never made again once they
exist: whoever holds one keeps working, and an edited policy is kept. The embedded server's authorization (public
keys only) is rendered from the seeds at every start. Seeds are never logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nkeys
import structlog

from volumectl.signing import new_user_seed, read_seed

from ..errors import Unavailable
from .policy import IdentityEntry, Policy, render_policy

__all__ = ["AGENT_SEED", "AUTH_DIR", "LOCAL_OPERATOR_SEED", "POLICY_FILE", "LocalAuth", "ensure_local_auth"]

log = structlog.get_logger(__name__)

AUTH_DIR = "auth"
AGENT_SEED = "agent.nk"
LOCAL_OPERATOR_SEED = "local-operator.nk"
POLICY_FILE = "policy.toml"
LOCAL_OPERATOR = "local-operator"


@dataclass(frozen=True)
class LocalAuth:
    """Where this host's identities are, and their public keys."""

    dir: Path
    agent_key: str
    operator_key: str

    @property
    def agent_seed(self) -> Path:
        return self.dir / AGENT_SEED

    @property
    def operator_seed(self) -> Path:
        return self.dir / LOCAL_OPERATOR_SEED

    @property
    def policy(self) -> Path:
        return self.dir / POLICY_FILE

    def server_config(self) -> str:
        """The embedded server's `authorization` block: these two nkey users and no one else. Both may publish
        and subscribe to anything: the server listens on this host only, and the agent's own policy decides
        what each may ask of it."""
        return ("authorization {\n  users: [\n"
                f"    {{ nkey: {self.agent_key} }}  # the agent ({AGENT_SEED})\n"
                f"    {{ nkey: {self.operator_key} }}  # the local operator ({LOCAL_OPERATOR_SEED})\n"
                "  ]\n}\n")


def _public_key(seed: bytes) -> str:
    keys = nkeys.from_seed(bytearray(seed))
    try:
        return str(keys.public_key.decode())
    finally:
        keys.wipe()


def _write_new(path: Path, data: bytes) -> None:
    """`data` as the new file `path` (mode 0600), whole or not at all; never over an existing file."""
    tmp = path.with_name(f".{path.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if it exists: a seed is never replaced
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _seed(path: Path) -> bytes:
    if not path.exists():
        _write_new(path, new_user_seed() + b"\n")
        log.info("auth.seed_made", path=str(path))
    return read_seed(path)


def ensure_local_auth(data_dir: Path, host_id: str) -> LocalAuth:
    """This host's identities under `<data_dir>/auth/`, made on first use; `Unavailable` with a sentence if they
    cannot be made or read (or others may read them)."""
    d = data_dir / AUTH_DIR
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)  # whatever the umask was, or whoever loosened it
        agent, operator = _public_key(_seed(d / AGENT_SEED)), _public_key(_seed(d / LOCAL_OPERATOR_SEED))
        auth = LocalAuth(dir=d, agent_key=agent, operator_key=operator)
        if not auth.policy.exists():
            policy = Policy(identity=[
                IdentityEntry(name=LOCAL_OPERATOR, key=operator, role="operator", hosts=[host_id]),
                IdentityEntry(name=f"agent-{host_id}"[:64], key=agent, role="agent"),
            ])
            _write_new(auth.policy, render_policy(policy).encode())
            log.info("auth.policy_made", path=str(auth.policy))
    except OSError as exc:
        if not exc.strerror:  # read_seed's own sentence: a seed others may read
            raise Unavailable(f"This host's NATS identities in {d} cannot be used: {exc}.") from exc
        raise Unavailable(f"Cannot make or read this host's NATS identities in {d} ({exc.strerror}: "
                          f"{exc.filename}); run the agent as root, or give --data-dir a directory it owns.") from exc
    except ValueError as exc:  # not a seed
        raise Unavailable(f"This host's NATS identities in {d} cannot be used: {exc}; move the file away and "
                          "the agent makes a new one (whoever held the old one loses access).") from exc
    return auth

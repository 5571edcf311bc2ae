"""Start-up steps of the daemon: the local policy read, waiting for Docker, steps retried while a passing
fault fails them, and awaiting anything unless a stop comes first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nkeys
import structlog

from volumectl.signing import Signer

from .auth.policy import load_policy
from .auth.policy_file import PolicyFile
from .auth.rules import Rules
from .auth.transport import is_loopback
from .auth.verify import Verifier
from .backoff import until_ok
from .config import DEFAULT_POLICY, Settings
from .docker import DockerEngine
from .errors import Invalid, Transient
from .streams import OUTCOME_TTL_S

__all__ = ["local_policy", "persist", "unless_stopped", "wait_for_docker", "warn_if_exposed"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def wait_for_docker(engine: DockerEngine) -> None:
    """An agent may start before Docker (boot order): say so, and retry with backoff."""

    async def ping() -> dict[str, Any]:
        await engine.ping()
        return await engine.version()

    v = await until_ok(ping, "docker.unreachable", url=engine.url)
    log.info("docker.connected", url=engine.url, version=v.get("Version"), api=v.get("ApiVersion"))


async def persist(what: str, step: Callable[[], Awaitable[T]]) -> T:
    """A start-up step, retried with backoff while Docker or NATS fails it for now (dockerd restarting, a JetStream
    leader election), as the first connections are: a passing fault does not make the agent exit."""
    return await until_ok(step, "startup.retrying", catch=(Transient,), what=what)


async def unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T:
    """Await `aw` unless `stop` is set first; then cancel it and raise CancelledError."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        raise asyncio.CancelledError
    return task.result()


def local_policy(settings: Settings) -> tuple[PolicyFile, Signer | None]:
    """The policy file (read again on SIGHUP: `PolicyFile.reload`) and the agent's own key, read at start;
    `Invalid` with a sentence if either cannot be used: the agent does not start without them."""
    seed, path = settings.auth.nkey_seed, settings.policy or Path(DEFAULT_POLICY)
    try:
        policy = load_policy(path)
        rules = Rules(policy, path)
        signer = Signer.from_file(seed) if seed else None
    except (ValueError, OSError, nkeys.NkeysError) as exc:
        raise Invalid(str(exc) or f"The nkey seed {seed} cannot be used.") from exc
    v, g = policy.volumes, policy.signatures
    log.info("policy.loaded", file=str(path), identities=len(policy.identity), bind_roots=v.bind_roots,
             drivers=v.drivers, local_types=v.local_types, share_images=policy.share.images,
             signed_as=signer.public_key if signer else None)
    if signer is None:
        log.warning("policy.unsigned_peers", why="no --nats-nkey-seed: this agent's requests to other agents "
                    "(migrate) are not signed, and they refuse them")
    if g.max_command_age_s > OUTCOME_TTL_S:
        log.warning("policy.replay_window", why=f"max_command_age_s is longer than outcomes are kept "
                    f"({OUTCOME_TTL_S:g} s): a durable command replayed after that would be applied again")
    return PolicyFile(path, policy, Verifier(policy, path, host=settings.host_id), rules), signer


def warn_if_exposed(listen: str) -> None:
    if not is_loopback(f"http://{listen}"):
        log.warning("metrics.exposed", address=listen, why="the metrics endpoint has no authentication and names "
                    "this host's volumes and policies", fix="listen on 127.0.0.1 and scrape from this host, or put a "
                    "reverse proxy with authentication in front")

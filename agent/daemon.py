"""The daemon: owns every long-lived part, starts them in order and stops them in stages."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nkeys
import structlog

from volumectl.signing import Signer

from . import __version__
from .auth.local import ensure_local_auth
from .auth.policy import Policy, load_policy
from .auth.rules import Rules
from .auth.verify import Verifier
from .backoff import until_ok
from .backup.backups import Backups
from .backup.digest import Digests
from .backup.encryption import AgeIdentity
from .backup.local_store import LocalStore
from .backup.migrate import BusPeers, Migrations
from .backup.nats_store import NatsStore
from .backup.restore import Restores
from .backup.stores import Stores
from .backup.volume_files import DataPath, remove_leftover_helpers
from .bus import Bus
from .causes import Causes
from .commands import Commands
from .config import DEFAULT_POLICY, NatsAuth, Settings, parse_args
from .dispatch import Dispatcher, Handler
from .docker import DockerEngine
from .embedded import EmbeddedNats
from .errors import AgentError, Invalid, Transient
from .events.inventory import Inventory
from .events.news import VolumeNews
from .events.onstop import OnStop
from .events.watch import Cursor, DockerWatch
from .locks import KeyedLocks
from .logging import configure
from .outcomes import KvOutcomes
from .requests import RequestService
from .share import Shares
from .streams import OUTCOME_TTL_S
from .tasks import Tasks
from .typing import Engine, EventSink, Peers
from .volumes import Volumes

__all__ = ["Domain", "main", "serve"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Domain:
    """One host's operations, each handed what it uses: the op -> handler table is built from these."""

    engine: Engine
    locks: KeyedLocks
    causes: Causes
    volumes: Volumes
    backups: Backups
    restores: Restores
    digests: Digests
    migrations: Migrations
    shares: Shares
    inventory: Inventory

    @classmethod
    def wire(
        cls, engine: Engine, events: EventSink, stores: Stores, inventory: Inventory, peers: Peers, *, host: str,
        data_path: DataPath, notes: Path | None = None, rules: Rules | None = None, age_identity: Path | None = None,
    ) -> Domain:
        """`notes`: where restores keep a note per target while they write (None: in memory only);
        `rules`: what the policy allows to be made or mounted (None: the default policy's, the strictest);
        `age_identity`: the file whose keys decrypt encrypted backups (None: they are refused)."""
        locks, causes = KeyedLocks(), Causes()
        rules = rules if rules is not None else Rules(Policy(), "(the default policy)")
        backups = Backups(engine, locks, causes, events, stores, host=host, data_path=data_path,
                          on_backup=inventory.backed_up, on_forget=inventory.forgotten)
        volumes = Volumes(engine, locks, causes, rules, final_backup=backups.final)
        digests = Digests(engine, data_path=data_path)
        return cls(
            engine=engine, locks=locks, causes=causes, volumes=volumes, backups=backups,
            restores=Restores(engine, locks, causes, events, stores, volumes, data_path=data_path, notes=notes,
                              host=host, age=AgeIdentity(age_identity)),
            digests=digests,
            migrations=Migrations(engine, locks, volumes, backups, digests, peers, host=host),
            shares=Shares(engine, locks, causes, rules), inventory=inventory,
        )

    def handlers(self) -> dict[str, Handler]:
        """Each op of the contract, and the code that applies it."""
        return {
            "create": self.volumes.create,
            "inspect": self.volumes.inspect,
            "list": self.volumes.list,
            "remove": self.volumes.remove,
            "prune": self.volumes.prune,
            "share": self.shares.share,
            "backup": self.backups.backup,
            "backups": self.backups.backups,
            "restore": self.restores.restore,
            "clone": self.restores.clone,
            "forget": self.backups.forget,
            "inventory": self.inventory.snapshot,
            "digest": self.digests.digest,
            "migrate": self.migrations.migrate,
        }


async def _wait_for_docker(engine: DockerEngine) -> None:
    """An agent may start before Docker (boot order): say so, and retry with backoff."""

    async def ping() -> dict[str, Any]:
        await engine.ping()
        return await engine.version()

    v = await until_ok(ping, "docker.unreachable", url=engine.url)
    log.info("docker.connected", url=engine.url, version=v.get("Version"), api=v.get("ApiVersion"))


async def _persist(what: str, step: Callable[[], Awaitable[T]]) -> T:
    """A start-up step, retried with backoff while Docker or NATS fails it for now (dockerd restarting, a JetStream
    leader election), as the first connections are: a passing fault does not make the agent exit."""
    return await until_ok(step, "startup.retrying", catch=(Transient,), what=what)


async def _unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T:
    """Await `aw` unless `stop` is set first; then cancel it and raise CancelledError."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        raise asyncio.CancelledError
    return task.result()


def local_policy(settings: Settings) -> tuple[Verifier, Rules, Signer | None]:
    """The policy file and the agent's own key, read once at start; `Invalid` with a sentence if either cannot be
    used: the agent does not start without them."""
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
    return Verifier(policy, path, host=settings.host_id), rules, signer


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the agent until `stop` is set; then stop taking work, drain, and close down."""
    log.info("agent.starting", version=__version__, host=settings.host_id, docker=settings.docker_url)
    if settings.age_identity is not None:  # its public keys only: the file's path is all the agent hands on
        log.info("agent.age_identity", file=str(settings.age_identity), decrypts_for=list(settings.age_recipients))
    if settings.insecure:
        log.warning("agent.insecure", reasons=list(settings.insecure),
                    fix="start it without --insecure to be told what to change")
    local = None
    if not settings.nats_urls:
        # The embedded server admits this host's own identities only (made at first start): the agent is one of
        # them, and their policy is the agent's unless --policy names another.
        local = await asyncio.to_thread(ensure_local_auth, settings.data_dir, settings.host_id)
        settings = dataclasses.replace(settings, auth=NatsAuth(nkey_seed=str(local.agent_seed)),
                                       policy=settings.policy or local.policy)
    verifier, rules, signer = local_policy(settings)  # before anything starts: nothing runs without a policy
    async with AsyncExitStack() as stack:
        urls = settings.nats_urls
        if local is not None:
            embedded = EmbeddedNats(settings.data_dir, settings.embedded_listen, f"volume-agent-{settings.host_id}",
                                    local)
            stack.push_async_callback(embedded.stop)
            await embedded.start()
            urls = [embedded.url]
        engine = DockerEngine(settings.docker_url, settings.docker_timeout_s)
        stack.push_async_callback(engine.stop)
        await engine.start()
        await _unless_stopped(_wait_for_docker(engine), stop)

        bus = Bus(settings, urls)
        stack.push_async_callback(bus.stop)
        await _unless_stopped(bus.start(), stop)

        tasks = Tasks(settings.concurrency)
        stores = Stores(LocalStore(settings.data_dir / "backups"), NatsStore(bus, settings.data_dir / "spool"))
        await stores.cleanup()
        await _unless_stopped(_persist("removing leftover helpers", lambda: remove_leftover_helpers(engine)), stop)
        inventory = Inventory(engine, stores, bus, settings.host_id, heartbeat_s=settings.heartbeat_s,
                              sizes_every_s=settings.sizes_every_s, insecure=list(settings.insecure))
        domain = Domain.wire(engine, bus, stores, inventory, BusPeers(bus, signer), host=settings.host_id,
                             data_path=settings.data_path, notes=settings.data_dir / "restoring", rules=rules,
                             age_identity=settings.age_identity)
        await domain.restores.cleanup()
        dispatcher = Dispatcher(settings.host_id, domain.handlers(), KvOutcomes(bus), bus, tasks, verifier,
                                max_body=settings.max_body)
        # Exit stack order (last in, first out): stop taking work and events, then drain, then close.
        cursor = Cursor(settings.data_dir / "events.cursor")
        stack.callback(cursor.save, force=True)  # after the drain: a stop still being backed up is replayed
        stack.push_async_callback(tasks.drain, settings.grace_s)
        stack.push_async_callback(inventory.stop)
        requests = RequestService(bus, dispatcher, tasks)
        stack.push_async_callback(requests.stop)
        await requests.start()
        commands = Commands(
            bus, dispatcher, tasks, max_ack_pending=settings.concurrency, ack_wait_s=settings.ack_wait_s
        )
        stack.push_async_callback(commands.stop)
        await _unless_stopped(_persist("setting up the durable command consumer", commands.start), stop)
        on_stop = OnStop(engine, domain.locks, domain.causes, bus, domain.backups, tasks, cursor)
        watch = DockerWatch(engine, cursor, [VolumeNews(bus, domain.causes), inventory, on_stop])
        stack.push_async_callback(watch.stop)
        await watch.start()
        await inventory.start()

        log.info("agent.ready", host=settings.host_id, nats=urls)
        await stop.wait()
        log.info("agent.stopping", in_flight=len(tasks))
    log.info("agent.stopped")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `volume-agent`; `volume-agent auth ...` sets up identities (agent/auth/cli.py)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["auth"]:
        from .auth.cli import main as auth_main

        return auth_main(argv[1:])
    settings = parse_args(argv)
    configure()
    return asyncio.run(_main(settings))


async def _main(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(settings, stop)
    except asyncio.CancelledError:
        log.info("agent.stopped_during_start")
    except AgentError as exc:
        log.error("agent.failed", code=exc.code, error=exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

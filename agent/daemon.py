"""The daemon: owns every long-lived part, starts them in order and stops them in stages."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from volumectl.redact import redact

from . import __version__, tools
from .auth.local import ensure_local_auth
from .auth.policy import Policy
from .auth.rules import Rules
from .backup.backups import Backups
from .backup.digest import Digests
from .backup.drills import Drills, VerifyLog
from .backup.encryption import AgeIdentity
from .backup.local_store import LocalStore
from .backup.maintenance import maintainers
from .backup.migrate import BusPeers, Migrations
from .backup.nats_catalog import Catalog
from .backup.nats_store import NatsStore
from .backup.observed import BackupObserver
from .backup.restic_store import ResticStore
from .backup.restore import Restores
from .backup.stores import Stores
from .backup.volume_files import DataPath, remove_leftover_helpers
from .bus import Bus
from .causes import Causes
from .commands import Commands
from .config import NatsAuth, Settings, parse_args
from .dispatch import Dispatcher, Handler
from .docker import DockerEngine
from .embedded import EmbeddedNats, in_use, port_taken
from .errors import AgentError
from .events.inventory import Inventory
from .events.news import VolumeNews
from .events.onstop import OnStop
from .events.watch import Cursor, DockerWatch
from .lease import HostLease, HostTaken
from .locks import KeyedLocks
from .logging import configure
from .metrics import Metrics
from .notify import Notifier
from .outcomes import KvOutcomes
from .policies.book import PolicyBook
from .policies.feed import PolicyFeed
from .policies.ledger import Ledger
from .policies.scheduler import Scheduler
from .policies.trust import PolicyTrust
from .policies.view import PolicyStatus, PolicyViews
from .private_files import UMASK, make_private
from .requests import RequestService
from .share import Shares
from .startup import local_policy, persist, unless_stopped, wait_for_docker, warn_if_exposed
from .streams import MAINTENANCE_LEASE_TTL_S, ensure_lease_bucket, ensure_maintenance_bucket
from .supervisor import EXIT_FAILED, EXIT_HOST_TAKEN, Supervisor
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
    drills: Drills

    @classmethod
    def wire(
        cls, engine: Engine, events: EventSink, stores: Stores, inventory: Inventory, peers: Peers, *, host: str,
        data_path: DataPath, notes: Path | None = None, rules: Rules | None = None, max_backups: int = 0,
        observer: BackupObserver | None = None, age_identity: Path | None = None, scratch: Path | None = None,
        verified: VerifyLog | None = None,
    ) -> Domain:
        """`notes`: where restores keep a note per target while they write (None: in memory only);
        `rules`: what the policy allows to be made or mounted (None: the default policy's, the strictest);
        `observer`: told of every backup, made or failed (metrics, notifications), and of every restore drill;
        `age_identity`: the file whose keys decrypt encrypted backups (None: they are refused);
        `scratch`: where restore drills extract (None: a directory under the system's temporary one);
        `verified`: where each volume's last drill is kept (None: in memory only)."""
        locks, causes = KeyedLocks(), Causes()
        rules = rules if rules is not None else Rules(Policy(), "(the default policy)")
        backups = Backups(engine, locks, causes, events, stores, host=host, data_path=data_path,
                          on_backup=inventory.backed_up, on_forget=inventory.forgotten, max_running=max_backups,
                          observer=observer, estimate=inventory.expected_size)
        volumes = Volumes(engine, locks, causes, rules, final_backup=backups.final)
        digests = Digests(engine, data_path=data_path)
        restores = Restores(engine, locks, causes, events, stores, volumes, data_path=data_path, notes=notes,
                            host=host, age=AgeIdentity(age_identity))
        scratch = scratch if scratch is not None else Path(tempfile.gettempdir()) / f"volume-agent-drills-{host}"
        drills = Drills(stores, restores, scratch=scratch, verified=verified or VerifyLog(None),
                        metrics=observer.metrics if observer else None,
                        notifier=observer.notifier if observer else None, on_change=inventory.changed)
        return cls(
            engine=engine, locks=locks, causes=causes, volumes=volumes, backups=backups, restores=restores,
            digests=digests,
            migrations=Migrations(engine, locks, volumes, backups, digests, peers, host=host),
            shares=Shares(engine, locks, causes, rules), inventory=inventory, drills=drills,
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
            "verify": self.drills.verify,
        }


async def serve(settings: Settings, supervisor: Supervisor) -> None:
    """Run the agent until its supervisor's `stop` is set (a signal, or a part's `fatal`); then stop taking work,
    drain, and close down."""
    stop = supervisor.stop
    log.info("agent.starting", version=__version__, host=settings.host_id, docker=settings.docker_url)
    if settings.age_identity is not None:  # its public keys only: the file's path is all the agent hands on
        log.info("agent.age_identity", file=str(settings.age_identity), decrypts_for=list(settings.age_recipients))
    if settings.insecure:
        log.warning("agent.insecure", reasons=list(settings.insecure),
                    fix="start it without --insecure to be told what to change")
    await asyncio.to_thread(make_private, settings.data_dir)  # what an older version left loose, too
    local = None
    if not settings.nats_urls:
        # The embedded server admits this host's own identities only (made at first start): the agent is one of
        # them, and their policy is the agent's unless --policy names another.
        local = await asyncio.to_thread(ensure_local_auth, settings.data_dir, settings.host_id)
        settings = dataclasses.replace(settings, auth=NatsAuth(nkey_seed=str(local.agent_seed)),
                                       policy=settings.policy or local.policy)
    local_file, signer = local_policy(settings)  # before anything starts: nothing runs without a policy
    verifier, rules = local_file.verifier, local_file.rules
    metrics, notifier = Metrics(settings.host_id), Notifier(list(settings.notify), settings.host_id)
    async with AsyncExitStack() as stack:
        # First in, last out: metrics are served while the agent waits for Docker and NATS, and a backup that fails
        # while in-flight operations drain is still notified.
        if settings.metrics_listen:
            warn_if_exposed(settings.metrics_listen)
            stack.push_async_callback(metrics.stop)
            await metrics.start(settings.metrics_listen)
        stack.push_async_callback(notifier.stop)
        await notifier.start()
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
        await unless_stopped(wait_for_docker(engine), stop)

        bus = Bus(settings, urls)
        stack.push_async_callback(bus.stop)
        await unless_stopped(bus.start(), stop)
        # One host id, one agent: claimed before anything here is touched (spool files, helper containers, restore
        # notes, the command consumer), released last (after the drain) on a clean stop.
        lease = HostLease(lambda: ensure_lease_bucket(bus.js, settings, bus.denials), settings.host_id,
                          ttl_s=settings.lease_ttl_s, fatal=supervisor.fatal)
        stack.push_async_callback(lease.stop)
        await unless_stopped(persist("claiming this host id", lease.start), stop)

        tasks = Tasks(settings.concurrency)
        catalog = Catalog(bus)
        stores = Stores(LocalStore(settings.data_dir / "backups"), NatsStore(bus, settings.data_dir / "spool"),
                        *(ResticStore(name, cfg, catalog, host=settings.host_id, stores_file=settings.stores_file)
                          for name, cfg in settings.stores.items()))
        if settings.stores:
            log.info("agent.stores", stores=list(stores.by_name), file=str(settings.stores_file))
        await stores.cleanup()
        if settings.metrics_listen:
            made = await unless_stopped(persist("reading this host's backups for the metrics",
                                                  lambda: stores.catalog(host=settings.host_id)), stop)
            here = await unless_stopped(persist("listing volumes for the metrics", lambda: engine.volume_list({})),
                                         stop)
            names = {v["Name"] for v in here}  # a volume removed since has no series to alert on
            metrics.backed_up_before(r for r in made if r.volume in names)
        await unless_stopped(persist("removing leftover helpers", lambda: remove_leftover_helpers(engine)), stop)
        trust = local_file.trust = PolicyTrust(verifier.policy, verifier.source, host=settings.host_id,
                                               subjects=settings.subjects)
        book, ledger = PolicyBook(trust, settings.data_dir / "policies"), Ledger(settings.data_dir / "schedule.json")
        verified = VerifyLog(settings.data_dir / "verified.json")
        verified.load()
        metrics.verified_before(verified.last.items())
        status = PolicyStatus(book, ledger, verified)
        inventory = Inventory(engine, stores, bus, settings.host_id, heartbeat_s=settings.heartbeat_s,
                              sizes_every_s=settings.sizes_every_s, insecure=list(settings.insecure),
                              policies=status, per_chunk=settings.inventory_per_chunk)
        domain = Domain.wire(engine, bus, stores, inventory, BusPeers(bus, signer), host=settings.host_id,
                             data_path=settings.data_path, notes=settings.data_dir / "restoring", rules=rules,
                             max_backups=settings.max_backups, observer=BackupObserver(metrics, notifier),
                             age_identity=settings.age_identity, scratch=settings.data_dir / "drills",
                             verified=verified)
        await domain.restores.cleanup()
        await domain.drills.cleanup()
        handlers = domain.handlers()
        dispatcher = Dispatcher(settings.host_id, handlers, KvOutcomes(bus), bus, tasks, verifier,
                                max_body=settings.max_body, max_reply=bus.nc.max_payload, metrics=metrics)
        # The scheduler publishes its runs' outcomes through the dispatcher, which answers `policies` from it.
        scheduler = Scheduler(engine, domain.locks, domain.backups, book, ledger, dispatcher, tasks,
                              host=settings.host_id, on_change=inventory.changed, metrics=metrics,
                              notifier=notifier, drills=domain.drills,
                              drill_ledger=Ledger(settings.data_dir / "verify.json"))
        handlers["policies"] = PolicyViews(status, scheduler, host=settings.host_id).policies
        feed = PolicyFeed(bus, book, scheduler.poke, refresh_s=settings.policy_refresh_s)
        local_file.on_trust_changed += [book.trust_changed, feed.poke]
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
        await unless_stopped(persist("setting up the durable command consumer", commands.start), stop)
        on_stop = OnStop(engine, domain.locks, domain.causes, bus, domain.backups, tasks, cursor)
        watch = DockerWatch(engine, cursor, [VolumeNews(bus, domain.causes), inventory, on_stop, scheduler])
        stack.push_async_callback(watch.stop)
        await watch.start()
        # Policies last in, first out: no scheduled backup starts once stopping has begun.
        stack.push_async_callback(feed.stop)
        await unless_stopped(persist("reading the backup policies", feed.start), stop)
        stack.push_async_callback(scheduler.stop)
        await scheduler.start()
        for m in maintainers(stores.by_name.values(), lambda: ensure_maintenance_bucket(bus.js, settings, bus.denials),
                             host=settings.host_id, metrics=metrics, notifier=notifier,
                             ttl_s=MAINTENANCE_LEASE_TTL_S):
            metrics.maintenance_stores((m.store, task) for task in m.schedules)
            stack.push_async_callback(m.stop)
            m.start()
        await inventory.start()  # after the scheduler's first look: what covers each volume is known

        # SIGHUP: the policy file (and the other files registered with it) read again, adopted whole or not at all.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, local_file.reload_all)
        stack.callback(asyncio.get_running_loop().remove_signal_handler, signal.SIGHUP)
        log.info("agent.ready", host=settings.host_id, nats=[redact(u) for u in urls])
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
    fatal, warnings = tools.check(tools.needed(settings))
    if fatal:  # as argparse says a usage error: every backup would fail
        print("volume-agent: error: " + "\nvolume-agent: error: ".join(fatal), file=sys.stderr)
        return 2
    if not settings.nats_urls and in_use(settings.embedded_listen):  # said plainly, before any log line
        print(f"volume-agent: error: {port_taken(settings.embedded_listen)}", file=sys.stderr)
        return EXIT_FAILED
    os.umask(UMASK)  # whatever the agent or its children (tar, age, nats-server) create is root's alone
    configure()
    for warning in warnings:
        log.warning("agent.tool_missing", why=warning)
    return asyncio.run(_main(settings))


async def _main(settings: Settings) -> int:
    supervisor = Supervisor()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop.set)
    try:
        await serve(settings, supervisor)
    except asyncio.CancelledError:
        log.info("agent.stopped_during_start")
    except HostTaken as exc:
        log.error("agent.refused", code=exc.code, error=exc.message, exit_code=EXIT_HOST_TAKEN,
                  holder_pid=exc.holder.pid if exc.holder else None,
                  holder_hostname=exc.holder.hostname if exc.holder else None,
                  holder_renewed_at=exc.holder.renewed_at if exc.holder else None)
        return EXIT_HOST_TAKEN
    except AgentError as exc:
        log.error("agent.failed", code=exc.code, error=exc.message)
        return EXIT_FAILED
    return supervisor.exit_code


if __name__ == "__main__":
    sys.exit(main())

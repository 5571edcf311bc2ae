"""Small fakes behind the agent's Protocol seams, and the one place that builds the agent's parts over them.

mypy checks this file (`[tool.mypy] files` in pyproject.toml): the assignments under TYPE_CHECKING at the end
prove that each fake satisfies the Protocol it stands in for, so a fake cannot drift from its seam.
"""

from __future__ import annotations

import asyncio
import selectors
import shutil
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from agent.auth.rules import Rules
from agent.auth.verify import Caller
from agent.backup.backups import Backups
from agent.backup.local_store import LocalStore
from agent.backup.observed import BackupObserver
from agent.backup.restore import Restores
from agent.backup.stores import PARTIAL, Stores, StoreWriter, newest_first, suffix_of
from agent.backup.volume_files import DataPath
from agent.daemon import Domain
from agent.dispatch import Handler
from agent.errors import AgentError, Conflict, InUse, NotFound, Unavailable
from agent.events.inventory import Inventory
from agent.outcomes import StoredOutcome
from agent.typing import (
    BackupStore,
    Engine,
    EventSink,
    InventorySink,
    Metrics,
    Notifier,
    OutcomeStore,
    Peers,
    ResultSink,
    Verifier,
)
from agent.volumes import Volumes
from contracts import BackupRecord, Compression, InventorySnapshot, Reply, assemble, outcome_key

T = TypeVar("T")


class FakeEngine:
    """An in-memory `Engine`: volumes and containers as dicts; `gate` can hold volume_create.

    With `root`, every volume gets a real, empty directory under it as its Mountpoint, so the backup path
    reaches its files as a host directory (GNU tar on real files, no Docker). Without it the Mountpoints do
    not exist and the archive API would be used, which this fake refuses (`archive_get`/`archive_put` fail):
    a volume with `Options {"type": ...}` takes that route too, which is how a test makes a copy fail.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.volumes: dict[str, dict[str, Any]] = {}
        self.containers_: list[dict[str, Any]] = []
        self.docker_events: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.calls: list[str] = []
        self._called: asyncio.Event | None = None
        self.fail_with: Exception | None = None
        """Raised by volume_create (Docker down, a bug below the agent, ...)."""

    def add_container(self, name: str, volumes: list[str], *, state: str = "running") -> dict[str, Any]:
        """A container (as the Engine lists it) that mounts `volumes`."""
        c = {"Id": f"{name}-id".ljust(64, "0"), "Names": [f"/{name}"], "State": state, "Image": "fake",
             "Config": {"Labels": {}},
             "Mounts": [{"Type": "volume", "Name": v, "Destination": f"/{v}"} for v in volumes]}
        self.containers_.append(c)
        return c

    async def reached(self, call: str, timeout: float = 5) -> None:
        """Until `call` (e.g. "create:v1") is among `calls`: the operation got that far (behind a closed
        `gate`, it stays there)."""
        async with asyncio.timeout(timeout):
            while call not in self.calls:
                self._called = asyncio.Event()
                await self._called.wait()

    def _call(self, call: str) -> None:
        self.calls.append(call)
        if self._called is not None:
            self._called.set()

    def _container(self, cid: str) -> dict[str, Any]:
        for c in self.containers_:
            if cid in (c["Id"], c["Names"][0].lstrip("/")):
                return c
        raise NotFound(f"No such container: {cid}.")

    async def ping(self) -> None: ...

    async def version(self) -> dict[str, Any]:
        return {"Version": "fake", "ApiVersion": "1.41"}

    async def info(self) -> dict[str, Any]:
        return {"Driver": "overlay2", "Plugins": {"Volume": ["local"]}}

    async def system_df(self) -> dict[str, Any]:
        return {"Volumes": [{"Name": n, "UsageData": {"Size": -1}} for n in self.volumes]}

    async def events(self, since: str | None, filters: Mapping[str, list[str]]) -> AsyncIterator[dict[str, Any]]:
        """The events in `docker_events`, then the end of the stream (as after a daemon restart)."""
        for evt in self.docker_events:
            yield evt

    async def volume_inspect(self, name: str) -> dict[str, Any]:
        self._call(f"inspect:{name}")
        if name not in self.volumes:
            raise NotFound(f"Volume {name!r} does not exist on this host.")
        return self.volumes[name]

    async def volume_create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        name = spec["Name"]
        self._call(f"create:{name}")
        if self.fail_with is not None:
            raise self.fail_with
        had = self.volumes.get(name, {}).get("Driver", spec.get("Driver", "local"))
        if had != spec.get("Driver", "local"):  # as Docker: another driver's volume of that name is a conflict
            raise Conflict(f"volume {name!r} conflicts with existing state: driver {had!r} already has it.")
        if self.gate is not None:
            await self.gate.wait()
        mountpoint = f"/v/{name}"
        if self.root is not None:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            mountpoint = str(self.root / name)
        v = {"Name": name, "Driver": spec.get("Driver", "local"), "Labels": spec.get("Labels") or {},
             "Options": spec.get("DriverOpts") or {}, "Mountpoint": mountpoint, "Scope": "local",
             "CreatedAt": "2026-01-01T00:00:00Z"}
        self.volumes.setdefault(name, v)
        return self.volumes[name]

    async def volume_list(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        return list(self.volumes.values())

    async def volume_remove(self, name: str, *, force: bool) -> None:
        self._call(f"remove:{name}")
        if name not in self.volumes:
            raise NotFound(f"Volume {name!r} does not exist on this host.")
        if any(m.get("Name") == name for c in self.containers_ for m in c["Mounts"]):
            raise InUse("volume is in use")
        if self.root is not None:
            shutil.rmtree(self.root / name, ignore_errors=True)
        del self.volumes[name]

    async def containers(self, filters: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
        return self.containers_

    async def container_inspect(self, name: str) -> dict[str, Any]:
        return self._container(name)

    async def container_create(self, name: str, config: Mapping[str, Any]) -> str:
        self._call(f"container_create:{name}")
        return "0" * 64

    async def container_start(self, cid: str) -> None:
        self._call(f"start:{cid}")
        for c in self.containers_:
            if c["Id"] == cid:
                c["State"] = "running"

    async def container_stop(self, cid: str) -> None:
        self._call(f"stop:{cid}")
        self._container(cid)["State"] = "exited"

    async def container_remove(self, cid: str) -> None:
        self._call(f"container_remove:{cid}")

    async def container_exec(self, cid: str, cmd: list[str]) -> tuple[int, str]:
        self._call(f"exec:{cid}")
        return 0, ""

    async def image_inspect(self, name: str) -> dict[str, Any]:
        return {}

    async def image_import(self, repo: str, tag: str, rootfs_tar: bytes, change: str) -> None:
        self._call(f"image_import:{repo}:{tag}")

    async def archive_get(self, cid: str, path: str) -> AsyncIterator[bytes]:
        self._call(f"archive_get:{cid}")
        raise AgentError("The fake Docker Engine has no archive API.")
        yield b""  # an async generator, as the Engine's is

    async def archive_put(self, cid: str, path: str, chunks: AsyncIterator[bytes]) -> None:
        self._call(f"archive_put:{cid}")
        raise AgentError("The fake Docker Engine has no archive API.")


class RecordingSink:
    """ResultSink, EventSink and InventorySink that remember what they were given."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bytes, bool]] = []
        self.events: list[tuple[str, str]] = []
        self.event_fields: list[dict[str, Any]] = []
        """Per event, its keyword fields (backup_id, error, ...), in the order of `events`."""
        self.bucket: dict[str, bytes] = {}
        """The inventory bucket: each key's current value."""
        self.puts: list[list[str]] = []
        """The keys of each `inventory_put`, in order."""

    async def result(self, op: str, reply: bytes, *, durable: bool) -> None:
        self.results.append((op, reply, durable))

    async def inventory_put(self, values: Mapping[str, bytes]) -> None:
        self.bucket.update(values)
        self.puts.append(list(values))

    async def inventory_delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.bucket.pop(key, None)

    async def inventory_get(self, key: str) -> bytes | None:
        return self.bucket.get(key)

    def snapshots(self) -> list[InventorySnapshot]:
        """The bucket as readers see it (`contracts.assemble`)."""
        return assemble(self.bucket)

    async def event(
        self, kind: str, volume: str, *, backup_id: str | None = None, bytes_done: int | None = None,
        error: str | None = None, container: str | None = None, bytes_total: int | None = None,
        percent: float | None = None, eta_s: float | None = None,
    ) -> None:
        self.events.append((kind, volume))
        self.event_fields.append({"backup_id": backup_id, "bytes_done": bytes_done, "error": error,
                                  "container": container})


class MemoryOutcomes:
    """An `OutcomeStore` in a dict."""

    def __init__(self) -> None:
        self.items: dict[str, StoredOutcome] = {}

    async def get(self, host: str, cmd_id: str) -> StoredOutcome | None:
        return self.items.get(outcome_key(host, cmd_id))

    async def put(self, host: str, cmd_id: str, outcome: StoredOutcome) -> None:
        self.items[outcome_key(host, cmd_id)] = outcome


class MemoryStore:
    """A `BackupStore` under any name: records in a dict, bytes in files under `root`; `fetch` does not verify."""

    def __init__(self, name: str, root: Path, *, shared: bool = True) -> None:
        self.name = name
        self.root = root
        self.shared = shared
        self.records: dict[str, BackupRecord] = {}

    async def begin(
        self, backup_id: str, volume: str, compression: Compression, *, encrypted: bool = False
    ) -> StoreWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{backup_id}{suffix_of(compression, encrypted=encrypted)}"
        writer = StoreWriter(path=self.root / f".{backup_id}{PARTIAL}", final=final, location=str(final))
        writer.open()
        return writer

    async def commit(self, writer: StoreWriter, record: BackupRecord) -> None:
        writer.finish(sync=False)
        self.records[record.backup_id] = record

    async def abort(self, writer: StoreWriter) -> None:
        writer.abort()

    async def catalog(self, volume: str | None = None) -> list[BackupRecord]:
        return newest_first(r for r in self.records.values() if volume in (None, r.volume))

    async def get(self, backup_id: str) -> BackupRecord:
        try:
            return self.records[backup_id]
        except KeyError:
            raise NotFound(f"Backup {backup_id!r} does not exist in the {self.name} store.") from None

    @asynccontextmanager
    async def fetch(self, record: BackupRecord) -> AsyncIterator[Path]:
        yield Path(record.location)

    async def forget(self, backup_id: str) -> None:
        record = await self.get(backup_id)
        del self.records[backup_id]
        Path(record.location).unlink(missing_ok=True)

    async def cleanup(self) -> int:
        return 0


class TrustAll:
    """A `Verifier` that takes every message as signed by an admin: for tests of what comes after the check."""

    def caller(
        self, op: str, subject: str, headers: Mapping[str, str] | None, body: bytes, *, durable: bool
    ) -> Caller:
        return Caller(TESTER, "admin", "U" + "A" * 55)


TESTER = "tester"
"""The caller `TrustAll` names in every outcome."""


class NoPeers:
    """`Peers` for an agent alone on its bus: every other host is unreachable."""

    async def request(self, host: str, op: str, body: msgspec.Struct, timeout: float) -> Reply:
        raise Unavailable(f"No agent answers for host {host!r} (a unit test has no peers).")


@dataclass(frozen=True)
class Finished:
    """One `backup_finished` call, as `RecordingMetrics` keeps it."""

    volume: str
    trigger: str
    policy: str | None
    ok: bool
    tar_bytes: int
    stored_bytes: int
    seconds: float


class RecordingMetrics:
    """`Metrics` that remember what they were told (the real ones are checked by rendering them)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.running = 0
        self.finished: list[Finished] = []
        self.next_runs: dict[tuple[str, str], float] = {}
        self.covered: dict[str, int] = {}
        self.uncovered = 0
        self.verified: list[tuple[str, bool]] = []

    def request(self, op: str, code: str, seconds: float) -> None:
        self.requests.append((op, code))

    def backup_started(self) -> None:
        self.running += 1

    def backup_finished(
        self, volume: str, trigger: str, policy: str | None, *, ok: bool, tar_bytes: int = 0, stored_bytes: int = 0,
        seconds: float = 0.0,
    ) -> None:
        self.running -= 1
        self.finished.append(Finished(volume, trigger, policy, ok, tar_bytes, stored_bytes, seconds))

    def next_run(self, policy: str, volume: str, at: float | None) -> None:
        if at is None:
            self.next_runs.pop((policy, volume), None)
        else:
            self.next_runs[(policy, volume)] = at

    def coverage(self, volumes_per_policy: dict[str, int], uncovered: int) -> None:
        self.covered, self.uncovered = dict(volumes_per_policy), uncovered

    def verify_finished(self, volume: str, *, ok: bool, seconds: float) -> None:
        self.verified.append((volume, ok))


class RecordingNotifier:
    """A `Notifier` that keeps each notification as (kind, volume, detail, policy); nothing is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, str | None]] = []

    async def backup_failed(self, volume: str, error: str, *, trigger: str, policy: str | None) -> None:
        self.sent.append(("backup_failed", volume, f"{trigger}: {error}", policy))

    async def overdue(self, volume: str, policy: str, reason: str) -> None:
        self.sent.append(("overdue", volume, reason, policy))

    async def recovered(self, volume: str, policy: str) -> None:
        self.sent.append(("recovered", volume, "", policy))

    async def retention_held(self, volume: str, policy: str, reason: str) -> None:
        self.sent.append(("retention_held", volume, reason, policy))

    async def verify_failed(self, volume: str, backup_id: str, error: str, *, policy: str | None) -> None:
        self.sent.append(("verify_failed", volume, f"{backup_id}: {error}", policy))

    async def verify_recovered(self, volume: str, backup_id: str, *, policy: str | None) -> None:
        self.sent.append(("verify_recovered", volume, backup_id, policy))


HEARTBEAT_S = 60.0
"""The fake agent's inventory heartbeat."""


class Sink(EventSink, InventorySink, Protocol):
    """Where the agent's parts publish: a RecordingSink in unit tests, the real Bus in some."""


@dataclass
class FakeAgent:
    """The agent's parts over fakes, wired as the daemon wires them (`Domain.wire`)."""

    engine: FakeEngine
    sink: Sink
    stores: Stores
    domain: Domain

    @property
    def volumes(self) -> Volumes:
        return self.domain.volumes

    @property
    def backups(self) -> Backups:
        return self.domain.backups

    @property
    def restores(self) -> Restores:
        return self.domain.restores

    @property
    def inventory(self) -> Inventory:
        return self.domain.inventory

    @property
    def handlers(self) -> dict[str, Handler]:
        """The op -> handler table, as the daemon builds it."""
        return self.domain.handlers()


def fake_agent(
    engine: FakeEngine | None = None, sink: Sink | None = None, *stores: BackupStore, host: str = "h1",
    data_path: DataPath = "auto", notes: Path | None = None, rules: Rules | None = None,
    observer: BackupObserver | None = None, age_identity: Path | None = None,
) -> FakeAgent:
    """The agent's parts over a fake engine and sink (default: a throwaway local store); `observer`, e.g. over
    RecordingMetrics and RecordingNotifier, is told of every backup.

    The one place in tests/ that knows the parts' constructors: when they change, only this changes.
    """
    engine = engine if engine is not None else FakeEngine()
    sink = sink if sink is not None else RecordingSink()
    stores = stores or (LocalStore(Path(tempfile.mkdtemp(prefix="va-store-"))),)
    all_stores = Stores(*stores)
    inventory = Inventory(engine, all_stores, sink, host, heartbeat_s=HEARTBEAT_S, sizes_every_s=0)
    domain = Domain.wire(engine, sink, all_stores, inventory, NoPeers(), host=host, data_path=data_path,
                         notes=notes, rules=rules, observer=observer, age_identity=age_identity)
    return FakeAgent(engine, sink, all_stores, domain)


def fake_handlers(engine: FakeEngine, sink: Sink, store_root: Path | None = None) -> dict[str, Handler]:
    """The agent's handler table over a fake engine (backups in a throwaway local store)."""
    stores = (LocalStore(store_root),) if store_root is not None else ()
    return fake_agent(engine, sink, *stores).handlers


class _JumpingSelector(selectors.DefaultSelector):
    """Never waits for a timer: when nothing is ready, the loop's clock jumps to the next one instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer at all: only I/O can wake the loop, so wait for it for real
            return super().select(None)
        ready = super().select(0)
        if not ready and timeout > 0:
            self.loop.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a clock of its own, starting at 0, that moves only when every task waits for a timer.

    Debounces, intervals and heartbeats then run exactly (a sleep of 60 s ends at exactly 60.0) and at once.
    For in-memory code only: the clock does not wait for threads or subprocesses.
    """

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run_in_virtual_time(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh VirtualClockLoop (from a synchronous test)."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


if TYPE_CHECKING:  # mypy proves that each fake satisfies the Protocol it stands in for
    _engine: Engine = FakeEngine()
    _events: EventSink = RecordingSink()
    _results: ResultSink = RecordingSink()
    _inventory: InventorySink = RecordingSink()
    _store: BackupStore = MemoryStore("nats", Path())
    _peers: Peers = NoPeers()
    _outcomes: OutcomeStore = MemoryOutcomes()
    _verifier: Verifier = TrustAll()
    _metrics: Metrics = RecordingMetrics()
    _notifier: Notifier = RecordingNotifier()

"""Every seam of the agent as a Protocol: the real adapter and the test fake both satisfy these.

    Engine          the Docker Engine (agent/docker.py; tests/fakes.py FakeEngine)
    EventSink       where events go (agent/bus.py Bus; tests RecordingSink)
    ResultSink      where outcomes go (agent/bus.py Bus)
    InventorySink   where snapshots go (agent/bus.py Bus)
    OutcomeStore    recorded outcomes by command id (agent/outcomes.py KvOutcomes; tests MemoryOutcomes)
    BackupStore     a place for backups and their catalog, one of:
      FileStore     backups as files (agent/backup/local_store.py, nats_store.py; tests MemoryStore)
      SnapshotStore backups as a tool's snapshots, read from the volume itself (agent/backup/restic_store.py)
    EventHandler    a consumer of Docker's events (agent/events/*)
    Peers           requests to other hosts' agents (agent/backup/migrate.py BusPeers)
    Verifier        who sent a command, and may they (agent/auth/verify.py Verifier; tests TrustAll)
    Metrics         what the agent counts and times (agent/metrics.py Metrics; tests RecordingMetrics)
    Notifier        what it tells people (agent/notify.py Notifier; tests RecordingNotifier)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import msgspec

from contracts import BackupRecord, Compression, LastVerify, Protection, RejectedPolicy, Reply

if TYPE_CHECKING:
    from .auth.verify import Caller
    from .backup.progress import Progress
    from .backup.stores import NewBackup, Stored, StoreWriter, TarSource
    from .backup.volume_files import ContainerDir, HostDir
    from .dispatch import Outcome
    from .outcomes import StoredOutcome

__all__ = [
    "BackupStore",
    "Engine",
    "EventHandler",
    "EventSink",
    "FileStore",
    "InventorySink",
    "LocalRunner",
    "Metrics",
    "Notifier",
    "OutcomeStore",
    "Peers",
    "PolicyCoverage",
    "ResultSink",
    "SnapshotStore",
    "Verifier",
]


class Engine(Protocol):
    """What the agent needs of a Docker Engine; raw Engine API dicts in and out."""

    async def ping(self) -> None: ...
    async def version(self) -> dict[str, Any]: ...
    async def info(self) -> dict[str, Any]: ...
    async def system_df(self) -> dict[str, Any]: ...
    def events(self, since: str | None, filters: Mapping[str, list[str]]) -> AsyncIterator[dict[str, Any]]: ...
    async def volume_inspect(self, name: str) -> dict[str, Any]: ...
    async def volume_create(self, spec: Mapping[str, Any]) -> dict[str, Any]: ...
    async def volume_list(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]: ...
    async def volume_remove(self, name: str, *, force: bool) -> None: ...
    async def containers(self, filters: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]: ...
    async def container_inspect(self, name: str) -> dict[str, Any]: ...
    async def container_create(self, name: str, config: Mapping[str, Any]) -> str: ...
    async def container_start(self, cid: str) -> None: ...
    async def container_remove(self, cid: str) -> None: ...
    async def image_inspect(self, name: str) -> dict[str, Any]: ...
    async def image_import(self, repo: str, tag: str, rootfs_tar: bytes, change: str) -> None: ...
    async def container_stop(self, cid: str) -> None: ...
    async def container_exec(self, cid: str, cmd: list[str]) -> tuple[int, str]: ...
    def archive_get(self, cid: str, path: str) -> AsyncIterator[bytes]: ...
    async def archive_put(self, cid: str, path: str, chunks: AsyncIterator[bytes]) -> None: ...


class EventSink(Protocol):
    """Where the agent says what happened (`volume.created`, ...)."""

    async def event(
        self, kind: str, volume: str, *, backup_id: str | None = None, bytes_done: int | None = None,
        error: str | None = None, container: str | None = None, bytes_total: int | None = None,
        percent: float | None = None, eta_s: float | None = None,
    ) -> None: ...


class ResultSink(Protocol):
    """Where every outcome is published (`<prefix>.res.<host>.<op>`)."""

    async def result(self, op: str, reply: bytes, *, durable: bool) -> None: ...


class InventorySink(Protocol):
    """The inventory bucket and its live subjects (`contracts.inventory_chunks` has the keys)."""

    async def inventory_put(self, values: Mapping[str, bytes]) -> None:
        """Publish each value on `<prefix>.inv.<key>` and put it in the bucket under `<key>`; returns once every
        put is acknowledged (in no given order)."""
        ...

    async def inventory_delete(self, keys: Iterable[str]) -> None: ...

    async def inventory_get(self, key: str) -> bytes | None:
        """The bucket's value of `key`; None when there is none."""
        ...


class OutcomeStore(Protocol):
    async def get(self, host: str, cmd_id: str) -> StoredOutcome | None: ...
    async def put(self, host: str, cmd_id: str, outcome: StoredOutcome) -> None: ...


class FileStore(Protocol):
    """A place for backups as files (the agent's own `tar | zstd | age` stream), with the catalog kept beside them
    (it survives restarts)."""

    name: str
    shared: bool
    """Backups other hosts wrote can be in it: each is checked member by member before a restore writes it."""

    async def begin(
        self, backup_id: str, volume: str, compression: Compression, *, encrypted: bool = False
    ) -> StoreWriter:
        """A writer for a new backup's bytes; `encrypted`: they are age ciphertext (named `.age`)."""
        ...
    async def commit(self, writer: StoreWriter, record: BackupRecord) -> None: ...
    async def abort(self, writer: StoreWriter) -> None: ...
    async def catalog(self, volume: str | None = None) -> list[BackupRecord]: ...
    async def get(self, backup_id: str) -> BackupRecord: ...
    def fetch(self, record: BackupRecord) -> AbstractAsyncContextManager[Path]:
        """The backup's stored bytes as a local file, for as long as the context lasts, checked against the
        record's size and sha256 (`corrupt` if they differ) before the caller writes anything."""
        ...
    async def forget(self, backup_id: str) -> None: ...
    async def cleanup(self) -> int: ...


@runtime_checkable
class SnapshotStore(Protocol):
    """A place for backups that a tool makes from the volume's files itself (restic: incremental, deduplicated),
    with the catalog of their records kept by the agent (listing never asks the tool)."""

    name: str
    shared: bool
    """Backups other hosts wrote can be in it: each is checked before a restore writes it."""

    async def snapshot(self, files: HostDir | ContainerDir, new: NewBackup, progress: Progress) -> Stored:
        """Back up the volume's files; what was stored (its record is not written yet: `record` does)."""
        ...
    async def record(self, record: BackupRecord) -> None:
        """Keep the record of a backup `snapshot` made: from then on it exists."""
        ...
    async def discard(self, stored: Stored) -> None:
        """Drop what `snapshot` stored, for a backup that failed afterwards (best effort: never raises)."""
        ...
    def open(self, record: BackupRecord) -> AbstractAsyncContextManager[TarSource]:
        """The backup's tar stream, as processes to start (once for the member check, once to extract)."""
        ...
    async def catalog(self, volume: str | None = None) -> list[BackupRecord]: ...
    async def get(self, backup_id: str) -> BackupRecord: ...
    async def forget(self, backup_id: str) -> None: ...
    async def cleanup(self) -> int: ...


BackupStore: TypeAlias = "FileStore | SnapshotStore"
"""A place for backups, of either kind."""


class EventHandler(Protocol):
    """Told of every new Docker event, and of every resync (start, and after Docker came back)."""

    async def on_docker_event(self, evt: dict[str, Any]) -> None: ...
    async def on_resync(self) -> None: ...


class Peers(Protocol):
    """Requests to other hosts' agents."""

    async def request(self, host: str, op: str, body: msgspec.Struct, timeout: float) -> Reply: ...  # noqa: ASYNC109


class Verifier(Protocol):
    """Checks a message's signature and the caller's rights against the local policy."""

    def caller(
        self, op: str, subject: str, headers: Mapping[str, str] | None, body: bytes, *, durable: bool
    ) -> Caller:
        """The verified caller, if it may run `op` here; else raises `errors.Forbidden`."""
        ...


class PolicyCoverage(Protocol):
    """How the backup policies cover this host's volumes (agent/policies), as the inventory reports it."""

    def protection_of(self, volume: str, now: datetime) -> tuple[list[str], Protection, str | None]: ...

    def rejected(self) -> list[RejectedPolicy]: ...

    def last_verify(self, volume: str) -> LastVerify | None:
        """The volume's last restore drill here."""
        ...


class Metrics(Protocol):
    """What the agent counts and times, for Prometheus. Never raises, never waits."""

    def request(self, op: str, code: str, seconds: float) -> None:
        """One command answered: `code` is "ok" or its error code (refusals included)."""
        ...
    def backup_started(self) -> None: ...
    def backup_finished(
        self, volume: str, trigger: str, policy: str | None, *, ok: bool, tar_bytes: int = 0, stored_bytes: int = 0,
        seconds: float = 0.0,
    ) -> None:
        """A backup of any trigger ended, made (`ok`) or failed; each `backup_started` has one."""
        ...
    def next_run(self, policy: str, volume: str, at: float | None) -> None:
        """When `policy` backs up `volume` next (unix time); None: it no longer does."""
        ...
    def coverage(self, volumes_per_policy: dict[str, int], uncovered: int) -> None:
        """How many volumes each policy covers and how many none does, replacing the previous figures."""
        ...
    def verify_finished(self, volume: str, *, ok: bool, seconds: float) -> None:
        """A restore drill of one of the volume's backups ended (`backup/drills.py`)."""
        ...


class Notifier(Protocol):
    """Tells people what needs them (apprise URLs). Never raises, never blocks: a message is queued and sent in
    order, each send bounded in time; one that cannot be sent is logged, without its URL."""

    async def backup_failed(self, volume: str, error: str, *, trigger: str, policy: str | None) -> None: ...
    async def overdue(self, volume: str, policy: str, reason: str) -> None: ...
    async def recovered(self, volume: str, policy: str) -> None: ...
    async def retention_held(self, volume: str, policy: str, reason: str) -> None: ...
    async def verify_failed(self, volume: str, backup_id: str, error: str, *, policy: str | None) -> None: ...
    async def verify_recovered(self, volume: str, backup_id: str, *, policy: str | None) -> None: ...


class LocalRunner(Protocol):
    """Applies an operation the agent starts itself (a scheduled backup) and publishes its outcome on the audit
    stream as any command's (`Dispatcher.local`)."""

    async def local(self, op: str, cmd_id: str, run: Callable[[], Awaitable[msgspec.Struct]], *, caller: str
                    ) -> Outcome: ...

"""The shared catalog: the record of every `nats` backup, and of every backup in a restic store (any host's whose
stores file defines that store can restore it), in the KV bucket `<prefix>_backup_catalog`.

A record is kept under `<host>.<base64url(backup_id)>` (`contracts.catalog_key`), the host that made the backup,
and its bytes in that host's own Object Store `<prefix>_backups_<host>`. NATS permissions let each host's
credentials write only its own keys and its own bucket (an Object Store's subjects cannot be scoped inside one
bucket, hence a bucket per host), so a record under `web-1.` was written by web-1's agent. A record is believed
only when its `host` is the host its key is under, and its `backup_id` the id its key encodes: anything else
was written by a host about another host's backups. It is never listed nor used; a restore whose id has no other
record is refused as `corrupt`.

Finding a backup by its id alone (`get`): one `STREAM.INFO` with the subjects filter `$KV.<bucket>.*.<base64url(id)>`
lists the hosts that ever recorded that id (deleted keys keep their subject), then each of those keys is read.
Two round trips, whatever the catalog's size, and a record under another host than its maker is noticed: ids
are unique by construction (volume, time to the microsecond, random), so the same id live under two hosts means
one host recorded another's id, and the backup is refused (`conflict`) until one of them is forgotten.
"""

from __future__ import annotations

import msgspec
import nats.js.errors
import structlog

from contracts import BackupRecord, catalog_key, catalog_key_parts
from contracts.bounds import BoundedDecoder
from volumectl.kv import IncompleteRead, read_bucket

from ..bus import Bus, nats_errors
from ..errors import Conflict, Corrupt, Invalid, NotFound, Timeout, Unavailable

__all__ = ["Catalog"]

log = structlog.get_logger(__name__)

_DECODE = BoundedDecoder(BackupRecord, what="The record")


class Catalog:
    """The shared catalog, as one agent sees it: every host's records, and writes under its own key only."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._skipped: set[str] = set()

    @property
    def _bucket(self) -> str:
        return self.bus.subjects.catalog_bucket

    async def put(self, record: BackupRecord) -> None:
        """Record one of this host's backups."""
        await self.bus.catalog_kv().put(catalog_key(self.bus.host, record.backup_id), msgspec.json.encode(record))

    async def delete(self, record: BackupRecord) -> None:
        """Drop the record of one of this host's backups; another host's is refused, with where to go."""
        if record.host != self.bus.host:
            raise Invalid(f"Backup {record.backup_id!r} in the nats store was made by host {record.host}; only "
                          f"that host's agent may forget it (volumectl --host {record.host} forget ...).")
        async with nats_errors(f"deleting backup {record.backup_id} from the shared catalog"):
            await self.bus.catalog_kv().delete(catalog_key(self.bus.host, record.backup_id))

    async def records(self, volume: str | None = None, *, store: str | None = None) -> list[BackupRecord]:
        """Every believable record (see the module's docstring), of `volume` or of all volumes, in `store` or in
        any."""
        try:
            async with nats_errors("reading the shared backup catalog"):
                values = await read_bucket(self.bus.js, self._bucket)
        except Timeout as exc:
            if isinstance(exc.__cause__, IncompleteRead):  # say which keys are missing, not just "no answer"
                raise Timeout(str(exc.__cause__)) from exc
            raise
        records = []
        for key, value in values.items():
            if not value:
                continue
            try:
                r = _checked(key, value)
            except Corrupt as exc:
                if key not in self._skipped:  # once per key, not at every read
                    self._skipped.add(key)
                    log.warning("objstore.record_skipped", key=key, why=exc.message)
                continue
            if volume in (None, r.volume) and store in (None, r.store):
                records.append(r)
        return records

    async def get(self, backup_id: str) -> BackupRecord:
        """The record of `backup_id`, whichever host made it."""
        missing = NotFound(f"Backup {backup_id!r} does not exist in the nats store.")
        prefix = f"$KV.{self._bucket}."
        async with nats_errors("reading the shared backup catalog"):
            # Every host's key of this id: `<prefix>*.<base64url(id)>`.
            info = await self.bus.js.stream_info(f"KV_{self._bucket}",
                                                 subjects_filter=prefix + catalog_key("*", backup_id))
            found: list[BackupRecord] = []
            refused: list[Corrupt] = []
            for subject in sorted(info.state.subjects or {}):
                key = subject[len(prefix):]
                try:
                    entry = await self.bus.catalog_kv().get(key)
                except nats.js.errors.KeyNotFoundError:  # forgotten: the subject keeps its delete marker
                    continue
                if not entry.value:
                    continue
                try:
                    found.append(_checked(key, entry.value))
                except Corrupt as exc:  # written by a host about another's backup: never used
                    log.warning("objstore.record_refused", key=key, why=exc.message)
                    refused.append(exc)
        if len(found) > 1:
            hosts = ", ".join(r.host for r in found)
            raise Conflict(f"Backup {backup_id!r} is recorded in the nats store by several hosts ({hosts}); ids are "
                           "unique, so one of them recorded another's id. Forget it on the host that did not make it.")
        if found:
            return found[0]
        if refused:
            raise refused[0]
        await self._confirm_missing(prefix + catalog_key("*", backup_id), backup_id)
        raise missing

    async def _confirm_missing(self, subjects: str, backup_id: str) -> None:
        """A listing that found no key is checked against the stream leader's own answer for the same subjects:
        a replica catching up (a node back from a crash) can answer the listing without the newest keys. If the
        leader has a record, the answer is `unavailable`, to be retried, never a wrong `not_found`."""
        async with nats_errors("reading the shared backup catalog"):
            try:
                msg = await self.bus.js.get_last_msg(f"KV_{self._bucket}", subjects)
            except nats.js.errors.NotFoundError:
                return  # no message under any host's key of this id: it is not there
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return
        log.warning("objstore.catalog_lagging", backup_id=backup_id)
        raise Unavailable(f"The shared catalog's listing of backup {backup_id!r} lags behind its records (a NATS "
                          "node catching up); try again.")


def _checked(key: str, value: bytes) -> BackupRecord:
    """The record under `key`, if it is one its key's host may have written; `Corrupt` otherwise."""
    try:
        record = _DECODE.decode(value)
    except msgspec.DecodeError as exc:
        raise Corrupt(f"The shared catalog's record under {key!r} cannot be read: {exc}.") from exc
    parts = catalog_key_parts(key)
    if parts is None or parts != (record.host, record.backup_id):
        raise Corrupt(f"The shared catalog's record under {key!r} is of backup {record.backup_id!r} made on host "
                      f"{record.host}: only that host may record it, under its own key; it is not used.")
    return record

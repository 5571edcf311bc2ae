"""The shared catalog's `get` never answers a wrong `not_found`: a listing without the key (a replica catching up
after a crash) is checked against the stream leader's answer, and then it is `unavailable`, to be retried."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import nats.js.errors
import pytest

from agent.backup.nats_catalog import Catalog
from agent.errors import NotFound, Unavailable
from contracts import BackupRecord, Subjects, catalog_key

RECORD = BackupRecord(backup_id="v1.20261129T000000000000Z.abcdef", volume="v1", host="h2", trigger="request",
                      size=1, stored_size=1, sha256="0" * 64, compression="none", store="nats",
                      location="nats://vol_backups_h2/v1.20261129T000000000000Z.abcdef", created_at="2026-11-29",
                      duration_s=0.1, stopped_containers=[])


class Js:
    """A JetStream whose listing is stale (no subjects) while the leader holds `last` (or nothing)."""

    def __init__(self, last: Any) -> None:
        self.last = last

    async def stream_info(self, name: str, subjects_filter: str | None = None) -> Any:
        return SimpleNamespace(state=SimpleNamespace(subjects={}))

    async def get_last_msg(self, stream: str, subject: str) -> Any:
        if self.last is None:
            raise nats.js.errors.NotFoundError
        return self.last


def catalog(last: Any) -> Catalog:
    bus = SimpleNamespace(js=Js(last), subjects=Subjects("vol"), host="h1")
    return Catalog(bus)  # type: ignore[arg-type]


async def test_a_listing_that_lags_behind_the_leader_is_unavailable_not_not_found() -> None:
    key = catalog_key("h2", RECORD.backup_id)
    msg = SimpleNamespace(subject=f"$KV.vol_backup_catalog.{key}", data=msgspec.json.encode(RECORD), headers=None)
    with pytest.raises(Unavailable, match="lags behind"):
        await catalog(msg).get(RECORD.backup_id)


async def test_a_backup_nobody_recorded_is_not_found() -> None:
    with pytest.raises(NotFound):
        await catalog(None).get(RECORD.backup_id)


async def test_a_forgotten_backup_is_not_found() -> None:
    deleted = SimpleNamespace(subject="x", data=b"", headers={"KV-Operation": "DEL"})
    with pytest.raises(NotFound):
        await catalog(deleted).get(RECORD.backup_id)

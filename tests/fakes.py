"""Small fakes behind the agent's Protocol seams, for unit tests of logic."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.backup.local_store import LocalStore
from agent.backup.stores import Stores
from agent.daemon import Domain
from agent.errors import InUse, NotFound
from agent.events.inventory import Inventory


class FakeEngine:
    """An in-memory `Engine`: volumes and containers as dicts; `gate` can hold volume_create."""

    def __init__(self) -> None:
        self.volumes: dict[str, dict[str, Any]] = {}
        self.containers_: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.calls: list[str] = []
        self.fail_with: Exception | None = None

    async def ping(self) -> None: ...

    async def version(self) -> dict[str, Any]:
        return {"Version": "fake", "ApiVersion": "1.41"}

    async def info(self) -> dict[str, Any]:
        return {"Driver": "overlay2", "Plugins": {"Volume": ["local"]}}

    async def volume_inspect(self, name: str) -> dict[str, Any]:
        self.calls.append(f"inspect:{name}")
        if name not in self.volumes:
            raise NotFound(f"Volume {name!r} does not exist on this host.")
        return self.volumes[name]

    async def volume_create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create:{spec['Name']}")
        if self.fail_with is not None:
            raise self.fail_with
        if self.gate is not None:
            await self.gate.wait()
        v = {"Name": spec["Name"], "Driver": spec.get("Driver", "local"), "Labels": spec.get("Labels") or {},
             "Options": spec.get("DriverOpts") or {}, "Mountpoint": f"/v/{spec['Name']}", "Scope": "local",
             "CreatedAt": "2026-01-01T00:00:00Z"}
        self.volumes.setdefault(spec["Name"], v)
        return self.volumes[spec["Name"]]

    async def volume_list(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        return list(self.volumes.values())

    async def volume_remove(self, name: str, *, force: bool) -> None:
        self.calls.append(f"remove:{name}")
        if name not in self.volumes:
            raise NotFound(f"Volume {name!r} does not exist on this host.")
        if any(m.get("Name") == name for c in self.containers_ for m in c["Mounts"]):
            raise InUse("volume is in use")
        del self.volumes[name]

    async def containers(self, filters: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
        return self.containers_

    async def container_inspect(self, name: str) -> dict[str, Any]:
        raise NotFound(name)

    async def container_create(self, name: str, config: Mapping[str, Any]) -> str:
        return "0" * 64

    async def container_start(self, cid: str) -> None: ...

    async def container_remove(self, cid: str) -> None: ...

    async def image_inspect(self, name: str) -> dict[str, Any]:
        return {}


class RecordingSink:
    """ResultSink and EventSink that remember what they were given."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bytes, bool]] = []
        self.events: list[tuple[str, str]] = []
        self.snapshots: list[bytes] = []

    async def result(self, op: str, reply: bytes, *, durable: bool) -> None:
        self.results.append((op, reply, durable))

    async def inventory(self, snapshot: bytes) -> None:
        self.snapshots.append(snapshot)

    async def event(self, kind: str, volume: str, **fields: Any) -> None:
        self.events.append((kind, volume))


def fake_domain(engine: FakeEngine, sink: Any, store_root: Path | None = None) -> Domain:
    """The agent's operations over a fake engine (backups in a throwaway local store)."""
    stores = Stores(LocalStore(store_root or Path(tempfile.mkdtemp(prefix="va-store-"))))
    inventory = Inventory(engine, stores, sink, "h1", heartbeat_s=60, sizes_every_s=0)  # type: ignore[arg-type]
    return Domain.wire(engine, sink, stores, inventory, sink, host="h1", data_path="auto")  # type: ignore[arg-type]


def fake_handlers(engine: FakeEngine, sink: Any, store_root: Path | None = None) -> dict[str, Any]:
    """The agent's handler table over a fake engine."""
    return dict(fake_domain(engine, sink, store_root).handlers())

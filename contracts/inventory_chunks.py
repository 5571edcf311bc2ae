"""How a host's inventory is kept in the KV bucket `<prefix>_inventory` (contract 2.2), and `assemble`, which
every reader uses to turn the bucket's values back into one `InventorySnapshot` per host.

    <host>.head        InventoryHead: the host's own fields, and a ChunkRef per chunk (written last)
    <host>.chunk.<i>   InventoryChunk i of the head's `chunks`: the volumes whose name hashes to i
    <host>             for readers before 2.2: the whole InventorySnapshot while the host has one chunk, else an
                       InventoryInChunks, which such a reader refuses to decode (so it fails, naming why, rather
                       than show part of the host)

Each value is also published on `<prefix>.inv.<key>` as it is written: `vol.inv.web-1.head`, ... A volume's
chunk is `chunk_of(name, chunks)`, a stable hash, so a change of one volume rewrites its chunk and the head, and
nothing else. The number of chunks is a power of two that grows with the host; when it changes every chunk is
written again. Chunks are written before the head; a reader that finds a chunk missing, older than its head says,
or of another layout has read the bucket while the agent wrote it (`IncompleteInventory`): it reads again.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Mapping
from typing import TypeVar

import msgspec

from .bounds import BoundedDecoder
from .inventory import EngineInfo, InventorySnapshot, InventoryVolume
from .policies import RejectedPolicy

__all__ = [
    "ChunkRef",
    "IncompleteInventory",
    "InventoryChunk",
    "InventoryHead",
    "InventoryInChunks",
    "assemble",
    "chunk_key",
    "chunk_of",
    "head_key",
]


def head_key(host: str) -> str:
    return f"{host}.head"


def chunk_key(host: str, index: int) -> str:
    return f"{host}.chunk.{index}"


def chunk_of(volume: str, chunks: int) -> int:
    """The chunk that holds `volume` when a host's inventory has `chunks` chunks: stable across runs and hosts."""
    return zlib.crc32(volume.encode()) % chunks


class ChunkRef(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    seq: int
    """The `seq` of the head with which this chunk was last written: its value carries the same (or, while the agent
    writes, a newer one)."""
    volumes: int


class InventoryHead(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A host's inventory without its volumes, which are in `chunks`: the fields of `InventorySnapshot`."""

    host: str
    agent_version: str
    engine: EngineInfo
    plugins: list[str]
    taken_at: str
    seq: int
    heartbeat_s: float
    chunks: list[ChunkRef]
    volume_count: int
    sizes_at: str | None = None
    insecure: list[str] = []
    rejected_policies: list[RejectedPolicy] = []


class InventoryChunk(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    seq: int
    index: int
    chunks: int
    """How many chunks the layout it belongs to has."""
    volumes: list[InventoryVolume]
    """Sorted by name."""


class InventoryInChunks(msgspec.Struct, forbid_unknown_fields=True):
    """What `<host>` holds once the host's inventory has more than one chunk. Its first field is not one of an
    InventorySnapshot: a reader before contract 2.2 fails on it, naming the field."""

    inventory_in_chunks: str
    """A sentence: where the inventory is, and what reads it."""
    host: str
    head: str
    """The key of the head."""


class IncompleteInventory(ValueError):
    """The bucket's values do not make a whole inventory of these hosts: read it again (it was being written)."""

    def __init__(self, hosts: list[str]) -> None:
        super().__init__(f"The inventory of {', '.join(hosts)} was being written while it was read.")
        self.hosts = hosts


T = TypeVar("T")

_HEAD = BoundedDecoder(InventoryHead, what="The value")
_CHUNK = BoundedDecoder(InventoryChunk, what="The value")
_SNAPSHOT = BoundedDecoder(InventorySnapshot, what="The value")
_LEGACY_FIELD = b'"inventory_in_chunks"'


def assemble(values: Mapping[str, bytes], unreadable: list[str] | None = None) -> list[InventorySnapshot]:
    """Every host's snapshot from the bucket's keys and values (`volumectl.kv.read_bucket`), sorted by host.

    A host with a head is read from its chunks; a host with only `<host>` from there (an agent before 2.2).
    Keys of other shapes are left alone. Raises `IncompleteInventory` when a head's chunks are not all there as it
    says. A value that does not decode (bounded: `contracts.bounds`) raises `ValueError` naming the key; with
    `unreadable`, that host is left out and the sentence appended there instead, so one host's bad value does not
    hide the fleet.
    """
    by_host: dict[str, dict[str, bytes]] = defaultdict(dict)
    for key, value in values.items():
        host, _, rest = key.partition(".")
        by_host[host][rest] = value
    out, torn = [], []
    for host, keys in sorted(by_host.items()):
        try:
            if "head" in keys:
                snapshot = _from_chunks(host, keys)
                if snapshot is None:
                    torn.append(host)
                else:
                    out.append(snapshot)
            elif "" in keys:
                if _LEGACY_FIELD in keys[""][:64]:
                    torn.append(host)  # chunked, but its head is not there: gone meanwhile
                else:
                    out.append(_decode(_SNAPSHOT, host, keys[""]))
        except ValueError as exc:
            if unreadable is None:
                raise
            unreadable.append(f"Host {host}'s inventory is left out: {exc}")
    if torn:
        raise IncompleteInventory(torn)
    return out


def _from_chunks(host: str, keys: Mapping[str, bytes]) -> InventorySnapshot | None:
    head = _decode(_HEAD, f"{host}.head", keys["head"])
    volumes: list[InventoryVolume] = []
    for ref in head.chunks:
        raw = keys.get(f"chunk.{ref.index}")
        if raw is None:
            return None
        chunk = _decode(_CHUNK, chunk_key(host, ref.index), raw)
        if chunk.chunks != len(head.chunks) or chunk.seq < ref.seq or chunk.index != ref.index or chunk.host != host:
            return None
        volumes += chunk.volumes
    volumes.sort(key=lambda v: v.name)
    return InventorySnapshot(
        host=head.host, agent_version=head.agent_version, engine=head.engine, volumes=volumes, plugins=head.plugins,
        taken_at=head.taken_at, seq=head.seq, heartbeat_s=head.heartbeat_s, sizes_at=head.sizes_at,
        insecure=head.insecure, rejected_policies=head.rejected_policies,
    )


def _decode(decoder: BoundedDecoder[T], key: str, raw: bytes) -> T:
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"The inventory value {key!r} is not valid: {exc}.") from None

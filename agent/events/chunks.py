"""The inventory's chunks as last written, and what to write next: only the chunks whose volumes changed.

Pure bookkeeping over `contracts.inventory_chunks` (no I/O): `Chunks.plan` groups the host's volume entries by
`chunk_of`, compares each chunk with what was written last, and encodes the ones that differ; `commit` records
a plan once the bus has acknowledged it. A plan that was not committed (NATS failed) is made again next time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from contracts import (
    ChunkRef,
    InventoryChunk,
    InventoryHead,
    InventoryInChunks,
    InventorySnapshot,
    InventoryVolume,
    chunk_key,
    chunk_of,
    head_key,
)

from ..errors import AgentError

__all__ = ["DEFAULT_PER_CHUNK", "MAX_CHUNK_BYTES", "Chunks", "Plan", "layout"]

DEFAULT_PER_CHUNK = 512
"""Volumes a chunk holds on average at most: about 150 KiB at the 300 B a plain volume takes, 330 KiB at 650."""
MAX_CHUNK_BYTES = 512 * 1024
"""A chunk larger than this (volumes with large labels) doubles the layout: every chunk fits NATS' 1 MiB default."""
MAX_CHUNKS = 1 << 14


def layout(count: int, current: int, per_chunk: int) -> int:
    """How many chunks `count` volumes take: a power of two, grown past `per_chunk` volumes a chunk on average,
    shrunk only below a quarter of that (a host around a boundary does not flip between two layouts)."""
    n = max(1, current)
    while count > n * per_chunk and n < MAX_CHUNKS:
        n *= 2
    while n > 1 and count < n * per_chunk // 4:
        n //= 2
    return n


@dataclass
class Plan:
    """What one publish writes: `chunks` first, then `last` (head and legacy value); then `stale` are removed."""

    seq: int
    n: int
    groups: list[list[InventoryVolume]]
    refs: list[ChunkRef]
    chunks: dict[str, bytes]
    last: dict[str, bytes] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)


class Chunks:
    """One host's chunks as last written to the bucket."""

    def __init__(self, host: str, *, per_chunk: int = DEFAULT_PER_CHUNK, max_bytes: int = MAX_CHUNK_BYTES) -> None:
        self.host = host
        self.per_chunk = per_chunk
        self.max_bytes = max_bytes
        self.n = 1
        self._written: list[list[InventoryVolume]] | None = None
        self._refs: list[ChunkRef] = []
        self._legacy: bytes | None = None
        self.old_n = 0
        """How many chunks the bucket may still hold from before (an earlier run's head): removed once replaced."""
        self._encoder = msgspec.json.Encoder()

    def groups(self, entries: list[InventoryVolume], n: int) -> list[list[InventoryVolume]]:
        """`entries` (sorted by name) by chunk, each sorted by name."""
        groups: list[list[InventoryVolume]] = [[] for _ in range(n)]
        for v in entries:
            groups[chunk_of(v.name, n)].append(v)
        return groups

    def plan(self, entries: list[InventoryVolume], seq: int) -> Plan:
        """The chunks to write for `entries` (sorted by name) as snapshot `seq`: those that differ from the last
        written, every one of them when the layout changes."""
        n = layout(len(entries), self.n, self.per_chunk)
        while True:
            groups = self.groups(entries, n)
            same_layout = self._written is not None and len(self._written) == n
            refs, chunks = [], {}
            for i, vols in enumerate(groups):
                if same_layout and self._written is not None and self._written[i] == vols:
                    refs.append(self._refs[i])
                    continue
                data = self._encoder.encode(InventoryChunk(host=self.host, seq=seq, index=i, chunks=n, volumes=vols))
                if len(data) > self.max_bytes and len(vols) > 1 and n < MAX_CHUNKS:
                    break
                if len(data) > self.max_bytes:
                    raise AgentError(f"Inventory chunk {i} of {n} holds {len(vols)} volume(s) in {len(data)} bytes, "
                                     f"over {self.max_bytes}: a volume's labels or options are too large to publish.")
                refs.append(ChunkRef(index=i, seq=seq, volumes=len(vols)))
                chunks[chunk_key(self.host, i)] = data
            else:
                stale = [chunk_key(self.host, i) for i in range(n, max(self.old_n, len(self._refs)))]
                return Plan(seq=seq, n=n, groups=groups, refs=refs, chunks=chunks, stale=stale)
            n *= 2  # a chunk too large: a finer layout, all chunks written again

    def finish(self, plan: Plan, head: InventoryHead, whole: InventorySnapshot | None) -> None:
        """Put the head, and the value of `<host>` for readers before contract 2.2, in `plan.last`: the whole
        snapshot while there is one chunk (`whole`), else once the pointer that such readers refuse."""
        plan.last[head_key(self.host)] = self._encoder.encode(head)
        if plan.n == 1 and whole is not None:
            plan.last[self.host] = self._encoder.encode(whole)
            return
        pointer = self._encoder.encode(InventoryInChunks(
            inventory_in_chunks=f"The inventory of {self.host} is in {plan.n} chunks (contract 2.2): read "
                                f"{head_key(self.host)} and its chunks, as volumectl 2.2 and later do.",
            host=self.host, head=head_key(self.host)))
        if pointer != self._legacy:
            plan.last[self.host] = pointer

    def commit(self, plan: Plan) -> None:
        """`plan` was written: it is what the bucket holds now."""
        self.n, self._written, self._refs = plan.n, plan.groups, plan.refs
        if self.host in plan.last:
            self._legacy = plan.last[self.host]
        if plan.stale:
            self.old_n = 0

    def forget_written(self) -> None:
        """Write every chunk again next time (the bucket may have lost them)."""
        self._written = None

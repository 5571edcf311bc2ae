"""A small asyncio client of the bus API, used by `volumectl`, the tests and the benchmarks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from contracts import IncompleteInventory, InventorySnapshot, Reply, Subjects, assemble
from contracts.bounds import BoundedDecoder

from .kv import READ_TIMEOUT_S, read_bucket
from .redact import redact
from .signing import Signer

__all__ = ["AgentClient", "NoAgent"]

_DECODE = BoundedDecoder(Reply, what="The reply")
COMMAND_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0)
READ_ATTEMPTS = 3
"""Reads of the inventory before giving up on a host whose chunks were rewritten during each."""


class NoAgent(Exception):
    """No agent answered for a host."""

    def __init__(self, host: str, url: str, why: str) -> None:
        super().__init__(f"No volume-agent answered for host {host!r} on {url} ({why}).")
        self.host = host


async def _quiet(exc: Exception) -> None:
    """nats-py prints tracebacks by default; the caller reports the failure in one sentence."""


def _body(body: msgspec.Struct | dict[str, Any] | bytes | None) -> bytes:
    if body is None:
        return b"{}"
    if isinstance(body, bytes):
        return body
    return msgspec.json.encode(body)


class AgentClient:
    """Requests, durable commands and fleet reads over one NATS connection, signed by `signer` if given
    (agents refuse what is not signed by a key in their policy: `contracts.auth`)."""

    def __init__(self, nc: Client, prefix: str = "vol", *, signer: Signer | None = None) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.signer = signer

    @classmethod
    async def connect(
        cls, urls: list[str], prefix: str = "vol", *, signer: Signer | None = None, inbox_prefix: str | None = None,
        **kw: Any,
    ) -> AgentClient:
        """`inbox_prefix`: where replies come (`_INBOX_<name>`: NATS may allow each identity only its own inbox)."""
        if inbox_prefix:
            kw["inbox_prefix"] = inbox_prefix
        nc = await nats.connect(
            servers=urls, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=1, error_cb=_quiet, **kw
        )
        return cls(nc, prefix, signer=signer)

    def _signed(self, subject: str, data: bytes, msg_id: str | None = None) -> dict[str, str] | None:
        return self.signer.headers(subject, data, msg_id) if self.signer is not None else None

    async def close(self) -> None:
        await self.nc.close()

    @property
    def url(self) -> str:
        u = self.nc.connected_url
        return redact(u.geturl()) if u else "NATS"

    async def request(
        self, host: str, op: str, body: msgspec.Struct | dict[str, Any] | bytes | None = None, timeout: float = 30.0  # noqa: ASYNC109
    ) -> Reply:
        """One request/reply; raises NoAgent when nobody answers."""
        subject, data = self.subjects.req(host, op), _body(body)
        try:
            msg = await self.nc.request(subject, data, timeout=timeout, headers=self._signed(subject, data))
        except nats.errors.NoRespondersError as exc:
            raise NoAgent(host, self.url, "no responders") from exc
        except nats.errors.TimeoutError as exc:
            raise NoAgent(host, self.url, f"no reply within {timeout:g} s") from exc
        return _DECODE.decode(msg.data)

    async def command(
        self, host: str, op: str, body: msgspec.Struct | dict[str, Any] | bytes | None = None,
        cmd_id: str | None = None,
    ) -> str:
        """Publish a durable command through JetStream; returns its id (the `Nats-Msg-Id`)."""
        cmd_id = cmd_id or uuid.uuid4().hex
        data = _body(body)
        if cmd_id and not isinstance(body, bytes):
            as_dict = msgspec.json.decode(data)
            as_dict.setdefault("id", cmd_id)
            data = msgspec.json.encode(as_dict)
        js, subject = self.nc.jetstream(), self.subjects.cmd(host, op)
        headers = {"Nats-Msg-Id": cmd_id, **(self._signed(subject, data, cmd_id) or {})}
        for pause in COMMAND_RETRY_PAUSES_S:
            try:
                await js.publish(subject, data, headers=headers)
                return cmd_id
            except nats.js.errors.NoStreamResponseError:
                # The stream is electing a leader (a node went down): the same Nats-Msg-Id makes a retry safe.
                await asyncio.sleep(pause)
        await js.publish(subject, data, headers=headers)
        return cmd_id

    async def gather(
        self, op: str, body: msgspec.Struct | dict[str, Any] | None = None, window: float = 2.0
    ) -> list[Reply]:
        """Ask every agent (`<prefix>.all.<op>`) and collect the replies that arrive within `window`."""
        inbox = self.nc.new_inbox()
        replies: list[Reply] = []
        sub = await self.nc.subscribe(inbox)
        try:
            subject, data = self.subjects.all(op), _body(body)
            await self.nc.publish(subject, data, reply=inbox, headers=self._signed(subject, data))
            loop = asyncio.get_running_loop()
            end = loop.time() + window
            while (left := end - loop.time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except nats.errors.TimeoutError:
                    break
                replies.append(_DECODE.decode(msg.data))
        finally:
            await sub.unsubscribe()
        return sorted(replies, key=lambda r: r.host)

    async def inventories(self, timeout: float = READ_TIMEOUT_S,  # noqa: ASYNC109
                          unreadable: list[str] | None = None) -> list[InventorySnapshot]:
        """Every host's last inventory snapshot, from the KV bucket (hosts that are down included), each whole.

        All of them or an error: raises `IncompleteRead` when the bucket cannot be read completely in time, and
        `IncompleteInventory` when a host's chunks were being rewritten at every one of READ_ATTEMPTS reads. A host
        whose values do not decode is left out, with a sentence in `unreadable` (given), else `ValueError`.
        """
        for attempt in range(READ_ATTEMPTS):
            try:
                values = await read_bucket(self.nc.jetstream(), self.subjects.inventory_bucket, timeout=timeout)
            except nats.js.errors.BucketNotFoundError:
                return []
            problems: list[str] | None = [] if unreadable is not None else None
            try:
                snapshots = assemble(values, problems)
            except IncompleteInventory:
                if attempt == READ_ATTEMPTS - 1:
                    raise
                continue
            if unreadable is not None and problems:
                unreadable += problems
            return snapshots
        return []  # not reached

    async def inventory(self, host: str, timeout: float = 30.0) -> Reply:  # noqa: ASYNC109
        """`host`'s whole inventory through the `inventory` op, chunk by chunk when it has several (contract 2.2;
        an agent before it is asked for the whole). One reply: the chunks' volumes joined, or the first error."""
        return await self._whole(await self.request(host, "inventory", {"chunk": 0}, timeout=timeout), timeout)

    async def gather_inventories(self, window: float = 2.0, timeout: float = 30.0) -> list[Reply]:  # noqa: ASYNC109
        """Every agent's whole inventory: chunk 0 from all (`<prefix>.all.inventory`), then the other chunks of
        each host that has more, from that host."""
        firsts = await self.gather("inventory", {"chunk": 0}, window=window)
        return list(await asyncio.gather(*(self._whole(r, timeout) for r in firsts)))

    async def _whole(self, first: Reply, timeout: float) -> Reply:  # noqa: ASYNC109
        host = first.host
        for _ in range(READ_ATTEMPTS):
            if first.error is not None and first.error.code == "invalid" and "`chunk`" in first.error.message \
                    and "unknown field" in first.error.message:  # an agent before contract 2.2
                return await self.request(host, "inventory", {}, timeout=timeout)
            if first.error is not None or first.result is None or (first.result.get("chunks") or 1) == 1:
                return _joined(first, [])
            n = first.result["chunks"]
            rest = await asyncio.gather(*(self.request(host, "inventory", {"chunk": i}, timeout=timeout)
                                          for i in range(1, n)))
            failed = next((r for r in rest if r.error is not None or r.result is None), None)
            if failed is not None:
                return failed
            if all(r.result is not None and r.result.get("chunks") == n for r in rest):
                return _joined(first, rest)
            # The host grew or shrank past a layout boundary meanwhile: ask again from chunk 0.
            first = await self.request(host, "inventory", {"chunk": 0}, timeout=timeout)
        raise NoAgent(host, self.url, f"its inventory changed layout at each of {READ_ATTEMPTS} reads")


def _joined(first: Reply, rest: list[Reply]) -> Reply:
    """One reply holding the whole snapshot: the chunks' volumes in name order, without the paging fields."""
    if first.result is None:
        return first
    result = {k: v for k, v in first.result.items() if k not in ("chunk", "chunks")}
    volumes = list(result.get("volumes") or [])
    for r in rest:
        volumes += (r.result or {}).get("volumes") or []
    result["volumes"] = sorted(volumes, key=lambda v: v["name"])
    return msgspec.structs.replace(first, result=result)

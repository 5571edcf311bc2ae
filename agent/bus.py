"""The NATS side: connection, JetStream streams and buckets, and the publishers of outcomes and events.

nats-py's exceptions are translated into `agent.errors` here.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contracts import Subjects, VolumeEvent, inbox_prefix

from .auth.transport import is_tls
from .backoff import until_ok
from .compat import flush_pending
from .config import NatsAuth, Settings
from .denials import Denials
from .elections import through_elections
from .errors import AgentError, Timeout, Unavailable
from .streams import ensure_jetstream, ensure_object_store

__all__ = ["Bus", "nats_errors"]

log = structlog.get_logger(__name__)

# Bounded per attempt so a wrong URL is reported soon; the agent then retries with backoff forever.
CONNECT_TIMEOUT_S = 5
# A lower ping interval finds a half-open connection (nats.py #671) within a minute.
PING_INTERVAL_S = 15
# In-flight work has been drained before the connection is; what is left is flushing.
DRAIN_TIMEOUT_S = 5


@asynccontextmanager
async def nats_errors(what: str) -> AsyncIterator[None]:
    """Translate nats-py failures of `what` into agent errors."""
    try:
        yield
    except (TimeoutError, nats.errors.TimeoutError) as exc:
        raise Timeout(f"NATS did not answer in time while {what}.") from exc
    except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
        raise Unavailable(f"NATS failed while {what}: {type(exc).__name__} {exc}.".replace(" .", ".")) from exc


# What an SSL handshake meets when the server speaks plain NATS first (its INFO line).
_NOT_TLS_FIRST = "WRONG_VERSION_NUMBER"


def tls_context(auth: NatsAuth) -> ssl.SSLContext | None:
    if not (auth.tls_ca or auth.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=auth.tls_ca)
    if auth.tls_cert:
        ctx.load_cert_chain(auth.tls_cert, auth.tls_key)
    return ctx


class Bus:
    """One NATS connection for the agent's life, with the JetStream resources it needs."""

    def __init__(self, settings: Settings, urls: list[str]) -> None:
        self.settings = settings
        self.urls = urls
        self.subjects: Subjects = settings.subjects
        self.host = settings.host_id
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._outcomes_kv: KeyValue | None = None
        self._inventory_kv: KeyValue | None = None
        self._catalog_kv: KeyValue | None = None
        self._backups_obj: ObjectStore | None = None
        self._closing = False
        self.denials = Denials()
        self.backups_bucket = self.subjects.backups_bucket_of(self.host)
        """This host's own backup bucket: the one it writes to."""

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise Unavailable("The NATS connection is not open.")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable("JetStream is not set up.")
        return self._js

    async def start(self) -> None:
        """Connect and set up streams; retries with backoff until it works (boot order is not ours)."""
        if self._nc is not None:
            return

        async def connect() -> None:
            try:
                await self._connect()
                await self._ensure_jetstream()
            except BaseException:
                await self._close()
                raise

        # Every failure here is retried (a wrong URL, auth, JetStream off, ...); the reason goes to the log.
        await until_ok(connect, "nats.unreachable", catch=(Exception,), urls=self.urls)

    async def _connect(self) -> None:
        a = self.settings.auth
        kw: dict[str, Any] = {}
        if a.user:
            kw.update(user=a.user, password=a.password)
        if a.token:
            kw["token"] = a.token
        if a.nkey_seed:
            kw["nkeys_seed"] = a.nkey_seed
        if a.creds:
            kw["user_credentials"] = a.creds
        if any(is_tls(u, tls_options=bool(a.tls_ca or a.tls_cert)) for u in self.urls):
            # TLS from the first byte: otherwise nats-py goes on in the clear when the server's INFO does not ask
            # for TLS, and anyone on the path can send that INFO. The server needs `handshake_first` (deploy/).
            kw.update(tls=tls_context(a) or ssl.create_default_context(), tls_handshake_first=True)
        self._nc = await nats.connect(
            servers=self.urls,
            name=f"volume-agent {self.host}",
            # Replies come to `_INBOX_<host>.>`: NATS permissions give each identity its own inboxes only.
            inbox_prefix=inbox_prefix(self.host),
            connect_timeout=CONNECT_TIMEOUT_S,
            # Few tries per server here (0 would mean forever): start() retries with its own backoff.
            max_reconnect_attempts=1,
            reconnect_time_wait=1,
            ping_interval=PING_INTERVAL_S,
            allow_reconnect=True,
            drain_timeout=DRAIN_TIMEOUT_S,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **kw,
        )
        # Once connected, never give up: nats-py reads this option at each reconnect.
        self._nc.options["max_reconnect_attempts"] = -1
        self._js = self._nc.jetstream(timeout=10)
        log.info("nats.connected", url=str(self._nc.connected_url.geturl()) if self._nc.connected_url else None)

    async def _ensure_jetstream(self) -> None:
        try:
            self._outcomes_kv, self._inventory_kv, self._catalog_kv, _ = await ensure_jetstream(
                self.js, self.settings, self.denials)
        except nats.errors.NoRespondersError as exc:
            raise Unavailable("JetStream is not enabled on the NATS server; start it with -js.") from exc

    async def settle(self) -> None:
        """Return once the server has every command sent so far, subscriptions included.

        flush()'s PONG alone proves nothing about a SUB sent just before (see `compat.flush_pending`): a request
        right after "ready" could find no responders. Let the flusher write its queue first.
        """
        nc = self.nc
        async with nats_errors("flushing to the server"):
            await flush_pending(nc)
            await nc.flush()

    def catalog_kv(self) -> KeyValue:
        if self._catalog_kv is None:
            raise Unavailable("The shared backup catalog is not set up.")
        return self._catalog_kv

    async def backups_obj(self) -> ObjectStore:
        """This host's backup bucket, made on first use (a stream per object store costs the server little,
        but an agent that never uses it need not make it)."""
        if self._backups_obj is None:
            replicas = self.settings.backup_replicas or self.settings.replicas
            async with nats_errors("opening the shared backup store"):
                self._backups_obj = await ensure_object_store(self.js, self.backups_bucket, replicas)
        return self._backups_obj

    def backups_of(self, host: str) -> ObjectStore:
        """`host`'s backup bucket, to read from (no API call: a missing bucket reads as a missing object)."""
        if host == self.host and self._backups_obj is not None:
            return self._backups_obj
        bucket = self.subjects.backups_bucket_of(host)
        return ObjectStore(name=bucket, stream=f"OBJ_{bucket}", js=self.js)

    # InventorySink
    def _inventory(self) -> KeyValue:
        if self._inventory_kv is None:
            raise Unavailable("The inventory bucket is not set up.")
        return self._inventory_kv

    async def inventory_put(self, values: Mapping[str, bytes]) -> None:
        """Publish each value on `<prefix>.inv.<key>` and put it in the KV bucket under `<key>`, the puts in flight
        together (a full inventory of 20,000 volumes is some 64 chunks)."""
        kv = self._inventory()
        async with nats_errors("publishing the inventory"):
            for key, value in values.items():
                await self.nc.publish(self.subjects.inv(key), value)
            await asyncio.gather(*(kv.put(key, value) for key, value in values.items()))

    async def inventory_delete(self, keys: Iterable[str]) -> None:
        kv = self._inventory()
        async with nats_errors("removing old inventory chunks"):
            await asyncio.gather(*(kv.delete(key) for key in keys))

    async def inventory_get(self, key: str) -> bytes | None:
        kv = self._inventory()
        async with nats_errors("reading the inventory"):
            try:
                return (await kv.get(key)).value
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None

    async def stop(self) -> None:
        self._closing = True
        await self._close(drain=True)

    async def _close(self, *, drain: bool = False) -> None:
        nc, self._nc, self._js, self._outcomes_kv = self._nc, None, None, None
        self._inventory_kv = self._catalog_kv = None
        self._backups_obj = None
        if nc is None or nc.is_closed:
            return
        try:
            await (nc.drain() if drain else nc.close())
        except Exception as exc:  # closing must not fail the shutdown
            log.warning("nats.close_failed", error=repr(exc))

    @property
    def outcomes_kv(self) -> KeyValue:
        if self._outcomes_kv is None:
            raise Unavailable("The outcomes bucket is not set up.")
        return self._outcomes_kv

    # ResultSink
    async def result(self, op: str, reply: bytes, *, durable: bool) -> None:
        """Publish an outcome; a `durable` one through JetStream, waiting out a leader election, under a
        Nats-Msg-Id that names this outcome (the same reply again is the same message to the stream)."""
        subject, what = self.subjects.res(self.host, op), f"publishing the outcome of {op}"
        if len(reply) > self.nc.max_payload:  # never publishable: not worth a retry, nor a redelivery
            raise AgentError(f"The outcome of {op} is {len(reply)} bytes, over the server's max payload.")
        headers = {"Nats-Msg-Id": hashlib.sha256(reply).hexdigest()}
        async with nats_errors(what):
            if durable:
                await through_elections(what, lambda t: self.js.publish(subject, reply, timeout=t, headers=headers))
            else:
                await self.nc.publish(subject, reply)

    # EventSink
    async def event(
        self, kind: str, volume: str, *, backup_id: str | None = None, bytes_done: int | None = None,
        error: str | None = None, container: str | None = None, bytes_total: int | None = None,
        percent: float | None = None, eta_s: float | None = None,
    ) -> None:
        cmd_id = structlog.contextvars.get_contextvars().get("cmd_id")
        evt = VolumeEvent(host=self.host, kind=kind, volume=volume,  # type: ignore[arg-type]
                          at=datetime.now(UTC).isoformat(), cmd_id=cmd_id, backup_id=backup_id,
                          bytes_done=bytes_done, error=error, container=container, bytes_total=bytes_total,
                          percent=percent, eta_s=eta_s)
        async with nats_errors(f"publishing event {kind}"):
            await self.nc.publish(self.subjects.evt(self.host, kind), msgspec.json.encode(evt))

    async def _on_error(self, exc: Exception) -> None:
        if self.denials.report(str(exc)):
            # Our own NATS permissions refused something: name it (the caller, if it waits, is told too).
            log.warning("nats.permission_denied", error=str(exc))
            return
        hint = {}
        if isinstance(exc, ssl.SSLError) and _NOT_TLS_FIRST in str(exc):
            hint["fix"] = ("the server did not begin with TLS; the agent starts TLS first, so add `handshake_first: "
                           "300ms` to the server's tls block (see deploy/nats-server.conf)")
        log.warning("nats.error", urls=self.urls, error=f"{type(exc).__name__}: {exc}", **hint)

    async def _on_disconnected(self) -> None:
        if self._closing:
            log.info("nats.closed")
        else:
            log.warning("nats.disconnected")

    async def _on_reconnected(self) -> None:
        nc = self._nc
        log.info("nats.reconnected", url=nc.connected_url.geturl() if nc and nc.connected_url else None)

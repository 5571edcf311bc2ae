"""Fleet reads of a KV bucket are never short: `volumectl.kv.read_bucket` returns every key or raises.

The short read it replaces (a KeyWatcher loop that stops at the first `None`, nats.py issue 842) shows on a
three-node cluster when the reader's node is not the stream leader and another client writes meanwhile:
`follower_reads` sets that scene up and takes the reader as a parameter, so the old loop can be run in it.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from contracts import EngineInfo, InventorySnapshot
from volumectl.kv import IncompleteRead, read_bucket, read_history

from .identities import Identities
from .stack import NatsCluster, NatsServer, venv_bin

pytestmark = pytest.mark.integration

KEYS = 300
READS = 100
# Concurrent write loops of the other client.
WRITERS = 4
# Keys it adds and deletes again, over and over.
TMP_KEYS = 40
Reader = Callable[[JetStreamContext, str], Awaitable[dict[str, bytes]]]


async def until(attempt: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    """`attempt()` again while a new cluster elects its leaders (calls time out or find no responders)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await attempt()
        except (nats.errors.Error, TimeoutError):
            if loop.time() > end:
                raise AssertionError(f"{what}: the cluster did not answer within {timeout} s") from None
            await asyncio.sleep(0.5)


async def make_bucket(js: JetStreamContext, replicas: int = 1) -> tuple[str, KeyValue]:
    bucket = f"kvread_{uuid.uuid4().hex[:8]}"
    kv = await until(lambda: js.create_key_value(KeyValueConfig(bucket=bucket, history=1, replicas=replicas)),
                     f"creating bucket {bucket}")
    return bucket, kv


async def follower_reads(identities: Identities, urls: list[str], read: Reader, reads: int = READS,
                         keys: int = KEYS, writers: int = WRITERS) -> list[int]:
    """How many of the `keys` keys each of `reads` reads returned, the reader connected only to a node that
    is not the bucket's stream leader while another client overwrites keys and adds and deletes others."""
    writer = await identities.nats(urls)
    try:
        js = writer.jetstream(timeout=10)
        bucket, kv = await make_bucket(js, replicas=3)
        names = [f"host-{i:03d}" for i in range(keys)]
        for i in range(0, keys, 50):
            await asyncio.gather(*(kv.put(k, b"x" * 200) for k in names[i:i + 50]))
        leader = (await js.stream_info(f"KV_{bucket}")).cluster.leader  # type: ignore[union-attr]
        follower = next(u for i, u in enumerate(urls) if f"n{i}" != leader)
        reader = await identities.nats([follower], allow_reconnect=False, dont_randomize=True)
        assert reader.connected_url is not None and reader.connected_url.geturl() == follower
        stop = asyncio.Event()

        async def write(w: int) -> None:
            n = w
            while not stop.is_set():
                await kv.put(names[n % keys], b"y" * 200)
                await kv.put(f"tmp-{n % TMP_KEYS}", b"t")
                await kv.delete(f"tmp-{n % TMP_KEYS}")
                n += writers

        writing = asyncio.gather(*(write(w) for w in range(writers)))
        counts = []
        try:
            for _ in range(reads):
                got = await read(reader.jetstream(timeout=10), bucket)
                counts.append(sum(k in got for k in names))
        finally:
            stop.set()
            await writing
            await reader.close()
        return counts
    finally:
        await writer.close()


@pytest.fixture(scope="module")
def cluster(stack_dir: Path, identities: Identities) -> Iterator[NatsCluster]:
    yield from identities.running(NatsCluster(stack_dir / "kvcluster"))


async def test_reads_from_a_follower_while_another_client_writes_are_complete(
    cluster: NatsCluster, identities: Identities
) -> None:
    counts = await follower_reads(identities, cluster.urls, read_bucket)
    short = [n for n in counts if n != KEYS]
    assert not short, f"{len(short)} of {len(counts)} reads were short: {short}"


@pytest_asyncio.fixture(loop_scope="session")
async def js(nats_server: NatsServer, identities: Identities) -> AsyncIterator[JetStreamContext]:
    nc: Client = await identities.nats([nats_server.url])
    yield nc.jetstream()
    await nc.close()


async def test_an_empty_bucket_reads_as_empty(js: JetStreamContext) -> None:
    bucket, _ = await make_bucket(js)
    assert await read_bucket(js, bucket, timeout=5) == {}


async def test_deleted_and_purged_keys_are_left_out_and_keys_keep_their_dots(js: JetStreamContext) -> None:
    bucket, kv = await make_bucket(js)
    for key in ("a", "gone", "purged", "with.dots.and-=_"):
        await kv.put(key, key.encode())
    await kv.put("a", b"a2")
    await kv.delete("gone")
    await kv.purge("purged")  # the stream's last message is a marker: the read still ends
    assert await read_bucket(js, bucket, timeout=5) == {"a": b"a2", "with.dots.and-=_": b"with.dots.and-=_"}


async def test_a_history_read_has_every_revision_kept_and_the_markers_in_stream_order(js: JetStreamContext) -> None:
    bucket = f"kvread_{uuid.uuid4().hex[:8]}"
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=3))
    for i in range(5):
        await kv.put("p", f"v{i}".encode())  # v0 and v1 fall out of the history of 3
    await kv.put("q", b"q0")
    await kv.delete("q")
    await kv.put("r", b"r0")
    await kv.purge("r")  # the revisions of r go, its marker stays
    revs = await read_history(js, bucket, timeout=5)
    assert [(r.key, r.value) for r in revs] == [("p", b"v2"), ("p", b"v3"), ("p", b"v4"), ("q", b"q0"),
                                                 ("q", None), ("r", None)]
    assert [r.seq for r in revs] == sorted(r.seq for r in revs) and revs[-1].seq == 9
    assert await read_history(js, (await make_bucket(js))[0], timeout=5) == []


async def test_a_bucket_whose_every_key_was_deleted_reads_as_empty(js: JetStreamContext) -> None:
    bucket, kv = await make_bucket(js)
    await kv.put("k", b"v")
    await kv.delete("k")
    assert await read_bucket(js, bucket, timeout=5) == {}


async def test_a_missing_bucket_is_bucket_not_found(js: JetStreamContext) -> None:
    with pytest.raises(nats.js.errors.BucketNotFoundError):
        await read_bucket(js, "kvread_never_made", timeout=5)


async def test_a_read_that_cannot_get_every_listed_key_fails_instead_of_returning_part(
        js: JetStreamContext, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, kv = await make_bucket(js)
    await kv.put("kept", b"1")
    await kv.put("removed", b"2")
    add_consumer = js.add_consumer

    async def remove_one_then_add(stream: str, config: Any) -> Any:
        # Out of band, after the keys were listed and before the consumer reads them.
        await js.purge_stream(stream, subject=f"$KV.{bucket}.removed")
        return await add_consumer(stream, config=config)

    monkeypatch.setattr(js, "add_consumer", remove_one_then_add)
    with pytest.raises(IncompleteRead, match=rf"bucket '{bucket}': after 1.5 s, 1 of its 2 keys had not arrived"):
        await read_bucket(js, bucket, timeout=1.5)


def _snapshot(host: str) -> bytes:
    return msgspec.json.encode(InventorySnapshot(
        host=host, agent_version="test", engine=EngineInfo("20.10", "1.41", "overlay2"), volumes=[], plugins=[],
        taken_at="2026-01-01T00:00:00+00:00", seq=1, heartbeat_s=30.0))


def _fleet(env: dict[str, str], url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_bin("volumectl"), "--nats", url, "--prefix", prefix, *args, "fleet"],
                          capture_output=True, text=True, timeout=60, env=env)


async def test_volumectl_fleet_counts_every_host_or_exits_1_without_a_table(
        js: JetStreamContext, nats_server: NatsServer, identities: Identities) -> None:
    """(As the tests' admin: a bucket of another prefix is outside what an operator may read.)"""
    env = identities.env("admin")
    prefix = f"kvt{uuid.uuid4().hex[:6]}"
    kv = await js.create_key_value(KeyValueConfig(bucket=f"{prefix}_inventory", history=1))
    for host in ("h1", "h2", "h3"):
        await kv.put(host, _snapshot(host))
    out = await asyncio.to_thread(_fleet, env, nats_server.url, prefix)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("3 host(s) in the inventory")
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == ["h1", "h2", "h3"]
    out = await asyncio.to_thread(_fleet, env, nats_server.url, prefix, "--timeout", "0.000001")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"volumectl: Could not read all of the KV bucket '{prefix}_inventory'")
    assert "Traceback" not in out.stderr

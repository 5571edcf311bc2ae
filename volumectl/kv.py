"""Read a whole JetStream KV bucket, never a part of it: every fleet read goes through `read_bucket`.

nats-py 2.16's KeyWatcher (`kv.watchall()`, `kv.keys()`) yields its "initial values done" `None` when a
message reports `num_pending == 0`, or when the consumer reports nothing pending and nothing has been received
yet. Both can happen before the values arrive: on a cluster when the client's node is not the stream's leader,
and while other clients write (nats.py issue 842, PR 995). A loop that stops at that `None` returns a short
result without any error.

`read_bucket` does not rely on pending counts. It first asks the stream (its leader answers, under the store's
lock) for its last sequence and the list of its keys, then reads the last message of every key through an
ephemeral pull consumer until it has seen a message of every listed key and a message with at least that last
sequence. Reading up to the last sequence alone is not enough: in a bucket that keeps one revision per key,
a key overwritten during the read loses its old revision before the consumer gets to it, and the new one lies
beyond the last sequence. Its new revision still comes, in stream order, so waiting for every listed key ends.
Delete and purge markers count as seen and are left out of the result. Each message carries its consumer
sequence (1, 2, 3, ... without acks or redeliveries), so a message lost on the way (a slow-consumer drop) is
noticed, not skipped. If the read cannot finish within its timeout it raises `IncompleteRead`: a caller gets
all the keys or an error.

`read_history` reads the same way every revision the bucket keeps (a consumer delivering all messages, not the
last per subject): the whole stream up to its last sequence, delete and purge markers included as such.

Messages removed behind the reader's back (a purge of the stream, `purge_deletes`, TTL expiry) can leave a
listed key or the last sequence undeliverable: the read then fails with `IncompleteRead` rather than guess.
The agent's buckets (inventory, backup catalog) have none of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

__all__ = ["READ_TIMEOUT_S", "IncompleteRead", "Revision", "read_bucket", "read_history"]

READ_TIMEOUT_S = 30.0
# Messages per pull request: a few MiB of inventory snapshots, well under nats-py's 64 MiB pending limit.
FETCH_BATCH = 64
# One pull request waits this long for messages; the read as a whole is bounded by its timeout.
FETCH_WAIT_S = 2.0
# The server removes the consumer by itself this long after the last pull, should the delete below not arrive.
CONSUMER_IDLE_S = 60.0
DELETE_TIMEOUT_S = 2.0
NOT_YET_PAUSE_S = 0.05

KV_OPERATION = "KV-Operation"
# nats-server 2.11+ writes its own markers (TTL expiry, purge) with this header instead (as nats-py reads them).
MARKER_REASON = "Nats-Marker-Reason"
REMOVALS = {"DEL", "PURGE"}


class IncompleteRead(TimeoutError):
    """A bucket could not be read completely in time; no partial result is returned."""

    def __init__(self, bucket: str, why: str) -> None:
        super().__init__(f"Could not read all of the KV bucket {bucket!r}: {why}.")
        self.bucket = bucket


@dataclass(frozen=True)
class Revision:
    """One message of a KV bucket: a value, or the delete or purge marker of its key (`value` None)."""

    key: str
    value: bytes | None
    seq: int
    """Its stream sequence (the KV revision)."""


class _Progress:
    def __init__(self) -> None:
        self.last = 0
        self.seen = 0
        self.listed = 0
        self.unseen = 0
        self.delivered = 0

    def why(self, timeout: float) -> str:
        if not self.last:
            return f"the stream did not answer within {timeout:g} s"
        return (f"after {timeout:g} s, {self.unseen} of its {self.listed} keys had not arrived "
                f"(read up to sequence {self.seen} of {self.last})")


async def read_bucket(
    js: JetStreamContext, bucket: str, *, timeout: float = READ_TIMEOUT_S  # noqa: ASYNC109
) -> dict[str, bytes]:
    """Every live key of `bucket` and its current value, as of the moment the read began (or later).

    Raises `nats.js.errors.BucketNotFoundError` when the bucket does not exist and `IncompleteRead` when it
    cannot be read up to its last sequence within `timeout` seconds. Other nats-py errors pass through.
    """
    values: dict[str, bytes] = {}

    def apply(rev: Revision) -> None:
        if rev.value is None:
            values.pop(rev.key, None)
        else:
            values[rev.key] = rev.value

    await _read_whole(js, bucket, DeliverPolicy.LAST_PER_SUBJECT, apply, timeout)
    return values


async def read_history(
    js: JetStreamContext, bucket: str, *, timeout: float = READ_TIMEOUT_S  # noqa: ASYNC109
) -> list[Revision]:
    """Every revision `bucket` keeps of every key, markers included, in stream order, as of the moment the read
    began (or later). Raises as `read_bucket` does."""
    revisions: list[Revision] = []
    await _read_whole(js, bucket, DeliverPolicy.ALL, revisions.append, timeout)
    return revisions


async def _read_whole(js: JetStreamContext, bucket: str, deliver: DeliverPolicy, on: Callable[[Revision], None],
                      timeout: float) -> None:  # noqa: ASYNC109
    progress, stream, consumer = _Progress(), f"KV_{bucket}", f"kvread_{uuid.uuid4().hex}"
    try:
        async with asyncio.timeout(timeout):
            await _read(js, bucket, consumer, progress, deliver, on)
    except nats.js.errors.NotFoundError as exc:
        raise nats.js.errors.BucketNotFoundError(description=f"KV bucket {bucket!r} does not exist") from exc
    except TimeoutError as exc:  # the deadline above, or a JetStream API call that was not answered
        if isinstance(exc, IncompleteRead):
            raise
        raise IncompleteRead(bucket, progress.why(timeout)) from exc
    finally:
        if progress.last:  # a consumer was (or may have been) made: outside the deadline, bounded on its own
            with contextlib.suppress(Exception):  # best effort: the server drops it after CONSUMER_IDLE_S anyway
                await asyncio.wait_for(js.delete_consumer(stream, consumer), DELETE_TIMEOUT_S)


async def _read(js: JetStreamContext, bucket: str, consumer: str, progress: _Progress, deliver: DeliverPolicy,
                on: Callable[[Revision], None]) -> None:
    stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
    unseen, last = await _subjects(js, stream, f"{prefix}>")
    if not unseen:
        return
    progress.last, progress.listed, progress.unseen = last, len(unseen), len(unseen)
    await js.add_consumer(stream, config=ConsumerConfig(
        name=consumer, filter_subject=f"{prefix}>", deliver_policy=deliver,
        ack_policy=AckPolicy.NONE, inactive_threshold=CONSUMER_IDLE_S, mem_storage=True, num_replicas=1,
    ))
    sub = await js.pull_subscribe_bind(consumer=consumer, stream=stream)
    batch = FETCH_BATCH
    try:
        while unseen or progress.seen < last:
            try:
                msgs = await sub.fetch(batch, timeout=FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                continue  # nothing yet (the consumer's node catching up): ask again until the deadline
            except nats.js.errors.ServiceUnavailableError:
                # No responders for the pull request: the new consumer's interest has not reached this node yet.
                await asyncio.sleep(NOT_YET_PAUSE_S)
                continue
            for msg in msgs:
                on(_revision(msg, prefix, progress, bucket))
                unseen.discard(msg.subject)
            progress.unseen = len(unseen)
            # A short batch: the consumer had no more at hand. Once none is, nats-py's fetch waits for a whole
            # batch (up to its timeout): ask for the next message alone, then for what has piled up meanwhile.
            batch = FETCH_BATCH if len(msgs) == batch else 1
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _subjects(js: JetStreamContext, stream: str, subjects: str) -> tuple[set[str], int]:
    """The stream's subjects (one per key, deleted ones included) and its last sequence, in pages.

    The server lists at most 100,000 subjects a reply (JSMaxSubjectDetails), sorted, from an offset; a key
    made between two pages shifts the later ones by one, so one may be listed twice but none is left out (KV
    subjects do not go away: a deleted key keeps its marker).
    """
    reply = await _stream_info_page(js, stream, subjects, 0)
    state = reply["state"]
    found, last, total = set(state.get("subjects") or {}), int(state["last_seq"]), int(reply.get("total") or 0)
    offset = len(found)
    while offset < total:
        page = (await _stream_info_page(js, stream, subjects, offset))["state"].get("subjects") or {}
        if not page:
            break
        found.update(page)
        offset += len(page)
    return found, last


async def _stream_info_page(js: JetStreamContext, stream: str, subjects: str, offset: int) -> dict[str, Any]:
    """One `STREAM.INFO` reply with its subject details, as the server sends it.

    The one use of private nats-py API (`_api_request`, `_prefix`, `_timeout`): nats-py 2.16's `stream_info`
    turns the reply into a `StreamInfo` that drops the paging fields (`total`, `offset`) and cannot ask for a
    later page, so a bucket with more keys than one reply lists would look smaller than it is.
    """
    request: dict[str, Any] = {"subjects_filter": subjects}
    if offset:
        request["offset"] = offset
    reply: dict[str, Any] = await js._api_request(
        f"{js._prefix}.STREAM.INFO.{stream}", json.dumps(request).encode(), timeout=js._timeout
    )
    return reply


def _revision(msg: Msg, prefix: str, progress: _Progress, bucket: str) -> Revision:
    """One message, in stream order: a value of its key, or a delete or purge marker (value None)."""
    seq = msg.metadata.sequence
    if seq.consumer != progress.delivered + 1:
        raise IncompleteRead(bucket, f"message {progress.delivered + 1} of the read never arrived (a slow-consumer "
                                     "drop?)")
    progress.delivered += 1
    progress.seen = max(progress.seen, seq.stream)
    headers = msg.headers or {}
    removed = headers.get(KV_OPERATION) in REMOVALS or MARKER_REASON in headers
    return Revision(msg.subject[len(prefix):], None if removed else msg.data, seq.stream)

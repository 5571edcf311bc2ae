"""Every private API of a dependency that the agent relies on, each behind one function with the reason.

pyproject.toml bounds aiodocker and nats-py to the releases these were checked against; bumping either means
reading the functions below against the new release first, and the one the client package keeps itself (it
cannot import the agent): `volumectl/kv.py` `_stream_info_page`, a paged, filtered stream info.
"""

from __future__ import annotations

import tarfile
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiodocker
import aiohttp
from nats.aio.client import Client
from nats.micro.request import Request

__all__ = ["engine_request", "flush_pending", "new_nuid", "reply_subject", "tar_stream_read"]


def engine_request(
    client: aiodocker.Docker, path: str, method: str = "GET", **kw: Any
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """A raw Engine API request, its response streamed (aiodocker 0.27 `Docker._query`).

    aiodocker's public API reads a container archive whole into memory (`get_archive`), has no `docker
    import` (`images.import_image` is `docker load`), and gives the raw dicts the agent wants anyway; the
    private call keeps its API version negotiation, connection pool and error translation (`DockerError`).
    """
    return client._query(path, method, **kw)


async def flush_pending(nc: Client) -> None:
    """Return once nats-py's flusher task has written every command queued so far (nats-py 2.16).

    `flush()` alone writes its PING ahead of commands still queued for the flusher, so its PONG proves
    nothing about a SUB sent just before (the bug nats.py2 #24 once fixed).
    """
    await nc._flush_pending(force_flush=True)


def new_nuid(nc: Client) -> str:
    """A NUID from the connection's generator, as nats-py names Object Store chunk subjects (nats-py 2.16):
    an object the agent uploads itself stays readable by nats-py's own `get`."""
    return str(nc._nuid.next().decode())


def reply_subject(req: Request) -> str | None:
    """The reply subject of a micro request (nats-py 2.16 keeps the message private): none means the request
    was published rather than requested, and nobody waits for the reply."""
    reply: str | None = req._msg.reply
    return reply or None


def tar_stream_read(tar: tarfile.TarFile, n: int) -> bytes:
    """Up to `n` bytes of the current member's content from a tar opened as a stream (`mode="r|"`), read
    straight from the TarFile's stream object (CPython 3.11 `TarFile.fileobj`, a `tarfile._Stream`).

    `extractfile()` wraps the same stream in `_FileInFile` and a BufferedReader: two more copies of every byte,
    which made the content digest of a 1 GiB tar stream take 2.0 s of CPU instead of 0.7 s. `next()` skips what
    is left of the member afterwards, as it does after `extractfile()`. Sparse members still go through
    `extractfile()` (their holes are expanded there).
    """
    data: bytes = tar.fileobj.read(n)
    return data

"""A backup's content digest, taken from its tar stream as it is written (the record's `content_digest` and
`files`): the same digest the `digest` op computes (`digest.tree_digest`), so a restore of the backup, digested,
must come out equal. A restore drill (`drills.py`) checks exactly that.

A copy of the stream goes down a pipe to a thread that digests it. On the host directory's path a thread moves
tar's output to the compressor in the kernel, tee(2) then splice(2) (`pump`): the copy shares the pipe's pages,
nothing is copied through Python on the way to the store (coreutils' `tee` process, tried first, costs a read and
two writes of every 8 KiB). On the archive API's path Python writes each chunk it feeds on into the pipe as well.
What remains is the digest itself: 0.8 s of CPU per GiB (sha256 of the contents, the tar headers parsed).

The digest never fails a backup: a stream it cannot read (tarfile refuses it) leaves the record without one,
and the log says why; a drill of that backup then checks all but the content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from .digest import tree_digest
from .pipes import CHUNK, big_pipe, pipe_tee

__all__ = ["Content", "StreamDigest"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Content:
    digest: str
    files: int


class StreamDigest:
    """Digests a tar stream written into `fd` (by a process it is passed to, or by `write`)."""

    def __init__(self) -> None:
        r, self.fd = big_pipe()
        self._thread = asyncio.ensure_future(asyncio.to_thread(_digest, r))

    def pump(self, src: int, dst: int) -> asyncio.Future[None]:
        """Move everything from the pipe `src` to `dst` (a pipe or a file), a copy of it into the digest; closes
        both, and our end of the digest's pipe. Ends with `src` (end of file) or `dst` (a broken pipe: the
        reader's own error says what failed); if the digest stops reading, the backup goes on without it."""
        copy, self.fd = self.fd, -1
        return asyncio.ensure_future(asyncio.to_thread(_tee_pump, src, dst, copy))

    def close(self) -> None:
        """Our end of the pipe (once the processes that write into it hold theirs)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    async def write(self, chunk: bytes) -> None:
        if self.fd < 0:
            return
        try:
            await asyncio.to_thread(_write_all, self.fd, chunk)
        except OSError:  # the digest gave up (and said why): the backup goes on
            self.close()

    async def copying(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, each written into the digest on its way."""
        async for chunk in chunks:
            await self.write(chunk)
            yield chunk

    async def result(self) -> Content | None:
        """The digest of everything written (None if it could not be taken); closes our end first."""
        self.close()
        return await self._thread

    async def abort(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await self._thread


def _tee_pump(src: int, dst: int, copy: int) -> None:
    try:
        while True:
            if copy >= 0:
                try:
                    n = pipe_tee(src, copy, CHUNK)
                except OSError:  # the digest gave up (and said why)
                    os.close(copy)
                    copy = -1
                    continue
                if n == 0:
                    return
                while n:
                    moved = os.splice(src, dst, n)
                    if moved == 0:
                        return
                    n -= moved
            elif os.splice(src, dst, CHUNK) == 0:
                return
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        for fd in (src, dst, copy):
            if fd >= 0:
                os.close(fd)


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view):]


def _digest(fd: int) -> Content | None:
    with os.fdopen(fd, "rb") as f:
        try:
            sha, entries, _ = tree_digest(f)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            log.warning("backup.no_content_digest", error=str(exc))
            with contextlib.suppress(OSError):
                while f.read(CHUNK):  # drain, so that no writer blocks on a full pipe
                    pass
            return None
    return Content(sha, entries)

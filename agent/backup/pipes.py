"""The data path's processes: GNU tar, the (de)compressors and age joined by OS pipes, fed and read by Python.

Native speed: no data passes through Python but what it must feed, hash or count.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any, BinaryIO

from contracts import Compression

from ..errors import ToolFailed
from ..tools import missing

__all__ = [
    "CHUNK",
    "TAR_CREATE",
    "TAR_EXTRACT",
    "Capped",
    "Counted",
    "Procs",
    "big_pipe",
    "compressor",
    "decompressor",
    "feed",
    "pipe_tee",
    "pump",
    "read_chunks",
    "tar_totals",
    "unpack_into",
]

CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# A killed process that does not go within this is left to init; the operation's error is what matters.
REAP_TIMEOUT_S = 10.0

# pax keeps names in any encoding, nanosecond mtimes, big ids; --sparse keeps holes; ids stay numeric.
TAR_CREATE = ["tar", "--create", "--file=-", "--format=posix", "--numeric-owner", "--xattrs",
              "--xattrs-include=*", "--sparse", "--totals", "--directory"]
TAR_EXTRACT = ["tar", "--extract", "--file=-", "--numeric-owner", "--same-owner", "--preserve-permissions",
               "--xattrs", "--xattrs-include=*", "--directory"]
_COMPRESS = {"zstd": ["zstd", "-q", "-T0", "-3", "-c"], "gzip": ["gzip", "-c"]}
_DECOMPRESS = {"zstd": ["zstd", "-q", "-d", "-c"], "gzip": ["gzip", "-d", "-c"]}


def compressor(compression: Compression) -> list[str] | None:
    return _COMPRESS.get(compression)


def decompressor(compression: Compression) -> list[str] | None:
    return _DECOMPRESS.get(compression)


class Procs:
    """Processes joined stdout-to-stdin by OS pipes; Python may feed the first and read the last."""

    def __init__(self) -> None:
        self.procs: list[tuple[list[str], asyncio.subprocess.Process]] = []

    async def chain(self, argvs: list[list[str]], *, stdin: Any, stdout: Any, env: Mapping[str, str] | None = None,
                    cwd: str | None = None) -> None:
        """Start `argvs` in order; `stdin` feeds the first (PIPE, a file or fd), `stdout` takes the last; `env`:
        their whole environment (None: the agent's). A program that is not installed is `Unavailable` naming it
        (those started before it are the caller's to reap, as for any failure)."""
        prev: Any = stdin
        for i, argv in enumerate(argvs):
            last = i == len(argvs) - 1
            r, w = (None, None) if last else big_pipe()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=prev, stdout=stdout if last else w, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd
                )
            except FileNotFoundError:
                if r is not None:
                    os.close(r)
                raise missing(argv[0]) from None
            finally:
                # The children hold their ends now; ours must go, or readers never see end-of-file.
                if w is not None:
                    os.close(w)
                if i > 0:
                    os.close(prev)
            self.procs.append((argv, proc))
            prev = r

    @property
    def first(self) -> asyncio.subprocess.Process:
        return self.procs[0][1]

    @property
    def last(self) -> asyncio.subprocess.Process:
        return self.procs[-1][1]

    async def wait(self, doing: str = "") -> list[str]:
        """Wait for all; returns each one's stderr. A failure raises `ToolFailed` for its cause: the first
        process that failed of its own accord, not one whose reader died under it (broken pipe)."""
        errs = []
        failed: list[tuple[str, int, str, str]] = []
        for argv, proc in self.procs:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            code = await proc.wait()
            errs.append(err)
            if code != 0:
                failed.append((argv[0], code, _last_line(err), err))
        if failed:
            tool, code, line, err = next((f for f in failed if not _broken_pipe(*f[:3])), failed[0])
            raise ToolFailed(os.path.basename(tool), code, line, doing, stderr=err)
        return errs

    def kill(self) -> None:
        for _, proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    async def reap(self) -> None:
        """After a failure elsewhere: end them all, collect them so no zombie or pipe is left.

        A killed process's pipes are read to their end first: asyncio's wait() returns only once every
        pipe is closed, and a pipe we stopped reading (its buffer full, reading paused) never is.
        """
        self.kill()
        for _, proc in self.procs:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(REAP_TIMEOUT_S):
                    for pipe in (proc.stdout, proc.stderr):
                        if pipe is not None:
                            while await pipe.read(CHUNK):
                                pass
                    await proc.wait()


def big_pipe() -> tuple[int, int]:
    """A pipe with a 1 MiB buffer (Linux): fewer, larger reads and writes between the stages."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, F_SETPIPE_SZ, CHUNK)
    return r, w


# GNU tar and age close a failure with one of these; the line before says what went wrong.
_SIGN_OFFS = (
    "tar: Error is not recoverable: exiting now",
    "tar: Exiting with failure status due to previous errors",
    "age: report unexpected or unhelpful errors at",
)


def _last_line(text: str) -> str:
    """The last line that says something (not a sign-off), at most 300 characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(_SIGN_OFFS)]
    return lines[-1][-300:] if lines else ""


def _broken_pipe(tool: str, code: int, line: str) -> bool:
    """A victim: it wrote to a pipe whose reader had already failed (SIGPIPE, or its own report of EPIPE)."""
    return code in (-signal.SIGPIPE, 128 + signal.SIGPIPE) or "broken pipe" in line.lower()


def tar_totals(stderr: str) -> int | None:
    """GNU tar's `--totals` line: the bytes of the tar stream it wrote."""
    for line in stderr.splitlines():
        if line.startswith("Total bytes written:"):
            return int(line.split(":")[1].split()[0])
    return None


async def read_chunks(stream: asyncio.StreamReader, on_chunk: Callable[[int], None] | None = None
                      ) -> AsyncIterator[bytes]:
    while chunk := await stream.read(CHUNK):
        if on_chunk is not None:
            on_chunk(len(chunk))
        yield chunk


async def feed(proc: asyncio.subprocess.Process, chunks: AsyncIterable[bytes]) -> None:
    """Write `chunks` into the process's stdin, then close it."""
    assert proc.stdin is not None
    try:
        async for chunk in chunks:
            proc.stdin.write(chunk)
            await proc.stdin.drain()
    finally:
        proc.stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.wait_closed()


class Counted:
    """A byte stream that counts what passes through it."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks, self.n = chunks, 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.n += len(chunk)
            yield chunk


class Capped:
    """A byte stream cut at `most` bytes; `over` is set (and the stream ends) if it held more."""

    def __init__(self, chunks: AsyncIterator[bytes], most: int) -> None:
        self.chunks, self.most, self.n, self.over = chunks, most, 0, False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            if self.n + len(chunk) > self.most:
                self.over = True
                if self.n < self.most:
                    yield chunk[: self.most - self.n]
                self.n = self.most
                return
            self.n += len(chunk)
            yield chunk


_libc = ctypes.CDLL(None, use_errno=True)
_libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
_libc.tee.restype = ctypes.c_ssize_t


def pipe_tee(src: int, dst: int, n: int) -> int:
    """Blocking: copy up to `n` bytes from the pipe `src` into the pipe `dst` without consuming them (Linux
    tee(2), which os does not offer: the pages are shared, not copied); 0 at the end of `src`."""
    moved = int(_libc.tee(src, dst, n, 0))
    if moved < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return moved


def pump(src: int, dst: int, most: int) -> asyncio.Future[int]:
    """Move bytes from fd `src` to fd `dst` (one of them a pipe) in the kernel (splice), at most `most`; closes
    both when done.

    Its result: how many moved, or `most + 1` if `src` offered more (one more byte is read and dropped: nothing
    past `most` reaches `dst`). Runs in a thread; ending the processes at either end ends it (end of file, or a
    broken pipe, which ends it quietly: the reader's own error says what failed).
    """
    return asyncio.ensure_future(asyncio.to_thread(_pump, src, dst, most))


def _pump(src: int, dst: int, most: int) -> int:
    moved = 0
    try:
        while moved < most:
            n = os.splice(src, dst, min(CHUNK, most - moved))
            if n == 0:
                return moved
            moved += n
        return moved + 1 if os.read(src, 1) else moved
    except (BrokenPipeError, ConnectionResetError):
        return moved
    finally:
        os.close(dst)
        os.close(src)


async def unpack_into(procs: Procs, unpackers: list[list[str]], stored: BinaryIO | None, reader: list[str],
                      most: int, *, stdout: Any, env: Mapping[str, str] | None = None) -> asyncio.Future[int]:
    """Start `unpackers` (age, a decompressor: maybe none; or a store's tool that writes the tar stream) on the file
    `stored` (None: on nothing), and `reader` (tar) on what they put out, at most `most` bytes of it, moved by
    `pump`: returns that pump (await it before `procs.wait()`: past `most`, tar sees its input end and fails for
    that, and the pump's count says why). `env`: the unpackers' environment."""
    src = dst = -1
    try:
        if unpackers:
            src, w = big_pipe()
            try:
                await procs.chain(unpackers, stdin=stored if stored is not None else asyncio.subprocess.DEVNULL,
                                  stdout=w, env=env)
            finally:
                os.close(w)
        else:
            assert stored is not None, "a tar stream comes from a file or from processes"
            src = os.dup(stored.fileno())
        r, dst = big_pipe()
        try:
            await procs.chain([reader], stdin=r, stdout=stdout)
        finally:
            os.close(r)
    except BaseException:
        for fd in (src, dst):
            if fd >= 0:
                os.close(fd)
        raise
    return pump(src, dst, most)

"""A volume's files as a standard tar stream, entries relative to the volume root (`./` first).

Two ways to reach them, producing and accepting the same format:
- `HostDir`: the volume's directory is visible to the agent (on the host, or Docker's volumes directory
  mounted into the agent's container). GNU tar and the compressor run as processes joined by OS pipes:
  native speed, no data through Python but what must be hashed.
- `ContainerDir`: the Engine's archive API (what `docker cp` uses) on a container that mounts the volume:
  a running user of it (needed for volumes mounted on demand: tmpfs, NFS, plugins), or a helper container
  that is created, never started, and removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import shutil
import tarfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from contracts import Compression

from ..docker import Engine
from ..errors import AgentError, NotFound

__all__ = [
    "CHUNK",
    "ContainerDir",
    "Counted",
    "HostDir",
    "Procs",
    "big_pipe",
    "compressor",
    "decompressor",
    "ensure_helper_image",
    "root_entry",
]

log = structlog.get_logger(__name__)

CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# A killed process that does not go within this is left to init; the operation's error is what matters.
REAP_TIMEOUT_S = 10.0
HELPER_IMAGE = ("volume-agent/scratch", "1")
HELPER_LABEL = "volume-agent.helper"
HELPER_MOUNT = "/data"

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

    async def chain(self, argvs: list[list[str]], *, stdin: Any, stdout: Any) -> None:
        """Start `argvs` in order; `stdin` feeds the first (PIPE, a file or fd), `stdout` takes the last."""
        prev: Any = stdin
        for i, argv in enumerate(argvs):
            last = i == len(argvs) - 1
            r, w = (None, None) if last else big_pipe()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=prev, stdout=stdout if last else w, stderr=asyncio.subprocess.PIPE
                )
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

    async def wait(self) -> list[str]:
        """Wait for all; raise with the failing program's own words. Returns each one's stderr."""
        errs = []
        failed: list[str] = []
        for argv, proc in self.procs:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            code = await proc.wait()
            errs.append(err)
            if code != 0:
                failed.append(f"{argv[0]} exited with {code}: {_tail(err) or 'no message'}")
        if failed:
            raise AgentError("; ".join(failed) + ".")
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


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-3:])[-500:]


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


def root_entry(head: bytes) -> tarfile.TarInfo | None:
    """The `./` entry at the start of a tar stream, if the first bytes hold it."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError):
        return None
    if first is not None and first.isdir() and first.name in (".", "./", ""):
        return first
    return None


@dataclass
class HostDir:
    """A volume's directory on this machine."""

    path: Path
    kind: str = "host"

    def create_argv(self) -> list[str]:
        return [*TAR_CREATE, str(self.path), "."]

    def extract_argv(self) -> list[str]:
        return [*TAR_EXTRACT, str(self.path)]

    async def is_empty(self) -> bool:
        def empty() -> bool:
            with os.scandir(self.path) as entries:
                return next(entries, None) is None

        return await asyncio.to_thread(empty)

    async def clear(self) -> None:
        """Remove everything inside (the directory itself stays: it is the mount point)."""

        def clear() -> None:
            for entry in os.scandir(self.path):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)

        await asyncio.to_thread(clear)


@dataclass
class ContainerDir:
    """A volume's files through the Engine's archive API on a container that mounts it."""

    engine: Engine
    container: str
    mount: str
    helper: bool
    kind: str = "archive"

    def read(self) -> AsyncIterator[bytes]:
        return self.engine.archive_get(self.container, f"{self.mount.rstrip('/')}/.")

    async def write(self, chunks: AsyncIterable[bytes]) -> None:
        """Extract a tar stream into the volume, and give its root the `./` entry's owner and mode.

        The archive API applies every entry's owner and mode but the root's own; a second, one-entry
        archive at `/` sets those on the mount point.
        """
        root: list[tarfile.TarInfo] = []

        async def watching() -> AsyncIterator[bytes]:
            first = True
            async for chunk in chunks:
                if first:
                    first = False
                    entry = root_entry(chunk)
                    if entry is not None:
                        root.append(entry)
                yield chunk

        await self.engine.archive_put(self.container, self.mount, watching())
        if root:
            await self.engine.archive_put(self.container, "/", _single(_root_as(root[0], self.mount)))

    async def is_empty(self) -> bool:
        head = b""
        stream = self.read()
        try:
            async for chunk in stream:
                head += chunk
                if len(head) >= 64 * 1024:
                    break
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        try:
            with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
                names = [m.name for m, _ in zip(tar, range(2), strict=False)]
        except (tarfile.TarError, EOFError):
            return False  # more than fits in the head: not empty
        return all(n in (".", "./") for n in names)


def _root_as(entry: tarfile.TarInfo, mount: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(mount.strip("/"))
    info.type = tarfile.DIRTYPE
    info.uid, info.gid, info.mode, info.mtime = entry.uid, entry.gid, entry.mode, entry.mtime
    return info


async def _single(info: tarfile.TarInfo) -> AsyncIterator[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    yield buf.getvalue()


async def ensure_helper_image(engine: Engine) -> str:
    """The helper containers' image: an empty root file system the agent imports itself (no registry)."""
    repo, tag = HELPER_IMAGE
    name = f"{repo}:{tag}"
    try:
        await engine.image_inspect(name)
    except NotFound:
        empty = io.BytesIO()
        with tarfile.open(fileobj=empty, mode="w"):
            pass
        await engine.image_import(repo, tag, empty.getvalue(), 'CMD ["/none"]')
        log.info("helper.image_imported", image=name)
    return name


@contextlib.asynccontextmanager
async def helper_container(engine: Engine, volume: str) -> AsyncIterator[ContainerDir]:
    """A container that mounts `volume` at /data for the archive API; created, never started, removed."""
    image = await ensure_helper_image(engine)
    cid = await engine.container_create(
        f"volume-agent-helper-{os.urandom(4).hex()}",
        {"Image": image, "Labels": {HELPER_LABEL: volume}, "NetworkDisabled": True,
         "HostConfig": {"Mounts": [{"Type": "volume", "Source": volume, "Target": HELPER_MOUNT}]}},
    )
    try:
        yield ContainerDir(engine, cid, HELPER_MOUNT, helper=True)
    finally:
        try:
            await engine.container_remove(cid)
        except AgentError:
            log.warning("helper.not_removed", container=cid)


async def remove_leftover_helpers(engine: Engine) -> None:
    """Helpers a crash left behind."""
    for c in await engine.containers({"label": [HELPER_LABEL]}):
        with contextlib.suppress(AgentError):
            await engine.container_remove(c["Id"])

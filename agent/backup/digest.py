"""A digest of a volume's content, the same whichever way its files are reached: equal digests, equal trees.

Both data paths give a tar stream (GNU tar on the host directory, or the Engine's archive API); the digest
is computed from the stream's entries, not its bytes, since the two writers order and encode entries
differently. Per entry, sorted by path: type, permission bits, numeric owner, size, content sha256, link
target, and for regular files the mtime in whole seconds (the archive API keeps no more). Directory and
symlink times are left out: extraction does not keep them everywhere. A hard link counts as the file it
links to. xattrs and ACLs are not part of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tarfile
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from contracts import DigestRequest, DigestResult

from ..compat import tar_stream_read
from ..errors import Unavailable
from ..typing import Engine
from ..volumes import used_by
from .pipes import CHUNK, Procs
from .volume_files import ContainerDir, DataPath, HostDir, volume_files

__all__ = ["Digests", "files_digest", "tree_digest"]

_ENCODE = msgspec.json.Encoder()
# tarfile's stream reads: 64 KiB measured fastest here (10 KiB, its default, costs 50% more CPU; 1 MiB, 10%).
STREAM_BUFFER = 64 << 10


def _name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") or "."


def _raw(name: str) -> bytes:
    """A name as the bytes it was (tarfile keeps undecodable bytes as surrogates)."""
    return name.encode("utf-8", "surrogateescape")


def _content_sha256(tar: tarfile.TarFile, m: tarfile.TarInfo) -> str:
    h = hashlib.sha256()
    if m.sparse is not None:
        f = tar.extractfile(m)
        assert f is not None
        while chunk := f.read(CHUNK):
            h.update(chunk)
        return h.hexdigest()
    left = m.size
    while left:
        chunk = tar_stream_read(tar, min(left, CHUNK))
        if not chunk:
            raise tarfile.ReadError(f"unexpected end of data in {m.name!r}")
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def tree_digest(fileobj: object) -> tuple[str, int, int]:
    """Blocking: (sha256, entries, content bytes) of the tar stream read from `fileobj`."""
    entries: list[list[Any]] = []
    files: dict[str, tuple[int, str, int]] = {}
    total = 0
    with tarfile.open(fileobj=fileobj, mode="r|", bufsize=STREAM_BUFFER) as tar:  # type: ignore[call-overload]
        for m in tar:
            name = _name(m.name)
            if m.isreg():
                files[name] = (m.size, _content_sha256(tar, m), int(m.mtime))
                total += m.size
                entries.append([name, "f", m.mode & 0o7777, m.uid, m.gid, *files[name]])
            elif m.islnk():
                # Tar writes a file's first name in full and the others as links to it: count them all as files.
                size, sha, mtime = files.get(_name(m.linkname), (0, "", 0))
                entries.append([name, "f", m.mode & 0o7777, m.uid, m.gid, size, sha, mtime])
            elif m.isdir():
                entries.append([name, "d", m.mode & 0o7777, m.uid, m.gid])
            elif m.issym():
                entries.append([name, "l", m.uid, m.gid, m.linkname])
            else:
                entries.append([name, m.type.decode(), m.mode & 0o7777, m.uid, m.gid, m.devmajor, m.devminor])
    for e in entries:
        e[0] = _raw(e[0])
        if e[1] == "l":
            e[4] = _raw(e[4])
    entries.sort(key=lambda e: e[0])
    return hashlib.sha256(_ENCODE.encode(entries)).hexdigest(), len(entries), total


class Digests:
    """The `digest` op."""

    def __init__(self, engine: Engine, *, data_path: DataPath) -> None:
        self.engine = engine
        self.data_path = data_path

    async def digest(self, req: DigestRequest) -> DigestResult:
        v = await self.engine.volume_inspect(req.volume)
        users = await used_by(self.engine, req.volume)
        async with volume_files(self.engine, v, users, self.data_path) as files:
            sha, entries, total = await files_digest(files)
        return DigestResult(volume=req.volume, sha256=sha, entries=entries, bytes=total)


async def files_digest(files: HostDir | ContainerDir) -> tuple[str, int, int]:
    """(sha256, entries, content bytes) of a volume's files, or of any directory of this host (`HostDir`)."""
    r, w = os.pipe()
    reader = asyncio.create_task(asyncio.to_thread(_digest_fd, r))
    procs = Procs()
    try:
        if isinstance(files, HostDir):
            await procs.chain([files.create_argv()], stdin=asyncio.subprocess.DEVNULL, stdout=w)
            os.close(w)
            w = -1
            await procs.wait("reading the volume for its digest")
        else:
            await _write_all(w, files.read())
            os.close(w)
            w = -1
        return await reader
    except BaseException:
        await procs.reap()
        if w >= 0:
            os.close(w)  # the reader sees the end of the stream and stops
        with contextlib.suppress(Exception):
            await reader
        raise


def _digest_fd(fd: int) -> tuple[str, int, int]:
    with os.fdopen(fd, "rb") as f:
        try:
            return tree_digest(f)
        except (tarfile.TarError, EOFError) as exc:
            raise Unavailable(f"The volume's tar stream could not be read for its digest: {exc}.") from exc


async def _write_all(fd: int, chunks: AsyncIterator[bytes]) -> None:
    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]

    async for chunk in chunks:
        await asyncio.to_thread(write, chunk)



"""What a stored backup holds, member by member, checked before a restore writes anything.

A backup from another host (the shared store, a file copied in) is only as trustworthy as that host. GNU tar,
as the agent runs it, refuses names with `..`, strips a leading `/` and delays symlinks; Docker's archive API
extracts in a chroot. Neither refuses device nodes, which both create as root. So the whole member list is read
first, by GNU tar itself (`--list`: the parser that would extract it, so what is checked is what would be
written), and the restore is refused as `corrupt` if any member is:
- a character or block device, or of a type GNU tar does not extract as a plain file, directory, link or FIFO;
- named by an absolute path, or with a `..` component;
- under a symbolic link, or under something else that is not a directory, that an earlier member made;
- a hard link to anything but a file (or FIFO) an earlier member made.
Backups made by the agent (`tar --create .` of a volume) never hold the last three. Symlinks themselves may point
anywhere: they are read in a container's file system, and nothing the agent does follows them.

The cost is one more pass over the archive (decompressed), before the extraction's: measured in docs/backups.md
(restore). That pass is bounded like the extraction (`bounds.py`): past the tar stream its record states, the
backup is refused as `corrupt` there, before the target is touched, and a bomb costs no more than that to list.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from contracts import BackupRecord

from ..errors import Corrupt, ToolFailed
from .bounds import limit, too_big
from .encryption import AgeIdentity
from .pipes import Procs, unpack_into
from .stores import TarSource

__all__ = ["LIST_ARGV", "check_members", "member_problem", "parse_listing"]

# Names exactly as stored (--absolute-names keeps a leading `/` and `..`), each in C quotes (one line per member
# whatever the name holds), numeric owners (no quotes there either).
LIST_ARGV = ["tar", "--list", "--verbose", "--file=-", "--absolute-names", "--quoting-style=c", "--numeric-owner",
             "--full-time"]
# GNU tar's first column: a file, a contiguous file, a directory, a symlink, a hard link, a FIFO.
_FILE_TYPES = frozenset(b"-C")
_KINDS = {ord("d"): "directory", ord("l"): "symbolic link", ord("h"): "hard link", ord("p"): "FIFO",
          ord("c"): "character device", ord("b"): "block device"}
_ESCAPES = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("v"): 11,
            ord("\\"): 92, ord('"'): 34, ord("?"): 63}
# A line longer than this is no member a file system could hold (PATH_MAX is 4096).
LINE_LIMIT = 1 << 16


def _unquote(line: bytes, at: int) -> tuple[bytes, int]:
    """The C-quoted string starting at `line[at]` (a `"`), and the index after its closing quote."""
    out, i = bytearray(), at + 1
    while i < len(line):
        c = line[i]
        if c == 34:
            return bytes(out), i + 1
        if c == 92 and i + 1 < len(line):
            nxt = line[i + 1]
            if 48 <= nxt <= 55:  # \NNN, octal
                j = i + 1
                while j < min(i + 4, len(line)) and 48 <= line[j] <= 55:
                    j += 1
                out.append(int(line[i + 1:j], 8) & 0xFF)
                i = j
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    raise ValueError("an unterminated name")


def parse_listing(line: bytes) -> tuple[int, bytes, bytes | None]:
    """One line of `LIST_ARGV`'s output: the type character, the name, and a link's target (or None)."""
    at = line.index(b'"')
    name, end = _unquote(line, at)
    rest = line[end:]
    target = None
    if rest.startswith((b' -> "', b' link to "')):
        target, _ = _unquote(rest, rest.index(b'"'))
    return line[0], name, target


def _parts(name: bytes) -> list[bytes] | None:
    """The path's components inside the volume (`./` and empty ones dropped), or None if it leaves it."""
    if name.startswith(b"/"):
        return None
    parts = [p for p in name.split(b"/") if p not in (b"", b".")]
    return None if b".." in parts else parts


def _show(name: bytes) -> str:
    text = name.decode(errors="replace")
    return repr(text if len(text) <= 120 else text[:117] + "...")


def member_problem(kind: int, name: bytes, target: bytes | None, seen: dict[bytes, int]) -> str | None:
    """Why a restore must not write this member, or None; `seen` maps the paths earlier members made to their
    type, and is updated."""
    if kind in _FILE_TYPES or kind in _KINDS:
        what = "file" if kind in _FILE_TYPES else _KINDS[kind]
    else:
        return f"a member of a type GNU tar does not extract as a file ({chr(kind)!r}: {_show(name)})"
    if kind in (ord("c"), ord("b")):
        return f"a {what} ({_show(name)}), which a restore never creates"
    parts = _parts(name)
    if parts is None:
        return f"a {what} whose path leaves the volume ({_show(name)})"
    if not parts and kind != ord("d"):
        return f"its root as a {what}, not a directory"
    for depth in range(1, len(parts)):
        above = seen.get(b"/".join(parts[:depth]))
        if above is not None and above != ord("d"):
            return (f"a {what} under a {'symbolic link' if above == ord('l') else 'non-directory'} of the archive "
                    f"({_show(name)} under {_show(b'/'.join(parts[:depth]))})")
    if kind == ord("h"):
        linked = _parts(target or b"")
        if not linked:
            return f"a hard link to a path outside the volume ({_show(name)} to {_show(target or b'')})"
        if seen.get(b"/".join(linked)) not in (*_FILE_TYPES, ord("h"), ord("p")):
            return f"a hard link to no file the archive holds before it ({_show(name)} to {_show(target or b'')})"
    seen[b"/".join(parts)] = kind
    return None


async def check_members(source: Path | TarSource, record: BackupRecord, age: AgeIdentity | None = None) -> int:
    """Read the backup's member list with GNU tar; `Corrupt` with a sentence if a restore must not write it (see
    the module's docstring) or it is no tar archive. Returns the number of members. `source`: the stream's processes
    (a snapshot store's), or a stored file, decrypted in the pipe with `age`'s identity if encrypted."""
    if isinstance(source, Path):
        source = TarSource(argvs=(age or AgeIdentity(None)).tar_stream(record), stored=source)
    procs, seen, n = Procs(), dict[bytes, int](), 0
    refused, pumped = None, None
    try:
        # A local file, opened once and handed to the children.
        with open(source.stored, "rb") if source.stored is not None else contextlib.nullcontext() as stored:  # noqa: ASYNC230
            pumped = await unpack_into(procs, source.argvs, stored, LIST_ARGV, limit(record),
                                       stdout=asyncio.subprocess.PIPE, env=source.env)
        out = procs.last.stdout
        assert out is not None
        while refused is None:
            try:
                line = await out.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    refused = "a listing line without its end"
                break
            except asyncio.LimitOverrunError:
                refused = "a member name longer than any file system takes"
                break
            n += 1
            try:
                refused = member_problem(*parse_listing(line.rstrip(b"\n")), seen)
            except ValueError:
                refused = f"a member GNU tar lists in a way the agent does not read ({_show(line[:200])})"
        if refused is None:
            if await pumped > limit(record):
                raise too_big(record, written=False)
            await procs.wait("listing a backup")
    except ToolFailed as exc:
        if exc.status < 0:  # killed: says nothing about the archive
            raise
        known = source.error(exc) if source.error is not None else None
        if known is not None:  # the store's tool could not read its repository now: not the backup's fault
            raise known from exc
        raise Corrupt(f"Backup {record.backup_id!r} cannot be read as a tar archive ({exc.message.rstrip('.')}); "
                      "nothing was written to the volume. Restore another backup.") from exc
    finally:
        await procs.reap()
        if pumped is not None:
            await asyncio.shield(pumped)  # ends with the processes: its fds are closed before we go on
    if refused is not None:
        raise Corrupt(f"Backup {record.backup_id!r} holds {refused}; nothing was written to the volume. A restore "
                      "writes only files, directories, links and FIFOs inside the volume: restore another backup, "
                      "or inspect this one with `tar -tvf`.")
    return n

"""What the agent writes is root's alone: files 0600, directories 0700, under its data dir and in its stores.

Backups hold volumes' data; records, notes, policies and the ledger say what exists and where. Three layers, so a
file created by a new piece of code (or by a child process: tar, age, the embedded nats-server) cannot come
back loose:
- the daemon runs with the umask `UMASK`, which every child inherits;
- the places that create files and directories give the mode themselves (`open_private`, `private_dir`);
- at start, `tighten` makes private what an older version (or an operator's copy) left under the data dir.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

import structlog

from .errors import Unavailable

__all__ = ["DIR_MODE", "FILE_MODE", "UMASK", "make_private", "open_private", "private_dir", "tighten"]

log = structlog.get_logger(__name__)

UMASK = 0o077
FILE_MODE = 0o600
DIR_MODE = 0o700


def open_private(path: Path) -> BinaryIO:
    """`path` opened for writing from its start, mode 0600 even if it existed with another; never through a
    symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def private_dir(path: Path) -> Path:
    """`path` and its missing parents made as directories of mode 0700; `path` itself made 0700 if it was
    there with another mode."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):  # pathlib would make the parents with the umask's mode
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def make_private(data_dir: Path) -> None:
    """At start: the data dir made (0700) and everything under it tightened; `Unavailable` if it cannot be."""
    try:
        private_dir(data_dir)
        changed = tighten(data_dir)
    except OSError as exc:
        raise Unavailable(f"Cannot make the data dir {data_dir} private to the agent ({exc.strerror}: "
                          f"{exc.filename}); run the agent as root, or give --data-dir a directory it owns.") from exc
    if changed:
        log.info("data_dir.tightened", entries=changed, modes="files 0600, directories 0700")


def tighten(root: Path) -> int:
    """Make `root` and everything under it private (files 0600, directories 0700; symbolic links are not
    followed); returns how many entries changed."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        names = [dirpath] if dirpath == str(root) else []
        for p in names + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue  # gone meanwhile
            if stat.S_ISLNK(st.st_mode):
                continue
            want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
            if stat.S_IMODE(st.st_mode) != want:
                os.chmod(p, want)
                changed += 1
    return changed

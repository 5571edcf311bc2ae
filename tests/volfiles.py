"""Make and compare volume contents for exactness tests (the tests run as root beside a private dockerd)."""

from __future__ import annotations

import os
from pathlib import Path

from .stack import Dockerd


def mountpoint(d: Dockerd, volume: str) -> Path:
    return Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", volume).strip())


def fill_tricky(root: Path) -> None:
    """Everything a restore must reproduce: modes (setuid), owners, mtimes, links, odd names, holes."""
    os.chown(root, 999, 999)
    os.chmod(root, 0o700)
    (root / "db").mkdir()
    (root / "db" / "data.bin").write_bytes(os.urandom(300_000))
    os.chown(root / "db", 999, 998)
    os.chown(root / "db" / "data.bin", 999, 998)
    tool = root / "suid-tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o4755)
    os.symlink("db/data.bin", root / "link")
    os.symlink("/nowhere/at/all", root / "dangling")
    os.link(root / "db" / "data.bin", root / "hardlink")
    (root / "empty-dir").mkdir()
    with open(os.fsencode(root) + b"/caf\xe9-latin1", "wb") as f:  # not valid UTF-8
        f.write(b"latin-1 name")
    (root / "ünïcödé").write_text("utf-8 name")
    with open(root / "sparse", "wb") as f:
        f.seek(50 * 1024 * 1024)
        f.write(b"end")
    os.utime(root / "ünïcödé", ns=(981173106_123456789, 981173106_123456789))


def listing(root: Path, *, mtime_ns: bool = True) -> list[tuple[object, ...]]:
    """Every entry with its kind, owner, mode, size, link target, content digest and mtime."""
    rows: list[tuple[object, ...]] = []
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            link = os.readlink(p) if p.is_symlink() else None
            content = None
            if p.is_file() and not p.is_symlink():
                content = hash(p.read_bytes())
                if st.st_nlink > 1:
                    link = f"hardlink-group:{inodes.setdefault(st.st_ino, rel)}"
            mtime = st.st_mtime_ns if mtime_ns else st.st_mtime_ns // 1_000_000_000
            rows.append((rel, st.st_mode, st.st_uid, st.st_gid, st.st_size, link, content, mtime))
    st = root.stat()
    rows.append((".", st.st_mode, st.st_uid, st.st_gid))
    return sorted(rows, key=lambda r: str(r[0]))


def allocated_kib(path: Path) -> int:
    return path.stat().st_blocks // 2

"""Backups from another host never write outside their target volume, whatever the archive holds.

Hand-made archives (Python tarfile) go into both stores with correct sha256 and size records, as a hostile or
broken host would leave them: `..` names, absolute names, a file through a symlink, hard links out of the
volume, device nodes. Each restore is refused as `corrupt` before anything is written (the target is not even
made), on both data paths (GNU tar on the host directory, Docker's archive API), and nothing outside changes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from agent.backup.members import check_members, parse_listing
from agent.backup.pipes import TAR_CREATE
from agent.errors import Corrupt
from contracts import BackupRecord, Compression, catalog_key

from .conftest import Host
from .identities import Identities
from .volfiles import fill_tricky, mountpoint

Member = tuple[tarfile.TarInfo, bytes | None]


def _m(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, **kw: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, int(kw.pop("mode", 0o644)), 1_700_000_000
    for key, value in kw.items():
        setattr(info, key, value)
    if kind == tarfile.REGTYPE:
        data = data if data is not None else b"pwned\n"
        info.size = len(data)
    return info, data


def hostile(outside: Path) -> dict[str, tuple[list[Member], str]]:
    """Each case: its members (after a `./` entry, before a plain `ok` file), and what the refusal says."""
    o = str(outside)
    sym, hard, chr_, blk = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE
    return {
        "dotdot": ([_m("../escape")], "a file whose path leaves the volume ('../escape')"),
        "dotdot-inside": ([_m("a/../../escape")], "path leaves the volume"),
        "absolute": ([_m(f"{o}/abs-file")], f"a file whose path leaves the volume ('{o}/abs-file')"),
        "symlink-then-file": ([_m("link", sym, linkname=o), _m("link/file")],
                              "a file under a symbolic link of the archive ('link/file' under 'link')"),
        "relative-symlink-then-file": ([_m("up", sym, linkname="../" * 12 + o.lstrip("/")), _m("up/file")],
                                       "under a symbolic link"),
        "hardlink-absolute": ([_m("h", hard, linkname=f"{o}/secret")], "a hard link to a path outside the volume"),
        "hardlink-passwd": ([_m("h", hard, linkname="/etc/passwd")], "('h' to '/etc/passwd')"),
        "hardlink-dotdot": ([_m("h", hard, linkname="../../x")], "a hard link to a path outside the volume"),
        "hardlink-via-symlink": ([_m("l", sym, linkname=o), _m("h", hard, linkname="l/secret")],
                                 "a hard link to no file the archive holds before it"),
        "char-device": ([_m("null", chr_, devmajor=1, devminor=3, mode=0o666)],
                        "a character device ('null'), which a restore never creates"),
        "block-device": ([_m("disk", blk, devmajor=7, devminor=0, mode=0o660)], "a block device ('disk')"),
    }


def benign(outside: Path) -> list[Member]:
    """What a foreign backup may hold: a FIFO, symlinks anywhere, a setuid file, odd names, a hard link."""
    return [_m("fifo", tarfile.FIFOTYPE), _m("to-outside", tarfile.SYMTYPE, linkname=str(outside)),
            _m("suid", data=b"#!/bin/sh\n", mode=0o4755), _m('we"ird\nname -> x'), _m("d", tarfile.DIRTYPE),
            _m("d/data", data=b"data"), _m("d/same", tarfile.LNKTYPE, linkname="d/data")]


def archive(members: list[Member], compression: Compression = "none") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [_m("./", tarfile.DIRTYPE, mode=0o755), *members, _m("ok")]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    return gzip.compress(raw) if compression == "gzip" else raw


def record(backup_id: str, data: bytes, store: str, location: str, compression: Compression,
           host: str = "elsewhere", size: int | None = None) -> BackupRecord:
    """`size`: what the record claims the tar stream holds (the stored bytes' length unless given)."""
    return BackupRecord(
        backup_id=backup_id, volume=backup_id.split(".")[0], host=host, trigger="request",
        size=len(data) if size is None else size,
        stored_size=len(data), sha256=hashlib.sha256(data).hexdigest(), compression=compression,
        store=store, location=location, created_at=datetime.now(UTC).isoformat(), duration_s=0.1,
        stopped_containers=[])


def into_local_store(host: Host, backup_id: str, data: bytes, compression: Compression = "none",
                     made_by: str = "elsewhere", size: int | None = None) -> None:
    """A backup file and its record, as the local store keeps them (agent/backup/local_store.py)."""
    d = host.agent.data_dir / "backups" / backup_id.split(".")[0]
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{backup_id}.tar"
    path.write_bytes(data)
    (d / f"{backup_id}.json").write_bytes(msgspec.json.encode(record(backup_id, data, "local", str(path),
                                                                     compression, made_by, size)))


FOREIGN = "elsewhere"
"""The other host whose backups these are: a compromised one, writing hostile archives with its own key."""


async def into_shared_store(host: Host, identities: Identities, backup_id: str, data: bytes,
                            compression: Compression = "none", size: int | None = None) -> None:
    """An object and its catalog record, as agent/backup/nats_store.py keeps them, written with nats-py's own
    Object Store `put` by host `elsewhere` with its own credentials (all it may write is its own bucket and its own
    catalog keys, and that is all it needs to plant a backup)."""
    identities.agent(FOREIGN)  # its NATS user, and every agent's permission to read its bucket
    nc = await identities.nats([host.agent.nats_url], FOREIGN)
    try:
        js = nc.jetstream()
        bucket = host.client.subjects.backups_bucket_of(FOREIGN)
        obj = await js.create_object_store(bucket=bucket)
        await obj.put(backup_id, data)
        kv = await js.key_value(host.client.subjects.catalog_bucket)
        await kv.put(catalog_key(FOREIGN, backup_id), msgspec.json.encode(
            record(backup_id, data, "nats", f"nats://{bucket}/{backup_id}", compression, FOREIGN, size)))
    finally:
        await nc.close()


def outside_state(host: Host, outside: Path) -> dict[str, tuple[object, ...]]:
    """Every entry of the sentinel directory and of Docker's volumes directory (but its database), and
    /etc/passwd: kind, mode, size, link count, mtime, content digest."""
    rows: dict[str, tuple[object, ...]] = {}
    volumes = host.docker.root / "data" / "volumes"
    for root in (outside, volumes):
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                if p.name == "metadata.db":
                    continue
                st = p.lstat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
                rows[str(p)] = (st.st_mode, st.st_size, st.st_nlink, st.st_mtime_ns, digest)
    st = os.stat("/etc/passwd")
    rows["/etc/passwd"] = (st.st_mode, st.st_size, st.st_nlink, st.st_mtime_ns)
    return rows


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    (o / "secret").write_text("secret\n")
    return o


CASES = list(hostile(Path("/x")))


@pytest.mark.parametrize("compression", ["none", "zstd", "gzip"])
@pytest.mark.parametrize("case", CASES)
async def test_the_member_check_refuses_each_hostile_archive(case: str, compression: Compression,
                                                            outside: Path, tmp_path: Path) -> None:
    members, says = hostile(outside)[case]
    data = archive(members, compression)
    (tmp_path / "b").write_bytes(data)
    with pytest.raises(Corrupt) as refused:
        await check_members(tmp_path / "b", record("evil.1.x", data, "local", "", compression))
    assert says in refused.value.message and "nothing was written to the volume" in refused.value.message


async def test_the_member_check_takes_what_gnu_tar_makes_of_a_volume_and_a_benign_foreign_archive(
    outside: Path, tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    fill_tricky(vol)  # setuid, symlinks (one dangling), a hard link, a non-UTF-8 name, a sparse file
    os.mkfifo(vol / "fifo")
    made = subprocess.run([*TAR_CREATE, str(vol), "."], capture_output=True, check=True).stdout
    (tmp_path / "own.tar").write_bytes(made)
    assert await check_members(tmp_path / "own.tar", record("own.1.x", made, "local", "", "none")) == 12
    data = archive(benign(outside), "zstd")
    (tmp_path / "benign.tar.zst").write_bytes(data)
    assert await check_members(tmp_path / "benign.tar.zst", record("b.1.x", data, "local", "", "zstd")) == 9


async def test_bytes_that_are_no_tar_archive_are_corrupt(tmp_path: Path) -> None:
    data = subprocess.run(["zstd", "-q", "-c"], input=os.urandom(20_000), capture_output=True, check=True).stdout
    (tmp_path / "b").write_bytes(data)
    with pytest.raises(Corrupt, match="cannot be read as a tar archive"):
        await check_members(tmp_path / "b", record("junk.1.x", data, "local", "", "zstd"))


def test_listing_lines_are_read_whatever_the_names_hold() -> None:
    assert parse_listing(b'-rw-r--r-- 0/0 6 2023-11-14 22:13:20 "we\\"ird\\nname -> x"') == (
        ord("-"), b'we"ird\nname -> x', None)
    assert parse_listing(b'lrwxrwxrwx 0/0 0 2023-11-14 22:13:20 "a b" -> "/t \\"x\\" -> y"') == (
        ord("l"), b"a b", b'/t "x" -> y')
    assert parse_listing(b'hrw-r--r-- 0/0 0 2023-11-14 22:13:20 "caf\\351" link to "d/data"') == (
        ord("h"), b"caf\xe9", b"d/data")


@pytest.mark.integration
@pytest.mark.parametrize("store", ["local", "nats"])
async def test_hostile_backups_are_refused_on_either_data_path_and_nothing_outside_changes(
    any_path_host: Host, store: str, outside: Path, identities: Identities
) -> None:
    host = any_path_host
    before = outside_state(host, outside)
    for case, (members, says) in hostile(outside).items():
        backup_id = f"evil-{case}.20261129T000000Z.{store}{host.id.replace('-', '')}"
        data = archive(members)
        if store == "local":
            into_local_store(host, backup_id, data)
        else:
            await into_shared_store(host, identities, backup_id, data)
        target = f"restored-{case}"
        code, message = await host.error("restore", {"backup_id": backup_id, "volume": target})
        assert code == "corrupt" and says in message, (case, message)
        assert target not in host.docker.docker("volume", "ls", "-q").split()  # not even made
    assert outside_state(host, outside) == before


@pytest.mark.integration
async def test_a_refused_restore_leaves_an_existing_target_as_it_was(any_path_host: Host, outside: Path) -> None:
    host = any_path_host
    host.docker.docker("volume", "create", "kept")
    (mountpoint(host.docker, "kept") / "precious").write_text("mine\n")
    backup_id = f"evil-dev.20261129T000000Z.over{host.id.replace('-', '')}"
    into_local_store(host, backup_id, archive(hostile(outside)["char-device"][0]))
    code, _ = await host.error("restore", {"backup_id": backup_id, "volume": "kept", "overwrite": True})
    assert code == "corrupt"
    assert [p.name for p in mountpoint(host.docker, "kept").iterdir()] == ["precious"]


@pytest.mark.integration
async def test_a_benign_foreign_backup_restores_on_either_data_path(any_path_host: Host, outside: Path) -> None:
    host = any_path_host
    before = outside_state(host, outside)
    backup_id = f"foreign.20261129T000000Z.ok{host.id.replace('-', '')}"
    data = archive(benign(outside), "zstd")
    into_local_store(host, backup_id, data, "zstd")
    assert (await host.req("restore", {"backup_id": backup_id, "volume": "foreign"})).ok
    root = mountpoint(host.docker, "foreign")
    assert (root / "fifo").is_fifo() and os.readlink(root / "to-outside") == str(outside)
    assert (root / "suid").stat().st_mode & 0o7777 == 0o4755 and (root / "d" / "same").stat().st_nlink == 2
    changed = {k for k in outside_state(host, outside).keys() ^ before.keys() if "/volumes/foreign" not in k}
    assert not changed and (outside / "secret").read_text() == "secret\n"


@pytest.mark.integration
async def test_what_this_host_wrote_into_its_own_store_is_restored_unchecked(any_path_host: Host,
                                                                            outside: Path) -> None:
    """The trust boundary: the local store is root's, and a backup this host made of a volume holding a device
    node (a container may mknod) gives that volume back as it was, without the check's extra pass."""
    host = any_path_host
    backup_id = f"own-dev.20261129T000000Z.own{host.id.replace('-', '')}"
    into_local_store(host, backup_id, archive(hostile(outside)["char-device"][0]), made_by=host.id)
    assert (await host.req("restore", {"backup_id": backup_id, "volume": "own-dev"})).ok
    assert (mountpoint(host.docker, "own-dev") / "null").is_char_device()

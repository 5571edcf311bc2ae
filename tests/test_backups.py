"""Backup, restore, clone and forget against a real dockerd, through both data paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import Host
from .volfiles import allocated_kib, fill_tricky, listing, mountpoint

pytestmark = pytest.mark.integration


def exact(h: Host) -> bool:
    """The host path keeps nanosecond mtimes and holes; Docker's archive API writes whole seconds."""
    return h.agent.extra.count("archive") == 0


async def test_backup_and_restore_reproduce_the_volume_exactly(any_path_host: Host) -> None:
    h = any_path_host
    await h.ok("create", {"name": "pg", "labels": {"app": "db"}})
    src = mountpoint(h.docker, "pg")
    fill_tricky(src)
    rec = await h.ok("backup", {"volume": "pg"})
    assert rec["volume"] == "pg" and rec["host"] == h.id and rec["trigger"] == "request"
    assert rec["compression"] == "zstd" and rec["store"] == "local" and Path(rec["location"]).is_file()
    assert rec["size"] > 300_000 and 0 < rec["stored_size"] < rec["size"] and len(rec["sha256"]) == 64
    restored = await h.ok("restore", {"backup_id": rec["backup_id"], "volume": "pg-copy"})
    assert restored["created_volume"] is True and restored["size"] == rec["size"]
    dst = mountpoint(h.docker, "pg-copy")
    assert listing(dst, mtime_ns=exact(h)) == listing(src, mtime_ns=exact(h))
    assert (await h.ok("inspect", {"name": "pg-copy"}))["labels"] == {"app": "db"}
    if exact(h):
        assert allocated_kib(dst / "sparse") < 1024


async def test_clone_is_exact_and_refuses_a_non_empty_target(any_path_host: Host) -> None:
    h = any_path_host
    await h.ok("create", {"name": "orig", "labels": {"k": "v"}})
    fill_tricky(mountpoint(h.docker, "orig"))
    cloned = await h.ok("clone", {"source": "orig", "target": "twin"})
    assert cloned["created_volume"] is True and cloned["size"] > 0
    assert listing(mountpoint(h.docker, "twin"), mtime_ns=exact(h)) == listing(
        mountpoint(h.docker, "orig"), mtime_ns=exact(h))
    before = listing(mountpoint(h.docker, "twin"))
    code, msg = await h.error("clone", {"source": "orig", "target": "twin"})
    assert code == "conflict" and "not empty" in msg
    assert listing(mountpoint(h.docker, "twin")) == before  # a refused target is left untouched


async def test_restore_into_a_non_empty_volume_needs_overwrite_which_leaves_nothing_over(
    any_path_host: Host,
) -> None:
    h = any_path_host
    await h.ok("create", {"name": "app1"})
    (mountpoint(h.docker, "app1") / "v1.txt").write_text("version 1")
    rec = await h.ok("backup", {"volume": "app1", "compression": "gzip"})
    (mountpoint(h.docker, "app1") / "v2-only.txt").write_text("later")
    code, msg = await h.error("restore", {"backup_id": rec["backup_id"], "volume": "app1"})
    assert code == "conflict" and "overwrite" in msg
    assert (mountpoint(h.docker, "app1") / "v2-only.txt").exists()
    await h.ok("restore", {"backup_id": rec["backup_id"], "volume": "app1", "overwrite": True})
    assert sorted(p.name for p in mountpoint(h.docker, "app1").iterdir()) == ["v1.txt"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_a_corrupt_backup_is_refused_before_anything_is_written(any_path_host: Host, damage: str) -> None:
    h = any_path_host
    await h.ok("create", {"name": "safe1"})
    (mountpoint(h.docker, "safe1") / "a").write_bytes(b"x" * 100_000)
    rec = await h.ok("backup", {"volume": "safe1", "compression": "none"})
    stored = Path(rec["location"])
    data = bytearray(stored.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    stored.write_bytes(bytes(data))
    (mountpoint(h.docker, "safe1") / "a").write_bytes(b"current")
    code, msg = await h.error("restore", {"backup_id": rec["backup_id"], "volume": "safe1", "overwrite": True})
    assert code == "corrupt" and rec["backup_id"] in msg and "nothing was written" in msg
    assert (mountpoint(h.docker, "safe1") / "a").read_bytes() == b"current"
    code, _ = await h.error("restore", {"backup_id": rec["backup_id"], "volume": "fresh1"})
    assert code == "corrupt"
    assert "fresh1" not in h.docker.docker("volume", "ls", "-q").split()


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
async def test_a_backup_is_a_standard_tar_that_restores_by_hand(host: Host, compression: str, tmp_path) -> None:
    await host.ok("create", {"name": "open1"})
    src = mountpoint(host.docker, "open1")
    fill_tricky(src)
    rec = await host.ok("backup", {"volume": "open1", "compression": compression})
    out = tmp_path / "by-hand"
    out.mkdir()
    unpack = {"zstd": "zstd -dc", "gzip": "gzip -dc", "none": "cat"}[compression]
    subprocess.run(f"{unpack} '{rec['location']}' | tar -xpf - --numeric-owner -C '{out}'", shell=True, check=True)
    assert listing(out) == listing(src)


async def test_backups_lists_newest_first_and_keep_prunes_older_ones(host: Host) -> None:
    await host.ok("create", {"name": "kv1"})
    ids = [(await host.ok("backup", {"volume": "kv1", "compression": "none"}))["backup_id"] for _ in range(3)]
    listed = [b["backup_id"] for b in (await host.ok("backups", {"volume": "kv1"}))["backups"]]
    assert listed == ids[::-1]
    newest = await host.ok("backup", {"volume": "kv1", "compression": "none", "keep": 2})
    listed = [b["backup_id"] for b in (await host.ok("backups", {"volume": "kv1"}))["backups"]]
    assert listed == [newest["backup_id"], ids[2]]


async def test_forget_deletes_the_backup_and_its_file(host: Host) -> None:
    await host.ok("create", {"name": "fg1"})
    rec = await host.ok("backup", {"volume": "fg1"})
    assert await host.ok("forget", {"backup_id": rec["backup_id"]}) == {"backup_id": rec["backup_id"],
                                                                         "forgotten": True}
    assert not Path(rec["location"]).exists()
    assert (await host.ok("backups", {"volume": "fg1"}))["backups"] == []
    code, _ = await host.error("forget", {"backup_id": rec["backup_id"]})
    assert code == "not_found"
    code, _ = await host.error("restore", {"backup_id": rec["backup_id"], "volume": "x1"})
    assert code == "not_found"


async def test_backup_of_a_missing_volume_is_not_found(host: Host) -> None:
    code, _ = await host.error("backup", {"volume": "ghost"})
    assert code == "not_found"


async def test_remove_with_backup_first_backs_up_then_removes(host: Host) -> None:
    await host.ok("create", {"name": "last1"})
    (mountpoint(host.docker, "last1") / "keep.txt").write_text("precious")
    out = await host.ok("remove", {"name": "last1", "backup_first": True})
    assert out["removed"] is True and out["backup"]["volume"] == "last1"
    assert "last1" not in host.docker.docker("volume", "ls", "-q").split()
    await host.ok("restore", {"backup_id": out["backup"]["backup_id"], "volume": "last1"})
    assert (mountpoint(host.docker, "last1") / "keep.txt").read_text() == "precious"


async def test_restore_into_a_volume_a_running_container_uses_is_in_use(host: Host) -> None:
    from .stack import BUSYBOX_IMAGE

    await host.ok("create", {"name": "busy1"})
    rec = await host.ok("backup", {"volume": "busy1"})
    host.docker.docker("run", "-d", "--name", "runner", "--network", "none", "-v", "busy1:/d", BUSYBOX_IMAGE,
                       "sleep", "60")
    code, msg = await host.error("restore", {"backup_id": rec["backup_id"], "volume": "busy1", "overwrite": True})
    assert code == "in_use" and "runner" in msg


async def test_a_restore_that_fails_half_way_leaves_no_partial_content(any_path_host: Host) -> None:
    """A backup whose bytes match its record but whose tar is broken (made by a buggy tool, say)."""
    import hashlib
    import json
    import subprocess as sp

    h = any_path_host
    await h.ok("create", {"name": "half1"})
    (mountpoint(h.docker, "half1") / "old.txt").write_text("before")
    rec = await h.ok("backup", {"volume": "half1"})
    stored = Path(rec["location"])
    good_tar = sp.run(["zstd", "-dc", str(stored)], capture_output=True, check=True).stdout
    broken = sp.run(["zstd", "-q", "-c"], input=good_tar[:1024] + b"\x00garbage" * 4096, capture_output=True,
                    check=True).stdout
    stored.write_bytes(broken)
    record = stored.with_name(f"{rec['backup_id']}.json")
    meta = json.loads(record.read_text())
    meta.update(sha256=hashlib.sha256(broken).hexdigest(), stored_size=len(broken))
    record.write_text(json.dumps(meta))
    reply = await h.req("restore", {"backup_id": rec["backup_id"], "volume": "half1", "overwrite": True})
    assert not reply.ok
    assert list(mountpoint(h.docker, "half1").iterdir()) == []
    reply = await h.req("restore", {"backup_id": rec["backup_id"], "volume": "half2"})
    assert not reply.ok
    assert "half2" not in h.docker.docker("volume", "ls", "-q").split()

"""A restore writes no more than its record says, and never more than the volume's file system has free.

The attack (issue 14, case 3): a host's agent identity puts a few KB of zstd in its own shared bucket, a tar of
one large file of zeros, with a catalog record claiming `size: 10240`, and asks another host to restore it.
The archives here are real bombs (GNU-compatible tar, zstd), planted the way `test_hostile_archives` plants its
archives: in the local store as this host or another host wrote it, and in the shared store by host `elsewhere`
with its own credentials. Each restore must answer `corrupt` naming the sizes, leave the target as it was, and
the agent must go on working. A target whose file system is a small tmpfs proves the bound held while the
restore ran: had more been written, tar would have hit ENOSPC (`unavailable`), not the bound (`corrupt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backup.bounds import MARGIN
from agent.backup.members import check_members
from agent.backup.pipes import pump
from agent.errors import Corrupt
from volumectl.client import AgentClient

from .conftest import ARCHIVE_HOST_ID, Host
from .identities import Identities
from .stack import Dockerd
from .test_hostile_archives import FOREIGN, into_local_store, into_shared_store, record
from .volfiles import mountpoint

MiB = 1 << 20
BOMB = 256 * MiB
"""What the bomb unpacks to: the tar stream of one file of zeros (it is stored in about 10 KB)."""
CLAIMED = 10240
"""What its record says: one tar record."""
SMALL = 8 * MiB
"""A target's whole file system, in the tests that give it one."""


def bomb(tmp: Path, size: int = BOMB) -> bytes:
    """A zstd tar stream: `./`, then one file of `size` zero bytes; streamed through zstd, never held whole."""
    root = tarfile.TarInfo("./")
    root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
    zeros = tarfile.TarInfo("zeros")
    zeros.size, zeros.mode, zeros.mtime = size, 0o644, 1_700_000_000
    head = root.tobuf(tarfile.PAX_FORMAT) + zeros.tobuf(tarfile.PAX_FORMAT)
    stream = len(head) + size + (-size % 512) + 1024
    tail = bytes(-size % 512 + 1024 + (-stream % 10240))
    out = tmp / f"bomb-{size}.tar.zst"
    with open(out, "wb") as f:
        zstd = subprocess.Popen(["zstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=f)
        assert zstd.stdin is not None
        zstd.stdin.write(head)
        chunk = bytes(MiB)
        for at in range(0, size, MiB):
            zstd.stdin.write(chunk[: min(MiB, size - at)])
        zstd.stdin.write(tail)
        zstd.stdin.close()
        assert zstd.wait() == 0
    return out.read_bytes()


@contextlib.contextmanager
def small_file_system(path: Path, size: int = SMALL) -> Iterator[None]:
    """A tmpfs of `size` over `path` (a volume's directory), as if the volumes' disk were that small."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def small_volume(host: Host, name: str) -> Iterator[Path | None]:
    """An empty volume on a file system of `SMALL` bytes: its directory (yielded) under a tmpfs of that size; or,
    through the archive API, a tmpfs volume (Docker mounts it for each use: a restore cut short is undone by
    making the volume anew, which a tmpfs mounted over its directory would stop), yielding None."""
    if host.id == ARCHIVE_HOST_ID:
        host.docker.docker("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt",
                           f"o=size={SMALL}", name)
        yield None
        return
    host.docker.docker("volume", "create", name)
    path = mountpoint(host.docker, name)
    with small_file_system(path):
        yield path


def _bid(name: str, host: Host) -> str:
    return f"{name}.20261205T000000Z.b{host.id.replace('-', '')}"


async def _still_works(host: Host) -> None:
    """The agent answers and writes volumes after the refusal."""
    assert (await host.req("create", {"name": "after-bomb"})).ok
    assert (await host.req("remove", {"name": "after-bomb"})).ok


def _refused_for_size(message: str) -> None:
    assert str(CLAIMED) in message and "more than" in message, message


# The stream bound itself: exact, in the kernel, nothing past it handed on.


@pytest.mark.parametrize(("offered", "limit"), [(0, 10), (10, 10), (11, 10), (3 * MiB + 7, 3 * MiB + 7),
                                                 (3 * MiB + 8, 3 * MiB + 7), (5 * MiB, 1)])
async def test_pump_moves_at_most_the_limit_and_says_whether_more_was_offered(offered: int, limit: int,
                                                                            tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(offered))
    r, w = os.pipe()
    with open(src, "rb") as f:
        task = pump(os.dup(f.fileno()), w, limit)
        with os.fdopen(r, "rb") as reader:
            got = asyncio.create_task(asyncio.to_thread(reader.read))
            moved = await task
            received = await got
    assert received == src.read_bytes()[:limit]
    assert moved == (offered if offered <= limit else limit + 1)


async def test_the_member_check_refuses_a_bomb_before_unpacking_it_all(tmp_path: Path) -> None:
    data = bomb(tmp_path)
    (tmp_path / "b").write_bytes(data)
    with pytest.raises(Corrupt) as refused:
        await check_members(tmp_path / "b", record("bomb.1.x", data, "local", "", "zstd", size=CLAIMED))
    _refused_for_size(refused.value.message)
    assert f"{CLAIMED + MARGIN}" in refused.value.message.replace(",", "")


# The attack, on both data paths, from both stores.


@pytest.mark.integration
@pytest.mark.parametrize(("store", "made_by"), [("local", "elsewhere"), ("local", "self"), ("nats", "elsewhere")])
async def test_a_decompression_bomb_is_refused_as_corrupt_and_the_new_volume_goes_again(
    any_path_host: Host, store: str, made_by: str, identities: Identities, tmp_path: Path
) -> None:
    """From another host (its member list is read first) and from this host's own local store (restored
    without that pass: bounded while it is extracted)."""
    host = any_path_host
    data = bomb(tmp_path)
    backup_id = _bid(f"bomb-{store}-{made_by}", host)
    if store == "local":
        into_local_store(host, backup_id, data, "zstd", host.id if made_by == "self" else FOREIGN, size=CLAIMED)
    else:
        await into_shared_store(host, identities, backup_id, data, "zstd", size=CLAIMED)
    code, message = await host.error("restore", {"backup_id": backup_id, "volume": "bombed"})
    assert code == "corrupt", message
    _refused_for_size(message)
    assert "bombed" not in host.docker.docker("volume", "ls", "-q").split()
    assert not (host.agent.data_dir / "restoring" / "bombed.json").exists()
    await _still_works(host)


@pytest.mark.integration
@pytest.mark.parametrize("made_by", ["elsewhere", "self"])
async def test_a_bomb_never_fills_the_targets_file_system_and_the_target_is_left_as_it_was(
    any_path_host: Host, made_by: str, tmp_path: Path
) -> None:
    """The target's file system holds 8 MiB, the bomb 256 MiB: `corrupt` (the bound), never ENOSPC (the disk)."""
    host = any_path_host
    data = bomb(tmp_path)
    backup_id = _bid(f"bomb-small-{made_by}", host)
    into_local_store(host, backup_id, data, "zstd", host.id if made_by == "self" else FOREIGN, size=CLAIMED)
    with small_volume(host, "small") as path:
        code, message = await host.error("restore", {"backup_id": backup_id, "volume": "small"})
        assert code == "corrupt", message
        _refused_for_size(message)
        assert "small" in host.docker.docker("volume", "ls", "-q").split()
        if path is not None:
            assert list(path.iterdir()) == []
            st = os.statvfs(path)
            assert (st.f_blocks - st.f_bfree) * st.f_frsize <= 64 * 1024  # tmpfs's own few pages at most
    await _still_works(host)


@pytest.mark.integration
async def test_another_hosts_agent_cannot_fill_this_host_with_a_bomb(
    make_agent: Any, dockerd: Dockerd, client: AgentClient, identities: Identities, tmp_path: Path
) -> None:
    """The fleet case as reported: `elsewhere`'s agent plants the bomb in its own bucket and asks this host,
    signing as itself (role `agent` may run `restore`, for migrate). An agent of the test's own: its policy file
    names `elsewhere`'s key (made before it starts)."""
    identities.agent(FOREIGN)
    a = make_agent()
    host = Host(a.host_id, dockerd, a, client)
    data = bomb(tmp_path)
    backup_id = _bid("fleet-bomb", host)
    await into_shared_store(host, identities, backup_id, data, "zstd", size=CLAIMED)
    foreign = await identities.connect([a.nats_url], FOREIGN)
    try:
        reply = await foreign.request(host.id, "restore", {"backup_id": backup_id, "volume": "fleet-bombed"},
                                      timeout=60)
    finally:
        await foreign.close()
    assert not reply.ok and reply.error is not None, reply.result
    assert reply.error.code == "corrupt", reply.error.message
    _refused_for_size(reply.error.message)
    assert "fleet-bombed" not in host.docker.docker("volume", "ls", "-q").split()
    await _still_works(host)


# Free space: refused before anything is touched.


@pytest.mark.integration
async def test_a_backup_larger_than_the_free_space_is_refused_before_the_target_is_touched(
    any_path_host: Host, tmp_path: Path
) -> None:
    """An honest backup of 16 MiB into a volume whose file system has 8 MiB: `unavailable` naming both sizes,
    and the target (restored over, `overwrite`) keeps its content."""
    host = any_path_host
    size = 16 * MiB
    data = bomb(tmp_path, size)
    stream = subprocess.run(["zstd", "-q", "-d", "-c"], input=data, capture_output=True, check=True).stdout
    backup_id = _bid("too-big", host)
    into_local_store(host, backup_id, data, "zstd", host.id, size=len(stream))
    host.docker.docker("volume", "create", "full")
    path = mountpoint(host.docker, "full")
    with small_file_system(path):
        (path / "precious").write_text("mine\n")
        code, message = await host.error("restore", {"backup_id": backup_id, "volume": "full", "overwrite": True})
        assert code == "unavailable", message
        assert "16.0 MiB" in message and "free" in message, message
        assert [p.name for p in path.iterdir()] == ["precious"]
        assert (path / "precious").read_text() == "mine\n"
    await _still_works(host)

"""The backup path's rules, with fakes behind the seams: retention (`keep`), what a failed restore or clone
undoes, and how stores are chosen and searched.

No dockerd, no NATS: FakeEngine gives each volume a real directory in tmp (so GNU tar does the work on real
files), the local store is the real one in tmp, and a MemoryStore plays the shared `nats` store.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from datetime import datetime
from pathlib import Path

import pytest

from agent.backup.local_store import LocalStore
from agent.backup.stores import new_backup_id
from agent.errors import AgentError, Conflict, InUse, Invalid, NotFound
from agent.typing import BackupStore
from contracts import BackupRecord, BackupRequest, BackupsRequest, CloneRequest, ForgetRequest, RestoreRequest

from .fakes import FakeAgent, FakeEngine, MemoryStore, RecordingSink, fake_agent

pytestmark = pytest.mark.timeout(10)


def tar_of(files: dict[str, bytes]) -> bytes:
    """A tar stream as the agent writes them: entries relative to the volume root, `./` first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo("./")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD = tar_of({"hello.txt": b"hello"})
# Whole first file, then the archive ends inside the second: tar writes `first.txt`, then fails.
BROKEN = tar_of({"first.txt": b"1" * 1000, "second.bin": b"2" * 200_000})[:100_000]


async def put_backup(store: BackupStore, volume: str, host: str, created_at: str, data: bytes = GOOD
                     ) -> BackupRecord:
    """A complete backup in `store` (through its own begin/commit), as `host` would have made it."""
    backup_id = new_backup_id(volume, datetime.fromisoformat(created_at))
    writer = await store.begin(backup_id, volume, "none")
    writer.write(data)
    record = BackupRecord(
        backup_id=backup_id, volume=volume, host=host, trigger="request", size=len(data),
        stored_size=writer.written, sha256=writer.sha256.hexdigest(), compression="none", store=store.name,
        location=writer.location, created_at=created_at, duration_s=0.0, stopped_containers=[],
    )
    await store.commit(writer, record)
    return record


def at(hour: int, year: int = 2020) -> str:
    return f"{year}-01-01T{hour:02d}:00:00+00:00"


@pytest.fixture
def agent(tmp_path: Path) -> FakeAgent:
    """Host h1 with the real local store and a `nats` store, volumes as directories under tmp."""
    return fake_agent(FakeEngine(tmp_path / "volumes"), RecordingSink(), LocalStore(tmp_path / "local"),
                      MemoryStore("nats", tmp_path / "nats"), host="h1")


async def volume_with(agent: FakeAgent, name: str, files: dict[str, bytes], **spec: object) -> Path:
    """A volume holding `files`; its directory."""
    v = await agent.engine.volume_create({"Name": name, **spec})
    path = Path(v["Mountpoint"])
    for file, data in files.items():
        (path / file).write_bytes(data)
    return path


def contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def events_of(agent: FakeAgent) -> list[tuple[str, str]]:
    assert isinstance(agent.sink, RecordingSink)
    return agent.sink.events


# Retention


async def test_keep_prunes_only_this_hosts_older_backups_of_that_volume_in_that_store(agent: FakeAgent) -> None:
    local, nats = agent.stores["local"], agent.stores["nats"]
    mine = [await put_backup(local, "v1", "h1", at(h)) for h in (1, 2, 3)]
    theirs = [await put_backup(local, "v1", "h2", at(h)) for h in (0, 4)]  # one newer than all of mine
    other_volume = await put_backup(local, "v2", "h1", at(0))
    other_store = await put_backup(nats, "v1", "h1", at(0))
    await volume_with(agent, "v1", {"data.txt": b"now"})

    made = await agent.backups.backup(BackupRequest(volume="v1", compression="none", keep=2))

    kept = {r.backup_id for r in await local.catalog()} | {r.backup_id for r in await nats.catalog()}
    assert kept == {made.backup_id, mine[2].backup_id, *(r.backup_id for r in theirs), other_volume.backup_id,
                    other_store.backup_id}
    assert not Path(mine[0].location).exists() and not Path(mine[1].location).exists()


async def test_keep_never_prunes_the_backup_just_made(agent: FakeAgent) -> None:
    local = agent.stores["local"]
    from_the_future = await put_backup(local, "v1", "h1", at(1, year=2999))
    await volume_with(agent, "v1", {"data.txt": b"now"})

    made = await agent.backups.backup(BackupRequest(volume="v1", compression="none", keep=1))

    assert made.backup_id in {r.backup_id for r in await local.catalog("v1")}
    assert Path(made.location).exists()
    assert from_the_future.backup_id not in {r.backup_id for r in await local.catalog("v1")}


# What a failed restore or clone undoes


def test_the_broken_archive_writes_a_file_before_tar_fails(tmp_path: Path) -> None:
    """The premise of the undo tests below: extracting BROKEN writes into the volume, then fails."""
    out = subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=BROKEN, capture_output=True, check=False)
    assert out.returncode != 0 and (tmp_path / "first.txt").read_bytes() == b"1" * 1000


async def test_a_restore_that_fails_removes_the_volume_it_created(agent: FakeAgent) -> None:
    rec = await put_backup(agent.stores["local"], "src", "h1", at(1), data=BROKEN)

    with pytest.raises(AgentError, match="tar exited"):
        await agent.restores.restore(RestoreRequest(backup_id=rec.backup_id, volume="new1"))

    assert "new1" not in agent.engine.volumes
    assert agent.engine.calls.count("create:new1") == 1 and agent.engine.calls.count("remove:new1") == 1
    assert events_of(agent) == [("restore.started", "new1"), ("restore.failed", "new1")]


async def test_a_restore_that_fails_into_an_existing_volume_leaves_it_empty_and_in_place(agent: FakeAgent) -> None:
    rec = await put_backup(agent.stores["local"], "src", "h1", at(1), data=BROKEN)
    path = await volume_with(agent, "old1", {"old.txt": b"before"})

    with pytest.raises(AgentError, match="tar exited"):
        await agent.restores.restore(RestoreRequest(backup_id=rec.backup_id, volume="old1", overwrite=True))

    assert "old1" in agent.engine.volumes and contents(path) == {}  # neither the old files nor half the backup
    assert "remove:old1" not in agent.engine.calls


@pytest.mark.parametrize(("user", "overwrite", "error"), [(None, False, Conflict), ("running", True, InUse)],
                         ids=["not-empty", "running-user-even-with-overwrite"])
async def test_a_refused_restore_target_is_never_touched(
    agent: FakeAgent, user: str | None, overwrite: bool, error: type[AgentError]
) -> None:
    rec = await put_backup(agent.stores["local"], "src", "h1", at(1))
    path = await volume_with(agent, "t1", {"mine.txt": b"precious"})
    if user:
        agent.engine.add_container("app", ["t1"], state=user)

    with pytest.raises(error):
        await agent.restores.restore(RestoreRequest(backup_id=rec.backup_id, volume="t1", overwrite=overwrite))

    assert contents(path) == {"mine.txt": b"precious"}
    assert [c for c in agent.engine.calls if c.endswith(":t1") and not c.startswith("inspect:")] == ["create:t1"]


async def test_a_clone_that_fails_removes_the_target_it_created_and_leaves_the_source(agent: FakeAgent) -> None:
    # Mounted on demand: read through the archive API, which the fake Engine fails.
    await agent.engine.volume_create({"Name": "src", "DriverOpts": {"type": "tmpfs", "device": "tmpfs"}})

    with pytest.raises(AgentError, match="archive API"):
        await agent.restores.clone(CloneRequest(source="src", target="copy1"))

    assert "copy1" not in agent.engine.volumes and agent.engine.calls.count("remove:copy1") == 1
    assert "src" in agent.engine.volumes and "remove:src" not in agent.engine.calls
    helpers = [c for c in agent.engine.calls if c.startswith("container_")]
    assert len(helpers) == 2 and helpers[1].startswith("container_remove:")  # the helper went too


async def test_a_clone_onto_a_volume_with_content_is_refused_and_leaves_it_alone(agent: FakeAgent) -> None:
    await volume_with(agent, "src", {"new.txt": b"from source"})
    path = await volume_with(agent, "t2", {"keep.txt": b"mine"})

    with pytest.raises(Conflict, match="not empty"):
        await agent.restores.clone(CloneRequest(source="src", target="t2"))
    with pytest.raises(Conflict, match="onto itself"):
        await agent.restores.clone(CloneRequest(source="src", target="src"))

    assert contents(path) == {"keep.txt": b"mine"} and "remove:t2" not in agent.engine.calls


# Stores: chosen by name, searched by id, listed together


async def test_an_unknown_store_is_invalid_with_the_names_the_host_has_and_nothing_starts(tmp_path: Path) -> None:
    agent = fake_agent(FakeEngine(tmp_path / "volumes"), RecordingSink(), LocalStore(tmp_path / "local"))
    await volume_with(agent, "v1", {"data.txt": b"x"})

    with pytest.raises(Invalid) as refused:
        await agent.backups.backup(BackupRequest(volume="v1", store="offsite"))

    assert refused.value.code == "invalid"
    assert refused.value.message.startswith("This host has no backup store named 'offsite'; it has local (")
    assert events_of(agent) == [] and not (tmp_path / "local").exists()


async def test_a_backup_is_found_by_id_in_whichever_store_holds_it(agent: FakeAgent, tmp_path: Path) -> None:
    local, nats = agent.stores["local"], agent.stores["nats"]
    shared = await put_backup(nats, "v1", "h2", at(1))  # another host's, in the shared store only
    own = await put_backup(local, "v1", "h1", at(2))

    restored = await agent.restores.restore(RestoreRequest(backup_id=shared.backup_id, volume="r1"))
    assert restored.created_volume and contents(tmp_path / "volumes" / "r1") == {"hello.txt": b"hello"}

    await agent.backups.forget(ForgetRequest(backup_id=shared.backup_id))
    assert await nats.catalog() == [] and [r.backup_id for r in await local.catalog()] == [own.backup_id]
    with pytest.raises(NotFound) as missing:
        await agent.backups.forget(ForgetRequest(backup_id=shared.backup_id))
    assert missing.value.message == f"Backup {shared.backup_id!r} is in none of this agent's stores (local, nats)."


async def test_the_catalog_is_every_stores_newest_first_and_made_here_keeps_this_hosts_own(agent: FakeAgent) -> None:
    local, nats = agent.stores["local"], agent.stores["nats"]
    a1 = await put_backup(local, "v1", "h1", at(1))
    b2 = await put_backup(nats, "v1", "h2", at(2))
    a3 = await put_backup(local, "v1", "h1", at(3))
    a4 = await put_backup(nats, "v1", "h1", at(4))
    other = await put_backup(local, "v2", "h1", at(5))

    async def listed(**req: object) -> list[str]:
        return [r.backup_id for r in (await agent.backups.backups(BackupsRequest(**req))).backups]

    assert await listed() == [other.backup_id, a4.backup_id, a3.backup_id, b2.backup_id, a1.backup_id]
    assert await listed(volume="v1") == [a4.backup_id, a3.backup_id, b2.backup_id, a1.backup_id]
    assert await listed(volume="v1", made_here=True) == [a4.backup_id, a3.backup_id, a1.backup_id]

"""Restic repositories as named stores, against real backends on loopback (a directory, REST through `rclone serve
restic`, SFTP through a private sshd), a real dockerd and NATS: backup, incremental re-backup, exact restore,
another host's hostile snapshot, migrate, cross-host deduplication, and the stores file's refusals."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from contracts import BackupRecord, ResticSnapshot, Subjects, catalog_key
from volumectl.client import AgentClient

from .conftest import Host
from .identities import Identities
from .restic_backends import Backends, restic_env, write_stores
from .stack import Agent, Dockerd
from .volfiles import fill_tricky, listing, mountpoint

pytestmark = pytest.mark.integration

KINDS = ["local", "rest", "sftp"]
# A store may not be named `local` (built in): the directory repository's store is `dir`.
STORE = {"local": "dir", "rest": "rest", "sftp": "sftp"}


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    b = Backends.start(tmp_path_factory.mktemp("restic"))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def stores(backends: Backends) -> dict[str, dict[str, object]]:
    """One repository per backend for the session (made by the first agent that uses it: `init = true`)."""
    return {STORE[k]: backends.store(k, f"session-{k}") for k in KINDS}


@pytest.fixture(scope="session")
def stores_file(backends: Backends, stores: dict[str, dict[str, object]]) -> Path:
    return write_stores(backends.root / "stores.toml", stores)


def _host(agent: Agent, dockerd: Dockerd, client: AgentClient) -> Host:
    return Host(agent.host_id, dockerd, agent, client)


@pytest.fixture
def restic_host(make_agent: Any, stores_file: Path, dockerd: Dockerd, client: AgentClient) -> Host:
    """An agent of the test's own that defines the session's restic stores."""
    return _host(make_agent(extra=["--ack-wait", "2", "--stores", str(stores_file)]), dockerd, client)


def restic(entry: dict[str, object], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    argv, env = restic_env(entry)
    return subprocess.run([*argv, *args], input=stdin, capture_output=True, env=env, check=True)


def ensure_repository(entry: dict[str, object]) -> None:
    """The store's repository, made now unless an agent made it already (`init = true`)."""
    argv, env = restic_env(entry)
    if subprocess.run([*argv, "cat", "config"], capture_output=True, env=env, check=False).returncode != 0:
        restic(entry, "init")


def snapshot_ids(entry: dict[str, object]) -> set[str]:
    return {s["short_id"] for s in json.loads(restic(entry, "snapshots", "--json").stdout)}


@pytest.mark.parametrize("kind", KINDS)
async def test_backup_rebackup_and_exact_restore_through_each_backend(
    restic_host: Host, stores: dict[str, dict[str, object]], kind: str
) -> None:
    """The first backup reads every file; the second reads none (restic's files_unmodified); the restore reproduces
    the volume exactly (bytes, modes, owners, nanosecond times, symlinks, hard links, odd names)."""
    h, store = restic_host, STORE[kind]
    await h.ok("create", {"name": "data", "labels": {"app": "db"}})
    src = mountpoint(h.docker, "data")
    fill_tricky(src)
    first = await h.ok("backup", {"volume": "data", "store": store})
    snap = first["restic"]
    assert first["store"] == store and first["location"] == f"restic:{store}/{snap['snapshot_id']}"
    assert snap["source"] == "directory" and snap["files_new"] == 6 and "files_unmodified" not in snap  # 0: omitted
    assert first["size"] == snap["total_bytes_processed"] > 50 * 1024 * 1024  # the sparse file's length
    assert snap["entries"] == 10 and snap["root_mode"] == 0o700 and snap["root_uid"] == 999
    assert 0 < first["stored_size"] == snap["data_added"] and "repository" not in str(first["location"])

    again = await h.ok("backup", {"volume": "data", "store": store})
    assert again["restic"]["parent"] == snap["snapshot_id"]
    assert "files_new" not in again["restic"] and "files_changed" not in again["restic"]
    assert again["restic"]["files_unmodified"] == snap["files_new"]  # not one file read again

    listed = await h.ok("backups", {"volume": "data"})
    assert [b["backup_id"] for b in listed["backups"]][:2] == [again["backup_id"], first["backup_id"]]

    restored = await h.ok("restore", {"backup_id": first["backup_id"], "volume": "copy"})
    assert restored["created_volume"] is True
    assert listing(mountpoint(h.docker, "copy")) == listing(src)
    assert (await h.ok("inspect", {"name": "copy"}))["labels"] == {"app": "db"}

    # forget runs `restic forget` (no prune): the snapshot is gone from the repository and the record from the list.
    await h.ok("forget", {"backup_id": first["backup_id"]})
    assert snap["snapshot_id"] not in snapshot_ids(stores[store])
    assert first["backup_id"] not in [b["backup_id"] for b in (await h.ok("backups", {"volume": "data"}))["backups"]]


async def test_a_volume_reached_through_the_archive_api_goes_in_as_a_tar_stream(
    make_agent: Any, stores_file: Path, dockerd: Dockerd, client: AgentClient
) -> None:
    h = _host(make_agent(extra=["--ack-wait", "2", "--stores", str(stores_file), "--data-path", "archive"]),
              dockerd, client)
    await h.ok("create", {"name": "arch"})
    src = mountpoint(h.docker, "arch")
    fill_tricky(src)
    rec = await h.ok("backup", {"volume": "arch", "store": "rest"})
    assert rec["restic"]["source"] == "tar" and rec["restic"]["path"] == "arch.tar" and rec["size"] > 300_000
    await h.ok("restore", {"backup_id": rec["backup_id"], "volume": "arch-copy"})
    # Docker's archive API writes whole seconds; everything else is exact.
    assert listing(mountpoint(h.docker, "arch-copy"), mtime_ns=False) == listing(src, mtime_ns=False)


async def test_another_hosts_snapshot_holding_a_device_is_refused_before_the_target_is_made(
    make_agent: Any, stores_file: Path, dockerd: Dockerd, client: AgentClient
) -> None:
    """Host `evil` backs up a volume holding a device node into the shared repository; this host's restore of it
    is refused (`restic restore` would make the device) and no volume is made."""
    evil = _host(make_agent(extra=["--stores", str(stores_file)], host_id=f"evil-{uuid.uuid4().hex[:6]}"),
                 dockerd, client)
    here = _host(make_agent(extra=["--stores", str(stores_file)]), dockerd, client)
    await evil.ok("create", {"name": "planted"})
    root = mountpoint(dockerd, "planted")
    (root / "innocent.txt").write_text("hello")
    (root / "sub").mkdir()
    os.mknod(root / "sub" / "mem", 0o666 | 0o020000, os.makedev(1, 1))  # /dev/mem
    rec = await evil.ok("backup", {"volume": "planted", "store": "dir"})
    code, msg = await here.error("restore", {"backup_id": rec["backup_id"], "volume": "victim"})
    assert code == "corrupt" and "character device" in msg and "'/sub/mem'" in msg
    assert "victim" not in dockerd.docker("volume", "ls", "-q").split()


async def test_migrate_goes_through_a_restic_store_both_hosts_define(
    make_agent: Any, stores_file: Path, dockerd: Dockerd, client: AgentClient, identities: Identities
) -> None:
    a_id, b_id = f"mig-a-{uuid.uuid4().hex[:6]}", f"mig-b-{uuid.uuid4().hex[:6]}"
    for host in (a_id, b_id):  # each key in the policy before either starts: A asks B to restore and digest
        identities.agent(host)
    a = _host(make_agent(extra=["--stores", str(stores_file)], host_id=a_id), dockerd, client)
    make_agent(extra=["--stores", str(stores_file)], host_id=b_id, data_dir=a.agent.data_dir.parent / "b")
    await a.ok("create", {"name": "moving"})
    (mountpoint(dockerd, "moving") / "f").write_bytes(os.urandom(100_000))
    moved = await a.ok("migrate", {"volume": "moving", "to": b_id, "target": "moved", "store": "sftp"})
    assert moved["target"] == "moved" and moved["size"] == 100_000
    assert listing(mountpoint(dockerd, "moved")) == listing(mountpoint(dockerd, "moving"))
    code, msg = await a.error("migrate", {"volume": "moving", "to": b_id, "target": "m2", "store": "local"})
    assert code == "invalid" and "only this host reads" in msg


async def test_two_hosts_backing_up_the_same_content_store_it_once(
    make_agent: Any, backends: Backends, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    entry = backends.store("local", f"dedup-{uuid.uuid4().hex[:6]}")
    stores_file = write_stores(tmp_path / "stores.toml", {"shared": entry})
    one = _host(make_agent(extra=["--stores", str(stores_file)], data_dir=tmp_path / "one"), dockerd, client)
    two = _host(make_agent(extra=["--stores", str(stores_file)], data_dir=tmp_path / "two"), dockerd, client)
    blob = os.urandom(8 << 20)
    for h, name in ((one, "v-one"), (two, "v-two")):
        await h.ok("create", {"name": name})
        (mountpoint(dockerd, name) / "big.bin").write_bytes(blob)
    first = await one.ok("backup", {"volume": "v-one", "store": "shared"})
    second = await two.ok("backup", {"volume": "v-two", "store": "shared"})
    assert first["stored_size"] > 8 << 20 and second["stored_size"] < 64 << 10  # the data is in already
    # Either host lists and restores the other's backup by its id.
    assert second["backup_id"] in [b["backup_id"] for b in (await one.ok("backups", {}))["backups"]]
    await one.ok("restore", {"backup_id": second["backup_id"], "volume": "from-two"})
    assert (mountpoint(dockerd, "from-two") / "big.bin").read_bytes() == blob


async def test_a_store_the_host_does_not_define_is_invalid_naming_those_it_has(restic_host: Host) -> None:
    await restic_host.ok("create", {"name": "vol1"})
    code, msg = await restic_host.error("backup", {"volume": "vol1", "store": "offsite"})
    assert code == "invalid"
    assert "no backup store named 'offsite'; it has local, nats, dir, rest, sftp" in msg


async def test_a_missing_repository_without_init_is_unavailable_naming_the_fix(
    make_agent: Any, backends: Backends, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    entry = backends.store("rest", f"absent-{uuid.uuid4().hex[:6]}", init=False)
    stores_file = write_stores(tmp_path / "stores.toml", {"absent": entry})
    h = _host(make_agent(extra=["--stores", str(stores_file)]), dockerd, client)
    await h.ok("create", {"name": "vol1"})
    code, msg = await h.error("backup", {"volume": "vol1", "store": "absent"})
    assert code == "unavailable" and "restic init" in msg and "init = true" in msg
    assert "127.0.0.1" not in msg  # the repository is named by its store, never by its URL


@pytest.mark.parametrize("loose", ["password_file", "env_file"])
def test_a_stores_file_naming_a_secret_others_can_read_is_refused_at_start(
    make_agent: Any, backends: Backends, tmp_path: Path, loose: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("AWS_ACCESS_KEY_ID=x\n" if loose == "env_file" else "pw\n")
    secret.chmod(0o644)
    entry = backends.store("local", "never", **{loose: str(secret)})
    stores_file = write_stores(tmp_path / "stores.toml", {"offsite": entry})
    a = make_agent(extra=["--stores", str(stores_file)], start=False)
    a.start(wait=False)
    assert a.wait(30) == 2
    assert f"its {loose} {secret} is readable by others (mode 644); chmod 600 it" in a.log()
    assert "AWS_ACCESS_KEY_ID" not in a.log()


async def test_restic_status_lines_become_progress_events_with_total_percent_and_eta(
    make_agent: Any, backends: Backends, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    """restic's status lines, once a second, become `backup.progress` events. The store's `limit_upload` (restic's
    --limit-upload, KiB/s) makes the backup last a few seconds, whatever the machine."""
    entry = backends.store("local", f"slow-{uuid.uuid4().hex[:6]}", limit_upload=32 * 1024)
    h = _host(make_agent(extra=["--stores", str(write_stores(tmp_path / "stores.toml", {"slow": entry}))]),
              dockerd, client)
    await h.ok("create", {"name": "slow"})
    (mountpoint(h.docker, "slow") / "random.bin").write_bytes(os.urandom(128 << 20))
    progress = await client.nc.subscribe(f"vol.evt.{h.id}.backup.progress")
    await client.nc.flush()
    pending = asyncio.create_task(h.req("backup", {"volume": "slow", "store": "slow"}, timeout=120))
    events = []
    while not pending.done():
        try:
            events.append(msgspec.json.decode((await progress.next_msg(timeout=1)).data))
        except TimeoutError:
            continue
    await progress.unsubscribe()
    reply = await pending
    assert reply.ok, reply.error
    assert reply.result is not None and reply.result["duration_s"] > 3  # the limit held restic back
    under_way = [e for e in events if e.get("bytes_total")]
    assert len(under_way) >= 2, events
    assert all(e["bytes_total"] == 128 << 20 and 0 <= e["percent"] <= 100 for e in under_way)
    assert any(e["bytes_done"] > 0 and e["percent"] > 0 for e in under_way)  # eta_s: when restic estimates it


def _crafted_tar(members: list[tuple[str, str, bytes]]) -> bytes:
    """A tar stream of (kind, name, data-or-link-target) members, as a hostile host would write it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("planted", ["symlink-escape", "bomb"])
async def test_a_hostile_snapshot_another_host_recorded_is_refused_and_writes_nothing(
    make_agent: Any, stores: dict[str, dict[str, object]], stores_file: Path, dockerd: Dockerd,
    client: AgentClient, identities: Identities, nats_server: Any, tmp_path: Path, planted: str,
) -> None:
    """Host `evil` holds the repository's key and its own NATS credentials: it writes a crafted tar into the
    repository with restic itself, and a record of it under its own key in the shared catalog. This host's restore
    refuses it before the target is touched: a member under a symlink that points out of the volume, or a stream
    far larger than its record says."""
    here = _host(make_agent(extra=["--stores", str(stores_file)]), dockerd, client)
    evil = f"evil-{uuid.uuid4().hex[:6]}"
    identities.agent(evil)
    outside = tmp_path / "outside"
    outside.mkdir()
    if planted == "symlink-escape":
        data = _crafted_tar([("symlink", "x", str(outside).encode()), ("file", "x/pwned", b"owned")])
        claimed = len(data)
    else:
        data = _crafted_tar([("file", "zeros", bytes(8 << 20))])
        claimed = 10_000
    entry = stores["rest"]
    ensure_repository(entry)
    summary = json.loads(restic(entry, "backup", "--json", "--host", evil, "--stdin", "--stdin-filename", "p.tar",
                                stdin=data).stdout.splitlines()[-1])
    repository = json.loads(restic(entry, "cat", "config").stdout)["id"]
    backup_id = f"planted.20261205T000000000000Z.{uuid.uuid4().hex[:6]}"
    record = BackupRecord(
        backup_id=backup_id, volume="planted", host=evil, trigger="request", size=claimed, stored_size=1,
        sha256="", compression="zstd", store="rest", location=f"restic:rest/{summary['snapshot_id']}",
        created_at="2026-12-05T00:00:00+00:00", duration_s=0.1, stopped_containers=[],
        restic=ResticSnapshot(snapshot_id=summary["snapshot_id"], repository_id=repository, source="tar",
                              path="p.tar"),
    )
    options = identities.options(evil)
    nc = await nats.connect(nats_server.url, **options)
    try:
        kv = await nc.jetstream().key_value(Subjects("vol").catalog_bucket)
        await kv.put(catalog_key(evil, backup_id), msgspec.json.encode(record))
    finally:
        await nc.close()

    code, msg = await here.error("restore", {"backup_id": backup_id, "volume": "victim"})
    assert code == "corrupt"
    assert ("under a symbolic link" in msg) if planted == "symlink-escape" else ("more than its record says" in msg)
    assert "nothing was written" in msg
    assert list(outside.iterdir()) == []
    assert "victim" not in dockerd.docker("volume", "ls", "-q").split()


async def test_a_restore_drill_of_a_restic_snapshot_passes_then_fails_on_a_corrupted_pack_file(
    make_agent: Any, backends: Backends, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    """A drill goes through the store like a restore: restic reads the snapshot back; once a pack file under the
    repository's `data/` is damaged, the drill fails (and says why) instead of passing on the record's word."""
    entry = backends.store("local", f"drill-{uuid.uuid4().hex[:8]}")
    stores_file = write_stores(tmp_path / "stores.toml", {"drill": entry})
    h = _host(make_agent(extra=["--ack-wait", "2", "--stores", str(stores_file)]), dockerd, client)
    await h.ok("create", {"name": "drilled"})
    (mountpoint(h.docker, "drilled") / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    made = await h.ok("backup", {"volume": "drilled", "store": "drill"})
    passed = await h.ok("verify", {"backup_id": made["backup_id"]})
    assert passed["backup_id"] == made["backup_id"] and "extraction" in passed["checked"]
    packs = [p for p in (Path(str(entry["repository"])) / "data").rglob("*") if p.is_file()]
    assert packs
    for pack in packs:  # flip bytes in the middle of every pack: the file's blobs no longer decrypt
        raw = bytearray(pack.read_bytes())
        for i in range(len(raw) // 3, len(raw) // 3 + 64):
            raw[i] ^= 0xFF
        os.chmod(pack, 0o600)
        pack.write_bytes(bytes(raw))
    code, message = await h.error("verify", {"backup_id": made["backup_id"]})
    assert code in ("corrupt", "unavailable") and message, (code, message)
    assert "Traceback" not in message

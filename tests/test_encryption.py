"""Encryption at rest (age) against a real dockerd and nats-server: a backup encrypted to recipients stores only
ciphertext, restores exactly on an agent started with one of their identities (`--age-identity`), through either
data path and from either store, and by hand with age, zstd and tar. Without an identity, or with another one, a
restore is refused before its target is made or touched, and leaves nothing behind.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .conftest import Host
from .stack import Agent
from .test_encryption_logic import Key
from .test_volumectl import ctl
from .volfiles import fill_tricky, listing, mountpoint

pytestmark = pytest.mark.integration

AGE_HEADER = b"age-encryption.org/v1\n"
MARKER = b"a line only the volume's plaintext holds: 7d1e5c0b-encryption-marker\n"

MakeAgent = Callable[..., Agent]


@pytest.fixture
def keys(tmp_path: Path) -> list[Key]:
    """Three identities, made with age-keygen as an operator would."""
    (tmp_path / "keys").mkdir()
    return [Key.make(tmp_path / "keys" / f"k{i}.txt") for i in (1, 2, 3)]


@pytest_asyncio.fixture
async def made(host: Host) -> AsyncIterator[list[str]]:
    """Backups the session's agent makes in a test, forgotten after it: the shared catalog is every test's."""
    ids: list[str] = []
    yield ids
    for backup_id in ids:
        await host.req("forget", {"backup_id": backup_id})


def host_of(h: Host, a: Agent) -> Host:
    """Another agent on the same Docker host, talked to with the same client."""
    return Host(a.host_id, h.docker, a, h.client)


def decrypting_agent(make_agent: MakeAgent, tmp_path: Path, key: Key, *extra: str) -> Agent:
    return make_agent(tmp_path / f"agent-{key.path.stem}", ["--ack-wait", "2", "--age-identity", str(key.path),
                                                            *extra])


def fill(h: Host, volume: str) -> Path:
    src = mountpoint(h.docker, volume)
    fill_tricky(src)
    (src / "notes.txt").write_bytes(MARKER * 200)
    return src


def volumes(h: Host) -> list[str]:
    return h.docker.docker("volume", "ls", "-q").split()


def assert_ciphertext(rec: dict[str, Any], recipients: list[str]) -> None:
    """The stored bytes are an age file for exactly `recipients`, and no plaintext."""
    assert rec["encrypted_to"] == recipients
    if rec["store"] == "local":
        assert rec["location"].endswith(".age")
        stored = Path(rec["location"]).read_bytes()
        assert stored.startswith(AGE_HEADER) and MARKER[:40] not in stored
        assert len(stored) == rec["stored_size"]
        assert subprocess.run(["sha256sum", rec["location"]], capture_output=True, text=True,
                              check=True).stdout.split()[0] == rec["sha256"]
        assert subprocess.run(["zstd", "-t", rec["location"]], capture_output=True).returncode != 0
        assert subprocess.run(["tar", "-tf", rec["location"]], capture_output=True).returncode != 0


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("data_path", ["auto", "archive"])
async def test_an_encrypted_backup_stores_ciphertext_and_restores_exactly_with_the_identity(
    host: Host, make_agent: MakeAgent, tmp_path: Path, keys: list[Key], data_path: str, compression: str
) -> None:
    h = host_of(host, decrypting_agent(make_agent, tmp_path, keys[0], "--data-path", data_path))
    await h.ok("create", {"name": "sec1", "labels": {"app": "db"}})
    src = fill(h, "sec1")
    rec = await h.ok("backup", {"volume": "sec1", "compression": compression, "encrypt_to": [keys[0].recipient]})
    assert_ciphertext(rec, [keys[0].recipient])
    restored = await h.ok("restore", {"backup_id": rec["backup_id"], "volume": "sec1-copy"})
    assert restored["created_volume"] is True and restored["size"] == rec["size"]
    exact = data_path == "auto"
    assert listing(mountpoint(h.docker, "sec1-copy"), mtime_ns=exact) == listing(src, mtime_ns=exact)
    assert (await h.ok("digest", {"volume": "sec1-copy"}))["sha256"] == (await h.ok("digest", {"volume": "sec1"}))[
        "sha256"]


async def test_backing_up_needs_no_key_and_restoring_without_an_identity_is_forbidden_before_anything_is_written(
    host: Host, keys: list[Key], made: list[str]
) -> None:
    """The session's agent has no --age-identity: it encrypts to a public key, and refuses to restore the backup."""
    await host.ok("create", {"name": "nokey1"})
    fill(host, "nokey1")
    for store in ("local", "nats"):
        rec = await host.ok("backup", {"volume": "nokey1", "store": store, "encrypt_to": [keys[0].recipient]})
        made.append(rec["backup_id"])
        assert_ciphertext(rec, [keys[0].recipient])
        code, msg = await host.error("restore", {"backup_id": rec["backup_id"], "volume": "nokey1-copy"})
        assert code == "forbidden", msg
        assert "--age-identity" in msg and "VOLUME_AGENT_AGE_IDENTITY" in msg and keys[0].recipient in msg
        assert "nothing was written" in msg.lower()
        assert "nokey1-copy" not in volumes(host)
    before = listing(mountpoint(host.docker, "nokey1"))
    code, _ = await host.error("restore", {"backup_id": rec["backup_id"], "volume": "nokey1", "overwrite": True})
    assert code == "forbidden" and listing(mountpoint(host.docker, "nokey1")) == before


async def test_a_wrong_identity_is_forbidden_before_the_target_is_touched_and_nothing_is_left(
    host: Host, make_agent: MakeAgent, tmp_path: Path, keys: list[Key], made: list[str]
) -> None:
    """The backup is in the shared store (so the restoring agent downloads it to its spool first)."""
    await host.ok("create", {"name": "wrong1"})
    fill(host, "wrong1")
    rec = await host.ok("backup", {"volume": "wrong1", "store": "nats", "encrypt_to": [keys[0].recipient]})
    made.append(rec["backup_id"])
    a = decrypting_agent(make_agent, tmp_path, keys[2])
    h = host_of(host, a)
    code, msg = await h.error("restore", {"backup_id": rec["backup_id"], "volume": "wrong1-copy"})
    assert code == "forbidden", msg
    assert str(keys[2].path) in msg and keys[0].recipient in msg and "nothing was written" in msg.lower()
    assert "wrong1-copy" not in volumes(h)
    await h.ok("create", {"name": "kept1"})
    (mountpoint(h.docker, "kept1") / "mine.txt").write_text("precious")
    code, _ = await h.error("restore", {"backup_id": rec["backup_id"], "volume": "kept1", "overwrite": True})
    assert code == "forbidden"
    assert [p.name for p in mountpoint(h.docker, "kept1").iterdir()] == ["mine.txt"]
    spool = a.data_dir / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []  # the downloaded ciphertext is gone too
    assert "AGE-SECRET-KEY" not in a.log() and keys[2].recipient in a.log()  # its public key only, said at start


async def test_a_backup_encrypted_to_two_recipients_restores_with_either_identity(
    host: Host, make_agent: MakeAgent, tmp_path: Path, keys: list[Key], made: list[str]
) -> None:
    await host.ok("create", {"name": "two1"})
    fill(host, "two1")
    recipients = [keys[0].recipient, keys[1].recipient]
    rec = await host.ok("backup", {"volume": "two1", "store": "nats", "encrypt_to": recipients})
    made.append(rec["backup_id"])
    assert rec["encrypted_to"] == recipients
    source = (await host.ok("digest", {"volume": "two1"}))["sha256"]
    for key in keys[:2]:
        h = host_of(host, decrypting_agent(make_agent, tmp_path, key))
        target = f"two1-{key.path.stem}"
        await h.ok("restore", {"backup_id": rec["backup_id"], "volume": target})
        assert (await h.ok("digest", {"volume": target}))["sha256"] == source


async def test_an_encrypted_backup_restores_by_hand_with_age_zstd_and_tar(
    host: Host, keys: list[Key], tmp_path: Path, made: list[str]
) -> None:
    """What docs/policies.md's "Encryption" section (restoring by hand) tells an operator to type, without the agent."""
    await host.ok("create", {"name": "hand1"})
    src = fill(host, "hand1")
    rec = await host.ok("backup", {"volume": "hand1", "encrypt_to": [keys[1].recipient]})
    made.append(rec["backup_id"])
    out = tmp_path / "by-hand"
    out.mkdir()
    subprocess.run(f"age -d -i '{keys[1].path}' '{rec['location']}' | zstd -d | "
                   f"tar -xpf - --numeric-owner --xattrs --xattrs-include='*' -C '{out}'", shell=True, check=True)
    assert listing(out) == listing(src)


async def test_a_recipient_with_a_typo_is_invalid_and_nothing_is_written(host: Host, keys: list[Key]) -> None:
    await host.ok("create", {"name": "typo1"})
    r = keys[0].recipient
    typo = r[:10] + ("q" if r[10] != "q" else "p") + r[11:]
    code, msg = await host.error("backup", {"volume": "typo1", "encrypt_to": [typo]})
    assert code == "invalid" and typo in msg
    assert (await host.ok("backups", {"volume": "typo1"}))["backups"] == []


async def test_volumectl_backs_up_encrypted_to_each_recipient_given(
    host: Host, keys: list[Key], made: list[str]
) -> None:
    await host.ok("create", {"name": "cli-enc"})
    out = ctl(host, "backup", "cli-enc", "--encrypt-to", keys[0].recipient, "--encrypt-to", keys[1].recipient)
    assert out.returncode == 0, out.stderr
    backup_id, location = out.stdout.split()[0], out.stdout.splitlines()[1]
    made.append(backup_id)
    assert "zstd + age" in out.stdout and location.endswith(".tar.zst.age")
    listed = (await host.ok("backups", {"volume": "cli-enc"}))["backups"]
    assert listed[0]["encrypted_to"] == [keys[0].recipient, keys[1].recipient]

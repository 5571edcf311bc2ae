"""Encryption at rest, with fakes behind the seams and the real age, tar and zstd: what is refused before anything is
written (bad recipients, no age, no or the wrong identity), how age's failures are named, and the start-up check
of `--age-identity`.

No dockerd, no NATS: FakeEngine gives each volume a real directory in tmp, the local store is the real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import agent.backup.encryption as encryption
from agent.backup.encryption import AGE_HEADER, AgeIdentity, encryptor
from agent.backup.local_store import LocalStore
from agent.backup.pipes import Procs
from agent.config import parse_args
from agent.errors import Corrupt, Forbidden, Invalid, ToolFailed, Unavailable
from contracts import BackupRecord, BackupRequest, RestoreRequest

from .fakes import FakeAgent, FakeEngine, RecordingSink, fake_agent

pytestmark = pytest.mark.timeout(20)

MARKER = b"plaintext-marker-of-the-encryption-tests\n"


@dataclass
class Key:
    """An age identity file (`age-keygen -o`) and its public key."""

    path: Path
    recipient: str

    @classmethod
    def make(cls, path: Path) -> Key:
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True)
        return cls(path, recipient.stdout.strip())


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return Key.make(tmp_path / "k1.txt")


@pytest.fixture
def other_key(tmp_path: Path) -> Key:
    return Key.make(tmp_path / "k2.txt")


def agent_with(tmp_path: Path, identity: Path | None) -> FakeAgent:
    return fake_agent(FakeEngine(tmp_path / "volumes"), RecordingSink(), LocalStore(tmp_path / "local"), host="h1",
                      age_identity=identity)


async def volume_with_marker(agent: FakeAgent, name: str) -> Path:
    v = await agent.engine.volume_create({"Name": name})
    path = Path(v["Mountpoint"])
    (path / "notes.txt").write_bytes(MARKER * 100)
    (path / "random.bin").write_bytes(os.urandom(200_000))
    return path


def contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
async def test_an_encrypted_backup_stores_only_ciphertext_and_restores_with_the_identity(
    tmp_path: Path, key: Key, compression: str
) -> None:
    agent = agent_with(tmp_path, key.path)
    src = await volume_with_marker(agent, "v1")
    rec = await agent.backups.backup(BackupRequest(volume="v1", compression=compression,  # type: ignore[arg-type]
                                                   encrypt_to=[key.recipient, key.recipient]))
    stored = Path(rec.location).read_bytes()
    assert rec.encrypted_to == [key.recipient] and rec.location.endswith(".age")
    assert stored.startswith(AGE_HEADER) and MARKER not in stored and len(stored) == rec.stored_size
    assert await LocalStore(tmp_path / "local").cleanup() == 0  # a start's clean-up knows `.tar.*.age` files
    await agent.restores.restore(RestoreRequest(backup_id=rec.backup_id, volume="v2"))
    assert contents(Path(agent.engine.volumes["v2"]["Mountpoint"])) == contents(src)


async def test_restoring_an_encrypted_backup_without_an_identity_is_forbidden_before_anything_is_made(
    tmp_path: Path, key: Key
) -> None:
    agent = agent_with(tmp_path, None)
    await volume_with_marker(agent, "v1")
    rec = await agent.backups.backup(BackupRequest(volume="v1", encrypt_to=[key.recipient]))  # no key needed
    with pytest.raises(Forbidden, match="--age-identity FILE \\(or VOLUME_AGENT_AGE_IDENTITY\\)"):
        await agent.restores.restore(RestoreRequest(backup_id=rec.backup_id, volume="v2"))
    assert "v2" not in agent.engine.volumes and "create:v2" not in agent.engine.calls


async def test_the_wrong_identity_is_forbidden_before_the_target_is_touched(
    tmp_path: Path, key: Key, other_key: Key
) -> None:
    maker = agent_with(tmp_path, None)
    await volume_with_marker(maker, "v1")
    rec = await maker.backups.backup(BackupRequest(volume="v1", encrypt_to=[key.recipient]))
    agent = agent_with(tmp_path, other_key.path)
    target = await volume_with_marker(agent, "t1")
    before = contents(target)
    with pytest.raises(Forbidden, match=f"holds no key for backup .* encrypted to {key.recipient}"):
        await agent.restores.restore(RestoreRequest(backup_id=rec.backup_id, volume="t1", overwrite=True))
    with pytest.raises(Forbidden):
        await agent.restores.restore(RestoreRequest(backup_id=rec.backup_id, volume="new1"))
    assert contents(target) == before and "new1" not in agent.engine.volumes


def _record(path: Path, recipients: list[str]) -> BackupRecord:
    data = path.read_bytes()
    return BackupRecord(backup_id="x.1.y", volume="x", host="h", trigger="request", size=0, stored_size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), compression="none", store="local",
                        location=str(path), created_at="2026-01-01T00:00:00+00:00", duration_s=0.0,
                        stopped_containers=[], encrypted_to=recipients)


async def test_the_probe_tells_a_foreign_key_from_bytes_that_are_no_age_file(
    tmp_path: Path, key: Key, other_key: Key
) -> None:
    big = tmp_path / "big.age"
    subprocess.run(f"head -c 5000000 /dev/urandom | age -r {key.recipient} > {big}", shell=True, check=True)
    await AgeIdentity(key.path).probe(big, _record(big, [key.recipient]))  # 5 MB: decrypts one chunk and stops
    with pytest.raises(Forbidden, match=str(other_key.path)):
        await AgeIdentity(other_key.path).probe(big, _record(big, [key.recipient]))
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(1000))  # a zstd frame's magic, not age
    with pytest.raises(Corrupt, match="cannot be decrypted"):
        await AgeIdentity(key.path).probe(junk, _record(junk, [key.recipient]))


async def test_a_failing_age_is_named_with_its_own_words_not_its_sign_off() -> None:
    procs = Procs()
    await procs.chain([["head", "-c", "4000000", "/dev/zero"], ["zstd", "-q", "-c"],
                       ["age", "-r", "age1" + "q" * 58]], stdin=asyncio.subprocess.DEVNULL,
                      stdout=asyncio.subprocess.DEVNULL)
    with pytest.raises(ToolFailed) as caught:
        await procs.wait("writing the backup")
    assert caught.value.tool == "age" and "malformed recipient" in caught.value.stderr_tail
    assert caught.value.message.startswith("age exited with status 1 while writing the backup: age: error: ")


async def test_a_recipient_whose_checksum_fails_is_invalid_and_nothing_is_written(tmp_path: Path, key: Key) -> None:
    agent = agent_with(tmp_path, None)
    await volume_with_marker(agent, "v1")
    typo = key.recipient[:-1] + ("q" if key.recipient[-1] != "q" else "p")
    with pytest.raises(Invalid, match="is not a valid age recipient"):
        await agent.backups.backup(BackupRequest(volume="v1", encrypt_to=[typo]))
    assert not (tmp_path / "local").exists() or not any((tmp_path / "local").rglob("*"))


async def test_without_the_age_tool_an_encrypted_backup_is_unavailable_and_says_how_to_install_it(
    tmp_path: Path, key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = agent_with(tmp_path, None)
    await volume_with_marker(agent, "v1")
    monkeypatch.setattr(encryption.shutil, "which", lambda name: None)
    with pytest.raises(Unavailable, match=r"needs the age tool, which is not installed .*apt-get install age"):
        await agent.backups.backup(BackupRequest(volume="v1", encrypt_to=[key.recipient]))
    assert not (tmp_path / "local").exists() or not any((tmp_path / "local").rglob("*"))
    assert agent.sink.events == []  # type: ignore[attr-defined]
    assert encryptor([], "v1") is None  # an unencrypted backup does not need age


def test_age_identity_is_checked_at_start_and_its_keys_are_never_quoted(
    tmp_path: Path, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--nats", "nats://127.0.0.1:4222", "--host-id", "h1"]
    settings = parse_args([*base, "--age-identity", str(key.path)])
    assert settings.age_identity == key.path and settings.age_recipients == (key.recipient,)
    assert parse_args(base).age_identity is None
    secret = next(line for line in key.path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    typo = tmp_path / "typo.txt"
    typo.write_text(secret[:-1] + ("Q" if secret[-1] != "Q" else "P") + "\n")
    typo.chmod(0o600)
    open_key = tmp_path / "open.txt"
    open_key.write_text(key.path.read_text())
    open_key.chmod(0o644)
    not_a_key = tmp_path / "ssh.txt"
    not_a_key.write_text(f"# a comment\n{secret}\nssh-ed25519 AAAA...\n")
    not_a_key.chmod(0o600)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    empty.chmod(0o600)
    for path, said in [(tmp_path / "missing.txt", "cannot be read"), (open_key, "readable by others"),
                       (not_a_key, "line 3 of"), (empty, "holds no age identity"),
                       (typo, "holds a key age cannot use (failed to parse input: error at line 1: malformed "
                              "secret key: invalid checksum)")]:
        with pytest.raises(SystemExit) as exited:
            parse_args([*base, "--age-identity", str(path)])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and "error: --age-identity: " in err and str(path) in err, err
        assert said in err and secret not in err

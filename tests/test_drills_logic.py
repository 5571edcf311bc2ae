"""Restore drills and the bad-backup guard, with fakes behind the seams: the content digest a backup records, a
drill that passes and one that catches a corrupted backup (in a store that checks its bytes, and in one that
does not), what each tells, and the guard's decision.

No dockerd, no NATS: FakeEngine gives each volume a real directory in tmp (GNU tar, tee and zstd do the work).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from agent.backup.drills import VerifyLog
from agent.backup.local_store import LocalStore
from agent.backup.observed import BackupObserver
from agent.errors import Corrupt
from agent.policies.guard import baseline, held_because
from contracts import BackupPolicy, BackupRecord, BackupRequest, DigestRequest, Guard, VerifyRequest, check_policy
from contracts.policies import guard_of

from .fakes import FakeAgent, FakeEngine, MemoryStore, RecordingMetrics, RecordingNotifier, RecordingSink, fake_agent
from .test_encryption_logic import Key

pytestmark = pytest.mark.timeout(20)


class Drilled:
    def __init__(self, tmp_path: Path) -> None:
        self.metrics, self.notifier = RecordingMetrics(), RecordingNotifier()
        self.scratch = tmp_path / "data" / "drills"
        self.agent: FakeAgent = fake_agent(
            FakeEngine(tmp_path / "volumes"), RecordingSink(), LocalStore(tmp_path / "local"),
            MemoryStore("nats", tmp_path / "nats"), host="h1", observer=BackupObserver(self.metrics, self.notifier))
        # The drills' scratch and log where the daemon puts them: under the data dir.
        drills = self.agent.domain.drills
        drills.scratch, drills.verified = self.scratch, VerifyLog(tmp_path / "data" / "verified.json")

    async def volume(self, name: str, files: dict[str, bytes]) -> Path:
        v = await self.agent.engine.volume_create({"Name": name})
        path = Path(v["Mountpoint"])
        for file, data in files.items():
            (path / file).parent.mkdir(parents=True, exist_ok=True)
            (path / file).write_bytes(data)
        return path


@pytest.fixture
def drilled(tmp_path: Path) -> Drilled:
    return Drilled(tmp_path)


FILES = {"a.txt": b"alpha\n" * 1000, "sub/b.bin": os.urandom(300_000), "sub/c.txt": b"gamma"}


async def test_a_backup_records_the_digest_its_volume_has_and_its_entries(drilled: Drilled) -> None:
    await drilled.volume("v1", FILES)
    for compression in ("zstd", "none"):
        made = await drilled.agent.backups.backup(BackupRequest(volume="v1", compression=compression))
        now = await drilled.agent.domain.digests.digest(DigestRequest(volume="v1"))
        assert made.content_digest == now.sha256
        assert made.files == now.entries == 5  # ., a.txt, sub, sub/b.bin, sub/c.txt


async def test_a_drill_restores_into_scratch_compares_and_removes_it_and_records_the_result(
    drilled: Drilled
) -> None:
    await drilled.volume("v1", FILES)
    made = await drilled.agent.backups.backup(BackupRequest(volume="v1"))

    result = await drilled.agent.handlers["verify"](VerifyRequest(backup_id=made.backup_id))

    assert result.checked == ["stored bytes", "extraction", "content digest"]  # its own local backup: no member check
    assert result.content_digest == made.content_digest and result.files == 5
    assert list(drilled.scratch.iterdir()) == []  # the scratch copy is gone
    assert drilled.scratch.stat().st_mode & 0o777 == 0o700
    last = drilled.agent.domain.drills.verified.get("v1")
    assert last is not None and last.ok and last.backup_id == made.backup_id and last.policy is None
    assert drilled.metrics.verified == [("v1", True)]
    assert drilled.notifier.sent == []  # a first drill that passes tells nobody
    again = VerifyLog(drilled.agent.domain.drills.verified.path)
    again.load()
    assert again.get("v1") == last  # kept across restarts


async def flip_a_content_byte(record: BackupRecord, data: bytes) -> None:
    """Change one byte of a file's content inside an uncompressed stored tar (the headers stay valid)."""
    path = Path(record.location)
    raw = bytearray(path.read_bytes())
    at = raw.index(data)
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


async def test_a_corrupted_backup_in_a_store_that_does_not_check_its_bytes_fails_its_drill_by_its_digest(
    drilled: Drilled
) -> None:
    await drilled.volume("v1", FILES)
    good = await drilled.agent.backups.backup(BackupRequest(volume="v1", store="nats", compression="none"))
    bad = await drilled.agent.backups.backup(BackupRequest(volume="v1", store="nats", compression="none"))
    await flip_a_content_byte(bad, b"gamma")

    with pytest.raises(Corrupt, match=r"content digest .* differs from the one taken when it was made"):
        await drilled.agent.handlers["verify"](VerifyRequest(backup_id=bad.backup_id))
    with pytest.raises(Corrupt):  # told once, when it starts failing
        await drilled.agent.handlers["verify"](VerifyRequest(backup_id=bad.backup_id))
    assert list(drilled.scratch.iterdir()) == []
    last = drilled.agent.domain.drills.verified.get("v1")
    assert last is not None and not last.ok and "content digest" in (last.error or "")
    assert [(k, v) for k, v, _, _ in drilled.notifier.sent] == [("verify_failed", "v1")]

    await drilled.agent.handlers["verify"](VerifyRequest(backup_id=good.backup_id))
    assert [(k, v) for k, v, _, _ in drilled.notifier.sent] == [("verify_failed", "v1"), ("verify_recovered", "v1")]
    assert drilled.metrics.verified == [("v1", False), ("v1", False), ("v1", True)]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_a_corrupted_local_backup_fails_its_drill_before_anything_is_extracted(
    drilled: Drilled, damage: str
) -> None:
    await drilled.volume("v1", FILES)
    made = await drilled.agent.backups.backup(BackupRequest(volume="v1"))
    path = Path(made.location)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        del raw[len(raw) // 2:]
    path.write_bytes(bytes(raw))

    with pytest.raises(Corrupt):
        await drilled.agent.handlers["verify"](VerifyRequest(backup_id=made.backup_id))
    assert list(drilled.scratch.iterdir()) == []
    assert drilled.notifier.sent[0][0] == "verify_failed"


# The guard's decision


def rec(backup_id: str, size: int, files: int | None) -> BackupRecord:
    return BackupRecord(backup_id=backup_id, volume="v", host="h", trigger="schedule", size=size, stored_size=size,
                        sha256="0" * 64, compression="none", store="local", location="-", created_at=backup_id,
                        duration_s=0.0, stopped_containers=[], files=files)


def test_the_guard_holds_a_backup_under_half_the_size_or_the_entries_of_the_one_it_accepted() -> None:
    base = rec("2026-01-01", 1_000_000, 100)
    guard = Guard()
    assert held_because(guard, rec("2026-01-02", 500_000, 50), base) is None  # exactly half: plausible
    small = held_because(guard, rec("2026-01-02", 499_999, 100), base)
    assert small is not None and "499999 bytes, less than 0.5 of the 1000000 bytes of backup 2026-01-01" in small
    few = held_because(guard, rec("2026-01-02", 1_000_000, 10), base)
    assert few is not None and "10 entries, less than 0.5 of the 100" in few and "bytes" not in few.split(":")[0]
    both = held_because(guard, rec("2026-01-02", 10, 1), base)
    assert both is not None and " and it holds 1 entries" in both and "deleted nothing" in both


def test_the_guard_is_off_without_a_baseline_counts_or_ratios() -> None:
    base = rec("2026-01-01", 1_000_000, 100)
    tiny = rec("2026-01-02", 10, 1)
    assert held_because(None, tiny, base) is None  # guard = false
    assert held_because(Guard(), tiny, None) is None  # the first backup
    assert held_because(Guard(min_size_ratio=0), rec("2026-01-02", 10, 100), base) is None
    assert held_because(Guard(min_files_ratio=0), rec("2026-01-02", 1_000_000, 1), base) is None
    assert held_because(Guard(), rec("2026-01-02", 1_000_000, None), base) is None  # an older agent's record
    assert held_because(Guard(), rec("2026-01-02", 1_000_000, 1), rec("x", 1_000_000, None)) is None


def test_the_guard_compares_with_the_backup_it_accepted_last_not_the_one_just_before() -> None:
    accepted, held1 = rec("2026-01-01", 1_000_000, 100), rec("2026-01-02", 10, 1)
    made = rec("2026-01-03", 10, 1)
    newest_first = [made, held1, accepted]
    assert baseline(newest_first, made, accepted.backup_id) == accepted
    assert held_because(Guard(), made, baseline(newest_first, made, accepted.backup_id)) is not None
    # The accepted one is gone (forgotten by hand), or none was recorded yet: the one just before.
    assert baseline(newest_first, made, "gone") == held1
    assert baseline(newest_first, made, None) == held1
    assert baseline([made], made, None) is None


def test_a_policys_verify_schedule_and_guard_are_checked_with_sentences() -> None:
    base = {"name": "p", "schedule": "@daily", "keep": {"last": 3}}
    assert check_policy(msgspec.convert({**base, "verify": "@weekly", "guard": False}, BackupPolicy)) == []
    assert check_policy(msgspec.convert({**base, "guard": {"min_size_ratio": 0.2}}, BackupPolicy)) == []
    problems = check_policy(msgspec.convert({**base, "verify": "every sunday",
                                             "guard": {"min_size_ratio": 0, "min_files_ratio": 0}}, BackupPolicy))
    assert problems == [
        "The verify schedule 'every sunday' is not a cron expression: a cron expression has 5 fields "
        "(or 6 with seconds first).",
        "The guard's ratios are both 0, so it checks nothing: set guard to false to turn it off.",
    ]
    with pytest.raises(msgspec.ValidationError, match="Expected `float` <= 1"):
        msgspec.convert({**base, "guard": {"min_size_ratio": 2}}, BackupPolicy)
    assert guard_of(msgspec.convert(base, BackupPolicy)) == Guard()  # on by default: 0.5 and 0.5
    assert guard_of(msgspec.convert({**base, "guard": True}, BackupPolicy)) == Guard()
    assert guard_of(msgspec.convert({**base, "guard": False}, BackupPolicy)) is None


async def test_an_encrypted_backup_is_drilled_with_this_hosts_identity(tmp_path: Path) -> None:
    key = Key.make(tmp_path / "k.txt")
    agent = fake_agent(FakeEngine(tmp_path / "volumes"), RecordingSink(), LocalStore(tmp_path / "local"),
                       host="h1", age_identity=key.path)
    agent.domain.drills.scratch = tmp_path / "drills"
    v = await agent.engine.volume_create({"Name": "v1"})
    (Path(v["Mountpoint"]) / "secret.txt").write_bytes(b"sealed" * 1000)
    made = await agent.backups.backup(BackupRequest(volume="v1", encrypt_to=[key.recipient]))

    result = await agent.handlers["verify"](VerifyRequest(backup_id=made.backup_id))

    assert result.checked == ["stored bytes", "decryption", "extraction", "content digest"]

"""A restore or clone that a crash cut off, or that finished just before one: what the next try into its target does."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.contextvars import bound_contextvars

from agent.backup.local_store import LocalStore
from agent.backup.restore import Restores
from agent.backup.unfinished import Note, Unfinished
from contracts import CloneRequest, CloneResult

from .fakes import FakeEngine, RecordingSink, fake_agent

pytestmark = pytest.mark.timeout(10)


def restores(tmp_path: Path) -> tuple[Restores, FakeEngine]:
    engine = FakeEngine()
    agent = fake_agent(engine, RecordingSink(), LocalStore(tmp_path / "store"), notes=tmp_path / "restoring")
    return agent.restores, engine


async def test_a_clone_finished_before_a_crash_answers_its_redelivery_with_its_result(tmp_path: Path) -> None:
    r, engine = restores(tmp_path)
    for name in ("src", "copy"):
        await engine.volume_create({"Name": name})
    with bound_contextvars(cmd_id="k1"):
        note = r.unfinished.begin("copy", created=True)
    done = CloneResult(source="src", target="copy", size=42, created_volume=True, duration_s=0.5)
    r.unfinished.done("copy", note, done)
    engine.calls.clear()
    with bound_contextvars(cmd_id="k1"):
        assert await r.clone(CloneRequest(source="src", target="copy")) == done
    assert engine.calls == ["inspect:copy"]  # nothing written again


async def test_what_a_crash_left_half_written_is_undone_first(tmp_path: Path) -> None:
    r, engine = restores(tmp_path)
    await engine.volume_create({"Name": "copy"})
    with bound_contextvars(cmd_id="k1"):
        r.unfinished.begin("copy", created=True)  # and then the agent was killed
    await r.cleanup()  # at the next start
    assert "copy" not in engine.volumes and r.unfinished.get("copy") is None


async def test_a_finished_note_is_kept_at_start_and_dropped_by_another_command(tmp_path: Path) -> None:
    r, engine = restores(tmp_path)
    await engine.volume_create({"Name": "copy"})
    note = r.unfinished.begin("copy", created=True)
    r.unfinished.done("copy", note, CloneResult(source="s", target="copy", size=1, created_volume=True,
                                                duration_s=0.1))
    await r.cleanup()
    assert "copy" in engine.volumes and r.unfinished.get("copy") is not None
    with bound_contextvars(cmd_id="other"):
        assert await r._settle("copy", CloneResult) is None
    assert "copy" in engine.volumes and r.unfinished.get("copy") is None


def test_an_unreadable_note_empties_rather_than_removes(tmp_path: Path) -> None:
    u = Unfinished(tmp_path)
    (tmp_path / "v1.json").write_text("{not json")
    assert u.get("v1") == Note(created=False) and u.volumes() == ["v1"]

"""A failing data-path process is a typed error that names the cause, not the victim of a broken pipe."""

from __future__ import annotations

import asyncio

import pytest

from agent.backup.pipes import Procs
from agent.errors import ToolFailed, Transient

pytestmark = pytest.mark.timeout(20)


async def test_the_failing_reader_is_named_not_the_writer_it_broke() -> None:
    """`cat` dies of SIGPIPE because the next process failed: the error names that process, its status and words."""
    procs = Procs()
    await procs.chain([["cat", "/dev/zero"], ["sh", "-c", "head -c 1 >/dev/null; echo 'disk on fire' >&2; exit 70"]],
                      stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)
    with pytest.raises(ToolFailed) as caught:
        await procs.wait("writing the backup")
    exc = caught.value
    assert (exc.tool, exc.status, exc.stderr_tail) == ("sh", 70, "disk on fire")
    assert exc.message == "sh exited with status 70 while writing the backup: disk on fire."
    assert exc.code == "unavailable" and isinstance(exc, Transient)


async def test_tar_that_cannot_read_the_volume_says_so_with_its_last_line() -> None:
    procs = Procs()
    await procs.chain([["tar", "--create", "--file=-", "--directory", "/nonexistent-volume-dir", "."]],
                      stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)
    with pytest.raises(ToolFailed) as caught:
        await procs.wait()
    exc = caught.value
    assert exc.tool == "tar" and exc.status == 2
    assert "/nonexistent-volume-dir" in exc.stderr_tail and exc.message.startswith("tar exited with status 2: ")


async def test_a_pipeline_that_succeeds_returns_each_stderr() -> None:
    procs = Procs()
    await procs.chain([["sh", "-c", "echo one >&2"], ["sh", "-c", "cat >/dev/null; echo two >&2"]],
                      stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)
    assert await procs.wait() == ["one", "two"]

"""The programs the agent runs on the data path, checked at start against what its configuration needs.

A tool every backup needs (tar; zstd, the default compression) missing is fatal at start: the agent exits 2 and
says what to install, rather than failing each backup later. A tool only some requests need (gzip) missing is a
warning: those requests fail with `unavailable` naming it. A tool missing at run time (removed since, or a
request the start-up check could not foresee) is `unavailable` with the same sentence (`missing`).

Adding a tool is one entry in `needed`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import Unavailable

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["Tool", "check", "missing", "needed"]

_INSTALL = {
    "tar": "apt-get install tar (GNU tar)",
    "zstd": "apt-get install zstd",
    "gzip": "apt-get install gzip",
    "age": "apt-get install age (elsewhere: https://age-encryption.org)",
    "restic": "apt-get install restic (or https://restic.net)",
}


@dataclass(frozen=True)
class Tool:
    name: str
    needed_for: str
    fatal: bool
    """Missing, the agent does not start (every backup would fail); else a warning at start."""

    def sentence(self) -> str:
        return (f"{self.name} is not installed on this host, and {self.needed_for} need it: "
                f"{install(self.name)}.")


def install(tool: str) -> str:
    return _INSTALL.get(tool, f"install {tool}")


def needed(settings: Settings) -> list[Tool]:
    """Each tool this agent's configuration needs; the first ones on every host."""
    tools = [
        Tool("tar", "every backup, restore and clone", fatal=True),
        Tool("zstd", "backups with zstd compression (the default) and restoring them", fatal=True),
        Tool("gzip", "backups with gzip compression and restoring them", fatal=False),
    ]
    if settings.age_identity is not None:
        tools.append(Tool("age", f"restores of encrypted backups (--age-identity {settings.age_identity})",
                          fatal=True))
    # A store that runs a program of its own adds it here, e.g. restic when the stores file defines a restic store:
    #     tools += [Tool("restic", f"the restic store {name!r}", fatal=True) for name in restic_stores]
    return tools


def check(tools: list[Tool], which: Callable[[str], str | None] = shutil.which) -> tuple[list[str], list[str]]:
    """(fatal problems, warnings), one sentence each, for the tools not found on PATH."""
    fatal: list[str] = []
    warnings: list[str] = []
    for t in tools:
        if which(t.name) is None:
            (fatal if t.fatal else warnings).append(t.sentence())
    return fatal, warnings


def missing(tool: str, doing: str = "") -> Unavailable:
    """The error of a tool not found when the agent runs it."""
    during = f" ({doing})" if doing else ""
    return Unavailable(f"{tool} is not installed on this host{during}: install it ({install(tool)}) and retry.")

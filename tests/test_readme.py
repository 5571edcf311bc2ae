"""The README's commands, run as written: the agent started by `scripts/run-agent`, then every line of the tour.

Every ```sh block of README.md is run here, line by line, from the repository's top, and each line must exit 0.
A block that needs a person (or would reach beyond the test: `pkill` signals every agent on the machine) is marked
`<!-- tour: skip (why) -->` on the line before it, and this file does instead what it says (`STAND_INS`): a skipped
block without a stand-in fails the test, so nothing is left out quietly. What differs from a newcomer's machine is
only where things are: the test's own Docker Engine (`DOCKER_HOST`), a free port for the embedded server
(`VOLUME_AGENT_EMBEDDED_LISTEN`, and `VOLUME_AGENT_NATS` for volumectl), and a data dir of its own in place of
`/var/lib/volume-agent` (`VOLUME_AGENT_DATA_DIR`, as the README says, and in the commands that name the path).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .stack import BUSYBOX_IMAGE, Dockerd, free_port, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DEFAULT_DATA_DIR = "/var/lib/volume-agent"
SKIP = re.compile(r"^<!-- tour: skip \((.+)\) -->$")


@dataclass
class Block:
    lines: list[str]
    skip: str | None
    """Why the test does not run it, or None."""

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def sh_blocks(text: str) -> list[Block]:
    """Every ```sh block, with the skip marker on the line before its fence."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            marker = SKIP.match(lines[i - 1].strip()) if i > 0 else None
            end = lines.index("```", i + 1)
            blocks.append(Block(lines[i + 1:end], marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


def commands(block: Block) -> list[str]:
    """The block's command lines (a `\\` at the end of a line continues it)."""
    joined = "\n".join(block.lines).replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def bare(block: Block) -> list[str]:
    """The block's commands without their comments, to compare with what the test expects."""
    return [" ".join(shlex.split(line, comments=True)) for line in commands(block)]


@dataclass
class Tour:
    dockerd: Dockerd
    data: Path
    port: int
    log: Path
    agent: subprocess.Popen[bytes] | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")}
        return {**base, "VOLUME_AGENT_DATA_DIR": str(self.data), "VOLUME_AGENT_NATS": f"nats://127.0.0.1:{self.port}"}

    def agent_log(self) -> str:
        return self.log.read_text(errors="replace")

    def start_agent(self, block: Block) -> None:
        """The README's first block: `scripts/run-agent`; its `scripts/test` is what runs this test."""
        assert bare(block) == ["scripts/run-agent", "scripts/test"], block.text
        env = {k: v for k, v in self.env().items() if k != "VOLUME_AGENT_NATS"}  # the agent runs its own server
        env |= {"DOCKER_HOST": self.dockerd.url, "VOLUME_AGENT_EMBEDDED_LISTEN": f"127.0.0.1:{self.port}"}
        with open(self.log, "ab") as log:
            self.agent = subprocess.Popen([str(REPO / "scripts" / "run-agent")], cwd=REPO, env=env,
                                          stdout=log, stderr=log)
        wait_for(lambda: '"agent.ready"' in self.agent_log(), 60, "scripts/run-agent", self.agent)

    def reload(self, block: Block) -> None:
        """`pkill -HUP -f bin/volume-agent`, to this test's agent alone; done once it logs `policy.reloaded`."""
        assert bare(block)[0].startswith("pkill -HUP"), block.text
        assert self.agent is not None
        self.agent.send_signal(signal.SIGHUP)
        wait_for(lambda: '"policy.reloaded"' in self.agent_log(), 30, "the policy reloaded", self.agent)

    def run(self, line: str) -> None:
        command = line.replace(DEFAULT_DATA_DIR, str(self.data))
        out = subprocess.run(["bash", "-c", command], cwd=REPO, env=self.env(), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, f"README: `{line}` exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
        self.outputs[line] = out.stdout

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(60)


STAND_INS: dict[str, Callable[[Tour, Block], None]] = {
    "scripts/run-agent": Tour.start_agent,
    "pkill -HUP": Tour.reload,
}


def stand_in(block: Block) -> Callable[[Tour, Block], None]:
    first = bare(block)[0]
    found = [fn for prefix, fn in STAND_INS.items() if first.startswith(prefix)]
    assert found, f"README block marked `tour: skip` has no stand-in in {__name__}.STAND_INS:\n{block.text}"
    return found[0]


@pytest.fixture
def tour(dockerd: Dockerd, tmp_path: Path) -> Iterator[Tour]:
    """The session's Docker Engine, emptied, with the image the tour shares (`busybox:latest`: the agent does
    not pull); the tag is removed again after."""
    dockerd.reset()
    dockerd.docker("tag", BUSYBOX_IMAGE, "busybox:latest")
    t = Tour(dockerd, tmp_path / "data", free_port(), tmp_path / "run-agent.log")
    try:
        yield t
    finally:
        t.stop()
        dockerd.reset()
        dockerd.docker("rmi", "busybox:latest")


def test_the_readme_blocks_are_the_tour_and_skips_are_few() -> None:
    """The README keeps its two commands first, and skips only what needs a person."""
    blocks = sh_blocks(README.read_text())
    assert blocks and bare(blocks[0]) == ["scripts/run-agent", "scripts/test"]
    assert len([b for b in blocks if b.skip]) <= 3
    for block in blocks:
        if block.skip:
            stand_in(block)


@pytest.mark.timeout(300)
def test_the_readme_tour_runs_as_written(tour: Tour) -> None:
    """Each command of the README, in order, exits 0; then what the tour says happened did."""
    for block in sh_blocks(README.read_text()):
        if block.skip:
            stand_in(block)(tour, block)
            continue
        for line in commands(block):
            tour.run(line)
    backups = next(out for line, out in tour.outputs.items() if line.endswith("volumectl backups pgdata"))
    assert "pgdata." in backups
    digest = next(out for line, out in tour.outputs.items() if "volumectl digest pgdata-test" in line)
    tour.run(".venv/bin/volumectl digest pgdata")
    assert tour.outputs[".venv/bin/volumectl digest pgdata"].split()[:1] == digest.split()[:1]
    # The agent applies a policy at the bucket's signal and covers volumes with it at its scheduler's next look,
    # half a second later: a person typing the commands in between takes longer than that, the test does not.
    explain = next(line for line in tour.outputs if "policy explain pgdata" in line)

    def covered() -> bool:
        tour.run(explain)
        return "nightly" in tour.outputs[explain]

    wait_for(covered, 10, "pgdata covered by the policy nightly")
    assert "pgstore" in tour.dockerd.docker("ps", "-a", "--format", "{{.Names}}")
    assert "pgdata-test" not in tour.dockerd.docker("volume", "ls", "--format", "{{.Name}}")


def slug(title: str) -> str:
    """A heading's anchor, as mkdocs (Python-Markdown's toc) and GitHub make it for the headings used here."""
    title = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", title)


def test_the_readme_links_reach_pages_and_headings() -> None:
    """mkdocs checks the site's links; this checks the README's, into docs/ and the repository."""
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        page = REPO / path
        assert page.exists(), f"README links to {target}: no such file"
        if anchor:
            headings = re.findall(r"^#{1,6} (.+)$", page.read_text(), re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, f"README links to {target}: no such heading"

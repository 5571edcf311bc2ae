"""Everything an agent writes under its data dir is root's alone: files 0600, directories 0700.

Backups, their records, restore notes, the spool, policies, the schedule ledger, the events cursor: an agent of
the test's own does a little of everything (backups to both stores, restores from both, a policy that runs),
stops (the cursor is saved then), and the whole tree is walked. And a data dir an older version left loose is
tightened when the agent starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.private_files import tighten
from contracts import Reply, Subjects
from volumectl.client import AgentClient

from .conftest import Host
from .identities import Identities
from .stack import Agent, Dockerd, free_port, venv_bin
from .test_events import subscribe
from .test_policies import Policies
from .volfiles import mountpoint

S = Subjects("vol")


def loose(root: Path) -> list[str]:
    """Each entry under `root` (and `root`) that others may read or that is not its owner's to write:
    files not 0600, directories not 0700; symbolic links have no mode of their own."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for p in [Path(dirpath)] if dirpath == str(root) else []:
            found += _mode_problem(p)
        for name in dirnames + filenames:
            found += _mode_problem(Path(dirpath, name))
    return found


def _mode_problem(p: Path) -> list[str]:
    st = p.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return []
    want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
    return [] if mode == want else [f"{p} is {mode:o}, not {want:o}"]


@pytest.mark.integration
async def test_everything_an_agent_writes_under_its_data_dir_is_0600_or_0700(
    make_agent: Any, dockerd: Dockerd, client: AgentClient, identities: Identities, tmp_path: Path
) -> None:
    a = make_agent(tmp_path / "data")
    host = Host(a.host_id, dockerd, a, client)
    vol = "modes"
    await host.ok("create", {"name": vol})
    (mountpoint(dockerd, vol) / "file").write_text("content\n")
    local = await host.ok("backup", {"volume": vol})
    shared = await host.ok("backup", {"volume": vol, "store": "nats", "compression": "gzip"})
    await host.ok("restore", {"backup_id": local["backup_id"], "volume": "modes-local"})
    await host.ok("restore", {"backup_id": shared["backup_id"], "volume": "modes-shared"})

    # A policy that runs once here: its entry, kept under policies/, and the schedule ledger.
    policies = Policies(client, identities)
    name = f"modes-{uuid.uuid4().hex[:6]}"
    sub = await subscribe(client, S.res(host.id, "backup"))
    try:
        await policies.set(name, host.id, schedule="* * * * * *", keep={"last": 1},
                           selector={"hosts": [host.id], "volumes": [vol]})
        async with asyncio.timeout(30):
            while msgspec.json.decode((await sub.next_msg(timeout=30)).data, type=Reply).caller != f"policy:{name}":
                pass
    finally:
        await sub.unsubscribe()
        await policies.clean()
    a.stop()  # the events cursor is written as it stops

    data = tmp_path / "data"
    written = {p.relative_to(data).parts[0] for p in data.rglob("*")}
    assert {"backups", "restoring", "policies", "schedule.json", "events.cursor", "spool"} <= written, written
    assert loose(data) == [], "\n".join(loose(data))


def test_tighten_makes_a_loose_tree_private_and_leaves_symlinks_alone(tmp_path: Path) -> None:
    """What an older version left (0644 records and notes, 0755 directories) is made private at start."""
    root = tmp_path / "old"
    (root / "backups" / "v").mkdir(parents=True)
    (root / "backups" / "v" / "v.1.x.json").write_text("{}")
    (root / "restoring").mkdir()
    (root / "restoring" / "v.json").write_text("{}")
    target = tmp_path / "elsewhere"
    target.write_text("not the agent's")
    target.chmod(0o644)
    (root / "link").symlink_to(target)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert len(loose(root)) == 6
    assert tighten(root) == 6
    assert loose(root) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # a link is never followed


@pytest.mark.integration
def test_an_agent_with_its_embedded_server_keeps_its_seeds_config_and_jetstream_store_private(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    """The embedded nats-server's config, log and JetStream store are under the data dir too (the server, a
    child, inherits the agent's umask), beside the seeds; backed up to both stores and restored, as the local
    operator does with volumectl."""
    data, port = tmp_path / "data", free_port()
    agent = Agent("modes-local", dockerd.url, "", data, ["--embedded-listen", f"127.0.0.1:{port}"]).start()
    try:
        dockerd.docker("volume", "create", "modes-embedded")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")},
               "VOLUME_AGENT_DATA_DIR": str(data)}
        ctl = [venv_bin("volumectl"), "--nats", f"nats://127.0.0.1:{port}", "--host", "modes-local", "--json"]
        for store in ("local", "nats"):
            out = subprocess.run([*ctl, "backup", "modes-embedded", "--store", store], capture_output=True,
                                 text=True, timeout=60, env=env)
            assert out.returncode == 0, out.stderr
            backup_id = json.loads(out.stdout)["result"]["backup_id"]
            out = subprocess.run([*ctl, "restore", backup_id, f"modes-{store}"], capture_output=True, text=True,
                                 timeout=60, env=env)
            assert out.returncode == 0, out.stderr
    finally:
        agent.stop()
        dockerd.reset()
    assert (data / "nats" / "jetstream").is_dir() and (data / "auth").is_dir()
    assert loose(data) == [], "\n".join(loose(data))

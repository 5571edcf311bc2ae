"""The operator's experience (issue 16: points 1, 2, 4, 5, 6): refusals said at once and with the fix, tools checked
at start, a taken port explained, the policy file reread on SIGHUP, and volumectl's conventions (JSON everywhere,
sentences, exit codes, no tracebacks)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.backup.pipes import Procs
from agent.errors import Unavailable
from volumectl.render import progress_line

from .conftest import Host
from .identities import Identities
from .stack import BUSYBOX_IMAGE, free_port, venv_bin, wait_for
from .test_volumectl import ctl
from .volfiles import mountpoint


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)


def bare_ctl(host: Host, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(venv_bin("volumectl"), "--nats", host.agent.nats_url, "--host", host.id, *args, env=env)


# 1. Permission problems said at once, with the fix

@pytest.mark.integration
def test_a_seed_whose_name_nats_does_not_know_is_refused_at_once_naming_name(
        host: Host, identities: Identities, tmp_path: Path) -> None:
    alice = tmp_path / "alice.nk"  # ops' key under another name: its inbox _INBOX_alice is not ops' to read
    shutil.copy(identities.seed("ops"), alice)
    alice.chmod(0o600)
    env = {k: v for k, v in identities.env("ops").items() if k not in ("VOLUME_AGENT_SEED", "VOLUME_AGENT_NAME")}
    started = time.monotonic()
    out = bare_ctl(host, "--seed", str(alice), "ls", env=env)
    assert time.monotonic() - started < 10  # not the 30 s of a request nobody answers
    assert out.returncode == 1, out.stderr
    assert "NATS refused" in out.stderr and "--name" in out.stderr and "_INBOX_alice" in out.stderr
    assert "No volume-agent answered" not in out.stderr and "Traceback" not in out.stderr
    out = bare_ctl(host, "--seed", str(alice), "--json", "ls", env=env)
    assert json.loads(out.stdout)["error"]["code"] == "nats_refused"
    # The seed's own stem is its name: no --name needed.
    out = bare_ctl(host, "--seed", str(identities.seed("ops")), "ls", env=env)
    assert out.returncode == 0, out.stderr


@pytest.mark.integration
def test_a_reader_asking_to_create_is_refused_at_once_naming_the_role(host: Host) -> None:
    started = time.monotonic()
    out = ctl(host, "create", "not-mine", identity="viewer")
    assert time.monotonic() - started < 10
    assert out.returncode == 1
    assert "NATS refused the request `create`" in out.stderr and "role operator or admin" in out.stderr
    assert host.docker.docker("volume", "ls", "-q").split() == []


# 2. Tools checked at start; a missing one at run time is unavailable naming it

def _path_with(tmp_path: Path, *tools: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_an_agent_without_zstd_exits_2_saying_what_to_install(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")},
           "PATH": _path_with(tmp_path, "tar", "gzip")}
    out = run(venv_bin("volume-agent"), "--data-dir", str(tmp_path / "d"), "--docker", "unix:///nonexistent",
              env=env)
    assert out.returncode == 2
    assert "zstd is not installed on this host" in out.stderr and "apt-get install zstd" in out.stderr
    assert "Traceback" not in out.stderr


async def test_a_tool_missing_at_run_time_is_unavailable_naming_it() -> None:
    procs = Procs()
    with pytest.raises(Unavailable, match="no-such-zstd is not installed on this host"):
        await procs.chain([["true"], ["no-such-zstd", "-c"]], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL)
    await procs.reap()


# 4. A taken port

def test_a_taken_embedded_port_says_who_may_hold_it_and_how_to_choose_another(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")}
        out = run(venv_bin("volume-agent"), "--data-dir", str(tmp_path / "d"), "--docker", "unix:///nonexistent",
                  "--embedded-listen", f"127.0.0.1:{port}", env=env)
    assert out.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in out.stderr and "another volume-agent" in out.stderr
    assert f"--embedded-listen 127.0.0.1:{port + 1}" in out.stderr and "Traceback" not in out.stderr


# 5. SIGHUP rereads the policy file, whole or not at all

@pytest.mark.integration
def test_sighup_rereads_the_policy_file_and_keeps_it_when_the_new_one_is_bad(
        make_agent: Any, identities: Identities, tmp_path: Path) -> None:
    policy = identities.write_policy("reload.toml", images=())
    a = make_agent(policy=policy)
    host = Host(a.host_id, None, a, None)  # type: ignore[arg-type]
    out = ctl(host, "share", "app", "--image", BUSYBOX_IMAGE)
    assert out.returncode == 1 and "forbidden" in out.stderr and "images" in out.stderr
    identities.write_policy("reload.toml", images=[BUSYBOX_IMAGE])
    a.signal(signal.SIGHUP)
    wait_for(lambda: '"policy.reloaded"' in a.log(), 10, "the reload")
    out = ctl(host, "share", "app", "--image", BUSYBOX_IMAGE)
    assert out.returncode == 0, out.stderr
    policy.write_text("[volumes\nbroken")
    a.signal(signal.SIGHUP)
    wait_for(lambda: '"policy.reload_failed"' in a.log(), 10, "the failed reload")
    out = ctl(host, "share", "app2", "--image", BUSYBOX_IMAGE)
    assert out.returncode == 0, out.stderr  # the policy held is kept


# 6. volumectl's conventions

@pytest.mark.integration
def test_json_before_or_after_the_command_and_errors_as_json_objects(host: Host) -> None:
    assert ctl(host, "create", "jvol").returncode == 0
    after, before = ctl(host, "ls", "--json"), ctl(host, "--json", "ls")
    assert json.loads(after.stdout)["result"] == json.loads(before.stdout)["result"]
    out = ctl(host, "inspect", "ghost", "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == "not_found"
    out = bare_ctl(host, "--host", "nobody", "--timeout", "1", "ls", "--json", env=host.agent.auth.env())  # type: ignore[union-attr]
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == "no_agent"
    out = ctl(host, "ls", "--filter", "colour=red", "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["error"]["code"] == "usage"
    out = ctl(host, "policy", "ls", "--json")
    assert out.returncode == 0 and isinstance(json.loads(out.stdout), list)


@pytest.mark.integration
def test_validation_errors_are_sentences(host: Host) -> None:
    out = ctl(host, "create", "a")
    assert out.returncode == 1
    assert "the volume name must be 2 to 255 characters" in out.stderr and "$.name" not in out.stderr
    assert ctl(host, "create", "kv").returncode == 0
    out = ctl(host, "backup", "kv", "--keep", "0")
    assert out.returncode == 1 and "keep (how many of the newest backups to keep) must be at least 1" in out.stderr
    out = ctl(host, "policy", "set", "nightly", "--schedule", "@daily")
    assert out.returncode == 1 and "no keep rules" in out.stderr and "--keep-daily N" in out.stderr


@pytest.mark.integration
def test_clone_onto_a_non_empty_target_says_what_to_do_and_policy_rm_of_nothing_exits_1(host: Host) -> None:
    for name in ("src1", "dst1"):
        assert ctl(host, "create", name).returncode == 0
    (mountpoint(host.docker, "dst1") / "f").write_text("x")
    out = ctl(host, "clone", "src1", "dst1")
    assert out.returncode == 1 and "conflict" in out.stderr
    assert "volumectl rm dst1" in out.stderr and "--overwrite" not in out.stderr.split("restore")[0]
    out = ctl(host, "policy", "rm", "never-was")
    assert out.returncode == 1 and "no policy 'never-was'" in out.stderr


@pytest.mark.integration
def test_policy_ls_names_the_signer(host: Host) -> None:
    out = ctl(host, "policy", "set", "named-pol", "--schedule", "@daily", "--keep-last", "2",
              "--volumes", "nothing-here-*")
    assert out.returncode == 0, out.stderr
    try:
        wait_for(lambda: "ops" in ctl(host, "policy", "ls").stdout, 20, "the agent to apply the policy")
        listed = json.loads(ctl(host, "policy", "ls", "--json").stdout)
        assert [p["signer"] for p in listed if p["name"] == "named-pol"] == ["ops"]
    finally:
        ctl(host, "policy", "rm", "named-pol")


@pytest.mark.integration
def test_a_failing_post_hook_is_a_warning_in_the_reply(host: Host) -> None:
    assert ctl(host, "create", "posthook").returncode == 0
    host.docker.docker("run", "-d", "--name", "posty", "--network", "none", "-v", "posthook:/data",
                       "--label", "volume-agent.backup.exec-post=echo cannot clean; exit 4",
                       BUSYBOX_IMAGE, "sleep", "600")
    out = ctl(host, "--json", "backup", "posthook")
    assert out.returncode == 0, out.stderr
    warnings = json.loads(out.stdout)["result"]["warnings"]
    assert len(warnings) == 1 and "posty" in warnings[0] and "exit 4" in warnings[0]
    assert "volumectl: warning:" in out.stderr


@pytest.mark.integration
def test_a_closed_pipe_ends_quietly(host: Host) -> None:
    for i in range(3):  # long labels: far more than a pipe holds
        assert ctl(host, "create", f"wide{i}", "--label", f"k={'x' * 40_000}").returncode == 0
    env = host.agent.auth.env()  # type: ignore[union-attr]
    out = subprocess.run(f"'{venv_bin('volumectl')}' --nats {host.agent.nats_url} --host {host.id} ls | head -c 10",
                         shell=True, capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.startswith("NAME") and "Traceback" not in out.stderr and "Broken pipe" not in out.stderr


@pytest.mark.integration
def test_ctrl_c_during_a_backup_says_it_goes_on_and_how_to_take_it_up(host: Host) -> None:
    assert ctl(host, "create", "slowvol").returncode == 0
    (mountpoint(host.docker, "slowvol") / "random").write_bytes(os.urandom(150 * 1024 * 1024))
    env = host.agent.auth.env()  # type: ignore[union-attr]
    proc = subprocess.Popen([venv_bin("volumectl"), "--nats", host.agent.nats_url, "--host", host.id, "backup",
                             "slowvol", "--compression", "gzip"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert host.agent.proc is not None
    wait_for(lambda: _child_running(host.agent.proc.pid, b"gzip\0-c\0"), 30, "the backup's gzip")  # type: ignore[union-attr]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "goes on on host" in err and "--id " in err and "volumectl backups slowvol" in err
    assert "Traceback" not in err
    cmd_id = err.split("--id ", 1)[1].split()[0]
    out = ctl(host, "--id", cmd_id, "backup", "slowvol", "--compression", "gzip")  # waits for that one's outcome
    assert out.returncode == 0, out.stderr
    backups = json.loads(ctl(host, "--json", "backups", "slowvol").stdout)["result"]["backups"]
    assert len(backups) == 1  # not run twice


def _child_running(parent: int, cmdline: bytes) -> bool:
    """Whether a child of `parent` runs with this command line (NUL-separated, as /proc has it)."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and (proc / "cmdline").read_bytes() == cmdline:
                return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def test_progress_says_total_percent_and_time_left() -> None:
    mib = 1024 * 1024
    line = progress_line("backup", "db", 100 * mib, 400 * mib, 10.0)
    assert line == "backup db: 100.0 MiB of ~400.0 MiB (25%), 10.0 MiB/s, about 0:30 left"
    assert progress_line("backup", "db", 500 * mib, 400 * mib, 10.0).count("(99%)") == 1
    assert progress_line("restore", "db", 2048, None, 1.0) == "restore db: 2.0 KiB, 2.0 KiB/s"


def test_version_help_defaults_and_completion() -> None:
    out = run(venv_bin("volumectl"), "--version")
    assert out.returncode == 0 and out.stdout.startswith("volumectl ") and "contract" in out.stdout
    out = run(venv_bin("volume-agent"), "--version")
    assert out.returncode == 0 and out.stdout.startswith("volume-agent ")
    out = run(venv_bin("volume-agent"), "--help", env={**os.environ, "COLUMNS": "250"})
    assert "(default: 127.0.0.1:4222)" in out.stdout and "(default: 30.0)" in out.stdout
    assert "--lease-ttl" not in out.stdout and "--inventory-chunk" not in out.stdout
    env = {**os.environ, "VOLUME_AGENT_NATS_PASSWORD": "hunter2"}
    assert "hunter2" not in run(venv_bin("volume-agent"), "--help", env=env).stdout
    out = run(venv_bin("volumectl"), "--print-completion", "bash")
    assert out.returncode == 0 and "complete" in out.stdout and "backups" in out.stdout

"""volumectl as a person uses it: tables, --json, exit codes 0/1/2, and a clear word when no agent answers."""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import Host
from .stack import BUSYBOX_IMAGE, venv_bin
from .volfiles import mountpoint

pytestmark = pytest.mark.integration


def ctl(host: Host, *args: str, identity: str = "ops") -> subprocess.CompletedProcess[str]:
    """volumectl, signing as `identity` (its seed in VOLUME_AGENT_SEED, as a person would set it)."""
    return subprocess.run(
        [venv_bin("volumectl"), "--nats", host.agent.nats_url, "--host", host.id, *args],
        capture_output=True, text=True, timeout=60, env=host.agent.auth.env(identity),
    )


def test_create_ls_inspect_rm_round_trip(host: Host) -> None:
    out = ctl(host, "create", "web-data", "--label", "team=web", "-o", "type=tmpfs", "-o", "device=tmpfs")
    assert out.returncode == 0, out.stderr
    assert "name: web-data" in out.stdout and "team=web" in out.stdout
    out = ctl(host, "ls")
    assert out.returncode == 0 and out.stdout.splitlines()[0].split() == ["NAME", "DRIVER", "USED", "BY", "LABELS"]
    assert "web-data" in out.stdout
    out = ctl(host, "--json", "inspect", "web-data")
    env = json.loads(out.stdout)
    assert env["ok"] is True and env["result"]["options"]["type"] == "tmpfs"
    assert ctl(host, "rm", "web-data").returncode == 0


def test_error_reply_exits_1_with_code_and_message_on_stderr(host: Host) -> None:
    out = ctl(host, "rm", "ghost")
    assert out.returncode == 1
    assert out.stderr.strip() == "volumectl: not_found: Volume 'ghost' does not exist on this host."
    out = ctl(host, "--json", "rm", "ghost")
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == "not_found"


def test_usage_errors_exit_2(host: Host) -> None:
    assert ctl(host, "create").returncode == 2
    assert ctl(host, "create", "x1", "--label", "novalue").returncode == 2
    assert ctl(host, "ls", "--filter", "colour=red").returncode == 2
    assert ctl(host, "frobnicate").returncode == 2


def test_no_agent_for_a_host_names_the_host_and_the_url(host: Host) -> None:
    out = subprocess.run([venv_bin("volumectl"), "--nats", host.agent.nats_url, "--host", "nobody", "ls"],
                         capture_output=True, text=True, timeout=60, env=host.agent.auth.env())
    assert out.returncode == 1
    assert "'nobody'" in out.stderr and host.agent.nats_url in out.stderr
    out = subprocess.run([venv_bin("volumectl"), "--nats", "nats://127.0.0.1:1", "ls"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "nats://127.0.0.1:1" in out.stderr and "Traceback" not in out.stderr


def test_share_and_prune_and_fleet_listing(host: Host) -> None:
    out = ctl(host, "share", "keeper", "--image", BUSYBOX_IMAGE, "-v", "kept:/k", "--", "sleep", "1")
    assert out.returncode == 0, out.stderr
    assert "keeper" in out.stdout and "kept" in out.stdout
    ctl(host, "create", "loose")
    out = ctl(host, "prune", "--dry-run")
    assert out.returncode == 0 and out.stdout.splitlines() == ["would remove 1 volume(s)", "loose"]
    out = ctl(host, "ls", "--all-hosts", "--window", "1")
    assert out.returncode == 0 and host.id in out.stdout and f"answered: {host.id}" in out.stderr


def test_backup_backups_restore_clone_forget_from_the_command_line(host: Host) -> None:
    assert ctl(host, "create", "cli-vol").returncode == 0
    (mountpoint(host.docker, "cli-vol") / "note.txt").write_text("hello")
    out = ctl(host, "backup", "cli-vol", "--compression", "gzip")
    assert out.returncode == 0, out.stderr
    backup_id = out.stdout.split()[0]
    assert backup_id.startswith("cli-vol.") and out.stdout.splitlines()[1].endswith(".tar.gz")
    listed = ctl(host, "backups", "cli-vol")
    assert listed.returncode == 0 and backup_id in listed.stdout and "request" in listed.stdout
    assert ctl(host, "restore", backup_id, "cli-copy").returncode == 0
    out = ctl(host, "restore", backup_id, "cli-copy")
    assert out.returncode == 1 and "conflict" in out.stderr
    assert ctl(host, "restore", backup_id, "cli-copy", "--overwrite").returncode == 0
    assert ctl(host, "clone", "cli-vol", "cli-twin").returncode == 0
    assert ctl(host, "forget", backup_id).returncode == 0
    out = ctl(host, "rm", "cli-twin", "--backup-first")
    assert out.returncode == 0 and "final backup cli-twin." in out.stdout


def test_shared_backups_digest_inventory_and_fleet_reads(host: Host) -> None:
    assert ctl(host, "create", "ctl-shared").returncode == 0
    (mountpoint(host.docker, "ctl-shared") / "f").write_text("x")
    out = ctl(host, "--json", "backup", "ctl-shared", "--store", "nats")
    assert out.returncode == 0, out.stderr
    backup_id = json.loads(out.stdout)["result"]["backup_id"]
    out = ctl(host, "backups", "--all-hosts", "--window", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[:3] == ["BACKUP", "ID", "HOST"]
    assert sum(backup_id in line for line in out.stdout.splitlines()) == 1  # listed once, by its origin
    assert "host(s) answered" in out.stderr and host.id in out.stderr
    out = ctl(host, "digest", "ctl-shared")
    assert out.returncode == 0 and len(out.stdout.split()[0]) == 64 and "entries" in out.stdout
    out = ctl(host, "inventory")
    assert out.returncode == 0 and out.stdout.startswith(f"host {host.id}")
    assert "ctl-shared" in out.stdout
    out = ctl(host, "migrate", "ctl-shared", "--to", host.id)
    assert out.returncode == 1 and "invalid: " in out.stderr and "clone" in out.stderr
    assert ctl(host, "forget", backup_id).returncode == 0

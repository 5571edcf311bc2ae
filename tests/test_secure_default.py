"""Secure by default: the agent refuses NATS others could reach without credentials or TLS (unless --insecure,
which it then says), and its embedded server admits only this host's identities, made at first start."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from agent.auth.local import ensure_local_auth
from agent.auth.policy import load_policy
from agent.auth.transport import is_loopback
from agent.config import parse_args
from agent.embedded import EmbeddedNats
from agent.errors import Unavailable
from volumectl.local import local_seed

from .procs import wait_for
from .stack import Agent, Dockerd, free_port, venv_bin


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("VOLUME_AGENT_"):
            monkeypatch.delenv(name)


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_a_remote_server_without_credentials_is_refused_with_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    err = refusal(["--nats", "tls://nats.example:4222"], capsys)
    assert "nats.example:4222 is not on this host and no credentials are given" in err
    assert "--nats-creds FILE" in err and "--nats-nkey-seed FILE" in err and "VOLUME_AGENT_NATS_CREDS" in err
    assert "--insecure (VOLUME_AGENT_INSECURE=1)" in err


def test_a_remote_server_in_the_clear_is_refused_even_with_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    err = refusal(["--nats", "nats://10.0.0.5:4222", "--nats-user", "a", "--nats-password", "b"], capsys)
    assert "nats://10.0.0.5:4222 is not on this host and not TLS" in err and "use tls://HOST:PORT" in err
    assert "no credentials" not in err


def test_one_remote_url_among_local_ones_is_enough_to_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    assert "nats://nats-2:4222" in refusal(["--nats", "nats://127.0.0.1:4222,nats://nats-2:4222"], capsys)


@pytest.mark.parametrize("argv", [
    ["--nats", "tls://nats-1:4222", "--nats-nkey-seed", "/etc/volume-agent/agent.nk"],
    ["--nats", "nats://nats-1:4222", "--nats-creds", "/x.creds", "--nats-tls-ca", "/ca.crt"],  # a CA makes it TLS
    ["--nats", "tls://user:secret@nats-1:4222"],  # credentials in the URL
    ["--nats", "nats://127.0.0.1:4222"],
    ["--nats", "nats://localhost:4222,nats://[::1]:4222,127.0.0.2:4222"],
    [],  # the embedded server on 127.0.0.1
])
def test_secure_or_local_connections_start_without_insecure(argv: list[str]) -> None:
    assert parse_args(argv).insecure == ()


def test_insecure_runs_anyway_and_keeps_what_it_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse_args(["--nats", "nats://10.0.0.5:4222", "--insecure"])
    assert len(s.insecure) == 2 and "no credentials are given" in s.insecure[0] and "not TLS" in s.insecure[1]
    monkeypatch.setenv("VOLUME_AGENT_INSECURE", "1")
    assert parse_args(["--nats", "nats://10.0.0.5:4222"]).insecure == s.insecure
    monkeypatch.setenv("VOLUME_AGENT_INSECURE", "0")
    with pytest.raises(SystemExit):
        parse_args(["--nats", "nats://10.0.0.5:4222"])


def test_an_embedded_server_open_to_the_network_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = refusal(["--embedded-listen", "0.0.0.0:4222"], capsys)
    assert "the embedded nats-server listens on 0.0.0.0:4222" in err and "keep --embedded-listen on 127.0.0.1" in err


def test_loopback_means_a_loopback_address_or_localhost_never_a_name_resolved() -> None:
    assert all(is_loopback(u) for u in ("nats://127.0.0.1:4222", "tls://[::1]:4222", "localhost:4222", "127.9.9.9",
                                        "nats://[::ffff:127.0.0.1]:4222"))
    assert not any(is_loopback(u) for u in ("nats://nats-1:4222", "nats://10.0.0.1", "nats://0.0.0.0:4222",
                                            "nats://127.0.0.1.example.com:4222"))


def test_local_identities_are_made_once_root_only_and_the_policy_names_them(tmp_path: Path) -> None:
    auth = ensure_local_auth(tmp_path, "web-1")
    assert stat.S_IMODE(auth.dir.stat().st_mode) == 0o700
    files = {p.name: p for p in auth.dir.iterdir()}
    assert set(files) == {"agent.nk", "local-operator.nk", "policy.toml"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
    policy = load_policy(auth.policy)
    by_key = policy.by_key()
    assert by_key[auth.operator_key].role == "operator" and by_key[auth.operator_key].hosts == ["web-1"]
    assert by_key[auth.agent_key].role == "agent"
    before = {n: p.read_bytes() for n, p in files.items()}
    auth.policy.write_text(auth.policy.read_text() + "\n# edited\n")
    again = ensure_local_auth(tmp_path, "web-1")
    assert (again.agent_key, again.operator_key) == (auth.agent_key, auth.operator_key)
    assert again.agent_seed.read_bytes() == before["agent.nk"] and "# edited" in again.policy.read_text()
    for seed in (auth.agent_seed, auth.operator_seed):  # public keys only
        assert seed.read_text().strip() not in auth.server_config()


def test_a_seed_others_may_read_is_refused_with_what_to_do(tmp_path: Path) -> None:
    auth = ensure_local_auth(tmp_path, "web-1")
    auth.agent_seed.chmod(0o644)
    with pytest.raises(Unavailable, match=r"readable by others.*chmod 600"):
        ensure_local_auth(tmp_path, "web-1")


def test_volumectl_finds_the_local_operator_seed_under_the_data_dir(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert local_seed(tmp_path) is None
    auth = ensure_local_auth(tmp_path, "web-1")
    assert local_seed(tmp_path) == auth.operator_seed
    monkeypatch.setenv("VOLUME_AGENT_DATA_DIR", str(tmp_path))
    assert local_seed() == auth.operator_seed


async def refused_connect(url: str, **kw: Any) -> None:
    """A connection expected to fail; nats-py leaves its socket open after a failed connect: close it."""

    async def quiet(exc: Exception) -> None:
        pass

    nc = Client()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=quiet, **kw)
    finally:
        await nc.close()


async def test_the_embedded_server_admits_only_the_agent_and_the_local_operator(tmp_path: Path) -> None:
    auth = ensure_local_auth(tmp_path, "web-1")
    embedded = EmbeddedNats(tmp_path, f"127.0.0.1:{free_port()}", "embedded-auth-test", auth)
    await embedded.start()
    try:
        for seed in (auth.agent_seed, auth.operator_seed):
            nc = await nats.connect(embedded.url, nkeys_seed=str(seed), allow_reconnect=False)
            await nc.close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await refused_connect(embedded.url)
        stranger = ensure_local_auth(tmp_path / "other", "web-2")
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await refused_connect(embedded.url, nkeys_seed=str(stranger.operator_seed))
    finally:
        await embedded.stop()


@pytest.mark.integration
def test_run_agent_then_volumectl_ls_on_the_same_host(dockerd: Dockerd, tmp_path: Path) -> None:
    """README's first command (tests/test_readme.py runs it as written): the agent with its embedded server, then
    volumectl with no credentials given: it finds the local operator's seed under the data dir. --insecure shows in
    the inventory."""
    port = free_port()
    data = tmp_path / "data"
    agent = Agent("sec-local", dockerd.url, "", data,
                  ["--embedded-listen", f"0.0.0.0:{port}", "--insecure", "--sizes-every", "0"]).start()
    try:
        dockerd.docker("volume", "create", "sec-local-vol")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")}
        ctl = [venv_bin("volumectl"), "--nats", f"nats://127.0.0.1:{port}", "--host", "sec-local"]
        out = subprocess.run([*ctl, "ls"], capture_output=True, text=True, timeout=60,
                             env={**env, "VOLUME_AGENT_DATA_DIR": str(data)})
        assert out.returncode == 0, out.stderr
        assert "sec-local-vol" in out.stdout
        out = subprocess.run([*ctl, "--json", "inventory"], capture_output=True, text=True, timeout=60,
                             env={**env, "VOLUME_AGENT_DATA_DIR": str(data)})
        snapshot = json.loads(out.stdout)["result"]
        assert snapshot["insecure"] and "listens on 0.0.0.0" in snapshot["insecure"][0]
        # The local operator sets a backup policy that this host's agent applies (signed with its seed).
        local = {**env, "VOLUME_AGENT_DATA_DIR": str(data)}
        out = subprocess.run([*ctl, "policy", "set", "local-nightly", "--schedule", "@daily", "--keep-daily", "7"],
                             capture_output=True, text=True, timeout=60, env=local)
        assert out.returncode == 0, out.stderr
        def explained() -> bool:  # once the agent has read the bucket (at the write's signal)
            out = subprocess.run([*ctl, "policy", "explain", "sec-local-vol"], capture_output=True, text=True,
                                 timeout=60, env=local)
            return "policy local-nightly: pending" in out.stdout

        wait_for(explained, 20, "the local operator's policy applied")
        assert '"agent.insecure"' in agent.log()
        # Without the seed (another data dir, as a user who cannot read it would be): refused, and told why.
        out = subprocess.run([*ctl, "ls"], capture_output=True, text=True, timeout=60,
                             env={**env, "VOLUME_AGENT_DATA_DIR": str(tmp_path / "elsewhere")})
        assert out.returncode == 1 and "Authorization Violation" in out.stderr
        assert "local-operator.nk" in out.stderr and "VOLUME_AGENT_DATA_DIR" in out.stderr
        for seed in (data / "auth").glob("*.nk"):  # no seed in any log
            assert seed.read_text().strip() not in agent.log() + (data / "nats" / "nats-server.log").read_text()
    finally:
        agent.stop()
        dockerd.docker("volume", "rm", "-f", "sec-local-vol")

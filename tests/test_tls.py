"""NATS over TLS: the agent and its clients through a real nats-server with TLS (a test CA); a client that does
not trust the CA cannot connect; the agent never falls back to the clear; deploy/'s configs run as written."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client

from agent.auth.local import ensure_local_auth
from volumectl.client import AgentClient
from volumectl.signing import Signer

from .identities import Identities
from .stack import Agent, Dockerd, NatsServer, free_port, venv_bin, wait_for
from .tls import TestCA, TlsFiles

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca")).make()


@pytest.fixture(scope="module")
def server_files(ca: TestCA) -> TlsFiles:
    return ca.issue("server")  # server.crt, server.key beside ca.crt: the names deploy/ uses


@pytest.fixture(scope="module")
def tls_nats(server_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    n = NatsServer(tmp_path_factory.mktemp("tls-nats"), tls=server_files).start()
    yield n
    n.stop()


async def _quiet(exc: Exception) -> None:
    pass


async def refused(url: str, **kw: Any) -> None:
    """Connect, expecting a refusal; nats-py leaves a failed connection's socket open, so close it."""
    nc = Client()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=3, error_cb=_quiet, **kw)
    finally:
        await nc.close()


async def test_the_agent_and_its_clients_work_over_tls_first_or_info_first(
    dockerd: Dockerd, tls_nats: NatsServer, ca: TestCA, tmp_path: Path, identities: Identities
) -> None:
    assert tls_nats.url.startswith("tls://")
    agent = Agent("tls-a", dockerd.url, tls_nats.url, tmp_path / "agent", tls_nats.agent_args,
                  auth=identities).start()
    ops = identities.operator
    try:
        client = await AgentClient.connect([tls_nats.url], signer=ops, tls=ca.client_context(),
                                           tls_handshake_first=True)
        try:
            reply = await client.request("tls-a", "list", {})
            assert reply.ok, reply.error
        finally:
            await client.close()
        # INFO first, then TLS (the nats CLI's way, volumectl's): served too, after the server's 300 ms.
        client = await AgentClient.connect([tls_nats.url], signer=ops, tls=ca.client_context())
        try:
            assert (await client.request("tls-a", "list", {})).ok
        finally:
            await client.close()
    finally:
        agent.stop()


@pytest.mark.parametrize("info_first", [False, True])
def test_a_client_that_does_not_trust_the_ca_cannot_connect(tls_nats: NatsServer, info_first: bool) -> None:
    """TLS first (the agent's way), or INFO first (nats-py's default, the nats CLI's): the handshake fails. Seen
    with a bare socket: nats-py's close() hangs after a failed handshake, which a test cannot afford."""
    with socket.create_connection(("127.0.0.1", tls_nats.port), timeout=5) as raw:
        if info_first:
            assert b'"tls_required":true' in raw.recv(4096)  # after the server's 300 ms for a TLS-first client
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_the_agent_never_talks_to_a_server_in_the_clear_when_told_tls(
    dockerd: Dockerd, ca: TestCA, tmp_path: Path, identities: Identities
) -> None:
    """A plain server (or anyone on the path pretending to be it) gets no session: the agent starts TLS first,
    and says what the server lacks."""
    plain = NatsServer(tmp_path / "plain-nats").start()
    agent = Agent("tls-b", dockerd.url, f"tls://127.0.0.1:{plain.port}", tmp_path / "agent",
                  ["--nats-tls-ca", str(ca.cert)], auth=identities).start(wait=False)
    try:
        wait_for(lambda: "handshake_first" in agent.log(), 20, "the agent's nats.error")
        assert '"agent.ready"' not in agent.log() and '"nats.connected"' not in agent.log()
    finally:
        agent.stop()
        plain.stop()


def _deploy_config(name: str, tls_dir: Path, store: Path, port: int) -> str:
    """deploy/<name> as written, with this test's paths and ports."""
    return ((DEPLOY / name).read_text()
            .replace("/etc/nats/tls/", f"{tls_dir}/")
            .replace("/var/lib/nats/jetstream", str(store))
            .replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
            .replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{free_port()}")
            .replace("http: 127.0.0.1:8222", f"http: 127.0.0.1:{free_port()}"))


@pytest.fixture
def deploy_server(server_files: TlsFiles, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """deploy/nats-server.conf as written (this test's paths and ports), with an authorization file beside it
    as `volume-agent auth init` writes one: two nkey users. Also checks that both deploy configs parse."""
    ids = ensure_local_auth(tmp_path / "ids", "deploy-a")  # an agent's and an operator's nkey
    (tmp_path / "nats-auth.conf").write_text(ids.server_config())
    port = free_port()
    for name in ("nats-server.conf", "nats-cluster.conf"):
        (tmp_path / name).write_text(_deploy_config(name, server_files.cert.parent, tmp_path / "js", port))
        checked = subprocess.run([venv_bin("nats-server"), "-c", str(tmp_path / name), "-t"], capture_output=True,
                                 text=True, check=False, cwd="/")
        assert checked.returncode == 0 and "is valid" in checked.stderr + checked.stdout, checked.stderr
    with open(tmp_path / "nats.log", "wb") as log:
        server = subprocess.Popen([venv_bin("nats-server"), "-c", str(tmp_path / "nats-server.conf")],
                                  stdout=log, stderr=log)
    try:
        wait_for(lambda: "Server is ready" in (tmp_path / "nats.log").read_text(), 15, "nats-server", server)
        yield f"tls://127.0.0.1:{port}", ids.dir
    finally:
        server.terminate()
        server.wait(15)


async def test_deploy_configs_parse_and_the_single_node_runs_with_tls_and_nkey_users(
    dockerd: Dockerd, ca: TestCA, deploy_server: tuple[str, Path], tmp_path: Path
) -> None:
    """The agent connects with TLS and its nkey, an operator with its own; nobody connects without an identity."""
    url, ids = deploy_server
    agent = Agent("deploy-a", dockerd.url, url, tmp_path / "agent",
                  ["--nats-tls-ca", str(ca.cert), "--nats-nkey-seed", str(ids / "agent.nk"),
                   "--policy", str(ids / "policy.toml")]).start()
    try:
        operator = ids / "local-operator.nk"
        client = await AgentClient.connect([url], signer=Signer.from_file(operator), tls=ca.client_context(),
                                           tls_handshake_first=True, nkeys_seed=str(operator))
        try:
            assert (await client.request("deploy-a", "list", {})).ok
        finally:
            await client.close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await refused(url, tls=ca.client_context(), tls_handshake_first=True)
    finally:
        agent.stop()


def test_an_agent_given_a_remote_server_without_credentials_exits_2_saying_what_to_give(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLUME_AGENT_")}
    started = time.monotonic()
    out = subprocess.run([venv_bin("volume-agent"), "--nats", "tls://nats.example.invalid:4222", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 2 and time.monotonic() - started < 10
    assert "no credentials are given" in out.stderr and "--nats-nkey-seed FILE" in out.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was made

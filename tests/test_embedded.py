"""The embedded nats-server fsyncs every JetStream write before it acks (`sync_interval: always`)."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import nats
import pytest

from agent.auth.local import ensure_local_auth
from agent.embedded import EmbeddedNats
from agent.errors import Unavailable

from .stack import free_port, wait_for


async def test_the_embedded_server_runs_with_sync_always_and_jetstream_works(tmp_path: Path) -> None:
    auth = ensure_local_auth(tmp_path, "t")
    embedded = EmbeddedNats(tmp_path, f"127.0.0.1:{free_port()}", "embedded-test", auth)
    await embedded.start()
    try:
        assert "sync_interval: always" in embedded.config.read_text()
        nc = await nats.connect(embedded.url, nkeys_seed=str(auth.agent_seed))
        try:
            js = nc.jetstream()
            await js.add_stream(name="T", subjects=["t.>"])
            ack = await js.publish("t.x", b"1")
            assert ack.seq == 1
        finally:
            await nc.close()
    finally:
        await embedded.stop()


def test_the_server_reports_sync_always_for_the_embedded_command_line(tmp_path: Path) -> None:
    """The same command line, plus a monitoring port: /varz shows what the server made of the config."""
    embedded = EmbeddedNats(tmp_path, f"127.0.0.1:{free_port()}", "embedded-test", ensure_local_auth(tmp_path, "t"))
    embedded.write_config()
    http = free_port()
    proc = subprocess.Popen([*embedded.argv(), "-m", str(http)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{http}/varz"
        wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, 10, "nats-server /varz", proc)
        with urllib.request.urlopen(url, timeout=5) as resp:
            config = json.load(resp)["jetstream"]["config"]
        assert config["sync_always"] is True
        assert config["store_dir"] == str(embedded.store / "jetstream")
    finally:
        proc.terminate()
        proc.wait(15)


async def test_a_server_that_cannot_start_says_why_from_its_log(tmp_path: Path) -> None:
    """The server logs to a file (a pipe nobody reads would block it); a failed start quotes its last line."""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        embedded = EmbeddedNats(tmp_path, f"127.0.0.1:{port}", "embedded-test", ensure_local_auth(tmp_path, "t"))
        with pytest.raises(Unavailable, match="address already in use"):
            await embedded.start()
    assert "address already in use" in embedded.log_file.read_text()

"""What arrives over the bus cannot stop, fool or replay into an agent: a body nested past any parser, on the
durable path and the request path, a signed request captured before a restart, a durable command re-published
without ids; and no password in a NATS URL is printed."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import Reply

from .conftest import Host
from .identities import Identities
from .stack import Dockerd, NatsServer, venv_bin, wait_for
from .test_durable import consumed, next_outcome

pytestmark = pytest.mark.integration

# Under the session agent's --max-body 65536, and far deeper than msgspec's recursion limit.
DEEP = b'{"labels":' + b"[" * 30_000 + b"]" * 30_000 + b"}"


def volumes(host: Host) -> list[str]:
    return host.docker.docker("volume", "ls", "-q").split()


async def signed_durable(host: Host, op: str, body: dict[str, Any]) -> str:
    cmd_id = uuid.uuid4().hex
    subject, data = f"vol.cmd.{host.id}.{op}", msgspec.json.encode({**body, "id": cmd_id})
    assert host.client.signer is not None
    headers = {"Nats-Msg-Id": cmd_id, **host.client.signer.headers(subject, data, cmd_id)}
    await host.client.nc.jetstream().publish(subject, data, headers=headers)
    return cmd_id


async def test_a_deeply_nested_durable_command_is_refused_once_and_the_commands_behind_it_still_run(
    host: Host,
) -> None:
    """Issue 14, case 1: the unsigned body used to kill the consumer loop (RecursionError reading its id)."""
    js, subject = host.client.nc.jetstream(), f"vol.cmd.{host.id}.create"
    for _ in range(3):  # as many as it takes an attacker: each used to kill the loop again
        await js.publish(subject, DEEP, headers={"Nats-Msg-Id": uuid.uuid4().hex})
    assert host.client.signer is not None
    signed_id = uuid.uuid4().hex
    headers = {"Nats-Msg-Id": signed_id, **host.client.signer.headers(subject, DEEP, signed_id)}
    await js.publish(subject, DEEP, headers=headers)
    refused = await next_outcome(host.client, host.id, "create", signed_id)
    assert refused.error is not None and refused.error.code == "invalid", refused
    assert "nests deeper than 32" in refused.error.message and refused.caller == "ops"
    cmd_id = await signed_durable(host, "create", {"name": "after-deep"})
    reply = await next_outcome(host.client, host.id, "create", cmd_id)
    assert reply.ok, reply.error
    await consumed(host.client, host.id, "create")  # every one acked: none waits to be delivered again
    assert volumes(host) == ["after-deep"]
    assert "commands.loop_crashed" not in host.agent.log() and "RecursionError" not in host.agent.log()


async def test_a_deeply_nested_request_gets_one_envelope_signed_or_not(host: Host) -> None:
    """Issue 14, case 2: it used to get an empty body and a RecursionError(...) service error."""
    nc = host.client.nc
    assert host.client.signer is not None
    cases = [
        (f"vol.req.{host.id}.create", True, "invalid", "nests deeper than 32"),
        (f"vol.req.{host.id}.create", False, "forbidden", "is not signed"),
        ("vol.all.inventory", False, "forbidden", "is not signed"),
        ("vol.all.inventory", True, "invalid", "nests deeper than 32"),
    ]
    for subject, signed, code, why in cases:
        headers = host.client.signer.headers(subject, DEEP) if signed else None
        if subject.startswith("vol.all."):
            replies = await gather_raw(host, subject, DEEP, headers)
            assert len(replies) >= 1
            mine = [r for r in replies if r.host == host.id]
            assert len(mine) == 1, replies
            reply = mine[0]
        else:
            msg = await nc.request(subject, DEEP, timeout=10, headers=headers)
            reply = msgspec.json.decode(msg.data, type=Reply)
            assert msg.headers is not None and msg.headers["Nats-Service-Error-Code"] in ("400", "403")
        assert reply.error is not None and reply.error.code == code and why in reply.error.message, reply
    assert volumes(host) == []
    assert (await host.req("list")).ok


async def gather_raw(host: Host, subject: str, data: bytes, headers: dict[str, str] | None) -> list[Reply]:
    """Every agent's reply to one fleet request, until this host's has come."""
    nc = host.client.nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.flush()
    replies: list[Reply] = []
    try:
        await nc.publish(subject, data, reply=inbox, headers=headers)
        while not any(r.host == host.id for r in replies):
            replies.append(msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=Reply))
    finally:
        await sub.unsubscribe()
    return replies


async def test_a_durable_command_published_again_without_ids_is_not_applied_twice(host: Host) -> None:
    """A captured durable command without `id` or Nats-Msg-Id used to get a new id each time it came."""
    subject, data = f"vol.cmd.{host.id}.create", b'{"name": "no-ids"}'
    assert host.client.signer is not None
    headers = host.client.signer.headers(subject, data)
    js = host.client.nc.jetstream()
    await js.publish(subject, data, headers=headers)
    await consumed(host.client, host.id, "create")
    assert volumes(host) == ["no-ids"]
    host.docker.docker("volume", "rm", "no-ids")
    await js.publish(subject, data, headers=headers)  # the attacker's copy
    await consumed(host.client, host.id, "create")
    assert volumes(host) == []


async def test_a_signed_request_captured_before_a_restart_is_refused_after_it(
    make_agent: Any, client: Any,
) -> None:
    """Issue 14, case 4: the replay cache was only in memory; a `remove` signed once removed a volume twice."""
    agent = make_agent()
    host = Host(agent.host_id, None, agent, client)  # type: ignore[arg-type]
    nc = client.nc
    assert client.signer is not None
    assert (await host.req("create", {"name": "twice"})).ok
    subject, body = f"vol.req.{agent.host_id}.remove", b'{"name": "twice"}'
    headers = client.signer.headers(subject, body)
    first = msgspec.json.decode((await nc.request(subject, body, timeout=10, headers=headers)).data, type=Reply)
    assert first.ok, first.error
    agent.stop()
    agent.start()
    assert (await host.req("create", {"name": "twice"})).ok
    again = msgspec.json.decode((await nc.request(subject, body, timeout=10, headers=headers)).data, type=Reply)
    assert again.error is not None and again.error.code == "forbidden", again
    assert "before this agent started" in again.error.message
    listed = await host.ok("list")
    assert [v["name"] for v in listed["volumes"]] == ["twice"]


def test_a_password_in_the_nats_url_is_never_printed(tmp_path: Path, identities: Identities,
                                                     nats_server: NatsServer, dockerd: Dockerd) -> None:
    """Issue 14, case 6: it was logged in clear in every nats.error line and echoed in the start-up refusal."""
    secret = "s3cr3t-" + uuid.uuid4().hex[:8]
    # Refused at start: off this host without TLS (nothing is sent there).
    out = subprocess.run(
        [venv_bin("volume-agent"), "--nats", f"nats://alice:{secret}@192.0.2.1:4222", "--host-id", "h1",
         "--data-dir", str(tmp_path / "d1")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "refusing to run" in out.stderr, out.stderr
    assert secret not in out.stderr and "alice:***@192.0.2.1" in out.stderr
    # Logged while it retries: the real server refuses the password, and a token, as the agent's user.
    assert identities.tls is not None
    port = nats_server.url.rsplit(":", 1)[1]
    for url in (f"tls://alice:{secret}@127.0.0.1:{port}", f"tls://{secret}@127.0.0.1:{port}"):
        log_path = tmp_path / f"agent-{uuid.uuid4().hex[:6]}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [venv_bin("volume-agent"), "--nats", url, "--host-id", "h2", "--data-dir", str(tmp_path / "d2"),
                 "--policy", str(identities.policy), "--nats-tls-ca", str(identities.tls.ca),
                 "--docker", dockerd.url],
                stdout=log, stderr=log)
        try:
            wait_for(lambda p=log_path: "nats.unreachable" in p.read_text(), 30, "the agent retrying", proc)
        finally:
            proc.terminate()
            proc.wait(30)
        text = log_path.read_text()
        assert secret not in text and "127.0.0.1" in text, text[-2000:]

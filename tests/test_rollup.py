"""No identity can empty a shared bucket or stream with one publish carrying `Nats-Rollup: all`.

NATS permissions scope writes by subject, not by header: a KV bucket that accepts rollup headers (as nats-py's
`create_key_value` makes them) can be emptied by whoever may write one key of it. Here, on the tests' secured
nats-server, each host agent and the host-limited operator `far` try it on what they may write; the others'
keys and messages stay. Then buckets as an older version made them are hardened in place by the admin command.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid

import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StreamConfig
from structlog.testing import capture_logs

from agent.config import Settings
from agent.denials import Denials
from agent.streams import (
    LEASE_MAX_VALUE,
    OUTCOME_TTL_S,
    POLICIES_MAX_BYTES,
    POLICY_HISTORY,
    POLICY_MAX_VALUE,
    ensure_lease_bucket,
)
from contracts import Subjects
from contracts.subjects import catalog_key, outcome_key, policy_copy_key
from volumectl.client import AgentClient
from volumectl.policies import remove_policy

from .identities import Identities
from .procs import venv_bin
from .stack import Agent, NatsServer

pytestmark = pytest.mark.integration

S = Subjects("vol")
ROLLUP = {"Nats-Rollup": "all"}


def _keys(host: str) -> dict[str, str]:
    """A key `host` may write in each shared bucket, by bucket."""
    return {S.outcomes_bucket: outcome_key(host, "rollup-test"), S.inventory_bucket: host,
            S.catalog_bucket: catalog_key(host, "rollup-test"), S.leases_bucket: host,
            S.policy_copies_bucket: policy_copy_key(host, "rollup-test")}


async def _refused(nc: Client, subject: str) -> None:
    """A publish with `Nats-Rollup: all` (and a KV purge, itself a rollup) gets an error, not an ack."""
    with pytest.raises(nats.js.errors.APIError) as refused:
        await nc.jetstream().publish(subject, b"", headers=ROLLUP)
    assert refused.value.err_code == 10111, refused.value  # JSStreamRollupFailedError: "rollup not permitted"


async def _messages(admin: Client, stream: str) -> int:
    return int((await admin.jetstream().stream_info(stream)).state.messages)


async def test_an_agent_cannot_empty_a_shared_bucket_or_stream_with_a_rollup(
    agent: Agent, nats_server: NatsServer, identities: Identities,
) -> None:
    """`me` rolls up its own key of every bucket it may write, its own outcomes and its own events: each is
    refused, and `other`'s keys are all still there."""
    me, other = f"roll-{uuid.uuid4().hex[:6]}", f"roll-{uuid.uuid4().hex[:6]}"
    for host in (me, other):
        identities.agent(host)  # its NATS user, as `auth init --host` makes it
    admin = await identities.nats([nats_server.url])
    mine, theirs = await identities.nats([nats_server.url], me), await identities.nats([nats_server.url], other)
    try:
        for bucket, key in _keys(other).items():
            await (await theirs.jetstream().key_value(bucket)).put(key, b"other's")
        before = {s: await _messages(admin, s) for s in (S.res_stream, S.evt_stream)}
        for bucket, key in _keys(me).items():
            await _refused(mine, f"$KV.{bucket}.{key}")
            with pytest.raises(nats.js.errors.APIError):
                await (await mine.jetstream().key_value(bucket)).purge(key)
            entry = await (await admin.jetstream().key_value(bucket)).get(_keys(other)[bucket])
            assert entry.value == b"other's", bucket
        await _refused(mine, S.res(me, "create"))
        await _refused(mine, S.evt(me, "volume.created"))
        for stream, n in before.items():
            assert await _messages(admin, stream) >= n, stream
    finally:
        for bucket, key in _keys(other).items():
            await (await theirs.jetstream().key_value(bucket)).delete(key)
        for c in (admin, mine, theirs):
            await c.close()


async def test_a_host_limited_operator_cannot_empty_the_policies_bucket_or_the_command_stream(
    agent: Agent, nats_server: NatsServer, identities: Identities, client: AgentClient,
) -> None:
    """`far` (operator of host `elsewhere` only) may write any policy key and `elsewhere`'s commands: a rollup
    or a KV purge there is refused, and the entry `ops` wrote stays."""
    genuine, target = f"roll-{uuid.uuid4().hex[:6]}", f"roll-{uuid.uuid4().hex[:6]}"
    await remove_policy(client.nc.jetstream(), S, identities.operator, genuine)  # a signed entry: harmless
    far = await identities.nats([nats_server.url], "far")
    admin = await identities.nats([nats_server.url])
    try:
        kv = await far.jetstream().key_value(S.policies_bucket)
        await _refused(far, S.policy_subject(target))
        with pytest.raises(nats.js.errors.APIError):
            await kv.purge(genuine)
        assert (await kv.get(genuine)).value
        before = await _messages(admin, S.cmd_stream)
        await _refused(far, S.cmd("elsewhere", "create"))
        assert await _messages(admin, S.cmd_stream) >= before
    finally:
        await far.close()
        await admin.close()


def _harden(identities: Identities, url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert identities.tls is not None
    return subprocess.run(
        [venv_bin("volume-agent"), "auth", "harden-buckets", "--nats", url, "--seed", str(identities.seed("admin")),
         "--tls-ca", str(identities.tls.ca), "--prefix", prefix, *args],
        capture_output=True, text=True, timeout=60)


async def test_harden_buckets_turns_rollups_off_on_buckets_an_older_version_made_and_keeps_their_contents(
    nats_server: NatsServer, identities: Identities,
) -> None:
    """Buckets as nats-py made them (a prefix of the test's own), and an audit stream an admin let accept
    rollups: the agent names the one it would use; `harden-buckets` changes nothing with --dry-run, then updates
    them all in place (values, history and TTL kept), after which a rollup is refused and the agent says
    nothing; run again, it finds nothing to do."""
    prefix = f"hb{uuid.uuid4().hex[:6]}"
    s = Subjects(prefix)
    old = [KeyValueConfig(bucket=s.outcomes_bucket, ttl=OUTCOME_TTL_S),
           KeyValueConfig(bucket=s.inventory_bucket, history=1),
           KeyValueConfig(bucket=s.catalog_bucket, history=1),
           KeyValueConfig(bucket=s.policies_bucket, history=POLICY_HISTORY, max_value_size=POLICY_MAX_VALUE,
                          max_bytes=POLICIES_MAX_BYTES),
           KeyValueConfig(bucket=s.leases_bucket, history=1, max_value_size=LEASE_MAX_VALUE)]
    admin = await identities.nats([nats_server.url])
    js = admin.jetstream()
    made = [f"KV_{c.bucket}" for c in old] + [s.res_stream]
    try:
        for cfg in old:
            kv = await js.create_key_value(cfg)
            for key in ("a", "b", "c"):
                await kv.put(key, b"1")
                await kv.put(key, b"2")
        await js.add_stream(StreamConfig(name=s.res_stream, subjects=[f"{prefix}.res.>"], allow_rollup_hdrs=True))
        await js.publish(f"{prefix}.res.h.create", b"{}")
        settings = Settings(nats_urls=[nats_server.url], docker_url="unix:///nowhere", host_id="h",
                            data_dir=identities.root, subject_prefix=prefix)
        with capture_logs() as logs:
            await ensure_lease_bucket(js, settings, Denials())
        assert [e["bucket"] for e in logs if e["event"] == "nats.bucket_allows_rollup"] == [s.leases_bucket]

        dry = await asyncio.to_thread(_harden, identities, nats_server.url, prefix, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.count("would harden") == len(made), dry.stdout
        assert [(await js.stream_info(name)).config.allow_rollup_hdrs for name in made] == [True] * len(made)

        done = await asyncio.to_thread(_harden, identities, nats_server.url, prefix)
        assert done.returncode == 0, done.stderr
        for name in made:
            assert f"hardened     {name}" in done.stdout, done.stdout
        assert f"absent       KV_{s.policy_copies_bucket}" in done.stdout
        for cfg in old:
            info = await js.stream_info(f"KV_{cfg.bucket}")
            assert (info.config.allow_rollup_hdrs, info.config.deny_purge) == (False, True), cfg.bucket
            assert (info.config.max_msgs_per_subject, info.config.max_age) == (cfg.history, cfg.ttl or 0), cfg.bucket
            assert info.state.messages == 3 * min(cfg.history, 2), cfg.bucket
            await _refused(admin, f"$KV.{cfg.bucket}.a")
            assert (await (await js.key_value(cfg.bucket)).get("b")).value == b"2"
        assert not (await js.stream_info(s.res_stream)).config.allow_rollup_hdrs
        await _refused(admin, f"{prefix}.res.h.create")

        with capture_logs() as logs:
            await ensure_lease_bucket(js, settings, Denials())
        assert [e for e in logs if e["log_level"] == "warning"] == []
        again = await asyncio.to_thread(_harden, identities, nats_server.url, prefix)
        assert again.returncode == 0 and "hardened" not in again.stdout, again.stdout
        assert again.stdout.count("already") == len(made), again.stdout
    finally:
        for name in made:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
        await admin.close()

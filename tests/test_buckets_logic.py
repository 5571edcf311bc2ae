"""Every stream and bucket the agent makes refuses rollup headers, and keeps the limits nats-py's buckets had.

NATS permissions cannot filter on headers: a KV bucket that accepts `Nats-Rollup: all` can be emptied by whoever may
write one key of it. A recording JetStream stands in for the server (tests/test_rollup.py sends the publishes to a
real one).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from structlog.testing import capture_logs

from agent.config import Settings
from agent.denials import Denials
from agent.streams import (
    LEASE_MAX_VALUE,
    OUTCOME_TTL_S,
    POLICIES_MAX_BYTES,
    POLICY_COPIES_MAX_BYTES,
    POLICY_HISTORY,
    POLICY_MAX_VALUE,
    ensure_jetstream,
    ensure_lease_bucket,
    ensure_maintenance_bucket,
    ensure_policy_copies,
    rollup_risks,
)
from contracts import Subjects

# What the agent sets differently from nats-py's create_key_value; every other field is the same.
HARDENED = {"allow_rollup_hdrs": False, "allow_msg_ttl": False, "deny_purge": True}


class RecordingJetStream:
    """add_stream records; a stream in `existing` is there already with that config (add_stream refuses)."""

    def __init__(self, existing: dict[str, StreamConfig] | None = None) -> None:
        self.made: list[StreamConfig] = []
        self.existing = existing or {}

    async def add_stream(self, config: StreamConfig) -> Any:
        if config.name in self.existing:
            raise nats.js.errors.BadRequestError(code=400, err_code=10058,
                                                 description="stream name already in use with a different config")
        self.made.append(config)
        return SimpleNamespace(config=config)

    async def update_stream(self, config: StreamConfig) -> Any:
        raise AssertionError("the agent updates no stream here")

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(config=self.existing[name])

    async def key_value(self, bucket: str) -> Any:
        return SimpleNamespace(bucket=bucket)


def _settings(prefix: str, **kw: Any) -> Settings:
    return Settings(nats_urls=["nats://127.0.0.1:4222"], docker_url="unix:///nowhere", host_id="h",
                    data_dir=Path("/nowhere"), subject_prefix=prefix, **kw)


async def _make_all(js: RecordingJetStream, settings: Settings) -> None:
    fake, denials = cast(JetStreamContext, js), Denials()
    await ensure_jetstream(fake, settings, denials)
    await ensure_lease_bucket(fake, settings, denials)
    await ensure_policy_copies(fake, settings.subjects, settings.replicas, denials)
    await ensure_maintenance_bucket(fake, settings, denials)


async def _as_nats_py_makes_it(cfg: KeyValueConfig) -> StreamConfig:
    """The stream nats-py's own create_key_value would make for `cfg` (what earlier versions made)."""
    rec = RecordingJetStream()
    await JetStreamContext.create_key_value(cast(Any, rec), cfg)
    return rec.made[0]


async def test_every_stream_and_bucket_the_agent_makes_refuses_rollup_headers() -> None:
    s = Subjects("vol")
    js = RecordingJetStream()
    await _make_all(js, _settings("vol"))
    made = {c.name: c for c in js.made}
    buckets = {f"KV_{b}" for b in rollup_risks(s)}
    assert set(made) == buckets | {s.cmd_stream, s.res_stream, s.evt_stream}
    for name, cfg in made.items():
        assert not cfg.allow_rollup_hdrs, name
        assert not cfg.allow_msg_ttl, name
    for name in buckets:
        assert (made[name].deny_purge, made[name].deny_delete) == (True, True), name


async def test_the_buckets_keep_the_history_ttl_and_sizes_they_had() -> None:
    """Only the rollup, per-message TTL and purge settings differ from the buckets nats-py made before."""
    s = Subjects("vol")
    js = RecordingJetStream()
    await _make_all(js, _settings("vol", replicas=3, backup_replicas=2))
    made = {c.name: c for c in js.made}
    before = [
        KeyValueConfig(bucket=s.outcomes_bucket, ttl=OUTCOME_TTL_S, replicas=3),
        KeyValueConfig(bucket=s.inventory_bucket, history=1, replicas=3),
        KeyValueConfig(bucket=s.catalog_bucket, history=1, replicas=2),
        KeyValueConfig(bucket=s.policies_bucket, history=POLICY_HISTORY, replicas=3, max_value_size=POLICY_MAX_VALUE,
                       max_bytes=POLICIES_MAX_BYTES),
        KeyValueConfig(bucket=s.leases_bucket, history=1, replicas=3, max_value_size=LEASE_MAX_VALUE),
        KeyValueConfig(bucket=s.policy_copies_bucket, history=1, replicas=3, max_value_size=POLICY_MAX_VALUE,
                       max_bytes=POLICY_COPIES_MAX_BYTES),
    ]
    for cfg in before:
        old = await _as_nats_py_makes_it(cfg)
        assert old.allow_rollup_hdrs  # what made the old buckets unsafe
        assert made[f"KV_{cfg.bucket}"] == dataclasses.replace(old, **HARDENED), cfg.bucket


async def test_a_bucket_an_older_version_made_is_used_and_its_rollups_named_once() -> None:
    """The agent may not update it: it says which bucket, what one publish could do to it, and the admin's fix,
    once per process however often it connects; limits that match are not reported as a difference."""
    prefix = f"u{uuid.uuid4().hex[:8]}"
    s = Subjects(prefix)
    old = await _as_nats_py_makes_it(KeyValueConfig(bucket=s.outcomes_bucket, ttl=OUTCOME_TTL_S))
    js = RecordingJetStream({f"KV_{s.outcomes_bucket}": old})
    with capture_logs() as logs:
        await _make_all(js, _settings(prefix))
        await _make_all(js, _settings(prefix))
    said = [e for e in logs if e["event"] == "nats.bucket_allows_rollup"]
    assert [e["bucket"] for e in said] == [s.outcomes_bucket]
    assert "Nats-Rollup: all" in said[0]["why"] and "run again" in said[0]["why"]
    assert "volume-agent auth harden-buckets" in said[0]["fix"]
    assert not [e for e in logs if e["event"] == "nats.bucket_differs"]


async def test_a_hardened_bucket_with_other_limits_is_reported_as_differing_only() -> None:
    prefix = f"u{uuid.uuid4().hex[:8]}"
    s = Subjects(prefix)
    old = await _as_nats_py_makes_it(KeyValueConfig(bucket=s.catalog_bucket, history=5))
    hardened = dataclasses.replace(old, allow_rollup_hdrs=False, deny_purge=True)  # msg TTL stays: NATS keeps it
    js = RecordingJetStream({f"KV_{s.catalog_bucket}": hardened})
    with capture_logs() as logs:
        await _make_all(js, _settings(prefix))
    assert not [e for e in logs if e["event"] == "nats.bucket_allows_rollup"]
    assert [(e["bucket"], e["wanted"]) for e in logs if e["event"] == "nats.bucket_differs"] == [
        (s.catalog_bucket, {"history": 1})]

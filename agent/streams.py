"""The JetStream streams and buckets an agent needs: made when missing, never deleted.

Under the NATS permissions `volume-agent auth init` generates (agent/auth/permissions.py), an agent may create
its streams and buckets but not change their config, nor delete or purge anything but chunks of its own backup
bucket. A stream or bucket that exists with another config (made by another version, or changed by an admin) is
updated where the agent may, and otherwise used as it is, with a warning that names it: converging it is then
the admin's job (`volume-agent auth harden-buckets` for the rollup setting, agent/auth/buckets.py).

The KV buckets are not made as nats-py makes them (`create_key_value`): those accept rollup headers, and NATS
permissions cannot filter on headers, so whoever may write one key could empty the whole bucket with one publish
carrying `Nats-Rollup: all`. Here no publish can remove another key's values (`kv_stream`); a key is removed by a
delete marker (`kv.delete`), never by a KV purge, which is itself a rollup.
"""

from __future__ import annotations

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ObjectStoreConfig, StreamConfig
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contracts import Subjects

from .config import Settings
from .denials import Denials, Denied

__all__ = ["Buckets", "ensure_jetstream", "ensure_lease_bucket", "ensure_maintenance_bucket", "ensure_object_store",
           "ensure_policy_copies", "kv_stream", "policies_stream", "policy_copies_stream", "rollup_risks"]

log = structlog.get_logger(__name__)

DAY_S = 24 * 3600.0
# The contract promises 24 h of idempotency; twice that leaves room for clocks and slow retries.
OUTCOME_TTL_S = 2 * DAY_S
CMD_MAX_AGE_S = 7 * DAY_S
RES_MAX_AGE_S = 30 * DAY_S
EVT_MAX_AGE_S = 7 * DAY_S
# Publishers set Nats-Msg-Id; the stream drops a re-publish inside this window before we ever see it.
CMD_DUPLICATE_WINDOW_S = 3600.0
# Outcomes carry a Nats-Msg-Id too: an outcome published again (a retry, a redelivered command) is kept once.
RES_DUPLICATE_WINDOW_S = 3600.0
ADMIN_JOB = ("this agent's NATS user may create it but not change it: an admin updates it (nats stream edit), "
             "or starts one agent with admin credentials")

Buckets = tuple[KeyValue, KeyValue, KeyValue, KeyValue | None]
"""The outcomes, inventory, backup catalog and policies buckets."""
# Earlier versions of each policy stay readable (who changed what); agents apply the newest verified one.
POLICY_HISTORY = 16
# Bounds on what the bucket can make every agent read: a policy is a few hundred bytes.
POLICY_MAX_VALUE = 64 * 1024
POLICIES_MAX_BYTES = 64 * 1024 * 1024
# A lease names its holder in a few hundred bytes; one key per host, its latest value only.
LEASE_MAX_VALUE = 4 * 1024
# A repository's maintenance lease not renewed for this long is gone (agent/backup/maintenance.py renews it every
# third of it while restic runs).
MAINTENANCE_LEASE_TTL_S = 60.0

# The copies every agent keeps of the entries it applies: one per host and policy (`<host>.<name>`).
POLICY_COPIES_MAX_BYTES = 256 * 1024 * 1024
# As nats-py's KV buckets have it (2 minutes, or the TTL if shorter).
KV_DUPLICATE_WINDOW_S = 120.0


def rollup_risks(s: Subjects) -> dict[str, str]:
    """What one publish with `Nats-Rollup: all` to a bucket that accepts it would cost, by bucket."""
    return {
        s.outcomes_bucket: "any agent could remove every host's command outcomes: commands already applied would "
                           "run again when their durable message is redelivered or re-sent",
        s.inventory_bucket: "any agent could remove every host's inventory: `volumectl fleet` would show no host "
                            "until each republishes",
        s.catalog_bucket: "any agent could remove every host's backup records: the backups stay in their buckets "
                          "but are no longer listed, restored or pruned",
        s.policies_bucket: "any operator, even one limited to some hosts, could remove every fleet policy from "
                           "the bucket (agents that hold copies keep applying them; a host started afresh may not)",
        s.leases_bucket: "any agent could remove every host's lease: two agents with one host id could both run",
        s.maintenance_bucket: "any agent could remove every repository's maintenance lease: a slot's maintenance "
                              "could run twice (restic's own lock still keeps two prunes apart)",
        s.policy_copies_bucket: "any agent could remove every host's copies of the fleet's policies",
    }


def streams(s: Subjects, replicas: int) -> list[StreamConfig]:
    return [
        StreamConfig(name=s.cmd_stream, subjects=[f"{s.prefix}.cmd.>"], max_age=CMD_MAX_AGE_S,
                     duplicate_window=CMD_DUPLICATE_WINDOW_S, num_replicas=replicas),
        StreamConfig(name=s.res_stream, subjects=[f"{s.prefix}.res.>"], max_age=RES_MAX_AGE_S,
                     duplicate_window=RES_DUPLICATE_WINDOW_S, num_replicas=replicas),
        StreamConfig(name=s.evt_stream, subjects=[f"{s.prefix}.evt.>"], max_age=EVT_MAX_AGE_S,
                     num_replicas=replicas),
    ]


async def ensure_jetstream(js: JetStreamContext, settings: Settings, denials: Denials) -> Buckets:
    """Every stream and KV bucket of the agent, made or found; raises nats-py's errors (NoRespondersError: no
    JetStream)."""
    s, replicas = settings.subjects, settings.replicas
    for cfg in streams(s, replicas):
        await _ensure_stream(js, cfg, denials)
    backup_replicas = settings.backup_replicas or replicas
    return (
        await _ensure_kv(js, kv_stream(s.outcomes_bucket, replicas=replicas, ttl_s=OUTCOME_TTL_S), s),
        await _ensure_kv(js, kv_stream(s.inventory_bucket, replicas=replicas), s),
        await _ensure_kv(js, kv_stream(s.catalog_bucket, replicas=backup_replicas), s),
        await _ensure_policies(js, s, replicas, denials),
    )


async def _optional_kv(js: JetStreamContext, cfg: StreamConfig, s: Subjects, denials: Denials, *, event: str | None,
                       bucket: str, why: str) -> KeyValue | None:
    """A bucket a feature needs, made or found; None where NATS permissions generated before the feature do not let
    the agent make it (said once as `event`, with `why` and the fix, unless `event` is None: the caller says it):
    the agent runs without that feature rather than not at all."""
    try:
        return await denials.call(f"$JS.API.STREAM.CREATE.{cfg.name}", _ensure_kv(js, cfg, s))
    except Denied:
        if event is not None:
            log.warning(event, bucket=bucket, why=why,
                        fix="re-run `volume-agent auth init` and reload the NATS servers")
        return None


async def _ensure_policies(js: JetStreamContext, s: Subjects, replicas: int, denials: Denials) -> KeyValue | None:
    """The policies bucket (permissions from before contract 2.1: no policy is applied)."""
    return await _optional_kv(
        js, policies_stream(s, replicas), s, denials, event="nats.policies_bucket_denied", bucket=s.policies_bucket,
        why="this agent's NATS user may not make the backup policies bucket (permissions generated before contract "
            "2.1): no policy is applied")


async def ensure_lease_bucket(js: JetStreamContext, settings: Settings, denials: Denials) -> KeyValue | None:
    """The host-id leases bucket (agent/lease.py; permissions from before the lease: the agent runs unguarded)."""
    s = settings.subjects
    return await _optional_kv(
        js, kv_stream(s.leases_bucket, replicas=settings.replicas, max_value=LEASE_MAX_VALUE), s, denials,
        event="nats.leases_bucket_denied", bucket=s.leases_bucket,
        why="this agent's NATS user may not make the host-id leases bucket (permissions generated before the "
            "lease): nothing stops a second agent with this host id from running")


async def ensure_maintenance_bucket(js: JetStreamContext, settings: Settings,
                                    denials: Denials) -> KeyValue | None:
    """The repository maintenance leases bucket (agent/backup/maintenance.py); None where NATS permissions
    generated before it do not let the agent make it (the caller says so: it then runs no maintenance)."""
    s = settings.subjects
    cfg = kv_stream(s.maintenance_bucket, replicas=settings.replicas, ttl_s=MAINTENANCE_LEASE_TTL_S,
                    max_value=LEASE_MAX_VALUE)
    return await _optional_kv(js, cfg, s, denials, event=None, bucket=s.maintenance_bucket, why="")


def kv_stream(bucket: str, *, replicas: int, history: int = 1, ttl_s: float | None = None,
              max_value: int | None = None, max_bytes: int | None = None) -> StreamConfig:
    """A KV bucket's stream as nats-py's `create_key_value` makes it (nats-py reads and writes it as any bucket),
    but one that no publish can empty: no rollup header (a KV purge, or `Nats-Rollup: all`, which would remove
    every key's values through a write to one's own key), no per-message TTL (`Nats-TTL`, which could keep a value
    past the bucket's max age), no purge or message delete through the API."""
    window = min(KV_DUPLICATE_WINDOW_S, ttl_s) if ttl_s else KV_DUPLICATE_WINDOW_S
    return StreamConfig(
        name=f"KV_{bucket}", subjects=[f"$KV.{bucket}.>"], max_msgs_per_subject=history, max_msgs=-1,
        max_age=ttl_s, max_bytes=max_bytes, max_msg_size=max_value, max_consumers=-1, discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=False, allow_msg_ttl=False, deny_delete=True, deny_purge=True,
        duplicate_window=window, num_replicas=replicas,
    )


def policies_stream(s: Subjects, replicas: int) -> StreamConfig:
    """The policies bucket (`kv_stream`): operators write any key, so none of them may roll the others up."""
    return kv_stream(s.policies_bucket, replicas=replicas, history=POLICY_HISTORY, max_value=POLICY_MAX_VALUE,
                     max_bytes=POLICIES_MAX_BYTES)


def policy_copies_stream(s: Subjects, replicas: int) -> StreamConfig:
    """The bucket of policy copies (`kv_stream`). A host overwrites only its own keys."""
    return kv_stream(s.policy_copies_bucket, replicas=replicas, max_value=POLICY_MAX_VALUE,
                     max_bytes=POLICY_COPIES_MAX_BYTES)


async def ensure_policy_copies(js: JetStreamContext, s: Subjects, replicas: int, denials: Denials) -> bool:
    """The bucket of policy copies, made or found; False, said once, where NATS permissions generated before it
    do not let the agent make it (policies are then chosen from the policies bucket's history alone). Raises
    nats-py's errors otherwise."""
    cfg = policy_copies_stream(s, replicas)
    try:
        await denials.call(f"$JS.API.STREAM.CREATE.{cfg.name}", _ensure_stream(js, cfg, denials))
    except Denied:
        log.warning("nats.policy_copies_bucket_denied", bucket=s.policy_copies_bucket,
                    why="this agent's NATS user may not make the bucket of policy copies (permissions generated "
                        "before it): a policy lost from the policies bucket's history cannot be recovered here",
                    fix="re-run `volume-agent auth init` and reload the NATS servers")
        return False
    return True


async def _ensure_stream(js: JetStreamContext, cfg: StreamConfig, denials: Denials) -> None:
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError:
        # It exists with another config (another agent version or an operator's change): converge, if we may.
        try:
            await denials.call(f"$JS.API.STREAM.UPDATE.{cfg.name}", js.update_stream(cfg))
        except Denied:
            log.warning("nats.stream_not_updated", stream=cfg.name, why=ADMIN_JOB,
                        wanted={"subjects": cfg.subjects, "max_age_s": cfg.max_age,
                                "duplicate_window_s": cfg.duplicate_window, "replicas": cfg.num_replicas})


async def _ensure_kv(js: JetStreamContext, cfg: StreamConfig, s: Subjects) -> KeyValue:
    assert cfg.name is not None
    bucket = cfg.name.removeprefix("KV_")
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError:
        # It exists with another config: use it as it is (its keys and values are the same either way).
        _say_differences(bucket, (await js.stream_info(cfg.name)).config, cfg, s)
    return await js.key_value(bucket)


# The limits an agent sets on a bucket, as (name in the log, StreamConfig field); unset and -1 mean no limit.
_LIMITS = (("ttl_s", "max_age"), ("history", "max_msgs_per_subject"), ("replicas", "num_replicas"),
           ("max_value", "max_msg_size"), ("max_bytes", "max_bytes"))
# Buckets already said to accept rollups, by name: said once per process, not at every reconnect.
_said_rollup: set[str] = set()


def _limit(v: float | int | None) -> float:
    return float(v) if v is not None and v > 0 else 0.0


def _say_differences(bucket: str, found: StreamConfig, wanted: StreamConfig, s: Subjects) -> None:
    """Warn about what matters in an existing bucket's other config: rollups accepted (once), other limits."""
    if found.allow_rollup_hdrs and bucket not in _said_rollup:
        _said_rollup.add(bucket)
        log.warning("nats.bucket_allows_rollup", bucket=bucket,
                    why="made by an older version, it accepts rollup headers: one publish with `Nats-Rollup: all` "
                        "to a key one may write empties the whole bucket, so "
                        + rollup_risks(s).get(bucket, "any writer could remove every key's values"),
                    fix="an admin runs `volume-agent auth harden-buckets` (with an admin's NATS credentials): it "
                        "turns rollups and purges off on the existing buckets, keeping their contents")
    differs = {name: getattr(wanted, field) for name, field in _LIMITS
               if _limit(getattr(found, field)) != _limit(getattr(wanted, field))}
    if differs:
        log.warning("nats.bucket_differs", bucket=bucket, why=ADMIN_JOB, wanted=differs)


async def ensure_object_store(js: JetStreamContext, bucket: str, replicas: int) -> ObjectStore:
    """This host's backup bucket, made or found."""
    try:
        return await js.create_object_store(
            bucket=bucket, config=ObjectStoreConfig(description="volume-agent backups", replicas=replicas))
    except nats.js.errors.BadRequestError:
        log.warning("nats.bucket_differs", bucket=bucket, why=ADMIN_JOB, wanted={"replicas": replicas})
        return await js.object_store(bucket)

"""Container labels the agent reads: public API for people who deploy with compose files or `docker run`.

A label counts only when the container sets it itself; the same label inherited from the image is ignored
for the hooks (an image must not run commands in every container made from it).
"""

from __future__ import annotations

__all__ = [
    "CREATED_BY",
    "ENCRYPT_TO",
    "EXEC_POST",
    "EXEC_PRE",
    "HELPER",
    "ON_STOP",
    "ON_STOP_COMPRESSION",
    "ON_STOP_KEEP",
    "ON_STOP_STORE",
    "ON_STOP_VOLUMES",
    "SCHEDULE",
    "SCHEDULE_KEEP",
    "TIMEZONE",
]

ON_STOP = "volume-agent.backup.on-stop"
"""`true`: back up the container's named volumes when it stops (`die`)."""
ON_STOP_VOLUMES = "volume-agent.backup.volumes"
"""`a,b`: only these of its volumes (on stop and on schedule)."""
ON_STOP_KEEP = "volume-agent.backup.keep"
"""`N`: keep the newest N backups this host made of each volume (on schedule: as `keep-last`)."""
ON_STOP_COMPRESSION = "volume-agent.backup.compression"
"""`zstd|gzip|none` (on stop and on schedule)."""
ON_STOP_STORE = "volume-agent.backup.store"
"""`local|nats` (on stop and on schedule)."""
SCHEDULE = "volume-agent.backup.schedule"
"""A cron expression or @hourly/@daily/...: back up the container's named volumes on this schedule, a policy of
its own named `container:<container name>` (contracts.policies), with the keep labels below."""
SCHEDULE_KEEP = {rule: f"volume-agent.backup.keep-{rule}"
                 for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly")}
"""`volume-agent.backup.keep-daily=7` and the like: the schedule's keep rules (contracts.policies.Keep)."""
TIMEZONE = "volume-agent.backup.timezone"
"""The zone the schedule and keep rules are read in (default UTC)."""
ENCRYPT_TO = "volume-agent.backup.encrypt-to"
"""`age1...,age1...`: encrypt the scheduled backups to these recipients."""
EXEC_PRE = "volume-agent.backup.exec-pre"
"""A shell command run in the running container before any backup of a volume it mounts; failing aborts."""
EXEC_POST = "volume-agent.backup.exec-post"
"""A shell command run in the running container after the backup, whatever happened."""
HELPER = "volume-agent.helper"
"""On the agent's own helper containers (created, never started, removed): value = the volume."""
CREATED_BY = "volume-agent.created-by"
"""On containers the agent made (`share`)."""

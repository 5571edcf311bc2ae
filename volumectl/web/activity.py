"""The live activity feed and the audit of each volume, from `<prefix>.evt.>` and `<prefix>.res.>`.

A backup or restore is one item of the feed from its `started` event to its `completed` or `failed` one, its
`progress` events moving its bar (keyed by host and command id, else by host, volume and backup id). Volume
events and command outcomes are items of their own; an outcome that is not ok is a refusal or a failure, with
its code and sentence. Outcomes are also kept per volume (the audit a volume's page shows: op, caller, outcome):
the volume is read from the result, or from the events its command caused (`cmd_id`), as a refused command
names none. A restore drill's outcome (`verify`, asked for or a policy's: its id is
`verify.<policy>.<volume>.<slot>`) is a `drill` item, passed or failed, and a passed one is remembered per backup
(the volume's page marks the backups verified). Everything is bounded: the feed, the audit per volume, the
commands and the drills remembered.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import UTC, datetime
from typing import Any

from contracts import OPS, Reply, VolumeEvent

from ..redact import redact

__all__ = ["Activity"]

FEED_ITEMS = 200
"""Items the feed keeps (a browser gets the newest ones when it opens the page)."""
AUDIT_PER_VOLUME = 50
AUDIT_VOLUMES = 50_000
COMMANDS_REMEMBERED = 10_000
"""Command ids whose volume is remembered (from their events), to file their outcome under it."""
DRILLS_REMEMBERED = 50_000
"""Backups whose last drill outcome is remembered (the inventory keeps each volume's last one only)."""

_DONE = {"completed": "completed", "failed": "failed"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _volumes_of(reply: Reply) -> list[str]:
    """The volumes an outcome names in its result (each op's result type: contracts.ops), or a policy's drill in
    its id."""
    r = reply.result or {}
    names = [r.get(k) for k in ("name", "volume", "source", "target")]
    names += list(r.get("volumes") or []) if reply.op == "prune" else []
    found = [n for n in names if isinstance(n, str)]
    if not found and reply.op == "verify" and (policy_volume := _scheduled_drill(reply.id)):
        found.append(policy_volume[1])
    return found


def _scheduled_drill(cmd_id: str) -> tuple[str, str] | None:
    """(policy, volume) of a policy's drill, from its outcome's id `verify.<policy>.<volume>.<slot>` (a bucket
    policy's name has no dot; a container label policy's may, so its volume is not read from the id)."""
    kind, _, rest = cmd_id.partition(".")
    policy, _, rest = rest.partition(".")
    volume, _, slot = rest.rpartition(".")
    if kind != "verify" or not policy or not volume or not slot or policy.startswith("container:"):
        return None
    return policy, volume


class Activity:
    """The feed (newest last) and the per-volume audit; `event`/`outcome` return the feed item they made or
    changed, for the browsers."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.audit: OrderedDict[tuple[str, str], deque[dict[str, Any]]] = OrderedDict()
        self.cmd_volume: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._seen: deque[bytes] = deque(maxlen=4096)
        self._seen_set: set[bytes] = set()
        self._n = 0
        self.drills: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        """(host, backup id): its last drill's outcome seen on the bus (ok, at, the error)."""

    def _dup(self, raw: bytes | None) -> bool:
        """True for a message already taken (read from the stream's history and received live)."""
        if raw is None:
            return False
        if raw in self._seen_set:
            return True
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(raw)
        self._seen_set.add(raw)
        return False

    def _put(self, key: str, item: dict[str, Any]) -> dict[str, Any]:
        self._n += 1
        item["n"] = self._n
        self.items[key] = item
        self.items.move_to_end(key)
        while len(self.items) > FEED_ITEMS:
            self.items.popitem(last=False)
        return item

    def event(self, e: VolumeEvent, raw: bytes | None = None) -> dict[str, Any] | None:
        if self._dup(raw):
            return None
        if e.cmd_id:
            self.cmd_volume[(e.host, e.cmd_id)] = e.volume
            self.cmd_volume.move_to_end((e.host, e.cmd_id))
            while len(self.cmd_volume) > COMMANDS_REMEMBERED:
                self.cmd_volume.popitem(last=False)
        what, _, phase = e.kind.partition(".")
        if what in ("backup", "restore"):
            key = f"{what}:{e.host}:{e.cmd_id or e.volume + ':' + (e.backup_id or '')}"
            item = self.items.get(key) or {"key": key, "kind": what, "host": e.host, "volume": e.volume,
                                           "started": e.at, "state": "running", "bytes_done": 0}
            item = dict(item, at=e.at, backup_id=e.backup_id or item.get("backup_id"), cmd_id=e.cmd_id)
            if e.bytes_done is not None:
                item["bytes_done"] = e.bytes_done
            if phase in _DONE:
                item["state"] = _DONE[phase]
            if e.error:
                item["error"] = redact(e.error)
            if e.container:
                item["container"] = e.container
            return self._put(key, item)
        if what == "volume" and phase in ("created", "removed"):
            key = f"volume:{e.host}:{e.volume}:{phase}:{e.at}"
            return self._put(key, {"key": key, "kind": f"volume.{phase}", "host": e.host, "volume": e.volume,
                                   "at": e.at, "state": phase})
        return None  # mounts and unmounts: the host's page shows who uses what

    def outcome(self, r: Reply, at: str | None = None, raw: bytes | None = None) -> dict[str, Any] | None:
        if self._dup(raw):
            return None
        at = at or _now()
        vols = _volumes_of(r) or ([v] if (v := self.cmd_volume.get((r.host, r.id))) else [])
        record = {"id": r.id, "op": r.op, "ok": r.ok, "caller": r.caller, "at": at,
                  "code": r.error.code if r.error else None,
                  "message": redact(r.error.message) if r.error else None}
        for v in vols:
            log = self.audit.get((r.host, v))
            if log is None:
                log = self.audit[(r.host, v)] = deque(maxlen=AUDIT_PER_VOLUME)
                while len(self.audit) > AUDIT_VOLUMES:
                    self.audit.popitem(last=False)
            log.append(record)
        refused = r.error is not None and r.error.code == "forbidden"
        op = OPS.get(r.op)
        if not refused and (op is None or not op.mutates):
            return None  # reads (this page's own among them) are not activity
        if not refused and (r.op in ("backup", "restore") and (r.ok or (r.host, r.id) in self.cmd_volume)):
            return None  # its events tell it, with its bar and its error
        key = f"res:{r.host}:{r.id}"
        if r.op == "verify" and not refused:
            return self._put(key, self._drill(r, at, vols, record))
        return self._put(key, {"key": key, "kind": "outcome", "host": r.host, "volume": vols[0] if vols else None,
                               "at": at, "op": r.op, "state": "ok" if r.ok else ("refused" if refused else "failed"),
                               "caller": r.caller, "code": record["code"], "message": record["message"]})

    def _drill(self, r: Reply, at: str, vols: list[str], record: dict[str, Any]) -> dict[str, Any]:
        """A drill's feed item; a drill whose backup is known (its result) is remembered under it."""
        result = r.result or {}
        backup = result.get("backup_id") if isinstance(result.get("backup_id"), str) else None
        scheduled = _scheduled_drill(r.id)
        if backup is not None:
            self.drills[(r.host, backup)] = {"ok": r.ok, "at": result.get("verified_at") or at,
                                             "error": record["message"]}
            self.drills.move_to_end((r.host, backup))
            while len(self.drills) > DRILLS_REMEMBERED:
                self.drills.popitem(last=False)
        return {"key": f"res:{r.host}:{r.id}", "kind": "drill", "host": r.host, "volume": vols[0] if vols else None,
                "at": at, "op": r.op, "state": "passed" if r.ok else "failed", "caller": r.caller,
                "backup_id": backup, "policy": scheduled[0] if scheduled else None, "code": record["code"],
                "message": record["message"], "checked": [str(c) for c in result.get("checked") or []]}

    def drill(self, host: str, backup_id: str) -> dict[str, Any] | None:
        """The last drill of a backup seen on the bus, if any."""
        return self.drills.get((host, backup_id))

    def feed(self, limit: int = FEED_ITEMS) -> list[dict[str, Any]]:
        """The newest items, newest last."""
        return list(self.items.values())[-limit:]

    def commands(self, host: str, volume: str) -> list[dict[str, Any]]:
        """The outcomes of commands that touched a volume, newest first."""
        return list(reversed(self.audit.get((host, volume), ())))

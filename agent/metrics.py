"""Prometheus metrics: what the agent counts and times, served on `--metrics-listen` at `/metrics`.

Each `Metrics` has a registry of its own (never prometheus_client's global one): two agents in one process (tests,
benchmarks) keep their figures apart, and nothing else that imports prometheus_client adds to ours. The endpoint
lists volume and policy names and has no authentication: keep it on loopback, or behind a proxy that has.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.aiohttp import make_aiohttp_handler

from contracts import BackupRecord, LastVerify

from . import __version__
from .errors import Invalid

__all__ = ["Metrics", "listen_address"]

log = structlog.get_logger(__name__)

PREFIX = "volume_agent"
# Requests range from a KV read (milliseconds) to a migration (minutes).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# Backups range from an empty volume (well under a second) to hours for a large one.
BACKUP_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


def listen_address(listen: str) -> tuple[str, int]:
    """The host and port of `HOST:PORT` (`[::1]:9100` for IPv6); `Invalid` with a sentence if it is not one."""
    try:
        parts = urlsplit(f"http://{listen}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port or parts.path or parts.query or parts.username:
        raise Invalid(f"The metrics address {listen!r} is not HOST:PORT (e.g. 127.0.0.1:9101, [::1]:9101, "
                      "0.0.0.0:9101).")
    return host, port


class Metrics:
    """The agent's metrics, in a registry of their own; `start` serves them over HTTP."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.registry = r = CollectorRegistry()
        self._requests = Counter(f"{PREFIX}_requests", "Commands answered, by op and code (ok or the error code).",
                                 ["op", "code"], registry=r)
        self._request_seconds = Histogram(f"{PREFIX}_request_duration_seconds", "Time to answer a command, by op.",
                                          ["op"], buckets=REQUEST_BUCKETS, registry=r)
        self._running = Gauge(f"{PREFIX}_backups_running", "Backups being made now.", registry=r)
        self._backups = Counter(f"{PREFIX}_backups", "Backups ended, by trigger and result (ok or failed).",
                                ["trigger", "result"], registry=r)
        self._bytes = Counter(f"{PREFIX}_backup_bytes", "Bytes of the backups made: the tar stream (tar) and "
                              "what was stored after compression (stored).", ["kind"], registry=r)
        self._backup_seconds = Histogram(f"{PREFIX}_backup_duration_seconds", "Time a backup took, made or failed.",
                                         buckets=BACKUP_BUCKETS, registry=r)
        self._last_success = Gauge(f"{PREFIX}_last_backup_success_timestamp_seconds",
                                   "When this host last made a backup of the volume (unix time).", ["volume"],
                                   registry=r)
        self._next = Gauge(f"{PREFIX}_next_backup_timestamp_seconds",
                           "When the policy backs up the volume next (unix time).", ["policy", "volume"], registry=r)
        self._policy_volumes = Gauge(f"{PREFIX}_policy_volumes", "Volumes each backup policy covers.", ["policy"],
                                     registry=r)
        self._uncovered = Gauge(f"{PREFIX}_uncovered_volumes", "Volumes no backup policy covers.", registry=r)
        self._last_verify = Gauge(f"{PREFIX}_last_verify_success_timestamp_seconds",
                                  "When a restore drill of one of the volume's backups last passed here (unix time).",
                                  ["volume"], registry=r)
        self._verifies = Counter(f"{PREFIX}_verifies", "Restore drills ended, by result (ok or failed).", ["result"],
                                 registry=r)
        self._verify_seconds = Histogram(f"{PREFIX}_verify_duration_seconds", "Time a restore drill took.",
                                         buckets=BACKUP_BUCKETS, registry=r)
        for result in ("ok", "failed"):  # an alert on failures needs the series before the first one
            self._verifies.labels(result=result)
        self._maintenance = Counter(f"{PREFIX}_repository_maintenance", "Repository maintenance runs this host "
                                    "made (restic prune, check), by store, task and result (ok or failed).",
                                    ["store", "task", "result"], registry=r)
        self._maintenance_seconds = Gauge(f"{PREFIX}_repository_maintenance_seconds",
                                          "How long the last maintenance run this host made took, by store and task.",
                                          ["store", "task"], registry=r)
        self._maintenance_success = Gauge(f"{PREFIX}_repository_maintenance_success_timestamp_seconds",
                                          "When this host last ran the task on the store's repository and it "
                                          "passed (unix time).", ["store", "task"], registry=r)
        self._check_success = Gauge(f"{PREFIX}_repository_check_success_timestamp_seconds",
                                    "When a restic check of the store's repository last passed here (unix time).",
                                    ["store"], registry=r)
        info = Gauge(f"{PREFIX}_info", "This agent: its host id and version.", ["host", "version"], registry=r)
        info.labels(host=host, version=__version__).set(1)
        for kind in ("tar", "stored"):  # both series exist from the start: rate() needs no first backup
            self._bytes.labels(kind=kind)
        self._last: dict[str, float] = {}
        """Each volume's last success, as set in `_last_success`."""
        self._runner: web.AppRunner | None = None

    def request(self, op: str, code: str, seconds: float) -> None:
        self._requests.labels(op=op, code=code).inc()
        self._request_seconds.labels(op=op).observe(seconds)

    def backup_started(self) -> None:
        self._running.inc()

    def backup_finished(
        self, volume: str, trigger: str, policy: str | None, *, ok: bool, tar_bytes: int = 0, stored_bytes: int = 0,
        seconds: float = 0.0,
    ) -> None:
        # `policy` is not a label: its backups are counted by trigger, and its volumes' times are per volume.
        self._running.dec()
        self._backups.labels(trigger=trigger, result="ok" if ok else "failed").inc()
        self._bytes.labels(kind="tar").inc(max(tar_bytes, 0))
        self._bytes.labels(kind="stored").inc(max(stored_bytes, 0))
        self._backup_seconds.observe(max(seconds, 0.0))
        if ok:
            self._succeeded(volume, time.time())

    def backed_up_before(self, records: Iterable[BackupRecord]) -> None:
        """Seed each volume's last success from this host's backups made before the agent started, so that an
        alert on its age neither goes quiet nor fires on every restart. A newer time already set is kept."""
        for r in records:
            try:
                at = datetime.fromisoformat(r.created_at).timestamp() + r.duration_s
            except ValueError:
                continue
            if at > self._last.get(r.volume, 0.0):
                self._succeeded(r.volume, at)

    def _succeeded(self, volume: str, at: float) -> None:
        self._last[volume] = at
        self._last_success.labels(volume=volume).set(at)

    def next_run(self, policy: str, volume: str, at: float | None) -> None:
        if at is not None:
            self._next.labels(policy=policy, volume=volume).set(at)
            return
        with contextlib.suppress(KeyError):  # it had none
            self._next.remove(policy, volume)

    def coverage(self, volumes_per_policy: dict[str, int], uncovered: int) -> None:
        self._policy_volumes.clear()  # a policy removed since the last call leaves no stale series
        for policy, n in volumes_per_policy.items():
            self._policy_volumes.labels(policy=policy).set(n)
        self._uncovered.set(uncovered)

    def verify_finished(self, volume: str, *, ok: bool, seconds: float) -> None:
        self._verifies.labels(result="ok" if ok else "failed").inc()
        self._verify_seconds.observe(max(seconds, 0.0))
        if ok:
            self._last_verify.labels(volume=volume).set(time.time())

    def verified_before(self, entries: Iterable[tuple[str, LastVerify]]) -> None:
        """Seed each volume's last passed drill from the agent's record of them (`<data dir>/verified.json`)."""
        for volume, last in entries:
            with contextlib.suppress(ValueError):
                if last.ok:
                    self._last_verify.labels(volume=volume).set(datetime.fromisoformat(last.verified_at).timestamp())

    def maintenance_finished(self, store: str, task: str, *, result: str, seconds: float) -> None:
        self._maintenance.labels(store=store, task=task, result=result).inc()
        self._maintenance_seconds.labels(store=store, task=task).set(max(seconds, 0.0))
        if result == "ok":
            now = time.time()
            self._maintenance_success.labels(store=store, task=task).set(now)
            if task == "check":
                self._check_success.labels(store=store).set(now)

    def maintenance_stores(self, stores: Iterable[tuple[str, str]]) -> None:
        """The (store, task) pairs this host maintains: their failure counts exist from the start."""
        for store, task in stores:
            for result in ("ok", "failed"):
                self._maintenance.labels(store=store, task=task, result=result)

    def render(self) -> bytes:
        """The text exposition format, as a scrape gets it."""
        return generate_latest(self.registry)

    async def start(self, listen: str) -> None:
        """Serve `/metrics` on `listen` (HOST:PORT); `Invalid` if it cannot be listened on."""
        if self._runner is not None:
            return
        host, port = listen_address(listen)
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise Invalid(f"Cannot serve metrics on {listen}: {exc.strerror or exc}.") from exc
        self._runner = runner
        log.info("metrics.listening", address=listen, path="/metrics")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

"""The fleet page's HTTP side: the page and its assets, JSON views aggregated on the server, and server-sent
events that push the feed and the fleet's changes.

    GET /                      the page (no inline script or style: Content-Security-Policy without unsafe-inline)
    GET /static/<file>         its script, style sheet and the vendored-free chart code (all in the package)
    GET /api/summary           the first screen: fleet health, the failing and overdue volumes, the map, the feed
    GET /api/hosts             a page of hosts, worst first (offset, limit, q, status)
    GET /api/host              one host and a page of its volumes (host, offset, q)
    GET /api/host/runs         its volumes' last and next runs and drills (the agent's `policies` answer; volume)
    GET /api/host/backups      the backups it made (the agent's `backups` answer), for its charts
    GET /api/volume            one volume: its entry and the commands that touched it (host, name)
    GET /api/volume/backups    its backups across stores, newest first, with the keep rule that keeps each and
                               its last restore drill (the inventory's `last_verify`, else `verify` outcomes seen)
    GET /api/policies          every policy of the bucket, the hosts applying and ignoring it and why
    GET /api/events            server-sent events: `feed` items and `fleet` changes

Read-only: no route changes anything, and the page sends no command. Every text the page shows is put there as
text (`textContent`), never as markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from contracts import BackupRecord
from contracts.retention import retain

from ..redact import redact
from .access import Handler
from .follower import Follower
from .model import volume_row

__all__ = ["Hub", "make_app"]

log = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC = {"app.js": "text/javascript", "charts.js": "text/javascript", "app.css": "text/css",
          "favicon.svg": "image/svg+xml"}
QUEUE = 2000
"""Messages a browser may be behind before it is dropped (its EventSource reconnects and reads afresh)."""
KEEPALIVE_S = 15.0
FEED_ON_OPEN = 100
MAX_LIMIT = 500


class Hub:
    """The browsers following `/api/events`: each has a bounded queue of encoded messages."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes | None]] = set()

    def broadcast(self, kind: str, data: Any) -> None:
        if not self.queues:
            return
        msg = b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"
        for q in list(self.queues):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:  # too far behind: drop it; it reconnects and reads the fleet again
                self.queues.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)

    def close(self) -> None:
        for q in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        self.queues.clear()


def _json(data: Any, request: web.Request | None = None, status: int = 200) -> web.Response:
    resp = web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})
    if request is not None and resp.body is not None and len(resp.body) > 4096:  # type: ignore[arg-type]
        resp.enable_compression()
    return resp


def _int(request: web.Request, name: str, default: int, top: int = 1 << 30) -> int:
    try:
        return max(0, min(top, int(request.query.get(name, default))))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number") from None


def _arg(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not value:
        raise web.HTTPBadRequest(text=f"{name} is missing")
    return value


def make_app(follower: Follower, hub: Hub, *, allowed_hosts: set[str] | None, identity: str,
             auth: Middleware | None = None) -> web.Application:
    """The aiohttp application. `allowed_hosts`: the Host headers accepted (None: any, when passwords guard it);
    a page on loopback refuses others, so a web site that rebinds its name to 127.0.0.1 cannot read it."""
    static = resources.files(__package__).joinpath("static")
    assets = {name: static.joinpath(name).read_bytes() for name in [*STATIC, "index.html"]}

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed_hosts is not None and request.host.lower() not in allowed_hosts:
            raise web.HTTPMisdirectedRequest(text="This page answers to the address it listens on only.")
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(HEADERS)
            raise
        if not resp.prepared:
            resp.headers.update(HEADERS)
        return resp

    fleet, activity = follower.fleet, follower.activity

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=assets["index.html"], content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        resp = web.Response(body=assets[name], content_type=STATIC[name], headers={"Cache-Control": "no-cache"})
        if STATIC[name].startswith("text/"):
            resp.charset = "utf-8"
        return resp

    async def summary(request: web.Request) -> web.Response:
        return _json({**fleet.summary(), "feed": activity.feed(FEED_ON_OPEN), "identity": identity,
                      "prefix": follower.s.prefix, "loaded_at": fleet.loaded_at}, request)

    async def hosts(request: web.Request) -> web.Response:
        return _json(fleet.host_rows(offset=_int(request, "offset", 0), limit=_int(request, "limit", 50, MAX_LIMIT),
                                     query=request.query.get("q", ""), status=request.query.get("status", "")),
                     request)

    async def host(request: web.Request) -> web.Response:
        view = fleet.host(_arg(request, "host"), offset=_int(request, "offset", 0),
                          limit=_int(request, "limit", 100, MAX_LIMIT), query=request.query.get("q", ""))
        if view is None:
            return _json({"error": "No such host in the inventory."}, status=404)
        return _json(view, request)

    async def host_runs(request: web.Request) -> web.Response:
        answer = await follower.host_policies(_arg(request, "host"), request.query.get("volume") or None)
        if isinstance(answer, str):
            return _json({"error": answer})
        return _json({"volumes": [{"volume": c.volume, "policy": c.policy, "status": c.status,
                                   "last_run": c.last_run, "next_run": c.next_run, "last_success": c.last_success,
                                   "next_verify": c.next_verify,
                                   "last_verify": None if c.last_verify is None else {
                                       "backup_id": c.last_verify.backup_id, "ok": c.last_verify.ok,
                                       "verified_at": c.last_verify.verified_at, "policy": c.last_verify.policy,
                                       "error": redact(c.last_verify.error) if c.last_verify.error else None}}
                                  for c in answer.volumes],
                      "policies": [{"name": p.policy.name, "signed_by": p.signed_by, "source": p.source}
                                   for p in answer.policies]}, request)

    async def host_backups(request: web.Request) -> web.Response:
        answer = await follower.host_backups(_arg(request, "host"))
        if isinstance(answer, str):
            return _json({"error": answer})
        return _json({"backups": [_backup(b, ()) for b in answer.backups]}, request)

    def drill(h: str, b: BackupRecord) -> dict[str, Any] | None:
        """A backup's last drill: the volume's `last_verify` when it names the backup, else an outcome seen."""
        v = fleet.volume(h, b.volume)
        last = v.last_verify if v is not None else None
        if last is not None and last.backup_id == b.backup_id:
            return {"ok": last.ok, "at": last.verified_at, "error": redact(last.error) if last.error else None}
        return activity.drill(h, b.backup_id)

    async def volume(request: web.Request) -> web.Response:
        h, name = _arg(request, "host"), _arg(request, "name")
        v = fleet.volume(h, name)
        if v is None:
            return _json({"error": "No such volume in the host's inventory.",
                          "commands": activity.commands(h, name)}, status=404)
        return _json({"host": h, **volume_row(v, datetime.now(UTC)), "options": v.options,
                      "mountpoint": v.mountpoint, "commands": activity.commands(h, name)}, request)

    async def volume_backups(request: web.Request) -> web.Response:
        h, name = _arg(request, "host"), _arg(request, "name")
        answer = await follower.host_backups(h, name)
        if isinstance(answer, str):
            return _json({"error": answer})
        await follower.refresh_policies(max_age=10.0)
        reasons = _keep_reasons(follower, [b for b in answer.backups if b.volume == name])
        backups = sorted((b for b in answer.backups if b.volume == name), key=lambda b: b.created_at, reverse=True)
        return _json({"backups": [_backup(b, reasons.get(b.backup_id), drill(h, b)) for b in backups]}, request)

    async def policies(request: web.Request) -> web.Response:
        entries = await follower.refresh_policies(max_age=5.0)
        from_inventory = fleet.policy_hosts()
        views: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {"applying": [], "ignoring": []})
        asked = request.query.get("ask") == "1"
        answered = []
        if asked:
            for view in await follower.policy_views():
                answered.append(view.host)
                for p in view.policies:
                    views[p.policy.name]["applying"].append({"host": view.host, "signed_by": p.signed_by})
                for r in view.rejected:
                    views[r.name]["ignoring"].append({"host": view.host, "why": redact(r.reason)})
        out = []
        for name in sorted(set(entries) | set(from_inventory)):
            entry, policy = entries.get(name), follower.policy(name)
            out.append({
                "name": name, "removed": entry is not None and not entry.body,
                "in_bucket": entry is not None,
                "signer": entry.key if entry else None,
                "signed_at": datetime.fromtimestamp(entry.signed_at / 1e9, UTC).isoformat() if entry else None,
                "policy": msgspec.to_builtins(policy) if policy else None,
                "inventory": from_inventory.get(name, {"applying": [], "ignoring": []}),
                "agents": views.get(name) if asked else None,
            })
        return _json({"policies": out, "asked": sorted(answered) if asked else None}, request)

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no", **HEADERS})
        await resp.prepare(request)
        q: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
        hub.queues.add(q)
        try:
            await resp.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
            while True:
                try:
                    msg = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    msg = b": keepalive\n\n"
                if msg is None:
                    break
                await resp.write(msg)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            hub.queues.discard(q)
        return resp

    app = web.Application(middlewares=[guard, *([auth] if auth else [])])
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/api/hosts", hosts)
    app.router.add_get("/api/host", host)
    app.router.add_get("/api/host/runs", host_runs)
    app.router.add_get("/api/host/backups", host_backups)
    app.router.add_get("/api/volume", volume)
    app.router.add_get("/api/volume/backups", volume_backups)
    app.router.add_get("/api/policies", policies)
    app.router.add_get("/api/events", events)
    return app


def _backup(b: BackupRecord, reasons: tuple[str, ...] | None, drill: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"backup_id": b.backup_id, "host": b.host, "store": b.store, "created_at": b.created_at, "size": b.size,
            "stored_size": b.stored_size, "duration_s": b.duration_s, "trigger": b.trigger, "policy": b.policy,
            "encrypted": bool(b.encrypted_to), "compression": b.compression, "keep": reasons,
            "files": b.files, "content_digest": b.content_digest, "drill": drill}


def _keep_reasons(follower: Follower, records: list[BackupRecord]) -> dict[str, tuple[str, ...]]:
    """Which rule of the policy that made each backup keeps it (`contracts.retention`), per host, store, policy;
    a backup made without a policy, or by one no longer set, is absent (kept until forgotten)."""
    groups: dict[tuple[str, str, str], list[BackupRecord]] = defaultdict(list)
    for b in records:
        if b.policy:
            groups[(b.policy, b.host, b.store)].append(b)
    out: dict[str, tuple[str, ...]] = {}
    for (name, _, _), group in groups.items():
        policy = follower.policy(name)
        if policy is None:
            continue
        for kept in retain(group, policy.keep, policy.timezone):
            out[kept.record.backup_id] = kept.reasons
    return out

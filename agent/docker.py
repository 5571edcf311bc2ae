"""The Docker Engine as the agent sees it: a Protocol seam and its aiodocker adapter.

aiodocker's exceptions are translated into `agent.errors` here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiodocker
import aiohttp
from aiodocker.events import DockerEvents

from .compat import engine_request
from .config import DEFAULT_DOCKER_TIMEOUT_S
from .errors import AgentError, Conflict, Internal, InUse, Invalid, NotFound, Timeout, Unavailable

__all__ = ["DockerEngine", "docker_errors"]

# aiodocker reports a connection failure as DockerError with this made-up status.
_STATUS_UNREACHABLE = 900
# Streamed archive chunks: big enough to keep the pipe busy, small enough to keep memory flat.
ARCHIVE_CHUNK = 1 << 20
# What the Engine answers, as HTTP 500, while it shuts down or starts (seen restarting dockerd 20.10 under load).
# Unlike other 500s, these say nothing about the command: they are `unavailable`, and durable commands are retried.
_NOT_READY = (
    "database not open",  # a bolt store (volumes, networks) already closed: "get pgdata: database not open"
    "transport is closing",  # containerd's gRPC connection going down with the daemon
    "open : no such file or directory",  # libnetwork's store, closed (its path is empty): container start
)

# A volume plugin that does not answer: Docker says so as HTTP 500, naming the driver and the socket it dialled
# (`get v: error while checking if volume "v" exists in driver "rclone": Post "http://…/VolumeDriver.Get": dial unix
# /run/docker/plugins/rclone.sock: connect: no such file or directory`), or as 404 when no plugin of that name was
# ever found (`error looking up volume plugin nosuch: plugin "nosuch" not found`). Neither says anything about the
# volume or the request: the plugin is down, and the same call works once it is back.
_PLUGIN_DIAL = re.compile(r'dial unix (?P<sock>\S*?/(?P<name>[^/\s"]+)\.sock): connect: (?P<why>[^"]+?)\s*$')
_PLUGIN_DRIVER = re.compile(r'in driver "(?P<name>[^"]+)"')
_PLUGIN_MISSING = re.compile(r'error looking up volume plugin (?P<name>\S+): plugin "[^"]*" not found')


@asynccontextmanager
async def docker_errors(what: str) -> AsyncIterator[None]:
    """Translate aiodocker/aiohttp failures of an Engine call about `what` into agent errors."""
    try:
        yield
    except aiodocker.DockerError as exc:
        raise _translate(exc, what) from exc
    except TimeoutError as exc:
        raise Timeout(f"Docker did not answer in time about {what}.") from exc
    except aiohttp.ClientError as exc:
        raise Unavailable(f"Docker Engine connection failed while working on {what}: {exc}.") from exc


def _translate(exc: aiodocker.DockerError, what: str) -> AgentError:
    msg = str(exc.message).strip().rstrip(".")
    if exc.status == _STATUS_UNREACHABLE:
        return Unavailable(f"Docker Engine is unreachable: {msg}.")
    if _not_ready(exc.status, msg):
        return Unavailable(f"Docker Engine is not ready for {what} (it is starting or stopping): {msg}.")
    if (down := _plugin_down(exc.status, msg)) is not None:
        return Unavailable(f"{down}, so Docker cannot work on {what}: start the plugin (or install it) and try "
                           "again.")
    if exc.status == 404:
        return NotFound(f"{what} was not found: {msg}.")
    if exc.status == 409:
        if "volume is in use" in msg:
            return InUse(f"{what} is in use: {msg}.")
        return Conflict(f"{what} conflicts with existing state: {msg}.")
    if exc.status == 400:
        return Invalid(f"Docker refused {what}: {msg}.")
    if exc.status == 503:
        return Unavailable(f"Docker Engine is not ready: {msg}.")
    return Internal(f"Docker failed on {what} (HTTP {exc.status}): {msg}.")


def _plugin_down(status: int, msg: str) -> str | None:
    """What Docker says about a volume plugin it cannot reach, as a sentence naming it; None for anything else."""
    if status == 500 and (dial := _PLUGIN_DIAL.search(msg)) is not None:
        driver = _PLUGIN_DRIVER.search(msg)
        name = driver["name"] if driver is not None else dial["name"]
        return f"The volume plugin {name!r} does not answer on {dial['sock']} ({dial['why']})"
    if status in (404, 500) and (missing := _PLUGIN_MISSING.search(msg)) is not None:
        return (f"The volume plugin {missing['name']!r} is not running on this host (Docker finds no plugin of that "
                "name)")
    return None


def _not_ready(status: int, msg: str) -> bool:
    """An answer of an Engine that is going down or coming up; `msg` ending in ": unavailable" is a gRPC
    Unavailable status from containerd, as the Engine renders it."""
    return status == 500 and (any(s in msg for s in _NOT_READY) or msg.endswith(": unavailable"))


class DockerEngine:
    """`Engine` over aiodocker; one connection pool for the agent's life."""

    def __init__(self, url: str, call_timeout_s: float = DEFAULT_DOCKER_TIMEOUT_S) -> None:
        self.url = url
        self.call_timeout_s = call_timeout_s
        self._client: aiodocker.Docker | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = aiodocker.Docker(
                url=self.url, timeout=aiohttp.ClientTimeout(total=self.call_timeout_s, connect=5)
            )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            raise Unavailable("The Docker client is not started.")
        return self._client

    def _request(
        self, path: str, method: str = "GET", **kw: Any
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return engine_request(self.client, path, method, **kw)

    async def _json(self, what: str, path: str, method: str = "GET", **kw: Any) -> Any:
        async with docker_errors(what), self._request(path, method, **kw) as resp:
            body = await resp.read()
        return json.loads(body) if body else None

    async def ping(self) -> None:
        async with docker_errors("the Engine ping"), self._request("_ping", versioned_api=False) as resp:
            await resp.read()

    async def version(self) -> dict[str, Any]:
        v: dict[str, Any] = await self._json("the Engine version", "version")
        return v

    async def info(self) -> dict[str, Any]:
        i: dict[str, Any] = await self._json("the Engine info", "info")
        return i

    async def system_df(self) -> dict[str, Any]:
        """Disk usage, volume sizes included: Docker walks every volume, so it is slow on a big host."""
        df: dict[str, Any] = await self._json("the disk usage", "system/df", timeout=None)
        return df

    async def events(self, since: str | None, filters: Mapping[str, list[str]]) -> AsyncIterator[dict[str, Any]]:
        """Docker's event stream from `since`; ends when the daemon goes away (it does not reconnect).

        Raises `Unavailable` when the stream cannot be opened or breaks, and returns when it just ends.
        """
        # A fresh DockerEvents per subscription: aiodocker's own keeps its finished task and will not restart.
        stream = DockerEvents(self.client)  # type: ignore[no-untyped-call]
        params: dict[str, Any] = {"filters": json.dumps(filters)}
        if since is not None:
            params["since"] = since
        sub = stream.subscribe(**params)  # type: ignore[no-untyped-call]
        try:
            while (evt := await sub.get()) is not None:
                yield evt
            task = stream.task
            failure = task.exception() if task is not None and task.done() and not task.cancelled() else None
            if failure is not None:
                async with docker_errors("the event stream"):
                    raise failure
        finally:
            # stop() awaits the finished task and so raises its failure again: already reported above.
            with contextlib.suppress(Exception):
                await stream.stop()  # type: ignore[no-untyped-call]

    async def volume_inspect(self, name: str) -> dict[str, Any]:
        try:
            v: dict[str, Any] = await self._json(f"volume {name!r}", f"volumes/{name}")
        except NotFound as exc:
            raise NotFound(f"Volume {name!r} does not exist on this host.") from exc
        return v

    async def volume_create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        v: dict[str, Any] = await self._json(
            f"volume {spec['Name']!r}", "volumes/create", "POST", data=json.dumps(spec)
        )
        return v

    async def volume_list(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        params = {"filters": json.dumps(filters)} if filters else None
        data = await self._json("the volume list", "volumes", params=params)
        return list(data.get("Volumes") or [])

    async def volume_remove(self, name: str, *, force: bool) -> None:
        try:
            async with docker_errors(f"volume {name!r}"), self._request(
                f"volumes/{name}", "DELETE", params={"force": "1" if force else "0"}
            ) as resp:
                await resp.read()
        except NotFound as exc:
            raise NotFound(f"Volume {name!r} does not exist on this host.") from exc

    async def containers(self, filters: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"all": "1"}
        if filters:
            params["filters"] = json.dumps(filters)
        data: list[dict[str, Any]] = await self._json("the container list", "containers/json", params=params)
        return data

    async def container_inspect(self, name: str) -> dict[str, Any]:
        c: dict[str, Any] = await self._json(f"container {name!r}", f"containers/{name}/json")
        return c

    async def container_create(self, name: str, config: Mapping[str, Any]) -> str:
        data = await self._json(
            f"container {name!r}", "containers/create", "POST", params={"name": name}, data=json.dumps(config)
        )
        return str(data["Id"])

    async def container_start(self, cid: str) -> None:
        async with docker_errors(f"container {cid[:12]!r}"), self._request(
            f"containers/{cid}/start", "POST"
        ) as resp:
            await resp.read()

    async def container_remove(self, cid: str) -> None:
        async with docker_errors(f"container {cid[:12]!r}"), self._request(
            f"containers/{cid}", "DELETE", params={"force": "1"}
        ) as resp:
            await resp.read()

    async def image_inspect(self, name: str) -> dict[str, Any]:
        i: dict[str, Any] = await self._json(f"image {name!r}", f"images/{name}/json")
        return i

    async def image_import(self, repo: str, tag: str, rootfs_tar: bytes, change: str) -> None:
        """`docker import`: an image from a root file system tar (not `docker load`), with one Dockerfile change."""
        params = {"fromSrc": "-", "repo": repo, "tag": tag, "changes": change}
        async with docker_errors(f"image {repo}:{tag}"), self._request(
            "images/create", "POST", params=params, data=rootfs_tar, headers={"Content-Type": "application/x-tar"}
        ) as resp:
            await resp.read()

    async def container_stop(self, cid: str) -> None:
        async with docker_errors(f"container {cid[:12]!r}"), self._request(
            f"containers/{cid}/stop", "POST", timeout=None
        ) as resp:
            await resp.read()

    async def container_exec(self, cid: str, cmd: list[str]) -> tuple[int, str]:
        """Run `cmd` in a running container; its exit code and the tail of its output."""
        async with docker_errors(f"exec in container {cid[:12]!r}"):
            container = self.client.containers.container(cid)
            ex = await container.exec(cmd, stdout=True, stderr=True)
            out = bytearray()
            async with ex.start(detach=False) as stream:
                while (msg := await stream.read_out()) is not None:
                    out += msg.data
                    del out[:-4096]
            info = await ex.inspect()
        return int(info.get("ExitCode") or 0), out.decode(errors="replace").strip()

    async def archive_get(self, cid: str, path: str) -> AsyncIterator[bytes]:
        """The tar of `path` in the container, streamed (aiodocker's get_archive would buffer it all)."""
        async with docker_errors(f"the files of container {cid[:12]!r}"), self._request(
            f"containers/{cid}/archive", params={"path": path}, timeout=None
        ) as resp:
            async for chunk in resp.content.iter_chunked(ARCHIVE_CHUNK):
                yield chunk

    async def archive_put(self, cid: str, path: str, chunks: AsyncIterator[bytes]) -> None:
        async with docker_errors(f"the files of container {cid[:12]!r}"), self._request(
            f"containers/{cid}/archive", "PUT", params={"path": path}, data=chunks, timeout=None,
            headers={"Content-Type": "application/x-tar"},
        ) as resp:
            await resp.read()

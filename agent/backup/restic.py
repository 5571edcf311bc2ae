"""The restic tool, as the agent runs it: one process per call, `--json` where restic has it, its words turned into
the agent's errors.

Written for Debian's restic 0.14, whose exit codes are only 0 (done), 1 (fatal: nothing made) and 3 (backup:
some files could not be read; an incomplete snapshot was made). Why a command failed is in its stderr, so the
mapping reads restic's own sentences (`error_of`): a missing repository, a wrong password, a lock another process
holds (`prune` holds it exclusively), a backend that cannot be reached. Later versions add exit codes 10 (no
repository), 11 (lock failed) and 12 (wrong password); they are read too.

Secrets: the repository's password stays in its `password_file` (restic reads it: `--password-file`), backend
credentials in the store's `env_file`, read for each call and given to restic's environment alone. The
environment is otherwise the agent's minimum (PATH, HOME, the cache): nothing of the agent's own reaches restic.
What restic says is scrubbed before it is logged or answered: the repository's URL (it may hold credentials) is
replaced by the store's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog

from volumectl.redact import redact

from ..errors import AgentError, Corrupt, NotFound, ToolFailed, Unavailable
from .pipes import REAP_TIMEOUT_S, feed
from .store_config import RESTIC, ResticConfig, env_of

__all__ = ["RepositoryLocked", "RepositoryMissing", "Restic"]

log = structlog.get_logger(__name__)

# What restic's stderr may run to before the start is dropped (its last lines say why it failed).
STDERR_KEEP = 64 << 10
# A JSON line longer than this is no status, summary or node restic writes.
LINE_LIMIT = 1 << 20
# restic 0.14 fails at once when another process holds the repository's lock exclusively (`forget`, `prune`,
# `check`; it has no --retry-lock): a call is tried again for this long (one whose stdin is a stream cannot be).
LOCK_WAIT_S = 120.0
LOCK_RETRY_S = (0.2, 5.0)
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", "SSH_AUTH_SOCK")
_LOCKED = ("repository is already locked", "unable to create lock", "failed to refresh lock")
_MISSING = ("Is there a repository at the following location?", "unable to open config file",
            "repository does not exist")
_WRONG_PASSWORD = ("wrong password or no key found",)
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "connection reset", "network is unreachable",
                "ssh command exited", "unable to start the sftp session", "timeout", "TLS handshake",
                "no route to host", "unexpected EOF", "Bad Gateway", "Service Unavailable")
_NO_SPACE = ("no space left on device", "disk quota exceeded")
_NO_SNAPSHOT = ("no matching ID found", "not found in repository", "invalid id", "ambiguous")


class RepositoryMissing(Unavailable):
    """The store's repository does not exist (yet)."""


class RepositoryLocked(Unavailable):
    """Another restic process holds the repository's lock (exclusively, or this call wanted it so)."""


def _decode_line(line: bytes) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


class Restic:
    """One repository, reached by the restic tool with a store's settings."""

    def __init__(self, store: str, cfg: ResticConfig, stores_file: Path | None = None) -> None:
        self.store, self.cfg, self.stores_file = store, cfg, stores_file

    def argv(self, *args: str) -> list[str]:
        """restic with the repository, its password file and the store's options, then `args`."""
        cfg = self.cfg
        out = [RESTIC, "--repo", cfg.repository, "--password-file", cfg.password_file, "--compression",
               cfg.compression]
        if cfg.limit_upload:
            out += ["--limit-upload", str(cfg.limit_upload)]
        if cfg.limit_download:
            out += ["--limit-download", str(cfg.limit_download)]
        if cfg.cache_dir:
            out += ["--cache-dir", cfg.cache_dir]
        for key, value in cfg.options.items():
            out += ["--option", f"{key}={value}"]
        return out + list(args)

    def env(self) -> dict[str, str]:
        """restic's whole environment: the minimum it needs, and the store's env file (read now: a rotated key is
        used at the next call)."""
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env["RESTIC_PROGRESS_FPS"] = "1"  # one status line a second is all the events need
        if self.cfg.env_file:
            try:
                env.update(env_of(Path(self.cfg.env_file)))
            except (OSError, ValueError) as exc:
                raise Unavailable(f"The env_file of restic store {self.store!r} cannot be read now "
                                  f"({getattr(exc, 'strerror', None) or exc}).") from None
        return env

    def scrub(self, text: str) -> str:
        """restic's words without the repository's URL (it may hold credentials)."""
        return redact(text.replace(self.cfg.repository, f"<repository of store {self.store}>"))

    def _where(self) -> str:
        return f" ({self.stores_file})" if self.stores_file else ""

    def error_of(self, status: int, stderr: str, doing: str) -> AgentError | None:
        """The agent's error for what restic said when it failed; None: nothing restic says of its repository,
        its lock or its backend (the caller decides: a snapshot that cannot be read is `corrupt`)."""
        said = self.scrub(stderr)
        store = f"restic store {self.store!r}"
        if status == 12 or any(m in stderr for m in _WRONG_PASSWORD):
            return Unavailable(f"The password of {store} opens none of its repository's keys: check its "
                               f"password_file{self._where()}.")
        if status == 10 or any(m in stderr for m in _MISSING):
            return RepositoryMissing(
                f"The repository of {store} does not exist: make it once with `restic init` (restic -r REPOSITORY "
                f"init), or set `init = true` for the store in the stores file{self._where()} to let the agent do it.")
        if status == 11 or any(m in stderr for m in _LOCKED):
            return RepositoryLocked(f"The repository of {store} is locked by another restic process (a prune or check "
                               "holds it exclusively); try again when it is done.")
        lowered = said.lower()
        if any(m.lower() in lowered for m in _NO_SPACE):
            return Unavailable(f"The repository of {store} is full (no space left); nothing was kept.")
        if any(m.lower() in lowered for m in _UNREACHABLE):
            return Unavailable(f"The repository of {store} cannot be reached now: {_last(said)}.")
        return None

    def failed(self, status: int, stderr: str, doing: str) -> AgentError:
        """The agent's error for any failure of a restic call."""
        known = self.error_of(status, stderr, doing)
        if known is not None:
            return known
        said = self.scrub(stderr)
        return ToolFailed(RESTIC, status, _last(said), doing, stderr=said)

    def tool_error(self, exc: ToolFailed) -> AgentError | None:
        """For a restic process in a pipe (`dump`): its failure as the agent's error, if restic's words say why."""
        if exc.tool != RESTIC:
            return None
        known = self.error_of(exc.status, exc.stderr, "")
        if known is None and any(m in exc.stderr for m in _NO_SNAPSHOT):
            return Corrupt(f"The snapshot is missing from the repository of restic store {self.store!r} "
                           "(forgotten or pruned there); nothing was written to the volume.")
        return known

    async def run(
        self, *args: str, doing: str, on_json: Callable[[dict[str, Any]], None] | None = None,
        stdin: AsyncIterable[bytes] | None = None, cwd: Path | None = None, ok: tuple[int, ...] = (0,),
    ) -> tuple[int, bytes]:
        """Run `restic <args>`; each JSON line of its stdout goes to `on_json` (the rest is returned, for commands
        that print one document). Returns its exit status (one of `ok`) and that output; else raises `failed`.
        A repository locked by another process (a `forget` elsewhere, maintenance) is tried again for up to
        LOCK_WAIT_S, unless `stdin` is a stream (it cannot be read twice)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        pause = LOCK_RETRY_S[0]
        while True:
            try:
                return await self._run_once(*args, doing=doing, on_json=on_json, stdin=stdin, cwd=cwd, ok=ok)
            except RepositoryLocked:
                if stdin is not None or loop.time() + pause > deadline:
                    raise
            log.info("restic.waiting_for_lock", store=self.store, doing=doing, retry_in_s=round(pause, 1))
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOCK_RETRY_S[1])

    async def _run_once(
        self, *args: str, doing: str, on_json: Callable[[dict[str, Any]], None] | None,
        stdin: AsyncIterable[bytes] | None, cwd: Path | None, ok: tuple[int, ...],
    ) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args), stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env(),
            cwd=str(cwd) if cwd else None, limit=LINE_LIMIT,
        )
        assert proc.stdout is not None and proc.stderr is not None
        err = bytearray()
        other = bytearray()

        async def read_err() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(1 << 16):
                err.extend(chunk)
                del err[:-STDERR_KEEP]

        async def read_out() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                msg = _decode_line(line) if on_json is not None and line.startswith(b"{") else None
                if msg is not None and on_json is not None:
                    on_json(msg)
                elif len(other) < LINE_LIMIT * 16:
                    other.extend(line)

        readers = [asyncio.create_task(read_err()), asyncio.create_task(read_out())]
        try:
            if stdin is not None:
                await feed(proc, stdin)
            await asyncio.gather(*readers)
            status = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            for t in readers:
                t.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(REAP_TIMEOUT_S):
                    await asyncio.gather(*readers, return_exceptions=True)
                    await proc.wait()
            raise
        if status not in ok:
            raise self.failed(status, err.decode(errors="replace"), doing)
        return status, bytes(other)

    async def json(self, *args: str, doing: str) -> Any:
        """A command that prints one JSON document (`cat config`, `snapshots --json`)."""
        _, out = await self.run(*args, doing=doing)
        try:
            return msgspec.json.decode(out)
        except msgspec.DecodeError:
            raise ToolFailed(RESTIC, 0, "printed no JSON", doing) from None

    async def repository_id(self, *, init: bool) -> str:
        """The repository's id; made first when it is missing and `init`."""
        try:
            config = await self.json("cat", "config", doing="reading the repository's config")
        except RepositoryMissing:
            if not init:
                raise
            await self.run("init", doing="making the repository (init = true)")
            log.info("restic.initialised", store=self.store)
            config = await self.json("cat", "config", doing="reading the repository's config")
        if not isinstance(config, Mapping) or not isinstance(config.get("id"), str):
            raise ToolFailed(RESTIC, 0, "printed a config without an id", "reading the repository's config")
        return str(config["id"])

    async def forget(self, snapshot_id: str) -> None:
        """Forget one snapshot (no prune: that is repository maintenance); a snapshot already gone is no error."""
        try:
            await self.run("forget", snapshot_id, doing=f"forgetting snapshot {snapshot_id}")
        except ToolFailed as exc:
            if not any(m in exc.stderr for m in _NO_SNAPSHOT):
                raise
        except NotFound:
            pass


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    line = (fatal or lines or ["(no message)"])[-1]
    return line.removeprefix("Fatal: ")[-300:].rstrip(".")

"""`volumectl web`: connect, read and follow the fleet, serve the page until stopped."""


from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import signal
import sys
from pathlib import Path

import nats
import nkeys
from aiohttp import web

from ..client import AgentClient
from ..local import LOCAL_OPERATOR_SEED, connect_options, local_seed
from ..redact import redact
from ..signing import Signer
from .access import Passwords, add_user, basic_auth, exposure, parse_listen, tls_context
from .follower import Follower
from .server import Hub, make_app

__all__ = ["run", "serve"]


async def _connect(a: argparse.Namespace, follower: list[Follower]) -> AgentClient:
    urls = [u.strip() for u in a.nats.split(",") if u.strip()]
    seed = Path(a.seed) if a.seed else local_seed()
    signer = Signer.from_file(seed) if seed else None

    async def reconnected() -> None:
        if follower:
            follower[0].reconnected()

    async def quiet(exc: Exception) -> None:
        logging.getLogger(__name__).info("NATS: %s", redact(str(exc)) or type(exc).__name__)

    kw = connect_options(urls, seed, a.tls_ca)
    if a.identity:
        kw["inbox_prefix"] = f"_INBOX_{a.identity}"
    nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=1,
                            ping_interval=20, error_cb=quiet, reconnected_cb=reconnected, **kw)
    return AgentClient(nc, a.prefix, signer=signer)


async def serve(a: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    host, port = parse_listen(a.listen)
    passwords = Passwords(Path(a.auth)) if a.auth else None
    tls = tls_context(a.tls_cert, a.tls_key) if a.tls_cert else None
    holder: list[Follower] = []
    try:
        client = await _connect(a, holder)
    except Exception as exc:  # any connect failure is one sentence for a person
        print(f"volumectl: cannot connect to NATS at {redact(a.nats)}: {redact(str(exc)) or type(exc).__name__}",
              file=sys.stderr)
        if not a.seed and "authorization" in str(exc).lower():
            print(f"volumectl: give your seed (--seed or VOLUME_AGENT_SEED; a reader's is enough), or run as root on "
                  f"a host whose agent runs the embedded server (<data dir>/{LOCAL_OPERATOR_SEED}).", file=sys.stderr)
        return 1
    hub = Hub()
    follower = Follower(client, hub.broadcast)
    holder.append(follower)
    stop = stop or asyncio.Event()
    runner: web.AppRunner | None = None
    try:
        await follower.start()
        allowed = None if passwords else {f"{h}:{port}" for h in (host, "localhost", "127.0.0.1", "[::1]")} | \
            ({f"[{host}]:{port}"} if ":" in host else set())
        app = make_app(follower, hub, allowed_hosts=allowed, identity=a.identity or "",
                       auth=basic_auth(passwords) if passwords is not None else None)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        scheme = "https" if tls else "http"
        print(f"volumectl web: {len(follower.fleet.hosts)} host(s); serving {scheme}://{a.listen}/", file=sys.stderr,
              flush=True)
        await stop.wait()
        return 0
    finally:
        hub.close()
        if runner is not None:
            await runner.cleanup()
        await follower.stop()
        await client.close()


def run(a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """`volumectl web`: check the options (refusing an exposure, saying what to set), then serve until stopped."""
    if a.add_user:
        if not a.auth:
            p.error("--add-user needs --auth FILE: the password file to add the user to")
        password = getpass.getpass(f"password for {a.add_user}: ") if sys.stdin.isatty() else \
            sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            p.error("the password must be at least 8 characters long")
        try:
            add_user(Path(a.auth), a.add_user, password)
        except (OSError, ValueError) as exc:
            p.error(str(exc))
        print(f"volumectl web: {a.add_user} added to {a.auth}", file=sys.stderr)
        return 0
    try:
        host, _ = parse_listen(a.listen)
    except ValueError as exc:
        p.error(str(exc))
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if a.auth:
        try:
            Passwords(Path(a.auth))
        except (OSError, ValueError) as exc:
            p.error(f"--auth: {exc}")
    if (why := exposure(host, auth=bool(a.auth), tls=bool(a.tls_cert))) and not a.insecure:
        p.error(why)
    if a.seed:
        try:
            Signer.from_file(Path(a.seed))
        except (OSError, ValueError, nkeys.NkeysError) as exc:
            p.error(f"cannot sign with the seed file {a.seed}: {exc or type(exc).__name__}")
    logging.basicConfig(level=logging.INFO, format="volumectl web: %(message)s")
    return asyncio.run(serve(a))

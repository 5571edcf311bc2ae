"""Who may look at the fleet page: anyone on this host by default (it listens on loopback); off loopback only
with passwords (`--auth`) over TLS (`--tls-cert`/`--tls-key`), unless `--insecure` says otherwise.

The page names every host, volume, label and policy of the fleet and the callers of every command: what an
attacker maps first. The password file holds one `name:scrypt$<salt hex>$<hash hex>` line per person
(`volumectl web --add-user NAME --auth FILE` writes one); a password is checked once per connection's
credentials and remembered as their digest, so each request does not pay scrypt again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = ["Handler", "Passwords", "add_user", "basic_auth", "exposure", "hash_password", "is_loopback", "parse_listen",
           "tls_context"]

SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}
"""scrypt's cost (about 50 ms a check): the parameters Python's docs give as a minimum for interactive logins."""
REALM = "volume-agent fleet"


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) as (host, port); ValueError with a sentence."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"--listen {text!r} must look like 127.0.0.1:8080 or [::1]:8080")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure(host: str, *, auth: bool, tls: bool) -> str | None:
    """Why serving on `host` would show the fleet to others (a sentence saying what to set), or None."""
    if is_loopback(host) or (auth and tls):
        return None
    missing = " and ".join(x for x, ok in (("passwords (--auth FILE)", auth), ("TLS (--tls-cert and --tls-key)", tls))
                           if not ok)
    return (f"refusing to serve the fleet page on {host}, reachable from other hosts, without {missing}: it shows "
            "every host, volume, label, policy and caller of the fleet. Set them (volumectl web --add-user NAME "
            "--auth FILE makes the password file), or keep --listen on 127.0.0.1 and reach it through an SSH "
            "tunnel, or pass --insecure to serve it so anyway.")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


class Passwords:
    """The password file: name -> scrypt hash."""

    def __init__(self, path: Path) -> None:
        self.users: dict[str, tuple[bytes, bytes]] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, _, hashed = line.partition(":")
            kind, _, rest = hashed.partition("$")
            salt, _, digest = rest.partition("$")
            try:
                self.users[name] = (bytes.fromhex(salt), bytes.fromhex(digest))
            except ValueError:
                kind = ""
            if kind != "scrypt" or not name:
                raise ValueError(f"{path} line {n} is not NAME:scrypt$SALT$HASH (volumectl web --add-user writes one)")
        if not self.users:
            raise ValueError(f"{path} names nobody: add someone with volumectl web --add-user NAME --auth {path}")
        self._good: set[bytes] = set()

    def check(self, name: str, password: str) -> bool:
        key = hashlib.sha256(f"{name}\0{password}".encode()).digest()
        if key in self._good:
            return True
        user = self.users.get(name)
        salt, digest = user if user else (b"\0" * 16, b"")
        ok = hmac.compare_digest(hashlib.scrypt(password.encode(), salt=salt, **SCRYPT), digest) and user is not None
        if ok:
            self._good.add(key)
        return ok


def add_user(path: Path, name: str, password: str) -> None:
    """Append (or replace) `name`'s line in the password file, made private to its owner."""
    if not name or ":" in name or "\n" in name:
        raise ValueError("a user's name may not be empty or hold ':'")
    lines = [ln for ln in (path.read_text().splitlines() if path.exists() else [])
             if ln.partition(":")[0] != name]
    lines.append(f"{name}:{hash_password(password)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth(passwords: Passwords) -> Middleware:
    """aiohttp middleware: HTTP Basic authentication against the password file, on every path."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                name = password = ""
            if name and passwords.check(name, password):
                return await handler(request)
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})

    return middleware


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx

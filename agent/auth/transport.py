"""How the agent reaches NATS, and what would make that insecure.

Whoever can publish to the agent's subjects commands root on this host (the agent makes bind mounts and runs
containers), so the agent refuses to start where others could: a NATS server off this host without
credentials, or without TLS (passwords and tokens, commands and backups would cross the network in the clear,
and anyone on the path could take over the session), and an embedded server listening off this host (it has
no TLS). `--insecure` runs it anyway; it then says so at start and in every inventory snapshot.

TLS means TLS from the first byte: nats-py otherwise goes on in the clear when the server's INFO does not ask for
TLS, which anyone on the path can send (see `agent.bus`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from volumectl.redact import redact

__all__ = ["Exposure", "exposures", "is_loopback", "is_tls"]

TLS_SCHEMES = frozenset({"tls", "wss"})


@dataclass(frozen=True)
class Exposure:
    """One way the agent would be open to others: what it is (for the log and the inventory), how to close it."""

    what: str
    fix: str


def _split(url: str) -> tuple[str, str]:
    """The scheme and host of a NATS URL (nats-py takes `host:port` as `nats://host:port`)."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return parts.scheme.lower(), (parts.hostname or "")


def is_loopback(url: str) -> bool:
    """True when the URL names this host by a loopback address or `localhost` (no name is resolved)."""
    _, host = _split(url)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None  # ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def is_tls(url: str, *, tls_options: bool) -> bool:
    """True when the connection to `url` is TLS: a tls:// (or wss://) URL, or a CA or client certificate given."""
    scheme, _ = _split(url)
    return scheme in TLS_SCHEMES or (tls_options and scheme != "ws")


def _has_user(url: str) -> bool:
    return bool(urlsplit(url if "://" in url else f"nats://{url}").username)


def exposures(urls: list[str], *, credentials: bool, tls_options: bool, embedded_listen: str) -> list[Exposure]:
    """What would leave the agent open: `urls` are the --nats URLs (none: the embedded server on
    `embedded_listen`); `credentials` whether any NATS credential is given; `tls_options` a CA or certificate."""
    if not urls:
        if is_loopback(f"nats://{embedded_listen}"):
            return []
        return [Exposure(
            what=f"the embedded nats-server listens on {embedded_listen}, reachable from other hosts, without TLS",
            fix="keep --embedded-listen on 127.0.0.1 (the default), or run nats-server with TLS "
                "(deploy/nats-server.conf) and give --nats tls://HOST:PORT",
        )]
    remote = [u for u in urls if not is_loopback(u)]
    if not remote:
        return []
    found = []
    named = ", ".join(redact(u) for u in remote)
    if not credentials and not any(_has_user(u) for u in remote):
        found.append(Exposure(
            what=f"NATS at {named} is not on this host and no credentials are given",
            fix="give the agent's credentials with --nats-creds FILE, --nats-nkey-seed FILE, --nats-user and "
                "--nats-password, or --nats-token (or VOLUME_AGENT_NATS_CREDS, VOLUME_AGENT_NATS_NKEY_SEED, ...)",
        ))
    plain = [u for u in remote if not is_tls(u, tls_options=tls_options)]
    if plain:
        found.append(Exposure(
            what=f"NATS at {', '.join(redact(u) for u in plain)} is not on this host and not TLS (credentials, "
                 "commands and backups would cross the network in the clear)",
            fix="use tls://HOST:PORT URLs, with --nats-tls-ca FILE unless a CA this host trusts signed the "
                "server's certificate",
        ))
    return found

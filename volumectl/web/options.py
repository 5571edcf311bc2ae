"""The options of `volumectl web` (kept apart from the server so that other commands do not import aiohttp)."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_LISTEN", "add_parser"]

DEFAULT_LISTEN = "127.0.0.1:8080"

def add_parser(sub: Any) -> None:
    w = sub.add_parser("web", help="serve a live page of the whole fleet (read-only; a reader's seed is enough)")
    w.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"where to serve it (default {DEFAULT_LISTEN}); off loopback only with --auth and TLS")
    w.add_argument("--auth", metavar="FILE", help="password file (NAME:scrypt$... lines): HTTP Basic authentication")
    w.add_argument("--add-user", metavar="NAME", help="add NAME (password read from the terminal or stdin) to the "
                   "--auth file, then exit")
    w.add_argument("--tls-cert", metavar="FILE", help="serve over HTTPS with this certificate (PEM) ...")
    w.add_argument("--tls-key", metavar="FILE", help="... and its private key")
    w.add_argument("--insecure", action="store_true", help="serve off loopback without passwords or TLS anyway")

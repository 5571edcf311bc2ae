"""Signing requests with the caller's nkey (see `contracts.auth`), and reading nkey seed files."""

from __future__ import annotations

import base64
import os
import stat
import time
from pathlib import Path

import nkeys

from contracts.auth import HEADER_KEY, HEADER_SIG, HEADER_TIME, signed_bytes

__all__ = ["Signer", "new_user_seed", "read_seed"]


def read_seed(path: str | Path) -> bytes:
    """An nkey seed from its file; refused if others may read it (a seed is a password)."""
    p = Path(path)
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{p} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    seed = p.read_bytes().strip()
    if not seed.startswith(b"SU"):
        raise ValueError(f"{p} does not hold a user nkey seed (SU...)")
    return seed


class Signer:
    """Signs messages as one identity; the seed never leaves this object (not logged, not sent)."""

    def __init__(self, seed: bytes) -> None:
        self._keys = nkeys.from_seed(bytearray(seed))
        self.public_key: str = self._keys.public_key.decode()

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        return cls(read_seed(path))

    def __repr__(self) -> str:
        return f"Signer({self.public_key})"

    def headers(
        self, subject: str, body: bytes, msg_id: str | None = None, *, now_ns: int | None = None
    ) -> dict[str, str]:
        """The signature headers for `body` published on `subject` (with `Nats-Msg-Id: msg_id`, if any)."""
        ts = str(time.time_ns() if now_ns is None else now_ns)
        sig = self.sign(signed_bytes(subject, ts, msg_id, body))
        return {HEADER_KEY: self.public_key, HEADER_TIME: ts, HEADER_SIG: sig}

    def sign(self, data: bytes) -> str:
        """base64url (no padding) of the Ed25519 signature of `data`."""
        return base64.urlsafe_b64encode(self._keys.sign(data)).rstrip(b"=").decode()


def new_user_seed() -> bytes:
    """A fresh nkey user seed (`SU...`)."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))

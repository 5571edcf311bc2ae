"""Checking an nkey signature with only the public key (nkeys' KeyPair cannot verify without the seed)."""

from __future__ import annotations

import base64
import binascii

import nacl.exceptions
import nacl.signing
import nkeys

__all__ = ["is_user_key", "verify", "verify_key", "verify_with"]

_USER_PREFIX = nkeys.PREFIX_BYTE_USER


def _raw_public_key(public_key: str) -> bytes | None:
    """The 32 key bytes of a `U...` public nkey, or None if it is not one (wrong prefix, length or checksum)."""
    try:
        raw = base64.b32decode(public_key)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 35 or raw[0] != _USER_PREFIX:
        return None
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if nkeys.crc16(bytearray(body)) != crc:
        return None
    return bytes(body[1:])


def is_user_key(public_key: str) -> bool:
    return _raw_public_key(public_key) is not None


def verify_key(public_key: str) -> nacl.signing.VerifyKey | None:
    """The Ed25519 key of a `U...` public nkey, made once to check many signatures (None if it is not one)."""
    raw = _raw_public_key(public_key)
    return None if raw is None else nacl.signing.VerifyKey(raw)


def verify_with(key: nacl.signing.VerifyKey, data: bytes, signature: bytes) -> bool:
    """True if `signature` is `key`'s Ed25519 signature of `data`."""
    try:
        key.verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


def verify(public_key: str, data: bytes, signature: bytes) -> bool:
    """True if `signature` is `public_key`'s Ed25519 signature of `data`."""
    key = verify_key(public_key)
    return key is not None and verify_with(key, data, signature)

"""Every message is bounded before it is parsed: its size and how deep its JSON nests.

msgspec decodes nested arrays and objects recursively, even those it skips (an unknown field, a `dict[str, Any]`),
and raises `RecursionError` a few thousand levels down: one message of `[[[[...` could otherwise escape any
handler that expects `msgspec.DecodeError`. `BoundedDecoder` checks the bounds first, with C-speed scans, and
raises `msgspec.DecodeError` with a sentence for anything out of bounds, so callers catch one exception family.
No message of the contract nests deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Generic, TypeVar

import msgspec

__all__ = ["MAX_DEPTH", "MAX_VALUE", "BoundedDecoder", "check_bounds", "nesting_depth"]

MAX_DEPTH = 32
"""Nesting levels a message may have: the contract's deepest (a policies reply) uses 8."""
MAX_VALUE = 64 * 1024 * 1024
"""NATS' largest possible payload: the size bound of values read from the bus (the server's max_payload, 1 MiB by
default, is the real one; requests have the agent's --max-body)."""

T = TypeVar("T")

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting_depth(data: bytes) -> int:
    """How deep the JSON text `data` nests arrays and objects (brackets inside strings do not count).

    Meant for untrusted bytes: linear, with the scanning done by `re` and `bytes.translate`."""
    brackets = _STRING.sub(b"", _ESCAPE.sub(b"", data)).translate(None, _NOT_BRACKETS)
    opened = brackets.count(b"[") + brackets.count(b"{")
    if opened <= 1:
        return opened
    return max(accumulate(map(_STEP.__getitem__, brackets)))


def check_bounds(data: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "The message") -> None:
    """`msgspec.DecodeError` with a sentence if `data` is larger than `max_bytes` or nests deeper than `max_depth`."""
    if len(data) > max_bytes:
        raise msgspec.DecodeError(f"{what} is {len(data)} bytes, over the limit of {max_bytes}")
    # Counting is cheap; the depth is computed only when there are enough brackets to exceed it.
    if data.count(b"[") + data.count(b"{") > max_depth and nesting_depth(data) > max_depth:
        raise msgspec.DecodeError(f"{what} nests deeper than {max_depth} levels")


class BoundedDecoder(Generic[T]):
    """A `msgspec.json.Decoder` that checks the bounds first and never raises but `msgspec.DecodeError`
    (`msgspec.ValidationError` is one) for bad input."""

    def __init__(self, type: type[T], *, max_bytes: int = MAX_VALUE, max_depth: int = MAX_DEPTH,
                 what: str = "The message") -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type)
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.what = what

    def decode(self, data: bytes | bytearray | memoryview | str) -> T:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        check_bounds(raw, max_bytes=self.max_bytes, max_depth=self.max_depth, what=self.what)
        try:
            return self._decoder.decode(raw)
        except RecursionError:  # not reachable within the depth bound; a last line all the same
            raise msgspec.DecodeError(f"{self.what} nests too deeply to be read") from None

"""The content digest of a volume: equal digests mean equal trees, whichever way the files were read."""

from __future__ import annotations

import msgspec

from .envelope import BaseRequest
from .names import VolumeName

__all__ = ["DigestRequest", "DigestResult"]


class DigestRequest(BaseRequest):
    """A digest of a volume's content: equal digests mean equal trees."""

    volume: VolumeName


class DigestResult(msgspec.Struct, forbid_unknown_fields=True):
    volume: str
    sha256: str
    """Over every entry sorted by path: type, mode, owner, mtime (whole seconds), size, content, link target."""
    entries: int
    bytes: int

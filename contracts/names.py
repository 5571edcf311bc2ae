"""Names the contract shares between message families."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["VOLUME_NAME_PATTERN", "VolumeName"]

# Docker's own rule for volume names; checked here so Docker never sees a bad one.
VOLUME_NAME_PATTERN = "^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"

VolumeName = Annotated[
    str, msgspec.Meta(pattern=VOLUME_NAME_PATTERN, max_length=255, description="A Docker volume name.")
]

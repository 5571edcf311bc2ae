"""Names the contract shares between message families."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["AGE_RECIPIENT_PATTERN", "VOLUME_NAME_PATTERN", "AgeRecipient", "VolumeName"]

# Docker's own rule for volume names; checked here so Docker never sees a bad one.
VOLUME_NAME_PATTERN = "^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"

VolumeName = Annotated[
    str, msgspec.Meta(pattern=VOLUME_NAME_PATTERN, max_length=255, description="A Docker volume name.")
]

# An X25519 age recipient: bech32, human-readable part `age`, 32 bytes of key (58 characters of data + checksum).
AGE_RECIPIENT_PATTERN = "^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$"
AgeRecipient = Annotated[str, msgspec.Meta(pattern=AGE_RECIPIENT_PATTERN,
                                            description="An age X25519 recipient (public key), `age1...`.")]

"""The reply envelope and the fields every request body may carry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "ERROR_CODES",
    "ERROR_STATUS",
    "BaseRequest",
    "CommandId",
    "ErrorBody",
    "ErrorCode",
    "Reply",
]

ErrorCode = Literal[
    "invalid",
    "not_found",
    "conflict",
    "in_use",
    "expired",
    "unavailable",
    "timeout",
    "internal",
    "corrupt",
    "forbidden",
]
ERROR_CODES: tuple[str, ...] = ErrorCode.__args__  # type: ignore[attr-defined]

# The numeric code in the NATS micro error header (`Nats-Service-Error-Code`), HTTP-like.
ERROR_STATUS: dict[str, int] = {
    "invalid": 400,
    "forbidden": 403,
    "corrupt": 422,
    "not_found": 404,
    "expired": 408,
    "conflict": 409,
    "in_use": 409,
    "internal": 500,
    "unavailable": 503,
    "timeout": 504,
}

CommandId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        description="Idempotency key: a command seen before is not applied again.",
    ),
]


class BaseRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Fields every request body may carry."""

    id: CommandId | None = None
    deadline: Annotated[
        datetime,
        msgspec.Meta(tz=True, description="RFC 3339; a command past it is not applied (`expired`)."),
    ] | None = None


class ErrorBody(msgspec.Struct, forbid_unknown_fields=True):
    """Why an operation failed: a stable code and a sentence for a person."""

    code: ErrorCode
    message: str


class Reply(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The envelope of every reply and every outcome on `vol.res`.

    Exactly one of `result` (when `ok`) and `error` (when not) is present. `caller` is the name, in the agent's
    policy file, of the identity that signed the command (absent when the agent could not tell who it was).
    """

    id: str
    host: str
    op: str
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None
    caller: str | None = None

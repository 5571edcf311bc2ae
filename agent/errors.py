"""The agent's one error hierarchy; each error carries its wire code.

    AgentError               internal
    ├── Invalid              invalid       bad input: decoding, validation, unknown op, too large
    ├── NotFound             not_found     no such volume, container or image
    ├── Conflict             conflict      the name exists with another spec; an id reused for another command
    ├── InUse                in_use        a container uses the volume
    ├── Expired              expired       the command's deadline passed before it was applied
    ├── Unavailable          unavailable   Docker or NATS cannot be reached
    ├── Timeout              timeout       the operation did not finish in time
    └── Corrupt              corrupt       a backup's bytes do not match their recorded sha256

Foreign exceptions (aiodocker, nats) are translated where they enter, in `agent/docker.py` and `agent/bus.py`.
The message is always a sentence for a person; tracebacks go to the log.
"""

from __future__ import annotations

from contracts import ErrorBody, ErrorCode

__all__ = [
    "AgentError",
    "Conflict",
    "Corrupt",
    "Expired",
    "InUse",
    "Invalid",
    "NotFound",
    "Timeout",
    "Unavailable",
]


class AgentError(Exception):
    """Base of every error the agent replies with."""

    code: ErrorCode = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message)


class Invalid(AgentError):
    code = "invalid"


class NotFound(AgentError):
    code = "not_found"


class Conflict(AgentError):
    code = "conflict"


class InUse(AgentError):
    code = "in_use"


class Expired(AgentError):
    code = "expired"


class Unavailable(AgentError):
    code = "unavailable"


class Timeout(AgentError):
    code = "timeout"


class Corrupt(AgentError):
    code = "corrupt"

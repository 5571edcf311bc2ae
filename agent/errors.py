"""The agent's one error hierarchy; each error carries its wire code.

    AgentError               (abstract; its code is `internal`)
    ├── Internal             internal      a bug: the command id leads to the traceback in the log
    ├── Invalid              invalid       bad input: decoding, validation, unknown op, too large
    ├── NotFound             not_found     no such volume, container, image or backup
    ├── Conflict             conflict      the name exists with another spec; an id reused for another command
    ├── InUse                in_use        a container uses the volume
    ├── Expired              expired       the command's deadline passed before it was applied
    ├── Corrupt              corrupt       a backup's bytes do not match their recorded sha256
    ├── Forbidden            forbidden     the local policy refuses it: signature, role, host, or a risky request
    └── Transient            (abstract)    a retry may succeed: durable commands are redelivered
        ├── Unavailable      unavailable   Docker, NATS or storage cannot be reached or used right now
        │   └── ToolFailed   unavailable   tar, zstd, gzip or age failed: a volume or store could not be read or written
        └── Timeout          timeout       the operation did not finish in time

A `Forbidden` refusal is final (never redelivered) but never recorded under the command's id: it says nothing
about the command itself, and must not stand in for the outcome of the command that id really names.
Retries are decided by type (`isinstance(exc, Transient)`), never by code. Foreign exceptions (aiodocker,
nats, OSError) are translated where they enter: `agent/docker.py`, `agent/bus.py`, `store_errors`.
Errors that come back from a peer agent are mapped to the same classes by `from_wire`.
The message is always a sentence for a person; tracebacks go to the log.
"""

from __future__ import annotations

from contracts import ErrorBody, ErrorCode

__all__ = [
    "AgentError",
    "Conflict",
    "Corrupt",
    "Expired",
    "Forbidden",
    "InUse",
    "Internal",
    "Invalid",
    "NotFound",
    "Timeout",
    "ToolFailed",
    "Transient",
    "Unavailable",
    "from_wire",
    "is_final",
]


class AgentError(Exception):
    """Base of every error the agent replies with."""

    code: ErrorCode = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message)


class Internal(AgentError):
    """A bug. Never recorded as a command's outcome (a retry with the same id runs again), never redelivered."""

    code = "internal"


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


class Corrupt(AgentError):
    code = "corrupt"


class Forbidden(AgentError):
    """The agent's policy refuses the request; the message names the setting that would allow it.
    `caller`: who asked, when the signature was good (a role or host refusal)."""

    code = "forbidden"

    def __init__(self, message: str, caller: str | None = None) -> None:
        super().__init__(message)
        self.caller = caller


class Transient(AgentError):
    """A failure that says nothing final about the command: not recorded, and durable commands are retried."""


class Unavailable(Transient):
    code = "unavailable"


class Timeout(Transient):
    code = "timeout"


class ToolFailed(Unavailable):
    """A data-path process exited non-zero; says which tool, its exit status and its last stderr line."""

    def __init__(self, tool: str, status: int, stderr_tail: str, doing: str = "", *, stderr: str = "") -> None:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        said = f": {stderr_tail}" if stderr_tail else " without a message"
        super().__init__(f"{tool} {how}{doing and ' while ' + doing}{said}.".replace("..", "."))
        self.tool, self.status, self.stderr_tail = tool, status, stderr_tail
        self.stderr = stderr
        """All it said (for a caller that knows the tool's words: restic's); never in the message as a whole."""


_BY_CODE: dict[str, type[AgentError]] = {
    cls.code: cls for cls in (
        Internal, Invalid, NotFound, Conflict, InUse, Expired, Corrupt, Forbidden, Unavailable, Timeout)
}


def from_wire(code: str, message: str) -> AgentError:
    """The error class for a wire code (a peer agent's reply); an unknown code is `Internal`."""
    return _BY_CODE.get(code, Internal)(message)


def is_final(exc: AgentError) -> bool:
    """Whether this failure is the command's outcome for good (recorded under its id): not a transient
    failure, which a retry may overcome, not a bug, which a fixed agent should get to run again, and not a refusal,
    which a changed policy may lift."""
    return not isinstance(exc, Transient | Internal | Forbidden) and type(exc) is not AgentError

"""Secrets in URLs never leave the process: `nats://user:pass@host` is printed as `nats://user:***@host`.

A URL's user part is a credential (NATS takes `nats://TOKEN@host` as a token), so whatever the agent logs, refuses
with or publishes passes through here: explicitly where a URL is named, and in every log line (`redact_event`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["redact", "redact_event"]

# scheme://user[:password]@ ; the user part may not hold '/', '@' or blanks.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@\s:?#]*)(?P<password>:[^/@\s]*)?@")


def _hide(m: re.Match[str]) -> str:
    if m.group("password") is not None:
        return f"{m.group('scheme')}{m.group('user')}:***@"
    return f"{m.group('scheme')}***@"  # a lone user part is a token


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***`."""
    return _USERINFO.sub(_hide, text) if "@" in text else text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: every value of a log line, tracebacks included, without URL credentials."""
    return {k: v if k == "exc_info" else _clean(v) for k, v in event.items()}

"""structlog set-up: JSON lines on stderr, readable lines on a terminal; context from contextvars."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

from volumectl.redact import redact_event

__all__ = ["configure"]


def _dumps(obj: Any, **_: Any) -> str:
    # structlog passes json.dumps-style keywords; msgspec needs none of them.
    return msgspec.json.encode(obj, enc_hook=str).decode()


def configure(level: int = logging.INFO, *, json: bool | None = None) -> None:
    """Configure structlog once for the process."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps) if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
            redact_event,  # after the traceback is text: it may quote a URL too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

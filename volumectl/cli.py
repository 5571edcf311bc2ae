"""`volumectl`: a docker-like client of the agents. Tables for people, `--json` for machines.

Exit codes: 0 success, 1 an error reply (or no agent answered, or NATS refused this identity), 2 usage errors,
3 `fleet --unprotected` found volumes at risk (not covered by a policy, its policy failing or overdue, or, with
HOURS, no backup that recent), 130 interrupted (Ctrl-C), 141 its output was closed early (`| head`), as for a
program that SIGPIPE ends. With `--json` (before or after the command) every failure is also a JSON object on
stdout: `{"ok": false, "error": {"code": ..., "message": ...}}` (`output.py`).

Start-up stays light: the parser imports nothing heavy, so `--version`, `--help` and completions answer at once;
nats-py, msgspec and the rest load only to run a command (`commands.py`).
"""

from __future__ import annotations

import os
import sys

from . import args

__all__ = ["main"]

EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a program whose reader went away."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of `volumectl`."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # before the command started (or after it ended): nothing goes on anywhere
        print("volumectl: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) is gone: say nothing more, and let the interpreter's last flush find no pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CLOSED_PIPE


def _main(argv: list[str]) -> int:
    p = args.parser()
    args.Parser.argv = argv
    # Everything after `--` is the shared container's command, never options of ours.
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    a = p.parse_args(argv)
    a.identity = args.identity_of(a, p)
    if command and a.cmd != "share":
        p.error("only share takes a command after --")
    a.command = command
    if a.cmd == "web":
        from .web.main import run as web  # aiohttp: only this command needs it
        return web(a, p)
    op, body = args.request_of(a, p)

    if "aiohttp" not in sys.modules and not any(u.strip().startswith("ws") for u in a.nats.split(",")):
        # nats-py imports aiohttp for its WebSocket transport only, and does without it: a third of start-up.
        sys.modules["aiohttp"] = None  # type: ignore[assignment]

    import asyncio

    from .commands import run  # the heavy part: nats-py, msgspec, the contracts

    return asyncio.run(run(a, op, body))


if __name__ == "__main__":
    sys.exit(main())

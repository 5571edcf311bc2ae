"""A real webhook receiver for notification tests: an HTTP server on 127.0.0.1, in a thread of its own, that keeps
each POST's path and JSON body and answers with the status it is given."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """`with Receiver() as r:` serves on `r.port`; `await r.next()` is the next POST as (path, JSON body)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.posts.put((self.path, json.loads(body or b"{}")))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test says what matters

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def url(self, path: str = "/hook") -> str:
        """The apprise URL that POSTs JSON here."""
        return f"json://127.0.0.1:{self.port}{path}"

    async def next(self, timeout: float = 10) -> tuple[str, dict[str, Any]]:
        """The next POST, waiting for it without holding up the event loop; `queue.Empty` if none comes in time."""
        return await asyncio.to_thread(self.posts.get, True, timeout)

"""Run the app under waitress with a stop that works from any thread or signal handler (Windows too).

:meth:`HttpServer.serve_forever` polls waitress's socket map in short slices and checks a stop flag
between them, so :meth:`HttpServer.shutdown` (from a test thread, or the SIGINT/SIGTERM handler of
``edgevid serve``) ends it within a fraction of a second: the model worker is stopped first, which ends
in-flight streams, then waitress's request threads, then the sockets.
"""
from __future__ import annotations

import logging
import threading
import time

from waitress import create_server, wasyncore

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
DRAIN_SECONDS = 3.0
SPARE_THREADS = 4      # request threads beyond the worker's slots, so a full server can still say 503


class HttpServer:
    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 1234):
        state = app.extensions["edgevid"]
        self.app = app
        self._map: dict = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._server = create_server(
            app, map=self._map, host=host, port=port, ident="edgevid",
            threads=state.worker.capacity + SPARE_THREADS,
            # waitress refuses (plain text) only bodies far over the limit the app answers in JSON
            max_request_body_size=2 * state.config.body_limit,
            clear_untrusted_proxy_headers=True,
            channel_request_lookahead=1)     # keeps reading, so a client that hangs up is noticed

    @property
    def addresses(self) -> list[tuple[str, int]]:
        listen = getattr(self._server, "effective_listen", None)
        if listen:
            return [(host, port) for host, port in listen]
        return [(self._server.effective_host, self._server.effective_port)]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        host, port = self.addresses[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=POLL_SECONDS, map=self._map, count=1)
        finally:
            self._close()

    def _close(self) -> None:
        self.app.extensions["edgevid"].worker.stop()     # running and waiting streams end now
        dispatcher = self._server.task_dispatcher
        deadline = time.monotonic() + DRAIN_SECONDS
        while (dispatcher.active_count or dispatcher.queue) and time.monotonic() < deadline:
            wasyncore.loop(timeout=0.05, map=self._map, count=1)   # flush their last bytes
        dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self._map)
        self._done.set()
        log.info("server stopped")

    def shutdown(self, wait: bool = False, timeout: float = 15.0) -> None:
        """Ask :meth:`serve_forever` to return; safe from signal handlers and other threads."""
        self._stop.set()
        if wait:
            self._done.wait(timeout)

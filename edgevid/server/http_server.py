"""Run the app under waitress with a stop that works from any thread or signal handler (Windows too).

:meth:`HttpServer.serve_forever` polls waitress's socket map in short slices and checks a stop flag
between them, so :meth:`HttpServer.shutdown` (from a test thread, or the SIGINT/SIGTERM handler of
``edgevid serve``) ends it within a fraction of a second: the model worker is stopped first, which ends
in-flight streams, then waitress's request threads, then the sockets.

Slow clients. waitress reads requests asynchronously (a half-sent request costs a socket, not a thread)
but has no deadline for *receiving* one: its ``channel_timeout`` counts inactivity, so a client sending
one header byte every few seconds stays forever, and 100 of them fill its connection limit (slowloris).
The same loop that polls for the stop flag therefore reaps connections (:func:`reap_slow_clients`):
headers not complete ``header_timeout`` seconds after the request's first byte, a request (headers +
body) not complete after ``body_timeout``, a connection idle without a request for ``idle_timeout``.
With a connection limit of a few hundred, a 100-socket crowd never fills it, and a bigger crowd is
reaped every ``header_timeout`` seconds. Requests refused by waitress itself (body far over the
limit, malformed head) are answered with OpenAI error JSON, like everything else.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
DRAIN_SECONDS = 3.0
SPARE_THREADS = 4      # request threads beyond the worker's slots, so a full server can still say 503


class _JsonErrorTask(ErrorTask):
    """waitress's own refusals (413 body too large, 400 bad head, 431...) as OpenAI error JSON."""

    def execute(self):
        error = self.request.error
        code = {413: "request_too_large", 431: "request_header_fields_too_large"}.get(
            error.code, error.reason.lower().replace(" ", "_"))
        body = json.dumps({"error": {"message": f"{error.reason}: {error.body}", "type": "invalid_request_error",
                                     "param": None, "code": code}}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), ("Connection", "close")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _TimedChannel(HTTPChannel):
    """An HTTPChannel that remembers when the request it is reading began."""

    error_task_class = _JsonErrorTask
    request_started: float | None = None

    def received(self, data):
        if data and self.request is None:
            self.request_started = time.monotonic()
        result = super().received(data)
        if self.request is None:             # nothing half-read left
            self.request_started = None
        return result


def reap_slow_clients(channels, *, header_timeout: float, body_timeout: float, idle_timeout: float,
                      now: float | None = None) -> int:
    """Mark for closing the connections that take too long to send a request; returns how many."""
    now = time.monotonic() if now is None else now
    reaped = 0
    for channel in list(channels):
        if not isinstance(channel, _TimedChannel) or channel.will_close:
            continue
        partial = channel.request
        if partial is not None and channel.request_started is not None:
            limit = body_timeout if partial.headers_finished else header_timeout
            late = now - channel.request_started > limit
        else:
            busy = channel.requests or channel.total_outbufs_len
            late = not busy and time.time() - channel.last_activity > idle_timeout   # waitress: wall clock
        if late:
            channel.will_close = True
            reaped += 1
    return reaped


class HttpServer:
    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 1234):
        state = app.extensions["edgevid"]
        config = state.config
        self.app = app
        self.config = config
        self._map: dict = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._server = create_server(
            app, map=self._map, host=host, port=port, ident="edgevid",
            threads=state.worker.capacity + SPARE_THREADS,
            # waitress refuses only bodies far over the limit the app answers itself (both in JSON)
            max_request_body_size=2 * config.body_limit,
            connection_limit=config.connection_limit,
            channel_timeout=max(config.idle_timeout, config.body_timeout),
            clear_untrusted_proxy_headers=True,
            channel_request_lookahead=1)     # keeps reading, so a client that hangs up is noticed
        self._server.channel_class = _TimedChannel
        self.reaped = 0

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
                self.reaped += reap_slow_clients(
                    self._map.values(), header_timeout=self.config.header_timeout,
                    body_timeout=self.config.body_timeout, idle_timeout=self.config.idle_timeout)
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

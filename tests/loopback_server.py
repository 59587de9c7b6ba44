"""The part every loopback test server shares: a threading HTTP server on 127.0.0.1 (free port), started by
``with`` and shut down on exit. Subclasses give ``PATH`` (what ``url`` points at) and ``_handler_class()``."""
from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LoopbackServer:
    PATH = "/"

    def __init__(self, name: str):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=name, daemon=True)

    def _handler_class(self):
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{self.PATH}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

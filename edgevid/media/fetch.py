"""Download http(s) media to a file under a :class:`SourcePolicy`, safely.

* The host is resolved once, every resolved address is checked (loopback, private, link-local, multicast,
  reserved... are refused unless ``allow_private_urls``), and the connection goes to the checked address,
  so a DNS answer that changes between check and connect (rebinding) cannot slip through. TLS still
  verifies the certificate against the host name.
* Redirects are followed by hand, at most ``max_redirects``, each hop checked again.
* The byte cap is enforced while streaming (``Content-Length`` is only a hint), and the whole fetch has
  one deadline of ``timeout`` seconds, connect, status line and headers included: a watchdog shuts the
  connection's socket when it passes (a per-read socket timeout alone lets a server that dribbles one
  header byte at a time hold the request forever). DNS resolution is the one step it cannot interrupt.
* A URL that cannot be parsed (bad port, bad IPv6 literal, a host name IDNA refuses) is a 400, on the
  first hop and on redirects.
* Environment proxies are not used: the guard must see the real peer.
"""
from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from edgevid.errors import FetchError, FetchTimeoutError, InvalidURLError, MediaNotAllowedError, MediaTooLargeError

from .policy import SourcePolicy

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "edgevid-media/0.1"


@dataclass(frozen=True)
class FetchResult:
    url: str             # final URL after redirects
    size: int
    content_type: str | None


def fetch(url: str, out: BinaryIO, policy: SourcePolicy) -> FetchResult:
    """Stream ``url`` into ``out``; raises FetchError / FetchTimeoutError / MediaTooLargeError /
    MediaNotAllowedError naming the URL."""
    deadline = time.monotonic() + policy.timeout
    watchdog = _Watchdog(deadline)
    try:
        return _fetch(url, out, policy, deadline, watchdog)
    except FetchError as exc:
        if watchdog.fired and not isinstance(exc, FetchTimeoutError):
            raise FetchTimeoutError(f"timed out after {policy.timeout:g} s fetching {url}", source=url) from exc
        raise
    finally:
        watchdog.cancel()


class _Watchdog:
    """Shuts the current connection's socket at the deadline, whatever it is blocked in."""

    def __init__(self, deadline: float):
        self.fired = False
        self._conn = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, conn) -> None:
        with self._lock:
            self._conn = conn
            if self.fired:
                _shut(conn)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._conn is not None:
                _shut(self._conn)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(conn) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _fetch(url: str, out: BinaryIO, policy: SourcePolicy, deadline: float, watchdog: _Watchdog) -> FetchResult:
    current = url
    for _ in range(policy.max_redirects + 1):
        conn, response = _request(current, policy, deadline, original=url, watchdog=watchdog)
        try:
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"HTTP {response.status} redirect without a Location header", source=url)
                current = urljoin(current, location)
                log.info("redirect %d -> %s", response.status, current)
                continue
            if response.status >= 400:
                raise FetchError(f"HTTP {response.status} {response.reason} fetching {current}", source=url)
            size = _copy(response, out, policy, deadline, url)
            return FetchResult(current, size, response.getheader("Content-Type"))
        finally:
            conn.close()
    raise FetchError(f"too many redirects (more than {policy.max_redirects})", source=url)


def _request(url: str, policy: SourcePolicy, deadline: float, original: str, watchdog: _Watchdog | None = None):
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:      # "Invalid IPv6 URL", port out of range or not a number
        raise InvalidURLError(f"malformed URL {url!r}: {exc}", source=original) from None
    if parts.scheme not in ("http", "https"):
        raise MediaNotAllowedError(f"redirect to a non-http(s) URL refused: {url}", source=original)
    if not host:
        raise FetchError(f"URL has no host: {url}", source=original)
    if not policy.domain_allowed(host):
        raise MediaNotAllowedError(f"host {host!r} is not in the allowed domains {list(policy.allowed_domains)}",
                                   source=original)
    addresses = resolve(host, port, policy, original)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn_cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    conn = conn_cls(host, port, addresses, timeout=_remaining(deadline, original))
    if watchdog is not None:
        watchdog.watch(conn)
    try:
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "*/*",
                                           "Accept-Encoding": "identity"})
        return conn, conn.getresponse()
    except (socket.timeout, TimeoutError) as exc:
        conn.close()
        raise FetchTimeoutError(f"timed out after {policy.timeout:g} s fetching {url}", source=original) from exc
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise FetchError(f"could not fetch {url}: {exc}", source=original) from exc
    except ValueError as exc:        # control characters or non-ASCII text in the path
        conn.close()
        raise InvalidURLError(f"malformed URL {url!r}: {exc}", source=original) from None


def resolve(host: str, port: int, policy: SourcePolicy, source: str) -> list[str]:
    """All addresses of ``host``; refuses the lot if any one is not public (unless allowed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}", source=source) from exc
    except (UnicodeError, ValueError) as exc:   # IDNA: empty label (a..b), label over 63 characters, NUL
        raise InvalidURLError(f"invalid host name {host!r}: {exc}", source=source) from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not policy.allow_private_urls:
        for address in addresses:
            reason = non_public_reason(address)
            if reason:
                raise MediaNotAllowedError(
                    f"host {host!r} resolves to {reason} address {address}; private, loopback and link-local "
                    "addresses are refused (allow_private_urls is off)", source=source)
    return addresses


def non_public_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    return None if ip.is_global else "non-global"


def _copy(response, out: BinaryIO, policy: SourcePolicy, deadline: float, source: str) -> int:
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise MediaTooLargeError(f"remote media is {int(length)} bytes, over the {policy.max_bytes}-byte limit",
                                 source=source)
    total = 0
    while True:
        if response.fp is not None and response.fp.raw is not None:
            _set_timeout(response, _remaining(deadline, source))
        try:
            chunk = response.read1(CHUNK)
        except (socket.timeout, TimeoutError) as exc:
            raise FetchTimeoutError(f"timed out after {policy.timeout:g} s while downloading", source=source) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"download interrupted: {exc}", source=source) from exc
        if not chunk:
            return total
        total += len(chunk)
        if total > policy.max_bytes:
            raise MediaTooLargeError(f"remote media exceeds the {policy.max_bytes}-byte limit (stopped at "
                                     f"{total} bytes)", source=source)
        out.write(chunk)


def _set_timeout(response, seconds: float) -> None:
    sock = getattr(response.fp.raw, "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _remaining(deadline: float, source: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchTimeoutError("fetch deadline exceeded", source=source)
    return left


def _connect_any(addresses: list[str], port: int, timeout: float, source_address) -> socket.socket:
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout, source_address)
        except OSError as exc:
            error = exc
    raise error or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to one of the already checked addresses; the Host header keeps the name."""

    def __init__(self, host, port, addresses, **kwargs):
        super().__init__(host, port, **kwargs)
        self._addresses = addresses

    def connect(self):
        self.sock = _connect_any(self._addresses, self.port, self.timeout, self.source_address)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address; SNI and certificate checks use the host name."""

    def __init__(self, host, port, addresses, **kwargs):
        self._tls = ssl.create_default_context()
        super().__init__(host, port, context=self._tls, **kwargs)
        self._addresses = addresses

    def connect(self):
        sock = _connect_any(self._addresses, self.port, self.timeout, self.source_address)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)

"""Why a stream does not open: OpenCV only says "not opened", so ask the server ourselves, briefly.

``diagnose(source, timeout)`` sends one RTSP ``DESCRIBE`` (or one HTTP ``GET``) and returns a
:class:`Diagnosis`: the server is down (refused), silent (accepted but no answer), unknown (DNS), or
answered with a status — ``404`` is a wrong path, not an outage, and is ``final``.
"""
from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from edgevid.live.source import LiveSource

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
FINAL_STATUSES = {401, 403, 404, 405, 410, 451}     # asking again will not help


@dataclass(frozen=True)
class Diagnosis:
    reason: str                 # one line for events and errors
    status: int | None = None   # the RTSP/HTTP status the server answered, if any
    final: bool = False         # retrying cannot fix it (wrong path, credentials)


def diagnose(source: LiveSource, timeout: float = 2.0) -> Diagnosis:
    if source.kind != "stream":
        return Diagnosis(f"cannot open the {source.kind}")
    parts = urlsplit(source.text)
    scheme = parts.scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        return _describe(parts, timeout)
    if scheme in ("http", "https"):
        return _get(parts, timeout)
    return Diagnosis("cannot open the stream")


def _connect(host: str, port: int, timeout: float) -> socket.socket | Diagnosis:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        return Diagnosis(f"cannot resolve host {host!r}")
    except ConnectionRefusedError:
        return Diagnosis(f"connection refused by {host}:{port} (server down or wrong port)")
    except TimeoutError:
        return Diagnosis(f"no answer from {host}:{port} within {timeout:g} s (connect timed out)")
    except OSError as exc:
        return Diagnosis(f"cannot connect to {host}:{port}: {exc.strerror or exc}")


def _describe(parts, timeout: float) -> Diagnosis:
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    sock = _connect(host, port, timeout)
    if isinstance(sock, Diagnosis):
        return sock
    url = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
    request = (f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n"
               f"User-Agent: edgevid\r\n\r\n").encode()
    try:
        with sock:
            if parts.scheme.lower() == "rtsps":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.sendall(request)
            head = sock.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
    except TimeoutError:
        return Diagnosis(f"{host}:{port} accepted the connection but did not answer RTSP DESCRIBE "
                         f"within {timeout:g} s")
    except (OSError, ssl.SSLError) as exc:
        return Diagnosis(f"RTSP DESCRIBE to {host}:{port} failed: {exc}")
    fields = head.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("RTSP/") or not fields[1].isdigit():
        return Diagnosis(f"{host}:{port} did not answer as an RTSP server ({head[:60]!r})")
    status, text = int(fields[1]), (fields[2] if len(fields) > 2 else "")
    return _status("RTSP DESCRIBE", status, text, parts)


def _get(parts, timeout: float) -> Diagnosis:
    request = urllib.request.Request(urlunsplit(parts), headers={"User-Agent": "edgevid"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _status("HTTP GET", response.status, response.reason, parts)
    except urllib.error.HTTPError as exc:
        return _status("HTTP GET", exc.code, exc.reason, parts)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):
            return Diagnosis(f"cannot resolve host {parts.hostname!r}")
        if isinstance(exc.reason, ConnectionRefusedError):
            return Diagnosis(f"connection refused by {parts.netloc} (server down or wrong port)")
        return Diagnosis(f"cannot fetch {parts.netloc}: {exc.reason}")
    except TimeoutError:
        return Diagnosis(f"{parts.netloc} accepted the connection but did not answer within {timeout:g} s")
    except OSError as exc:
        return Diagnosis(f"cannot fetch {parts.netloc}: {exc}")


def _status(what: str, status: int, text: str, parts) -> Diagnosis:
    if 200 <= status < 300:
        return Diagnosis(f"{what} answered {status} {text}, but no video could be read from it", status)
    final = status in FINAL_STATUSES
    hint = {404: f" (no stream at path {parts.path or '/'!r})", 403: " (access refused)",
            401: " (the stream needs a user name and password in the URL)"}.get(status, "")
    if status == 401 and parts.username:
        # the probe sends no credentials: FFmpeg tried the URL's, which may be right while something else failed
        hint, final = " to a probe without credentials (check the URL's user name and password)", False
    return Diagnosis(f"{what} answered {status} {text}{hint}", status, final)

"""Turn what a caller hands us (path, file:// URL, http(s) URL, data: URL, raw bytes) into a local file.

    with open_source("https://example.com/clip.mp4", SourcePolicy()) as media:
        media.path, media.kind, media.mime, media.sha256

Downloads, data URLs and bytes go to a temporary file that is closed before anyone reopens it (Windows)
and removed when the context exits (or when the object is collected).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import tempfile
import weakref
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from edgevid.errors import (InvalidURLError, MediaNotAllowedError, MediaNotFoundError, MediaTooLargeError,
                            UnreadableMediaError, UnsupportedMediaError)

from .fetch import fetch
from .policy import SourcePolicy
from .sniff import DATA_URL_TYPES, HEAD_BYTES, SUFFIX, MediaType, sniff

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")
_WHITESPACE = re.compile(rb"\s+")


class MediaSource:
    """A readable local file holding the media; a context manager that removes its temporary file."""

    def __init__(self, path: str, media_type: MediaType, source: str, *, temporary: bool = False,
                 sha256: str | None = None):
        self.path = path
        self.kind = media_type.kind
        self.mime = media_type.mime
        self.source = source
        self.temporary = temporary
        self._sha256 = sha256
        self._finalizer = weakref.finalize(self, _remove, path) if temporary else None

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes (computed on first use for local files)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "MediaSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MediaSource({self.source!r}, kind={self.kind!r}, mime={self.mime!r})"


def open_source(source: str | bytes | os.PathLike | MediaSource, policy: SourcePolicy | None = None) -> MediaSource:
    """Resolve ``source`` under ``policy`` (None = :meth:`SourcePolicy.permissive`)."""
    policy = policy or SourcePolicy.permissive()
    if isinstance(source, MediaSource):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), policy, f"<{len(source)} bytes>")
    if isinstance(source, os.PathLike):
        return _from_path(os.fspath(source), policy, os.fspath(source))
    if not isinstance(source, str):
        raise UnsupportedMediaError(f"a media source must be a path, URL or bytes, not {type(source).__name__}")
    text = source.strip()
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else None
    if scheme == "data":
        return _from_data_url(text, policy)
    if scheme in ("http", "https"):
        return _from_http(text, policy)
    if scheme == "file":
        return _from_path(_file_url_path(text), policy, text)
    if scheme is not None and "://" in text:
        raise UnsupportedMediaError(f"unsupported URL scheme {scheme!r}; accepted: a path, file://, http(s)://, "
                                    "data:", source=text)
    return _from_path(text, policy, text)


# ---- local files ---------------------------------------------------------------------------------------
def _file_url_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedMediaError(f"file:// URLs must name a local file (host {parts.netloc!r})", source=url)
    return url2pathname(unquote(parts.path))


def _from_path(path: str, policy: SourcePolicy, source: str) -> MediaSource:
    if not policy.allow_local:
        raise MediaNotAllowedError("local files are not allowed by the source policy", source=source)
    _check_path_text(path, source)
    real = os.path.realpath(path)
    if policy.allowed_local_dirs is not None and not any(_inside(real, d) for d in policy.allowed_local_dirs):
        raise MediaNotAllowedError(
            f"local path is outside the allowed folders {list(policy.allowed_local_dirs)}", source=source)
    if not os.path.exists(real):
        raise MediaNotFoundError("no such file", source=source)
    if not os.path.isfile(real):
        raise MediaNotFoundError("not a regular file", source=source)
    size = os.path.getsize(real)
    if size > policy.max_bytes:
        raise MediaTooLargeError(f"file is {size} bytes, over the {policy.max_bytes}-byte limit", source=source)
    try:
        with open(real, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise UnreadableMediaError(f"cannot read file: {exc.strerror or exc}", source=source) from exc
    return MediaSource(real, sniff(head, source), source)


def _check_path_text(path: str, source: str) -> None:
    """A NUL byte or text the file system cannot encode (a lone surrogate) is a bad request, not a crash."""
    if "\0" in path:
        raise InvalidURLError("a media path must not contain a NUL byte", source=repr(source))
    try:
        os.fsencode(path)
    except UnicodeError:
        raise InvalidURLError("a media path holds characters the file system cannot encode",
                              source=source.encode("utf-8", "backslashreplace").decode()) from None


def _inside(path: str, folder: str) -> bool:
    root = os.path.normcase(os.path.realpath(folder))
    try:
        return os.path.commonpath([os.path.normcase(path), root]) == root
    except ValueError:       # different drives on Windows
        return False


# ---- data: URLs and bytes ------------------------------------------------------------------------------
def _from_data_url(url: str, policy: SourcePolicy) -> MediaSource:
    header, sep, payload = url.partition(",")
    if not sep:
        raise UnreadableMediaError("malformed data: URL (no comma)", source=url)
    params = header[5:].split(";")
    mime = params[0].strip().lower()
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise UnsupportedMediaError("data: URLs must be base64-encoded (';base64,')", source=url)
    if mime not in DATA_URL_TYPES:
        raise UnsupportedMediaError(f"unsupported data: URL type {mime or '(none)'!r}; accepted: "
                                    + ", ".join(DATA_URL_TYPES), source=url)
    if len(payload) // 4 * 3 > policy.max_bytes + 3:      # checked before decoding anything
        data_chars = len(payload) - _ignored_chars(payload)
        if data_chars // 4 * 3 > policy.max_bytes + 3:
            raise MediaTooLargeError(f"data: URL holds about {data_chars // 4 * 3} bytes, over the "
                                     f"{policy.max_bytes}-byte limit", source=url)
    data = _b64decode(payload.encode("ascii", "replace"), url)
    if len(data) > policy.max_bytes:
        raise MediaTooLargeError(f"data: URL holds {len(data)} bytes, over the {policy.max_bytes}-byte limit",
                                 source=url)
    return _from_bytes(data, policy, f"{header},... ({len(url)} chars)")


def _ignored_chars(payload: str) -> int:
    """Whitespace and padding in a base64 payload: not data, so not counted against the byte cap."""
    return re.subn(r"[\s=]", "", payload)[1]


def _b64decode(payload: bytes, source: str) -> bytes:
    payload = _WHITESPACE.sub(b"", payload)
    if b"%" in payload:
        payload = unquote(payload.decode("ascii")).encode("ascii", "replace")
    payload = payload.replace(b"-", b"+").replace(b"_", b"/")
    payload += b"=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnreadableMediaError(f"data: URL is not valid base64: {exc}", source=source) from exc


def _from_bytes(data: bytes, policy: SourcePolicy, source: str) -> MediaSource:
    if len(data) > policy.max_bytes:
        raise MediaTooLargeError(f"media is {len(data)} bytes, over the {policy.max_bytes}-byte limit",
                                 source=source)
    media_type = sniff(data[:HEAD_BYTES], source)
    path = _temp_path(SUFFIX.get(media_type.mime, ".bin"))
    try:
        with open(path, "wb") as f:
            f.write(data)
    except BaseException:
        _remove(path)
        raise
    return MediaSource(path, media_type, source, temporary=True, sha256=hashlib.sha256(data).hexdigest())


# ---- http(s) --------------------------------------------------------------------------------------------
def _from_http(url: str, policy: SourcePolicy) -> MediaSource:
    if not policy.allow_remote:
        raise MediaNotAllowedError("remote URLs are not allowed by the source policy", source=url)
    path = _temp_path(".download")
    try:
        with open(path, "wb") as f:
            writer = _HashingWriter(f)
            result = fetch(url, writer, policy)
        with open(path, "rb") as f:
            media_type = sniff(f.read(HEAD_BYTES), url)
        log.info("fetched %s (%d bytes, %s)", result.url, result.size, media_type.mime)
    except BaseException:
        _remove(path)
        raise
    final = path[: -len(".download")] + SUFFIX.get(media_type.mime, ".bin")
    try:
        os.replace(path, final)
    except OSError:
        final = path
    return MediaSource(final, media_type, url, temporary=True, sha256=writer.digest.hexdigest())


class _HashingWriter:
    def __init__(self, f):
        self._f = f
        self.digest = hashlib.sha256()

    def write(self, chunk: bytes) -> int:
        self.digest.update(chunk)
        return self._f.write(chunk)


def _temp_path(suffix: str) -> str:
    fd, path = tempfile.mkstemp(prefix="edgevid-", suffix=suffix)
    os.close(fd)
    return path


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:        # still open elsewhere (Windows): leave it to the OS temp cleaner
        log.warning("could not remove temporary file %s: %s", path, exc)


"""Typed errors shared by every layer.

Each error carries the HTTP status and the OpenAI error ``type``/``code`` the server answers with, and
``str(err)`` is the one readable line the CLI prints. Errors name the cause, the accepted values where
there are some, and the source (path or URL) that failed.
"""
from __future__ import annotations


class EdgevidError(Exception):
    """Base class. ``status`` is the HTTP status the server maps the error to."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, source: str | None = None, param: str | None = None):
        self.source = source
        self.param = param
        if source is not None and source not in message:
            message = f"{message} (source: {_short(source)})"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)


def _short(source: str, limit: int = 120) -> str:
    if source.startswith("data:"):
        head = source.split(",", 1)[0]
        return f"{head},... ({len(source)} chars)"
    return source if len(source) <= limit else source[: limit - 3] + "..."


# ---- media -----------------------------------------------------------------------------------------
class MediaError(EdgevidError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_media"


class UnsupportedMediaError(MediaError):
    """The data is of a kind edgevid does not read (unknown MIME type, text named .mp4, ...)."""
    code = "unsupported_media"


class UnreadableMediaError(MediaError):
    """The container or stream is corrupt / cannot be decoded."""
    code = "unreadable_media"


class NoVideoStreamError(MediaError):
    """The file holds no video stream (for example audio-only)."""
    code = "no_video_stream"


class EmptyMediaError(MediaError):
    """The file is empty or decodes to zero frames."""
    code = "empty_media"


class MediaTooLargeError(MediaError):
    status = 413
    code = "media_too_large"


class PixelLimitError(MediaError):
    """A picture, GIF screen or video frame over the pixel cap (``max_pixels``), refused before decoding."""
    code = "too_many_pixels"


class DecodeTimeoutError(MediaError):
    """Sampling the media took longer than the decode deadline (``decode_timeout``)."""
    code = "decode_timeout"


class MediaNotAllowedError(MediaError):
    """Refused by the source policy: local path outside the allowed folder, private address, domain..."""
    status = 403
    type = "permission_error"
    code = "media_not_allowed"


class MediaNotFoundError(MediaError):
    code = "media_not_found"


class InvalidURLError(MediaError):
    """A media URL or path that cannot be parsed or used: bad port, bad host name, NUL byte, invalid text."""
    code = "invalid_url"


class FetchError(MediaError):
    """A remote fetch failed (HTTP error status, connection refused, too many redirects)."""
    code = "fetch_failed"


class FetchTimeoutError(FetchError):
    code = "fetch_timeout"


# ---- model / runtime ---------------------------------------------------------------------------------
class ModelFolderError(EdgevidError):
    """The model folder is missing files or its edgevid.json is invalid."""
    status = 500
    code = "model_folder_invalid"


class ProviderUnavailableError(EdgevidError):
    """An execution provider was asked for that the installed onnxruntime does not offer."""
    status = 500
    code = "provider_unavailable"


class InvalidRequestError(EdgevidError):
    """A bad argument from the caller (options out of range, malformed messages)."""
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class LimitExceededError(InvalidRequestError):
    """A request over an admission cap (media parts, frames, text bytes); ``param`` names the cap."""
    code = "limit_exceeded"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class ExportError(EdgevidError):
    """The export failed, including a failed parity gate."""
    code = "export_failed"


# ---- live streams (edgevid watch) -----------------------------------------------------------------
class StreamUnavailableError(MediaError):
    """A live source (stream URL, camera) could not be opened or delivered no frame in time."""
    status = 502
    code = "stream_unavailable"


# ---- batch (edgevid batch) --------------------------------------------------------------------------
class BatchError(EdgevidError):
    """A batch run cannot go on (unreadable source list, results file not writable, every worker lost,
    Ray missing or unreachable). Per-item failures are recorded in the results instead."""
    code = "batch_failed"

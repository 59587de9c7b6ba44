"""Recognise media by its first bytes (never by its name): :func:`sniff`."""
from __future__ import annotations

from dataclasses import dataclass

from edgevid.errors import EmptyMediaError, UnsupportedMediaError

HEAD_BYTES = 4096   # how much of a file sniffing reads

# data: URL MIME types accepted (OpenAI / OpenRouter style), and their kind
DATA_URL_TYPES = {
    "video/mp4": "video", "video/mpeg": "video", "video/quicktime": "video", "video/webm": "video",
    "video/x-matroska": "video", "video/x-msvideo": "video",
    "image/gif": "gif", "image/png": "image", "image/jpeg": "image", "image/webp": "image",
}

SUFFIX = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm", "video/x-matroska": ".mkv",
          "video/x-msvideo": ".avi", "video/mpeg": ".mpg", "video/mp2t": ".ts", "video/x-flv": ".flv",
          "video/ogg": ".ogv", "video/3gpp": ".3gp", "image/gif": ".gif", "image/png": ".png",
          "image/jpeg": ".jpg", "image/webp": ".webp"}

_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


@dataclass(frozen=True)
class MediaType:
    kind: str      # "video" | "gif" | "image"
    mime: str


def sniff(head: bytes, source: str | None = None) -> MediaType:
    """The media type of data starting with ``head``; raises a typed error for anything else."""
    if not head:
        raise EmptyMediaError("the media is empty (0 bytes)", source=source)
    mime = _video_mime(head) or _image_mime(head)
    if mime is None:
        raise UnsupportedMediaError(
            f"unrecognised media data ({_describe(head)}); accepted: MP4/MOV, WebM/Matroska, AVI, MPEG-PS/TS, "
            "FLV, Ogg, GIF, PNG, JPEG, WebP", source=source)
    kind = "gif" if mime == "image/gif" else "image" if mime.startswith("image/") else "video"
    return MediaType(kind, mime)


def _video_mime(h: bytes) -> str | None:
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/3gpp" if brand.startswith(b"3g") else "video/mp4"
    if h[4:8] in _MOV_ATOMS:
        return "video/quicktime"
    if h[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm" if b"webm" in h[:64] else "video/x-matroska"
    if h[:4] == b"RIFF" and h[8:12] == b"AVI ":
        return "video/x-msvideo"
    if h[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "video/mpeg"
    if len(h) > 376 and h[0] == h[188] == h[376] == 0x47:
        return "video/mp2t"
    if h[:3] == b"FLV":
        return "video/x-flv"
    if h[:4] == b"OggS":
        return "video/ogg"
    return None


def _image_mime(h: bytes) -> str | None:
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if h[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if h[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return "image/webp"
    return None


def _describe(head: bytes) -> str:
    sample = head[:512]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    if printable >= 0.95 * len(sample):
        return "looks like text"
    return "starts with " + head[:8].hex(" ")

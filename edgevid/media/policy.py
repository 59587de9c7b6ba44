"""Where media may come from and how big it may be: :class:`SourcePolicy`."""
from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_MAX_PIXELS = 40_000_000        # a picture / GIF screen / video frame: 8K UHD (33.2 MP) fits
DEFAULT_DECODE_TIMEOUT = 120.0         # seconds to sample one request's media (server default)


@dataclass(frozen=True)
class SourcePolicy:
    """Caps and allow-lists applied by :func:`edgevid.media.open_source` and the decoders.

    The defaults suit a server: 64 MiB per item, private/loopback/link-local addresses refused (checked
    after DNS resolution and on every redirect), 30 s for a whole fetch (connect, headers and body),
    3 redirects, at most ``max_pixels`` per picture, GIF screen or video frame, and ``decode_timeout``
    seconds to decode (None = no deadline).
    """

    max_bytes: int = 64 * 2**20
    allow_local: bool = True
    allowed_local_dirs: tuple[str, ...] | None = None
    allow_remote: bool = True
    allow_private_urls: bool = False
    allowed_domains: tuple[str, ...] | None = None
    timeout: float = 30.0
    max_redirects: int = 3
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT

    @classmethod
    def permissive(cls) -> "SourcePolicy":
        """For the CLI and the Python API: local files anywhere and of any size, private URLs allowed,
        no decode deadline; the pixel cap stays (a typed error instead of an out-of-memory)."""
        return cls(max_bytes=2**40, allow_private_urls=True, decode_timeout=None)

    def with_(self, **changes) -> "SourcePolicy":
        return replace(self, **changes)

    def domain_allowed(self, host: str) -> bool:
        if self.allowed_domains is None:
            return True
        host = host.lower().rstrip(".")
        return any(host == d.lower() or host.endswith("." + d.lower().lstrip(".")) for d in self.allowed_domains)

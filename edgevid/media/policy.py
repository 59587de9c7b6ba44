"""Where media may come from and how big it may be: :class:`SourcePolicy`."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SourcePolicy:
    """Caps and allow-lists applied by :func:`edgevid.media.open_source`.

    The defaults suit a server: 64 MiB per item, private/loopback/link-local addresses refused (checked
    after DNS resolution and on every redirect), 30 s fetch timeout, 3 redirects.
    """

    max_bytes: int = 64 * 2**20
    allow_local: bool = True
    allowed_local_dirs: tuple[str, ...] | None = None
    allow_remote: bool = True
    allow_private_urls: bool = False
    allowed_domains: tuple[str, ...] | None = None
    timeout: float = 30.0
    max_redirects: int = 3

    @classmethod
    def permissive(cls) -> "SourcePolicy":
        """For the CLI and the Python API: local files anywhere and of any size, private URLs allowed."""
        return cls(max_bytes=2**40, allow_private_urls=True)

    def with_(self, **changes) -> "SourcePolicy":
        return replace(self, **changes)

    def domain_allowed(self, host: str) -> bool:
        if self.allowed_domains is None:
            return True
        host = host.lower().rstrip(".")
        return any(host == d.lower() or host.endswith("." + d.lower().lstrip(".")) for d in self.allowed_domains)

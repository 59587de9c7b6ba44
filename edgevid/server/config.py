"""What ``edgevid serve`` is configured with, and the safe-by-default media policy built from its flags."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from edgevid.media import SourcePolicy
from edgevid.model.generate import GenerationOptions
from edgevid.media.policy import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS

DEFAULT_MAX_MEDIA_BYTES = 64 * 2**20


def server_policy(*, local_dirs: tuple[str, ...] = (), domains: tuple[str, ...] | None = None,
                  allow_private_urls: bool = False, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT) -> SourcePolicy:
    """No local files unless a folder is named; no loopback/private/link-local URLs unless asked."""
    dirs = tuple(os.path.realpath(d) for d in local_dirs)
    return SourcePolicy(max_bytes=max_bytes, allow_local=bool(dirs), allowed_local_dirs=dirs or None,
                        allow_remote=True, allow_private_urls=allow_private_urls,
                        allowed_domains=tuple(domains) if domains else None, max_pixels=max_pixels,
                        decode_timeout=decode_timeout)


@dataclass(frozen=True)
class ServerConfig:
    model_name: str | None = None          # None = the model folder's name
    api_key: str | None = None             # None = no key needed
    policy: SourcePolicy = field(default_factory=server_policy)
    max_frames: int = 32                   # cap on frames per video a request may ask for
    queue_size: int = 16                   # requests that may wait behind the running one
    keepalive_seconds: float = 5.0         # ": ping" interval while a stream waits for the model
    defaults: GenerationOptions = field(default_factory=GenerationOptions)   # for fields a request omits
    max_body_bytes: int | None = None      # None = room for two data URLs at the media cap, + 1 MiB
    ui: bool = True                        # the browser playground at / (serve --no-ui turns it off)
    max_media_parts: int = 8               # images + videos per request
    max_total_frames: int = 128            # video frames (+1 per image) per request
    max_text_bytes: int = 2**20            # UTF-8 bytes of a request's text parts together
    concurrent_decodes: int = 2            # requests decoding media at the same time (memory bound)
    header_timeout: float = 10.0           # seconds a client has to send a request's headers
    idle_timeout: float = 30.0             # seconds an idle keep-alive connection is kept
    body_timeout: float = 120.0            # seconds a client has to send a whole request (headers + body)
    connection_limit: int = 400            # open connections (select() handles 512 sockets on Windows)

    @property
    def body_limit(self) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return 2 * (self.policy.max_bytes * 4 // 3 + 4) + 2**20

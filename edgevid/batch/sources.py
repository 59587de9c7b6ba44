"""What a batch runs over: SOURCE arguments expanded lazily into one :class:`Source` per media item.

    for source in iter_sources(["clips/", "extra/*.mp4", "@more.txt", "https://host/a.mp4"]):
        source.name, source.location, source.is_url

- a file named on the command line (or in a list) is always an item, whatever it holds: a broken or
  missing file gets an error record rather than vanishing from the results;
- a folder is walked recursively in sorted order; a file inside it is an item when its first bytes are
  video or image data (``edgevid.media.sniff``), or when its name ends like a media file (so a corrupt
  clip is reported, not silently passed over); anything else (notes, thumbnails' sidecars) is skipped;
- a glob (``*``, ``?``, ``[``, ``**``) expands like a folder listing;
- ``@list.txt`` holds one source per line (blank lines and ``#`` comments ignored; relative paths are
  relative to the current directory, as with ``xargs``);
- an ``http(s)://`` URL is an item, fetched by the worker under the batch's ``SourcePolicy``.

Nothing is collected up front, so a listing of 100,000 files is walked as the work goes.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from edgevid.errors import BatchError, EdgevidError
from edgevid.media.sniff import HEAD_BYTES, sniff

MEDIA_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
    ".3gp", ".ogv", ".gif", ".png", ".jpg", ".jpeg", ".webp", ".h264", ".hevc",
})
MAX_LIST_DEPTH = 4          # @list files may name other @list files, this deep


@dataclass(frozen=True)
class Source:
    name: str        # as listed (what the record's "source" says)
    location: str    # absolute path, or the URL: what the resume key is made of

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


def iter_sources(specs: Iterable[str]) -> Iterator[Source]:
    """Every item the SOURCE arguments name, in order (duplicates are left to the resume keys)."""
    for spec in specs:
        yield from _expand(str(spec), depth=0)


def count_sources(specs: Iterable[str]) -> int:
    return sum(1 for _ in iter_sources(specs))


def _expand(spec: str, depth: int) -> Iterator[Source]:
    text = spec.strip()
    if not text:
        return
    if text.startswith(("http://", "https://")):
        yield Source(text, text)
    elif text.startswith("@"):
        yield from _from_list(text[1:], depth)
    elif os.path.isdir(text):
        yield from _walk(text)
    elif glob.has_magic(text) and not os.path.exists(text):
        yield from _glob(text)
    else:
        yield Source(text, os.path.abspath(text))


def _from_list(path: str, depth: int) -> Iterator[Source]:
    if depth >= MAX_LIST_DEPTH:
        raise BatchError(f"@{path}: list files nest deeper than {MAX_LIST_DEPTH}")
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise BatchError(f"cannot read the source list @{path}: {exc.strerror or exc}") from None
    with f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield from _expand(line, depth + 1)


def _walk(folder: str) -> Iterator[Source]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if is_media_file(path):
                yield Source(path, os.path.abspath(path))


def _glob(pattern: str) -> Iterator[Source]:
    matched = False
    for path in sorted(glob.iglob(pattern, recursive=True)):
        if os.path.isdir(path):
            for source in _walk(path):
                matched = True
                yield source
        elif is_media_file(path):
            matched = True
            yield Source(path, os.path.abspath(path))
    if not matched:
        yield Source(pattern, os.path.abspath(pattern))      # recorded as "no such file", not dropped


def is_media_file(path: str) -> bool:
    """Video or image data by its first bytes, or a media file name (then its error gets recorded).
    Only regular files: reading a FIFO or a device found in a folder would block or never end."""
    if not os.path.isfile(path):
        return False
    if os.path.splitext(path)[1].lower() in MEDIA_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        sniff(head, path)
    except (OSError, EdgevidError):
        return False
    return True

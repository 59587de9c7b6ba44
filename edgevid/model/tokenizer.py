"""Tokenizer over the model folder's ``tokenizer.json`` (``tokenizers`` library), streaming detokenizer, stop strings.

* :class:`Tokenizer` encodes without a second ``<bos>`` (Gemma 4 chat templates write ``<bos>`` themselves;
  transformers then encodes with ``add_special_tokens=False``) and decodes without special tokens.
  :meth:`Tokenizer.encode_literal` encodes text with special-token strings (``<|turn>``...) as plain text,
  for what a caller typed (prompt integrity, see :mod:`edgevid.model.prompt`).
* :class:`IncrementalDetokenizer` turns a stream of token ids into text pieces; a piece is held back while it
  ends in an incomplete UTF-8 sequence (byte-fallback tokens ``<0xF0><0x9F>...`` decode to U+FFFD until the
  character is complete).
* :class:`StopMatcher` finds stop strings across piece boundaries and withholds text that could still
  become one.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from tokenizers import Tokenizer as _BackendTokenizer

from edgevid.errors import InvalidRequestError, ModelFolderError

REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    """Thin wrapper: ``encode`` / ``decode`` / special ids of one ``tokenizer.json``."""

    def __init__(self, backend: _BackendTokenizer, bos_text: str = "<bos>"):
        self.backend = backend
        self.bos_text = bos_text
        self.bos_id = backend.token_to_id(bos_text)
        specials = sorted((t.content for t in backend.get_added_tokens_decoder().values() if t.special),
                          key=len, reverse=True)
        self.special_strings = tuple(specials)
        self.special_pattern = re.compile("|".join(map(re.escape, specials))) if specials else None
        self._literal: _BackendTokenizer | None = None
        self._literal_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, bos_text: str = "<bos>") -> "Tokenizer":
        try:
            backend = _BackendTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses for bad files
            raise ModelFolderError(f"cannot load tokenizer {path}: {exc}", source=str(path)) from exc
        return cls(backend, bos_text)

    @classmethod
    def from_folder(cls, folder) -> "Tokenizer":
        """From a :class:`edgevid.model.manifest.ModelFolder`; checks edgevid.json's ids against tokenizer.json."""
        tokenizer = cls.from_file(folder.tokenizer_path, folder.special.bos_text)
        s = folder.special
        for name, text, expected in (("bos", s.bos_text, s.bos), ("boi", s.boi_text, s.boi), ("eoi", s.eoi_text, s.eoi),
                                     ("image", s.image_text, s.image), ("video", s.video_text, s.video)):
            actual = tokenizer.token_to_id(text)
            if actual != expected:
                raise ModelFolderError(
                    f"model folder {folder.path}: edgevid.json gives the {name} token {text!r} id {expected}, "
                    f"tokenizer.json gives {actual}", source=str(folder.path))
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of ``text``. By default special tokens (``<bos>``) are added only when ``text`` does not
        already start with ``<bos>``, as transformers' processors do; a doubled leading ``<bos>`` is never made."""
        if add_special_tokens is None:
            add_special_tokens = not text.startswith(self.bos_text)
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if self.bos_id is not None and len(ids) > 1 and ids[0] == ids[1] == self.bos_id and \
                not text.startswith(self.bos_text * 2):
            ids = ids[1:]
        return ids

    def has_special_strings(self, text: str) -> bool:
        """Whether ``text`` spells a special token (which plain :meth:`encode` would turn into it)."""
        return self.special_pattern is not None and self.special_pattern.search(text) is not None

    def encode_literal(self, text: str) -> list[int]:
        """Ids of ``text`` with special-token strings tokenized as ordinary text; no special tokens added."""
        with self._literal_lock:
            if self._literal is None:        # a copy: the flag is per instance, the shared one stays as it is
                literal = _BackendTokenizer.from_str(self.backend.to_str())
                literal.encode_special_tokens = True
                self._literal = literal
        return self._literal.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back the text they add, never half a character.

    Decodes a short window (from ``prefix_offset``) twice — without and with the new tokens — and emits the
    difference, so decoders that treat the first token specially (leading-space handling) stay consistent.
    Text ending in U+FFFD is held until the bytes complete (or :meth:`flush`).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (possibly "")."""
        self.token_ids.append(int(token_id))
        prefix = self._decode(self.token_ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.token_ids[self._prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT_CHAR):
            return ""
        piece = full[len(prefix):]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        self.text += piece
        return piece

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes to U+FFFD here)."""
        prefix = self._decode(self.token_ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.token_ids[self._prefix_offset:])
        piece = full[len(prefix):] if len(full) > len(prefix) else ""
        self._prefix_offset = self._read_offset = len(self.token_ids)
        self.text += piece
        return piece

    def feed(self, token_ids: Iterable[int]) -> Iterable[str]:
        for token_id in token_ids:
            piece = self.add(token_id)
            if piece:
                yield piece


class StopResult(NamedTuple):
    text: str          # text safe to emit now
    stopped: bool      # a stop string was found; ``text`` ends right before it


class StopMatcher:
    """Watch a stream of text pieces for stop strings that may span pieces.

    ``push(piece)`` returns the text that can be emitted: everything up to the start of a stop string (and
    ``stopped=True``), or everything except a tail that is still a prefix of some stop string.
    """

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)
        if any(not isinstance(s, str) for s in self.stops):
            raise InvalidRequestError("stop strings must be strings", param="stop")
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> StopResult:
        if self.stopped:
            return StopResult("", True)
        buffer = self._held + piece
        if not self.stops:
            self._held = ""
            return StopResult(buffer, False)
        cut = min((i for i in (buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return StopResult(buffer[:cut], True)
        keep = self._partial_tail(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return StopResult(buffer[:len(buffer) - keep], False)

    def flush(self) -> str:
        """At the end of generation the withheld tail was not a stop string after all."""
        held, self._held = ("" if self.stopped else self._held), ""
        return held

    def _partial_tail(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest

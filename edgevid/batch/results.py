"""The results file: JSON Lines, appended and flushed one record at a time, read back to resume.

    results = ResultsFile.open("results.jsonl")       # reads what an earlier run wrote
    results.done                                      # resume keys already answered
    results.known_content(path, size, mtime_ns)       # a file's hash, if unchanged since it was recorded
    results.write(record)                             # False (and nothing written) for a key already there

A run killed mid-write leaves at most a partial last line: it is ignored on reading and the next record
starts on a fresh line. A key is never written twice, so records are neither lost nor duplicated when
a worker dies and its item is redone.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

from edgevid.errors import BatchError

log = logging.getLogger(__name__)


class ResultsFile:
    def __init__(self, path: str, file, done: set[str], by_location: dict[str, set[str]],
                 content: dict[str, tuple[int, int, str]], records: int):
        self.path = path
        self._file = file
        self.done = done
        self._by_location = by_location
        self._content = content
        self.records_before = records

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ResultsFile":
        path = os.fspath(path)
        done: set[str] = set()
        by_location: dict[str, set[str]] = defaultdict(set)
        content: dict[str, tuple[int, int, str]] = {}
        records = bad = 0
        ends_with_newline = True
        try:
            with open(path, "rb") as f:
                for line in f:
                    ends_with_newline = line.endswith(b"\n")
                    try:
                        record = json.loads(line)
                        key = record["key"]
                    except (ValueError, KeyError, TypeError):
                        bad += line.strip() != b""
                        continue
                    records += 1
                    done.add(key)
                    location = record.get("path") or record.get("source")
                    if isinstance(location, str):
                        by_location[location].add(key)
                    if record.get("path") and record.get("sha256") and record.get("mtime_ns") is not None:
                        content[record["path"]] = (record.get("bytes"), record["mtime_ns"], record["sha256"])
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BatchError(f"cannot read the results file {path}: {exc.strerror or exc}") from None
        if bad:
            log.warning("%s: ignored %d line(s) that are not batch records", path, bad)
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            f = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise BatchError(f"cannot write the results file {path}: {exc.strerror or exc}") from None
        if not ends_with_newline:
            f.write("\n")           # a killed run's partial line stays alone on its line
            f.flush()
        return cls(path, f, done, by_location, content, records)

    def keys_for(self, location: str) -> frozenset[str]:
        return frozenset(self._by_location.get(location, ()))

    def known_content(self, path: str, size: int, mtime_ns: int) -> str | None:
        entry = self._content.get(path)
        if entry is not None and entry[0] == size and entry[1] == mtime_ns:
            return entry[2]
        return None

    def write(self, record: dict) -> bool:
        key = record["key"]
        if key in self.done:
            return False
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.done.add(key)
        return True

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

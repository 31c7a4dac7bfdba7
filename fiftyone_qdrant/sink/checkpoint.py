"""Checkpoints and dead letters: the two files that make delivery
at-least-once and dead letters exactly-once. :class:`Checkpoint` holds
each source's committed offset; :class:`DeadLetterFile` appends the records
that can never be written and recognizes those an interrupted run already
wrote."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional, Set, Tuple

from ..store import file_lock
from ..errors import ConfigError
from .records import Line, PointId, _now


class Checkpoint:
    """Committed offsets per source in a small JSON file. Each commit
    rewrites it atomically (fsync + rename) under a lock, merging with what
    other sink processes committed for their own sources. An entry may also
    hold what identifies the file the offset belongs to (see
    :class:`StreamSource`)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def _read(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise ConfigError(
                "Checkpoint file '%s' is corrupt (%s); delete it to start over" % (self.path, e)
            ) from None
        return dict(doc.get("offsets") or {})

    def get(self, key: str) -> Optional[int]:
        entry = self._read().get(key)
        return None if entry is None else int(entry["offset"])

    def get_entry(self, key: str) -> Optional[Dict[str, Any]]:
        """The committed entry: ``offset``, ``committed_at`` and the
        identity given to :meth:`set`."""
        entry = self._read().get(key)
        return None if entry is None else dict(entry)

    def set(self, key: str, offset: int, identity: Optional[Mapping[str, Any]] = None) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        with file_lock(self.path + ".lock"):
            offsets = self._read()
            offsets[key] = {**(identity or {}), "offset": int(offset), "committed_at": _now()}
            tmp = "%s.tmp-%d" % (self.path, os.getpid())
            with open(tmp, "w") as f:
                json.dump({"format": 1, "offsets": offsets}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


@dataclasses.dataclass
class DeadLetter:
    """One rejected record. ``offset`` is the source offset after its line;
    ``source_key`` is the source's checkpoint key (None for unresumable
    input), with which a re-run recognizes the letters it already wrote."""

    reason: str
    line: Line
    source: str
    offset: Optional[int]
    collection_name: Optional[str] = None
    point_id: Optional[PointId] = None
    failed_at: str = dataclasses.field(default_factory=_now)
    source_key: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        raw = self.line.rstrip(b"\r\n") if isinstance(self.line, bytes) else self.line.rstrip("\r\n")
        doc: Dict[str, Any] = {
            "reason": self.reason,
            "source": self.source,
            "offset": self.offset,
            "collection_name": self.collection_name,
            "id": self.point_id,
            "failed_at": self.failed_at,
            "source_key": self.source_key,
        }
        if isinstance(raw, bytes):
            try:
                doc["line"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                doc["line_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            doc["line"] = raw
        return doc


def _line_digest(raw: Line) -> bytes:
    """What identifies a dead letter's line (without its line ending)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return hashlib.sha256(data.rstrip(b"\r\n")).digest()[:16]


class DeadLetterFile:
    """Appends dead letters as JSONL, each line with one ``write`` on an
    ``O_APPEND`` descriptor (so a killed process never leaves half a letter,
    and sink processes sharing the file do not interleave); :meth:`sync`
    makes them durable before the offsets after them are committed.

    Exactly once: a letter is not written again if the file already holds
    one for the same source key, offset and line, i.e. one that a previous
    run wrote but did not commit the offset of (see :meth:`load_written`)."""

    def __init__(self, path: Optional[str]):
        self.path = os.path.abspath(path) if path else None
        self._fd: Optional[int] = None
        self._dirty = False
        self._written: Set[Tuple[str, int, bytes]] = set()

    def load_written(self, source_key: str, after_offset: int) -> int:
        """Remembers the letters of ``source_key`` past ``after_offset``
        (the part of the source a re-run reads again); returns how many."""
        if self.path is None:
            return 0
        needle = json.dumps(source_key, ensure_ascii=False).encode("utf-8", "surrogatepass")
        count = 0
        try:
            with open(self.path, "rb") as f:
                for raw in f:
                    if needle not in raw:
                        continue
                    try:
                        doc = json.loads(raw)
                        offset = doc["offset"]
                        if doc.get("source_key") != source_key or not isinstance(offset, int):
                            continue
                        if offset <= after_offset:
                            continue
                        line = doc["line"] if "line" in doc else base64.b64decode(doc["line_base64"])
                    except (ValueError, KeyError, TypeError):
                        continue  # not a letter of ours (or damaged): nothing to match
                    self._written.add((source_key, offset, _line_digest(line)))
                    count += 1
        except FileNotFoundError:
            pass
        return count

    def already_written(self, letter: DeadLetter) -> bool:
        if not self._written or letter.source_key is None or letter.offset is None:
            return False
        return (letter.source_key, letter.offset, _line_digest(letter.line)) in self._written

    def write(self, letter: DeadLetter) -> None:
        if self.path is None:
            return
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = (json.dumps(letter.to_json(), ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._dirty = True

    def sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

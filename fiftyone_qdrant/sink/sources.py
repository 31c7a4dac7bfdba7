"""Sources: where lines come from. A :class:`Source` yields ``(offset,
line)`` pairs and takes ``commit(offset)`` calls; files and stdin
(:class:`StreamSource`, resumable and tied to the file it read), Fluvio
topics (:class:`FluvioSource`) and lines in memory share the sink's one
core."""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import stat
import sys
from typing import IO, Any, Dict, Iterable, Iterator, Optional, Tuple

from ..errors import ConfigError
from .checkpoint import Checkpoint
from .records import Line, RecordError, _loads, tombstone_line
from .report import SourceUnavailableError

# the sink's one logger, named as before the split into modules
logger = logging.getLogger(__package__)


class Source(abc.ABC):
    """Lines to write. Iterating yields ``(offset, line)`` where ``offset``
    is where to resume after that line; :meth:`commit` is called with an
    offset once everything up to it is written or dead-lettered."""

    #: used in messages and dead letters
    name: str
    #: whether reading may wait for data (then the sink flushes while idle)
    may_block: bool = False
    #: an unterminated last line left unread (see :class:`StreamSource`)
    unfinished_bytes: int = 0

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Tuple[int, Line]]: ...

    def resume_point(self) -> Optional[Tuple[str, int]]:
        """``(checkpoint key, offset)`` where reading will resume, for
        resumable sources (None otherwise): dead letters past it that an
        earlier run wrote are not written again."""
        return None

    def commit(self, offset: int) -> None:
        """Makes ``offset`` the resume point (no-op for unseekable input)."""

    def close(self) -> None:
        pass


#: bytes hashed at the start of a file, and just before its committed offset
_FINGERPRINT_BYTES = 4096


class StreamSource(Source):
    """Lines of a binary stream. A regular file with a checkpoint resumes
    from its committed byte offset; pipes and terminals are read from where
    they are, and never checkpointed.

    A committed offset belongs to one file, not to a path: the checkpoint
    also holds the file's device and inode and SHA-256 digests of its first
    bytes and of the bytes just before the offset (4 KiB each). A file that
    is another one (rotated, or replaced through a rename), was rewritten in
    place, or is shorter than the offset is read from the start.

    A regular file is read to its current end. Its last line, if it has no
    newline, is written when it is a complete JSON document; otherwise it is
    taken for a line the producer is still writing: it is left unread (not
    dead-lettered, its offset not committed, ``unfinished_bytes`` set) for
    the next run to read once it is finished. A pipe's end is the end of the
    input: its unterminated last line is a record like any other."""

    def __init__(self, stream: IO[bytes], name: str, checkpoint: Optional[Checkpoint] = None,
                 checkpoint_key: Optional[str] = None, from_start: bool = False, owns_stream: bool = False):
        self.stream = stream
        self.name = name
        self._owns_stream = owns_stream
        try:
            mode = os.fstat(stream.fileno()).st_mode
            regular = stat.S_ISREG(mode)
        except (AttributeError, OSError, ValueError):
            regular = False
        self.may_block = not regular
        self._regular = regular
        self._checkpoint = checkpoint if regular and checkpoint_key else None
        self._key = checkpoint_key
        self._from_start = from_start
        self._start: Optional[int] = None
        self._head: Optional[Tuple[int, str]] = None  # (bytes hashed, digest) at the start of the file

    def _digest(self, start: int, length: int) -> str:
        return hashlib.sha256(os.pread(self.stream.fileno(), length, start)).hexdigest()

    def _identity(self, offset: int) -> Dict[str, Any]:
        st = os.fstat(self.stream.fileno())
        head = min(offset, _FINGERPRINT_BYTES)
        if self._head is None or self._head[0] != head:
            self._head = (head, self._digest(0, head))
        before = min(offset, _FINGERPRINT_BYTES)
        return {"device": st.st_dev, "inode": st.st_ino, "head_bytes": head, "head_sha256": self._head[1],
                "before_offset_sha256": self._digest(offset - before, before)}

    def _start_offset(self) -> int:
        if self._checkpoint is None or self._from_start:
            return 0
        entry = self._checkpoint.get_entry(self._key)
        if entry is None:
            return 0
        committed = int(entry["offset"])
        st = os.fstat(self.stream.fileno())
        why = None
        if committed > st.st_size:
            why = "is shorter (%d bytes) than its committed offset %d: it was replaced or truncated" % (
                st.st_size, committed)
        elif "inode" in entry and (entry["inode"], entry["device"]) != (st.st_ino, st.st_dev):
            why = "is another file than the one whose offset %d was committed (rotated or replaced)" % committed
        elif "inode" in entry and self._identity(committed) != {
            k: entry.get(k) for k in ("device", "inode", "head_bytes", "head_sha256", "before_offset_sha256")
        }:
            why = "was rewritten since its offset %d was committed (its content up to there changed)" % committed
        if why is not None:
            logger.warning("%s %s; reading it from the start", self.name, why)
            return 0
        return committed

    def resume_point(self) -> Optional[Tuple[str, int]]:
        if self._checkpoint is None:
            return None
        if self._start is None:
            self._start = self._start_offset()
        return self._key, self._start

    def __iter__(self) -> Iterator[Tuple[int, Line]]:
        offset = 0
        if self._checkpoint is not None:
            offset = self.resume_point()[1]
            self.stream.seek(offset)
            if offset:
                logger.info("Resuming %s at byte %d", self.name, offset)
        lines = _unbuffered_lines(self.stream.fileno()) if self.may_block else self.stream
        for line in lines:
            if self._regular and not line.endswith(b"\n") and not _is_complete_json(line):
                self.unfinished_bytes = len(line)
                logger.warning(
                    "%s ends with an unfinished line (%d bytes, no newline, not valid JSON): left unread "
                    "until the producer finishes it; the next run reads it from byte %d",
                    self.name, len(line), offset,
                )
                return
            offset += len(line)
            yield offset, line

    def commit(self, offset: int) -> None:
        if self._checkpoint is not None:
            self._checkpoint.set(self._key, offset, self._identity(offset))

    def close(self) -> None:
        if self._owns_stream:
            self.stream.close()


def _is_complete_json(line: Line) -> bool:
    try:
        _loads(line)
    except RecordError:
        return False
    return True


def _unbuffered_lines(fd: int, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """Lines read with ``os.read``: a reader thread blocked here holds no
    lock of Python's buffered stdin, so the process can still exit."""
    pending = b""
    while True:
        chunk = os.read(fd, chunk_size)
        if not chunk:
            if pending:
                yield pending
            return
        pending += chunk
        start = 0
        end = pending.find(b"\n")
        while end >= 0:
            yield pending[start:end + 1]
            start = end + 1
            end = pending.find(b"\n", start)
        pending = pending[start:]


def file_source(path: str, checkpoint: Optional[Checkpoint] = None, from_start: bool = False) -> StreamSource:
    """A file (``-`` for stdin), resumable through ``checkpoint``."""
    if path == "-":
        return StreamSource(sys.stdin.buffer, "<stdin>")
    real = os.path.realpath(path)
    try:
        # lines of 512-d vectors are ~10 KB: a large buffer reads them ~5x cheaper than the 8 KB default
        stream = open(real, "rb", buffering=1 << 20)
    except OSError as e:
        raise ConfigError("Cannot read input '%s': %s" % (path, e.strerror or e)) from None
    return StreamSource(stream, path, checkpoint, "file:" + real, from_start=from_start, owns_stream=True)


class FluvioSource(Source):
    """One partition of a Fluvio topic through the optional ``fluvio``
    client (``pip install 'fiftyone-qdrant[fluvio]'``). The committed offset
    lives in the sink's checkpoint file, so a restart resumes after the last
    record that was written; without a checkpoint it reads from the start.

    A record with a key and an empty or ``null`` value is a tombstone: it is
    handed on as ``{"key": <key>, "value": null}`` (see :func:`parse_record`)."""

    may_block = True

    def __init__(self, topic: str, partition: int = 0, checkpoint: Optional[Checkpoint] = None,
                 endpoint: Optional[str] = None, from_start: bool = False):
        self.topic = topic
        self.partition = int(partition)
        self.name = "fluvio://%s/%d" % (topic, self.partition)
        self._checkpoint = checkpoint
        self._endpoint = endpoint
        self._from_start = from_start

    def __iter__(self) -> Iterator[Tuple[int, Line]]:
        try:
            from fluvio import Fluvio, FluvioConfig, Offset
        except ImportError:
            raise ConfigError(
                "Reading a Fluvio topic needs the Fluvio client: pip install 'fiftyone-qdrant[fluvio]'"
            ) from None
        try:
            if self._endpoint:
                client = Fluvio.connect_with_config(FluvioConfig.new(self._endpoint))
            else:
                client = Fluvio.connect()
        except Exception as e:
            raise ConfigError(
                "Could not connect to the Fluvio cluster (%s): %s. Check `fluvio profile current` or pass an endpoint"
                % (self._endpoint or "current Fluvio profile", e)
            ) from None
        committed = self._committed()
        start = Offset.absolute(committed) if committed else Offset.beginning()
        try:
            for record in client.partition_consumer(self.topic, self.partition).stream(start):
                yield record.offset() + 1, _fluvio_line(record)
        except Exception as e:
            raise SourceUnavailableError(
                "Reading %s failed: %s. Offsets of records not written were not committed: run the sink "
                "again to resume" % (self.name, e)
            ) from e

    def _committed(self) -> Optional[int]:
        return None if self._checkpoint is None or self._from_start else self._checkpoint.get(self.name)

    def resume_point(self) -> Optional[Tuple[str, int]]:
        if self._checkpoint is None:
            return None
        return self.name, self._committed() or 0

    def commit(self, offset: int) -> None:
        if self._checkpoint is not None:
            self._checkpoint.set(self.name, offset)


def _fluvio_line(record: Any) -> bytes:
    """A Fluvio record's value, or the tombstone line for a keyed record
    whose value is empty or ``null``."""
    value = bytes(record.value())
    if value.strip() not in (b"", b"null"):
        return value
    key = bytes(record.key() or b"")
    if not key:
        return value
    return tombstone_line(key)


class _LinesSource(Source):
    def __init__(self, lines: Iterable[Line], name: str, may_block: bool = False):
        self._lines = lines
        self.name = name
        self.may_block = may_block

    def __iter__(self) -> Iterator[Tuple[int, Line]]:
        for number, line in enumerate(self._lines, 1):
            yield number, line

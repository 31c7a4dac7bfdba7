"""The sink: :class:`QdrantSink` reads sources, validates each record,
batches per collection, writes with retries, bisects rejected batches to
dead-letter only the bad records, and commits offsets once everything
before them is durable; :func:`run_sink` wires files or a Fluvio topic, the
checkpoint and the dead-letter file to it, as the CLI does."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from ..errors import CollectionNotFoundError, ConfigError
from .checkpoint import Checkpoint, DeadLetter, DeadLetterFile
from .records import DELETE, SET_PAYLOAD, UPSERT, Line, PointId, RecordError, SinkRecord, _json_repr, parse_record
from .report import SinkReport, SinkUnavailableError
from .schema import CollectionSchema, normalize_distance
from .sources import FluvioSource, Source, _LinesSource, file_source
from .targets import Target, open_target

# the sink's one logger, named as before the split into modules
logger = logging.getLogger(__package__)

#: payload fields that FiftyOne indexes look points up by
FIFTYONE_ID_FIELDS = ("sample_id", "label_id")

_MAX_REPORTED_DEAD_LETTERS = 100
_LOGGED_DEAD_LETTERS = 10
#: where :func:`run_sink` (and the CLI) write dead letters unless told otherwise
DEFAULT_DEAD_LETTER_PATH = "qdrant-sink.dead-letter.jsonl"


@dataclasses.dataclass
class _Entry:
    """A record waiting in a batch, with what a dead letter needs."""

    record: SinkRecord
    line: Line
    source: str
    offset: int


class _Batch:
    """Pending operations on one collection; one per id (last write wins)."""

    def __init__(self, collection_name: str, deadline: float):
        self.collection_name = collection_name
        self.deadline = deadline
        self.entries: Dict[PointId, _Entry] = {}
        self.done = False


_END = object()


class QdrantSink:
    """Writes records from sources into a :class:`Target`.

    Args:
        target: where to write (see :func:`open_target`)
        distance ("cosine"): distance of dense and multi vectors in the
            collections this sink creates
        batch_size (1000): points per write, per collection
        max_delay_s (1.0): a batch is written at the latest this long after
            its first record arrived (matters for slow streams)
        commit_interval_s (5.0): how often offsets are committed (every
            write is durable when Qdrant acknowledges it); a crash replays at
            most about this much
        dead_letter_path (None): JSONL file receiving records that can never
            be written; None keeps every one of them in the report
            (``report.dead_letters``)
        max_retries (8): retries of a transient failure before the run stops
            (None: retry forever)
        retry_base_s (0.5), retry_max_s (30): exponential backoff bounds
        collection_name (None): write every record to this collection,
            whatever its ``collection_name`` says (which may then be absent),
            like the Kafka connector's ``qdrant.collection.name``
        create_collections (True): create a missing collection from its
            first record; False dead-letters records for collections that do
            not exist (so a misspelt name creates nothing), as the reference
            connectors, which need collections created in advance, fail them;
            a missing collection is looked up again at most every
            ``commit_interval_s``
    """

    def __init__(
        self,
        target: Target,
        distance: str = "cosine",
        batch_size: int = 1000,
        max_delay_s: float = 1.0,
        commit_interval_s: float = 5.0,
        dead_letter_path: Optional[str] = None,
        max_retries: Optional[int] = 8,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        collection_name: Optional[str] = None,
        create_collections: bool = True,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("batch_size must be a positive integer, got %r" % (batch_size,))
        if max_delay_s <= 0 or commit_interval_s <= 0:
            raise ConfigError("max_delay_s and commit_interval_s must be positive, got %r and %r"
                              % (max_delay_s, commit_interval_s))
        self.target = target
        self.distance = normalize_distance(distance)
        self.batch_size = int(batch_size)
        self.max_delay_s = float(max_delay_s)
        self.commit_interval_s = float(commit_interval_s)
        self.max_retries = max_retries
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._sleep = sleep
        if collection_name is not None and (not isinstance(collection_name, str) or not collection_name):
            raise ConfigError("collection_name must be a non-empty string, got %r" % (collection_name,))
        self.collection_name = collection_name
        self.create_collections = bool(create_collections)
        self._dead_letters = DeadLetterFile(dead_letter_path)
        self._schemas: Dict[str, CollectionSchema] = {}
        # collections found missing (create_collections=False): when
        self._missing: Dict[str, float] = {}
        self._valid_names: Set[str] = set()  # collection names checked once
        self._batches: Dict[str, _Batch] = {}
        # offsets of the current source in read order, with the batch that
        # holds each record (None once written or dead-lettered)
        self._pending: Deque[Tuple[int, Optional[_Batch]]] = deque()
        self._source: Optional[Source] = None
        self._source_key: Optional[str] = None  # its checkpoint key, for dead letters
        self._last_commit = time.monotonic()
        self._sessions = contextlib.ExitStack()
        self._session_names: set = set()
        self._sessions_started: Optional[float] = None
        # batches written in open sessions: durable once those end
        self._written: List[_Batch] = []
        self.report = SinkReport(dead_letter_path=self._dead_letters.path)

    # -- running ------------------------------------------------------------

    def run(self, sources: Iterable[Source]) -> SinkReport:
        """Writes every source in turn; flushes and commits at the end.
        Ctrl-C (KeyboardInterrupt) flushes what was read, commits, and
        returns a report with ``interrupted=True``."""
        started = time.monotonic()
        try:
            for source in sources:
                self._run_source(source)
                if self.report.interrupted:
                    break
        except SinkUnavailableError as e:
            e.report = self.report
            raise
        finally:
            self._dead_letters.sync()
            self.report.elapsed_s = time.monotonic() - started
        return self.report

    def write_lines(self, lines: Iterable[Line], name: str = "<lines>", live: bool = False) -> SinkReport:
        """Writes lines from memory or a generator (no offsets to commit).
        Pass ``live=True`` for an iterator that waits for data, so that
        batches are written on time meanwhile."""
        return self.run([_LinesSource(lines, name, live)])

    def close(self) -> None:
        self._dead_letters.close()
        self.target.close()

    def __enter__(self) -> "QdrantSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run_source(self, source: Source) -> None:
        logger.info("Reading %s", source.name)
        self._source = source
        self._source_key = None
        resume = source.resume_point()
        if resume is not None:
            self._source_key = resume[0]
            if self._dead_letters.load_written(*resume):
                logger.info("%s: dead letters past offset %d found from an earlier run are not written again",
                            source.name, resume[1])
        try:
            try:
                for item in self._paced(source):
                    if item is None:  # idle: nothing arrived before a deadline
                        self._flush_due(time.monotonic())
                        if not self._batches:
                            self._make_durable()
                        continue
                    offset, line = item
                    self._accept(line, offset, source.name)
                    if self._batches and time.monotonic() >= self._next_deadline():
                        self._flush_due(time.monotonic())
            except KeyboardInterrupt:
                self.report.interrupted = True
                logger.warning("Interrupted: writing what was read, then stopping")
            self._flush_all()
            self._make_durable()
        finally:
            self._end_sessions()  # after a failure: commits only what this made durable
            self._commit_done()
            self._source = None
            self.report.unfinished_bytes += source.unfinished_bytes
            source.close()

    def _paced(self, source: Source) -> Iterator[Optional[Tuple[int, Line]]]:
        """The source's items; for sources that may wait for data, read in a
        thread so that batches are still written on time (None = idle)."""
        if not source.may_block:
            yield from source
            return
        items: "queue.Queue[Any]" = queue.Queue(maxsize=max(1000, self.batch_size))
        stopped = threading.Event()

        def hand_over(item: Any) -> None:
            while not stopped.is_set():
                try:
                    items.put(item, timeout=0.5)
                    return
                except queue.Full:
                    pass

        def pump() -> None:
            try:
                for item in source:
                    hand_over(item)
                    if stopped.is_set():
                        return
                hand_over(_END)
            except BaseException as e:  # re-raised in the sink's thread
                hand_over(e)

        threading.Thread(target=pump, name="fiftyone-qdrant-sink-reader", daemon=True).start()
        try:
            while True:
                timeout = self.max_delay_s
                if self._batches:
                    timeout = max(0.0, min(timeout, self._next_deadline() - time.monotonic()))
                try:
                    item = items.get(timeout=timeout)
                except queue.Empty:
                    yield None
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stopped.set()

    # -- records ------------------------------------------------------------

    def _accept(self, line: Line, offset: int, source_name: str) -> None:
        first = line[:1]
        if (not first or first.isspace()) and not line.strip():  # no copy of every (long) line
            self._pending.append((offset, None))
            return
        self.report.records += 1
        record: Optional[SinkRecord] = None
        try:
            record = parse_record(line, self.collection_name)
            if record.collection_name not in self._valid_names:
                self.target.check_collection_name(record.collection_name)
                self._valid_names.add(record.collection_name)
            if record.operation == UPSERT:
                reason = self._schema_for(record).mismatch(record)
                if reason is not None:
                    raise RecordError(reason)
        except RecordError as e:
            self._dead_letter(str(e), line, source_name, offset, record, e)
            self._pending.append((offset, None))
            return

        batch = self._batches.get(record.collection_name)
        if batch is not None and record.is_payload_update and record.point_id in batch.entries:
            # applied after what is pending for that point, in stream order
            self._flush(batch)
            batch = None
        if batch is None:
            batch = _Batch(record.collection_name, time.monotonic() + self.max_delay_s)
            self._batches[record.collection_name] = batch
        if batch.entries.pop(record.point_id, None) is not None:
            self.report.superseded += 1
        batch.entries[record.point_id] = _Entry(record, line, source_name, offset)
        self._pending.append((offset, batch))
        if len(batch.entries) >= self.batch_size:
            self._flush(batch)

    def _schema_for(self, record: SinkRecord) -> CollectionSchema:
        """The collection's schema; creates the collection from ``record``'s
        shapes if it does not exist."""
        name = record.collection_name
        schema = self._schemas.get(name)
        if schema is None:
            missing_since = self._missing.get(name)
            if missing_since is not None and time.monotonic() - missing_since < self.commit_interval_s:
                schema = None  # checked a moment ago
            else:
                schema = self._retrying("reading collection '%s'" % name, self.target.schema, name)
            if schema is None and not self.create_collections:
                self._missing.setdefault(name, time.monotonic())
                raise RecordError(
                    "collection '%s' does not exist in the %s, and this sink does not create collections "
                    "(create_collections=False, --no-create-collections)" % (name, self.target.location)
                )
            self._missing.pop(name, None)
            if schema is None:
                schema = CollectionSchema.from_record(record, self.distance)
                keyword_fields = [f for f in FIFTYONE_ID_FIELDS if f in record.payload]
                try:
                    self._retrying("creating collection '%s'" % name, self.target.create, name, schema, keyword_fields)
                except SinkUnavailableError:
                    raise
                except Exception as e:
                    raise RecordError("could not create collection '%s': %s" % (name, e)) from None
                schema = self._retrying("reading collection '%s'" % name, self.target.schema, name) or schema
                self.report.collections_created.append(name)
                logger.info("Created collection '%s' in the %s: %s", name, self.target.location, _describe(schema))
            elif schema.distance != self.distance and schema.dense_items():
                logger.info("Collection '%s' exists with distance %s; the sink's distance only applies to new "
                            "collections", name, schema.distance)
            self._schemas[name] = schema
        return schema

    def _dead_letter(self, reason: str, line: Line, source_name: str, offset: Optional[int],
                     record: Optional[SinkRecord] = None, error: Optional[RecordError] = None) -> None:
        collection_name = record.collection_name if record else getattr(error, "collection_name", None)
        point_id = record.point_id if record else getattr(error, "point_id", None)
        letter = DeadLetter(
            reason=reason, line=line, source=source_name, offset=offset,
            collection_name=collection_name, point_id=point_id,
            source_key=self._source_key if self._source is not None else None,
        )
        self.report.dead_lettered += 1
        if self._dead_letters.already_written(letter):
            self.report.dead_letters_already_written += 1
        else:
            self._dead_letters.write(letter)
        if self._dead_letters.path is None or len(self.report.dead_letters) < _MAX_REPORTED_DEAD_LETTERS:
            self.report.dead_letters.append(letter)
        if self.report.dead_lettered <= _LOGGED_DEAD_LETTERS:
            logger.warning("Dead-lettered %s offset %s: %s", source_name, offset, reason)
        elif self.report.dead_lettered == _LOGGED_DEAD_LETTERS + 1:
            if self._dead_letters.path is None:
                logger.warning("More records dead-lettered; with no dead-letter file, all of them are in the "
                               "report (SinkReport.dead_letters)")
            else:
                logger.warning("More records dead-lettered; all of them are in %s", self._dead_letters.path)

    # -- writing ------------------------------------------------------------

    def _next_deadline(self) -> float:
        return min(b.deadline for b in self._batches.values())

    def _flush_due(self, now: float) -> None:
        for batch in [b for b in self._batches.values() if b.deadline <= now]:
            self._flush(batch)
        if now - self._last_commit >= self.max_delay_s:
            self._commit_done()

    def _flush_all(self) -> None:
        for batch in list(self._batches.values()):
            self._flush(batch)

    def _flush(self, batch: _Batch) -> None:
        name = batch.collection_name
        entries = list(batch.entries.values())
        for operation in (DELETE, UPSERT, SET_PAYLOAD):  # one entry per id: any order gives the same
            group = [e for e in entries if e.record.operation == operation]
            if group:
                self._write_isolating(operation, name, group)
        del self._batches[name]
        batch.entries = {}  # the lines were only kept for dead letters
        self.report.batches += 1
        if self.target.durable_on_return:
            batch.done = True
            # the checkpoint is fsynced on every commit: not once per batch
            if time.monotonic() - self._last_commit >= self.commit_interval_s:
                self._commit_done()
            return
        self._written.append(batch)
        if self._sessions_started is None or time.monotonic() - self._sessions_started >= self.commit_interval_s:
            self._make_durable()

    def _write_isolating(self, operation: str, name: str, entries: List[_Entry]) -> None:
        """Writes ``entries``; if Qdrant rejects them for good, bisects to
        dead-letter only the records it rejects."""
        try:
            self._write(operation, name, entries)
        except SinkUnavailableError:
            raise
        except Exception as e:
            self._schemas.pop(name, None)  # the collection may have changed under us
            if len(entries) == 1:
                entry = entries[0]
                self._dead_letter("Qdrant rejected the %s: %s" % (operation, self.target.describe(e)),
                                  entry.line, entry.source, entry.offset, entry.record)
                return
            middle = len(entries) // 2
            self._write_isolating(operation, name, entries[:middle])
            self._write_isolating(operation, name, entries[middle:])

    def _in_session(self, name: str) -> None:
        if name not in self._session_names:
            self._sessions.enter_context(self.target.session(name))
            self._session_names.add(name)
            if self._sessions_started is None:
                self._sessions_started = time.monotonic()

    def _end_sessions(self) -> bool:
        """Ends the write sessions, which makes what was written in them
        durable; if that fails, those batches are never committed (a re-run
        writes them again)."""
        sessions, self._sessions = self._sessions, contextlib.ExitStack()
        self._session_names.clear()
        self._sessions_started = None
        written, self._written = self._written, []
        try:
            sessions.close()
        except Exception as e:
            logger.warning("Could not end a write session: %s", self.target.describe(e))
            return False
        for batch in written:
            batch.done = True
        return True

    def _make_durable(self) -> None:
        if not self._end_sessions():
            raise SinkUnavailableError(
                "Could not make the last writes durable in the %s. Offsets of records not written were not "
                "committed: run the sink again to resume" % self.target.location
            )
        self._commit_done()

    def _write(self, operation: str, name: str, entries: List[_Entry]) -> None:
        records = [e.record for e in entries]
        if operation == DELETE:
            if self._schemas.get(name) is None and not self._retrying(
                "reading collection '%s'" % name, self.target.exists, name
            ):
                self.report.deletes_in_missing_collections += len(records)
                logger.warning("%d delete(s) for collection '%s', which does not exist: nothing deleted",
                               len(records), name)
                return
            self._in_session(name)
            self._retrying("deleting from '%s'" % name, self.target.delete, name, [r.point_id for r in records])
            self.report.deleted += len(records)
            return
        if operation == SET_PAYLOAD:
            self._set_payloads(name, entries)
            return
        try:
            self._in_session(name)
            self._retrying("writing to '%s'" % name, self.target.upsert, name, records)
        except CollectionNotFoundError:
            # deleted while we ran: create it again, as for a first record
            logger.warning("Collection '%s' disappeared; creating it again", name)
            self._end_sessions()
            self._schemas.pop(name, None)
            schema = self._schema_for(records[0])
            fitting = [e for e in entries if schema.mismatch(e.record) is None]
            for entry in entries:
                reason = schema.mismatch(entry.record)
                if reason is not None:
                    self._dead_letter(reason, entry.line, entry.source, entry.offset, entry.record)
            if fitting:
                self._retrying("writing to '%s'" % name, self.target.upsert, name, [e.record for e in fitting])
            self.report.written += len(fitting)
            return
        self.report.written += len(records)

    def _set_payloads(self, name: str, entries: List[_Entry]) -> None:
        """Payload updates: only of points that exist; the others are
        dead-lettered (a record without vectors never creates a point)."""
        try:
            if self._schemas.get(name) is None and not self._retrying(
                "reading collection '%s'" % name, self.target.exists, name
            ):
                raise CollectionNotFoundError(name)
            self._in_session(name)
            existing = self._retrying("reading points of '%s'" % name, self.target.existing_ids, name,
                                      [e.record.point_id for e in entries])
            found = [e for e in entries if e.record.point_id in existing]
            if found:
                self._retrying("updating payloads in '%s'" % name, self.target.set_payloads, name,
                               [e.record for e in found])
        except CollectionNotFoundError:
            self._schemas.pop(name, None)
            for entry in entries:
                self._dead_letter(
                    "collection '%s' does not exist: a record without vectors only updates the payload of an "
                    "existing point" % name, entry.line, entry.source, entry.offset, entry.record,
                )
            return
        # dead-lettered only once the rest was written: a rejected request is
        # bisected, and each half comes here again
        self.report.payload_updated += len(found)
        for entry in entries:
            if entry.record.point_id not in existing:
                self._dead_letter(
                    "point %s does not exist in collection '%s': a record without vectors only updates the "
                    "payload of an existing point; send vectors to create it"
                    % (_json_repr(entry.record.point_id), name),
                    entry.line, entry.source, entry.offset, entry.record,
                )

    def _retrying(self, what: str, function: Callable, *args):
        attempt = 0
        while True:
            try:
                return function(*args)
            except Exception as e:
                if isinstance(e, CollectionNotFoundError):
                    raise
                if self.target.is_fatal(e):
                    failure = SinkUnavailableError(
                        "%s in the %s was refused: %s. Nothing after the last written record was committed"
                        % (what.capitalize(), self.target.location, self.target.describe(e))
                    )
                elif not self.target.is_transient(e):
                    raise
                elif self.max_retries is not None and attempt >= self.max_retries:
                    failure = SinkUnavailableError(
                        "%s in the %s failed %d times, last with: %s. Offsets of records not written were "
                        "not committed: run the sink again to resume"
                        % (what.capitalize(), self.target.location, attempt + 1, self.target.describe(e))
                    )
                else:
                    failure = None
                    delay = min(self.retry_max_s, self.retry_base_s * 2**attempt) * random.uniform(0.5, 1.0)
                    attempt += 1
                    self.report.retries += 1
                    logger.warning(
                        "%s failed (%s); retry %d in %.1fs", what.capitalize(), self.target.describe(e), attempt, delay
                    )
            # raised outside the except block: the client's error, whose text
            # may echo the API key, is not chained to ours
            if failure is not None:
                raise failure
            self._sleep(delay)

    # -- commits ------------------------------------------------------------

    def _commit_done(self) -> None:
        """Commits the offset after the longest prefix of records that are
        written or dead-lettered (dead letters made durable first)."""
        last = None
        pending = self._pending
        while pending and (pending[0][1] is None or pending[0][1].done):
            last = pending.popleft()[0]
        self._last_commit = time.monotonic()
        if last is None or self._source is None:
            return
        self._dead_letters.sync()
        self._source.commit(last)


def _describe(schema: CollectionSchema) -> str:
    parts = ["%s: %s" % (n or "(unnamed)", s.describe()) for n, s in sorted(schema.vectors.items())]
    return "%s; distance %s" % (", ".join(parts), schema.distance)


def run_sink(
    inputs: Sequence[str] = (),
    *,
    fluvio_topic: Optional[str] = None,
    fluvio_partition: int = 0,
    fluvio_endpoint: Optional[str] = None,
    dead_letter_path: Optional[str] = None,
    checkpoint_path: Optional[str] = None,
    from_start: bool = False,
    connection: Optional[Dict[str, Any]] = None,
    target: Optional[Target] = None,
    **sink_options,
) -> SinkReport:
    """Writes files (``-`` or none for stdin) or one Fluvio topic partition
    into Qdrant.

    Records that can never be written go to ``dead_letter_path``, by default
    ``qdrant-sink.dead-letter.jsonl`` in the working directory, as for the
    CLI (``report.dead_letter_path`` says where; nothing is dropped). The
    checkpoint (``checkpoint_path``, default: the dead-letter path +
    ``.checkpoint.json``) lets a re-run resume each source after what was
    committed.

    ``connection`` holds :func:`open_target` arguments (``path``, ``url``,
    ``api_key``, ...; for a connector's ``config.yaml``:
    ``load_connector_config(...).connection()``); or pass a :class:`Target`
    as ``target`` (the sink closes it); ``sink_options`` are
    :class:`QdrantSink` arguments (``collection_name``,
    ``create_collections``, ``batch_size``, ...)."""
    if fluvio_topic and inputs:
        raise ConfigError("Read either files or a Fluvio topic, not both")
    if fluvio_endpoint and not fluvio_topic:
        raise ConfigError("A Fluvio endpoint needs a Fluvio topic (or a connector config with meta.topic)")
    if dead_letter_path is None:
        dead_letter_path = DEFAULT_DEAD_LETTER_PATH
    if checkpoint_path is None:
        checkpoint_path = dead_letter_path + ".checkpoint.json"
    checkpoint = Checkpoint(checkpoint_path) if checkpoint_path else None
    if fluvio_topic:
        sources: List[Source] = [FluvioSource(fluvio_topic, fluvio_partition, checkpoint, fluvio_endpoint, from_start)]
    else:
        sources = [file_source(p, checkpoint, from_start) for p in inputs or ["-"]]
    if target is not None and connection:
        raise ConfigError("Pass either a target or connection settings, not both")
    if target is None:
        target = open_target(**(connection or {}))
    with QdrantSink(target, dead_letter_path=dead_letter_path, **sink_options) as sink:
        return sink.run(sources)

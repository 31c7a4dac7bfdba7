"""Streams vector records into Qdrant: the job of Qdrant's Fluvio/Kafka sink
connectors, done correctly and fast, and feeding FiftyOne indexes.

Record format (the connectors'): one JSON object per line::

    {"collection_name": "images", "id": 7, "vectors": [0.1, 0.2, 0.3], "payload": {"sample_id": "..."}}

- ``id``: an unsigned integer (0 to 2**64-1) or a UUID string.
- ``vectors`` (alias ``vector``): a list of numbers (the collection's unnamed
  dense vector), or a map of vector name to a dense list, a sparse vector
  ``{"indices": [...], "values": [...]}`` or a multi-vector (a list of
  equally long lists), in any combination. Integer literals are accepted.
- ``payload``: an optional JSON object.
- **Deletes are explicit**, as in Qdrant's Kafka connector: a *tombstone*
  (the record's value is null) deletes the point its key names. In a
  JSON-lines file a tombstone is the line
  ``{"key": {"collection_name": "images", "id": 7}, "value": null}``; a
  Fluvio record with a key and an empty or ``null`` value is one too. (A
  line of exactly the members ``key`` and ``value`` is such a Kafka-style
  record; a non-null ``value`` is the record itself.)
- A record with an ``id`` and a ``payload`` but **no vectors** (absent or
  null) updates the payload of an *existing* point and keeps its vectors:
  its keys are merged into the stored payload, as Qdrant's ``set_payload``
  does. A point that does not exist is not created (it is dead-lettered:
  send vectors to create it); a record with neither vectors nor payload is
  dead-lettered, never taken for a delete.

Why not the reference connector: it upserts one record per request, and logs
and drops any record that fails, including every record while Qdrant is down.
Here:

- records are batched per collection, by count and by age; inside a batch
  the last record for an id wins, which is what one-by-one application gives;
- transient errors (connection, timeout, 5xx, 429, I/O) are retried with
  exponential backoff; if Qdrant stays down the run stops without committing
  what was not written, and a re-run resumes;
- permanent failures (malformed JSON, missing fields, bad id, NaN/inf, a
  wrong dimension, vector name or kind, a record Qdrant rejects) go to a
  dead-letter JSONL file with the reason and the original line, and no other
  record is lost (a rejected batch is bisected down to the bad records);
- delivery is at-least-once: a source offset (byte offset in a file, record
  offset in a Fluvio partition) is committed only once everything before it
  was durably written or dead-lettered. Writes are made durable and offsets
  committed every ``commit_interval_s`` (5 s) and whenever the source goes
  idle. Writes are idempotent upserts/deletes by id, so re-running after a
  crash neither loses nor duplicates points, and dead letters are written
  exactly once (a re-run skips those an interrupted run already wrote);
- a file's committed offset is tied to the file (device, inode, digests of
  its start and of the bytes before the offset): a rotated, replaced or
  rewritten file is read from its start, and an unfinished last line is
  left for the next run (see :class:`StreamSource`);
- records are parsed by msgspec: plain dense records in one typed pass,
  everything else by the general path that gives the exact reasons;
- a missing collection is created from the shapes of its first record
  (dense sizes, sparse names, multi-vectors compared with max-sim; distance
  ``cosine`` unless told otherwise); an existing one is checked, and a record
  that does not fit is dead-lettered with the reason;
- when the first record's payload carries FiftyOne's ``sample_id`` (and
  ``label_id`` for patches), the collection gets keyword indexes on them, so
  ``fob.compute_similarity(dataset, backend="qdrant", embeddings=False,
  collection_name=..., vector_name=...)`` attaches it as a FiftyOne index.

Sources yield ``(offset, line)`` pairs and take ``commit(offset)`` calls;
files, stdin and Fluvio topics share :class:`QdrantSink`'s one parsing,
validation, batching and commit core.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import queue
import random
import re
import stat
import sys
import threading
import time
import uuid
from collections import deque
from typing import (
    IO,
    Annotated,
    Any,
    Callable,
    ContextManager,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import msgspec
import numpy as np

from .engine import METRICS, file_lock
from .errors import CollectionNotFoundError, ConfigError, QdrantBackendError

logger = logging.getLogger(__name__)

#: payload fields that FiftyOne indexes look points up by
FIFTYONE_ID_FIELDS = ("sample_id", "label_id")

_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1
_NUMBER_TYPES = frozenset((float, int))  # bool is its own type: excluded
_DISTANCE_ALIASES = {"dot": "dotproduct", "euclid": "euclidean", "l2": "euclidean", "l1": "manhattan"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_REPORTED_DEAD_LETTERS = 100
_LOGGED_DEAD_LETTERS = 10
#: where :func:`run_sink` (and the CLI) write dead letters unless told otherwise
DEFAULT_DEAD_LETTER_PATH = "qdrant-sink.dead-letter.jsonl"

Line = Union[str, bytes]
PointId = Union[int, str]


# ---------------------------------------------------------------------------
# Records: one parsing and validation core for every source
# ---------------------------------------------------------------------------


class RecordError(ValueError):
    """A permanent problem with one record; the message is the reason that
    goes to the dead-letter file, with the record's collection name and id
    when they could be read."""

    def __init__(self, reason: str, collection_name: Optional[str] = None, point_id: Optional["PointId"] = None):
        super().__init__(reason)
        self.collection_name = collection_name
        self.point_id = point_id


@dataclasses.dataclass(frozen=True)
class VectorShape:
    """What a collection must store for one vector name."""

    kind: str  # "dense" | "sparse" | "multi"
    size: Optional[int] = None  # dimension of dense and multi vectors

    def describe(self) -> str:
        if self.kind == "sparse":
            return "a sparse vector"
        if self.kind == "multi":
            return "a multi-vector of %d-d rows" % self.size
        return "a %d-d dense vector" % self.size


@dataclasses.dataclass(frozen=True)
class SparseVector:
    indices: List[int]
    values: List[float]


#: what a record asks for
UPSERT, SET_PAYLOAD, DELETE = "upsert", "set_payload", "delete"


@dataclasses.dataclass
class SinkRecord:
    """One validated record. ``vectors`` is None for a delete (a tombstone)
    and for a payload update (a record without vectors); the unnamed vector
    is stored under the name ``""``. Vector values are the parsed JSON lists
    (already checked), which both engines take as they are."""

    collection_name: str
    point_id: PointId
    vectors: Optional[Dict[str, Any]]
    payload: Dict[str, Any]
    shapes: Dict[str, VectorShape]
    #: UPSERT, SET_PAYLOAD or DELETE
    operation: str = UPSERT

    @property
    def is_delete(self) -> bool:
        return self.operation == DELETE

    @property
    def is_payload_update(self) -> bool:
        return self.operation == SET_PAYLOAD


_TOMBSTONE_HINT = '{"key": {"collection_name": ..., "id": ...}, "value": null}'


def _loads(line: Line) -> Tuple[Any, bool]:
    """The parsed JSON and whether it came from the strict parser (msgspec
    rejects NaN, Infinity and numbers beyond float64, so its numbers need
    no finiteness check as float64). The standard library parses what
    msgspec refuses, to give the exact reason (or a record with NaN the
    number check names)."""
    try:
        return msgspec.json.decode(line), True
    except msgspec.MsgspecError:
        pass
    try:
        return json.loads(line), False
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError("malformed JSON: %s" % e) from None


# The fast path: the common record (dense vectors, unnamed or named, numbers
# within float32) is decoded and type-checked by msgspec in one C pass, ~2.4x
# faster than parsing and checking in Python. Anything else (sparse or multi
# vectors, tombstones, payload updates, any error) takes the general path,
# which gives the same records and the exact reasons.
_Float32 = Annotated[float, msgspec.Meta(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)]
_DenseVectors = Union[List[_Float32], Dict[str, List[_Float32]], None]


class _DenseRecord(msgspec.Struct):
    collection_name: Optional[str] = None
    id: Union[int, str, None] = None
    vectors: _DenseVectors = None
    vector: Union[_DenseVectors, msgspec.UnsetType] = msgspec.UNSET  # the alias: set, it takes the general path
    payload: Optional[Dict[str, Any]] = None


_decode_dense = msgspec.json.Decoder(_DenseRecord).decode
_DENSE_SHAPES: Dict[int, VectorShape] = {}


def _dense_shape(size: int) -> VectorShape:
    shape = _DENSE_SHAPES.get(size)
    if shape is None:
        shape = _DENSE_SHAPES[size] = VectorShape("dense", size)
    return shape


def _parse_dense(line: Line, collection_name: Optional[str]) -> Optional[SinkRecord]:
    """The record if it is a plain dense upsert, else None."""
    try:
        doc = _decode_dense(line)
    except msgspec.MsgspecError:
        return None
    vectors = doc.vectors
    if vectors is None or doc.vector is not msgspec.UNSET or doc.id is None:
        return None
    name = collection_name or doc.collection_name
    if not name:
        return None
    if isinstance(vectors, list):
        if not vectors:
            return None
        shapes = {"": _dense_shape(len(vectors))}
        vectors = {"": vectors}
    else:
        if not vectors or "" in vectors or ("indices" in vectors and "values" in vectors and len(vectors) == 2):
            return None
        shapes = {}
        for vector_name, values in vectors.items():
            if not values:
                return None
            shapes[vector_name] = _dense_shape(len(values))
    try:
        point_id = _point_id(doc.id, name)
    except RecordError:
        return None
    return SinkRecord(name, point_id, vectors, doc.payload if doc.payload is not None else {}, shapes)


def parse_record(line: Line, collection_name: Optional[str] = None) -> SinkRecord:
    """Parses and validates one line in the connector format; raises
    :class:`RecordError` with the reason (and the collection name and id,
    when they could be read) if it cannot be written.

    ``collection_name``, if set, overrides the record's ``collection_name``
    (which may then be absent), like the Kafka connector's
    ``qdrant.collection.name``."""
    record = _parse_dense(line, collection_name)
    if record is not None:
        return record
    return _parse_general(line, collection_name)


def _parse_general(line: Line, collection_name: Optional[str]) -> SinkRecord:
    """Every record and every reason (the fast path's fallback)."""
    doc, strict = _loads(line)
    if doc is None:
        raise RecordError("a tombstone (null value) needs a key naming the point: send %s" % _TOMBSTONE_HINT)
    if not isinstance(doc, dict):
        raise RecordError("expected a JSON object, got %s" % _json_type(doc))
    if len(doc) == 2 and "key" in doc and "value" in doc:  # a Kafka-style record: key + value
        if doc["value"] is None:
            return _tombstone(doc["key"], collection_name)
        doc = doc["value"]
        if not isinstance(doc, dict):
            raise RecordError("a record's 'value' must be a JSON object or null, got %s" % _json_type(doc))

    name = _collection_name(doc, collection_name)
    if "id" not in doc:
        raise RecordError("missing field 'id'", name)
    point_id = _point_id(doc["id"], name)
    try:
        if "vectors" in doc and "vector" in doc:
            raise RecordError("both 'vectors' and its alias 'vector' are set; send one of them")
        raw_vectors = doc["vectors"] if "vectors" in doc else doc.get("vector")
        payload = doc.get("payload")
        if payload is not None and not isinstance(payload, dict):
            raise RecordError("'payload' must be a JSON object, got %s" % _json_type(payload))
        if raw_vectors is None:
            if payload is None:
                raise RecordError(
                    "the record has no vectors and no payload: nothing to write. A record without vectors "
                    "updates the payload of an existing point; to delete a point send a tombstone: %s"
                    % _TOMBSTONE_HINT
                )
            return SinkRecord(name, point_id, None, payload, {}, SET_PAYLOAD)
        vectors, shapes = _vectors(raw_vectors, strict)
    except RecordError as e:
        raise RecordError(str(e), name, point_id) from None
    return SinkRecord(name, point_id, vectors, payload or {}, shapes)


def _collection_name(doc: Dict[str, Any], override: Optional[str]) -> str:
    if override:
        return override
    if "collection_name" not in doc:
        raise RecordError("missing field 'collection_name'")
    name = doc["collection_name"]
    if not isinstance(name, str) or not name:
        raise RecordError("'collection_name' must be a non-empty string, got %s" % _json_repr(name))
    return name


def _tombstone(key: Any, override: Optional[str]) -> SinkRecord:
    """A delete: the Kafka connector reads the point from the record key."""
    if not isinstance(key, dict):
        raise RecordError(
            "a tombstone's key must be a JSON object with 'collection_name' and 'id' (%s), got %s"
            % (_TOMBSTONE_HINT, _json_repr(key))
        )
    name = _collection_name(key, override)
    if "id" not in key:
        raise RecordError("missing field 'id' in the tombstone's key", name)
    return SinkRecord(name, _point_id(key["id"], name), None, {}, {}, DELETE)


def _point_id(value: Any, collection_name: Optional[str] = None) -> PointId:
    """Qdrant ids are unsigned 64-bit integers or UUIDs; UUIDs are
    canonicalized so that spellings of one id dedupe in a batch."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= _UINT64_MAX:
            return value
        raise RecordError("'id' %d is out of range: integer ids must be in 0..2^64-1" % value, collection_name)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise RecordError(
                "'id' %s is not a UUID; ids are unsigned integers or UUID strings" % _json_repr(value),
                collection_name,
            ) from None
    raise RecordError(
        "'id' must be an unsigned integer or a UUID string, got %s" % _json_repr(value), collection_name
    )


def _vectors(raw: Any, strict: bool = False) -> Tuple[Dict[str, Any], Dict[str, VectorShape]]:
    if isinstance(raw, list):
        shape = _list_vector(raw, "'vectors'", strict)
        return {"": raw}, {"": shape}
    if not isinstance(raw, dict):
        raise RecordError(
            "'vectors' must be a list of numbers or a map of vector name to vector, got %s" % _json_type(raw)
        )
    if not raw:
        raise RecordError("'vectors' is an empty map; omit it to delete the point")
    if set(raw) == {"indices", "values"}:
        raise RecordError(
            "a sparse vector must be named: send {\"vectors\": {\"<name>\": {\"indices\": [...], \"values\": [...]}}}"
        )
    shapes = {}
    for name, value in raw.items():
        if not name:
            raise RecordError("vector names must be non-empty; send the unnamed vector as a plain list")
        where = "vector '%s'" % name
        if isinstance(value, list):
            shapes[name] = _list_vector(value, where, strict)
        elif isinstance(value, dict):
            shapes[name] = _sparse_vector(value, where)
            raw[name] = SparseVector(value["indices"], value["values"])
        else:
            raise RecordError(
                "%s must be a list of numbers, a list of lists (multi-vector) or "
                "{\"indices\": [...], \"values\": [...]} (sparse), got %s" % (where, _json_type(value))
            )
    return raw, shapes


def _list_vector(values: list, where: str, strict: bool = False) -> VectorShape:
    """A dense vector, or a multi-vector when its first element is a list."""
    if not values:
        raise RecordError("%s is empty" % where)
    if isinstance(values[0], list):
        size = None
        for i, row in enumerate(values):
            row_where = "%s row %d" % (where, i)
            if not isinstance(row, list):
                raise RecordError(
                    "%s of a multi-vector must be a list of numbers, got %s" % (row_where, _json_type(row))
                )
            if not row:
                raise RecordError("%s is empty" % row_where)
            _check_numbers(row, row_where, strict)
            if size is None:
                size = len(row)
            elif len(row) != size:
                raise RecordError(
                    "%s has %d numbers but row 0 has %d: the rows of a multi-vector must have one size"
                    % (row_where, len(row), size)
                )
        return VectorShape("multi", size)
    _check_numbers(values, where, strict)
    return VectorShape("dense", len(values))


def _check_numbers(values: list, where: str, strict: bool = False) -> None:
    """Numbers only (integer literals are fine), each finite as a float32:
    the engine would store NaN, and a server rejects it. ``strict``: parsed
    by orjson, so there is no NaN and bounds alone decide (no array)."""
    if not set(map(type, values)) <= _NUMBER_TYPES:
        index, bad = next((i, v) for i, v in enumerate(values) if type(v) not in _NUMBER_TYPES)
        raise RecordError("%s must hold numbers only; element %d is %s" % (where, index, _json_repr(bad)))
    if strict:
        try:
            if -_FLOAT32_MAX <= min(values) and max(values) <= _FLOAT32_MAX:
                return
        except OverflowError:  # an integer too large for a float
            pass
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            as_float32 = np.array(values, dtype=np.float32)
    except OverflowError:
        as_float32 = np.array([float("inf") if abs(v) > 1e39 else v for v in values], dtype=np.float32)
    finite = np.isfinite(as_float32)
    if not finite.all():
        index = int(np.argmin(finite))
        raise RecordError(
            "%s has a non-finite value at index %d (%r): NaN, Infinity and values beyond the float32 range "
            "cannot be indexed" % (where, index, values[index])
        )


def _sparse_vector(value: dict, where: str) -> VectorShape:
    if set(value) != {"indices", "values"}:
        raise RecordError(
            "%s must be a sparse vector {\"indices\": [...], \"values\": [...]}, got keys %s" % (where, sorted(value))
        )
    indices, values = value["indices"], value["values"]
    if not isinstance(indices, list) or not isinstance(values, list):
        raise RecordError("%s: 'indices' and 'values' must be lists" % where)
    if len(indices) != len(values):
        raise RecordError("%s has %d indices but %d values" % (where, len(indices), len(values)))
    if indices:
        if not set(map(type, indices)) <= {int}:
            bad = next(v for v in indices if type(v) is not int)
            raise RecordError("%s: indices must be integers, got %s" % (where, _json_repr(bad)))
        if min(indices) < 0 or max(indices) > _UINT32_MAX:
            raise RecordError("%s: indices must be in 0..2^32-1" % where)
        if len(set(indices)) != len(indices):
            raise RecordError("%s has duplicate indices" % where)
        _check_numbers(values, "%s values" % where)
    return VectorShape("sparse")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _json_repr(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------
# Collection schemas
# ---------------------------------------------------------------------------


def normalize_distance(distance: str) -> str:
    """Our metric names (``cosine``, ``dotproduct``, ``euclidean``,
    ``manhattan``), also accepting Qdrant's (``Dot``, ``Euclid``...)."""
    name = str(distance).lower()
    name = _DISTANCE_ALIASES.get(name, name)
    if name not in METRICS:
        raise ConfigError("Unsupported distance %r. Use one of %s" % (distance, list(METRICS)))
    return name


@dataclasses.dataclass
class CollectionSchema:
    """The vectors of a collection: name (``""`` = unnamed) -> shape."""

    vectors: Dict[str, VectorShape]
    distance: str = "cosine"

    @classmethod
    def from_record(cls, record: SinkRecord, distance: str) -> "CollectionSchema":
        return cls(dict(record.shapes), normalize_distance(distance))

    def mismatch(self, record: SinkRecord) -> Optional[str]:
        """Why ``record`` does not fit this collection, or None if it does.
        A record may leave out some named vectors, as Qdrant allows."""
        collection = "collection '%s'" % record.collection_name
        names = sorted(self.vectors)
        for name, shape in record.shapes.items():
            expected = self.vectors.get(name)
            if expected is None:
                if name == "":
                    return "%s has named vectors %s: send 'vectors' as a map of name to vector" % (collection, names)
                if "" in self.vectors:
                    return "%s has a single unnamed vector (%s): send 'vectors' as a list, not a map" % (
                        collection, self.vectors[""].describe())
                return "%s has no vector named '%s'; it has %s" % (collection, name, names)
            label = "the unnamed vector" if name == "" else "vector '%s'" % name
            if expected.kind != shape.kind:
                return "%s is %s but %s stores %s there" % (label, shape.describe(), collection, expected.describe())
            if expected.size != shape.size:
                return "%s has dimension %d but %s stores %s there" % (
                    label, shape.size, collection, expected.describe())
        return None

    def dense_items(self) -> List[Tuple[str, VectorShape]]:
        return [(n, s) for n, s in self.vectors.items() if s.kind != "sparse"]

    def sparse_names(self) -> List[str]:
        return [n for n, s in self.vectors.items() if s.kind == "sparse"]

    def dense_config(self, params: Callable[[VectorShape], Any]) -> Any:
        """An engine's dense vectors config: ``params`` of the unnamed
        vector, else a map of name -> ``params`` (``None`` if there are none)."""
        if "" in self.vectors:
            return params(self.vectors[""])
        return {n: params(s) for n, s in self.dense_items()} or None


def _engine_vectors(vectors: Dict[str, Any], make_sparse: Callable[[SparseVector], Any]) -> Any:
    """A record's vectors as an engine takes them: the unnamed dense list,
    else a map with sparse vectors made by ``make_sparse``."""
    if "" in vectors:
        return vectors[""]
    return {n: make_sparse(v) if isinstance(v, SparseVector) else v for n, v in vectors.items()}


# ---------------------------------------------------------------------------
# Targets: any Qdrant (the embedded store's local service, or a server)
# ---------------------------------------------------------------------------


class Target(abc.ABC):
    """Where records go. Writes must be idempotent, and durable on return
    or, when ``durable_on_return`` is False, once their session ends."""

    location: str
    durable_on_return: bool = True

    def check_collection_name(self, name: str) -> None:
        """Raises :class:`RecordError` if ``name`` cannot be a collection."""

    @abc.abstractmethod
    def schema(self, name: str) -> Optional[CollectionSchema]:
        """The collection's vectors, or None if it does not exist."""

    @abc.abstractmethod
    def create(self, name: str, schema: CollectionSchema, keyword_fields: Sequence[str]) -> None:
        """Creates a collection; returns quietly if it appeared meanwhile."""

    @abc.abstractmethod
    def upsert(self, name: str, records: Sequence[SinkRecord]) -> None:
        """Raises CollectionNotFoundError if the collection is gone."""

    @abc.abstractmethod
    def delete(self, name: str, point_ids: Sequence[PointId]) -> None:
        """Deleting from a missing collection is a no-op."""

    @abc.abstractmethod
    def existing_ids(self, name: str, point_ids: Sequence[PointId]) -> Set[PointId]:
        """Which of ``point_ids`` the collection holds (ids as given);
        raises CollectionNotFoundError if the collection is gone."""

    @abc.abstractmethod
    def set_payloads(self, name: str, records: Sequence[SinkRecord]) -> None:
        """Merges each record's payload into the payload of its existing
        point, keeping its vectors (Qdrant's ``set_payload``); raises
        CollectionNotFoundError if the collection is gone."""

    def exists(self, name: str) -> bool:
        """Whether the collection exists."""
        return self.schema(name) is not None

    def session(self, name: str) -> ContextManager[None]:
        """Groups many writes to one collection; the sink ends its sessions
        whenever the source goes idle and every ``commit_interval_s``."""
        return contextlib.nullcontext()

    def is_transient(self, error: BaseException) -> bool:
        """Whether retrying the same request later may succeed."""
        return isinstance(error, OSError)  # includes ConnectionError, TimeoutError

    def is_fatal(self, error: BaseException) -> bool:
        """Whether no record can ever succeed (e.g. a rejected API key): the
        run stops instead of dead-lettering everything."""
        return False

    def describe(self, error: BaseException) -> str:
        """An error's text for logs, dead letters and our exceptions,
        shortened, and without secrets (a client error may echo the API key)."""
        text = str(error).strip() or type(error).__name__
        return text if len(text) <= 500 else text[:497] + "..."

    def close(self) -> None:
        pass


class ServerTarget(Target):
    """Any Qdrant, through ``qdrant-client``: the embedded store's local
    service, or a server (REST or gRPC).

    Takes a :class:`~fiftyone_qdrant.server.ServerStore`, or a bare
    ``QdrantClient``."""

    def __init__(self, store, location: Optional[str] = None, api_key: Optional[str] = None):
        from .server import ServerStore

        if not isinstance(store, ServerStore):
            store = ServerStore.from_client(store, location or "Qdrant server")
        self.store = store
        self.location = location or store.location
        self._api_key = api_key

    @property
    def client(self):
        return self.store.client

    def check_collection_name(self, name: str) -> None:
        if not self.store.is_local:
            return
        from .engine import validate_collection_name

        try:
            validate_collection_name(name)
        except ConfigError as e:
            raise RecordError(str(e)) from None

    def describe(self, error: BaseException) -> str:
        text = super().describe(error)
        from .connection import redact

        return self.store.redact(redact(text, self._api_key))

    def schema(self, name: str) -> Optional[CollectionSchema]:
        from qdrant_client import models as qm

        from .server import DISTANCES

        if not self.client.collection_exists(name):
            return None
        params = self.client.get_collection(name).config.params
        metric_by_distance = {v: k for k, v in DISTANCES.items()}
        dense = params.vectors
        if isinstance(dense, qm.VectorParams):
            dense = {"": dense}
        vectors: Dict[str, VectorShape] = {}
        distance = None
        for vector_name, p in (dense or {}).items():
            vectors[vector_name] = VectorShape("multi" if p.multivector_config else "dense", p.size)
            distance = distance or metric_by_distance.get(p.distance)
        for vector_name in params.sparse_vectors or {}:
            vectors[vector_name] = VectorShape("sparse")
        return CollectionSchema(vectors, distance or "cosine")

    def create(self, name: str, schema: CollectionSchema, keyword_fields: Sequence[str]) -> None:
        from qdrant_client import models as qm

        from .server import DISTANCES

        def params(shape: VectorShape):
            multi = (
                qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM) if shape.kind == "multi" else None
            )
            return qm.VectorParams(size=shape.size, distance=DISTANCES[schema.distance], multivector_config=multi)

        try:
            self.client.create_collection(
                collection_name=name,
                vectors_config=schema.dense_config(params) or {},
                sparse_vectors_config={n: qm.SparseVectorParams() for n in schema.sparse_names()} or None,
                metadata=_collection_metadata(),
            )
        except Exception:
            if not self.client.collection_exists(name):
                raise
            return
        for field in keyword_fields:
            self.client.create_payload_index(
                collection_name=name, field_name=field, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
            )

    def upsert(self, name: str, records: Sequence[SinkRecord]) -> None:
        from qdrant_client import models as qm

        def sparse(v: SparseVector):
            return qm.SparseVector(indices=v.indices, values=v.values)

        points = [qm.PointStruct(id=r.point_id, vector=_engine_vectors(r.vectors, sparse), payload=r.payload)
                  for r in records]
        try:
            self.client.upsert(collection_name=name, points=points, wait=True)
        except Exception as e:
            if _status_code(e) == 404:
                raise CollectionNotFoundError("Qdrant collection '%s' does not exist" % name) from e
            raise

    def delete(self, name: str, point_ids: Sequence[PointId]) -> None:
        from qdrant_client import models as qm

        try:
            self.client.delete(
                collection_name=name, points_selector=qm.PointIdsList(points=list(point_ids)), wait=True
            )
        except Exception as e:
            if _status_code(e) != 404:
                raise

    def existing_ids(self, name: str, point_ids: Sequence[PointId]) -> Set[PointId]:
        if not self.client.collection_exists(name):
            raise CollectionNotFoundError("Qdrant collection '%s' does not exist" % name)
        found = self.client.retrieve(collection_name=name, ids=list(point_ids), with_payload=False,
                                     with_vectors=False)
        found_ids = {str(p.id) for p in found}
        return {i for i in point_ids if str(i) in found_ids}

    def set_payloads(self, name: str, records: Sequence[SinkRecord]) -> None:
        from qdrant_client import models as qm

        operations = [qm.SetPayloadOperation(set_payload=qm.SetPayload(payload=r.payload, points=[r.point_id]))
                      for r in records]
        try:
            self.client.batch_update_points(collection_name=name, update_operations=operations, wait=True)
        except Exception as e:
            if _status_code(e) == 404 and not self.client.collection_exists(name):
                raise CollectionNotFoundError("Qdrant collection '%s' does not exist" % name) from e
            raise

    def exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def is_transient(self, error: BaseException) -> bool:
        from qdrant_client.http.exceptions import ResponseHandlingException

        if isinstance(error, (OSError, ResponseHandlingException)):
            return True
        if self.store.is_local and _grpc_code(error) == "UNAVAILABLE":
            self.store.reconnect()  # the local service went away: the retry starts it again
            return True
        status = _status_code(error)
        if status is not None:
            return status in (408, 425, 429) or status >= 500
        try:
            import httpx

            if isinstance(error, httpx.TransportError):
                return True
        except ImportError:  # pragma: no cover
            pass
        return _grpc_code(error) in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL",
                                     "UNKNOWN")

    def is_fatal(self, error: BaseException) -> bool:
        if _status_code(error) in (401, 403):
            return True
        return _grpc_code(error) in ("UNAUTHENTICATED", "PERMISSION_DENIED")

    def close(self) -> None:
        self.store.close()


def _grpc_code(error: BaseException) -> Optional[str]:
    from .server import grpc_code  # qdrant-client loads only when a target is used

    return grpc_code(error)


def _status_code(error: BaseException) -> Optional[int]:
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status
    return 404 if _grpc_code(error) == "NOT_FOUND" else None


def _collection_metadata() -> Dict[str, Any]:
    from . import __version__

    return {
        "created_by": "fiftyone-qdrant sink",
        "fiftyone_qdrant_version": __version__,
        "created_at": _now(),
    }


def open_target(
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    path: Optional[str] = None,
    grpc_port: Optional[int] = None,
    prefer_grpc: Optional[bool] = None,
    https: Optional[bool] = None,
    timeout: Optional[float] = None,
) -> Target:
    """A server target when a URL is set, else the embedded store at ``path``.

    Unset arguments come from the brain config (``FIFTYONE_BRAIN_SIMILARITY_
    QDRANT_*`` variables, brain_config.json), exactly as for a brain run.
    The target owns its store and closes it."""
    from .connection import resolve_settings

    settings = resolve_settings(
        url=url, api_key=api_key, path=path, grpc_port=grpc_port, prefer_grpc=prefer_grpc, https=https,
        timeout=timeout,
    )
    return ServerTarget(settings.connect(), api_key=settings.api_key)


# ---------------------------------------------------------------------------
# Checkpoints, dead letters, sources
# ---------------------------------------------------------------------------


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


def tombstone_line(key: Union[bytes, str]) -> bytes:
    """The line of a tombstone (a record whose value is null) with this
    key: the key as JSON if it is JSON, else as a string (which
    :func:`parse_record` reports)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raw = json.dumps(raw.decode("utf-8", "replace")).encode("utf-8")
    return b'{"key": ' + raw.strip() + b', "value": null}'


#: the port of Qdrant's gRPC API, which the connectors' ``url`` names
QDRANT_GRPC_PORT = 6334


@dataclasses.dataclass
class ConnectorConfig:
    """What the reference connector's ``config.yaml`` says. Its ``url`` is
    Qdrant's **gRPC** URL (``http://localhost:6334``), as for the Fluvio and
    Kafka connectors (``qdrant.grpc.url``): see :meth:`connection`."""

    topic: Optional[str]
    url: Optional[str]
    api_key: Optional[str]

    def connection(self) -> Dict[str, Any]:
        """:func:`open_target` arguments that reach the server as the
        connector does: gRPC on the URL's port (6334 if it names none), TLS
        for ``https``. The REST URL handed on is the same host on the REST
        default port, which a gRPC client does not use for points."""
        if not self.url:
            return {"api_key": self.api_key} if self.api_key else {}
        import urllib.parse

        parts = urllib.parse.urlsplit(self.url if "://" in self.url else "http://" + self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("The connector's qdrant.url %r is not an http(s)://host:port URL" % self.url)
        try:
            port = parts.port or QDRANT_GRPC_PORT
        except ValueError:
            raise ConfigError("The connector's qdrant.url %r has an invalid port" % self.url) from None
        host = "[%s]" % parts.hostname if ":" in parts.hostname else parts.hostname
        return {"url": "%s://%s" % (parts.scheme, host), "grpc_port": port, "prefer_grpc": True,
                "https": parts.scheme == "https", "api_key": self.api_key}


_SECRET_RE = re.compile(r"\$\{\{\s*secrets\.([A-Za-z0-9_]+)\s*\}\}")


def read_secrets(path: Optional[str]) -> Dict[str, str]:
    """A connector secrets file: ``NAME=value`` lines, ``#`` comments."""
    secrets: Dict[str, str] = {}
    if not path:
        return secrets
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise ConfigError("%s line %d: expected NAME=value" % (path, number))
            name, value = line.split("=", 1)
            secrets[name.strip()] = value.strip().strip("\"'")
    return secrets


def load_connector_config(path: str, secrets_path: Optional[str] = None,
                          environ: Optional[Mapping[str, str]] = None) -> ConnectorConfig:
    """Reads ``meta.topic``, ``qdrant.url`` and ``qdrant.api_key`` from a
    connector config, resolving ``${{ secrets.NAME }}`` from the secrets
    file, then from the environment."""
    import yaml

    environ = os.environ if environ is None else environ
    secrets = read_secrets(secrets_path)
    with open(path) as f:
        doc = yaml.safe_load(f) or {}

    def resolve(value: Any) -> Optional[str]:
        if value is None:
            return None

        def substitute(match):
            name = match.group(1)
            if name in secrets:
                return secrets[name]
            if name in environ:
                return environ[name]
            raise ConfigError(
                "Secret %s used in '%s' is neither in the secrets file nor in the environment" % (name, path)
            )

        return _SECRET_RE.sub(substitute, str(value))

    meta = doc.get("meta") or {}
    qdrant = doc.get("qdrant") or {}
    topic = meta.get("topic")
    if isinstance(topic, dict):  # newer connector configs: {topic: {meta: {name: ...}}}
        topic = (topic.get("meta") or {}).get("name")
    return ConnectorConfig(topic=resolve(topic), url=resolve(qdrant.get("url")), api_key=resolve(qdrant.get("api_key")))


# ---------------------------------------------------------------------------
# The sink
# ---------------------------------------------------------------------------


class SinkUnavailableError(QdrantBackendError):
    """Qdrant stayed unreachable through every retry, or refused every
    write; nothing that was not written was committed, so a re-run
    resumes."""

    #: what the run did before it stopped
    report: Optional["SinkReport"] = None


class SourceUnavailableError(SinkUnavailableError):
    """Reading the source (a Fluvio topic) failed mid-stream."""


@dataclasses.dataclass
class SinkReport:
    records: int = 0
    #: points upserted (with vectors)
    written: int = 0
    #: payloads of existing points updated (records without vectors)
    payload_updated: int = 0
    #: tombstones applied to existing collections
    deleted: int = 0
    #: tombstones for collections that do not exist (nothing was deleted)
    deletes_in_missing_collections: int = 0
    dead_lettered: int = 0
    #: of ``dead_lettered``: letters an earlier, interrupted run had
    #: already written (not written again)
    dead_letters_already_written: int = 0
    superseded: int = 0
    batches: int = 0
    retries: int = 0
    collections_created: List[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False
    #: the dead-letter file (absolute), or None: then every dead letter is
    #: in ``dead_letters``
    dead_letter_path: Optional[str] = None
    #: with a dead-letter file, the first 100 dead letters of the run (all
    #: of them are in the file); without one, all of them
    dead_letters: List[DeadLetter] = dataclasses.field(default_factory=list)
    #: bytes of unfinished last lines left unread (see :class:`StreamSource`)
    unfinished_bytes: int = 0

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        extra = []
        if self.payload_updated:
            extra.append("%d payloads updated" % self.payload_updated)
        if self.deletes_in_missing_collections:
            extra.append("%d deletes in missing collections (nothing deleted)" % self.deletes_in_missing_collections)
        if self.collections_created:
            extra.append("created %s" % ", ".join(self.collections_created))
        if self.dead_lettered:
            extra.append("dead letters in %s" % (self.dead_letter_path or "the report (no dead-letter file)"))
        if self.dead_letters_already_written:
            extra.append("%d of them already there from an interrupted run" % self.dead_letters_already_written)
        if self.unfinished_bytes:
            extra.append("an unfinished last line (%d bytes) left for the next run" % self.unfinished_bytes)
        return (
            "%d records in %.2fs (%.0f records/s): %d written, %d deleted, %d dead-lettered, "
            "%d superseded in batch, %d batches, %d retries%s"
            % (
                self.records, self.elapsed_s, self.records_per_s, self.written, self.deleted,
                self.dead_lettered, self.superseded, self.batches, self.retries,
                "; " + "; ".join(extra) if extra else "",
            )
        )

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["records_per_s"] = self.records_per_s
        d["dead_letters"] = [letter.to_json() for letter in self.dead_letters]
        return d


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


class _LinesSource(Source):
    def __init__(self, lines: Iterable[Line], name: str, may_block: bool = False):
        self._lines = lines
        self.name = name
        self.may_block = may_block

    def __iter__(self) -> Iterator[Tuple[int, Line]]:
        for number, line in enumerate(self._lines, 1):
            yield number, line


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

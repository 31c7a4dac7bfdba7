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
- **A record with an ``id`` and no vectors (absent or null) deletes that
  point** (its payload, if any, is ignored).

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
  crash neither loses nor duplicates points;
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
_MAX_REPORTED_DEAD_LETTERS = 100
_LOGGED_DEAD_LETTERS = 10

Line = Union[str, bytes]
PointId = Union[int, str]


# ---------------------------------------------------------------------------
# Records: one parsing and validation core for every source
# ---------------------------------------------------------------------------


class RecordError(ValueError):
    """A permanent problem with one record; the message is the reason that
    goes to the dead-letter file."""


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


@dataclasses.dataclass
class SinkRecord:
    """One validated record. ``vectors`` is None for a delete; the unnamed
    vector is stored under the name ``""``. Vector values are the parsed
    JSON lists (already checked), which both engines take as they are."""

    collection_name: str
    point_id: PointId
    vectors: Optional[Dict[str, Any]]
    payload: Dict[str, Any]
    shapes: Dict[str, VectorShape]

    @property
    def is_delete(self) -> bool:
        return self.vectors is None


def parse_record(line: Line) -> SinkRecord:
    """Parses and validates one line in the connector format; raises
    :class:`RecordError` with the reason if it cannot be written."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError("malformed JSON: %s" % e) from None
    if not isinstance(doc, dict):
        raise RecordError("expected a JSON object, got %s" % _json_type(doc))

    if "collection_name" not in doc:
        raise RecordError("missing field 'collection_name'")
    collection_name = doc["collection_name"]
    if not isinstance(collection_name, str) or not collection_name:
        raise RecordError("'collection_name' must be a non-empty string, got %s" % _json_repr(collection_name))
    if "id" not in doc:
        raise RecordError("missing field 'id'")
    point_id = _point_id(doc["id"])

    if "vectors" in doc and "vector" in doc:
        raise RecordError("both 'vectors' and its alias 'vector' are set; send one of them")
    raw_vectors = doc["vectors"] if "vectors" in doc else doc.get("vector")
    if raw_vectors is None:
        return SinkRecord(collection_name, point_id, None, {}, {})

    payload = doc.get("payload")
    if payload is None:
        payload = {}
    elif not isinstance(payload, dict):
        raise RecordError("'payload' must be a JSON object, got %s" % _json_type(payload))
    vectors, shapes = _vectors(raw_vectors)
    return SinkRecord(collection_name, point_id, vectors, payload, shapes)


def _point_id(value: Any) -> PointId:
    """Qdrant ids are unsigned 64-bit integers or UUIDs; UUIDs are
    canonicalized so that spellings of one id dedupe in a batch."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= _UINT64_MAX:
            return value
        raise RecordError("'id' %d is out of range: integer ids must be in 0..2^64-1" % value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise RecordError(
                "'id' %s is not a UUID; ids are unsigned integers or UUID strings" % _json_repr(value)
            ) from None
    raise RecordError("'id' must be an unsigned integer or a UUID string, got %s" % _json_repr(value))


def _vectors(raw: Any) -> Tuple[Dict[str, Any], Dict[str, VectorShape]]:
    if isinstance(raw, list):
        shape = _list_vector(raw, "'vectors'")
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
            shapes[name] = _list_vector(value, where)
        elif isinstance(value, dict):
            shapes[name] = _sparse_vector(value, where)
            raw[name] = SparseVector(value["indices"], value["values"])
        else:
            raise RecordError(
                "%s must be a list of numbers, a list of lists (multi-vector) or "
                "{\"indices\": [...], \"values\": [...]} (sparse), got %s" % (where, _json_type(value))
            )
    return raw, shapes


def _list_vector(values: list, where: str) -> VectorShape:
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
            _check_numbers(row, row_where)
            if size is None:
                size = len(row)
            elif len(row) != size:
                raise RecordError(
                    "%s has %d numbers but row 0 has %d: the rows of a multi-vector must have one size"
                    % (row_where, len(row), size)
                )
        return VectorShape("multi", size)
    _check_numbers(values, where)
    return VectorShape("dense", len(values))


def _check_numbers(values: list, where: str) -> None:
    """Numbers only (integer literals are fine), each finite as a float32:
    the engine would store NaN, and a server rejects it."""
    if not set(map(type, values)) <= _NUMBER_TYPES:
        index, bad = next((i, v) for i, v in enumerate(values) if type(v) not in _NUMBER_TYPES)
        raise RecordError("%s must hold numbers only; element %d is %s" % (where, index, _json_repr(bad)))
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
# Targets: the embedded store or a server
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


class EmbeddedTarget(Target):
    """An :class:`~fiftyone_qdrant.embedded.EmbeddedStore` directory."""

    def __init__(self, store):
        self.store = store
        self.location = store.location
        # stores with write sessions flush when a session ends, not per write
        self._batch = getattr(store, "batch", None)
        self.durable_on_return = self._batch is None

    def check_collection_name(self, name: str) -> None:
        from .embedded import validate_collection_name

        try:
            validate_collection_name(name)
        except ConfigError as e:
            raise RecordError(str(e)) from None

    def schema(self, name: str) -> Optional[CollectionSchema]:
        if not self.store.collection_exists(name):
            return None
        config = self.store.vector_names(name)
        vectors: Dict[str, VectorShape] = {}
        distance = None
        for vector_name, params in config["dense"].items():
            kind = "multi" if params.get("multivector") else "dense"
            vectors[vector_name] = VectorShape(kind, int(params["size"]))
            distance = distance or params.get("metric")
        for vector_name in config["sparse"]:
            vectors[vector_name] = VectorShape("sparse")
        return CollectionSchema(vectors, distance or "cosine")

    def create(self, name: str, schema: CollectionSchema, keyword_fields: Sequence[str]) -> None:
        import qdrant_edge as qe

        from .embedded import DISTANCES as EDGE_DISTANCES

        def params(shape: VectorShape):
            multi = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim) if shape.kind == "multi" else None
            return qe.EdgeVectorParams(
                size=shape.size, distance=EDGE_DISTANCES[schema.distance], multivector_config=multi
            )

        sparse = schema.sparse_names()
        edge_config = qe.EdgeConfig(
            vectors=schema.dense_config(params),
            sparse_vectors={n: qe.EdgeSparseVectorParams() for n in sparse} or None,
            wal_enabled=False,
        )
        described = {}  # collection.json, read by the FiftyOne side
        for n, s in schema.dense_items():
            described[n] = {"size": s.size, "metric": schema.distance}
            if s.kind == "multi":
                described[n]["multivector"] = "max_sim"
        try:
            self.store.create_collection_from_config(
                name, edge_config, vectors=described, metadata=_collection_metadata(),
                keyword_fields=keyword_fields, sparse_vectors=sparse,
            )
        except QdrantBackendError:
            if not self.store.collection_exists(name):
                raise

    def upsert(self, name: str, records: Sequence[SinkRecord]) -> None:
        import qdrant_edge as qe

        def sparse(v: SparseVector):
            return qe.SparseVector(v.indices, v.values)

        points = [qe.Point(r.point_id, _engine_vectors(r.vectors, sparse), r.payload) for r in records]
        self.store.upsert_points(name, points)

    def delete(self, name: str, point_ids: Sequence[PointId]) -> None:
        try:
            self.store.delete(name, list(point_ids))
        except CollectionNotFoundError:
            pass

    def session(self, name: str) -> ContextManager[None]:
        # holds the shard's write lock across batches and flushes once at
        # the end (a flush costs ~0.1 s whatever was written)
        return self._batch(name) if self._batch is not None else contextlib.nullcontext()

    def is_transient(self, error: BaseException) -> bool:
        # the engine reports I/O failures (disk full, too many open files)
        # as plain exceptions carrying the OS error
        return isinstance(error, OSError) or any(m in str(error) for m in _TRANSIENT_ENGINE_MESSAGES)

    def close(self) -> None:
        self.store.close()


_TRANSIENT_ENGINE_MESSAGES = ("os error", "No space left", "Too many open files", "Resource temporarily unavailable")


class ServerTarget(Target):
    """A Qdrant server, through ``qdrant-client`` (REST or gRPC)."""

    def __init__(self, client, location: str = "Qdrant server", api_key: Optional[str] = None):
        self.client = client
        self.location = location
        self._api_key = api_key

    def describe(self, error: BaseException) -> str:
        text = super().describe(error)
        return text.replace(self._api_key, "***") if self._api_key else text

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

    def is_transient(self, error: BaseException) -> bool:
        from qdrant_client.http.exceptions import ResponseHandlingException

        if isinstance(error, (OSError, ResponseHandlingException)):
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
        code = getattr(error, "code", None)
        if callable(code):  # grpc.RpcError
            try:
                name = code().name
            except Exception:
                return False
            return name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN")
        return False

    def is_fatal(self, error: BaseException) -> bool:
        if _status_code(error) in (401, 403):
            return True
        code = getattr(error, "code", None)
        try:
            return callable(code) and code().name in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()


def _status_code(error: BaseException) -> Optional[int]:
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status
    code = getattr(error, "code", None)
    if callable(code):  # grpc
        try:
            if code().name == "NOT_FOUND":
                return 404
        except Exception:
            pass
    return None


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
    store = settings.connect()
    if settings.is_embedded:
        return EmbeddedTarget(store)
    return ServerTarget(store.client, store.location, api_key=settings.api_key)


# ---------------------------------------------------------------------------
# Checkpoints, dead letters, sources
# ---------------------------------------------------------------------------


class Checkpoint:
    """Committed offsets per source in a small JSON file. Each commit
    rewrites it atomically (fsync + rename) under a lock, merging with what
    other sink processes committed for their own sources."""

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

    def set(self, key: str, offset: int) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        with file_lock(self.path + ".lock"):
            offsets = self._read()
            offsets[key] = {"offset": int(offset), "committed_at": _now()}
            tmp = "%s.tmp-%d" % (self.path, os.getpid())
            with open(tmp, "w") as f:
                json.dump({"format": 1, "offsets": offsets}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


@dataclasses.dataclass
class DeadLetter:
    reason: str
    line: Line
    source: str
    offset: Optional[int]
    collection_name: Optional[str] = None
    point_id: Optional[PointId] = None
    failed_at: str = dataclasses.field(default_factory=_now)

    def to_json(self) -> Dict[str, Any]:
        raw = self.line.rstrip(b"\r\n") if isinstance(self.line, bytes) else self.line.rstrip("\r\n")
        doc: Dict[str, Any] = {
            "reason": self.reason,
            "source": self.source,
            "offset": self.offset,
            "collection_name": self.collection_name,
            "id": self.point_id,
            "failed_at": self.failed_at,
        }
        if isinstance(raw, bytes):
            try:
                doc["line"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                doc["line_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            doc["line"] = raw
        return doc


class DeadLetterFile:
    """Appends dead letters as JSONL; :meth:`sync` makes them durable
    before the offsets after them are committed."""

    def __init__(self, path: Optional[str]):
        self.path = os.path.abspath(path) if path else None
        self._file: Optional[IO[str]] = None
        self._dirty = False

    def write(self, letter: DeadLetter) -> None:
        if self.path is None:
            return
        if self._file is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(letter.to_json(), ensure_ascii=False) + "\n")
        self._dirty = True

    def sync(self) -> None:
        if self._file is not None and self._dirty:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._dirty = False

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


class Source(abc.ABC):
    """Lines to write. Iterating yields ``(offset, line)`` where ``offset``
    is where to resume after that line; :meth:`commit` is called with an
    offset once everything up to it is written or dead-lettered."""

    #: used in messages and dead letters
    name: str
    #: whether reading may wait for data (then the sink flushes while idle)
    may_block: bool = False

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Tuple[int, Line]]: ...

    def commit(self, offset: int) -> None:
        """Makes ``offset`` the resume point (no-op for unseekable input)."""

    def close(self) -> None:
        pass


class StreamSource(Source):
    """Lines of a binary stream. A regular file with a checkpoint resumes
    from its committed byte offset; pipes and terminals are read from where
    they are, and never checkpointed."""

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
        self._checkpoint = checkpoint if regular and checkpoint_key else None
        self._key = checkpoint_key
        self._from_start = from_start

    def _start_offset(self) -> int:
        if self._checkpoint is None or self._from_start:
            return 0
        committed = self._checkpoint.get(self._key) or 0
        size = os.fstat(self.stream.fileno()).st_size
        if committed > size:
            logger.warning(
                "%s is shorter (%d bytes) than its committed offset %d: it was replaced or truncated; "
                "reading it from the start", self.name, size, committed,
            )
            return 0
        return committed

    def __iter__(self) -> Iterator[Tuple[int, Line]]:
        offset = 0
        if self._checkpoint is not None:
            offset = self._start_offset()
            self.stream.seek(offset)
            if offset:
                logger.info("Resuming %s at byte %d", self.name, offset)
        lines = _unbuffered_lines(self.stream.fileno()) if self.may_block else self.stream
        for line in lines:
            offset += len(line)
            yield offset, line

    def commit(self, offset: int) -> None:
        if self._checkpoint is not None:
            self._checkpoint.set(self._key, offset)

    def close(self) -> None:
        if self._owns_stream:
            self.stream.close()


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
        stream = open(real, "rb")
    except OSError as e:
        raise ConfigError("Cannot read input '%s': %s" % (path, e.strerror or e)) from None
    return StreamSource(stream, path, checkpoint, "file:" + real, from_start=from_start, owns_stream=True)


class FluvioSource(Source):
    """One partition of a Fluvio topic through the optional ``fluvio``
    client (``pip install 'fiftyone-qdrant[fluvio]'``). The committed offset
    lives in the sink's checkpoint file, so a restart resumes after the last
    record that was written; without a checkpoint it reads from the start."""

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
        committed = None if self._checkpoint is None or self._from_start else self._checkpoint.get(self.name)
        start = Offset.absolute(committed) if committed else Offset.beginning()
        try:
            for record in client.partition_consumer(self.topic, self.partition).stream(start):
                yield record.offset() + 1, bytes(record.value())
        except Exception as e:
            raise SourceUnavailableError(
                "Reading %s failed: %s. Offsets of records not written were not committed: run the sink "
                "again to resume" % (self.name, e)
            ) from e

    def commit(self, offset: int) -> None:
        if self._checkpoint is not None:
            self._checkpoint.set(self.name, offset)


@dataclasses.dataclass
class ConnectorConfig:
    """What the reference connector's ``config.yaml`` says."""

    topic: Optional[str]
    url: Optional[str]
    api_key: Optional[str]


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
    written: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    superseded: int = 0
    batches: int = 0
    retries: int = 0
    collections_created: List[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False
    #: the first dead letters of the run (all of them are in the file)
    dead_letters: List[DeadLetter] = dataclasses.field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        return (
            "%d records in %.2fs (%.0f records/s): %d written, %d deleted, %d dead-lettered, "
            "%d superseded in batch, %d batches, %d retries%s"
            % (
                self.records, self.elapsed_s, self.records_per_s, self.written, self.deleted,
                self.dead_lettered, self.superseded, self.batches, self.retries,
                "; created %s" % ", ".join(self.collections_created) if self.collections_created else "",
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
        commit_interval_s (5.0): how often writes are made durable (for the
            embedded store: flushed and reloaded for other processes) and
            offsets committed; a crash replays at most about this much
        dead_letter_path (None): JSONL file receiving records that can never
            be written; None keeps them only in the report
        max_retries (8): retries of a transient failure before the run stops
            (None: retry forever)
        retry_base_s (0.5), retry_max_s (30): exponential backoff bounds
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
        self._dead_letters = DeadLetterFile(dead_letter_path)
        self._schemas: Dict[str, CollectionSchema] = {}
        self._valid_names: Set[str] = set()  # collection names checked once
        self._batches: Dict[str, _Batch] = {}
        # offsets of the current source in read order, with the batch that
        # holds each record (None once written or dead-lettered)
        self._pending: Deque[Tuple[int, Optional[_Batch]]] = deque()
        self._source: Optional[Source] = None
        self._last_commit = time.monotonic()
        self._sessions = contextlib.ExitStack()
        self._session_names: set = set()
        self._sessions_started: Optional[float] = None
        # batches written in open sessions: durable once those end
        self._written: List[_Batch] = []
        self.report = SinkReport()

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
        if not line.strip():
            self._pending.append((offset, None))
            return
        self.report.records += 1
        record: Optional[SinkRecord] = None
        try:
            record = parse_record(line)
            if record.collection_name not in self._valid_names:
                self.target.check_collection_name(record.collection_name)
                self._valid_names.add(record.collection_name)
            if not record.is_delete:
                reason = self._schema_for(record).mismatch(record)
                if reason is not None:
                    raise RecordError(reason)
        except RecordError as e:
            self._dead_letter(str(e), line, source_name, offset, record)
            self._pending.append((offset, None))
            return

        batch = self._batches.get(record.collection_name)
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
            schema = self._retrying("reading collection '%s'" % name, self.target.schema, name)
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
                     record: Optional[SinkRecord] = None) -> None:
        letter = DeadLetter(
            reason=reason, line=line, source=source_name, offset=offset,
            collection_name=record.collection_name if record else None,
            point_id=record.point_id if record else None,
        )
        self._dead_letters.write(letter)
        self.report.dead_lettered += 1
        if len(self.report.dead_letters) < _MAX_REPORTED_DEAD_LETTERS:
            self.report.dead_letters.append(letter)
        if self.report.dead_lettered <= _LOGGED_DEAD_LETTERS:
            logger.warning("Dead-lettered %s offset %s: %s", source_name, offset, reason)
        elif self.report.dead_lettered == _LOGGED_DEAD_LETTERS + 1:
            logger.warning("More records dead-lettered; see the dead-letter file for all of them")

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
        deletes = [e for e in entries if e.record.is_delete]
        upserts = [e for e in entries if not e.record.is_delete]
        if deletes:
            self._write_isolating("delete", name, deletes)
        if upserts:
            self._write_isolating("upsert", name, upserts)
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
        if operation == "delete":
            if self._schemas.get(name) is None and self._retrying(
                "reading collection '%s'" % name, self.target.schema, name
            ) is None:
                self.report.deleted += len(records)  # nothing to delete
                return
            self._in_session(name)
            self._retrying("deleting from '%s'" % name, self.target.delete, name, [r.point_id for r in records])
            self.report.deleted += len(records)
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
    **sink_options,
) -> SinkReport:
    """Writes files (``-`` or none for stdin) or one Fluvio topic partition
    into Qdrant. With a ``checkpoint_path`` (default: beside
    ``dead_letter_path``) a re-run resumes each source after what was
    committed.

    ``connection`` holds :func:`open_target` arguments (``path``, ``url``,
    ``api_key``, ...); ``sink_options`` are :class:`QdrantSink` arguments."""
    if fluvio_topic and inputs:
        raise ConfigError("Read either files or a Fluvio topic, not both")
    if fluvio_endpoint and not fluvio_topic:
        raise ConfigError("A Fluvio endpoint needs a Fluvio topic (or a connector config with meta.topic)")
    if checkpoint_path is None and dead_letter_path is not None:
        checkpoint_path = dead_letter_path + ".checkpoint.json"
    checkpoint = Checkpoint(checkpoint_path) if checkpoint_path else None
    if fluvio_topic:
        sources: List[Source] = [FluvioSource(fluvio_topic, fluvio_partition, checkpoint, fluvio_endpoint, from_start)]
    else:
        sources = [file_source(p, checkpoint, from_start) for p in inputs or ["-"]]
    target = open_target(**(connection or {}))
    with QdrantSink(target, dead_letter_path=dead_letter_path, **sink_options) as sink:
        return sink.run(sources)

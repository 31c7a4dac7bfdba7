"""Targets: where records go. :class:`Target` is the interface the sink
writes through (idempotent writes, which errors are transient or fatal);
:class:`ServerTarget` is any Qdrant (the embedded store's local service, or
a server) through ``qdrant-client``, which loads only when one is used."""

from __future__ import annotations

import abc
import contextlib
from typing import Any, ContextManager, Dict, Optional, Sequence, Set

from ..catalog import resolve_settings
from ..errors import CollectionNotFoundError, ConfigError
from ..version import __version__
from .records import PointId, RecordError, SinkRecord, SparseVector, VectorShape, _now
from .schema import CollectionSchema, _engine_vectors


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
        from ..server import ServerStore

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
        from ..store import validate_collection_name

        try:
            validate_collection_name(name)
        except ConfigError as e:
            raise RecordError(str(e)) from None

    def describe(self, error: BaseException) -> str:
        text = super().describe(error)
        from ..redaction import redact

        return self.store.redact(redact(text, self._api_key))

    def schema(self, name: str) -> Optional[CollectionSchema]:
        from qdrant_client import models as qm

        from ..server import DISTANCES

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

        from ..server import DISTANCES

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
    from ..server import grpc_code  # qdrant-client loads only when a target is used

    return grpc_code(error)


def _status_code(error: BaseException) -> Optional[int]:
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status
    return 404 if _grpc_code(error) == "NOT_FOUND" else None


def _collection_metadata() -> Dict[str, Any]:
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
    settings = resolve_settings(
        url=url, api_key=api_key, path=path, grpc_port=grpc_port, prefer_grpc=prefer_grpc, https=https,
        timeout=timeout,
    )
    return ServerTarget(settings.connect(), api_key=settings.api_key)

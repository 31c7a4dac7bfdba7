"""A Qdrant server or cluster, through ``qdrant-client`` (REST or gRPC)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from .engine import CollectionSpec, Hit, IdRestriction, PointRecord, VectorStore, iter_pages
from .errors import CollectionNotFoundError, ConfigError, ConnectionFailedError

DISTANCES = {
    "cosine": qm.Distance.COSINE,
    "dotproduct": qm.Distance.DOT,
    "euclidean": qm.Distance.EUCLID,
    "manhattan": qm.Distance.MANHATTAN,
}
_METRICS_BY_DISTANCE = {v: k for k, v in DISTANCES.items()}


class ServerStore(VectorStore):
    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        grpc_port: Optional[int] = None,
        prefer_grpc: Optional[bool] = None,
        https: Optional[bool] = None,
        timeout: Optional[float] = None,
    ):
        self.location = "Qdrant server at '%s'" % url
        if prefer_grpc:
            self.location += " (gRPC port %d)" % (grpc_port or 6334)
        kwargs: Dict[str, Any] = {"url": url, "api_key": api_key, "prefer_grpc": bool(prefer_grpc)}
        if grpc_port is not None:
            kwargs["grpc_port"] = int(grpc_port)
        if https is not None:
            kwargs["https"] = https
        if timeout is not None:
            kwargs["timeout"] = int(timeout) if float(timeout).is_integer() else timeout
        try:
            self.client = QdrantClient(**kwargs)
            error = None
        except Exception as e:
            error = ConnectionFailedError(
                "Could not set up a Qdrant client for the %s: %s. Check the "
                "`url`, `grpc_port` and `prefer_grpc` settings" % (self.location, _safe(e, api_key))
            )
        if error is not None:
            raise error  # outside the except block: nothing chained (see _call)
        self._api_key = api_key
        self._keyword_fields: Dict[str, frozenset] = {}

    @classmethod
    def from_client(cls, client: QdrantClient, location: str = "Qdrant client") -> "ServerStore":
        """Wraps an existing client (e.g. qdrant-client's local mode, which
        speaks the same API as a server)."""
        store = cls.__new__(cls)
        store.client = client
        store.location = location
        store._api_key = None
        store._keyword_fields = {}
        return store

    def _call(self, fn, *args, **kwargs):
        """Runs a client call, turning transport failures into one clear
        error that never carries the API key."""
        try:
            return fn(*args, **kwargs)
        except (CollectionNotFoundError, ConfigError):
            raise
        except Exception as e:
            error = self._translate(e)
        # Raised outside the except block so that the client's exception,
        # whose text or response body may echo the API key, is not chained
        # to ours as __context__
        raise error

    def _translate(self, e: Exception) -> Exception:
        text = _safe(e, self._api_key)
        # HTTP status or gRPC code, not digits in the text (a port such as
        # 40401 in a connection error is no HTTP 401)
        status = getattr(e, "status_code", None)
        try:
            code = getattr(e.code(), "name", None) if callable(getattr(e, "code", None)) else None
        except Exception:
            code = None
        if status == 404 or code == "NOT_FOUND" or "Not found" in text or "doesn't exist" in text:
            return CollectionNotFoundError("Qdrant collection not found on the %s: %s" % (self.location, text))
        if status in (401, 403) or code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return ConnectionFailedError(
                "The %s rejected the API key. Set a valid key with `api_key=` "
                "or FIFTYONE_BRAIN_SIMILARITY_QDRANT_API_KEY" % self.location
            )
        return ConnectionFailedError(
            "Request to the %s failed: %s. Check that the server is running "
            "and that `url`, `grpc_port`, `prefer_grpc` and `timeout` are right"
            % (self.location, text)
        )

    # -- collections --------------------------------------------------------

    def list_collections(self) -> List[str]:
        return sorted(c.name for c in self._call(self.client.get_collections).collections)

    def collection_exists(self, name: str) -> bool:
        return bool(self._call(self.client.collection_exists, name))

    def create_collection(self, name, spec, metadata, keyword_fields=()) -> None:
        params = qm.VectorParams(size=spec.dimension, distance=DISTANCES[spec.metric])
        vectors = {spec.vector_name: params} if spec.vector_name else params
        self._call(
            self.client.create_collection,
            collection_name=name,
            vectors_config=vectors,
            shard_number=spec.shard_number,
            replication_factor=spec.replication_factor,
            write_consistency_factor=spec.write_consistency_factor,
            hnsw_config=qm.HnswConfigDiff(**spec.hnsw_config) if spec.hnsw_config else None,
            optimizers_config=qm.OptimizersConfigDiff(**spec.optimizers_config) if spec.optimizers_config else None,
            wal_config=qm.WalConfigDiff(**spec.wal_config) if spec.wal_config else None,
            metadata=metadata,
        )
        for field in keyword_fields:
            self.create_keyword_index(name, field)

    def _info(self, name: str):
        if not self.collection_exists(name):
            raise CollectionNotFoundError(
                "Qdrant collection '%s' does not exist on the %s" % (name, self.location)
            )
        return self._call(self.client.get_collection, name)

    def get_spec(self, name: str, vector_name: Optional[str] = None) -> CollectionSpec:
        vectors = self._info(name).config.params.vectors
        if isinstance(vectors, dict):
            if vector_name not in vectors:
                raise ConfigError(
                    "Qdrant collection '%s' has no dense vector named %r; it has %s. "
                    "Pass one of them as `vector_name`" % (name, vector_name, sorted(vectors))
                )
            params = vectors[vector_name]
        else:
            if vector_name:
                raise ConfigError(
                    "Qdrant collection '%s' has a single unnamed vector; drop "
                    "`vector_name=%r`" % (name, vector_name)
                )
            params = vectors
        return CollectionSpec(
            dimension=params.size,
            metric=_METRICS_BY_DISTANCE[params.distance],
            vector_name=vector_name,
        )

    def get_metadata(self, name: str) -> Dict[str, Any]:
        return dict(getattr(self._info(name).config, "metadata", None) or {})

    def set_metadata(self, name: str, metadata: Dict[str, Any]) -> None:
        # Qdrant merges metadata keys; clear keys that were removed
        current = self.get_metadata(name)
        update = {k: None for k in current if k not in metadata}
        update.update(metadata)
        self._call(self.client.update_collection, collection_name=name, metadata=update)

    def delete_collection(self, name: str) -> None:
        self._keyword_fields.pop(name, None)
        self._call(self.client.delete_collection, name)

    def has_keyword_index(self, name: str, field: str) -> bool:
        # cached: an index is rarely dropped, and filtering on the field
        # stays correct without it (only slower)
        if name not in self._keyword_fields:
            self._keyword_fields[name] = frozenset(self._info(name).payload_schema or {})
        return field in self._keyword_fields[name]

    def create_keyword_index(self, name: str, field: str) -> None:
        self._keyword_fields.pop(name, None)
        self._call(
            self.client.create_payload_index,
            collection_name=name,
            field_name=field,
            field_schema=qm.PayloadSchemaType.KEYWORD,
            wait=True,
        )

    # -- points -------------------------------------------------------------

    def upsert(self, name, ids, vectors, payloads, vector_name=None) -> None:
        rows = np.asarray(vectors, dtype=np.float32).tolist()
        if vector_name:
            rows = {vector_name: rows}
        self._call(
            self.client.upsert,
            collection_name=name,
            points=qm.Batch(ids=list(ids), vectors=rows, payloads=list(payloads)),
            wait=True,
        )

    def delete(self, name, ids) -> None:
        self._call(
            self.client.delete,
            collection_name=name,
            points_selector=qm.PointIdsList(points=list(ids)),
            wait=True,
        )

    def retrieve(self, name, ids, with_vectors=False, vector_name=None) -> List[PointRecord]:
        records = self._call(
            self.client.retrieve,
            collection_name=name,
            ids=list(ids),
            with_payload=True,
            with_vectors=_with_vectors(with_vectors, vector_name),
        )
        return [_record(r, with_vectors, vector_name) for r in records]

    def count(self, name) -> int:
        return self._call(self.client.count, collection_name=name, exact=True).count

    def revision(self, name) -> Optional[str]:
        # Servers expose no change counter; the exact count changes with
        # every add/remove, which is what the id cache depends on
        return str(self.count(name))

    def scroll(self, name, with_vectors=False, page_size=1000, restriction=None, vector_name=None):
        def fetch_page(offset):
            return self._call(
                self.client.scroll,
                collection_name=name,
                scroll_filter=_filter(restriction),
                limit=page_size,
                offset=offset,
                with_payload=True,
                with_vectors=_with_vectors(with_vectors, vector_name),
            )

        for records in iter_pages(fetch_page):
            yield [_record(r, with_vectors, vector_name) for r in records]

    def query_batch(self, name, vectors, limit, restriction=None, score_threshold=None, vector_name=None, search_params=None):
        query_filter = _filter(restriction)
        params = qm.SearchParams(**search_params) if search_params else None
        requests = [
            qm.QueryRequest(
                query=v,
                using=vector_name,
                filter=query_filter,
                limit=limit,
                with_payload=True,
                score_threshold=score_threshold,
                params=params,
            )
            for v in np.asarray(vectors, dtype=np.float32).tolist()
        ]
        responses = self._call(self.client.query_batch_points, collection_name=name, requests=requests)
        return [[Hit(str(p.id), p.score, p.payload or {}) for p in r.points] for r in responses]

    def close(self) -> None:
        self.client.close()


def _safe(error: Exception, api_key: Optional[str]) -> str:
    text = "%s: %s" % (type(error).__name__, error)
    if api_key:
        text = text.replace(api_key, "***")
    return text


def _with_vectors(with_vectors: bool, vector_name: Optional[str]):
    if not with_vectors:
        return False
    return [vector_name] if vector_name else True


def _record(r, with_vectors: bool, vector_name: Optional[str]) -> PointRecord:
    vector = None
    if with_vectors and r.vector is not None:
        v = r.vector[vector_name] if vector_name else r.vector
        vector = np.asarray(v, dtype=np.float32)
    return PointRecord(str(r.id), vector, r.payload or {})


def _filter(restriction: Optional[IdRestriction]):
    if restriction is None:
        return None
    if restriction.field is None:
        return qm.Filter(must=[qm.HasIdCondition(has_id=list(restriction.values))])
    return qm.Filter(must=[qm.FieldCondition(key=restriction.field, match=qm.MatchAny(any=list(restriction.values)))])

"""Every Qdrant store, through ``qdrant-client``: a server or cluster (REST
or gRPC), and the embedded store, which is served by a local Qdrant service
(:mod:`fiftyone_qdrant.service`) on loopback gRPC.

Over gRPC the bulk calls (upsert, scroll, retrieve, query) build and read
Qdrant's protobuf messages directly from and into numpy, through the
client's own gRPC stubs: the same wire calls as qdrant-client's methods,
without a pydantic model per point in between.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import warnings
from typing import Any, Deque, Dict, Iterator, List, Optional

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import grpc as pb
from qdrant_client import models as qm

from .store import CollectionSpec, Hit, IdRestriction, PointRecord, VectorStore, iter_pages
from .errors import CollectionNotFoundError, ConfigError, ConnectionFailedError, QdrantBackendError
from .wire import REVISION_HEADER, SNAPSHOT_BEGIN_HEADER, SNAPSHOT_END_HEADER, encode_upsert, payload_from_grpc

logger = logging.getLogger(__name__)

# Upserts a write session keeps in flight: one being encoded here while the
# service decodes and indexes the previous one keeps both cores busy
_MAX_IN_FLIGHT = 2
_INFO_TTL_S = 2.0

# Cluster and WAL settings, which have no meaning for one local shard
_SERVER_ONLY_KEYS = ("replication_factor", "shard_number", "write_consistency_factor", "wal_config")

DISTANCES = {
    "cosine": qm.Distance.COSINE,
    "dotproduct": qm.Distance.DOT,
    "euclidean": qm.Distance.EUCLID,
    "manhattan": qm.Distance.MANHATTAN,
}
_METRICS_BY_DISTANCE = {v: k for k, v in DISTANCES.items()}


def quantization_model(config: Optional[Dict[str, Any]]):
    """qdrant-client's model of a ``quantization_config`` dict (one of
    scalar, product, binary), as CollectionSpec holds it."""
    if not config:
        return None
    models = {"scalar": (qm.ScalarQuantization, qm.ScalarQuantizationConfig),
              "product": (qm.ProductQuantization, qm.ProductQuantizationConfig),
              "binary": (qm.BinaryQuantization, qm.BinaryQuantizationConfig)}
    (kind, settings), = config.items()
    outer, inner = models[kind]
    return outer(**{kind: inner(**settings)})


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
        from .redaction import safe_url, url_password

        self.location = "Qdrant server at '%s'" % safe_url(url)
        if prefer_grpc:
            self.location += " (gRPC port %d)" % (grpc_port or 6334)
        kwargs: Dict[str, Any] = {"url": url, "api_key": api_key, "prefer_grpc": bool(prefer_grpc)}
        if grpc_port is not None:
            kwargs["grpc_port"] = int(grpc_port)
        if https is not None:
            kwargs["https"] = https
        if timeout is not None:
            kwargs["timeout"] = int(timeout) if float(timeout).is_integer() else timeout
        self._client_kwargs = kwargs
        try:
            self._client = QdrantClient(**kwargs)
            error = None
        except Exception as e:
            error = ConnectionFailedError(
                "Could not set up a Qdrant client for the %s: %s. Check the "
                "`url`, `grpc_port` and `prefer_grpc` settings" % (self.location, _safe(e, api_key, url_password(url)))
            )
        if error is not None:
            raise error  # outside the except block: nothing chained (see _call)
        self._init_state(api_key, grpc_enabled=bool(prefer_grpc))
        self._url_password = url_password(url)

    @property
    def client(self) -> QdrantClient:
        """The store's ``QdrantClient``; after :meth:`close`, a new one."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    if self.is_local:
                        self._connect_local()
                    elif getattr(self, "_client_kwargs", None) is not None:
                        self._client = QdrantClient(**self._client_kwargs)
                    else:
                        raise ConnectionFailedError("The client of the %s was closed" % self.location)
        return self._client

    def _init_state(self, api_key: Optional[str], grpc_enabled: bool, local_root: Optional[str] = None) -> None:
        self._api_key = api_key
        self._url_password: Optional[str] = None
        self._keyword_fields: Dict[str, frozenset] = {}
        self._grpc = grpc_enabled
        self._local_root = local_root
        self._in_flight: Deque[Any] = collections.deque()
        self._session_depth = 0
        self._info_cache: Dict[str, Any] = {}
        self._lock = threading.RLock()
        self._registered = False
        self._snapshot_depth = threading.local()

    @classmethod
    def local(cls, root: str) -> "ServerStore":
        """The embedded store at ``root``, through its local service
        (started if none runs)."""
        store = cls.__new__(cls)
        store.location = "embedded store at '%s'" % root
        store._init_state(None, grpc_enabled=True, local_root=root)
        store._connect_local()
        return store

    @property
    def is_local(self) -> bool:
        return self._local_root is not None

    def _connect_local(self) -> None:
        from .local import ensure_service, register_client

        if not self._registered:
            register_client(self._local_root)  # before the service may see no client
            self._registered = True
        address = ensure_service(self._local_root)
        with warnings.catch_warnings():
            # loopback only, and the token is the store's own secret
            warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")
            self._client = QdrantClient(
                host=address.host, grpc_port=address.port, prefer_grpc=True, https=False,
                api_key=address.token, check_compatibility=False, timeout=600,
                grpc_options={"grpc.max_send_message_length": 256 << 20,
                              "grpc.max_receive_message_length": 256 << 20},
            )
        self._api_key = address.token

    @classmethod
    def from_client(cls, client: QdrantClient, location: str = "Qdrant client") -> "ServerStore":
        """Wraps an existing client (e.g. qdrant-client's local mode, which
        speaks the same API as a server)."""
        store = cls.__new__(cls)
        store._client = client
        store.location = location
        store._init_state(None, grpc_enabled=False)
        return store

    def _call(self, fn, *args, **kwargs):
        """Runs a client call, turning transport failures into one clear
        error that never carries the API key. On the embedded store, a
        service that went away (killed, or stopped when idle) is started
        again and the call retried once: every call we make is idempotent."""
        for attempt in (0, 1):
            try:
                return fn(*args, **kwargs)
            except (CollectionNotFoundError, ConfigError):
                raise
            except Exception as e:
                if attempt == 0 and self.is_local and grpc_code(e) == "UNAVAILABLE":
                    logger.info("The local Qdrant service of the %s went away; starting it again", self.location)
                    self._reconnect()
                    fn = _rebind(fn, self.client)
                    continue
                error = self._translate(e)
            # Raised outside the except block so that the client's exception,
            # whose text or response body may echo the API key, is not chained
            # to ours as __context__
            raise error

    def reconnect(self) -> None:
        """A new connection; on the embedded store, to a service started
        again if the old one is gone."""
        if self.is_local:
            self._reconnect()

    def _reconnect(self) -> None:
        from .local import read_address

        with self._lock:
            old = self._client
            # a service killed a moment ago may still hold its lock: wait
            # until it is gone before starting another
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                address = read_address(self._local_root)
                if address is None or address.token != self._api_key:
                    break
                time.sleep(0.05)
            self._connect_local()
            try:
                if old is not None:
                    old.close()
            except Exception:
                pass

    def redact(self, text: str) -> str:
        """``text`` without this store's secrets (API key, URL password)."""
        from .redaction import redact

        return redact(text, self._api_key, self._url_password)

    def _translate(self, e: Exception) -> Exception:
        text = _safe(e, self._api_key, self._url_password)
        # HTTP status or gRPC code, not digits in the text (a port such as
        # 40401 in a connection error is no HTTP 401)
        status = getattr(e, "status_code", None)
        code = grpc_code(e)
        if code in ("FAILED_PRECONDITION", "DATA_LOSS", "ALREADY_EXISTS", "INVALID_ARGUMENT", "UNIMPLEMENTED"):
            details = e.details() if callable(getattr(e, "details", None)) else text
            return QdrantBackendError("The %s refused the request: %s" % (self.location, details))
        if code == "INTERNAL" and self.is_local:
            details = e.details() if callable(getattr(e, "details", None)) else text
            return QdrantBackendError(
                "The local Qdrant service of the %s failed: %s (its log: %s/service.log)"
                % (self.location, details, self._local_root)
            )
        if code == "RESOURCE_EXHAUSTED":
            details = e.details() if callable(getattr(e, "details", None)) else text
            return QdrantBackendError(
                "The %s is out of resources (%s). Free disk space, then retry: nothing acknowledged was lost"
                % (self.location, details)
            )
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
        if self.is_local:
            ignored = [k for k in _SERVER_ONLY_KEYS if getattr(spec, k) is not None]
            if ignored:
                logger.warning(
                    "%s only apply to a Qdrant server: the embedded store (one shard on local disk) "
                    "ignores them for collection '%s'", ", ".join("`%s`" % k for k in ignored), name,
                )
        params = qm.VectorParams(size=spec.dimension, distance=DISTANCES[spec.metric], on_disk=spec.on_disk)
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
            quantization_config=quantization_model(spec.quantization_config),
            on_disk_payload=spec.on_disk_payload,
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
        if params.multivector_config is not None:
            dense = sorted(n for n, p in vectors.items() if p.multivector_config is None) if isinstance(vectors, dict) else []
            raise ConfigError(
                "Qdrant collection '%s' has no single dense vector named %r: it is a multi-vector. Its dense "
                "vectors are %s. Pass one of them as `vector_name`" % (name, vector_name, dense)
            )
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
        vectors = np.asarray(vectors, dtype=np.float32)
        if not self._grpc:
            rows = vectors.tolist()
            self._call(
                self.client.upsert,
                collection_name=name,
                points=qm.Batch(ids=list(ids), vectors={vector_name: rows} if vector_name else rows,
                                payloads=list(payloads)),
                wait=True,
            )
            return
        request = pb.UpsertPoints.FromString(encode_upsert(name, ids, vectors, payloads, vector_name))
        if self._session_depth:
            self._send_pipelined(request)
        else:
            self._call(lambda: self.client.grpc_points.Upsert(request, timeout=self._timeout()))

    def _timeout(self) -> Optional[float]:
        return getattr(getattr(self.client, "_client", None), "_timeout", None)

    def _send_pipelined(self, request) -> None:
        """Inside a write session: the request goes out now and is waited
        for later (at most _MAX_IN_FLIGHT outstanding), so encoding the next
        batch here overlaps indexing this one there."""
        while len(self._in_flight) >= _MAX_IN_FLIGHT:
            self._wait_oldest()
        future = self._call(lambda: self.client.grpc_points.Upsert.future(request, timeout=self._timeout()))
        self._in_flight.append((future, request))

    def _wait_oldest(self) -> None:
        future, request = self._in_flight.popleft()
        try:
            self._call(future.result)
        except ConnectionFailedError:
            # the service restarted under us (a retry reconnected): resend
            if not self.is_local:
                raise
            self._call(lambda: self.client.grpc_points.Upsert(request, timeout=self._timeout()))

    @contextlib.contextmanager
    def batch(self, name: str) -> Iterator[None]:
        """A write session: upserts are pipelined, and all acknowledged
        (durable) when it exits."""
        self._session_depth += 1
        try:
            yield
        finally:
            self._session_depth -= 1
            if self._session_depth == 0:
                self._drain()

    def _drain(self) -> None:
        error = None
        while self._in_flight:
            try:
                self._wait_oldest()
            except Exception as e:  # wait for every request before raising
                error = error or e
        if error is not None:
            raise error

    def delete(self, name, ids) -> None:
        self._drain()
        self._call(
            self.client.delete,
            collection_name=name,
            points_selector=qm.PointIdsList(points=list(ids)),
            wait=True,
        )

    def retrieve(self, name, ids, with_vectors=False, vector_name=None) -> List[PointRecord]:
        if self._grpc:
            request = pb.GetPoints(
                collection_name=name, ids=[_grpc_point_id(i) for i in ids],
                with_payload=pb.WithPayloadSelector(enable=True), with_vectors=_grpc_with_vectors(with_vectors, vector_name),
            )
            response = self._call(lambda: self.client.grpc_points.Get(request, timeout=self._timeout()))
            return [_grpc_record(p, with_vectors, vector_name) for p in response.result]
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
        """The local service's change counter of the collection (in an
        extension header); a server exposes none, and then the exact count,
        which changes with every add or remove, stands in for it."""
        if not self.is_local:
            return str(self.count(name))
        request = pb.CountPoints(collection_name=name, exact=True)
        response, call = self._call(lambda: self.client.grpc_points.Count.with_call(request, timeout=self._timeout()))
        trailing = dict(call.trailing_metadata() or ())
        return trailing.get(REVISION_HEADER) or str(response.result.count)

    @contextlib.contextmanager
    def snapshot(self, name: str) -> Iterator[None]:
        """On the embedded store, reads inside see one state of the
        collection: the service holds off writes until the block ends (or
        its lease of 60 s runs out). Writing inside it waits for the end.
        A server offers no such guarantee: there it groups nothing."""
        depth = getattr(self._snapshot_depth, "value", 0)
        if not self.is_local or depth:
            self._snapshot_depth.value = depth + 1
            try:
                yield
            finally:
                self._snapshot_depth.value = depth
            return
        self._drain()  # our own writes in flight would wait for the snapshot
        request = pb.CollectionExistsRequest(collection_name=name)
        _, call = self._call(lambda: self.client.grpc_collections.CollectionExists.with_call(
            request, metadata=[(SNAPSHOT_BEGIN_HEADER, "1")], timeout=self._timeout()))
        lease = dict(call.trailing_metadata() or ()).get(SNAPSHOT_BEGIN_HEADER)
        self._snapshot_depth.value = 1
        try:
            yield
        finally:
            self._snapshot_depth.value = 0
            if lease:
                self._call(lambda: self.client.grpc_collections.CollectionExists(
                    request, metadata=[(SNAPSHOT_END_HEADER, lease)], timeout=self._timeout()))

    def _cached_info(self, name: str):
        hit = self._info_cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < _INFO_TTL_S:
            return hit[1]
        info = self._info(name)
        self._info_cache[name] = (time.monotonic(), info)
        return info

    def searches_exhaustively(self, name: str) -> bool:
        """Until most vectors are in an HNSW index, a query scores them all
        (a server indexes a collection once it passes its threshold)."""
        info = self._cached_info(name)
        return (info.indexed_vectors_count or 0) < (info.points_count or 0) / 2

    def optimize(self, name: str) -> None:
        """Builds the HNSW index now: an optimizer update makes Qdrant
        re-plan its optimizations; the local service runs them before it
        answers, a server in the background."""
        self._drain()
        self._info_cache.pop(name, None)
        self._call(self.client.update_collection, collection_name=name, optimizers_config=qm.OptimizersConfigDiff())

    def scroll(self, name, with_vectors=False, page_size=1000, restriction=None, vector_name=None):
        if self._grpc:
            query_filter = _grpc_filter(restriction)

            def fetch_page(offset):
                request = pb.ScrollPoints(
                    collection_name=name, limit=page_size, with_payload=pb.WithPayloadSelector(enable=True),
                    with_vectors=_grpc_with_vectors(with_vectors, vector_name),
                )
                if query_filter is not None:
                    request.filter.CopyFrom(query_filter)
                if offset is not None:
                    request.offset.CopyFrom(offset)
                response = self._call(lambda: self.client.grpc_points.Scroll(request, timeout=self._timeout()))
                records = [_grpc_record(p, with_vectors, vector_name) for p in response.result]
                return records, (response.next_page_offset if response.HasField("next_page_offset") else None)
        else:
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
            if not self._grpc:
                records = [_record(r, with_vectors, vector_name) for r in records]
            yield records

    def query_batch(self, name, vectors, limit, restriction=None, score_threshold=None, vector_name=None,
                    search_params=None, with_payload=True):
        vectors = np.asarray(vectors, dtype=np.float32)
        if self._grpc:
            query_filter = _grpc_filter(restriction)
            params = pb.SearchParams(**search_params) if search_params else None
            if isinstance(with_payload, bool):
                payload = pb.WithPayloadSelector(enable=with_payload)
            else:
                payload = pb.WithPayloadSelector(include=pb.PayloadIncludeSelector(fields=list(with_payload)))
            requests = []
            for row in vectors.tolist():
                q = pb.QueryPoints(collection_name=name, limit=limit, with_payload=payload)
                q.query.nearest.dense.data.extend(row)
                if vector_name:
                    q.using = vector_name
                if query_filter is not None:
                    q.filter.CopyFrom(query_filter)
                if score_threshold is not None:
                    q.score_threshold = score_threshold
                if params is not None:
                    q.params.CopyFrom(params)
                requests.append(q)
            request = pb.QueryBatchPoints(collection_name=name, query_points=requests)
            response = self._call(lambda: self.client.grpc_points.QueryBatch(request, timeout=self._timeout()))
            return [
                [Hit(_grpc_id(p.id), p.score, payload_from_grpc(p.payload) if p.payload else {}) for p in r.result]
                for r in response.result
            ]
        query_filter = _filter(restriction)
        params = qm.SearchParams(**search_params) if search_params else None
        requests = [
            qm.QueryRequest(
                query=v,
                using=vector_name,
                filter=query_filter,
                limit=limit,
                with_payload=with_payload if isinstance(with_payload, bool) else list(with_payload),
                score_threshold=score_threshold,
                params=params,
            )
            for v in vectors.tolist()
        ]
        responses = self._call(self.client.query_batch_points, collection_name=name, requests=requests)
        return [[Hit(p.id, p.score, p.payload or {}) for p in r.points] for r in responses]

    def close(self) -> None:
        """Releases the connection (and, on the embedded store, this
        process's claim on the service); a later call opens a new one."""
        try:
            self._drain()
        finally:
            client, self._client = self._client, None
            if client is not None:
                client.close()
            if self._registered:
                from .local import unregister_client

                self._registered = False
                unregister_client(self._local_root)


def grpc_code(error: BaseException) -> Optional[str]:
    """The gRPC status name of a client error (``UNAVAILABLE``...), else None."""
    try:
        code = error.code() if callable(getattr(error, "code", None)) else None
    except Exception:
        return None
    return getattr(code, "name", None)


def _rebind(fn, client):
    """``fn`` again, on ``client`` if it was a method of the old client
    (lambdas read ``self.client`` anew by themselves)."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, QdrantClient):
        return getattr(client, fn.__name__)
    return fn


def _grpc_id(pid):
    """A point id as Qdrant has it: a UUID string or an unsigned integer."""
    return pid.uuid if pid.WhichOneof("point_id_options") == "uuid" else pid.num


def _grpc_point_id(value) -> pb.PointId:
    return pb.PointId(num=value) if isinstance(value, int) else pb.PointId(uuid=str(value))


def _grpc_with_vectors(with_vectors: bool, vector_name: Optional[str]) -> pb.WithVectorsSelector:
    if not with_vectors:
        return pb.WithVectorsSelector(enable=False)
    if vector_name:
        return pb.WithVectorsSelector(include=pb.VectorsSelector(names=[vector_name]))
    return pb.WithVectorsSelector(enable=True)


def _grpc_dense(output) -> Optional[np.ndarray]:
    kind = output.WhichOneof("vector")
    if kind == "dense":
        return np.array(output.dense.data, dtype=np.float32)
    if kind is None and len(output.data) and not output.HasField("indices"):
        return np.array(output.data, dtype=np.float32)
    return None  # sparse or multi: not a single dense vector


def _grpc_record(p, with_vectors: bool, vector_name: Optional[str]) -> PointRecord:
    vector = None
    if with_vectors and p.HasField("vectors"):
        kind = p.vectors.WhichOneof("vectors_options")
        if vector_name:
            named = p.vectors.vectors.vectors if kind == "vectors" else {}
            vector = _grpc_dense(named[vector_name]) if vector_name in named else None
        elif kind == "vector":
            vector = _grpc_dense(p.vectors.vector)
    return PointRecord(_grpc_id(p.id), vector, payload_from_grpc(p.payload) if p.payload else {})


def _grpc_filter(restriction: Optional[IdRestriction]) -> Optional[pb.Filter]:
    if restriction is None:
        return None
    if restriction.field is None:
        condition = pb.Condition(has_id=pb.HasIdCondition(has_id=[_grpc_point_id(v) for v in restriction.values]))
    else:
        condition = pb.Condition(field=pb.FieldCondition(
            key=restriction.field, match=pb.Match(keywords=pb.RepeatedStrings(strings=list(restriction.values)))
        ))
    return pb.Filter(must=[condition])


def _safe(error: Exception, *secrets: Optional[str]) -> str:
    from .redaction import redact

    return redact("%s: %s" % (type(error).__name__, error), *secrets)


def _with_vectors(with_vectors: bool, vector_name: Optional[str]):
    if not with_vectors:
        return False
    return [vector_name] if vector_name else True


def _record(r, with_vectors: bool, vector_name: Optional[str]) -> PointRecord:
    vector = None
    if with_vectors and r.vector is not None:
        if vector_name:  # a point may lack the named vector
            v = r.vector.get(vector_name) if isinstance(r.vector, dict) else None
        else:
            v = None if isinstance(r.vector, dict) else r.vector
        if isinstance(v, list) and (not v or not isinstance(v[0], list)):  # dense only
            vector = np.asarray(v, dtype=np.float32)
    return PointRecord(r.id, vector, r.payload or {})


def _filter(restriction: Optional[IdRestriction]):
    if restriction is None:
        return None
    if restriction.field is None:
        return qm.Filter(must=[qm.HasIdCondition(has_id=list(restriction.values))])
    return qm.Filter(must=[qm.FieldCondition(key=restriction.field, match=qm.MatchAny(any=list(restriction.values)))])

"""The FiftyOne brain contract: config, method and index for Qdrant.

These classes are stored by path in FiftyOne run records
(``fiftyone_qdrant.similarity.QdrantSimilarityConfig`` ...): never move them.

Distances follow the sklearn backend: smaller is more similar. For
``cosine`` the distance is ``1 - cosine similarity``, for ``dotproduct`` it
is ``-dot product``, for ``euclidean`` and ``manhattan`` it is the distance
itself.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

import eta.core.utils as etau
import fiftyone.core.utils as fou
from fiftyone.brain.similarity import (
    DuplicatesMixin,
    Similarity,
    SimilarityConfig,
    SimilarityIndex,
)

from . import ids as idmap
from . import records
from .connection import ConnectionSettings
from .engine import METRICS, SIMILARITY_METRICS, CollectionSpec, IdRestriction, PointRecord
from .errors import (
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    InvalidInputError,
    QdrantBackendError,
    UnknownIdError,
)

logger = logging.getLogger(__name__)

_CREDENTIALS = ("url", "api_key", "grpc_port", "prefer_grpc", "https")
_NORM_KEY = "embedding_norm"
_UNIT_NORM_TOL = 1e-6
_PAGE_SIZE = 1000
_SCROLL_PAGE_SIZE = 10000  # listing every id of an index

# A view this small is sent to Qdrant as an id filter; larger views are
# answered by oversampling, so a query never ships more than this many ids
# (or 6 * sqrt(index size), see _max_filter_ids())
_MAX_FILTER_IDS = 2000
# ... or total / this, while every query scans the whole collection anyway
_EXHAUSTIVE_FILTER_DIVISOR = 40
# ... and never more than MongoDB lists in one document (ids.collect_view_ids)
_MAX_LISTED_IDS = 200_000


def _model_fields(model_cls) -> Tuple[str, ...]:
    return tuple(model_cls.model_fields)


def _validate_partial(name: str, value: Any, model_name: str) -> Optional[Dict[str, Any]]:
    """Checks a partial Qdrant config dict against qdrant-client's model."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("`%s` must be a dict, got %r" % (name, value))
    # imported only when needed: importing qdrant_client takes ~2 s
    from qdrant_client import models as qm

    model_cls = getattr(qm, model_name)
    allowed = _model_fields(model_cls)
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(
            "Unknown key(s) %s in `%s`. Valid keys are %s" % (unknown, name, list(allowed))
        )
    try:
        model_cls(**value)
    except Exception as e:
        raise ConfigError("Invalid `%s` %r: %s" % (name, value, e)) from None
    return dict(value)


def _float32_chunks(embeddings: np.ndarray, rows: int = 8192):
    """(start row, float32 chunk) pairs covering ``embeddings``."""
    for start in range(0, len(embeddings), rows):
        yield start, np.asarray(embeddings[start : start + rows], dtype=np.float32)


def _as_2d_numeric(embeddings) -> np.ndarray:
    try:
        embeddings = np.asarray(embeddings)
    except ValueError:  # ragged rows
        raise InvalidInputError("Embeddings must be a 2-d array of numbers; got rows of different lengths") from None
    if embeddings.dtype == object or not np.issubdtype(embeddings.dtype, np.number) or np.iscomplexobj(embeddings):
        raise InvalidInputError("Embeddings must be a numeric array, got dtype %s" % embeddings.dtype)
    if embeddings.ndim == 1 and embeddings.size > 0:
        embeddings = embeddings[np.newaxis, :]
    if embeddings.ndim != 2:
        raise InvalidInputError(
            "Embeddings must be a 2-d array (num_embeddings x num_dims), got shape %s" % (embeddings.shape,)
        )
    return embeddings


def _payloads(sample_ids: np.ndarray, label_ids: Optional[np.ndarray], norms: Optional[np.ndarray]) -> List[dict]:
    """Point payloads: the FiftyOne ids, and the original norm of vectors
    that cosine collections store normalized, to give them back as added
    (a unit vector needs none: what Qdrant stores is already the vector)."""
    sids = sample_ids.tolist()
    if norms is not None:
        payloads = [
            {"sample_id": s, _NORM_KEY: n} if abs(n - 1.0) > _UNIT_NORM_TOL else {"sample_id": s}
            for s, n in zip(sids, norms.tolist())
        ]
    else:
        payloads = [{"sample_id": s} for s in sids]
    if label_ids is not None:
        for payload, lid in zip(payloads, label_ids.tolist()):
            payload["label_id"] = lid
    return payloads


def _positive_int(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("`%s` must be a positive integer, got %r" % (name, value))
    return value


class QdrantSimilarityConfig(SimilarityConfig):
    """Configuration for the Qdrant similarity backend.

    Args:
        collection_name (None): the Qdrant collection to use or create. By
            default ``fiftyone-<dataset>-<brain_key>``
        metric ("cosine"): ``"cosine"``, ``"dotproduct"``, ``"euclidean"`` or
            ``"manhattan"``
        replication_factor, shard_number, write_consistency_factor (None):
            cluster settings used when creating a collection on a server
        hnsw_config, optimizers_config, wal_config (None): partial Qdrant
            config dicts used when creating a collection
        vector_name (None): the named dense vector to use, for collections
            with named vectors (e.g. written by the streaming sink)
        search_params (None): Qdrant search params for queries, e.g.
            ``{"hnsw_ef": 128}`` or ``{"exact": True}``
        path (None): the embedded store directory, used when no ``url`` is
            set. Default ``~/.fiftyone/qdrant``
        url (None): a Qdrant server URL. Not stored in run records
        api_key (None): a Qdrant API key. Never stored
        grpc_port (None): the server's gRPC port. Not stored
        prefer_grpc (None): whether to use gRPC. Not stored
        https (None): whether to use HTTPS. Not stored
        timeout (None): request timeout in seconds (server only)
        **kwargs: keyword arguments for
            :class:`fiftyone.brain.similarity.SimilarityConfig`
    """

    def __init__(
        self,
        collection_name: Optional[str] = None,
        metric: Optional[str] = None,
        replication_factor: Optional[int] = None,
        shard_number: Optional[int] = None,
        write_consistency_factor: Optional[int] = None,
        hnsw_config: Optional[dict] = None,
        optimizers_config: Optional[dict] = None,
        wal_config: Optional[dict] = None,
        vector_name: Optional[str] = None,
        search_params: Optional[dict] = None,
        path: Optional[str] = None,
        timeout: Optional[float] = None,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        grpc_port: Optional[int] = None,
        prefer_grpc: Optional[bool] = None,
        https: Optional[bool] = None,
        model_spec: Optional[dict] = None,
        **kwargs,
    ):
        from .embedded import validate_collection_name

        metric = metric or "cosine"
        if metric not in METRICS:
            raise ConfigError(
                "Unsupported metric %r. Supported values are %s" % (metric, METRICS)
            )
        if collection_name is not None:
            validate_collection_name(collection_name)

        # A model built by fiftyone_qdrant.models carries the spec needed to
        # reload it in another process (e.g. the App server)
        model = kwargs.get("model")
        if model_spec is None and model is not None and not etau.is_str(model):
            model_spec = getattr(model, "_fiftyone_qdrant_spec", None)
        if model_spec is not None:
            kwargs["supports_prompts"] = bool(
                kwargs.get("supports_prompts") or getattr(model, "can_embed_prompts", True)
            )

        super().__init__(**kwargs)
        if model_spec is not None:
            self.supports_prompts = True

        self.collection_name = collection_name
        self.metric = metric
        self.replication_factor = _positive_int("replication_factor", replication_factor)
        self.shard_number = _positive_int("shard_number", shard_number)
        self.write_consistency_factor = _positive_int("write_consistency_factor", write_consistency_factor)
        self.hnsw_config = _validate_partial("hnsw_config", hnsw_config, "HnswConfigDiff")
        self.optimizers_config = _validate_partial("optimizers_config", optimizers_config, "OptimizersConfigDiff")
        self.wal_config = _validate_partial("wal_config", wal_config, "WalConfigDiff")
        self.search_params = _validate_partial("search_params", search_params, "SearchParams")
        self.vector_name = vector_name
        self.path = path
        self.timeout = timeout
        self.model_spec = model_spec

        # Credentials are private so that they are never serialized
        self._url = url
        self._api_key = str(api_key) if api_key is not None else None
        self._grpc_port = grpc_port
        self._prefer_grpc = prefer_grpc
        self._https = https

        self.connection_settings()  # validates, never connects

    @property
    def method(self) -> str:
        return "qdrant"

    url = property(lambda self: self._url, lambda self, v: setattr(self, "_url", v))
    api_key = property(
        lambda self: self._api_key,
        lambda self, v: setattr(self, "_api_key", None if v is None else str(v)),
    )
    grpc_port = property(lambda self: self._grpc_port, lambda self, v: setattr(self, "_grpc_port", v))
    prefer_grpc = property(lambda self: self._prefer_grpc, lambda self, v: setattr(self, "_prefer_grpc", v))
    https = property(lambda self: self._https, lambda self, v: setattr(self, "_https", v))

    @property
    def max_k(self):
        return None

    @property
    def supports_least_similarity(self) -> bool:
        return self.metric in SIMILARITY_METRICS

    @property
    def supported_aggregations(self):
        return ("mean",)

    def load_credentials(self, url=None, api_key=None, grpc_port=None, prefer_grpc=None, https=None, path=None):
        """Fills connection settings from kwargs, else from the brain config
        (env vars, brain_config.json) where the run itself has none."""
        given = dict(url=url, api_key=api_key, grpc_port=grpc_port, prefer_grpc=prefer_grpc, https=https, path=path)
        self._load_parameters(
            **{k: v for k, v in given.items() if v is not None or getattr(self, k) is None}
        )

    def connection_settings(self) -> ConnectionSettings:
        return ConnectionSettings(
            url=self.url,
            api_key=self.api_key,
            grpc_port=self.grpc_port,
            prefer_grpc=self.prefer_grpc,
            https=self.https,
            timeout=self.timeout,
            path=self.path,
        )

    def collection_spec(self, dimension: int) -> CollectionSpec:
        return CollectionSpec(
            dimension=dimension,
            metric=self.metric,
            vector_name=self.vector_name,
            hnsw_config=self.hnsw_config,
            optimizers_config=self.optimizers_config,
            wal_config=self.wal_config,
            replication_factor=self.replication_factor,
            shard_number=self.shard_number,
            write_consistency_factor=self.write_consistency_factor,
        )

    def __repr__(self):
        return "%s(collection_name=%r, metric=%r, location=%s)" % (
            type(self).__name__,
            self.collection_name,
            self.metric,
            self.connection_settings().describe(),
        )


class QdrantSimilarity(Similarity):
    """Qdrant similarity factory."""

    def ensure_requirements(self):
        """Runs before FiftyOne registers the brain run: a server that cannot
        be reached fails here, leaving no run behind."""
        fou.ensure_package("qdrant-client")
        settings = self.config.connection_settings()
        if settings.is_embedded:
            fou.ensure_package("qdrant-edge-py")
        settings.open().list_collections()

    def ensure_usage_requirements(self):
        fou.ensure_package("qdrant-client")

    def register_run(self, samples, key, overwrite=True, cleanup=True):
        # A build killed before it saved results leaves a run without
        # results; re-running the same build replaces it and resumes
        if key is not None and not overwrite and records.is_interrupted_build(samples, key, self.config):
            # resume in the collection the interrupted build was writing
            stored = samples._root_dataset._doc.brain_methods[key].config or {}
            if self.config.collection_name is None:
                self.config.collection_name = stored.get("collection_name")
            type(self).delete_run(samples, key, cleanup=False)
        super().register_run(samples, key, overwrite=overwrite, cleanup=cleanup)

    @classmethod
    def save_run_results(cls, samples, key, run_results, overwrite=True, cache=True):
        super().save_run_results(samples, key, run_results, overwrite=overwrite, cache=cache)
        if run_results is not None:
            run_results._building = False  # the build is over, with or without a brain key
        if run_results is None or key is None:
            return
        store = run_results.store
        if store.collection_exists(run_results.collection_name):
            spec = run_results.spec
            records.save(store, run_results.collection_name, records.make_record(run_results, spec.dimension if spec else None))

    def initialize(self, samples, brain_key):
        index = QdrantSimilarityIndex(samples, self.config, brain_key, backend=self)
        index._build_from_caller(compute_similarity_args(sys._getframe(1)))  # our caller's frame
        return index

    def cleanup(self, samples, key):
        """``delete_brain_run()`` forgets the run in the collection but keeps
        the vectors; call ``results.cleanup()`` to delete the collection."""
        try:
            store = self.config.connection_settings().open()
            records.remove(store, self.config.collection_name, samples._root_dataset.name, key)
        except QdrantBackendError as e:
            logger.warning("Could not update the Qdrant run records: %s", e)

    def rename(self, samples, key, new_key):
        store = self.config.connection_settings().open()
        records.rename(store, self.config.collection_name, samples._root_dataset.name, key, new_key)


def compute_similarity_args(frame, max_hops: Optional[int] = 0) -> Optional[Dict[str, Any]]:
    """The arguments of ``fiftyone.brain.similarity.compute_similarity`` if
    it runs in ``frame`` or, up to ``max_hops`` frames (``None``: any number)
    above it; else ``None``.

    FiftyOne computes model embeddings for the whole dataset in memory and
    only then calls ``add_to_index``; reading its arguments from
    ``initialize()`` lets us embed and upsert chunk by chunk instead.
    """
    hops = 0
    while frame is not None and (max_hops is None or hops <= max_hops):
        if frame.f_code.co_name == "compute_similarity" and frame.f_globals.get("__name__") == "fiftyone.brain.similarity":
            return dict(frame.f_locals)
        frame, hops = frame.f_back, hops + 1
    return None


class QdrantSimilarityIndex(SimilarityIndex, DuplicatesMixin):
    """A similarity index backed by a Qdrant collection."""

    def __init__(self, samples, config: QdrantSimilarityConfig, brain_key, backend=None):
        self._store = None
        self._spec: Optional[CollectionSpec] = None
        self._ids_cache: Optional[Tuple[Any, np.ndarray, Optional[np.ndarray]]] = None
        self._payload_ids: Optional[bool] = None
        self._built_by_stream = False
        super().__init__(samples, config, brain_key, backend=backend)
        DuplicatesMixin.__init__(self)
        self._initialize()

    # -- setup --------------------------------------------------------------

    def _initialize(self):
        if self.config.collection_name is None:
            root = "fiftyone-" + fou.to_slug(self._samples._root_dataset.name)
            if self.key:
                root += "-" + fou.to_slug(self.key)
            root = root[:200]
            # A collection left by a renamed or deleted run keeps its vectors:
            # a new run gets a name of its own instead of writing into it
            name, suffix = root, 1
            while self.store.collection_exists(name):
                suffix += 1
                name = "%s-%d" % (root, suffix)
            self.config.collection_name = name
            if self.key is not None:
                self.save_config()

    @property
    def store(self):
        if self._store is None:
            self._store = self.config.connection_settings().open()
        return self._store

    @property
    def client(self):
        """The underlying engine: an ``qdrant_edge.EdgeShard`` for embedded
        stores, a ``qdrant_client.QdrantClient`` for servers."""
        store = self.store
        if hasattr(store, "client"):
            return store.client
        return store.shard(self.collection_name)

    @property
    def collection_name(self) -> str:
        return self.config.collection_name

    @property
    def spec(self) -> Optional[CollectionSpec]:
        """The collection's vector config, or None if not created yet."""
        if self._spec is None and self.store.collection_exists(self.collection_name):
            self._spec = self.store.get_spec(self.collection_name, self.config.vector_name)
            if self._spec.metric != self.config.metric:
                logger.info(
                    "Collection '%s' uses metric '%s'; using it instead of '%s'",
                    self.collection_name, self._spec.metric, self.config.metric,
                )
                self.config.metric = self._spec.metric
        return self._spec

    def _require_spec(self) -> CollectionSpec:
        spec = self.spec
        if spec is None:
            raise CollectionNotFoundError(
                "Qdrant collection '%s' does not exist in the %s. Add embeddings "
                "with add_to_index(), or rebuild the index with compute_similarity()"
                % (self.collection_name, self.config.connection_settings().describe())
            )
        return spec

    @property
    def is_external(self) -> bool:
        # False after a streamed model build tells compute_similarity() that
        # the index is complete (it then skips its in-memory embedding pass)
        return not self._built_by_stream

    @property
    def total_index_size(self) -> int:
        if not self.store.collection_exists(self.collection_name):
            return 0
        return self.store.count(self.collection_name)

    @property
    def _id_field(self) -> str:
        return "label_id" if self.config.patches_field is not None else "sample_id"

    def _index_ids(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """All (sample ids, label ids) in the index, cached until the
        collection changes."""
        if not self.store.collection_exists(self.collection_name):
            empty = np.array([], dtype="<U24")
            return empty, (empty if self.config.patches_field else None)
        revision = self.store.revision(self.collection_name)
        if self._ids_cache is not None and revision is not None and self._ids_cache[0] == revision:
            return self._ids_cache[1], self._ids_cache[2]
        sample_ids: List[str] = []
        label_ids: List[str] = []
        with self.store.snapshot(self.collection_name):
            revision = self.store.revision(self.collection_name)
            for page in self.store.scroll(self.collection_name, page_size=_SCROLL_PAGE_SIZE, vector_name=self.config.vector_name):
                for record in page:
                    sid, lid = self._fiftyone_ids(record)
                    sample_ids.append(sid)
                    if lid is not None:
                        label_ids.append(lid)
        result = (np.array(sample_ids, dtype="<U24"), np.array(label_ids, dtype="<U24") if self.config.patches_field else None)
        self._ids_cache = (revision,) + result
        return result

    @property
    def sample_ids(self):
        return self._index_ids()[0]

    @property
    def label_ids(self):
        return self._index_ids()[1]

    def _fiftyone_ids(self, record) -> Tuple[str, Optional[str]]:
        payload = record.payload
        derived = idmap.from_point_id(record.id)
        if self.config.patches_field is not None:
            return payload.get("sample_id"), payload.get("label_id") or derived
        return payload.get("sample_id") or derived, None

    def _uses_payload_ids(self) -> bool:
        """Whether point ids are foreign (e.g. written by a streaming
        pipeline) so that FiftyOne ids must be looked up in payloads."""
        if self._payload_ids is None:
            first = next(iter(self.store.scroll(self.collection_name, page_size=1)), [])
            if not first:
                return False
            record = first[0]
            own = self._fiftyone_ids(record)[1 if self.config.patches_field else 0]
            self._payload_ids = idmap.from_point_id(record.id) != own
        return self._payload_ids

    # -- lookups ------------------------------------------------------------

    def _lookup(self, fiftyone_ids: Sequence[str], with_vectors: bool) -> Dict[str, PointRecord]:
        """Records by FiftyOne id (sample ids, or label ids for patches)."""
        found: Dict[str, PointRecord] = {}
        name, vector_name = self.collection_name, self.config.vector_name
        for start in range(0, len(fiftyone_ids), _PAGE_SIZE):
            batch = fiftyone_ids[start : start + _PAGE_SIZE]
            if self._uses_payload_ids():
                pages = self.store.scroll(
                    name, with_vectors=with_vectors, page_size=_PAGE_SIZE,
                    restriction=IdRestriction(batch, field=self._id_field), vector_name=vector_name,
                )
                recs = [r for page in pages for r in page]
            else:
                recs = self.store.retrieve(name, idmap.to_point_ids(batch), with_vectors=with_vectors, vector_name=vector_name)
            for record in recs:
                sid, lid = self._fiftyone_ids(record)
                found[lid if self.config.patches_field else sid] = record
        return found

    def _vector(self, record: PointRecord) -> np.ndarray:
        norm = record.payload.get(_NORM_KEY)
        return record.vector * norm if norm is not None else record.vector

    def _restriction(self, fiftyone_ids: Sequence[str]) -> IdRestriction:
        field = self._id_field
        if self._uses_payload_ids() or self.store.has_keyword_index(self.collection_name, field):
            return IdRestriction(list(fiftyone_ids), field=field)
        return IdRestriction(idmap.to_point_ids(fiftyone_ids))

    # -- writes -------------------------------------------------------------

    def add_to_index(
        self,
        embeddings,
        sample_ids,
        label_ids=None,
        overwrite=True,
        allow_existing=True,
        warn_existing=False,
        reload=True,
        batch_size=_PAGE_SIZE,
        progress=None,
    ):
        """Adds embeddings in batches; everything is validated first, so bad
        input raises before anything is written."""
        try:
            self._add_to_index(
                embeddings, sample_ids, label_ids, overwrite, allow_existing, warn_existing, batch_size, progress
            )
        except Exception:
            self._forget_failed_build()
            raise
        if reload:
            self.reload()

    def _add_to_index(
        self, embeddings, sample_ids, label_ids, overwrite, allow_existing, warn_existing, batch_size, progress,
        checked_ids=False,
    ):
        if checked_ids:
            embeddings, norms = self._validate_embeddings(embeddings, sample_ids)
        else:
            embeddings, norms, sample_ids, label_ids = self._validate_additions(embeddings, sample_ids, label_ids)
        if len(sample_ids) == 0:
            return
        keys = label_ids if label_ids is not None else sample_ids

        spec = self.spec
        dimension = embeddings.shape[1]
        if spec is not None and spec.dimension != dimension:
            raise DimensionMismatchError(
                "Embeddings have dimension %d but Qdrant collection '%s' stores "
                "%d-d vectors. Use the model that built this index, or build a "
                "new index under another brain_key/collection_name"
                % (dimension, self.collection_name, spec.dimension)
            )
        if getattr(self, "_building", False):
            if spec is not None:
                self._check_build_target()
        else:  # a build's ids come from the dataset itself
            self._check_ids_in_dataset(sample_ids)

        if not overwrite or not allow_existing or warn_existing:
            existing = set(self._lookup(keys, with_vectors=False)) if spec is not None else set()
            if existing:
                if not allow_existing:
                    raise QdrantBackendError(
                        "Found %d ids (eg %s) that already exist in the index. Pass "
                        "allow_existing=True to skip or overwrite them" % (len(existing), next(iter(existing)))
                    )
                if warn_existing:
                    logger.warning(
                        "%s %d ids that already exist in the index",
                        "Overwriting" if overwrite else "Skipping", len(existing),
                    )
                if not overwrite:
                    keep = np.array([k not in existing for k in keys])
                    embeddings, norms, sample_ids = embeddings[keep], norms[keep], sample_ids[keep]
                    label_ids = label_ids[keep] if label_ids is not None else None
                    keys = label_ids if label_ids is not None else sample_ids
                    if len(keys) == 0:
                        return

        if spec is None:
            self._create_collection(dimension)

        point_ids = self._point_ids_for_write(keys)
        normalize = self.config.metric == "cosine"
        with fou.ProgressBar(total=len(keys), progress=progress) as pb, self.store.batch(self.collection_name):
            for start in range(0, len(keys), batch_size):
                stop = start + batch_size
                batch = np.asarray(embeddings[start:stop], dtype=np.float32)
                payloads = _payloads(
                    sample_ids[start:stop],
                    label_ids[start:stop] if label_ids is not None else None,
                    norms[start:stop] if normalize else None,
                )
                self.store.upsert(
                    self.collection_name, point_ids[start:stop], batch, payloads, vector_name=self.config.vector_name
                )
                pb.update(len(batch))
        self._ids_cache = None

    def _check_build_target(self) -> None:
        """A build writes into an existing collection only if it has no run
        records (e.g. written by a pipeline) or holds this very run (a
        killed build being resumed): never into the index of another run or
        dataset, whose vectors it would overwrite or mix with its own."""
        runs = list((self.store.get_metadata(self.collection_name).get(records.RUNS_KEY) or {}).values())
        dataset = self._samples._root_dataset
        dataset_id = str(dataset._doc.id)
        if not runs or any(r.get("dataset_id") == dataset_id and r.get("brain_key") == self.key for r in runs):
            return
        owner = runs[0]
        raise ConfigError(
            "Qdrant collection '%s' already holds the index of dataset '%s' (brain key %r); building "
            "brain key %r of dataset '%s' into it would overwrite or mix its vectors. Pass another "
            "`collection_name`, or `embeddings=False` to attach the existing index as it is"
            % (self.collection_name, owner.get("dataset_name"), owner.get("brain_key"), self.key, dataset.name)
        )

    def _check_ids_in_dataset(self, sample_ids: np.ndarray) -> None:
        """Ids of another dataset would become points that no view of this
        one can show, and that crowd out real neighbours."""
        from bson import ObjectId

        dataset = self._samples._root_dataset
        unique = list(dict.fromkeys(sample_ids.tolist()))
        for start in range(0, len(unique), 50000):
            batch = unique[start : start + 50000]
            query = {"_id": {"$in": [ObjectId(i) for i in batch]}}
            # counting is twice as fast as listing: list only to name the missing
            if dataset._sample_collection.count_documents(query) == len(batch):
                continue
            found = dataset._sample_collection.distinct("_id", query)
            missing = set(batch) - {str(i) for i in found}
            if missing:
                raise InvalidInputError(
                    "%d sample id(s) (eg %s) are not in dataset '%s'; an index holds embeddings of "
                    "its own dataset's samples only" % (len(missing), sorted(missing)[0], dataset.name)
                )

    def _point_ids_for_write(self, keys: Sequence[str]) -> List[str]:
        if self._uses_payload_ids():
            # keep the pipeline's point ids for ids that already exist
            existing = self._lookup(list(keys), with_vectors=False)
            return [existing[k].id if k in existing else idmap.to_point_id(k) for k in keys]
        return idmap.to_point_ids(keys)

    def _validate_additions(self, embeddings, sample_ids, label_ids):
        embeddings = _as_2d_numeric(embeddings)
        sample_ids = np.array(idmap.validate_ids(sample_ids, "sample"), dtype="<U24")
        if len(sample_ids) != len(embeddings):
            raise InvalidInputError(
                "Got %d embeddings but %d sample ids; pass one id per row" % (len(embeddings), len(sample_ids))
            )
        if self.config.patches_field is not None:
            if label_ids is None:
                raise InvalidInputError(
                    "This is a patches index on '%s': pass label_ids with the embeddings" % self.config.patches_field
                )
            label_ids = np.array(idmap.validate_ids(label_ids, "label"), dtype="<U24")
            if len(label_ids) != len(embeddings):
                raise InvalidInputError(
                    "Got %d embeddings but %d label ids; pass one id per row" % (len(embeddings), len(label_ids))
                )
        elif label_ids is not None:
            raise InvalidInputError("This index is not a patches index: do not pass label_ids")
        keys = label_ids if label_ids is not None else sample_ids
        unique, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            raise InvalidInputError(
                "Id %s appears %d times in this batch; each id may be added once"
                % (unique[counts > 1][0], counts[counts > 1][0])
            )
        return self._validate_embeddings(embeddings, keys) + (sample_ids, label_ids)

    def _validate_embeddings(self, embeddings, keys: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Checks values (``keys``, one per row, only name bad rows);
        returns them with their float32 norms."""
        embeddings = _as_2d_numeric(embeddings)
        norms = np.empty(len(embeddings), dtype=np.float32)
        if len(embeddings) == 0:
            return embeddings.astype(np.float32), norms

        def name(row: int) -> str:
            return "" if keys is None else " (id %s)" % keys[row]

        if embeddings.shape[1] == 0:
            raise InvalidInputError("Embeddings have zero dimensions")
        # Checked (and later written) in float32 chunks: never a second
        # full-size copy or temporary of a possibly huge array
        cosine = self.config.metric == "cosine"
        for start, chunk in _float32_chunks(embeddings):
            with np.errstate(over="ignore", invalid="ignore"):
                chunk_norms = np.linalg.norm(chunk, axis=1)
                norms[start : start + len(chunk)] = chunk_norms
                finite = np.isfinite(chunk_norms) & np.isfinite(chunk).all(axis=1)
            if not finite.all():
                bad = start + int(np.flatnonzero(~finite)[0])
                raise InvalidInputError(
                    "Embedding %d%s contains NaN or inf (or values so large that its norm "
                    "overflows float32); fix or drop it before indexing" % (bad, name(bad))
                )
            if cosine and (chunk_norms == 0).any():
                bad = start + int(np.flatnonzero(chunk_norms == 0)[0])
                raise InvalidInputError(
                    "Embedding %d%s is all zeros, which has no cosine similarity; drop it" % (bad, name(bad))
                )
        return embeddings, norms

    def _create_collection(self, dimension: int) -> None:
        spec = self.config.collection_spec(dimension)
        record = records.make_record(self, dimension)
        fields = ("sample_id", "label_id") if self.config.patches_field is not None else ("sample_id",)
        self.store.create_collection(self.collection_name, spec, records.add({}, record), keyword_fields=fields)
        self._spec = spec
        self._payload_ids = False

    def _forget_failed_build(self):
        """A failed initial build must not leave a dangling brain key."""
        if getattr(self, "_building", False) and self.key is not None:
            self._building = False
            try:
                self.backend.delete_run(self._samples._root_dataset, self.key, cleanup=False)
            except Exception as e:
                logger.warning("Could not delete brain run '%s': %s", self.key, e)

    def remove_from_index(self, sample_ids=None, label_ids=None, allow_missing=True, warn_missing=False, reload=True):
        if sample_ids is None and label_ids is None:
            raise InvalidInputError("Pass sample_ids or label_ids to remove")
        self._require_spec()
        if label_ids is not None:
            if self.config.patches_field is None:
                raise InvalidInputError("This index is not a patches index: pass sample_ids, not label_ids")
            keys = idmap.validate_ids(label_ids, "label")
            found = self._lookup(keys, with_vectors=False)
        elif self.config.patches_field is not None:
            keys = idmap.validate_ids(sample_ids, "sample")
            found = self._patches_of_samples(keys, with_vectors=False)
            present = {r.payload.get("sample_id") for r in found.values()}
            found_keys = set(found)
            missing = [k for k in keys if k not in present]
            self._report_missing(missing, allow_missing, warn_missing)
            keys = list(found_keys)
        else:
            keys = idmap.validate_ids(sample_ids, "sample")
            found = self._lookup(keys, with_vectors=False)

        if label_ids is not None or self.config.patches_field is None:
            self._report_missing([k for k in keys if k not in found], allow_missing, warn_missing)

        point_ids = [found[k].id for k in keys if k in found]
        with self.store.batch(self.collection_name):
            for start in range(0, len(point_ids), _PAGE_SIZE):
                self.store.delete(self.collection_name, point_ids[start : start + _PAGE_SIZE])
        self._ids_cache = None
        if reload:
            self.reload()

    def _patches_of_samples(self, sample_ids: Sequence[str], with_vectors: bool) -> Dict[str, PointRecord]:
        found: Dict[str, PointRecord] = {}
        for start in range(0, len(sample_ids), _PAGE_SIZE):
            restriction = IdRestriction(sample_ids[start : start + _PAGE_SIZE], field="sample_id")
            for page in self.store.scroll(
                self.collection_name, with_vectors=with_vectors, restriction=restriction,
                vector_name=self.config.vector_name,
            ):
                for record in page:
                    found[self._fiftyone_ids(record)[1]] = record
        return found

    @staticmethod
    def _report_missing(missing: Sequence[str], allow_missing: bool, warn_missing: bool) -> None:
        if not missing:
            return
        if not allow_missing:
            raise UnknownIdError(
                "Found %d ids (eg %s) that are not in the index. Pass "
                "allow_missing=True to ignore them" % (len(missing), missing[0])
            )
        if warn_missing:
            logger.warning("Skipping %d ids that are not in the index", len(missing))

    def get_embeddings(self, sample_ids=None, label_ids=None, allow_missing=True, warn_missing=False):
        patches = self.config.patches_field is not None
        if label_ids is not None and not patches:
            raise InvalidInputError("This index is not a patches index: pass sample_ids, not label_ids")
        # one state of the collection, however many pages are read
        with self.store.snapshot(self.collection_name):
            if not self.store.collection_exists(self.collection_name):
                asked = label_ids if label_ids is not None else sample_ids
                if asked is not None:  # nothing is indexed yet: every id is missing
                    keys = idmap.validate_ids(asked, "label" if label_ids is not None else "sample")
                    self._report_missing(keys, allow_missing, warn_missing)
                records_ = []
            elif label_ids is not None:
                keys = idmap.validate_ids(label_ids, "label")
                found = self._lookup(keys, with_vectors=True)
                self._report_missing([k for k in keys if k not in found], allow_missing, warn_missing)
                records_ = [found[k] for k in keys if k in found]
            elif sample_ids is not None:
                keys = idmap.validate_ids(sample_ids, "sample")
                if patches:
                    found = self._patches_of_samples(keys, with_vectors=True)
                    by_sample: Dict[str, List[PointRecord]] = {}
                    for record in found.values():
                        by_sample.setdefault(record.payload.get("sample_id"), []).append(record)
                    self._report_missing([k for k in keys if k not in by_sample], allow_missing, warn_missing)
                    records_ = [r for k in keys for r in by_sample.get(k, [])]
                else:
                    found = self._lookup(keys, with_vectors=True)
                    self._report_missing([k for k in keys if k not in found], allow_missing, warn_missing)
                    records_ = [found[k] for k in keys if k in found]
            else:
                records_ = [
                    r
                    for page in self.store.scroll(self.collection_name, with_vectors=True, vector_name=self.config.vector_name)
                    for r in page
                ]

        dim = self.spec.dimension if self.spec is not None else 0
        embeddings = np.array([self._vector(r) for r in records_], dtype=np.float32).reshape(len(records_), dim)
        ids = [self._fiftyone_ids(r) for r in records_]
        out_sample_ids = np.array([s for s, _ in ids], dtype="<U24")
        out_label_ids = np.array([l for _, l in ids], dtype="<U24") if patches else None
        return embeddings, out_sample_ids, out_label_ids

    def cleanup(self):
        """Deletes the Qdrant collection and everything in it."""
        self.store.delete_collection(self.collection_name)
        self._spec = None
        self._ids_cache = None

    def optimize(self):
        """Builds the HNSW index of an embedded collection (servers do this
        by themselves). Queries stay exact until then."""
        self.store.optimize(self.collection_name)

    # -- queries ------------------------------------------------------------

    def _score_to_dist(self, scores: np.ndarray) -> np.ndarray:
        metric = self.config.metric
        if metric == "cosine":
            return 1.0 - scores
        if metric == "dotproduct":
            return -scores
        return scores

    def _dist_to_score_threshold(self, thresh: float) -> float:
        metric = self.config.metric
        if metric == "cosine":
            return 1.0 - thresh
        if metric == "dotproduct":
            return -thresh
        return thresh

    def _parse_neighbors_query(self, query) -> Tuple[np.ndarray, bool]:
        """Query vectors (2-d) and whether a single query was given."""
        if query is None:
            raise InvalidInputError("A query is required")
        if etau.is_str(query):
            return self._vectors_of_ids([query]), True
        if isinstance(query, np.ndarray) and np.issubdtype(query.dtype, np.number) and not np.iscomplexobj(query):
            vectors = query
        else:
            try:
                items = list(query)
            except TypeError:
                raise InvalidInputError(
                    "Invalid query %r: pass an id, a list of ids, a vector or an array of vectors" % (query,)
                ) from None
            if not items:
                raise InvalidInputError("At least one query must be provided")
            if all(isinstance(x, str) for x in items):
                return self._vectors_of_ids(items), False
            try:
                vectors = np.asarray(items, dtype=np.float32)
            except (TypeError, ValueError):
                raise InvalidInputError(
                    "Invalid query: pass an id, a list of ids, a vector or an array of vectors"
                ) from None
        single = vectors.ndim == 1
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        spec = self._require_spec()
        if vectors.ndim != 2 or vectors.shape[1] != spec.dimension:
            raise DimensionMismatchError(
                "Query vectors have shape %s but the index stores %d-d vectors"
                % (vectors.shape, spec.dimension)
            )
        if len(vectors) == 0:
            raise InvalidInputError("At least one query must be provided")
        with np.errstate(over="ignore", invalid="ignore"):
            if not (np.isfinite(vectors).all() and np.isfinite(np.linalg.norm(vectors, axis=1)).all()):
                raise InvalidInputError("Query vectors contain NaN or inf (or values whose norm overflows float32)")
        return vectors, single

    def _vectors_of_ids(self, query_ids: List[str]) -> np.ndarray:
        keys = idmap.validate_ids(query_ids, "label" if self.config.patches_field else "sample")
        self._require_spec()
        found = self._lookup(keys, with_vectors=True)
        missing = [k for k in keys if k not in found]
        if missing:
            raise UnknownIdError(
                "Query id(s) %s are not in the index '%s'. Query by ids that were "
                "indexed (see results.sample_ids%s), or add them with add_to_index()"
                % (missing[:5], self.key or self.collection_name, "/label_ids" if self.config.patches_field else "")
            )
        return np.array([self._vector(found[k]) for k in keys], dtype=np.float32)

    def _current_keys(self) -> Optional[np.ndarray]:
        """The FiftyOne ids the current view allows, or None for all."""
        if not self.has_view:
            return None
        if self.config.patches_field is not None:
            return self.current_label_ids
        return self.current_sample_ids

    def _search(self, vectors: np.ndarray, k: Optional[int], reverse: bool, score_threshold=None):
        """Hits per query vector, restricted to the current view.

        A small view goes to Qdrant as an id filter. A large view is
        answered by asking for more neighbours than ``k`` (in proportion to
        how much of the index the view covers) and dropping those outside
        the view; the request grows until ``k`` in-view hits are found. The
        amount sent to Qdrant thus never grows with the view's size.
        """
        total = self.total_index_size
        if total == 0:
            return [[] for _ in vectors]
        if reverse:
            if self.config.metric not in SIMILARITY_METRICS:
                raise QdrantBackendError(
                    "Least-similarity queries (reverse=True) need metric 'cosine' "
                    "or 'dotproduct'; this index uses '%s'. Rebuild it with one of "
                    "those metrics" % self.config.metric
                )
            vectors = -vectors
        want = total if k is None else min(k, total)
        name, vector_name, params = self.collection_name, self.config.vector_name, self.config.search_params

        def run(limit, restriction=None):
            threshold = score_threshold
            if threshold is not None and reverse:
                threshold = -threshold
            return self.store.query_batch(
                name, vectors, limit, restriction=restriction, score_threshold=threshold,
                vector_name=vector_name, search_params=params,
            )

        view = self._lazy_view(k, score_threshold)
        if view is not None:
            results = self._search_in_view(view, run, len(vectors), want, total)
            if results is not None:
                return results
        allowed = self._current_keys()
        if allowed is None:
            return run(want)
        if len(allowed) == 0:
            return [[] for _ in vectors]
        if len(allowed) <= self._max_filter_ids(total):
            return run(min(want, len(allowed)), self._restriction(list(allowed)))

        allowed_set = set(allowed.tolist())
        want = min(want, len(allowed))
        limit = want if k is None else min(total, math.ceil(want * total / len(allowed) * 2) + 16)
        return self._oversample(run, want, total, limit, lambda keys: allowed_set.intersection(keys))

    def _max_filter_ids(self, total: int) -> int:
        """The largest view sent to Qdrant as an id filter.

        Filtering costs ~0.5 ms plus ~4 us per id of the view (listed in
        one MongoDB document, converted, matched). Oversampling costs one
        search of the index plus a MongoDB round trip or two (~3 ms each)
        to check candidates (~2 k * total / view size of them). With an
        HNSW index the search is cheap and the two break even near
        max(2000, 6 * sqrt(total)) ids; while the collection is searched
        exhaustively (embedded, not optimized: ~75 ns per point at 512-d)
        the search dominates, and listing wins up to ~total / 40."""
        bound = max(_MAX_FILTER_IDS, int(6 * math.sqrt(total)))
        if self.store.searches_exhaustively(self.collection_name):
            bound = max(bound, total // _EXHAUSTIVE_FILTER_DIVISOR)
        return min(bound, _MAX_LISTED_IDS)

    def _lazy_view(self, k, score_threshold):
        """The current view when :meth:`_search` may test candidates against
        it in MongoDB rather than list all of its ids (FiftyOne's
        ``current_sample_ids``, which costs time in proportion to the view
        on every ``use_view()``, so on every query of the App or of
        ``view.sort_by_similarity()``): a top-k query of a sample index on a
        plain view of the index's dataset whose ids are not listed yet, with
        ``use_view()``'s default missing-ids handling."""
        if k is None or score_threshold is not None or self.config.patches_field is not None:
            return None
        if self._curr_sample_ids is not None or self._curr_view_allow_missing is not True or self._curr_view_warn_missing:
            return None
        if not self.has_view or not self._is_plain_sample_view(self._curr_view):
            return None
        return self._curr_view

    def _is_plain_sample_view(self, samples) -> bool:
        """Samples of this index's dataset, one document each: its ids can
        be listed and tested with the view's own MongoDB pipeline."""
        try:
            root = samples._root_dataset
            return not (
                samples._is_generated
                or samples._is_dynamic_groups
                or root is not self._samples._root_dataset
                or root.media_type == "group"
            )
        except AttributeError:
            return False

    def _search_in_view(self, view, run, num_queries: int, want: int, total: int):
        """Top-``want`` hits per query within ``view``, without listing the
        view's ids.

        A view of at most :meth:`_max_filter_ids` samples (listed up to that
        bound) goes to Qdrant as an id filter. For a larger view Qdrant
        returns more neighbours than ``want``, enough if the view were just
        over the bound (4x more if that is not enough), and MongoDB tells
        which of them are in the view, best first and a few at a time: the
        work follows ``k`` and the index size, never the view's size.
        Returns None if that is still not enough (a view mostly outside the
        index), for the caller to list the view's ids instead.
        """
        bound = self._max_filter_ids(total)
        listed = idmap.collect_view_ids(view, limit=bound + 1)
        if not listed:
            return [[] for _ in range(num_queries)]
        if len(listed) <= bound:
            return run(min(want, len(listed)), self._restriction(listed))

        def in_mongo_view(keys: List[str]) -> Set[str]:
            valid = [key for key in keys if idmap.is_object_id(key)]
            return set(idmap.collect_view_ids(view.select(valid), limit=len(valid))) if valid else set()

        limit = min(total, math.ceil(want * total / bound * 2) + 16)
        return self._oversample(run, want, total, limit, in_mongo_view, max_rounds=2)

    def _oversample(self, run, want: int, total: int, limit: int, members: Callable[[List[str]], Set[str]], max_rounds=None):
        """Top-``want`` in-view hits per query from ``run(limit)`` hits,
        ``members(keys)`` telling which keys are in the view.

        Candidates are checked best first and a few at a time (a check may
        be a MongoDB round trip), about as many as the in-view rate seen so
        far needs; ``limit`` grows 4x while that is not enough. Returns
        None after ``max_rounds`` searches without enough hits."""
        in_view: Dict[str, bool] = {}
        rounds = 0
        while True:
            all_hits = run(limit)
            longest = max((len(hits) for hits in all_hits), default=0)
            checked, step = 0, 16 * want + 16  # enough for views over ~10%
            while True:
                upto = min(longest, checked + step)
                new = list({self._hit_key(h) for hits in all_hits for h in hits[checked:upto]} - in_view.keys())
                if new:
                    found_in = members(new)
                    in_view.update((key, key in found_in) for key in new)
                checked = upto
                results = [[h for h in hits[:checked] if in_view[self._hit_key(h)]] for hits in all_hits]
                found = min((len(r) for r in results), default=want)
                if found >= want:
                    return [r[:want] for r in results]
                if checked >= longest:
                    break
                step = 4 * checked if found == 0 else max(16, math.ceil(checked * (want / found * 1.25 - 1)))
            if limit >= total:
                return [r[:want] for r in results]
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                return None
            limit = min(total, limit * 4)

    def _hit_key(self, hit) -> str:
        if self.config.patches_field is not None:
            return hit.payload.get("label_id") or idmap.from_point_id(hit.id)
        return hit.payload.get("sample_id") or idmap.from_point_id(hit.id)

    def _format_hits(self, all_hits, reverse: bool, single: bool, return_dists: bool):
        sample_ids, label_ids, dists = [], [], []
        patches = self.config.patches_field is not None
        for hits in all_hits:
            ids = [self._fiftyone_ids(h) for h in hits]
            sample_ids.append([s for s, _ in ids])
            label_ids.append([l for _, l in ids])
            scores = np.array([h.score for h in hits], dtype=np.float64)
            if reverse:
                scores = -scores
            dists.append(self._score_to_dist(scores).tolist())
        if single:
            sample_ids, label_ids, dists = sample_ids[0], label_ids[0], dists[0]
        if not patches:
            label_ids = None
        if return_dists:
            return sample_ids, label_ids, dists
        return sample_ids, label_ids

    def _kneighbors(self, query=None, k=None, reverse=False, aggregation=None, return_dists=False):
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise InvalidInputError("k must be a positive integer or None, got %r" % (k,))
        if aggregation not in (None, "mean"):
            raise InvalidInputError("Unsupported aggregation %r. Supported values are ('mean',)" % (aggregation,))
        if query is None:
            return self._full_index_neighbors(k, return_dists)
        vectors, single = self._parse_neighbors_query(query)
        if aggregation == "mean":
            vectors, single = vectors.mean(axis=0, keepdims=True), True
        hits = self._search(vectors, k, reverse)
        return self._format_hits(hits, reverse, single, return_dists)

    def _current_vectors(self) -> Tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the current view, in current-id order."""
        keys = self._current_keys()
        if keys is None:
            keys = self.label_ids if self.config.patches_field is not None else self.sample_ids
        with self.store.snapshot(self.collection_name):
            found = self._lookup(list(keys), with_vectors=True)
        keys = np.array([k for k in keys if k in found])
        vectors = np.array([self._vector(found[k]) for k in keys], dtype=np.float32)
        return keys, vectors.reshape(len(keys), self._require_spec().dimension)

    def _to_current_inds(self, hits_per_query, keys: np.ndarray):
        position = {k: i for i, k in enumerate(keys.tolist())}
        inds, dists = [], []
        for hits in hits_per_query:
            pairs = [(position[self._hit_key(h)], h.score) for h in hits if self._hit_key(h) in position]
            inds.append(np.array([p for p, _ in pairs], dtype=int))
            dists.append(self._score_to_dist(np.array([s for _, s in pairs], dtype=np.float64)))
        return inds, dists

    def _full_index_neighbors(self, k, return_dists):
        """Neighbours of every point of the current view (integer indexes
        into the current ids), in batched engine calls."""
        keys, vectors = self._current_vectors()
        inds, dists = [], []
        for start in range(0, len(keys), 256):
            hits = self._search(vectors[start : start + 256], None if k is None else k + 1, False)
            i, d = self._to_current_inds(hits, keys)
            inds.extend(i)
            dists.extend(d)
        return (inds, dists) if return_dists else inds

    def _radius_neighbors(self, query=None, thresh=None, return_dists=False):
        if thresh is None:
            raise InvalidInputError("A distance threshold is required")
        try:
            thresh = float(thresh)
        except (TypeError, ValueError):
            raise InvalidInputError("The distance threshold must be a number, got %r" % (thresh,)) from None
        if not math.isfinite(thresh):
            raise InvalidInputError("The distance threshold must be finite, got %r" % (thresh,))
        threshold = self._dist_to_score_threshold(thresh)
        if query is None:
            keys, vectors = self._current_vectors()
            inds, dists = [], []
            for start in range(0, len(keys), 256):
                hits = self._search(vectors[start : start + 256], None, False, score_threshold=threshold)
                i, d = self._to_current_inds(hits, keys)
                inds.extend(i)
                dists.extend(d)
            return (inds, dists) if return_dists else inds
        vectors, single = self._parse_neighbors_query(query)
        hits = self._search(vectors, None, False, score_threshold=threshold)
        return self._format_hits(hits, False, single, return_dists)

    # -- models -------------------------------------------------------------

    def get_model(self):
        if self._model is None and self.config.model_spec is not None:
            from .models import load_model_from_spec

            self._model = load_model_from_spec(self.config.model_spec)
        return super().get_model()

    def _build_from_caller(self, args: Optional[Dict[str, Any]]) -> None:
        """Builds the index here when called from compute_similarity(), for
        the cases we do better than FiftyOne's generic path: a model build
        (streamed) and precomputed embeddings of plain samples (ids listed
        from raw BSON). FiftyOne then skips its own pass (``is_external``)."""
        self._building = True
        if not args:
            return
        build = self._caller_build(args)
        if build is None:
            return
        try:
            build()
        except BaseException:
            self._forget_failed_build()
            raise
        self._built_by_stream = self.total_index_size > 0

    def _caller_build(self, args: Dict[str, Any]) -> Optional[Callable[[], None]]:
        samples, embeddings = args.get("samples"), args.get("embeddings")
        if args.get("embeddings_exist") or args.get("roi_field") is not None:
            return None
        model = args.get("_model")
        if model is not None and embeddings is None:
            self._model = model
            return functools.partial(
                self._stream_build,
                samples=samples,
                model=model,
                patches_field=args.get("patches_field"),
                batch_size=args.get("batch_size"),
                num_workers=args.get("num_workers"),
                skip_failures=args.get("skip_failures", True),
                progress=args.get("progress"),
            )
        if (
            isinstance(embeddings, (np.ndarray, list, tuple))
            and args.get("patches_field") is None
            and self._is_plain_sample_view(samples)
        ):
            return functools.partial(self._add_precomputed, samples, embeddings, args.get("progress"))
        return None

    def _add_precomputed(self, samples, embeddings, progress) -> None:
        """``compute_similarity(embeddings=X)``: one row per sample of
        ``samples``, in ``samples.values("id")`` order."""
        embeddings = _as_2d_numeric(embeddings)  # values are checked with their ids below
        sample_ids = np.array([i for batch in idmap.list_view_ids(samples) for i in batch], dtype="<U24")
        if len(sample_ids) != len(embeddings):  # FiftyOne's own check and message
            raise ValueError(
                "The number of embeddings (%d) in these results no longer matches the "
                "number of samples (%d) in the collection. You must regenerate the "
                "results" % (len(embeddings), len(sample_ids))
            )
        # ids straight from MongoDB's _id: valid and unique by construction
        self._add_to_index(
            embeddings, sample_ids, None, overwrite=True, allow_existing=True, warn_existing=False,
            batch_size=_PAGE_SIZE, progress=progress, checked_ids=True,
        )
        self.reload()

    def _stream_build(self, samples, model, patches_field, batch_size, num_workers, skip_failures, progress):
        """Embeds and upserts chunk by chunk; ids already in the collection
        (an interrupted earlier build) are not embedded again."""
        from .models import format_failures, iter_embedding_batches

        existing = self.label_ids if patches_field is not None else self.sample_ids
        batches = iter_embedding_batches(
            samples, model, patches_field=patches_field, batch_size=batch_size, num_workers=num_workers,
            skip_ids=set(existing.tolist()), progress=progress,
        )
        session = None
        try:
            for batch in batches:
                self.add_to_index(
                    batch.embeddings, batch.sample_ids, label_ids=batch.label_ids, reload=False, progress=False
                )
                if session is None:  # hold the write lock for the rest
                    session = self.store.batch(self.collection_name)
                    session.__enter__()
        finally:
            batches.close()
            if session is not None:
                session.__exit__(None, None, None)
        if batches.failures:
            if not skip_failures:
                raise QdrantBackendError(format_failures(batches.failures))
            logger.warning("%s", format_failures(batches.failures))
        self.reload()

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        return cls(samples, config, brain_key)

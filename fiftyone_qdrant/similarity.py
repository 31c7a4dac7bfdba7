"""The FiftyOne brain contract: config, method and index for Qdrant.

These classes are stored by path in FiftyOne run records
(``fiftyone_qdrant.similarity.QdrantSimilarityConfig`` ...): never move them.

Distances follow the sklearn backend: smaller is more similar. For
``cosine`` the distance is ``1 - cosine similarity``, for ``dotproduct`` it
is ``-dot product``, for ``euclidean`` and ``manhattan`` it is the distance
itself.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import eta.core.utils as etau
import fiftyone.core.utils as fou
from fiftyone.brain.similarity import (
    DuplicatesMixin,
    Similarity,
    SimilarityConfig,
    SimilarityIndex,
)

from . import brain_internals, build, planner, points, records, resume, views
from .connection import ConnectionSettings
from .store import METRICS, SIMILARITY_METRICS, CollectionSpec, validate_collection_name
from .errors import (
    CollectionNotFoundError,
    ConfigError,
    InvalidInputError,
    QdrantBackendError,
    UnknownIdError,
)
from .queries import image_queries, query_vectors, read_query_image
from .settings import (
    parse_flag,
    port_setting,
    positive_int,
    strict_bool,
    string_setting,
    validate_partial,
    validate_quantization,
)

logger = logging.getLogger(__name__)

# How queries of a quantized index search unless its search_params say otherwise
QUANTIZED_SEARCH_DEFAULTS = {"rescore": True, "oversampling": 3.0}
#: How wide an HNSW search is unless search_params say otherwise. Qdrant's
#: default (ef_construct: 100) loses recall as a collection grows: recall@10
#: 0.985 / 0.968 / 0.812 at 1M / 2M / 10M clustered 512-d int8 vectors;
#: 512 gives 0.997 / 0.994 / 0.939 (p50 1.9 / 2.5 / 5.5 ms), 1024 gives
#: 0.960 at 10M at 6.8 ms (benchmarks/bench_10m.py). FiftyOne users compare
#: answers with exact backends. A search never looks at fewer than its
#: limit; exhaustive (unindexed) searches ignore it.
DEFAULT_HNSW_EF = 1024


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
        quantization_config (None): Qdrant's quantization of the stored
            vectors, e.g. ``{"scalar": {"type": "int8", "always_ram": True}}``,
            ``{"product": {"compression": "x16"}}`` or ``{"binary": {}}``;
            built with the HNSW index. Queries rescore with the original
            vectors unless ``search_params`` says otherwise
        on_disk (None): keep the original vectors on disk (memory-mapped)
            rather than in RAM
        on_disk_payload (None): keep payloads on disk
        vector_name (None): the named dense vector to use, for collections
            with named vectors (e.g. written by the streaming sink)
        search_params (None): Qdrant search params for queries, e.g.
            ``{"hnsw_ef": 128}`` or ``{"exact": True}``. Default
            ``{"hnsw_ef": 1024}`` (see DEFAULT_HNSW_EF)
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
        quantization_config: Optional[dict] = None,
        on_disk: Optional[bool] = None,
        on_disk_payload: Optional[bool] = None,
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
        self.replication_factor = positive_int("replication_factor", replication_factor)
        self.shard_number = positive_int("shard_number", shard_number)
        self.write_consistency_factor = positive_int("write_consistency_factor", write_consistency_factor)
        self.hnsw_config = validate_partial("hnsw_config", hnsw_config, "HnswConfigDiff")
        self.optimizers_config = validate_partial("optimizers_config", optimizers_config, "OptimizersConfigDiff")
        self.wal_config = validate_partial("wal_config", wal_config, "WalConfigDiff")
        self.quantization_config = validate_quantization(quantization_config)
        self.on_disk = strict_bool("on_disk", on_disk)
        self.on_disk_payload = strict_bool("on_disk_payload", on_disk_payload)
        self.search_params = validate_partial("search_params", search_params, "SearchParams")
        self.vector_name = vector_name
        self.path = path
        self.timeout = timeout
        self.model_spec = model_spec

        # Credentials are private so that they are never serialized
        self.path = string_setting("path", path)
        self._url = string_setting("url", url)
        self._api_key = string_setting("api_key", api_key)
        self._grpc_port = port_setting(grpc_port)
        self._prefer_grpc = parse_flag("prefer_grpc", prefer_grpc)
        self._https = parse_flag("https", https)

        self.connection_settings()  # validates, never connects

    @property
    def method(self) -> str:
        return "qdrant"

    url = property(lambda self: self._url, lambda self, v: setattr(self, "_url", string_setting("url", v)))
    api_key = property(
        lambda self: self._api_key,
        lambda self, v: setattr(self, "_api_key", string_setting("api_key", v)),
    )
    grpc_port = property(lambda self: self._grpc_port, lambda self, v: setattr(self, "_grpc_port", port_setting(v)))
    prefer_grpc = property(
        lambda self: self._prefer_grpc, lambda self, v: setattr(self, "_prefer_grpc", parse_flag("prefer_grpc", v))
    )
    https = property(lambda self: self._https, lambda self, v: setattr(self, "_https", parse_flag("https", v)))

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
        self.path = string_setting("path", self.path)  # the setters check the others

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
            quantization_config=self.quantization_config,
            on_disk=self.on_disk,
            on_disk_payload=self.on_disk_payload,
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
            fou.ensure_package("qdrant-edge-py")  # the local service's engine
        settings.open().list_collections()

    def ensure_usage_requirements(self):
        fou.ensure_package("qdrant-client")

    def register_run(self, samples, key, overwrite=True, cleanup=True):
        """Everything that can fail (collection naming, the attached
        collection's vector, resuming) is checked before FiftyOne registers
        the run, so a failure leaves no brain key behind. The run is then
        saved at once with results marked incomplete: a build killed later
        loads as its partial index, and re-running the same call resumes it."""
        resuming = key is not None and not overwrite and records.is_interrupted_build(samples, key, self.config)
        if resuming:
            run_doc = samples._root_dataset._doc.brain_methods[key]
            stored = run_doc.config or {}
            # resume in the collection the interrupted build was writing
            if self.config.collection_name is None:
                self.config.collection_name = stored.get("collection_name")
            args = brain_internals.caller_compute_similarity_args()
            has_results = records.saved_results(run_doc) is not None  # loadable by load_brain_results()
            resume.check_resumable(self.config, samples, key, stored, has_results, args)
        else:
            self.validate_run(samples, key, overwrite=overwrite)
        self._prepare_collection(samples, key)
        if resuming:
            type(self).delete_run(samples, key, cleanup=False)
        super().register_run(samples, key, overwrite=overwrite, cleanup=cleanup)
        try:
            index = QdrantSimilarityIndex(samples, self.config, key, backend=self)
            index._building = True
            super().save_run_results(samples, key, index, overwrite=True, cache=False)
        except BaseException:
            type(self).delete_run(samples, key, cleanup=False)
            raise
        self._registered = (key, index)

    @classmethod
    def save_run_results(cls, samples, key, run_results, overwrite=True, cache=True):
        if run_results is not None:
            run_results._building = False  # the build is over, with or without a brain key
        super().save_run_results(samples, key, run_results, overwrite=overwrite, cache=cache)
        if run_results is None or key is None:
            return
        store = run_results.store
        if store.collection_exists(run_results.collection_name):
            spec = run_results.spec
            records.save(store, run_results.collection_name, records.make_record(run_results, spec.dimension if spec else None))

    def initialize(self, samples, brain_key):
        registered = getattr(self, "_registered", None)
        self._registered = None
        if registered is not None and registered[0] == brain_key and brain_key is not None:
            index = registered[1]
        else:
            self._prepare_collection(samples, brain_key)
            index = QdrantSimilarityIndex(samples, self.config, brain_key, backend=self)
            index._building = True
        index._build_from_caller(brain_internals.caller_compute_similarity_args())
        return index

    def _prepare_collection(self, samples, key) -> None:
        """Names the collection of a new index (any brain key and dataset
        name gives a valid, unused name) and checks that an existing
        collection has the dense vector to use."""
        store = self.config.connection_settings().open()
        if self.config.collection_name is None:
            self.config.collection_name = records.default_collection_name(store, samples._root_dataset.name, key)
        elif store.collection_exists(self.config.collection_name):
            spec = store.get_spec(self.config.collection_name, self.config.vector_name)  # raises ConfigError
            if self.config.metric != spec.metric:
                logger.info(
                    "Collection '%s' uses metric '%s'; using it instead of '%s'",
                    self.config.collection_name, spec.metric, self.config.metric,
                )
                self.config.metric = spec.metric

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


class QdrantSimilarityIndex(SimilarityIndex, DuplicatesMixin):
    """A similarity index backed by a Qdrant collection.

    It delegates: :mod:`.points` maps FiftyOne ids to points,
    :mod:`.build` validates and writes embeddings, :mod:`.planner` decides
    how a query restricted to a view is answered, :mod:`.views` lists and
    tests a view in MongoDB."""

    def __init__(self, samples, config: QdrantSimilarityConfig, brain_key, backend=None):
        self._store = None
        self._point_map: Optional[points.PointMap] = None
        self._spec: Optional[CollectionSpec] = None
        self._built_by_stream = False
        self._building = False
        self._field_is_source = False
        self._interrupted = False
        self._known_dimension: Optional[int] = None
        self._view_sizes: Dict[str, int] = {}  # how many ids a view listed last (a hint: see planner)
        self._view_sizes_lock = threading.Lock()
        # the last view listed was small enough to filter: a new view is then
        # listed before the search, not beside it (a session's views tend to
        # be alike, and a small one would wait behind that search)
        self._small_views_lately = False
        super().__init__(samples, config, brain_key, backend=backend)
        DuplicatesMixin.__init__(self)
        self._initialize()

    # -- setup --------------------------------------------------------------

    def _initialize(self):
        if self.config.collection_name is None:
            self.config.collection_name = records.default_collection_name(
                self.store, self._samples._root_dataset.name, self.key
            )
            if self.key is not None:
                self.save_config()

    def attributes(self):
        # what a loaded index needs to know: whether its build finished, and
        # the dimension its collection had (a collection deleted under the
        # run is then an error, not an empty index)
        return super().attributes() + ["build_complete", "dimension"]

    @property
    def build_complete(self) -> bool:
        """False while the build runs, and for a loaded index whose build
        never finished (its process was killed): re-run compute_similarity()
        with the same arguments to resume it."""
        return not (self._building or self._interrupted)

    @property
    def dimension(self) -> Optional[int]:
        spec = self._spec if self._spec is not None else (self.spec if self._collection_exists() else None)
        return spec.dimension if spec is not None else self._known_dimension

    def _collection_exists(self) -> bool:
        return self.store.collection_exists(self.collection_name)

    def _check_collection(self) -> bool:
        """Whether the collection exists; raises if it did and is gone (a
        deleted collection or store must not look like an empty index)."""
        if self._collection_exists():
            return True
        if self._spec is not None or self._known_dimension is not None:
            raise CollectionNotFoundError(
                "Qdrant collection '%s' of index %r no longer exists in the %s: it was deleted (or its store "
                "moved) under this index. Rebuild it with compute_similarity(), or delete the run with "
                "dataset.delete_brain_run(%r)"
                % (self.collection_name, self.key or self.collection_name,
                   self.config.connection_settings().describe(), self.key)
            )
        return False

    @property
    def store(self):
        if self._store is None:
            self._store = self.config.connection_settings().open()
        return self._store

    @property
    def _points(self) -> points.PointMap:
        if self._point_map is None or self._point_map.collection_name != self.collection_name:
            self._point_map = points.PointMap(
                self.store, self.collection_name, self.config.vector_name, self.config.patches_field is not None
            )
        return self._point_map

    @property
    def client(self):
        """The ``qdrant_client.QdrantClient`` of the index's store: the local
        Qdrant service of the embedded store, or the server. Available before
        the collection exists."""
        return self.store.client

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
        if spec is None and not self._check_collection():  # raises if it existed
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
        if self._points.counts_by_listing():
            return len(self._points.index_ids()[0])
        return self.store.count(self.collection_name)

    @property
    def sample_ids(self):
        return self._points.index_ids()[0]

    @property
    def label_ids(self):
        return self._points.index_ids()[1]

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
        batch_size=build.DEFAULT_ROWS,
        progress=None,
    ):
        """Adds embeddings in batches; everything is validated first, so bad
        input raises before anything is written."""
        policy = build.AddPolicy(overwrite=overwrite, allow_existing=allow_existing, warn_existing=warn_existing)
        batches = build.array_batches(embeddings, sample_ids, label_ids)
        total = len(sample_ids) if isinstance(sample_ids, (list, tuple, np.ndarray)) else None  # ids may be any iterable
        try:
            build.write(self, batches, policy=policy, rows=batch_size, progress=progress, total=total)
        except Exception:
            self._forget_failed_build()
            raise
        if reload:
            self.reload()

    def _forget_failed_build(self):
        """A failed initial build must not leave a dangling brain key."""
        if self._building and self.key is not None:
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
            keys = points.validate_ids(label_ids, "label")
            found = self._points.lookup(keys, with_vectors=False)
        elif self.config.patches_field is not None:
            keys = points.validate_ids(sample_ids, "sample")
            found = self._points.patches_of_samples(keys, with_vectors=False)
            present = {r.payload.get("sample_id") for r in found.values()}
            points.report_missing([k for k in keys if k not in present], allow_missing, warn_missing)
            keys = list(found)
        else:
            keys = points.validate_ids(sample_ids, "sample")
            found = self._points.lookup(keys, with_vectors=False)

        if label_ids is not None or self.config.patches_field is None:
            points.report_missing([k for k in keys if k not in found], allow_missing, warn_missing)

        removed = [k for k in keys if k in found]
        point_ids = self._points.all_point_ids(removed, found)
        with self.store.batch(self.collection_name):
            for start in range(0, len(point_ids), points.PAGE_SIZE):
                self.store.delete(self.collection_name, point_ids[start : start + points.PAGE_SIZE])
        self._points.forget()
        self._clear_embeddings_field(removed)
        if reload:
            self.reload()

    def _clear_embeddings_field(self, keys: List[str]) -> None:
        field = self.config.embeddings_field
        if field is None or not keys:
            return
        import fiftyone.brain.internal.core.utils as fbu

        patches = self.config.patches_field is not None
        fbu.remove_embeddings(
            self._samples,
            field,
            sample_ids=None if patches else list(keys),
            label_ids=list(keys) if patches else None,
            patches_field=self.config.patches_field,
        )

    def get_embeddings(self, sample_ids=None, label_ids=None, allow_missing=True, warn_missing=False):
        patches = self.config.patches_field is not None
        if label_ids is not None and not patches:
            raise InvalidInputError("This index is not a patches index: pass sample_ids, not label_ids")

        def missing(keys: List[str]) -> None:
            points.report_missing(keys, allow_missing, warn_missing)

        # one state of the collection, however many pages are read
        with self.store.snapshot(self.collection_name):
            if self._check_collection():
                found = self._points.records(sample_ids, label_ids, missing)
            else:
                found = []
                asked = label_ids if label_ids is not None else sample_ids
                if asked is not None:  # nothing is indexed yet: every id is missing
                    missing(points.validate_ids(asked, "label" if label_ids is not None else "sample"))
        return self._points.arrays(found, self.spec.dimension if self.spec is not None else 0)

    def cleanup(self):
        """Deletes the Qdrant collection and everything in it."""
        self.store.delete_collection(self.collection_name)
        self._spec = None
        self._known_dimension = None  # deleted on purpose: an empty index now
        self._points.forget()

    def optimize(self):
        """Builds the collection's HNSW index now and returns when it is
        done on the embedded store (a server builds it in the background)."""
        self.store.optimize(self.collection_name)

    # -- queries ------------------------------------------------------------

    def _search_params(self) -> Dict[str, Any]:
        """The config's search params, with defaults where they say nothing:
        ``hnsw_ef`` DEFAULT_HNSW_EF unless exact; with quantization,
        QUANTIZED_SEARCH_DEFAULTS: rescoring alone only reorders the
        quantized top k, so 3x the candidates are rescored with the
        original vectors (recall@10 0.825 -> 0.999 for int8 on 6,000
        clustered 64-d vectors; at 50k x 512, benchmarks/bench_quantization.py)."""
        params = dict(self.config.search_params or {})
        if not params.get("exact"):
            params.setdefault("hnsw_ef", DEFAULT_HNSW_EF)
        if self.config.quantization_config:
            params["quantization"] = dict(QUANTIZED_SEARCH_DEFAULTS, **(params.get("quantization") or {}))
        return params

    def _score_to_dist(self, scores: np.ndarray) -> np.ndarray:
        metric = self.config.metric
        if metric == "cosine":
            return 1.0 - scores
        if metric == "dotproduct":
            return -scores
        return scores

    _dist_to_score_threshold = _score_to_dist  # the same map both ways

    def _parse_query(self, query):
        """FiftyOne's query parsing (ids, vectors, prompts), plus images:
        a local image path or an ``http(s)://`` URL, a PIL image, an
        ``HxWxC`` (or ``HxW`` uint8) array, or a list of these, embedded
        with the index's model (``get_model()``)."""
        images = image_queries(query)
        if images is None:
            return super()._parse_query(query)
        if self.config.model_spec is None and getattr(self.config, "model", None) is None:
            raise InvalidInputError(
                "Image queries are embedded with the index's model, and index '%s' has none (it was built "
                "from precomputed embeddings): pass an embedding vector instead" % (self.key or self.collection_name)
            )
        model = self.get_model()
        import torch

        with model, torch.inference_mode():
            vectors = np.asarray(model.embed_all([read_query_image(image) for image in images]), dtype=np.float32)
        return vectors.reshape(len(images), -1)

    def _parse_neighbors_query(self, query) -> Tuple[np.ndarray, bool]:
        """Query vectors (2-d) and whether a single query was given."""
        return query_vectors(query, lambda: self._require_spec().dimension, self._vectors_of_ids)

    def _vectors_of_ids(self, query_ids: List[str]) -> np.ndarray:
        keys = points.validate_ids(query_ids, "label" if self.config.patches_field else "sample")
        self._require_spec()
        found = self._points.lookup(keys, with_vectors=True)
        missing = [k for k in keys if k not in found]
        if missing:
            raise UnknownIdError(
                "Query id(s) %s are not in the index '%s'. Query by ids that were "
                "indexed (see results.sample_ids%s), or add them with add_to_index()"
                % (missing[:5], self.key or self.collection_name, "/label_ids" if self.config.patches_field else "")
            )
        return np.array([points.vector_of(found[k]) for k in keys], dtype=np.float32)

    def _current_keys(self) -> Optional[np.ndarray]:
        """The FiftyOne ids the current view allows, or None for all."""
        if not self.has_view:
            return None
        if self.config.patches_field is not None:
            return self.current_label_ids
        return self.current_sample_ids

    def _search(self, vectors: np.ndarray, k: Optional[int], reverse: bool, score_threshold=None):
        """Hits per query vector, restricted to the current view (see
        :mod:`.planner` for how)."""
        if self.config.metric == "cosine":
            zero = np.flatnonzero(np.linalg.norm(vectors, axis=1) == 0)
            if zero.size:
                raise InvalidInputError(
                    "Query vector %d is all zeros, which has no cosine similarity; query with a nonzero "
                    "vector" % zero[0]
                )
        total = self.total_index_size
        if total == 0:
            self._check_collection()  # a collection deleted under the index is an error
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
        run = self._runner(vectors, -score_threshold if score_threshold is not None and reverse else score_threshold)
        bound = self._max_filter_ids(total)
        hit_key, restrict = self._points.key, self._points.restriction

        view = self._lazy_view(k, score_threshold)
        if view is not None:
            pipeline = view._pipeline()
            view_key = str(pipeline)

            def list_ids(limit: int) -> List[str]:
                listed = views.collect_view_ids(view, limit=limit, pipeline=pipeline)
                with self._view_sizes_lock:  # listings finish in the planner's threads
                    self._view_sizes[view_key] = len(listed)
                    self._small_views_lately = len(listed) < limit
                    while len(self._view_sizes) > 64:  # the App's recent views
                        self._view_sizes.pop(next(iter(self._view_sizes)))
                return listed

            results = planner.search_unlisted(
                run, want, total, bound, list_ids, views.members_of(view, pipeline), restrict, hit_key,
                len(vectors), last_size=self._view_sizes.get(view_key),
                listing_head_start=None if self._small_views_lately else planner.LISTING_HEAD_START_S,
            )
            if results is not None:
                return results
        allowed = self._current_keys()
        allowed = None if allowed is None else allowed.tolist()
        return planner.search_listed(run, want, k, total, allowed, bound, restrict, hit_key, len(vectors))

    def _runner(self, vectors: np.ndarray, score_threshold: Optional[float]) -> planner.Run:
        """The planner's ``run(limit, restriction)`` for ``vectors``."""
        name, vector_name, params = self.collection_name, self.config.vector_name, self._search_params()

        payload = self._points.hit_payload()

        def run(limit: int, restriction=None):
            return self.store.query_batch(
                name, vectors, limit, restriction=restriction, score_threshold=score_threshold,
                vector_name=vector_name, search_params=params, with_payload=payload,
            )

        # points with foreign ids may repeat a FiftyOne id: such repeats
        # must not take the place of other ids in the top k
        if self._points.uses_payload_ids():
            return planner.deduplicated(run, self.store.count(name), self._points.key)
        return run

    def _max_filter_ids(self, total: int) -> int:
        return planner.max_filter_ids(total, self.store.searches_exhaustively(self.collection_name))

    def _lazy_view(self, k, score_threshold):
        """The current view when :meth:`_search` may test candidates against
        it in MongoDB rather than list all of its ids (FiftyOne's
        ``current_sample_ids``, which costs time in proportion to the view
        on every ``use_view()``, so on every query of the App or of
        ``view.sort_by_similarity()``): a top-k query of a sample index on a
        plain view of the index's dataset whose ids are not listed yet, with
        ``use_view()``'s default missing-ids handling."""
        if k is None or score_threshold is not None or self.config.patches_field is not None or not self.has_view:
            return None
        state = brain_internals.view_state(self)
        if state is None or state.ids_listed or state.allow_missing is not True or state.warn_missing:
            return None
        if not views.is_plain_sample_view(state.view, self._samples._root_dataset):
            return None
        return state.view

    def _format_hits(self, all_hits, reverse: bool, single: bool, return_dists: bool):
        sample_ids, label_ids, dists = [], [], []
        for hits in all_hits:
            ids = [self._points.fiftyone_ids(h) for h in hits]
            sample_ids.append([s for s, _ in ids])
            label_ids.append([l for _, l in ids])
            scores = np.array([h.score for h in hits], dtype=np.float64)
            if reverse:
                scores = -scores
            dists.append(self._score_to_dist(scores).tolist())
        if single:
            sample_ids, label_ids, dists = sample_ids[0], label_ids[0], dists[0]
        if self.config.patches_field is None:
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
            return self._full_index_neighbors(None if k is None else k + 1, None, return_dists)
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
            found = self._points.lookup(list(keys), with_vectors=True)
        keys = np.array([k for k in keys if k in found])
        vectors = np.array([points.vector_of(found[k]) for k in keys], dtype=np.float32)
        return keys, vectors.reshape(len(keys), self._require_spec().dimension)

    def _full_index_neighbors(self, k: Optional[int], score_threshold: Optional[float], return_dists: bool):
        """Neighbours of every point of the current view (integer indexes
        into the current ids), in batched engine calls."""
        keys, vectors = self._current_vectors()
        position = {key: i for i, key in enumerate(keys.tolist())}
        inds, dists = [], []
        for start in range(0, len(keys), 256):
            for hits in self._search(vectors[start : start + 256], k, False, score_threshold=score_threshold):
                pairs = [(position[key], h.score) for h in hits for key in (self._points.key(h),) if key in position]
                inds.append(np.array([p for p, _ in pairs], dtype=int))
                dists.append(self._score_to_dist(np.array([s for _, s in pairs], dtype=np.float64)))
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
            return self._full_index_neighbors(None, threshold, return_dists)
        vectors, single = self._parse_neighbors_query(query)
        hits = self._search(vectors, None, False, score_threshold=threshold)
        return self._format_hits(hits, False, single, return_dists)

    # -- models and builds --------------------------------------------------

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
        self._field_is_source = bool(args.get("embeddings_exist"))
        if args.get("embeddings_exist") or args.get("roi_field") is not None:
            return
        samples, embeddings, model = args.get("samples"), args.get("embeddings"), args.get("_model")
        try:
            if model is not None and embeddings is None:
                self._model = model
                self._stream_build(samples, model, args)
            elif (
                isinstance(embeddings, (np.ndarray, list, tuple))
                and args.get("patches_field") is None
                and views.is_plain_sample_view(samples, self._samples._root_dataset)
            ):
                self._add_precomputed(samples, embeddings, args.get("progress"))
            else:
                return  # FiftyOne's generic path, which calls add_to_index()
        except BaseException:
            self._forget_failed_build()
            raise
        self._built_by_stream = self.total_index_size > 0

    def _add_precomputed(self, samples, embeddings, progress) -> None:
        """``compute_similarity(embeddings=X)``: one row per sample of
        ``samples``, in ``samples.values("id")`` order."""
        embeddings = build.as_2d_numeric(embeddings)  # values are checked with their ids below
        sample_ids = np.array([i for batch in views.list_view_ids(samples) for i in batch], dtype="<U24")
        if len(sample_ids) != len(embeddings):  # FiftyOne's own check and message
            raise ValueError(
                "The number of embeddings (%d) in these results no longer matches the "
                "number of samples (%d) in the collection. You must regenerate the "
                "results" % (len(embeddings), len(sample_ids))
            )
        # ids straight from MongoDB's _id: valid and unique by construction
        batches = build.array_batches(embeddings, sample_ids)
        build.write(self, batches, progress=progress, total=len(sample_ids), trusted_ids=True)
        self.reload()

    def _stream_build(self, samples, model, args: Dict[str, Any]) -> None:
        """Embeds and upserts batch by batch; ids already in the collection
        (an interrupted earlier build) are not embedded again."""
        patches_field = args.get("patches_field")
        existing = self.label_ids if patches_field is not None else self.sample_ids
        batches = build.model_batches(
            samples, model, patches_field=patches_field, batch_size=args.get("batch_size"),
            num_workers=args.get("num_workers"), skip_ids=set(existing.tolist()), progress=args.get("progress"),
        )
        report = build.write(self, batches, progress=False)  # the source shows its own progress
        report.check(skip_failures=args.get("skip_failures", True))
        self.reload()

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        index = cls(samples, config, brain_key)
        index._known_dimension = d.get("dimension")
        if d.get("build_complete") is False:
            index._interrupted = True
            try:
                size = "%d embeddings" % index.total_index_size
            except QdrantBackendError:
                size = "the embeddings"
            logger.warning(
                "Brain key %r is a build that did not finish (its process stopped, or it is still running): this "
                "index holds only %s written so far. Re-run the same compute_similarity() call to resume it",
                brain_key, size,
            )
        return index

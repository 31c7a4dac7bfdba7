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
import os
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


_U64_MAX = 2**64 - 1  # Qdrant's u64/usize settings

# How queries of a quantized index search unless its search_params say otherwise
QUANTIZED_SEARCH_DEFAULTS = {"rescore": True, "oversampling": 3.0}

# What Qdrant itself accepts in each partial config (its Rust types and
# `validate` ranges, lib/collection/src/operations/config_diff.rs and
# lib/segment/src/types.rs): ("int", min) is an unsigned integer of at
# least min, ("float", min, max) a finite number in [min, max], "bool" a
# real bool, a dict a nested config. qdrant-client's models coerce ("yes"
# becomes True) or accept anything (-1 for a usize); every query or
# creation would then fail in the engine, far from the cause.
_PARTIAL_SCHEMAS: Dict[str, Dict[str, Any]] = {
    "search_params": {
        "hnsw_ef": ("int", 0),
        "exact": "bool",
        "indexed_only": "bool",
        "quantization": {"ignore": "bool", "rescore": "bool", "oversampling": ("float", 1.0, math.inf)},
        "acorn": {"enable": "bool", "max_selectivity": ("float", 0.0, 1.0)},
    },
    "hnsw_config": {
        "m": ("int", 0),
        "ef_construct": ("int", 4),
        "full_scan_threshold": ("int", 10),
        "max_indexing_threads": ("int", 0),
        "on_disk": "bool",
        "payload_m": ("int", 0),
        "inline_storage": "bool",
    },
    "optimizers_config": {
        "deleted_threshold": ("float", 0.0, 1.0),
        "vacuum_min_vector_number": ("int", 100),
        "default_segment_number": ("int", 0),
        "max_segment_size": ("int", 1),
        "memmap_threshold": ("int", 0),
        "indexing_threshold": ("int", 0),
        "flush_interval_sec": ("int", 0),
        "max_optimization_threads": ("int_or_auto", 0),
        "prevent_unoptimized": "bool",
    },
    # Qdrant's QuantizationConfig: exactly one of these (see _validate_quantization)
    "quantization_config": {
        "scalar": {"type": ("enum", ("int8",)), "quantile": ("float", 0.5, 1.0), "always_ram": "bool"},
        "product": {"compression": ("enum", ("x4", "x8", "x16", "x32", "x64")), "always_ram": "bool"},
        "binary": {"always_ram": "bool", "encoding": ("enum", ("one_bit", "two_bits", "one_and_half_bits"))},
    },
    "wal_config": {
        "wal_capacity_mb": ("int", 1),
        "wal_segments_ahead": ("int", 0),
        "wal_retain_closed": ("int", 0),
    },
}


def _is_int(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_setting(where: str, rule: Any, value: Any) -> Any:
    """``value`` checked against ``rule`` (see _PARTIAL_SCHEMAS), as the
    plain Python type Qdrant takes."""
    if isinstance(rule, dict):
        return _check_partial(where, rule, value)
    if rule == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError("`%s` must be True or False, got %r" % (where, value))
        return bool(value)
    kind, minimum = rule[0], rule[1]
    if kind == "enum":
        if value not in minimum:
            raise ConfigError("`%s` must be one of %s, got %r" % (where, list(minimum), value))
        return value
    if kind == "int_or_auto" and value == "auto":
        return value
    if kind in ("int", "int_or_auto"):
        if not _is_int(value) or not minimum <= value <= _U64_MAX:
            raise ConfigError(
                "`%s` must be an integer from %d to %d%s, got %r"
                % (where, minimum, _U64_MAX, " or 'auto'" if kind == "int_or_auto" else "", value)
            )
        return int(value)
    maximum = rule[2]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
        math.isfinite(float(value)) and minimum <= float(value) <= maximum
    ):
        bound = "at least %g" % minimum if maximum == math.inf else "from %g to %g" % (minimum, maximum)
        raise ConfigError("`%s` must be a number %s, got %r" % (where, bound, value))
    return float(value)


def _check_partial(where: str, schema: Dict[str, Any], value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError("`%s` must be a dict, got %r" % (where, value))
    unknown = sorted(set(value) - set(schema), key=str)
    if unknown:
        raise ConfigError("Unknown key(s) %s in `%s`. Valid keys are %s" % (unknown, where, list(schema)))
    return {k: _check_setting("%s.%s" % (where, k), schema[k], v) for k, v in value.items() if v is not None}


def _validate_partial(name: str, value: Any, model_name: str) -> Optional[Dict[str, Any]]:
    """A partial Qdrant config dict, checked with Qdrant's own types and
    limits, then against qdrant-client's model ``model_name``."""
    if value is None:
        return None
    try:
        checked = _check_partial(name, _PARTIAL_SCHEMAS[name], value)
    except ConfigError as e:
        if str(e).startswith("Unknown key"):
            raise
        raise ConfigError("Invalid `%s`: %s" % (name, e)) from None
    if model_name is None:
        return checked
    # imported only when needed: importing qdrant_client takes ~2 s
    from qdrant_client import models as qm

    try:
        getattr(qm, model_name)(**checked)
    except Exception as e:
        raise ConfigError("Invalid `%s` %r: %s" % (name, value, e)) from None
    return checked


def _validate_quantization(value: Any) -> Optional[Dict[str, Any]]:
    """Qdrant's ``quantization_config``: ``{"scalar": {"type": "int8", ...}}``,
    ``{"product": {"compression": "x16", ...}}`` or ``{"binary": {...}}``."""
    if value is None:
        return None
    checked = _validate_partial("quantization_config", value, None)
    if len(checked) != 1:
        raise ConfigError(
            "Invalid `quantization_config`: give exactly one of 'scalar', 'product' or 'binary', got %r" % (value,)
        )
    (kind, settings), = checked.items()
    required = {"scalar": "type", "product": "compression"}.get(kind)
    if required and required not in settings:
        raise ConfigError("Invalid `quantization_config`: `%s` needs '%s', e.g. %r" % (
            kind, required, {"scalar": {"type": "int8"}, "product": {"compression": "x16"}}[kind]))
    from .server import quantization_model  # loads qdrant-client: only when one is given

    try:
        quantization_model(checked)
    except Exception as e:
        raise ConfigError("Invalid `quantization_config` %r: %s" % (value, e)) from None
    return checked


_TRUE_STRINGS = ("true", "yes", "on", "1")
_FALSE_STRINGS = ("false", "no", "off", "0")


def _parse_flag(name: str, value: Any) -> Optional[bool]:
    """A bool setting given as a bool, or as a string from a config file or
    the environment ("true"/"false", "yes"/"no", "on"/"off", "1"/"0")."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS + _FALSE_STRINGS:
        return value.strip().lower() in _TRUE_STRINGS
    if _is_int(value) and value in (0, 1):
        return bool(value)
    raise ConfigError("`%s` must be True or False, got %r" % (name, value))


_ENV_PREFIX = "FIFTYONE_BRAIN_SIMILARITY_QDRANT_"


def _raw_env_setting(name: str, value: Any) -> Any:
    """``value``, or the raw string of the ``FIFTYONE_BRAIN_SIMILARITY_QDRANT_
    <NAME>`` variable it was parsed from: FiftyOne's env parsing turns an
    API key ``0012345`` into the int 12345 and ``ab,cd`` into a list."""
    if value is None or isinstance(value, str):
        return value
    raw = os.environ.get(_ENV_PREFIX + name.upper())
    if raw is None:
        return value
    from fiftyone.brain.config import _parse_env_value

    return raw if _parse_env_value(raw) == value else value


def _string_setting(name: str, value: Any) -> Optional[str]:
    value = _raw_env_setting(name, value)
    if value is None or isinstance(value, str):
        return value
    if _is_int(value):  # e.g. an API key given as a number
        return str(value)
    raise ConfigError("`%s` must be a string, got %r" % (name, value))


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


def _port_setting(value: Any) -> Any:
    """A gRPC port given as a string of digits (config file, environment)
    becomes an int; anything else is checked by ConnectionSettings."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def _positive_int(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("`%s` must be a positive integer, got %r" % (name, value))
    return value


def _strict_bool(name: str, value: Any) -> Optional[bool]:
    if value is None:
        return None
    return _check_setting(name, "bool", value)


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
        from .engine import validate_collection_name

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
        self.quantization_config = _validate_quantization(quantization_config)
        self.on_disk = _strict_bool("on_disk", on_disk)
        self.on_disk_payload = _strict_bool("on_disk_payload", on_disk_payload)
        self.search_params = _validate_partial("search_params", search_params, "SearchParams")
        self.vector_name = vector_name
        self.path = path
        self.timeout = timeout
        self.model_spec = model_spec

        # Credentials are private so that they are never serialized
        self.path = _string_setting("path", path)
        self._url = _string_setting("url", url)
        self._api_key = _string_setting("api_key", api_key)
        self._grpc_port = _port_setting(grpc_port)
        self._prefer_grpc = _parse_flag("prefer_grpc", prefer_grpc)
        self._https = _parse_flag("https", https)

        self.connection_settings()  # validates, never connects

    @property
    def method(self) -> str:
        return "qdrant"

    url = property(lambda self: self._url, lambda self, v: setattr(self, "_url", _string_setting("url", v)))
    api_key = property(
        lambda self: self._api_key,
        lambda self, v: setattr(self, "_api_key", _string_setting("api_key", v)),
    )
    grpc_port = property(lambda self: self._grpc_port, lambda self, v: setattr(self, "_grpc_port", _port_setting(v)))
    prefer_grpc = property(
        lambda self: self._prefer_grpc, lambda self, v: setattr(self, "_prefer_grpc", _parse_flag("prefer_grpc", v))
    )
    https = property(lambda self: self._https, lambda self, v: setattr(self, "_https", _parse_flag("https", v)))

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
        self.path = _string_setting("path", self.path)  # the setters check the others

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


def _slug(text: str) -> str:
    try:
        return fou.to_slug(text)
    except ValueError:  # nothing slug-friendly in it ("ключ", "_"), or too long
        return ""


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def default_collection_name(store, dataset_name: str, key: Optional[str]) -> str:
    """``fiftyone-<dataset>-<brain key>`` as slugs (a digest for a name with
    no slug-friendly character), suffixed ``-2``, ``-3``... past collections
    that exist: a collection left by a renamed or deleted run keeps its
    vectors, and a new run never writes into it."""
    root = "fiftyone-" + (_slug(dataset_name) or "dataset-" + _digest(dataset_name))
    if key:
        root += "-" + (_slug(key) or "key-" + _digest(key))
    root = root[:200]
    name, suffix = root, 1
    while store.collection_exists(name):
        suffix += 1
        name = "%s-%d" % (root, suffix)
    return name


# Settings of an interrupted build that a re-run must share to resume it
_RESUME_FIELDS = ("model", "model_kwargs", "model_spec", "patches_field", "roi_field", "embeddings_field", "metric", "vector_name")
# Relative difference between an indexed embedding and the same image
# embedded again above which the models are not the same (float16 on a GPU
# vs float32 on a CPU differ by ~1e-3)
_SAME_MODEL_TOLERANCE = 0.05


def _embedding_differences(store, name, spec: CollectionSpec, config, samples, args: Dict[str, Any]) -> List[str]:
    """How the embeddings this compute_similarity() call would add differ
    from those already in the collection (dimension, model)."""
    patches_field = config.patches_field or config.roi_field
    embeddings = args.get("embeddings")
    if args.get("embeddings_exist") and args.get("embeddings_field"):
        dimension = _field_dimension(samples, args["embeddings_field"], patches_field)
    elif embeddings is False:
        return []  # attaching what is there
    elif isinstance(embeddings, (np.ndarray, list, tuple)):
        dimension = _as_2d_numeric(embeddings).shape[1]
    elif args.get("_model") is not None:
        return _model_differences(store, name, spec, config, samples, args["_model"])
    else:
        return []
    if dimension is None or dimension == spec.dimension:
        return []
    return ["dimension: %d before, %d now" % (spec.dimension, dimension)]


def _field_dimension(samples, field: str, patches_field: Optional[str]) -> Optional[int]:
    if patches_field is not None:
        _, path = samples._get_label_field_path(patches_field, field)
        values = samples.limit(100).values(path, unwind=True)
    else:
        values = samples.exists(field).limit(1).values(field)
    first = next((v for v in values if v is not None), None)
    return None if first is None else int(np.asarray(first).size)


def _model_differences(store, name, spec: CollectionSpec, config, samples, model) -> List[str]:
    """Embeds one already indexed image (or patch) with ``model`` and
    compares it with its indexed embedding: a different model, even one of
    the same dimension and class, gives a different vector."""
    from .models import iter_embedding_batches

    patches = config.patches_field
    page = next(iter(store.scroll(name, with_vectors=True, page_size=8, vector_name=config.vector_name)), [])
    for record in page:
        if record.vector is None:
            continue
        derived = idmap.from_point_id(record.id)
        sample_id = record.payload.get("sample_id") or (None if patches else derived)
        label_id = (record.payload.get("label_id") or derived) if patches else None
        if not sample_id or not idmap.is_object_id(sample_id):
            continue
        batches = iter_embedding_batches(
            samples.select(sample_id), model, patches_field=patches, num_workers=0, progress=False
        )
        try:
            rows = [
                batch.embeddings[i]
                for batch in batches
                for i in range(len(batch))
                if label_id is None or batch.label_ids[i] == label_id
            ]
        finally:
            batches.close()
        if not rows:
            continue  # that image cannot be read now: try another
        new = np.asarray(rows[0], dtype=np.float64).ravel()
        if new.shape[0] != spec.dimension:
            return [
                "dimension: the index stores %d-d embeddings, this model gives %d-d ones"
                % (spec.dimension, new.shape[0])
            ]
        norm = record.payload.get(_NORM_KEY)
        old = np.asarray(record.vector, dtype=np.float64) * (norm if norm is not None else 1.0)
        if config.metric == "cosine":
            old, new = old / max(np.linalg.norm(old), 1e-30), new / max(np.linalg.norm(new), 1e-30)
        difference = np.linalg.norm(old - new) / max(np.linalg.norm(old), np.linalg.norm(new), 1e-30)
        if difference > _SAME_MODEL_TOLERANCE:
            return [
                "model: this model embeds sample %s differently from the index (relative difference %.3f), "
                "so it is not the model the build started with" % (sample_id, difference)
            ]
        return []
    return []


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
            self._check_resumable(samples, key, stored, bool(run_doc.results), compute_similarity_args(sys._getframe(1)))
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
        index._build_from_caller(compute_similarity_args(sys._getframe(1)))  # our caller's frame
        return index

    def _prepare_collection(self, samples, key) -> None:
        """Names the collection of a new index (any brain key and dataset
        name gives a valid, unused name) and checks that an existing
        collection has the dense vector to use."""
        store = self.config.connection_settings().open()
        if self.config.collection_name is None:
            self.config.collection_name = default_collection_name(store, samples._root_dataset.name, key)
        elif store.collection_exists(self.config.collection_name):
            spec = store.get_spec(self.config.collection_name, self.config.vector_name)  # raises ConfigError
            if self.config.metric != spec.metric:
                logger.info(
                    "Collection '%s' uses metric '%s'; using it instead of '%s'",
                    self.config.collection_name, spec.metric, self.config.metric,
                )
                self.config.metric = spec.metric

    def _check_resumable(self, samples, key, stored: Dict[str, Any], has_results: bool, args) -> None:
        """Refuses to resume an interrupted build with anything that would
        mix two kinds of embeddings in one index: another model, patches
        field, metric or dimension."""
        store = self.config.connection_settings().open()
        name = self.config.collection_name
        if name is None or not store.collection_exists(name):
            return
        count = store.count(name)
        if count == 0:
            return  # nothing to mix with
        new = self.config.serialize()
        differences = [
            "%s: %r before, %r now" % (field, stored.get(field), new.get(field))
            for field in _RESUME_FIELDS
            if stored.get(field) != new.get(field) and field in stored
        ]
        try:
            spec = store.get_spec(name, self.config.vector_name)
        except QdrantBackendError as e:
            differences.append("vector: %s" % e)
            spec = None
        if spec is not None:
            if spec.metric != self.config.metric:
                differences.append("metric: the collection stores %r vectors, this call asks for %r" % (spec.metric, self.config.metric))
            differences.extend(_embedding_differences(store, name, spec, self.config, samples, args or {}))
        if not differences:
            return
        if has_results:
            rebuild = "dataset.load_brain_results(%r).cleanup(); dataset.delete_brain_run(%r)" % (key, key)
        else:
            rebuild = "dataset.delete_brain_run(%r) (collection '%s' keeps its vectors; a new build gets a new collection)" % (key, name)
        raise ConfigError(
            "Brain key %r is a build that did not finish: Qdrant collection '%s' holds %d embeddings written before "
            "it stopped, and this call cannot resume it without mixing two kinds of embeddings in one index (%s). "
            "To resume it, re-run compute_similarity() with the arguments of the interrupted build. To rebuild it "
            "from scratch instead, first run %s" % (key, name, count, "; ".join(differences), rebuild)
        )

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


_URL_PREFIXES = ("http://", "https://")


def _is_image_query(item) -> bool:
    if etau.is_str(item):
        return item.lower().startswith(_URL_PREFIXES) or os.path.isfile(item)
    if isinstance(item, np.ndarray):
        return item.ndim == 3 or (item.ndim == 2 and item.dtype == np.uint8)
    return type(item).__module__.startswith("PIL.")


def _image_queries(query) -> Optional[List[Any]]:
    """The images of an image query (one, or a list of them), else None."""
    if _is_image_query(query):
        return [query]
    if isinstance(query, (list, tuple)) and query and all(_is_image_query(q) for q in query):
        if all(isinstance(q, np.ndarray) and q.ndim == 2 for q in query):
            return None  # a list of 2-d uint8 arrays is ambiguous: not images
        return list(query)
    return None


def _read_query_image(image) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array from a path, URL, PIL image or array."""
    import eta.core.image as etai

    if etau.is_str(image):
        if image.lower().startswith(_URL_PREFIXES):
            import urllib.request

            try:
                with urllib.request.urlopen(image, timeout=30) as response:
                    data = response.read()
            except Exception as e:
                raise InvalidInputError("Could not download the query image %s: %s" % (image, e)) from None
            try:
                return _as_rgb(etai.decode(data))
            except Exception:
                raise InvalidInputError("The query URL %s is not an image" % image) from None
        try:
            return _as_rgb(etai.read(image))
        except Exception:
            raise InvalidInputError("The query file %s is not an image" % image) from None
    if isinstance(image, np.ndarray):
        return _as_rgb(image)
    return np.asarray(image.convert("RGB"))


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInputError("A query image must be HxW or HxWx3 (RGB), got shape %s" % (pixels.shape,))
    return pixels


class QdrantSimilarityIndex(SimilarityIndex, DuplicatesMixin):
    """A similarity index backed by a Qdrant collection."""

    def __init__(self, samples, config: QdrantSimilarityConfig, brain_key, backend=None):
        self._store = None
        self._spec: Optional[CollectionSpec] = None
        self._ids_cache: Optional[Tuple[Any, np.ndarray, Optional[np.ndarray]]] = None
        self._payload_ids: Optional[bool] = None
        self._built_by_stream = False
        self._building = False
        self._interrupted = False
        self._known_dimension: Optional[int] = None
        self._warned_duplicates: Optional[Any] = None
        super().__init__(samples, config, brain_key, backend=backend)
        DuplicatesMixin.__init__(self)
        self._initialize()

    # -- setup --------------------------------------------------------------

    def _initialize(self):
        if self.config.collection_name is None:
            self.config.collection_name = default_collection_name(self.store, self._samples._root_dataset.name, self.key)
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
        if self._counts_by_listing():
            return len(self._index_ids()[0])
        return self.store.count(self.collection_name)

    def _counts_by_listing(self) -> bool:
        """Whether the index size is not the point count: points of a named
        vector collection may lack the vector, and points with foreign ids
        (written by a pipeline) may repeat a FiftyOne id."""
        return self.config.vector_name is not None or self._uses_payload_ids()

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
            # points of a collection with named vectors may lack ours (written
            # by another tool): only those that have it are in the index
            with_vectors = self.config.vector_name is not None
            patches = self.config.patches_field is not None
            seen: Set[str] = set()
            points = 0
            for page in self.store.scroll(
                self.collection_name, with_vectors=with_vectors, page_size=_SCROLL_PAGE_SIZE,
                vector_name=self.config.vector_name,
            ):
                for record in page:
                    if with_vectors and record.vector is None:
                        continue
                    points += 1
                    sid, lid = self._fiftyone_ids(record)
                    key = lid if patches else sid
                    if key in seen:
                        continue  # another point of the same FiftyOne id
                    seen.add(key)
                    sample_ids.append(sid)
                    if lid is not None:
                        label_ids.append(lid)
        if points > len(seen) and self._warned_duplicates != revision:
            self._warned_duplicates = revision
            logger.warning(
                "Qdrant collection '%s' holds %d points for %d %s ids: several points carry the same %s. "
                "The index counts each id once; queries rank each by its nearest point, get_embeddings() "
                "returns one of them",
                self.collection_name, points, len(seen), "label" if patches else "sample", self._id_field,
            )
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
                if with_vectors and record.vector is None:
                    continue  # the point lacks this index's named vector: not in the index
                sid, lid = self._fiftyone_ids(record)
                found.setdefault(lid if self.config.patches_field else sid, record)  # first point of an id
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

        # the embeddings field first: a write killed in between leaves field
        # values for points to be written again, never points without them
        self._write_embeddings_field(embeddings, sample_ids, label_ids)
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

        removed = [k for k in keys if k in found]
        point_ids = self._all_point_ids(removed, found)
        with self.store.batch(self.collection_name):
            for start in range(0, len(point_ids), _PAGE_SIZE):
                self.store.delete(self.collection_name, point_ids[start : start + _PAGE_SIZE])
        self._ids_cache = None
        self._clear_embeddings_field(removed)
        if reload:
            self.reload()

    def _all_point_ids(self, keys: Sequence[str], found: Dict[str, PointRecord]) -> List[str]:
        """The points of ``keys``: with foreign point ids, several points may
        carry one FiftyOne id, and removing it removes them all."""
        point_ids = [found[k].id for k in keys]
        if not keys or not self._uses_payload_ids():
            return point_ids
        seen = set(point_ids)
        for start in range(0, len(keys), _PAGE_SIZE):
            restriction = IdRestriction(list(keys[start : start + _PAGE_SIZE]), field=self._id_field)
            for page in self.store.scroll(self.collection_name, page_size=_PAGE_SIZE, restriction=restriction):
                for record in page:
                    if record.id not in seen:
                        seen.add(record.id)
                        point_ids.append(record.id)
        return point_ids

    def _write_embeddings_field(self, embeddings, sample_ids: np.ndarray, label_ids: Optional[np.ndarray]) -> None:
        """Stores added embeddings in the config's ``embeddings_field`` (on
        each label for a patches index), as the sklearn backend does; not
        during a build that reads them from that field."""
        field = self.config.embeddings_field
        if field is None or (self._building and getattr(self, "_field_is_source", False)):
            return
        import fiftyone.brain.internal.core.utils as fbu

        for start in range(0, len(sample_ids), 10000):
            stop = start + 10000
            fbu.add_embeddings(
                self._samples,
                [np.asarray(row) for row in embeddings[start:stop]],
                sample_ids[start:stop].tolist(),
                label_ids[start:stop].tolist() if label_ids is not None else None,
                field,
                patches_field=self.config.patches_field,
            )

    def _clear_embeddings_field(self, keys: Sequence[str]) -> None:
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

    def _patches_of_samples(self, sample_ids: Sequence[str], with_vectors: bool) -> Dict[str, PointRecord]:
        found: Dict[str, PointRecord] = {}
        for start in range(0, len(sample_ids), _PAGE_SIZE):
            restriction = IdRestriction(sample_ids[start : start + _PAGE_SIZE], field="sample_id")
            for page in self.store.scroll(
                self.collection_name, with_vectors=with_vectors, restriction=restriction,
                vector_name=self.config.vector_name,
            ):
                for record in page:
                    if with_vectors and record.vector is None:
                        continue  # lacks this index's named vector
                    found.setdefault(self._fiftyone_ids(record)[1], record)
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
            if not self._check_collection():
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
                records_, seen = [], set()
                for page in self.store.scroll(self.collection_name, with_vectors=True, vector_name=self.config.vector_name):
                    for r in page:
                        key = self._fiftyone_ids(r)[1 if patches else 0]
                        # points lacking this index's named vector are not in
                        # it; of several points of one id, the first counts
                        if r.vector is not None and key not in seen:
                            seen.add(key)
                            records_.append(r)

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
        self._known_dimension = None  # deleted on purpose: an empty index now
        self._ids_cache = None

    def optimize(self):
        """Builds the collection's HNSW index now and returns when it is
        done on the embedded store (a server builds it in the background)."""
        self.store.optimize(self.collection_name)

    # -- queries ------------------------------------------------------------

    def _search_params(self) -> Optional[Dict[str, Any]]:
        """The config's search params; with quantization, unless they say
        otherwise, QUANTIZED_SEARCH_DEFAULTS: rescoring alone only reorders
        the quantized top k, so 3x the candidates are rescored with the
        original vectors (recall@10 0.825 -> 0.999 for int8 on 6,000
        clustered 64-d vectors; at 50k x 512, benchmarks/bench_quantization.py)."""
        params = self.config.search_params
        if not getattr(self.config, "quantization_config", None):
            return params
        params = dict(params or {})
        params["quantization"] = dict(QUANTIZED_SEARCH_DEFAULTS, **(params.get("quantization") or {}))
        return params

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

    def _parse_query(self, query):
        """FiftyOne's query parsing (ids, vectors, prompts), plus images:
        a local image path or an ``http(s)://`` URL, a PIL image, an
        ``HxWxC`` (or ``HxW`` uint8) array, or a list of these, embedded
        with the index's model (``get_model()``)."""
        images = _image_queries(query)
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
            vectors = np.asarray(model.embed_all([_read_query_image(image) for image in images]), dtype=np.float32)
        return vectors.reshape(len(images), -1)

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
        name, vector_name, params = self.collection_name, self.config.vector_name, self._search_params()

        # points with foreign ids may repeat a FiftyOne id: such repeats
        # must not take the place of other ids in the top k
        dedupe = self._uses_payload_ids()
        points = self.store.count(name) if dedupe else total

        def run(limit, restriction=None):
            threshold = score_threshold
            if threshold is not None and reverse:
                threshold = -threshold
            asked = limit
            while True:
                hits = self.store.query_batch(
                    name, vectors, asked, restriction=restriction, score_threshold=threshold,
                    vector_name=vector_name, search_params=params,
                )
                if not dedupe:
                    return hits
                unique = [self._unique_hits(h) for h in hits]
                if asked >= points or all(len(u) >= limit or len(h) < asked for u, h in zip(unique, hits)):
                    return [u[:limit] for u in unique]
                asked = min(points, max(2 * asked, asked + 16))

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

    def _unique_hits(self, hits) -> list:
        """``hits`` without repeats of a FiftyOne id (each keeps its best)."""
        seen: Set[str] = set()
        unique = []
        for hit in hits:
            key = self._hit_key(hit)
            if key not in seen:
                seen.add(key)
                unique.append(hit)
        return unique

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
        self._field_is_source = bool(args.get("embeddings_exist"))
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

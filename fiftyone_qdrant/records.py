"""FiftyOne run records kept with the Qdrant collection itself.

A brain run lives in FiftyOne's database; if that record is lost (dataset
re-created, database reset) the vectors in Qdrant become orphans. So every
build and rename also writes the run's record (brain key, dataset, config
without credentials, dimension, metric, model, creation time) into the
collection metadata, from where :func:`list_indexes` finds it and
:func:`attach_index` re-attaches the collection to a dataset.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Dict, List, Optional

from .connection import resolve_settings
from .engine import VectorStore
from .errors import CollectionNotFoundError, QdrantBackendError

logger = logging.getLogger(__name__)

RUNS_KEY = "fiftyone_runs"
_SECRET_KEYS = ("url", "api_key", "_url", "_api_key", "grpc_port", "prefer_grpc", "https")


def _run_id(dataset_name: str, brain_key: Optional[str]) -> str:
    return "%s/%s" % (dataset_name, brain_key)


def public_config(config) -> Dict[str, Any]:
    """The config as FiftyOne serializes it, minus anything secret."""
    d = config.serialize()
    for key in _SECRET_KEYS:
        d.pop(key, None)
    return d


def make_record(index, dimension: Optional[int]) -> Dict[str, Any]:
    from . import __version__

    dataset = index._samples._root_dataset
    config = index.config
    return {
        "brain_key": index.key,
        "dataset_name": dataset.name,
        "dataset_id": str(dataset._doc.id),
        "config": public_config(config),
        "dimension": dimension,
        "metric": config.metric,
        "model": config.model,
        "model_spec": config.model_spec,
        "patches_field": config.patches_field,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "fiftyone_qdrant_version": __version__,
    }


def add(metadata: Dict[str, Any], record: Dict[str, Any]) -> Dict[str, Any]:
    metadata = dict(metadata)
    runs = dict(metadata.get(RUNS_KEY) or {})
    runs[_run_id(record["dataset_name"], record["brain_key"])] = record
    metadata[RUNS_KEY] = runs
    return metadata


def save(store: VectorStore, collection_name: str, record: Dict[str, Any]) -> None:
    store.set_metadata(collection_name, add(store.get_metadata(collection_name), record))


def remove(store: VectorStore, collection_name: str, dataset_name: str, brain_key: str) -> None:
    if not store.collection_exists(collection_name):
        return
    metadata = store.get_metadata(collection_name)
    runs = dict(metadata.get(RUNS_KEY) or {})
    if runs.pop(_run_id(dataset_name, brain_key), None) is not None:
        metadata[RUNS_KEY] = runs
        store.set_metadata(collection_name, metadata)


def rename(store: VectorStore, collection_name: str, dataset_name: str, key: str, new_key: str) -> None:
    if not store.collection_exists(collection_name):
        return
    metadata = store.get_metadata(collection_name)
    runs = dict(metadata.get(RUNS_KEY) or {})
    record = runs.pop(_run_id(dataset_name, key), None)
    if record is None:
        return
    record["brain_key"] = new_key
    runs[_run_id(dataset_name, new_key)] = record
    metadata[RUNS_KEY] = runs
    store.set_metadata(collection_name, metadata)


def is_interrupted_build(samples, key: str, config) -> bool:
    """Whether ``key`` is a run of ours on the same collection whose build
    never finished (its process died): its results are missing, or saved
    with ``build_complete: false`` when the build started."""
    dataset = samples._root_dataset
    run_doc = dataset._doc.brain_methods.get(key)
    if run_doc is None:
        return False
    stored = run_doc.config or {}
    if stored.get("method") != "qdrant":
        return False
    if config.collection_name is not None and stored.get("collection_name") != config.collection_name:
        return False
    if not run_doc.results:
        return True
    return saved_results(run_doc).get("build_complete") is False


def saved_results(run_doc) -> Dict[str, Any]:
    """The JSON results a run document holds (FiftyOne keeps them in GridFS)."""
    from bson import json_util

    run_doc.results.seek(0)
    return json_util.loads(run_doc.results.read().decode())


def list_indexes(**connection) -> List[Dict[str, Any]]:
    """Every collection in a Qdrant store with its size and the FiftyOne run
    records stored with it.

    Args:
        **connection: ``path`` for an embedded store (default
            ``~/.fiftyone/qdrant``) or ``url``/``api_key``/... for a server;
            unset values come from the brain config / environment, except
            that a ``path`` without a ``url`` always names an embedded store
    """
    store = resolve_settings(**connection).open()
    out = []
    for name in store.list_collections():
        try:
            metadata = store.get_metadata(name)
            size = store.count(name)
        except QdrantBackendError as e:
            logger.warning("Skipping collection '%s': %s", name, e)
            continue
        out.append({"collection_name": name, "size": size, "runs": list((metadata.get(RUNS_KEY) or {}).values())})
    return out


def attach_index(dataset, collection_name: str, brain_key: Optional[str] = None, **connection):
    """Re-attaches an existing collection to ``dataset`` as a brain run,
    using the run record stored with the collection (never modifies the
    vectors). Returns the :class:`QdrantSimilarityIndex`."""
    import fiftyone.brain as fob

    from .engine import validate_collection_name

    validate_collection_name(collection_name)  # before any request names it
    # where compute_similarity() below will look, configured URL included
    store = resolve_settings(path_means_embedded=False, **connection).open()
    if not store.collection_exists(collection_name):
        raise CollectionNotFoundError(
            "Qdrant collection '%s' does not exist in the %s; see list_indexes()" % (collection_name, store.location)
        )
    runs = list((store.get_metadata(collection_name).get(RUNS_KEY) or {}).values())
    record = next((r for r in runs if r.get("dataset_name") == dataset.name), None) or (runs[0] if runs else None)
    kwargs: Dict[str, Any] = {}
    if record is not None:
        stored = record.get("config") or {}
        for key in ("metric", "patches_field", "roi_field", "embeddings_field", "model_spec",
                    "vector_name", "search_params"):
            if stored.get(key) is not None:
                kwargs[key] = stored[key]
        brain_key = brain_key or record.get("brain_key")
    if brain_key is None:
        raise QdrantBackendError("No run record in collection '%s': pass brain_key=" % collection_name)
    kwargs.update({k: v for k, v in connection.items() if v is not None})
    return fob.compute_similarity(
        dataset, backend="qdrant", embeddings=False, collection_name=collection_name, brain_key=brain_key, **kwargs
    )

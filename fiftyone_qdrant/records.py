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
import hashlib
import logging
from typing import Any, Dict, Optional

from .store import VectorStore
from .version import __version__

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
    saved = saved_results(run_doc)
    return saved is None or saved.get("build_complete") is False


def saved_results(run_doc) -> Optional[Dict[str, Any]]:
    """The JSON results a run document holds (FiftyOne keeps them in
    GridFS), or None if it names a file that is not there: FiftyOne replaces
    results by deleting the old file, writing the new one and then saving
    the run document, so a process killed in between leaves a document that
    names a deleted file."""
    from bson import json_util

    file = run_doc.results.get() if run_doc.results else None
    if file is None:
        return None
    file.seek(0)
    return json_util.loads(file.read().decode())


def _slug(text: str) -> str:
    import fiftyone.core.utils as fou

    try:
        return fou.to_slug(text)
    except ValueError:  # nothing slug-friendly in it ("ключ", "_"), or too long
        return ""


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def default_collection_name(store: VectorStore, dataset_name: str, key: Optional[str]) -> str:
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

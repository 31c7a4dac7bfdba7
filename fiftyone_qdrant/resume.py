"""Whether a re-run of ``compute_similarity()`` may resume a build that did
not finish: it must not mix two kinds of embeddings (another model, patches
field, metric or dimension) in one index."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from . import points
from .build import as_2d_numeric, model_batches
from .store import CollectionSpec
from .errors import ConfigError, QdrantBackendError

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
        dimension = as_2d_numeric(embeddings).shape[1]
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
    patches = config.patches_field
    page = next(iter(store.scroll(name, with_vectors=True, page_size=8, vector_name=config.vector_name)), [])
    for record in page:
        if record.vector is None:
            continue
        derived = points.from_point_id(record.id)
        sample_id = record.payload.get("sample_id") or (None if patches else derived)
        label_id = (record.payload.get("label_id") or derived) if patches else None
        if not sample_id or not points.is_object_id(sample_id):
            continue
        batches = model_batches(samples.select(sample_id), model, patches_field=patches, num_workers=0, progress=False)
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
        norm = record.payload.get(points.NORM_KEY)
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




def check_resumable(config, samples, key: str, stored: Dict[str, Any], has_results: bool,
                    args: Optional[Dict[str, Any]]) -> None:
    """Refuses to resume the interrupted build ``key`` (whose stored config
    is ``stored``) with a ``config`` and ``compute_similarity()`` arguments
    ``args`` that would mix two kinds of embeddings in one index."""
    store = config.connection_settings().open()
    name = config.collection_name
    if name is None or not store.collection_exists(name):
        return
    count = store.count(name)
    if count == 0:
        return  # nothing to mix with
    new = config.serialize()
    differences = [
        "%s: %r before, %r now" % (field, stored.get(field), new.get(field))
        for field in _RESUME_FIELDS
        if stored.get(field) != new.get(field) and field in stored
    ]
    try:
        spec = store.get_spec(name, config.vector_name)
    except QdrantBackendError as e:
        differences.append("vector: %s" % e)
        spec = None
    if spec is not None:
        if spec.metric != config.metric:
            differences.append("metric: the collection stores %r vectors, this call asks for %r" % (spec.metric, config.metric))
        differences.extend(_embedding_differences(store, name, spec, config, samples, args or {}))
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

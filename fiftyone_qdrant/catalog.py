"""Finding indexes from Qdrant itself, for tools (the CLI, the App
operators, the sink): listing a store's collections with the FiftyOne run
records stored in them, re-attaching one to a dataset, and the connection
settings a tool resolves as a brain run would."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from .connection import ConnectionSettings
from .store import validate_collection_name
from .errors import CollectionNotFoundError, QdrantBackendError
from .records import RUNS_KEY

logger = logging.getLogger(__name__)


def resolve_settings(path_means_embedded: bool = True, **given) -> ConnectionSettings:
    """Settings from ``given`` (``None`` values ignored), the rest from the
    brain config (environment, brain_config.json) as a brain run gets them.

    For tools (sink, listing, App operators), a ``path`` given without a
    ``url`` names an embedded store: a URL in the brain config does not
    redirect it to a server (and FiftyOne, slow to import, is then not
    needed). ``path_means_embedded=False`` resolves exactly as
    ``compute_similarity()`` does, where a configured URL wins."""
    given = {k: v for k, v in given.items() if v is not None}
    if path_means_embedded and given.get("path") and not given.get("url"):
        return ConnectionSettings(path=given["path"])
    from .similarity import QdrantSimilarityConfig  # imports FiftyOne: only when needed

    config = QdrantSimilarityConfig(**given)
    config.load_credentials()
    return config.connection_settings()


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

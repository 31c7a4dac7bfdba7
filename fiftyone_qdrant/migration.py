"""Moves brain runs created by FiftyOne's built-in Qdrant backend to ours.

Runs made by ``fiftyone.brain.internal.core.qdrant`` already load and query
through our classes (the import hook aliases them, and we use the same point
id scheme). Migrating rewrites their records with our class paths, so they
keep working with the plugin disabled, and stores the run record with the
collection.
"""

from __future__ import annotations

import logging
from typing import List, Optional

logger = logging.getLogger(__name__)

BUILTIN_CONFIG_CLS = "fiftyone.brain.internal.core.qdrant.QdrantSimilarityConfig"


def builtin_run_keys(dataset) -> List[str]:
    """Brain keys of ``dataset`` whose records name the built-in classes."""
    return [
        key
        for key, run_doc in dataset._doc.brain_methods.items()
        if (run_doc.config or {}).get("cls") == BUILTIN_CONFIG_CLS
    ]


def migrate_builtin_runs(dataset, brain_keys: Optional[List[str]] = None, **credentials) -> List[str]:
    """Migrates ``dataset``'s built-in Qdrant runs; returns the keys done.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        brain_keys (None): the runs to migrate; default all built-in ones
        **credentials: ``url``/``api_key``/... if not in the brain config
    """
    from .similarity import QdrantSimilarityIndex

    keys = builtin_run_keys(dataset) if brain_keys is None else list(brain_keys)
    migrated = []
    for key in keys:
        results = dataset.load_brain_results(key, cache=False, **credentials)
        if not isinstance(results, QdrantSimilarityIndex):
            raise TypeError("Brain run '%s' is not a Qdrant similarity run" % key)
        results.save_config()
        results.save()
        migrated.append(key)
        logger.info("Migrated brain run '%s' to fiftyone_qdrant", key)
    return migrated

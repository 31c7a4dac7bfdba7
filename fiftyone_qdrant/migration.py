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
    builtin = builtin_run_keys(dataset)
    keys = builtin if brain_keys is None else list(brain_keys)
    unknown = sorted(set(keys) - set(builtin))
    if unknown:  # checked before any run is rewritten
        raise ValueError("Not runs of FiftyOne's built-in Qdrant backend: %s (those are: %s)" % (unknown, builtin))
    migrated = []
    for key in keys:
        results = dataset.load_brain_results(key, cache=False, **credentials)
        results.save_config()
        results.save()
        migrated.append(key)
        logger.info("Migrated brain run '%s' to fiftyone_qdrant", key)
    return migrated

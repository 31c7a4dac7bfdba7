"""fiftyone-qdrant: a Qdrant similarity backend for the FiftyOne brain.

Once installed, ``fob.compute_similarity(dataset, backend="qdrant", ...)``
uses this package in every process (see :mod:`fiftyone_qdrant.integration`,
which the installed ``.pth`` file imports at start-up). This module
therefore stays import-free: its public names load on first use.
"""

from .version import __version__

_LAZY = {
    "attach_index": "catalog",
    "list_indexes": "catalog",
    "migrate_builtin_runs": "migration",
    "load_model": "models",
    "QdrantBackendError": "errors",
    "ConfigError": "errors",
    "CollectionNotFoundError": "errors",
    "ConnectionFailedError": "errors",
    "DimensionMismatchError": "errors",
    "InvalidInputError": "errors",
    "UnknownIdError": "errors",
    "QdrantSimilarityConfig": "similarity",
    "QdrantSimilarity": "similarity",
    "QdrantSimilarityIndex": "similarity",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    try:
        return importlib.import_module("." + name, __name__)
    except ModuleNotFoundError:
        raise AttributeError("module %r has no attribute %r" % (__name__, name)) from None


from . import integration  # noqa: E402,F401  (idempotent)

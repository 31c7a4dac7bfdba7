"""fiftyone-qdrant: a Qdrant similarity backend for the FiftyOne brain.

Once installed, ``fob.compute_similarity(dataset, backend="qdrant", ...)``
uses this package in every process (see :mod:`fiftyone_qdrant._bootstrap`).
"""

__version__ = "0.1.0"

from . import _bootstrap  # noqa: F401  (idempotent; makes `import` enough)
from .errors import (  # noqa: F401
    CollectionNotFoundError,
    ConfigError,
    ConnectionFailedError,
    DimensionMismatchError,
    InvalidInputError,
    QdrantBackendError,
    UnknownIdError,
)
from .records import attach_index, list_indexes  # noqa: F401
from .migration import migrate_builtin_runs  # noqa: F401

"""Exceptions that name the problem and the fix.

All derive from ``ValueError`` so code written against FiftyOne's other
backends (which raise ``ValueError``) keeps working.
"""


class QdrantBackendError(ValueError):
    """Base class of every error raised by fiftyone-qdrant."""


class ConfigError(QdrantBackendError):
    """An invalid backend parameter; raised before anything is written."""


class CollectionNotFoundError(QdrantBackendError):
    """The Qdrant collection behind an index does not exist."""


class DimensionMismatchError(QdrantBackendError):
    """Embeddings do not match the collection's vector size."""


class UnknownIdError(QdrantBackendError):
    """A sample/label id is not in the index."""


class InvalidInputError(QdrantBackendError):
    """Embeddings or ids that cannot be indexed (NaN, wrong shape, bad id)."""


class ConnectionFailedError(QdrantBackendError):
    """The Qdrant server could not be reached or refused our credentials."""

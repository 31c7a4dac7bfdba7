"""The store interface: the one small boundary between the FiftyOne-facing
code (the index, the build pipeline, the sink) and any Qdrant.

One implementation, :class:`fiftyone_qdrant.server.ServerStore`, which
reaches a Qdrant server or cluster, or the embedded store's local service,
through ``qdrant-client``. Everything is batch-first: ids and vectors travel
as lists and ``float32`` arrays, never one point at a time.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import re
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

METRICS = ("cosine", "dotproduct", "euclidean", "manhattan")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")


def validate_collection_name(name: str) -> str:
    """Names the embedded store can keep as directory names (no separators,
    no ``..``); servers accept them all."""
    from .errors import ConfigError

    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ConfigError(
            "Invalid collection name %r: use 1-255 letters, digits, '_', '-' "
            "or '.', starting with a letter or digit" % (name,)
        )
    return name

# Metrics whose scores grow with similarity (Qdrant returns them sorted
# descending); for the others the score is a distance (sorted ascending)
SIMILARITY_METRICS = ("cosine", "dotproduct")


@dataclasses.dataclass
class CollectionSpec:
    """How a collection's vectors are stored (what creation needs)."""

    dimension: int
    metric: str = "cosine"
    vector_name: Optional[str] = None
    hnsw_config: Optional[Dict[str, Any]] = None
    optimizers_config: Optional[Dict[str, Any]] = None
    wal_config: Optional[Dict[str, Any]] = None
    quantization_config: Optional[Dict[str, Any]] = None  # {"scalar"|"product"|"binary": {...}}
    on_disk: Optional[bool] = None  # original vectors memory-mapped from disk
    on_disk_payload: Optional[bool] = None
    replication_factor: Optional[int] = None
    shard_number: Optional[int] = None
    write_consistency_factor: Optional[int] = None


PointId = Any  # a UUID string or an unsigned integer, as Qdrant has it


@dataclasses.dataclass
class PointRecord:
    id: PointId
    vector: Optional[np.ndarray]
    payload: Dict[str, Any]


@dataclasses.dataclass
class Hit:
    id: PointId
    score: float
    payload: Dict[str, Any]


@dataclasses.dataclass
class IdRestriction:
    """Restricts a query to points whose id (``field=None``) or keyword
    payload ``field`` is one of ``values``."""

    values: Sequence[str]
    field: Optional[str] = None


def iter_pages(fetch_page: Callable[[Any], Tuple[list, Any]]) -> Iterator[list]:
    """Pages of a scroll: ``fetch_page(offset)`` returns ``(records,
    next_offset)``; the first offset is None, the last next_offset None."""
    offset = None
    while True:
        records, offset = fetch_page(offset)
        if records:
            yield records
        if offset is None:
            return


@contextlib.contextmanager
def file_lock(path: str, shared: bool = False, create: bool = True) -> Iterator[int]:
    """An inter-process lock held on ``path``: exclusive, or shared among
    readers. Yields the lock file's descriptor. ``create=False`` raises
    FileNotFoundError when ``path`` is gone (its owner was deleted)."""
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class VectorStore(abc.ABC):
    """A set of Qdrant collections."""

    #: human-readable location, safe to log (no secrets)
    location: str

    # -- collections ---------------------------------------------------------

    @abc.abstractmethod
    def list_collections(self) -> List[str]: ...

    @abc.abstractmethod
    def collection_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def create_collection(
        self, name: str, spec: CollectionSpec, metadata: Dict[str, Any], keyword_fields: Sequence[str] = ()
    ) -> None:
        """Creates a collection, with keyword indexes on payload
        ``keyword_fields``; raises if it already exists."""

    @abc.abstractmethod
    def get_spec(self, name: str, vector_name: Optional[str] = None) -> CollectionSpec:
        """The stored vector config (raises CollectionNotFoundError)."""

    @abc.abstractmethod
    def get_metadata(self, name: str) -> Dict[str, Any]: ...

    @abc.abstractmethod
    def set_metadata(self, name: str, metadata: Dict[str, Any]) -> None:
        """Replaces the collection metadata with ``metadata``."""

    @abc.abstractmethod
    def delete_collection(self, name: str) -> None: ...

    @abc.abstractmethod
    def create_keyword_index(self, name: str, field: str) -> None: ...

    # -- points --------------------------------------------------------------

    @abc.abstractmethod
    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[Dict[str, Any]],
        vector_name: Optional[str] = None,
    ) -> None: ...

    @abc.abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def retrieve(
        self,
        name: str,
        ids: Sequence[str],
        with_vectors: bool = False,
        vector_name: Optional[str] = None,
    ) -> List[PointRecord]:
        """Records for the ids that exist, in any order."""

    @abc.abstractmethod
    def count(self, name: str) -> int: ...

    def has_keyword_index(self, name: str, field: str) -> bool:
        """Whether payload ``field`` is indexed: filtering on it is then
        cheaper than on point ids (no conversion, a faster match)."""
        return False

    def searches_exhaustively(self, name: str) -> bool:
        """Whether a query scores every point (no HNSW index yet). Servers
        index collections by themselves once they grow."""
        return False

    @abc.abstractmethod
    def revision(self, name: str) -> Optional[str]:
        """Changes whenever the set of points may have changed (cache key)."""

    @abc.abstractmethod
    def scroll(
        self,
        name: str,
        with_vectors: bool = False,
        page_size: int = 1000,
        restriction: Optional[IdRestriction] = None,
        vector_name: Optional[str] = None,
    ) -> Iterator[List[PointRecord]]:
        """Pages over every (matching) point."""

    @abc.abstractmethod
    def query_batch(
        self,
        name: str,
        vectors: np.ndarray,
        limit: int,
        restriction: Optional[IdRestriction] = None,
        score_threshold: Optional[float] = None,
        vector_name: Optional[str] = None,
        search_params: Optional[Dict[str, Any]] = None,
        with_payload: Union[bool, Sequence[str]] = True,
    ) -> List[List[Hit]]:
        """Nearest neighbours of each row of ``vectors``, in one engine call;
        ``with_payload``: all of each hit's payload, none, or these fields
        (a payload costs ~10 us a hit to send and read)."""

    def batch(self, name: str) -> ContextManager[None]:
        """Groups many writes to one collection: they may be pipelined, and
        are all acknowledged when it exits."""
        return contextlib.nullcontext()

    def snapshot(self, name: str) -> ContextManager[None]:
        """Groups the reads of one logical read (many pages). Qdrant gives
        no cross-request snapshot: pages may see writes made in between."""
        return contextlib.nullcontext()

    def optimize(self, name: str) -> None:
        """Builds indexes (HNSW) now."""

    def close(self) -> None:
        """Releases files/connections."""

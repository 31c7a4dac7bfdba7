"""Collection schemas: what vectors a collection stores, as the sink sees
it, whatever the target. A new collection's schema is made from its first
record; an existing one's tells why a record does not fit it."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..store import METRICS
from ..errors import ConfigError
from .records import SinkRecord, SparseVector, VectorShape

_DISTANCE_ALIASES = {"dot": "dotproduct", "euclid": "euclidean", "l2": "euclidean", "l1": "manhattan"}


def normalize_distance(distance: str) -> str:
    """Our metric names (``cosine``, ``dotproduct``, ``euclidean``,
    ``manhattan``), also accepting Qdrant's (``Dot``, ``Euclid``...)."""
    name = str(distance).lower()
    name = _DISTANCE_ALIASES.get(name, name)
    if name not in METRICS:
        raise ConfigError("Unsupported distance %r. Use one of %s" % (distance, list(METRICS)))
    return name


@dataclasses.dataclass
class CollectionSchema:
    """The vectors of a collection: name (``""`` = unnamed) -> shape."""

    vectors: Dict[str, VectorShape]
    distance: str = "cosine"

    @classmethod
    def from_record(cls, record: SinkRecord, distance: str) -> "CollectionSchema":
        return cls(dict(record.shapes), normalize_distance(distance))

    def mismatch(self, record: SinkRecord) -> Optional[str]:
        """Why ``record`` does not fit this collection, or None if it does.
        A record may leave out some named vectors, as Qdrant allows."""
        collection = "collection '%s'" % record.collection_name
        names = sorted(self.vectors)
        for name, shape in record.shapes.items():
            expected = self.vectors.get(name)
            if expected is None:
                if name == "":
                    return "%s has named vectors %s: send 'vectors' as a map of name to vector" % (collection, names)
                if "" in self.vectors:
                    return "%s has a single unnamed vector (%s): send 'vectors' as a list, not a map" % (
                        collection, self.vectors[""].describe())
                return "%s has no vector named '%s'; it has %s" % (collection, name, names)
            label = "the unnamed vector" if name == "" else "vector '%s'" % name
            if expected.kind != shape.kind:
                return "%s is %s but %s stores %s there" % (label, shape.describe(), collection, expected.describe())
            if expected.size != shape.size:
                return "%s has dimension %d but %s stores %s there" % (
                    label, shape.size, collection, expected.describe())
        return None

    def dense_items(self) -> List[Tuple[str, VectorShape]]:
        return [(n, s) for n, s in self.vectors.items() if s.kind != "sparse"]

    def sparse_names(self) -> List[str]:
        return [n for n, s in self.vectors.items() if s.kind == "sparse"]

    def dense_config(self, params: Callable[[VectorShape], Any]) -> Any:
        """An engine's dense vectors config: ``params`` of the unnamed
        vector, else a map of name -> ``params`` (``None`` if there are none)."""
        if "" in self.vectors:
            return params(self.vectors[""])
        return {n: params(s) for n, s in self.dense_items()} or None


def _engine_vectors(vectors: Dict[str, Any], make_sparse: Callable[[SparseVector], Any]) -> Any:
    """A record's vectors as an engine takes them: the unnamed dense list,
    else a map with sparse vectors made by ``make_sparse``."""
    if "" in vectors:
        return vectors[""]
    return {n: make_sparse(v) if isinstance(v, SparseVector) else v for n, v in vectors.items()}

"""Mapping between FiftyOne ids and Qdrant points, and the payloads that
carry them.

Qdrant point ids must be unsigned integers or UUIDs; FiftyOne ids are
24-hex-digit ObjectIds. We use the scheme of FiftyOne's built-in Qdrant
backend (ObjectId hex + eight zeros, read as a UUID) so that collections it
created stay readable, and the mapping needs no lookup table. Points written
by other tools (a streaming pipeline) have ids of their own: their FiftyOne
ids are read from the payload (``sample_id``, ``label_id``), and
:class:`PointMap` looks them up there.
"""

from __future__ import annotations

import re
import uuid
import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from .store import IdRestriction, PointRecord, VectorStore
from .errors import InvalidInputError, UnknownIdError

logger = logging.getLogger(__name__)

_OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")
_SUFFIX = "00000000"
#: the payload key of the original norm of a vector stored normalized
NORM_KEY = "embedding_norm"
_UNIT_NORM_TOL = 1e-6
PAGE_SIZE = 1000  # ids per lookup
SCROLL_PAGE_SIZE = 10000  # listing every id of an index


def is_object_id(value: object) -> bool:
    return isinstance(value, str) and bool(_OBJECT_ID_RE.match(value))


def validate_ids(ids: Iterable[object], kind: str = "sample") -> List[str]:
    """Returns ``ids`` as a list of strings, or raises naming the first bad
    one (a wrong type, a non-ObjectId string)."""
    if isinstance(ids, str):
        ids = [ids]
    try:
        ids = iter(ids)
    except TypeError:
        raise InvalidInputError(
            "Invalid %s ids %r: expected a list of 24-character hex ObjectId strings "
            "such as `dataset.values('id')`" % (kind, ids)
        ) from None

    out = []
    for value in ids:
        value = str(value) if not isinstance(value, str) and _is_oid_obj(value) else value
        if not is_object_id(value):
            raise InvalidInputError(
                "Invalid %s id %r: expected a 24-character hex ObjectId string "
                "such as the values of `dataset.values('id')`" % (kind, value)
            )
        out.append(value.lower())

    return out


def _is_oid_obj(value: object) -> bool:
    return type(value).__name__ == "ObjectId"


def to_point_id(fiftyone_id: str) -> str:
    return str(uuid.UUID(fiftyone_id + _SUFFIX))


def to_point_ids(fiftyone_ids: Sequence[str]) -> List[str]:
    # the canonical UUID text, by slicing: 5x faster than uuid.UUID per id
    return [
        "%s-%s-%s-%s-%s%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:], _SUFFIX)
        for h in (str(_id).lower() for _id in fiftyone_ids)
    ]


def from_point_id(point_id: object) -> str | None:
    """The FiftyOne id encoded in a point id, or None if the point id does
    not follow our scheme (e.g. a record written by a streaming pipeline)."""
    text = point_id.hex if isinstance(point_id, uuid.UUID) else str(point_id)
    text = text.replace("-", "")
    if len(text) == 32 and text.endswith(_SUFFIX):
        return text[:24]

    return None


def payloads(sample_ids: np.ndarray, label_ids: Optional[np.ndarray], norms: Optional[np.ndarray]) -> List[dict]:
    """Point payloads: the FiftyOne ids, and the original norm of vectors
    that cosine collections store normalized, to give them back as added
    (a unit vector needs none: what Qdrant stores is already the vector)."""
    sids = sample_ids.tolist()
    if norms is not None:
        out = [
            {"sample_id": s, NORM_KEY: n} if abs(n - 1.0) > _UNIT_NORM_TOL else {"sample_id": s}
            for s, n in zip(sids, norms.tolist())
        ]
    else:
        out = [{"sample_id": s} for s in sids]
    if label_ids is not None:
        for payload, lid in zip(out, label_ids.tolist()):
            payload["label_id"] = lid
    return out


def vector_of(record: PointRecord) -> np.ndarray:
    """A point's vector as it was added (cosine collections store it
    normalized, with its norm in the payload)."""
    norm = record.payload.get(NORM_KEY)
    return record.vector * norm if norm is not None else record.vector


def report_missing(missing: List[str], allow_missing: bool, warn_missing: bool) -> None:
    """Raises for ids asked for that are not in the index, or warns."""
    if not missing:
        return
    if not allow_missing:
        raise UnknownIdError(
            "Found %d ids (eg %s) that are not in the index. Pass "
            "allow_missing=True to ignore them" % (len(missing), missing[0])
        )
    if warn_missing:
        logger.warning("Skipping %d ids that are not in the index", len(missing))


class PointMap:
    """The FiftyOne ids of one index's collection and the points that hold
    them: lookups by id, listing, restrictions and the point ids to write.

    The listing of every id is cached until the collection's revision
    changes (the store's change counter), so an index's ``sample_ids`` do
    not cost a scroll per query."""

    def __init__(self, store: VectorStore, collection_name: str, vector_name: Optional[str], patches: bool):
        self.store = store
        self.collection_name = collection_name
        self.vector_name = vector_name
        self.patches = patches
        self._ids_cache: Optional[Tuple[object, np.ndarray, Optional[np.ndarray]]] = None
        self._payload_ids: Optional[bool] = None
        self._warned_duplicates: Optional[object] = None

    @property
    def id_field(self) -> str:
        """The payload field of the index's keys."""
        return "label_id" if self.patches else "sample_id"

    def forget(self, created: bool = False) -> None:
        """Drops the cached listing after a write; ``created``: the
        collection is new, written with our point ids."""
        self._ids_cache = None
        if created:
            self._payload_ids = False

    def fiftyone_ids(self, record) -> Tuple[str, Optional[str]]:
        """(sample id, label id or None) of a point or hit."""
        payload = record.payload
        derived = from_point_id(record.id)
        if self.patches:
            return payload.get("sample_id"), payload.get("label_id") or derived
        return payload.get("sample_id") or derived, None

    def key(self, record) -> str:
        """The index key of a point or hit: its label id for patches, else
        its sample id."""
        return self.fiftyone_ids(record)[1 if self.patches else 0]

    def uses_payload_ids(self) -> bool:
        """Whether point ids are foreign (e.g. written by a streaming
        pipeline) so that FiftyOne ids must be looked up in payloads."""
        if self._payload_ids is None:
            first = next(iter(self.store.scroll(self.collection_name, page_size=1)), [])
            if not first:
                return False
            self._payload_ids = from_point_id(first[0].id) != self.key(first[0])
        return self._payload_ids

    def hit_payload(self):
        """What of a hit's payload queries need: its FiftyOne ids, where the
        point id does not give them (a patch's sample, a pipeline's points)."""
        if self.uses_payload_ids():
            return ["sample_id", "label_id"]
        return ["sample_id"] if self.patches else False

    def counts_by_listing(self) -> bool:
        """Whether the index size is not the point count: points of a named
        vector collection may lack the vector, and points with foreign ids
        (written by a pipeline) may repeat a FiftyOne id."""
        return self.vector_name is not None or self.uses_payload_ids()

    def index_ids(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """All (sample ids, label ids) in the index, cached until the
        collection changes."""
        if not self.store.collection_exists(self.collection_name):
            empty = np.array([], dtype="<U24")
            return empty, (empty if self.patches else None)
        revision = self.store.revision(self.collection_name)
        if self._ids_cache is not None and revision is not None and self._ids_cache[0] == revision:
            return self._ids_cache[1], self._ids_cache[2]
        sample_ids: List[str] = []
        label_ids: List[str] = []
        with self.store.snapshot(self.collection_name):
            revision = self.store.revision(self.collection_name)
            # points of a collection with named vectors may lack ours (written
            # by another tool): only those that have it are in the index
            with_vectors = self.vector_name is not None
            seen: Set[str] = set()
            points = 0
            for page in self.store.scroll(
                self.collection_name, with_vectors=with_vectors, page_size=SCROLL_PAGE_SIZE,
                vector_name=self.vector_name,
            ):
                for record in page:
                    if with_vectors and record.vector is None:
                        continue
                    points += 1
                    sid, lid = self.fiftyone_ids(record)
                    key = lid if self.patches else sid
                    if key in seen:
                        continue  # another point of the same FiftyOne id
                    seen.add(key)
                    sample_ids.append(sid)
                    if lid is not None:
                        label_ids.append(lid)
        if points > len(seen) and self._warned_duplicates != revision:
            self._warned_duplicates = revision
            logger.warning(
                "Qdrant collection '%s' holds %d points for %d %s ids: several points carry the same %s. "
                "The index counts each id once; queries rank each by its nearest point, get_embeddings() "
                "returns one of them",
                self.collection_name, points, len(seen), "label" if self.patches else "sample", self.id_field,
            )
        result = (np.array(sample_ids, dtype="<U24"), np.array(label_ids, dtype="<U24") if self.patches else None)
        self._ids_cache = (revision,) + result
        return result

    def lookup(self, fiftyone_ids: Sequence[str], with_vectors: bool) -> Dict[str, PointRecord]:
        """Records by index key (sample ids, or label ids for patches); of
        several points of one id, the first."""
        found: Dict[str, PointRecord] = {}
        name, vector_name = self.collection_name, self.vector_name
        for start in range(0, len(fiftyone_ids), PAGE_SIZE):
            batch = fiftyone_ids[start : start + PAGE_SIZE]
            if self.uses_payload_ids():
                pages = self.store.scroll(
                    name, with_vectors=with_vectors, page_size=PAGE_SIZE,
                    restriction=IdRestriction(batch, field=self.id_field), vector_name=vector_name,
                )
                recs = [r for page in pages for r in page]
            else:
                recs = self.store.retrieve(name, to_point_ids(batch), with_vectors=with_vectors, vector_name=vector_name)
            for record in recs:
                if with_vectors and record.vector is None:
                    continue  # the point lacks this index's named vector: not in the index
                found.setdefault(self.key(record), record)
        return found

    def patches_of_samples(self, sample_ids: Sequence[str], with_vectors: bool) -> Dict[str, PointRecord]:
        """Records by label id of every patch of ``sample_ids``."""
        found: Dict[str, PointRecord] = {}
        for start in range(0, len(sample_ids), PAGE_SIZE):
            restriction = IdRestriction(sample_ids[start : start + PAGE_SIZE], field="sample_id")
            for page in self.store.scroll(
                self.collection_name, with_vectors=with_vectors, restriction=restriction,
                vector_name=self.vector_name,
            ):
                for record in page:
                    if with_vectors and record.vector is None:
                        continue  # lacks this index's named vector
                    found.setdefault(self.fiftyone_ids(record)[1], record)
        return found

    def restriction(self, fiftyone_ids: Sequence[str]) -> IdRestriction:
        """A query restriction to the points of ``fiftyone_ids``: by payload
        field where it is indexed (or the only way), else by point id."""
        field = self.id_field
        if self.uses_payload_ids() or self.store.has_keyword_index(self.collection_name, field):
            return IdRestriction(list(fiftyone_ids), field=field)
        return IdRestriction(to_point_ids(fiftyone_ids))

    def point_ids_for_write(self, keys: Sequence[str]) -> List[str]:
        """Point ids to upsert ``keys`` at: a pipeline's own point ids for
        ids it already wrote, ours for the others."""
        if self.uses_payload_ids():
            existing = self.lookup(list(keys), with_vectors=False)
            return [existing[k].id if k in existing else to_point_id(k) for k in keys]
        return to_point_ids(keys)

    def all_point_ids(self, keys: Sequence[str], found: Dict[str, PointRecord]) -> List[str]:
        """The points of ``keys``: with foreign point ids, several points may
        carry one FiftyOne id, and removing it removes them all."""
        point_ids = [found[k].id for k in keys]
        if not keys or not self.uses_payload_ids():
            return point_ids
        seen = set(point_ids)
        for start in range(0, len(keys), PAGE_SIZE):
            restriction = IdRestriction(list(keys[start : start + PAGE_SIZE]), field=self.id_field)
            for page in self.store.scroll(self.collection_name, page_size=PAGE_SIZE, restriction=restriction):
                for record in page:
                    if record.id not in seen:
                        seen.add(record.id)
                        point_ids.append(record.id)
        return point_ids

    def records(self, sample_ids=None, label_ids=None,
                missing: Callable[[List[str]], None] = lambda keys: None) -> List[PointRecord]:
        """The records (with vectors) of ``label_ids``, of ``sample_ids``
        (every patch of them, for a patches index) or, with neither, of every
        id, in the order asked; ``missing`` is given the asked ids that are
        not in the index."""
        if label_ids is not None or (sample_ids is not None and not self.patches):
            keys = validate_ids(label_ids if label_ids is not None else sample_ids,
                                "label" if label_ids is not None else "sample")
            found = self.lookup(keys, with_vectors=True)
            missing([k for k in keys if k not in found])
            return [found[k] for k in keys if k in found]
        if sample_ids is not None:
            keys = validate_ids(sample_ids, "sample")
            by_sample: Dict[str, List[PointRecord]] = {}
            for record in self.patches_of_samples(keys, with_vectors=True).values():
                by_sample.setdefault(record.payload.get("sample_id"), []).append(record)
            missing([k for k in keys if k not in by_sample])
            return [r for k in keys for r in by_sample.get(k, [])]
        out, seen = [], set()
        for page in self.store.scroll(self.collection_name, with_vectors=True, vector_name=self.vector_name):
            for record in page:
                key = self.key(record)
                # points lacking this index's named vector are not in it; of
                # several points of one id, the first counts
                if record.vector is not None and key not in seen:
                    seen.add(key)
                    out.append(record)
        return out

    def arrays(self, found: List[PointRecord], dimension: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """``get_embeddings()``'s (embeddings, sample ids, label ids) of records."""
        embeddings = np.array([vector_of(r) for r in found], dtype=np.float32).reshape(len(found), dimension)
        ids = [self.fiftyone_ids(r) for r in found]
        sample_ids = np.array([s for s, _ in ids], dtype="<U24")
        label_ids = np.array([l for _, l in ids], dtype="<U24") if self.patches else None
        return embeddings, sample_ids, label_ids

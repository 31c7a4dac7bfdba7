"""Mapping between FiftyOne ids and Qdrant point ids.

Qdrant point ids must be unsigned integers or UUIDs; FiftyOne ids are
24-hex-digit ObjectIds. We use the scheme of FiftyOne's built-in Qdrant
backend (ObjectId hex + eight zeros, read as a UUID) so that collections it
created stay readable, and the mapping needs no lookup table.
"""

from __future__ import annotations

import re
import uuid
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np

from .errors import InvalidInputError

_OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")
_SUFFIX = "00000000"


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


# A MongoDB document holding only an ObjectId ``_id`` is always these 22
# bytes: int32 length (22), type 0x07, the key "_id\0", 12 id bytes, 0x00
_ID_DOC_SIZE = 22
_ID_DOC_HEAD = np.frombuffer(b"\x16\x00\x00\x00\x07_id\x00", dtype=np.uint8)


def iter_object_id_batches(collection, pipeline: List[dict], batch_size: int = 10000) -> Iterator[List[str]]:
    """The ``_id`` values of an aggregation as hex strings, batch by batch,
    in the pipeline's order.

    The pipeline must end by projecting ``_id`` alone. Reading the raw BSON
    batches with numpy lists ids ~4x faster than ``values("id")`` (which
    decodes every document and converts every id in Python): it matters on
    every build and every view query. Batches in any other shape (ids that
    are not ObjectIds) are decoded normally.
    """
    import bson

    for raw in collection.aggregate_raw_batches(pipeline, batchSize=batch_size):
        buf = np.frombuffer(raw, dtype=np.uint8)
        if len(buf) % _ID_DOC_SIZE == 0:
            docs = buf.reshape(-1, _ID_DOC_SIZE)
            if (docs[:, : len(_ID_DOC_HEAD)] == _ID_DOC_HEAD).all() and (docs[:, -1] == 0).all():
                text = docs[:, len(_ID_DOC_HEAD) : -1].tobytes().hex()
                yield [text[i : i + 24] for i in range(0, len(text), 24)]
                continue
        yield [str(doc["_id"]) for doc in bson.decode_all(raw)]


def list_view_ids(samples, limit: Optional[int] = None, batch_size: int = 10000) -> Iterator[List[str]]:
    """The sample ids of a FiftyOne collection in ``samples.values("id")``
    order (the same pipeline, projected to ``_id``), batch by batch; at most
    ``limit`` of them."""
    post = ([{"$limit": limit}] if limit is not None else []) + [{"$project": {"_id": True}}]
    pipeline = samples._pipeline(post_pipeline=post)
    return iter_object_id_batches(samples._dataset._sample_collection, pipeline, batch_size)


def collect_view_ids(samples, limit: int) -> List[str]:
    """Up to ``limit`` sample ids of a FiftyOne collection in no particular
    order (for id filters), in one round trip: MongoDB pushes them as
    strings into one document, ~2x faster than one document per id. The
    document must stay under MongoDB's 16 MB: ``limit`` up to ~400k."""
    group = {"$group": {"_id": None, "ids": {"$push": {"$toString": "$_id"}}}}
    pipeline = samples._pipeline(post_pipeline=[{"$limit": limit}, group])
    doc = next(iter(samples._dataset._sample_collection.aggregate(pipeline)), None)
    return doc["ids"] if doc else []

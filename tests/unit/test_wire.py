"""numpy straight into Qdrant's UpsertPoints wire format, against the
messages qdrant-client's generated protobuf classes build: the columnar
encoding (every point laid out alike, what an index writes) and the point by
point one it falls back to must both equal them, byte for byte once parsed."""

import uuid

import numpy as np
import pytest
from qdrant_client import grpc as pb
from qdrant_client.conversions.conversion import payload_to_grpc

from fiftyone_qdrant import wire

N, DIM = 9, 6


def expected_message(ids, X, payloads, vector_name):
    message = pb.UpsertPoints(collection_name="c", wait=True)
    for point_id, row, payload in zip(ids, X.tolist(), payloads):
        point_id_msg = pb.PointId(uuid=point_id) if isinstance(point_id, str) else pb.PointId(num=point_id)
        p = pb.PointStruct(id=point_id_msg, payload=payload_to_grpc(payload))
        vector = p.vectors.vectors.vectors[vector_name] if vector_name else p.vectors.vector
        vector.dense.data.extend(row)
        message.points.append(p)
    return message


def uuids(n):
    return [str(uuid.UUID(int=(i + 1) * 7919)) for i in range(n)]


def sample_ids(n):
    return ["%024x" % (i * 104729) for i in range(n)]


X = np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32)
ALIKE = {
    "sample ids": [{"sample_id": s} for s in sample_ids(N)],
    "patches": [{"sample_id": s, "label_id": s[::-1]} for s in sample_ids(N)],
    "norms for all": [{"sample_id": s, "embedding_norm": 1.5 + i} for i, s in enumerate(sample_ids(N))],
    "no payload": [{} for _ in range(N)],
    "keys in any order": [{"a": "x", "b": "y"} if i % 2 else {"b": "y", "a": "x"} for i in range(N)],  # a map
}
UNLIKE = {
    "some norms": [{"sample_id": s, **({"embedding_norm": 2.0} if i % 3 == 0 else {})}
                   for i, s in enumerate(sample_ids(N))],
    "widths differ": [{"name": "x" * (i + 1)} for i in range(N)],
    "not ascii": [{"name": "значение"} for _ in range(N)],
    "ints and bools": [{"n": i, "ok": bool(i % 2)} for i in range(N)],
    "some empty": [{"sample_id": "a" * 24} if i else {} for i in range(N)],
}


@pytest.mark.parametrize("vector_name", [None, "img"])
@pytest.mark.parametrize("case", sorted(ALIKE))
def test_points_laid_out_alike_are_encoded_by_column(case, vector_name):
    payloads = ALIKE[case]
    encoded = wire.encode_upsert("c", uuids(N), X, payloads, vector_name)
    assert pb.UpsertPoints.FromString(encoded) == expected_message(uuids(N), X, payloads, vector_name)
    head = wire._tag(1, wire._LEN)  # the columnar path was the one taken
    assert wire._encode_columns(uuids(N), payloads, head, X.view(np.uint8)) is not None


@pytest.mark.parametrize("case", sorted(UNLIKE))
def test_points_laid_out_differently_are_encoded_one_by_one(case):
    payloads = UNLIKE[case]
    encoded = wire.encode_upsert("c", uuids(N), X, payloads)
    assert pb.UpsertPoints.FromString(encoded) == expected_message(uuids(N), X, payloads, None)
    assert wire._encode_columns(uuids(N), payloads, b"", X.view(np.uint8)) is None


def test_integer_ids_and_uuids_of_other_widths_are_encoded_one_by_one():
    payloads = ALIKE["sample ids"]
    for ids in (list(range(N)), [uuid.UUID(int=i).hex for i in range(N - 1)] + [str(uuid.UUID(int=5))]):
        encoded = wire.encode_upsert("c", ids, X, payloads)
        assert pb.UpsertPoints.FromString(encoded) == expected_message(ids, X, payloads, None)


def test_no_points():
    encoded = wire.encode_upsert("c", [], np.zeros((0, DIM), np.float32), [])
    assert pb.UpsertPoints.FromString(encoded) == pb.UpsertPoints(collection_name="c", wait=True)

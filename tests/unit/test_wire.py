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


# -- reading a serialized upsert's points as columns (the local service's side) --


def message_points(message):
    """What parsing point by point gives: ids, dense rows, vector names, payloads."""
    from qdrant_client.conversions.conversion import grpc_to_payload

    ids, rows, names, payloads = [], [], [], []
    for p in message.points:
        ids.append(p.id.uuid if p.id.HasField("uuid") else p.id.num)
        if p.vectors.HasField("vectors"):
            ((name, vector),) = p.vectors.vectors.vectors.items()
        else:
            name, vector = None, p.vectors.vector
        names.append(name)
        rows.append(list(vector.dense.data) if vector.HasField("dense") else list(vector.data))
        payloads.append(grpc_to_payload(p.payload))
    return ids, np.array(rows, dtype=np.float32), names, payloads


def columns_of(message):
    """point_columns of a message, checked against parsing it point by point:
    every column it gives must hold what the message holds."""
    columns = wire.point_columns(message.SerializeToString(), len(message.points), 3)
    if columns is not None:
        ids, rows, names, payloads = message_points(message)
        assert np.array_equal(columns.vectors, rows)
        assert names == [columns.vector_name] * len(names)
        assert columns.ids is None or columns.ids == ids
        assert columns.payloads is None or columns.payloads == payloads
    return columns


@pytest.mark.parametrize("vector_name", [None, "img"])
@pytest.mark.parametrize("case", sorted(ALIKE))
def test_points_laid_out_alike_are_read_by_column(case, vector_name):
    payloads = ALIKE[case]
    columns = columns_of(expected_message(uuids(N), X, payloads, vector_name))
    # protobuf writes a map's entries in its hash table's order, seeded per
    # process: two-key maps come out alike in some processes only
    if case != "keys in any order" or columns is not None:
        assert columns is not None and columns.ids == uuids(N) and columns.payloads == payloads
        assert columns.vector_name == vector_name
    # what our client sends, unparsed, reads the same
    encoded = wire.encode_upsert("c", uuids(N), X, payloads, vector_name)
    again = wire.point_columns(encoded, N, 3)
    assert again.ids == uuids(N) and again.payloads == payloads and np.array_equal(again.vectors, X)


@pytest.mark.parametrize("case", sorted(UNLIKE))
def test_points_laid_out_differently_are_never_misread(case):
    columns = columns_of(expected_message(uuids(N), X, UNLIKE[case], None))
    if case in ("widths differ", "some norms", "some empty"):
        assert columns is None


def test_a_column_that_cannot_be_read_is_left_to_the_message():
    # integer ids (varints) and integer payloads: the vectors are still read
    columns = columns_of(expected_message(list(range(1, N + 1)), X, UNLIKE["ints and bools"], None))
    assert columns is not None and columns.ids is None and columns.payloads is None
    # UUIDs not in canonical text (the engine would parse them): left to the message
    shouting = [u.upper() for u in uuids(N)]
    assert columns_of(expected_message(shouting, X, ALIKE["sample ids"], None)).ids is None


def test_points_that_differ_where_their_lengths_agree_are_not_read_by_column():
    payloads = [{"a" if i % 2 else "b": "x"} for i in range(N)]  # keys of one length
    assert columns_of(expected_message(uuids(N), X, payloads, None)) is None
    named = expected_message(uuids(N), X, ALIKE["sample ids"], "img")
    entry = named.points[3].vectors.vectors.vectors
    entry["imh"].CopyFrom(entry.pop("img"))  # another vector name, as long
    assert columns_of(named) is None
    sparse = expected_message(uuids(N), X[:, :3], ALIKE["sample ids"], None)
    sparse.points[2].vectors.vector.ClearField("dense")
    sparse.points[2].vectors.vector.sparse.indices.extend([1, 2, 3])
    assert columns_of(sparse) is None
    assert columns_of(pb.UpsertPoints(collection_name="c")) is None


def test_an_update_batch_hands_each_upsert_its_own_bytes():
    upserts = [expected_message(uuids(N), X * (i + 1), ALIKE["sample ids"], None) for i in range(2)]
    batch = pb.UpdateBatchPoints(collection_name="c", wait=True, operations=[
        pb.PointsUpdateOperation(upsert=pb.PointsUpdateOperation.PointStructList(points=upserts[0].points)),
        pb.PointsUpdateOperation(delete_points=pb.PointsUpdateOperation.DeletePoints(
            points=pb.PointsSelector(points=pb.PointsIdsList(ids=[pb.PointId(num=3)])))),
        pb.PointsUpdateOperation(upsert=pb.PointsUpdateOperation.PointStructList(points=upserts[1].points)),
    ])
    operations = wire.message_fields(batch.SerializeToString(), 3)
    assert [pb.PointsUpdateOperation.FromString(b) for b in operations] == list(batch.operations)
    for i in (0, 2):
        (upsert,) = wire.message_fields(operations[i], 1)
        columns = wire.point_columns(upsert, N, 1)
        np.testing.assert_array_equal(columns.vectors, X * (i // 2 + 1))
        assert columns.ids == uuids(N) and columns.payloads == ALIKE["sample ids"]
    assert wire.message_fields(operations[1], 1) == []
    # fields of fixed width (64 and 32 bits) with the same number are walked over, not taken
    first_upsert = wire.message_fields(operations[0], 1)
    assert wire.message_fields(b"\x09" + bytes(8) + b"\x0d" + bytes(4) + operations[0], 1) == first_upsert
    assert wire.message_fields(b"\x0b", 1) is None  # a group (wire type 3): not a message we read
    assert wire.message_fields(b"\x0a\x05ab", 1) is None  # a length past the end

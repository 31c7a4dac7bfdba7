"""The FiftyOne id <-> point id scheme (that of FiftyOne's built-in Qdrant
backend), payloads, and the checks every batch of a build passes."""

import numpy as np
import pytest

from fiftyone_qdrant import build, points
from fiftyone_qdrant.store import PointRecord
from fiftyone_qdrant.errors import InvalidInputError

OID = "65a1b2c3d4e5f60718293a4b"


def test_point_ids_round_trip_in_the_builtin_backends_scheme():
    assert points.to_point_id(OID) == "65a1b2c3-d4e5-f607-1829-3a4b00000000"
    assert points.to_point_ids([OID.upper()]) == [points.to_point_id(OID)]
    assert points.from_point_id(points.to_point_id(OID)) == OID
    assert points.from_point_id(7) is None  # a pipeline's own id
    assert points.from_point_id("f0ed0746-c140-4014-9dee-75f906cd0ad9") is None


def test_ids_are_validated_naming_the_bad_one():
    assert points.validate_ids(OID.upper()) == [OID]
    with pytest.raises(InvalidInputError, match="Invalid label id 'nope'"):
        points.validate_ids([OID, "nope"], "label")
    with pytest.raises(InvalidInputError, match="Invalid sample ids 5"):
        points.validate_ids(5)


def test_payloads_carry_ids_and_only_non_unit_norms():
    out = points.payloads(np.array([OID, OID]), np.array(["a" * 24, "b" * 24]), np.array([1.0, 2.5], np.float32))
    assert out == [{"sample_id": OID, "label_id": "a" * 24},
                   {"sample_id": OID, points.NORM_KEY: 2.5, "label_id": "b" * 24}]
    record = PointRecord(id=points.to_point_id(OID), payload=out[1], vector=np.array([0.6, 0.8], np.float32))
    np.testing.assert_allclose(points.vector_of(record), [1.5, 2.0])


@pytest.mark.parametrize("embeddings, message", [
    ([[1, 2], [3]], "rows of different lengths"),
    (np.array([["a", "b"]]), "numeric array"),
    (np.zeros((2, 2, 2)), "2-d array"),
])
def test_embeddings_must_be_a_2d_numeric_array(embeddings, message):
    with pytest.raises(InvalidInputError, match=message):
        build.as_2d_numeric(embeddings)


def test_norms_are_checked_in_chunks_and_bad_rows_named():
    X = np.ones((10, 4))
    np.testing.assert_allclose(build.checked_norms(X, cosine=True), np.full(10, 2.0))
    X[7, 1] = np.nan
    with pytest.raises(InvalidInputError, match=r"Embedding 7 \(id k7\) contains NaN or inf"):
        build.checked_norms(X, cosine=False, keys=["k%d" % i for i in range(10)])
    with pytest.raises(InvalidInputError, match="Embedding 1 is all zeros"):
        build.checked_norms(np.array([[1.0, 0], [0, 0]]), cosine=True)
    with pytest.raises(InvalidInputError, match="overflows float32"):
        build.checked_norms(np.full((1, 4), 1e300), cosine=False)


def test_a_checked_batch_splits_into_upserts():
    batch = build.CheckedBatch(np.arange(10.0).reshape(5, 2), np.ones(5, np.float32), np.array(list("abcde")), None)
    pieces = list(batch.pieces(2))
    assert [len(p) for p in pieces] == [2, 2, 1]
    assert [p.keys.tolist() for p in pieces] == [["a", "b"], ["c", "d"], ["e"]]
    assert batch.where(np.array([True, False, True, False, False])).keys.tolist() == ["a", "c"]

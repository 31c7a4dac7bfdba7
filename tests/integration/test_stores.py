"""The engine interface, checked identically on both code paths of
ServerStore: gRPC, against the embedded store's local Qdrant service
(qdrant-edge), and REST-style models, against qdrant-client's local mode
(which speaks the server's API without a server)."""

import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient

from fiftyone_qdrant import points as idmap
from fiftyone_qdrant.store import CollectionSpec, IdRestriction
from fiftyone_qdrant.errors import CollectionNotFoundError
from fiftyone_qdrant.server import ServerStore

from conftest import exact_top_k, random_embeddings


@pytest.fixture(params=["embedded", "server-api"])
def store(request, tmp_path):
    if request.param == "embedded":
        s = ServerStore.local(str(tmp_path / "store"))
    else:
        s = ServerStore.from_client(QdrantClient(path=str(tmp_path / "local")), "qdrant-client local mode")
    yield s
    s.close()


def oids(n):
    return ["%024x" % (0x6500000000000000000000 + i) for i in range(n)]


def test_collection_lifecycle_and_metadata(store):
    assert store.list_collections() == []
    store.create_collection("c1", CollectionSpec(dimension=4, metric="euclidean"), {"a": 1})
    assert store.collection_exists("c1") and store.list_collections() == ["c1"]
    spec = store.get_spec("c1")
    assert (spec.dimension, spec.metric) == (4, "euclidean")
    assert store.get_metadata("c1") == {"a": 1}
    store.set_metadata("c1", {"b": {"nested": [1, 2]}})
    assert store.get_metadata("c1") == {"b": {"nested": [1, 2]}}
    store.delete_collection("c1")
    assert not store.collection_exists("c1")
    with pytest.raises(CollectionNotFoundError):
        store.get_spec("c1")


@pytest.mark.parametrize("metric", ["cosine", "dotproduct", "euclidean", "manhattan"])
def test_points_and_queries(store, metric):
    n = 300
    X = random_embeddings(n, 8, seed=41)
    keys = oids(n)
    store.create_collection("c", CollectionSpec(dimension=8, metric=metric), {})
    store.create_keyword_index("c", "sample_id")
    for start in range(0, n, 100):
        store.upsert("c", idmap.to_point_ids(keys[start:start + 100]), X[start:start + 100],
                     [{"sample_id": k} for k in keys[start:start + 100]])
    assert store.count("c") == n

    Q = random_embeddings(3, 8, seed=42)
    hits = store.query_batch("c", Q, 5)
    for q, row in zip(Q, hits):
        assert [h.payload["sample_id"] for h in row] == exact_top_k(keys, X, q, metric, k=5)[0]

    allowed = keys[::7]
    for restriction in (IdRestriction(idmap.to_point_ids(allowed)), IdRestriction(allowed, field="sample_id")):
        row = store.query_batch("c", Q[:1], 4, restriction=restriction)[0]
        keep = np.isin(keys, allowed)
        assert [h.payload["sample_id"] for h in row] == exact_top_k(allowed, X[keep], Q[0], metric, k=4)[0]

    records = store.retrieve("c", idmap.to_point_ids(keys[:3]) + [str(uuid.uuid4())], with_vectors=True)
    assert sorted(idmap.from_point_id(r.id) for r in records) == sorted(keys[:3])
    assert all(r.vector.shape == (8,) for r in records)

    seen = [r.payload["sample_id"] for page in store.scroll("c", page_size=64) for r in page]
    assert sorted(seen) == sorted(keys)

    store.delete("c", idmap.to_point_ids(keys[:10]))
    assert store.count("c") == n - 10
    assert store.retrieve("c", idmap.to_point_ids(keys[:10])) == []


def test_named_vector_collections(store):
    X = random_embeddings(20, 4, seed=43)
    keys = oids(20)
    store.create_collection("named", CollectionSpec(dimension=4, vector_name="image"), {})
    store.upsert("named", idmap.to_point_ids(keys), X, [{"sample_id": k} for k in keys], vector_name="image")
    assert store.get_spec("named", "image").dimension == 4
    row = store.query_batch("named", X[:1], 3, vector_name="image")[0]
    assert row[0].payload["sample_id"] == keys[0]
    (rec,) = store.retrieve("named", idmap.to_point_ids(keys[:1]), with_vectors=True, vector_name="image")
    np.testing.assert_allclose(rec.vector, X[0] / np.linalg.norm(X[0]), atol=1e-5)
    with pytest.raises(ValueError, match="vector_name"):
        store.get_spec("named", "text")

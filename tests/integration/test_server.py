"""The same backend against a real Qdrant server (REST, and gRPC when
``QDRANT_PREFER_GRPC`` is set). Runs only when ``QDRANT_URL`` is set, e.g.
``QDRANT_URL=http://localhost:6333 pytest tests/test_server.py``."""

import os
import uuid

import numpy as np
import pytest

import fiftyone.brain as fob

import fiftyone_qdrant as foq

from conftest import exact_top_k, random_embeddings

QDRANT_URL = os.environ.get("QDRANT_URL")
pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not QDRANT_URL, reason="no Qdrant server: set QDRANT_URL to run these tests"),
]


@pytest.fixture
def server_kwargs():
    return {
        "url": QDRANT_URL,
        "api_key": os.environ.get("QDRANT_API_KEY"),
        "prefer_grpc": os.environ.get("QDRANT_PREFER_GRPC", "").lower() == "true",
        "collection_name": "fiftyone-qdrant-test-" + uuid.uuid4().hex[:8],
    }


def test_server_end_to_end(dataset_factory, server_kwargs):
    dataset = dataset_factory(300)
    ids = dataset.values("id")
    X = random_embeddings(300, 16, seed=31)
    index = fob.compute_similarity(
        dataset.limit(250), embeddings=X[:250], backend="qdrant", brain_key="srv",
        hnsw_config={"m": 8}, **server_kwargs,
    )
    try:
        assert index.total_index_size == 250
        index.add_to_index(X[250:], ids[250:])
        assert index.total_index_size == 300
        expected, dists = exact_top_k(ids, X, X[3], "cosine", k=10)
        view = dataset.sort_by_similarity(ids[3], k=10, brain_key="srv", dist_field="d")
        assert view.values("id") == expected
        np.testing.assert_allclose(view.values("d"), dists, atol=1e-4)

        small = dataset.take(40, seed=3)
        keep = np.isin(ids, small.values("id"))
        expected, _ = exact_top_k(list(np.array(ids)[keep]), X[keep], X[3], "cosine", k=5)
        assert small.sort_by_similarity(ids[3], k=5, brain_key="srv").values("id") == expected

        emb, sids, _ = index.get_embeddings(ids[:5])
        np.testing.assert_allclose(emb, X[:5], atol=1e-5)
        index.remove_from_index(ids[:5])
        assert index.total_index_size == 295

        (listed,) = [i for i in foq.list_indexes(url=QDRANT_URL, api_key=server_kwargs["api_key"])
                     if i["collection_name"] == server_kwargs["collection_name"]]
        assert listed["runs"][0]["brain_key"] == "srv"
        if server_kwargs["api_key"]:
            assert server_kwargs["api_key"] not in repr(listed)
    finally:
        index.cleanup()
    assert server_kwargs["collection_name"] not in [
        i["collection_name"] for i in foq.list_indexes(url=QDRANT_URL, api_key=server_kwargs["api_key"])
    ]


def test_server_wrong_api_key_is_a_clear_error(dataset_factory, server_kwargs):
    dataset = dataset_factory(3)
    server_kwargs["api_key"] = "definitely-wrong-key"
    try:
        fob.compute_similarity(dataset, embeddings=random_embeddings(3, 4), backend="qdrant",
                               brain_key="bad", timeout=5, **server_kwargs)
    except foq.ConnectionFailedError as e:
        assert "definitely-wrong-key" not in str(e)
        assert dataset.list_brain_runs() == []
    else:
        pytest.skip("this server does not check API keys")

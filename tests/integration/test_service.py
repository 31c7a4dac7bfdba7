"""The embedded store's local Qdrant service, as qdrant-client users meet it.

Congruence: the same qdrant-client calls against our service and against
qdrant-client's own in-process engine (local mode, the reference for the
API's semantics) give the same answers, so the client code path that
servers and clusters use is exercised on the wire in every run. Then the
service's life (started on demand, private, outlives its starter, stops
when idle), its faults (SIGKILL, damaged or deleted collections, a full
disk) and the migration of stores written by fiftyone-qdrant 0.1.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import grpc as pb
from qdrant_client import models as qm

import fiftyone.brain as fob

from fiftyone_qdrant import errors as foq_errors
from fiftyone_qdrant import indexing, local, service
from fiftyone_qdrant.connection import close_all
from fiftyone_qdrant.store import CollectionSpec
from fiftyone_qdrant.errors import QdrantBackendError
from fiftyone_qdrant.server import ServerStore

from conftest import exact_top_k, random_embeddings

# -- congruence with qdrant-client's in-process engine -------------------------


def _ids(n, kind):
    return [i + 1 for i in range(n)] if kind == "int" else [str(uuid.UUID(int=i + 1)) for i in range(n)]


def _points(records, with_vectors=False):
    out = []
    for r in records:
        vector = r.vector
        if isinstance(vector, dict):
            vector = {k: (np.round(np.asarray(v, dtype=float), 4).tolist() if isinstance(v, list) else
                          (list(v.indices), np.round(v.values, 4).tolist())) for k, v in vector.items()}
        elif vector is not None:
            vector = np.round(np.asarray(vector, dtype=float), 4).tolist()
        out.append((str(r.id), r.payload, vector if with_vectors else None))
    return sorted(out, key=lambda t: t[0])


def _hits(points):
    return [(str(p.id), round(float(p.score), 4)) for p in points]


def exercise(client: QdrantClient, kind: str) -> dict:
    """Everyday qdrant-client calls; returns what they answered."""
    rng = np.random.default_rng(7)
    out = {}
    n = 60
    ids = _ids(n, kind)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    client.create_collection(
        "dense", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.COSINE), metadata={"owner": "test"}
    )
    out["exists"] = (client.collection_exists("dense"), client.collection_exists("nope"))
    out["names"] = [c.name for c in client.get_collections().collections]
    info = client.get_collection("dense")
    out["info"] = (info.config.params.vectors.size, info.config.params.vectors.distance, info.config.metadata)
    client.upsert("dense", points=[
        qm.PointStruct(id=ids[i], vector=X[i].tolist(), payload={"tag": "ab"[i % 2], "n": i, "nested": {"k": [i, "x"]}})
        for i in range(n)
    ])
    out["count"] = client.count("dense", exact=True).count
    tag_a = qm.Filter(must=[qm.FieldCondition(key="tag", match=qm.MatchValue(value="a"))])
    out["count_a"] = client.count("dense", count_filter=tag_a, exact=True).count
    out["retrieve"] = _points(client.retrieve("dense", ids[:5], with_vectors=True), with_vectors=True)
    pages, offset = [], None
    while True:
        records, offset = client.scroll("dense", limit=7, offset=offset)
        pages.append(len(records))
        out.setdefault("scrolled", []).extend(str(r.id) for r in records)
        if offset is None:
            break
    out["pages"] = pages
    out["scrolled"] = sorted(out["scrolled"])
    filters = {
        "any": qm.Filter(must=[qm.FieldCondition(key="n", match=qm.MatchAny(any=[1, 2, 3, 40]))]),
        "except": qm.Filter(must=[qm.FieldCondition(key="tag", match=qm.MatchExcept(**{"except": ["a"]}))]),
        "range": qm.Filter(must=[qm.FieldCondition(key="n", range=qm.Range(gte=10, lt=20))]),
        "not": qm.Filter(must_not=[qm.FieldCondition(key="tag", match=qm.MatchValue(value="b"))]),
        "should": qm.Filter(should=[qm.HasIdCondition(has_id=ids[:3]),
                                    qm.FieldCondition(key="n", match=qm.MatchValue(value=50))]),
        "ids": qm.Filter(must=[qm.HasIdCondition(has_id=ids[10:30])]),
    }
    for name, f in filters.items():
        out["scroll_" + name] = _points(client.scroll("dense", scroll_filter=f, limit=100)[0])
        out["query_" + name] = _hits(client.query_points("dense", query=X[0].tolist(), query_filter=f, limit=5).points)
    out["query"] = _hits(client.query_points("dense", query=X[3].tolist(), limit=8, with_payload=True).points)
    out["query_threshold"] = _hits(client.query_points("dense", query=X[3].tolist(), limit=60, score_threshold=0.5).points)
    out["query_offset"] = _hits(client.query_points("dense", query=X[3].tolist(), limit=3, offset=2).points)
    out["query_by_id"] = _hits(client.query_points("dense", query=ids[4], limit=5).points)
    out["query_exact"] = _hits(client.query_points(
        "dense", query=X[5].tolist(), limit=5, search_params=qm.SearchParams(exact=True)).points)
    batch = client.query_batch_points("dense", requests=[
        qm.QueryRequest(query=X[i].tolist(), limit=4, filter=tag_a if i % 2 else None) for i in range(3)
    ])
    out["batch"] = [_hits(r.points) for r in batch]

    client.set_payload("dense", payload={"extra": True}, points=ids[:4])
    client.overwrite_payload("dense", payload={"only": 1}, points=[ids[4]])
    client.delete_payload("dense", keys=["n"], points=[ids[5]])
    client.clear_payload("dense", points_selector=[ids[6]])
    client.set_payload("dense", payload={"by_filter": "yes"}, points=filters["range"])
    out["payloads"] = _points(client.retrieve("dense", ids[:8] + ids[10:12]))
    client.delete("dense", points_selector=qm.PointIdsList(points=ids[:10]))
    client.delete("dense", points_selector=qm.FilterSelector(filter=tag_a))
    out["after_delete"] = sorted(str(r.id) for r in client.scroll("dense", limit=100)[0])
    client.batch_update_points("dense", update_operations=[
        qm.UpsertOperation(upsert=qm.PointsList(points=[qm.PointStruct(id=ids[50], vector=X[0].tolist(), payload={"b": 1})])),
        qm.SetPayloadOperation(set_payload=qm.SetPayload(payload={"batch": 1}, points=[ids[41], ids[43], ids[45]])),
        qm.DeleteOperation(delete=qm.PointIdsList(points=[ids[47]])),
        qm.OverwritePayloadOperation(overwrite_payload=qm.SetPayload(payload={"o": 2}, points=[ids[49]])),
    ])
    out["after_batch"] = _points(client.retrieve("dense", ids[39:52], with_vectors=True), with_vectors=True)

    # conditional writes (update_mode, update_filter), alone and in a batch;
    # 20 points laid out alike are read by column, in a batch too
    client.create_collection("modes", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.DOT))
    client.upsert("modes", points=[qm.PointStruct(id=ids[i], vector=X[i].tolist(), payload={"tag": "ab"[i % 2]})
                                   for i in range(20)])

    def shifted(lo, hi, tag):
        return [qm.PointStruct(id=ids[i], vector=X[i + 1].tolist(), payload={"tag": tag}) for i in range(lo, hi)]

    client.upsert("modes", points=shifted(10, 30, "insert"), update_mode=qm.UpdateMode.INSERT_ONLY)
    client.upsert("modes", points=shifted(25, 40, "update"), update_mode=qm.UpdateMode.UPDATE_ONLY)
    client.upsert("modes", points=shifted(0, 12, "filtered"), update_filter=tag_a)
    client.batch_update_points("modes", update_operations=[
        qm.UpsertOperation(upsert=qm.PointsList(points=shifted(35, 55, "batch"), update_mode=qm.UpdateMode.INSERT_ONLY)),
        qm.UpsertOperation(upsert=qm.PointsList(points=shifted(12, 32, "batch-b"), update_filter=qm.Filter(
            must=[qm.FieldCondition(key="tag", match=qm.MatchValue(value="b"))]))),
    ])
    client.update_vectors("modes", points=[qm.PointVectors(id=ids[i], vector=[1.0, 2.0, 3.0, 4.0]) for i in (0, 1, 2)],
                          update_filter=qm.Filter(must=[qm.FieldCondition(key="tag", match=qm.MatchValue(value="filtered"))]))
    out["modes"] = _points(client.scroll("modes", limit=100, with_vectors=True)[0], with_vectors=True)
    client.update_collection("dense", metadata={"owner": None, "stage": 2})
    out["metadata"] = client.get_collection("dense").config.metadata

    # named dense vectors of two sizes and metrics
    client.create_collection("named", vectors_config={
        "img": qm.VectorParams(size=4, distance=qm.Distance.DOT),
        "txt": qm.VectorParams(size=3, distance=qm.Distance.EUCLID),
    })
    Y = rng.normal(size=(n, 3)).astype(np.float32)
    client.upsert("named", points=[
        qm.PointStruct(id=ids[i], vector={"img": X[i].tolist(), "txt": Y[i].tolist()}) for i in range(20)
    ] + [qm.PointStruct(id=ids[20], vector={"txt": Y[20].tolist()})])
    out["named_img"] = _hits(client.query_points("named", query=X[1].tolist(), using="img", limit=5).points)
    out["named_txt"] = _hits(client.query_points("named", query=Y[1].tolist(), using="txt", limit=5).points)
    out["named_retrieve"] = _points(client.retrieve("named", [ids[0], ids[20]], with_vectors=True), with_vectors=True)
    out["named_only_txt"] = _points(client.retrieve("named", [ids[0]], with_vectors=["txt"]), with_vectors=True)
    client.update_vectors("named", points=[qm.PointVectors(id=ids[1], vector={"txt": [0.0, 0.0, 1.0]})])
    client.delete_vectors("named", vectors=["img"], points=[ids[2]])
    out["named_updated"] = _points(client.retrieve("named", ids[1:3], with_vectors=True), with_vectors=True)

    # sparse and multi vectors
    client.create_collection("sparse", vectors_config={},
                             sparse_vectors_config={"s": qm.SparseVectorParams()})
    client.upsert("sparse", points=[
        qm.PointStruct(id=ids[i], vector={"s": qm.SparseVector(indices=[i % 5, 7, 11 + i % 3], values=[1.0, 0.5 + i / 100, 2.0])})
        for i in range(15)
    ])
    out["sparse"] = _hits(client.query_points(
        "sparse", query=qm.SparseVector(indices=[1, 7, 12], values=[1.0, 1.0, 0.5]), using="s", limit=5).points)
    out["sparse_retrieve"] = _points(client.retrieve("sparse", ids[:2], with_vectors=True), with_vectors=True)
    client.create_collection("multi", vectors_config=qm.VectorParams(
        size=2, distance=qm.Distance.COSINE, multivector_config=qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)))
    M = rng.normal(size=(10, 3, 2)).astype(np.float32)
    client.upsert("multi", points=[qm.PointStruct(id=ids[i], vector=M[i].tolist()) for i in range(10)])
    out["multi"] = _hits(client.query_points("multi", query=M[2][:2].tolist(), limit=4).points)

    out["names_before_delete"] = sorted(c.name for c in client.get_collections().collections)
    client.delete_collection("named")
    out["names_after_delete"] = sorted(c.name for c in client.get_collections().collections)
    return out


@pytest.fixture
def service_client(store_path):
    store = ServerStore.local(store_path)
    yield store.client
    store.close()


@pytest.mark.parametrize("kind", ["int", "uuid"])
def test_service_answers_as_qdrant_clients_own_engine(service_client, kind):
    reference = exercise(QdrantClient(":memory:"), kind)
    got = exercise(service_client, kind)
    assert got.keys() == reference.keys()
    for key in reference:
        assert got[key] == reference[key], key


def test_unimplemented_calls_say_which_call(service_client):
    service_client.create_collection("c", vectors_config=qm.VectorParams(size=2, distance=qm.Distance.DOT))
    with pytest.raises(grpc.RpcError) as e:
        service_client.grpc_points.Recommend(pb.RecommendPoints(collection_name="c", positive=[pb.PointId(num=1)]))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Points.Recommend" in e.value.details()
    with pytest.raises(Exception, match="Points.Query with prefetch"):
        service_client.query_points("c", prefetch=[qm.Prefetch(query=[1.0, 0.0])], query=qm.FusionQuery(fusion=qm.Fusion.RRF))
    with pytest.raises(Exception, match="Points.Query with a recommend query"):
        service_client.query_points("c", query=qm.RecommendQuery(recommend=qm.RecommendInput(positive=[[1.0, 0.0]])))


# -- background HNSW and quantization ------------------------------------------


def _clustered(n, d, seed=0, clusters=40):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall_at_10(client, name, x, queries, present=None, **kwargs):
    """Mean recall@10 of the collection's answers, against numpy over the
    ``present`` ids (default: all rows of ``x``; id = row)."""
    present = np.arange(len(x)) if present is None else np.asarray(present)
    found = []
    for q in queries:
        exact = set(present[np.argsort(-(x[present] @ x[q]), kind="stable")[:10]].tolist())
        got = {p.id for p in client.query_points(name, query=x[q].tolist(), limit=10, **kwargs).points}
        found.append(len(exact & got) / 10)
    return float(np.mean(found))


def _wait_rebuilds(store_path, name, count, timeout=180):
    """Until the service has swapped in ``count`` indexed copies of ``name``;
    the lines of its log that say so."""
    deadline = time.time() + timeout
    while True:
        done = [line for line in _service_log(store_path).splitlines() if "Collection '%s' indexed:" % name in line]
        if len(done) >= count:
            return done
        assert time.time() < deadline, "%d of %d rebuilds after %ds" % (len(done), count, timeout)
        time.sleep(0.2)


def _wait_for_dir(path, timeout=60):
    """Until the background indexer has started a rebuild (its copy's directory)."""
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        assert time.time() < deadline, "no background rebuild started"
        time.sleep(0.01)


def _service_log(store_path):
    with open(os.path.join(store_path, local.LOG_FILE)) as f:
        return f.read()


def test_past_its_threshold_a_collection_is_indexed_in_the_background(store_path, monkeypatch):
    """As on a Qdrant server: once writes pause, a collection past its
    indexing threshold gets its HNSW index without anyone asking; queries
    are exact until then, the service answers meanwhile, and writes made
    while the index is built (by id, replayed; by filter, a retry) are all
    in the indexed collection."""
    monkeypatch.setenv("FIFTYONE_QDRANT_INDEX_QUIET_S", "0.3")
    client = ServerStore.local(store_path).client
    n, d = 12000, 48
    x = _clustered(n + 500, d)
    client.create_collection(
        "bg", vectors_config=qm.VectorParams(size=d, distance=qm.Distance.COSINE),
        hnsw_config=qm.HnswConfigDiff(m=32, ef_construct=400),  # a slower build: time to write during it
        optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=100),  # KB: ~530 vectors of 48-d
    )
    client.upload_collection("bg", vectors=x[:n], ids=list(range(n)), payload=[{"i": i} for i in range(n)],
                             batch_size=1000)
    assert client.get_collection("bg").indexed_vectors_count == 0
    assert _recall_at_10(client, "bg", x[:n], range(0, n, 400)) == 1.0  # exact until indexed

    indexing_dir = os.path.join(store_path, "collections", "bg", "shard.indexing")
    _wait_for_dir(indexing_dir)
    # while it is being indexed: the service answers, and takes writes by id
    assert client.count("bg").count == n
    client.upsert("bg", points=[qm.PointStruct(id=i, vector=x[i].tolist(), payload={"i": i}) for i in range(n, n + 500)])
    client.delete("bg", points_selector=qm.PointIdsList(points=list(range(100))))
    client.set_payload("bg", payload={"late": True}, points=[200, 201])
    (done,) = _wait_rebuilds(store_path, "bg", 1)
    assert int(re.search(r"(\d+) written meanwhile replayed", done).group(1)) == 500 + 100 + 2  # the ids above
    info = client.get_collection("bg")
    assert info.points_count == n + 400
    # the copy is indexed; what was replayed (below the threshold) stays a
    # small plain segment, searched exactly, as on a server
    assert info.indexed_vectors_count >= n - 100
    assert not os.path.isdir(indexing_dir)
    assert client.retrieve("bg", [5, 200, n + 499], with_payload=True)[0].id == 200
    assert client.retrieve("bg", [200])[0].payload == {"i": 200, "late": True}
    present = np.arange(100, n + 500)
    assert _recall_at_10(client, "bg", x, range(500, n + 500, 400), present) >= 0.98
    assert _recall_at_10(client, "bg", x, range(500, n + 500, 400), present,
                         search_params=qm.SearchParams(exact=True)) == 1.0
    assert "replayed" in _service_log(store_path)

    # a write by filter during a rebuild: that rebuild is dropped, the next one takes it
    client.upsert("bg", points=[qm.PointStruct(id=i, vector=x[i].tolist(), payload={"i": i}) for i in range(1000)])
    _wait_for_dir(indexing_dir)
    client.delete("bg", points_selector=qm.FilterSelector(filter=qm.Filter(must=[
        qm.FieldCondition(key="i", range=qm.Range(lt=50))])))
    _wait_rebuilds(store_path, "bg", 2)
    assert client.count("bg").count == client.get_collection("bg").indexed_vectors_count == n + 450
    assert client.retrieve("bg", [10, 60])[0].id == 60
    assert "written by filter (or deleted) while being indexed" in _service_log(store_path)


def _hnsw_segments(store_path, name):
    """The collection's segments that have an HNSW index (as the engine's
    segment.json says)."""
    root = os.path.join(store_path, "collections", name, "shard", "segments")
    indexed = set()
    for segment in os.listdir(root):
        with open(os.path.join(root, segment, "segment.json")) as f:
            if any(v["index"]["type"] == "hnsw" for v in json.load(f)["config"]["vector_data"].values()):
                indexed.add(segment)
    return indexed


def test_a_rebuild_indexes_only_what_was_written_since_the_last_one(store_path, monkeypatch):
    """The indexer copies the live shard's files, so the segments an earlier
    rebuild indexed are kept as they are (same segments) and only the points
    written since get indexed; the child applies the collection's current
    optimizer settings (here indexing switched on after the data arrived),
    and a new quantization rebuilds every segment."""
    monkeypatch.setenv("FIFTYONE_QDRANT_INDEX_QUIET_S", "0.3")
    client = ServerStore.local(store_path).client
    n, d = 6000, 32
    x = _clustered(2 * n, d, seed=3)
    client.create_collection("inc", vectors_config=qm.VectorParams(size=d, distance=qm.Distance.COSINE),
                             # indexing off; segments of at most ~1 MB (7,800 points), so
                             # that the engine does not merge the new points into the old
                             optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=0, max_segment_size=1000))
    client.upload_collection("inc", vectors=x[:n], ids=list(range(n)), batch_size=1000)
    time.sleep(1.0)
    assert client.get_collection("inc").indexed_vectors_count == 0  # indexing off: nothing happened
    client.update_collection("inc", optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=100))
    _wait_rebuilds(store_path, "inc", 1)
    assert client.get_collection("inc").indexed_vectors_count == n
    first = _hnsw_segments(store_path, "inc")
    assert first

    client.upload_collection("inc", vectors=x[n:], ids=list(range(n, 2 * n)), batch_size=1000)
    _wait_rebuilds(store_path, "inc", 2)
    info = client.get_collection("inc")
    assert info.points_count == info.indexed_vectors_count == 2 * n
    assert first < _hnsw_segments(store_path, "inc")  # every indexed segment kept, new ones added
    assert _recall_at_10(client, "inc", x, range(0, 2 * n, 500)) >= 0.98

    client.update_collection("inc", quantization_config=qm.ScalarQuantization(
        scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8)))
    assert _hnsw_segments(store_path, "inc") and not first & _hnsw_segments(store_path, "inc")  # all rebuilt
    assert client.get_collection("inc").config.quantization_config.scalar.type == qm.ScalarType.INT8
    rescored = qm.SearchParams(quantization=qm.QuantizationSearchParams(rescore=True, oversampling=3.0))
    assert _recall_at_10(client, "inc", x, range(0, 2 * n, 500), search_params=rescored) >= 0.98


def _free_mb(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def test_a_rebuild_the_disk_cannot_take_is_not_started(store_path, monkeypatch):
    """The copy plus the segments indexing writes for the unindexed points
    (2.5x the shard when nothing is indexed yet) must fit on the disk, or
    the rebuild is refused before anything is copied; queries stay exact,
    and once space allows (here: a smaller reserve) the index is built.
    Room for 3.5x is enough: a 10M store must not need 4x its size."""
    monkeypatch.setenv("FIFTYONE_QDRANT_INDEX_QUIET_S", "0.3")
    n, d = 4000, 256  # a shard of ~10 MB: the margins below are as large, far above what else writes meanwhile
    x = _clustered(n, d, seed=7)
    client = ServerStore.local(store_path).client
    client.create_collection("full", vectors_config=qm.VectorParams(size=d, distance=qm.Distance.COSINE),
                             optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=0))
    client.upload_collection("full", vectors=x, ids=list(range(n)), batch_size=1000)
    local.stop_service(store_path)  # flushed: the shard's size is what a rebuild copies
    shard = os.path.join(store_path, "collections", "full", "shard")
    size_mb = indexing.directory_bytes(shard) / 2**20
    monkeypatch.setenv("FIFTYONE_QDRANT_MIN_FREE_MB", str(_free_mb(store_path) - 1.5 * size_mb))  # 1.5x, not 2.5x
    client = ServerStore.local(store_path).client
    client.update_collection("full", optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=100))
    assert "No space left for this write" in _service_log(store_path)
    assert client.get_collection("full").indexed_vectors_count == 0
    assert sorted(os.listdir(os.path.dirname(shard))) == ["collection.json", "shard"]
    assert _recall_at_10(client, "full", x, range(0, n, 400)) == 1.0

    local.stop_service(store_path)
    monkeypatch.setenv("FIFTYONE_QDRANT_MIN_FREE_MB", str(_free_mb(store_path) - 3.5 * size_mb))  # 2.5x fits, 4x not
    client = ServerStore.local(store_path).client
    assert client.count("full").count == n  # opens the collection: the indexer watches open ones
    _wait_rebuilds(store_path, "full", 1)
    assert client.get_collection("full").indexed_vectors_count == n


def test_quantization_is_built_with_the_index_and_queries_rescore(dataset_factory, store_path):
    """``quantization_config`` and ``on_disk`` reach the engine; after
    ``optimize()`` the quantized index answers with the exact top 10
    (rescored, oversampled: QUANTIZED_SEARCH_DEFAULTS), and the collection
    reports its quantization as a server does."""
    from fiftyone_qdrant.similarity import DEFAULT_HNSW_EF, QUANTIZED_SEARCH_DEFAULTS

    n, d = 3000, 64
    x = _clustered(n, d, seed=5)
    dataset = dataset_factory(n)
    ids = dataset.values("id")
    index = fob.compute_similarity(
        dataset, embeddings=x, backend="qdrant", brain_key="int8", path=store_path, on_disk=True,
        quantization_config={"scalar": {"type": "int8", "always_ram": True}},
        optimizers_config={"indexing_threshold": 10},
    )
    index.optimize()
    info = index.client.get_collection(index.collection_name)
    assert info.indexed_vectors_count == n
    assert info.config.quantization_config.scalar.type == qm.ScalarType.INT8
    assert info.config.params.vectors.on_disk is True
    assert dataset.get_brain_info("int8").config.quantization_config == {"scalar": {"type": "int8", "always_ram": True}}
    assert index._search_params() == {"hnsw_ef": DEFAULT_HNSW_EF, "quantization": QUANTIZED_SEARCH_DEFAULTS}
    found = []
    for q in range(0, n, 150):
        got = dataset.sort_by_similarity(ids[q], k=10, brain_key="int8").values("id")
        found.append(len(set(got) & set(exact_top_k(ids, x, x[q], "cosine", k=10)[0])) / 10)
    assert np.mean(found) >= 0.98
    # the quantized scores alone (no rescoring) are worse: quantization is in use
    plain = _recall_at_10(index.client, index.collection_name, x, range(0, n, 150),
                          search_params=qm.SearchParams(quantization=qm.QuantizationSearchParams(rescore=False)))
    assert plain < np.mean(found)


@pytest.mark.parametrize("config,named", [
    ({"scalar": {}}, "needs 'type'"),
    ({"scalar": {"type": "int4"}}, "must be one of ['int8']"),
    ({"scalar": {"type": "int8", "quantile": 0.1}}, "quantile"),
    ({"product": {"compression": "x3"}}, "compression"),
    ({"scalar": {"type": "int8"}, "binary": {}}, "exactly one of"),
    ({"turbo": {}}, "Unknown key"),
    ("int8", "must be a dict"),
])
def test_bad_quantization_configs_are_refused_before_anything_is_written(dataset_factory, store_path, config, named):
    dataset = dataset_factory(5)
    with pytest.raises(foq_errors.ConfigError, match=re.escape(named)):
        fob.compute_similarity(dataset, embeddings=random_embeddings(5, 4), backend="qdrant", brain_key="b",
                               path=store_path, quantization_config=config)
    with pytest.raises(foq_errors.ConfigError, match="on_disk"):
        fob.compute_similarity(dataset, embeddings=random_embeddings(5, 4), backend="qdrant", brain_key="b",
                               path=store_path, on_disk="yes")
    assert dataset.list_brain_runs() == []


def _indexing_children(work_dir):
    """Pids of the processes indexing the shard copy at ``work_dir``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--optimize" in args and work_dir in args:
            pids.append(int(pid))
    return pids


def _running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, not yet reaped
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_service_takes_its_indexing_child_with_it(store_path, monkeypatch):
    """Left running, the child would go on writing in the directory where
    the next service makes its own copy."""
    monkeypatch.setenv("FIFTYONE_QDRANT_INDEX_QUIET_S", "0.3")
    store = ServerStore.local(store_path)
    client = store.client
    n, d = 40000, 128
    client.create_collection(
        "bg", vectors_config=qm.VectorParams(size=d, distance=qm.Distance.COSINE),
        hnsw_config=qm.HnswConfigDiff(m=48, ef_construct=800),  # a build of ~25 s here
        optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=100),
    )
    client.upload_collection("bg", vectors=_clustered(n, d), ids=list(range(n)), batch_size=1000)
    work_dir = os.path.join(store_path, "collections", "bg", "shard.indexing")
    deadline = time.time() + 60
    while not _indexing_children(work_dir):
        assert time.time() < deadline, "no indexing child started"
        time.sleep(0.01)
    (child,) = _indexing_children(work_dir)
    os.kill(local.read_address(store_path).pid, signal.SIGKILL)
    deadline = time.time() + 5
    while _running(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _running(child), "the indexing child outlived its service"
    # the next service starts over from the live shard
    assert store.count("bg") == n
    store.close()


def test_a_rebuild_cut_off_by_a_crash_leaves_the_live_shard(store_path):
    """What a crash mid-swap leaves (the live shard renamed away, the copy
    half indexed) is put back in order when the collection is next opened."""
    store = ServerStore.local(store_path)
    store.create_collection("c", CollectionSpec(dimension=4), {})
    store.client.upsert("c", points=[qm.PointStruct(id=i, vector=[1.0, i, 0.0, 0.0]) for i in range(10)])
    local.stop_service(store_path)
    directory = os.path.join(store_path, "collections", "c")
    os.rename(os.path.join(directory, "shard"), os.path.join(directory, "shard.retired"))
    os.makedirs(os.path.join(directory, "shard.indexing", "segments"))
    store = ServerStore.local(store_path)
    assert store.client.count("c").count == 10
    assert sorted(os.listdir(directory)) == ["collection.json", "shard"]


# -- the service's life ---------------------------------------------------------


def test_service_is_private_loopback_and_checks_its_token(store_path):
    store = ServerStore.local(store_path)
    store.create_collection("c", CollectionSpec(2, "dotproduct"), {})
    address = local.read_address(store_path)
    assert address.host == "127.0.0.1" and address.pid != os.getpid()
    assert stat.S_IMODE(os.stat(store_path).st_mode) == 0o700
    for name in ("service.json", "service.log", "clients.lock", "service.lock"):
        assert stat.S_IMODE(os.stat(os.path.join(store_path, name)).st_mode) == 0o600, name
    assert "token" not in repr(address) and address.token not in str(local.service_status(store_path))
    wrong = QdrantClient(host="127.0.0.1", grpc_port=address.port, prefer_grpc=True, api_key="not-the-token",
                         https=False, check_compatibility=False)
    with pytest.raises(Exception, match="UNAUTHENTICATED|Invalid or missing token"):
        wrong.get_collections()
    anonymous = QdrantClient(host="127.0.0.1", grpc_port=address.port, prefer_grpc=True, check_compatibility=False)
    with pytest.raises(Exception, match="UNAUTHENTICATED|Invalid or missing token"):
        anonymous.collection_exists("c")
    assert [c.name for c in store.client.get_collections().collections] == ["c"]
    store.close()


_STARTER = """
import sys, numpy as np
from fiftyone_qdrant.store import CollectionSpec
from fiftyone_qdrant.server import ServerStore
store = ServerStore.local(sys.argv[1])
store.create_collection("c", CollectionSpec(3, "euclidean"), {"by": "starter"})
ids = ["00000000-0000-0000-0000-%012d" % i for i in range(1, 101)]
store.upsert("c", ids, np.arange(300, dtype=np.float32).reshape(100, 3), [{"i": i} for i in range(100)])
from fiftyone_qdrant.local import read_address
print(read_address(sys.argv[1]).pid, flush=True)
"""


def test_service_outlives_its_starter_and_stops_when_idle(tmp_path):
    root = str(tmp_path / "store")
    env = dict(os.environ, FIFTYONE_QDRANT_SERVICE_IDLE_S="1")
    starter = subprocess.run([sys.executable, "-c", _STARTER, root], env=env, capture_output=True, text=True, timeout=120)
    assert starter.returncode == 0, starter.stderr
    pid = int(starter.stdout.split()[0])
    # the process that started it is gone; a service started with a 1 s
    # idle timeout is still there for this process, which registers first
    store = ServerStore.local(root)
    assert local.read_address(root).pid == pid
    assert store.count("c") == 100 and store.get_metadata("c") == {"by": "starter"}
    time.sleep(2.5)  # idle, but a client is alive: it stays
    assert local.read_address(root).pid == pid
    store.close()  # no client any more: it stops within idle + 1 s
    deadline = time.monotonic() + 10
    while local.read_address(root) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert local.read_address(root) is None
    assert not os.path.exists(os.path.join(root, "service.json"))
    # and starts again on demand, with everything there
    store = ServerStore.local(root)
    assert local.read_address(root).pid != pid and store.count("c") == 100
    store.close()
    assert local.stop_service(root)


def test_a_service_launched_ahead_is_the_one_connected_to(tmp_path):
    # what ConnectionSettings.connect does before importing qdrant-client
    root = str(tmp_path / "store")
    local.start_service(root)
    launched = local._launched[root]
    local.start_service(root)  # still starting: not launched twice
    assert local._launched[root] is launched
    store = ServerStore.local(root)
    assert local.read_address(root).pid == launched.pid and root not in local._launched
    local.start_service(root)  # running: nothing launched
    assert root not in local._launched
    assert store.list_collections() == []
    store.close()
    assert local.stop_service(root)
    assert launched.wait(timeout=30) == 0


def test_sigkill_of_the_service_keeps_every_acknowledged_write(store_path):
    store = ServerStore.local(store_path)
    store.create_collection("c", CollectionSpec(8, "cosine"), {}, keyword_fields=["sample_id"])
    X = random_embeddings(1000, 8, seed=3)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(1000)]
    for lo in range(0, 1000, 100):  # each call returns once acknowledged
        store.upsert("c", ids[lo : lo + 100], X[lo : lo + 100], [{"sample_id": "%024x" % i} for i in range(lo, lo + 100)])
    store.delete("c", ids[:10])
    first = local.read_address(store_path).pid
    os.kill(first, signal.SIGKILL)
    # the next call starts the service again (transparently) from the WAL
    assert store.count("c") == 990
    assert local.read_address(store_path).pid != first
    hits = store.query_batch("c", X[500:501], 5)[0]
    assert [h.id for h in hits][0] == ids[500]
    assert store.has_keyword_index("c", "sample_id")
    store.close()


def test_a_long_write_flushes_the_shard_so_its_wal_stays_small(store_path, monkeypatch):
    """The engine truncates its WAL only at a flush, and replays all of it
    when a crashed service loads the shard again: the service flushes a
    shard every $FIFTYONE_QDRANT_FLUSH_MB written (32 by default), so a
    build's WAL stays a few segments long. A SIGKILL after it loses
    nothing."""
    monkeypatch.delenv(service.FLUSH_MB_ENV, raising=False)
    monkeypatch.setenv("FIFTYONE_QDRANT_INDEX_QUIET_S", "1e9")  # no background HNSW build to wait for at the end
    n, d = 100000, 512
    written_mb = n * d * 4 / 2**20  # 195 MB of vectors
    store = ServerStore.local(store_path)
    store.create_collection("c", CollectionSpec(d, "cosine"), {}, keyword_fields=[])
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    last = None
    with store.batch("c"):
        for lo in range(0, n, 1000):
            last = random_embeddings(1000, d, seed=lo)
            store.upsert("c", ids[lo : lo + 1000], last, [{}] * 1000)
    wal_mb = indexing.directory_bytes(os.path.join(store_path, "collections", "c", "shard", "wal")) / 2**20
    assert wal_mb < written_mb / 2, "the WAL holds %.0f MB of %.0f MB written" % (wal_mb, written_mb)
    os.kill(local.read_address(store_path).pid, signal.SIGKILL)
    assert store.count("c") == n
    hits = store.query_batch("c", last[-1:], 1)[0]
    assert hits[0].id == ids[-1] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    store.close()


@pytest.mark.parametrize("value,megabytes", [("8", 8), ("0", 0), ("", 32), ("lots", 32), ("-1", 0)])
def test_the_flush_setting_falls_back_to_its_default_when_unreadable(monkeypatch, value, megabytes):
    monkeypatch.setenv(service.FLUSH_MB_ENV, value)
    assert service._flush_bytes() == megabytes * 2**20


# -- damaged, deleted, full -----------------------------------------------------


def _build(dataset_factory, store_path, n=200, key="idx"):
    dataset = dataset_factory(n)
    X = random_embeddings(n, 16, seed=1)
    index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key=key, path=store_path, progress=False)
    return dataset, X, index


def test_missing_description_is_a_clear_error_and_never_wipes_the_vectors(dataset_factory, store_path):
    dataset, X, index = _build(dataset_factory, store_path)
    name = index.collection_name
    description = os.path.join(store_path, "collections", name, "collection.json")
    local.stop_service(store_path)
    os.rename(description, description + ".away")
    close_all()
    dataset.reload()
    index = dataset.load_brain_results("idx", cache=False)
    for attempt in (lambda: index.total_index_size, lambda: dataset.sort_by_similarity(dataset.first().id, k=3, brain_key="idx"),
                    lambda: index.add_to_index(X[:5], dataset.values("id")[:5])):
        with pytest.raises(QdrantBackendError) as e:
            attempt()
        assert name in str(e.value) and "collection.json" in str(e.value) and "restore" in str(e.value)
    # a new build under the same collection name must not create over it
    with pytest.raises(QdrantBackendError, match="already exists"):
        ServerStore.local(store_path).create_collection(name, CollectionSpec(16), {})
    os.rename(description + ".away", description)
    assert index.total_index_size == 200
    got = dataset.sort_by_similarity(dataset.first().id, k=5, brain_key="idx").values("id")
    assert got == exact_top_k(dataset.values("id"), X, X[0], "cosine", k=5)[0]


def test_deleted_collection_under_a_live_index_is_an_error_not_zero_hits(dataset_factory, store_path):
    dataset, X, index = _build(dataset_factory, store_path)
    assert len(dataset.sort_by_similarity(X[0], k=3, brain_key="idx")) == 3
    shutil.rmtree(os.path.join(store_path, "collections", index.collection_name))
    with pytest.raises(QdrantBackendError, match="deleted|does not exist"):
        index._kneighbors(query=X[0], k=3)


def test_full_disk_is_a_clear_error_and_other_collections_survive(dataset_factory, tmp_path):
    root = str(tmp_path / "small")
    os.makedirs(root)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", root], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): %s" % mounted.stderr.decode().strip())
    try:
        small = dataset_factory(50)
        X_small = random_embeddings(50, 8, seed=2)
        fob.compute_similarity(small, embeddings=X_small, backend="qdrant", brain_key="small", path=root, progress=False)
        big = dataset_factory(60000)
        X_big = random_embeddings(60000, 512, seed=3)  # 120 MB of vectors: cannot fit beside the reserve
        with pytest.raises(QdrantBackendError, match="No space left") as e:
            fob.compute_similarity(big, embeddings=X_big, backend="qdrant", brain_key="big", path=root, progress=False)
        assert "Free disk space" in str(e.value) and root in str(e.value)
        big.reload()
        assert "big" not in big.list_brain_runs()  # the failed build's run is removed
        small.reload()
        index = small.load_brain_results("small", cache=False)
        got = small.sort_by_similarity(X_small[3], k=5, brain_key="small").values("id")
        assert index.total_index_size == 50
        assert got == exact_top_k(small.values("id"), X_small, X_small[3], "cosine", k=5)[0]
    finally:
        close_all()
        local.stop_service(root)
        subprocess.run(["umount", "-l", root])


# -- stores written by fiftyone-qdrant 0.1 ----------------------------------------


def test_a_store_of_the_old_layout_migrates_once_losing_nothing(dataset_factory, store_path):
    """0.1 kept WAL-less shards opened by every process, with version and
    lock files beside them; the service copies such a shard once into one
    with a WAL, then serves it."""
    import qdrant_edge as qe

    dataset = dataset_factory(300)
    sample_ids = dataset.values("id")
    X = random_embeddings(300, 8, seed=9)
    directory = os.path.join(store_path, "collections", "legacy")
    os.makedirs(directory)
    shard = qe.EdgeShard.create(os.path.join(directory, "shard"), qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine), wal_enabled=False))
    shard.update(qe.UpdateOperation.create_field_index("sample_id", qe.PayloadSchemaType.Keyword))
    from fiftyone_qdrant import points as idmap

    shard.update(qe.UpdateOperation.upsert_points([
        qe.Point(p, X[i].tolist(), {"sample_id": sample_ids[i]})
        for i, p in enumerate(idmap.to_point_ids(sample_ids))
    ]))
    shard.flush()
    shard.close()
    for name in ("version", "lock"):
        open(os.path.join(directory, name), "w").close()
    with open(os.path.join(directory, "collection.json"), "w") as f:
        json.dump({"format": 1, "vectors": {"": {"size": 8, "metric": "cosine"}}, "sparse_vectors": [],
                   "metadata": {"note": "old"}}, f)

    index = fob.compute_similarity(dataset, embeddings=False, backend="qdrant", brain_key="legacy",
                                   collection_name="legacy", path=store_path)
    assert index.total_index_size == 300
    assert index.store.get_metadata("legacy")["note"] == "old"
    assert index.store.has_keyword_index("legacy", "sample_id")
    emb, sids, _ = index.get_embeddings(sample_ids[:20])
    np.testing.assert_allclose(emb * np.linalg.norm(X[:20], axis=1, keepdims=True) / np.linalg.norm(emb, axis=1, keepdims=True),
                               X[:20], rtol=1e-5, atol=1e-5)
    got = dataset.sort_by_similarity(sample_ids[7], k=5, brain_key="legacy").values("id")
    assert got == exact_top_k(sample_ids, X, X[7], "cosine", k=5)[0]
    with open(os.path.join(directory, "collection.json")) as f:
        assert json.load(f)["format"] == 2
    assert sorted(os.listdir(directory)) == ["collection.json", "shard"]
    # the migrated shard has a WAL: an acknowledged write survives a SIGKILL
    index.add_to_index(X[:1] * 2, [sample_ids[0]])
    os.kill(local.read_address(store_path).pid, signal.SIGKILL)
    emb, _, _ = index.get_embeddings([sample_ids[0]])
    np.testing.assert_allclose(emb[0], X[0] * 2, rtol=1e-5)


# -- numpy straight into the wire format ------------------------------------------


@pytest.mark.parametrize("vector_name", [None, "img"])
@pytest.mark.parametrize("id_kind", ["uuid", "int"])
def test_wire_encoding_equals_the_generated_messages(vector_name, id_kind):
    from fiftyone_qdrant.wire import encode_upsert

    X = random_embeddings(7, 5, seed=4)
    ids = _ids(7, id_kind)
    payloads = [{"sample_id": "%024x" % i, "embedding_norm": 1.5 + i, "n": -i, "ok": bool(i % 2),
                 "nested": {"a": [1, "x", None]}, "ключ": "значение"} for i in range(6)] + [{}]
    expected = pb.UpsertPoints(collection_name="c", wait=True)
    for point_id, row, payload in zip(ids, X.tolist(), payloads):
        from qdrant_client.conversions.conversion import payload_to_grpc

        p = pb.PointStruct(id=pb.PointId(uuid=point_id) if id_kind == "uuid" else pb.PointId(num=point_id),
                           payload=payload_to_grpc(payload))
        vector = p.vectors.vectors.vectors[vector_name] if vector_name else p.vectors.vector
        vector.dense.data.extend(row)
        expected.points.append(p)
    assert pb.UpsertPoints.FromString(encode_upsert("c", ids, X, payloads, vector_name)) == expected


def test_cli_shows_starts_and_stops_the_service(tmp_path, capsys):
    from fiftyone_qdrant import cli

    root = str(tmp_path / "store")
    assert cli.main(["service", "status", "--path", root]) == 0
    assert capsys.readouterr().out.strip() == "not running: %s" % root
    assert cli.main(["service", "start", "--path", root]) == 0
    address = local.read_address(root)
    out = capsys.readouterr().out
    assert out.startswith("running: pid %d on 127.0.0.1:%d" % (address.pid, address.port)) and address.token not in out
    assert cli.main(["service", "stop", "--path", root]) == 0
    assert capsys.readouterr().out.strip() == "stopped" and local.read_address(root) is None

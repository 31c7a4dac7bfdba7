"""The core backend on a real dataset, a real MongoDB and the real embedded
Qdrant engine; every answer is checked against exact numpy results."""

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob

import fiftyone_qdrant as foq
from fiftyone_qdrant.similarity import QdrantSimilarityIndex

from conftest import exact_distances, exact_top_k, random_embeddings


def build(dataset, embeddings, store_path, brain_key="qd", **kwargs):
    return fob.compute_similarity(
        dataset, embeddings=embeddings, backend="qdrant", brain_key=brain_key, path=store_path, **kwargs
    )


@pytest.mark.parametrize("metric", ["cosine", "dotproduct", "euclidean", "manhattan"])
def test_top_k_matches_numpy_for_every_metric(dataset_factory, store_path, metric):
    dataset = dataset_factory(300)
    ids = dataset.values("id")
    X = random_embeddings(300, 24, seed=1)
    index = build(dataset, X, store_path, metric=metric)
    assert isinstance(index, QdrantSimilarityIndex)
    assert index.total_index_size == 300

    for q in (0, 17, 299):
        view = dataset.sort_by_similarity(ids[q], k=10, brain_key="qd", dist_field="dist")
        expected_ids, expected_dists = exact_top_k(ids, X, X[q], metric, k=10)
        assert view.values("id") == expected_ids
        np.testing.assert_allclose(view.values("dist"), expected_dists, rtol=1e-4, atol=1e-4)

    # raw vector query
    query = random_embeddings(1, 24, seed=9)[0]
    expected_ids, _ = exact_top_k(ids, X, query, metric, k=7)
    assert dataset.sort_by_similarity(query, k=7, brain_key="qd").values("id") == expected_ids


def test_query_by_ids_uses_mean_and_batch_queries_are_separate(dataset_factory, store_path):
    dataset = dataset_factory(200)
    ids = dataset.values("id")
    X = random_embeddings(200, 16, seed=2)
    index = build(dataset, X, store_path)

    mean = X[[3, 5, 8]].mean(axis=0)
    expected, _ = exact_top_k(ids, X, mean, "cosine", k=5)
    assert dataset.sort_by_similarity([ids[3], ids[5], ids[8]], k=5, brain_key="qd").values("id") == expected

    queries = random_embeddings(4, 16, seed=3)
    sample_ids, label_ids, dists = index._kneighbors(query=queries, k=6, return_dists=True)
    assert label_ids is None
    assert len(sample_ids) == 4
    for q, got in zip(queries, sample_ids):
        assert got == exact_top_k(ids, X, q, "cosine", k=6)[0]


def test_k_none_sorts_everything_and_reverse(dataset_factory, store_path):
    dataset = dataset_factory(120)
    ids = dataset.values("id")
    X = random_embeddings(120, 8, seed=4)
    build(dataset, X, store_path)

    view = dataset.sort_by_similarity(ids[0], brain_key="qd", dist_field="d")
    assert len(view) == 120
    d = np.array(view.values("d"))
    assert np.all(np.diff(d) >= -1e-6)
    np.testing.assert_allclose(np.sort(exact_distances(X, X[0], "cosine")), d, atol=1e-5)

    least = dataset.sort_by_similarity(ids[0], k=5, reverse=True, brain_key="qd")
    assert least.values("id") == exact_top_k(ids, X, X[0], "cosine", k=5, reverse=True)[0]


def test_reverse_on_euclidean_is_a_clear_error(dataset_factory, store_path):
    dataset = dataset_factory(20)
    build(dataset, random_embeddings(20, 4), store_path, metric="euclidean")
    with pytest.raises(ValueError, match="reverse=True.*cosine"):
        dataset.sort_by_similarity(dataset.first().id, k=3, reverse=True, brain_key="qd")


@pytest.mark.parametrize("view_size", [30, 3000])
def test_queries_are_restricted_to_the_view(dataset_factory, store_path, view_size):
    # 30 ids go to Qdrant as a filter; 3000 (over the bound of 2000) are
    # answered by oversampling
    n = 6000
    dataset = dataset_factory(n)
    ids = dataset.values("id")
    X = random_embeddings(n, 16, seed=5)
    build(dataset, X, store_path)

    view = dataset.take(view_size, seed=7)
    in_view = set(view.values("id"))
    keep = np.array([i in in_view for i in ids])
    view_ids = [i for i, k in zip(ids, keep) if k]
    expected, _ = exact_top_k(view_ids, X[keep], X[0], "cosine", k=12)
    assert view.sort_by_similarity(ids[0], k=12, brain_key="qd").values("id") == expected

    everything = view.sort_by_similarity(ids[0], brain_key="qd")
    assert len(everything) == view_size


def test_raw_id_listing_matches_values_order(dataset_factory):
    from fiftyone import ViewField as F
    from fiftyone_qdrant import views as idmap

    dataset = dataset_factory(250)
    dataset.set_values("rank", list(np.random.default_rng(3).permutation(250)))
    views = [
        dataset,
        dataset.sort_by("rank"),
        dataset.match(F("rank") < 100).sort_by("rank", reverse=True),
        dataset.take(40, seed=2),
        dataset.skip(30).limit(70),
    ]
    for view in views:
        listed = [i for batch in idmap.list_view_ids(view, batch_size=32) for i in batch]
        assert listed == view.values("id")
        limited = [i for batch in idmap.list_view_ids(view, limit=17) for i in batch]
        assert limited == view.values("id")[:17]
        assert sorted(idmap.collect_view_ids(view, limit=17)) == sorted(view.values("id")[:17])
        assert sorted(idmap.collect_view_ids(view, limit=10**5)) == sorted(view.values("id"))
    assert idmap.collect_view_ids(dataset.limit(0), limit=10) == []

    # membership, matched on _id first for views of per-sample stages and
    # after the view otherwise: what view.select() answers, either way
    probe = dataset.take(60, seed=5).values("id") + ["0" * 24, "not-an-id"]
    only_matches = [dataset.match(F("rank") < 100), dataset.exists("rank").match(F("rank") >= 50)]  # one find
    for view in views + only_matches + [dataset.match(F("rank") < 100).select_fields("rank").exists("rank")]:
        expected = set(view.select([i for i in probe if len(i) == 24]).values("id"))
        assert idmap.members_of(view)(probe) == expected
    assert idmap.members_of(dataset)([]) == set()

    # documents of another shape are decoded normally (the slow path)
    coll = dataset._sample_collection
    as_text = [{"$project": {"_id": {"$toString": "$_id"}}}]
    assert [i for b in idmap.iter_object_id_batches(coll, as_text) for i in b] == dataset.values("id")


def test_precomputed_build_of_a_view_uses_its_order(dataset_factory, store_path):
    """compute_similarity(view, embeddings=X): row i belongs to the i-th
    sample of the view, as in FiftyOne's other backends."""
    dataset = dataset_factory(300)
    dataset.set_values("rank", list(np.random.default_rng(4).permutation(300)))
    view = dataset.sort_by("rank").limit(200)
    view_ids = view.values("id")
    X = random_embeddings(200, 12, seed=6)
    index = build(view, X, store_path)
    assert not index.is_external  # built by our pass (ids from raw BSON), FiftyOne's skipped
    assert index.total_index_size == 200
    emb, sids, _ = index.get_embeddings(view_ids)
    assert list(sids) == view_ids
    np.testing.assert_allclose(emb, X, rtol=1e-5, atol=1e-6)
    expected, _ = exact_top_k(view_ids, X, X[5], "cosine", k=10)
    assert dataset.sort_by_similarity(view_ids[5], k=10, brain_key="qd").values("id") == expected


def test_get_embeddings_gives_back_unit_and_other_vectors(dataset_factory, store_path):
    """Cosine collections store vectors normalized; the original norm is
    kept in the payload unless it is 1."""
    dataset = dataset_factory(40)
    ids = dataset.values("id")
    X = random_embeddings(40, 16, seed=13)
    X[:20] /= np.linalg.norm(X[:20], axis=1, keepdims=True)
    index = build(dataset, X, store_path)
    emb, sids, _ = index.get_embeddings(ids)
    assert list(sids) == ids
    np.testing.assert_allclose(emb, X, rtol=1e-5, atol=1e-6)
    payloads = {r.payload["sample_id"]: r.payload for r in index._points.lookup(ids, with_vectors=False).values()}
    assert [("embedding_norm" in payloads[i]) for i in ids] == [False] * 20 + [True] * 20


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda X: X[:-1], "number of embeddings \\(299\\).*number of samples \\(300\\)"),
        (lambda X: np.where(np.arange(300)[:, None] == 250, np.nan, X), "Embedding 250 \\(id [0-9a-f]{24}\\) contains NaN"),
        (lambda X: np.where(np.arange(300)[:, None] == 7, 0.0, X), "Embedding 7 \\(id [0-9a-f]{24}\\) is all zeros"),
        (lambda X: X[:, :, None], "2-d array"),
    ],
)
def test_bad_precomputed_build_writes_nothing(dataset_factory, store_path, make_bad, message):
    dataset = dataset_factory(300)
    X = random_embeddings(300, 8, seed=9)
    with pytest.raises(ValueError, match=message):
        build(dataset, make_bad(X), store_path)
    assert dataset.list_brain_runs() == []
    assert foq.list_indexes(path=store_path) == []


def test_view_filter_bound_follows_the_search_kind(dataset_factory, store_path, monkeypatch):
    """While every query scans the collection, larger views are
    sent as id filters (total / 40); once HNSW covers it, only up to ~6 sqrt(total).
    Answers are exact either way (HNSW: nearly)."""
    from fiftyone import ViewField as F

    # no background indexing while the exhaustive case is checked; optimize() below
    monkeypatch.setenv("FIFTYONE_QDRANT_INDEX_QUIET_S", "3600")
    n = 10000
    dataset = dataset_factory(n)
    dataset.set_values("bucket", [i % 100 for i in range(n)])
    ids = dataset.values("id")
    X = random_embeddings(n, 8, seed=12)
    index = build(dataset, X, store_path, optimizers_config={"indexing_threshold": 1}, hnsw_config={"m": 16})

    def expected(view_buckets):
        keep = np.array([i % 100 < view_buckets for i in range(n)])
        return exact_top_k([i for i, k in zip(ids, keep) if k], X[keep], X[1], "cosine", k=10)[0]

    assert index.store.searches_exhaustively(index.collection_name)
    assert index._max_filter_ids(10**6) == 25000
    for buckets in (3, 50):  # 300 samples: a filter; 5000: oversampled
        got = dataset.match(F("bucket") < buckets).sort_by_similarity(ids[1], k=10, brain_key="qd")
        assert got.values("id") == expected(buckets)

    index.optimize()
    assert not index.store.searches_exhaustively(index.collection_name)
    assert index._max_filter_ids(10**6) == 6000
    for buckets in (3, 50):
        got = dataset.match(F("bucket") < buckets).sort_by_similarity(ids[1], k=10, brain_key="qd")
        assert len(set(got.values("id")) & set(expected(buckets))) >= 9


def test_a_new_large_view_is_answered_while_its_listing_runs(dataset_factory, store_path, monkeypatch):
    """A view never seen is listed in the background while Qdrant searches;
    the answer does not wait for the listing, which then records the view's
    size so that the next query of that view lists nothing."""
    import threading
    import time

    from fiftyone import ViewField as F
    from fiftyone_qdrant import views

    monkeypatch.setenv("FIFTYONE_QDRANT_INDEX_QUIET_S", "3600")  # exhaustive: filter bound 2000
    n = 10000
    dataset = dataset_factory(n)
    dataset.set_values("bucket", [i % 100 for i in range(n)])
    ids = dataset.values("id")
    X = random_embeddings(n, 8, seed=13)
    index = build(dataset, X, store_path)
    view = dataset.match(F("bucket") < 50)
    keep = np.arange(n) % 100 < 50
    expected = exact_top_k([i for i, k in zip(ids, keep) if k], X[keep], X[3], "cosine", k=10)[0]

    listed, release = [], threading.Event()
    collect = views.collect_view_ids

    def held_listing(samples, limit, pipeline=None):
        assert release.wait(30)
        listed.append(limit)
        return collect(samples, limit, pipeline)

    monkeypatch.setattr(views, "collect_view_ids", held_listing)
    with index.use_view(view):
        assert index.sort_by_similarity(ids[3], k=10).values("id") == expected
    assert listed == []  # answered while the listing was held
    release.set()
    deadline = time.monotonic() + 30
    while str(view._pipeline()) not in index._view_sizes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listed == [2001] and index._view_sizes[str(view._pipeline())] == 2001

    with index.use_view(view):
        assert index.sort_by_similarity(ids[3], k=10).values("id") == expected
    assert listed == [2001]  # seen large: not listed again

    # after a small view, a new view is listed first, in the caller's thread;
    # once a large one is seen again, new views are listed beside the search
    threads = []

    def where_listed(samples, limit, pipeline=None):
        threads.append(threading.current_thread() is threading.main_thread())
        return collect(samples, limit, pipeline)

    monkeypatch.setattr(views, "collect_view_ids", where_listed)
    for buckets in (3, 60, 70):
        keep = np.arange(n) % 100 < buckets
        expected = exact_top_k([i for i, k in zip(ids, keep) if k], X[keep], X[3], "cosine", k=10)[0]
        with index.use_view(dataset.match(F("bucket") < buckets)):
            assert index.sort_by_similarity(ids[3], k=10).values("id") == expected
    deadline = time.monotonic() + 30
    while len(threads) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads == [False, True, False]


def test_use_view_sizes(dataset_factory, store_path):
    dataset = dataset_factory(100)
    ids = dataset.values("id")
    X = random_embeddings(100, 8)
    index = fob.compute_similarity(
        dataset.limit(80), embeddings=X[:80], backend="qdrant", brain_key="qd", path=store_path
    )
    assert index.total_index_size == 80
    assert index.index_size == 80
    with index.use_view(dataset.skip(70)):
        assert index.index_size == 10
        assert index.missing_size == 20
        assert set(index.current_sample_ids) == set(ids[70:80])
    assert index.index_size == 80
    assert sorted(index.sample_ids) == sorted(ids[:80])


def test_add_remove_and_get_embeddings(dataset_factory, store_path):
    dataset = dataset_factory(2500)
    ids = dataset.values("id")
    X = random_embeddings(2500, 8, seed=6)
    index = build(dataset.limit(2000), X[:2000], store_path)

    index.add_to_index(X[2000:2400], ids[2000:2400])
    index.add_to_index(X[2400:], (i for i in ids[2400:]))  # ids may be any iterable
    assert index.total_index_size == 2500

    # more ids than one page, in the caller's order
    order = list(np.random.default_rng(0).permutation(2500))
    emb, sids, lids = index.get_embeddings([ids[i] for i in order])
    assert lids is None
    assert list(sids) == [ids[i] for i in order]
    np.testing.assert_allclose(emb, X[order], rtol=1e-5, atol=1e-5)

    emb, sids, _ = index.get_embeddings(ids[5])
    assert list(sids) == [ids[5]] and emb.shape == (1, 8)

    emb, sids, _ = index.get_embeddings()
    assert emb.shape == (2500, 8) and sorted(sids) == sorted(ids)

    index.remove_from_index(ids[:10])
    assert index.total_index_size == 2490
    emb, sids, _ = index.get_embeddings(ids[:12])
    assert list(sids) == ids[10:12]
    with pytest.raises(foq.UnknownIdError, match="not in the index"):
        index.get_embeddings(ids[:12], allow_missing=False)
    with pytest.raises(foq.UnknownIdError):
        index.remove_from_index(ids[:12], allow_missing=False)
    assert index.total_index_size == 2490

    # removed ids never come back in queries
    got = dataset.sort_by_similarity(ids[20], k=50, brain_key="qd").values("id")
    assert not set(got) & set(ids[:10])


def test_overwrite_and_existing_semantics(dataset_factory, store_path):
    dataset = dataset_factory(20)
    ids = dataset.values("id")
    X = random_embeddings(20, 4, seed=7)
    index = build(dataset, X, store_path)

    Y = X[:5] * -1
    index.add_to_index(Y, ids[:5], overwrite=False)
    np.testing.assert_allclose(index.get_embeddings(ids[:5])[0], X[:5], atol=1e-5)
    index.add_to_index(Y, ids[:5], overwrite=True)
    np.testing.assert_allclose(index.get_embeddings(ids[:5])[0], Y, atol=1e-5)
    with pytest.raises(ValueError, match="already exist"):
        index.add_to_index(X[:5], ids[:5], allow_existing=False, overwrite=False)
    np.testing.assert_allclose(index.get_embeddings(ids[:5])[0], Y, atol=1e-5)
    assert index.total_index_size == 20


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda X, ids: (X[:, :3], ids), "dimension 3"),
        (lambda X, ids: (np.where(np.arange(4) == 1, np.nan, X), ids), "NaN or inf"),
        (lambda X, ids: (X, ids[:-1]), "sample ids"),
        (lambda X, ids: (X, ids[:-1] + ids[:1]), "appears 2 times"),
        (lambda X, ids: (X, ids[:-1] + ["not-an-id"]), "Invalid sample id"),
        (lambda X, ids: (np.zeros_like(X), ids), "all zeros"),
    ],
)
def test_bad_additions_raise_before_writing(dataset_factory, store_path, make_bad, message):
    dataset = dataset_factory(12)
    ids = dataset.values("id")
    X = random_embeddings(12, 4, seed=8)
    index = build(dataset.limit(6), X[:6], store_path)
    before = index.get_embeddings()

    bad_X, bad_ids = make_bad(X[6:], ids[6:])
    with pytest.raises(ValueError, match=message):
        index.add_to_index(bad_X, bad_ids)

    after = index.get_embeddings()
    assert index.total_index_size == 6
    np.testing.assert_array_equal(before[0], after[0])


def test_config_validation_leaves_no_brain_run(dataset_factory, store_path):
    dataset = dataset_factory(5)
    X = random_embeddings(5, 4)
    for kwargs, message in [
        ({"metric": "hamming"}, "Unsupported metric"),
        ({"hnsw_config": {"m": 16, "bogus": 1}}, "Unknown key"),
        ({"hnsw_config": {"m": "many"}}, "Invalid `hnsw_config`"),
        ({"collection_name": "../escape"}, "Invalid collection name"),
        ({"replication_factor": 0}, "positive integer"),
        ({"timeout": -1}, "positive number"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(dataset, X, store_path, **kwargs)
        assert dataset.list_brain_runs() == []

    # dimension mismatch against an existing collection: nothing registered
    build(dataset, X, store_path, brain_key="first", collection_name="shared")
    with pytest.raises(foq.DimensionMismatchError):
        build(dataset, random_embeddings(5, 7), store_path, brain_key="second", collection_name="shared")
    assert dataset.list_brain_runs() == ["first"]
    assert dataset.load_brain_results("first").total_index_size == 5

    index = dataset.load_brain_results("first")
    with pytest.raises(ValueError, match="positive integer"):
        index._kneighbors(query=X[0], k=-1)


def test_server_only_settings_are_reported_on_the_embedded_store(dataset_factory, store_path, caplog):
    dataset = dataset_factory(5)
    X = random_embeddings(5, 4)
    with caplog.at_level("WARNING", logger="fiftyone_qdrant.server"):
        index = build(dataset, X, store_path, replication_factor=2, wal_config={"wal_capacity_mb": 64})
    assert index.total_index_size == 5
    warned = [r.getMessage() for r in caplog.records if r.name == "fiftyone_qdrant.server"]
    assert len(warned) == 1
    assert "`replication_factor`, `wal_config` only apply to a Qdrant server" in warned[0]


def test_unreachable_server_fails_fast_and_registers_nothing(dataset_factory):
    import time

    dataset = dataset_factory(3)
    start = time.time()
    with pytest.raises(foq.ConnectionFailedError) as info:
        fob.compute_similarity(
            dataset, embeddings=random_embeddings(3, 4), backend="qdrant", brain_key="srv",
            url="http://127.0.0.1:9", api_key="sentinel-secret-123", timeout=2,
        )
    assert time.time() - start < 15
    assert "sentinel-secret-123" not in str(info.value)
    assert "127.0.0.1:9" in str(info.value)
    assert dataset.list_brain_runs() == []


def test_patches_index(dataset_factory, store_path):
    dataset = dataset_factory(40, num_patches=3)
    sample_ids, label_ids = [], []
    for sample in dataset.select_fields("ground_truth"):
        for det in sample.ground_truth.detections:
            sample_ids.append(sample.id)
            label_ids.append(det.id)
    X = random_embeddings(len(label_ids), 12, seed=10)
    per_sample = list(X.reshape(40, 3, 12))
    index = fob.compute_similarity(
        dataset, patches_field="ground_truth", embeddings=per_sample, backend="qdrant", brain_key="pq", path=store_path
    )
    assert index.total_index_size == 120
    assert sorted(index.label_ids) == sorted(label_ids)

    patches = dataset.to_patches("ground_truth")
    view = patches.sort_by_similarity(label_ids[4], k=8, brain_key="pq", dist_field="d")
    expected, dists = exact_top_k(label_ids, X, X[4], "cosine", k=8)
    assert view.values("ground_truth.id") == expected
    np.testing.assert_allclose(view.values("d"), dists, atol=1e-5)

    # a filtered patches view only returns its labels
    only_c0 = patches.match(fo.ViewField("ground_truth.label") == "c0")
    c0 = set(only_c0.values("ground_truth.id"))
    keep = np.array([lid in c0 for lid in label_ids])
    expected, _ = exact_top_k([l for l, k in zip(label_ids, keep) if k], X[keep], X[4], "cosine", k=5)
    assert only_c0.sort_by_similarity(label_ids[4], k=5, brain_key="pq").values("ground_truth.id") == expected

    # on a filter_labels sample view, samples are ordered by their best patch
    filtered = dataset.filter_labels("ground_truth", fo.ViewField("label") == "c1")
    result = filtered.sort_by_similarity(label_ids[4], k=5, brain_key="pq")
    c1_ids = set(filtered.values("ground_truth.detections.id", unwind=True))
    assert set(result.values("ground_truth.detections.id", unwind=True)) <= c1_ids

    # get_embeddings by label ids and by sample ids
    emb, sids, lids = index.get_embeddings(label_ids=label_ids[:4])
    assert list(lids) == label_ids[:4] and list(sids) == sample_ids[:4]
    np.testing.assert_allclose(emb, X[:4], atol=1e-5)
    emb, sids, lids = index.get_embeddings(sample_ids=[sample_ids[0]])
    assert sorted(lids) == sorted(label_ids[:3])

    # removing a sample removes its patches; removing a label removes one
    index.remove_from_index(sample_ids=[sample_ids[0]])
    assert index.total_index_size == 117
    index.remove_from_index(label_ids=[label_ids[5]])
    assert index.total_index_size == 116
    assert label_ids[5] not in set(index.label_ids)


def test_find_duplicates_and_unique(dataset_factory, store_path):
    dataset = dataset_factory(30)
    ids = dataset.values("id")
    X = random_embeddings(30, 16, seed=11)
    X[1] = X[0] + 1e-3
    X[2] = X[0] - 1e-3
    index = build(dataset, X, store_path)
    index.find_duplicates(thresh=0.01)
    assert sorted(index.duplicate_ids) == sorted([ids[1], ids[2]]) or sorted(index.duplicate_ids) == sorted(
        [i for i in ids[:3] if i not in index.unique_ids]
    )
    assert len(index.duplicate_ids) == 2
    index.find_unique(10)
    assert len(index.unique_ids) == 10


def test_cleanup_rename_and_records(dataset_factory, store_path):
    dataset = dataset_factory(10)
    X = random_embeddings(10, 4)
    index = build(dataset, X, store_path, brain_key="a", api_key="sentinel-secret-456")
    name = index.collection_name

    listed = foq.list_indexes(path=store_path)
    assert [i["collection_name"] for i in listed] == [name]
    (record,) = listed[0]["runs"]
    assert record["brain_key"] == "a" and record["dimension"] == 4 and record["metric"] == "cosine"
    assert record["dataset_name"] == dataset.name
    assert "sentinel-secret-456" not in repr(listed)
    assert "sentinel-secret-456" not in str(dataset._doc.brain_methods["a"].config)

    dataset.rename_brain_run("a", "b")
    (record,) = foq.list_indexes(path=store_path)[0]["runs"]
    assert record["brain_key"] == "b"

    # a lost FiftyOne record: re-attach from what is stored in Qdrant
    fob.Similarity.delete_run(dataset, "b", cleanup=False)
    assert dataset.list_brain_runs() == []
    attached = foq.attach_index(dataset, name, path=store_path)
    assert attached.total_index_size == 10
    ids = dataset.values("id")
    assert dataset.sort_by_similarity(ids[0], k=3, brain_key="b").values("id") == exact_top_k(ids, X, X[0], "cosine", k=3)[0]

    dataset.load_brain_results("b").cleanup()
    dataset.delete_brain_run("b")
    assert foq.list_indexes(path=store_path) == []


def test_attach_existing_collection_never_drops_it(dataset_factory, store_path):
    dataset = dataset_factory(15)
    ids = dataset.values("id")
    X = random_embeddings(15, 4)
    build(dataset, X, store_path, brain_key="orig", collection_name="mine")
    other = fob.compute_similarity(
        dataset, embeddings=False, collection_name="mine", backend="qdrant", brain_key="again", path=store_path
    )
    assert other.total_index_size == 15
    dataset.delete_brain_run("again")
    assert dataset.load_brain_results("orig").total_index_size == 15
    assert dataset.sort_by_similarity(ids[2], k=2, brain_key="orig").values("id")[0] == ids[2]


def test_missing_collection_and_unknown_id_errors(dataset_factory, store_path):
    dataset = dataset_factory(10)
    ids = dataset.values("id")
    index = build(dataset, random_embeddings(10, 4), store_path)
    with pytest.raises(foq.UnknownIdError, match="not in the index"):
        dataset.sort_by_similarity("0" * 24, k=3, brain_key="qd")
    with pytest.raises(ValueError, match="dimension|shape"):
        dataset.sort_by_similarity(np.ones(5), k=3, brain_key="qd")
    index.cleanup()
    with pytest.raises(foq.CollectionNotFoundError, match="does not exist"):
        dataset.sort_by_similarity(ids[0], k=3, brain_key="qd")


def test_index_without_model_rejects_prompts(dataset_factory, store_path):
    dataset = dataset_factory(5)
    build(dataset, random_embeddings(5, 4), store_path)
    with pytest.raises(ValueError, match="does not support prompts"):
        dataset.sort_by_similarity("a photo of a dog", k=2, brain_key="qd")

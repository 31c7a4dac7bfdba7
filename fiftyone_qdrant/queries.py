"""What a query may be, checked before Qdrant is asked: ids, vectors, or
images (a path, URL, PIL image or array, or a list of them) given to
``sort_by_similarity``, read as RGB pixels for the index's model."""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

import eta.core.utils as etau

from .errors import DimensionMismatchError, InvalidInputError

_URL_PREFIXES = ("http://", "https://")


def is_image_query(item) -> bool:
    if etau.is_str(item):
        return item.lower().startswith(_URL_PREFIXES) or os.path.isfile(item)
    if isinstance(item, np.ndarray):
        return item.ndim == 3 or (item.ndim == 2 and item.dtype == np.uint8)
    return type(item).__module__.startswith("PIL.")


def image_queries(query) -> Optional[List[Any]]:
    """The images of an image query (one, or a list of them), else None."""
    if is_image_query(query):
        return [query]
    if isinstance(query, (list, tuple)) and query and all(is_image_query(q) for q in query):
        if all(isinstance(q, np.ndarray) and q.ndim == 2 for q in query):
            return None  # a list of 2-d uint8 arrays is ambiguous: not images
        return list(query)
    return None


def read_query_image(image) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array from a path, URL, PIL image or array."""
    import eta.core.image as etai

    if etau.is_str(image):
        if image.lower().startswith(_URL_PREFIXES):
            import urllib.request

            try:
                with urllib.request.urlopen(image, timeout=30) as response:
                    data = response.read()
            except Exception as e:
                raise InvalidInputError("Could not download the query image %s: %s" % (image, e)) from None
            try:
                return _as_rgb(etai.decode(data))
            except Exception:
                raise InvalidInputError("The query URL %s is not an image" % image) from None
        try:
            return _as_rgb(etai.read(image))
        except Exception:
            raise InvalidInputError("The query file %s is not an image" % image) from None
    if isinstance(image, np.ndarray):
        return _as_rgb(image)
    return np.asarray(image.convert("RGB"))


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInputError("A query image must be HxW or HxWx3 (RGB), got shape %s" % (pixels.shape,))
    return pixels



def query_vectors(query, index_dimension: Callable[[], int],
                  vectors_of_ids: Callable[[List[str]], np.ndarray]) -> Tuple[np.ndarray, bool]:
    """A query (an id, a list of ids, a vector or an array of vectors) as
    2-d float32 query vectors, and whether a single query was given."""
    if query is None:
        raise InvalidInputError("A query is required")
    if etau.is_str(query):
        return vectors_of_ids([query]), True
    if isinstance(query, np.ndarray) and np.issubdtype(query.dtype, np.number) and not np.iscomplexobj(query):
        vectors = query
    else:
        try:
            items = list(query)
        except TypeError:
            raise InvalidInputError(
                "Invalid query %r: pass an id, a list of ids, a vector or an array of vectors" % (query,)
            ) from None
        if not items:
            raise InvalidInputError("At least one query must be provided")
        if all(isinstance(x, str) for x in items):
            return vectors_of_ids(items), False
        try:
            vectors = np.asarray(items, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidInputError(
                "Invalid query: pass an id, a list of ids, a vector or an array of vectors"
            ) from None
    single = vectors.ndim == 1
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    dimension = index_dimension()
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise DimensionMismatchError(
            "Query vectors have shape %s but the index stores %d-d vectors"
            % (vectors.shape, dimension)
        )
    if len(vectors) == 0:
        raise InvalidInputError("At least one query must be provided")
    with np.errstate(over="ignore", invalid="ignore"):
        if not (np.isfinite(vectors).all() and np.isfinite(np.linalg.norm(vectors, axis=1)).all()):
            raise InvalidInputError("Query vectors contain NaN or inf (or values whose norm overflows float32)")
    return vectors, single

"""The one module that reads fiftyone-brain's private state.

fiftyone-brain gives a backend no hook for three things we do better than
its generic path, so we read them where brain keeps them:

- ``compute_similarity``'s local variables (its arguments, and ``_model``,
  the model it loaded): FiftyOne computes a model's embeddings for the whole
  dataset in memory before calling ``add_to_index``; reading them from
  ``initialize()`` lets us embed and upsert batch by batch instead;
- ``SimilarityIndex``'s ``_curr_*`` attributes (the view set by
  ``use_view()``): to test query candidates against a view in MongoDB
  rather than list all of its ids on every App query;
- ``fiftyone.brain.config._parse_env_value``, to recover an API key that
  FiftyOne's env parsing turned into a number.

Every name read here is pinned against the installed fiftyone-brain by
``tests/unit/test_brain_internals.py``. When a name is gone (a newer brain),
each reader returns None and the caller takes FiftyOne's generic path: the
same results, only slower.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)

COMPUTE_SIMILARITY_MODULE = "fiftyone.brain.similarity"
#: the locals of ``compute_similarity`` that our builds read
COMPUTE_SIMILARITY_LOCALS = (
    "samples",
    "patches_field",
    "roi_field",
    "embeddings",
    "embeddings_field",
    "embeddings_exist",
    "_model",
    "batch_size",
    "num_workers",
    "skip_failures",
    "progress",
    "backend",
)
#: the ``SimilarityIndex`` attributes that hold the view of ``use_view()``
VIEW_ATTRIBUTES = ("_curr_view", "_curr_sample_ids", "_curr_view_allow_missing", "_curr_view_warn_missing")


def compute_similarity_args(frame, max_hops: Optional[int] = 0) -> Optional[Dict[str, Any]]:
    """The locals of ``fiftyone.brain.similarity.compute_similarity`` if it
    runs in ``frame`` or up to ``max_hops`` frames (``None``: any number)
    above it, else None; None too if brain renamed a local we read."""
    hops = 0
    while frame is not None and (max_hops is None or hops <= max_hops):
        code = frame.f_code
        if code.co_name == "compute_similarity" and frame.f_globals.get("__name__") == COMPUTE_SIMILARITY_MODULE:
            missing = set(COMPUTE_SIMILARITY_LOCALS) - set(code.co_varnames)
            if missing:
                logger.debug("fiftyone-brain's compute_similarity lacks %s: using its generic path", sorted(missing))
                return None
            return dict(frame.f_locals)
        frame, hops = frame.f_back, hops + 1
    return None


def caller_compute_similarity_args(levels_up: int = 1) -> Optional[Dict[str, Any]]:
    """:func:`compute_similarity_args` of the frame ``levels_up`` above the
    function calling this one (1: its direct caller)."""
    return compute_similarity_args(sys._getframe(levels_up + 1))


def running_compute_similarity_args() -> Optional[Dict[str, Any]]:
    """:func:`compute_similarity_args` of the innermost
    ``compute_similarity`` running anywhere above the caller."""
    return compute_similarity_args(sys._getframe(2), max_hops=None)


@dataclasses.dataclass(frozen=True)
class ViewState:
    """What ``SimilarityIndex.use_view()`` recorded."""

    view: Any
    ids_listed: bool  # whether brain already listed the view's ids
    allow_missing: Any
    warn_missing: Any


def view_state(index) -> Optional[ViewState]:
    """The current view of a brain ``SimilarityIndex``, or None if brain no
    longer keeps it where we read it."""
    try:
        view, ids, allow_missing, warn_missing = (getattr(index, name) for name in VIEW_ATTRIBUTES)
    except AttributeError:
        return None
    return ViewState(view=view, ids_listed=ids is not None, allow_missing=allow_missing, warn_missing=warn_missing)


def parse_env_value(raw: str) -> Any:
    """How FiftyOne's brain config parses a ``FIFTYONE_BRAIN_*`` variable
    (the raw string itself if brain no longer has that parser)."""
    try:
        from fiftyone.brain.config import _parse_env_value
    except ImportError:
        return raw
    return _parse_env_value(raw)

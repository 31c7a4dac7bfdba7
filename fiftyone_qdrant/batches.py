"""What every source of a build yields: embeddings row-aligned with their
ids, and the images that could not be embedded. Kept free of torch and
FiftyOne so that every module (the build pipeline, the models, the App
operator) can share them."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np


@dataclasses.dataclass
class EmbeddingBatch:
    """Embeddings of one batch, row-aligned with their ids.

    ``label_ids`` is ``None`` for whole images and holds the patch label ids
    when a ``patches_field`` is embedded (then ``sample_ids`` repeats the id
    of each patch's sample).
    """

    embeddings: np.ndarray
    sample_ids: List[str]
    label_ids: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclasses.dataclass(frozen=True)
class EmbeddingFailure:
    """An image (or patch) that could not be embedded, and why."""

    sample_id: str
    filepath: str
    label_id: Optional[str]
    error: str


def format_failures(failures: Sequence[EmbeddingFailure], max_listed: int = 20) -> str:
    """A one-message summary of failures, listing at most ``max_listed``."""
    if not failures:
        return "No failures"
    lines = ["%d image(s)/patch(es) could not be embedded:" % len(failures)]
    for failure in failures[:max_listed]:
        what = failure.sample_id if failure.label_id is None else "%s (label %s)" % (failure.sample_id, failure.label_id)
        lines.append("  %s %s: %s" % (what, failure.filepath, failure.error))
    if len(failures) > max_listed:
        lines.append("  ... and %d more" % (len(failures) - max_listed))
    return "\n".join(lines)

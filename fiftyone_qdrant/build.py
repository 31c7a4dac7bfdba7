"""The one build pipeline: batches of embeddings in, points of an index out.

Every way an index gets vectors goes through :func:`iter_write`:
``compute_similarity()`` with a model (streamed, :func:`model_batches`) or
with precomputed embeddings, ``add_to_index()`` (and with it FiftyOne's
generic path, which calls it), and the App's build operator
(:func:`field_batches` or :func:`model_batches`). Each batch is validated
in full before any of it is written (bad input raises with nothing of it
written, and nothing already indexed is lost), then written in upserts of
``rows`` points inside one write session. Sources skip ids already indexed
when a killed build resumes, and list the images they could not embed
(:class:`BuildReport`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, List, Optional, Sequence

import numpy as np

import fiftyone.core.utils as fou

from . import points
from . import records
from .batches import EmbeddingBatch, EmbeddingFailure, format_failures
from .errors import ConfigError, DimensionMismatchError, InvalidInputError, QdrantBackendError
from .views import check_ids_in_dataset, count_rows

logger = logging.getLogger(__name__)

#: points per upsert
DEFAULT_ROWS = points.PAGE_SIZE


@dataclasses.dataclass(frozen=True)
class AddPolicy:
    """What to do with ids that are already in the index
    (``add_to_index``'s arguments)."""

    overwrite: bool = True
    allow_existing: bool = True
    warn_existing: bool = False


@dataclasses.dataclass
class CheckedBatch:
    """A batch that passed every check, ready to write."""

    embeddings: np.ndarray  # 2-d, any numeric dtype: written as float32
    norms: np.ndarray  # float32, one per row
    sample_ids: np.ndarray
    label_ids: Optional[np.ndarray]

    @property
    def keys(self) -> np.ndarray:
        return self.label_ids if self.label_ids is not None else self.sample_ids

    def __len__(self) -> int:
        return len(self.sample_ids)

    def pieces(self, rows: int) -> Iterator["CheckedBatch"]:
        for start in range(0, len(self), rows):
            stop = start + rows
            yield CheckedBatch(
                self.embeddings[start:stop],
                self.norms[start:stop],
                self.sample_ids[start:stop],
                self.label_ids[start:stop] if self.label_ids is not None else None,
            )

    def where(self, keep: np.ndarray) -> "CheckedBatch":
        return CheckedBatch(
            self.embeddings[keep], self.norms[keep], self.sample_ids[keep],
            self.label_ids[keep] if self.label_ids is not None else None,
        )


@dataclasses.dataclass
class BuildProgress:
    """Where a build stands, after each upsert."""

    written: int  # rows written so far
    total: Optional[int]  # rows the sources will give, if known

    @property
    def fraction(self) -> float:
        return min(1.0, self.written / self.total) if self.total else 0.0


@dataclasses.dataclass
class BuildReport:
    written: int
    failures: List[EmbeddingFailure]

    def check(self, skip_failures: bool = True) -> None:
        """Raises listing the failures, or logs them in one warning when
        ``skip_failures``."""
        if not self.failures:
            return
        if not skip_failures:
            raise QdrantBackendError(format_failures(self.failures))
        logger.warning("%s", format_failures(self.failures))


# -- sources -------------------------------------------------------------------


def array_batches(embeddings, sample_ids, label_ids=None) -> List[EmbeddingBatch]:
    """In-memory embeddings as one batch (``iter_write`` splits it into
    upserts): all of it is checked before any of it is written."""
    return [EmbeddingBatch(embeddings=embeddings, sample_ids=sample_ids, label_ids=label_ids)]


def model_batches(samples, model, patches_field=None, batch_size=None, num_workers=None, skip_ids=None,
                  progress=None, skip_failures=True):
    """Images (or patches) of ``samples`` embedded by ``model``, streamed
    through DataLoader workers (see :func:`fiftyone_qdrant.models.iter_embedding_batches`)."""
    from .models import iter_embedding_batches  # torch: only for model builds

    return iter_embedding_batches(
        samples, model, patches_field=patches_field, batch_size=batch_size, num_workers=num_workers,
        skip_ids=skip_ids, progress=progress, skip_failures=skip_failures,
    )


class FieldBatches(Iterator[EmbeddingBatch]):
    """Embeddings stored in a field of ``samples`` (on each label, with
    ``patches_field``), read ``samples_per_batch`` samples at a time.
    Samples or labels without a value are skipped, as FiftyOne does."""

    def __init__(self, samples, field: str, patches_field: Optional[str] = None, samples_per_batch: int = 1000):
        self.samples = samples
        self.field = field
        self.patches_field = patches_field
        self.samples_per_batch = samples_per_batch
        self.failures: List[EmbeddingFailure] = []
        self._ids = samples.values("id")
        self.total = count_rows(samples, patches_field)
        self._batches = self._generate()

    def __next__(self) -> EmbeddingBatch:
        return next(self._batches)

    def close(self) -> None:
        self._batches.close()

    def _generate(self) -> Iterator[EmbeddingBatch]:
        import fiftyone.brain.internal.core.utils as fbu

        step = self.samples_per_batch
        for start in range(0, len(self._ids), step):
            view = self.samples.select(self._ids[start : start + step])
            embeddings, sample_ids, label_ids = fbu.get_embeddings(
                view, patches_field=self.patches_field, embeddings_field=self.field, progress=False,
            )
            if len(embeddings):
                yield EmbeddingBatch(embeddings=embeddings, sample_ids=sample_ids, label_ids=label_ids)


# -- checks --------------------------------------------------------------------


def float32_chunks(embeddings: np.ndarray, rows: int = 8192):
    """(start row, float32 chunk) pairs covering ``embeddings``."""
    for start in range(0, len(embeddings), rows):
        yield start, np.asarray(embeddings[start : start + rows], dtype=np.float32)


def as_2d_numeric(embeddings) -> np.ndarray:
    try:
        embeddings = np.asarray(embeddings)
    except ValueError:  # ragged rows
        raise InvalidInputError("Embeddings must be a 2-d array of numbers; got rows of different lengths") from None
    if embeddings.dtype == object or not np.issubdtype(embeddings.dtype, np.number) or np.iscomplexobj(embeddings):
        raise InvalidInputError("Embeddings must be a numeric array, got dtype %s" % embeddings.dtype)
    if embeddings.ndim == 1 and embeddings.size > 0:
        embeddings = embeddings[np.newaxis, :]
    if embeddings.ndim != 2:
        raise InvalidInputError(
            "Embeddings must be a 2-d array (num_embeddings x num_dims), got shape %s" % (embeddings.shape,)
        )
    return embeddings


def checked_norms(embeddings: np.ndarray, cosine: bool, keys: Optional[Sequence[str]] = None) -> np.ndarray:
    """The float32 norms of ``embeddings`` (2-d), or raises naming the first
    bad row (``keys``, one per row, name it by id)."""
    norms = np.empty(len(embeddings), dtype=np.float32)
    if len(embeddings) == 0:
        return norms

    def name(row: int) -> str:
        return "" if keys is None else " (id %s)" % keys[row]

    if embeddings.shape[1] == 0:
        raise InvalidInputError("Embeddings have zero dimensions")
    # Checked (and later written) in float32 chunks: never a second
    # full-size copy or temporary of a possibly huge array
    for start, chunk in float32_chunks(embeddings):
        with np.errstate(over="ignore", invalid="ignore"):
            chunk_norms = np.linalg.norm(chunk, axis=1)
            norms[start : start + len(chunk)] = chunk_norms
            finite = np.isfinite(chunk_norms) & np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise InvalidInputError(
                "Embedding %d%s contains NaN or inf (or values so large that its norm "
                "overflows float32); fix or drop it before indexing" % (bad, name(bad))
            )
        if cosine and (chunk_norms == 0).any():
            bad = start + int(np.flatnonzero(chunk_norms == 0)[0])
            raise InvalidInputError(
                "Embedding %d%s is all zeros, which has no cosine similarity; drop it" % (bad, name(bad))
            )
    return norms


def _checked_ids(embeddings: np.ndarray, sample_ids, label_ids, patches_field: Optional[str]):
    sample_ids = np.array(points.validate_ids(sample_ids, "sample"), dtype="<U24")
    if len(sample_ids) != len(embeddings):
        raise InvalidInputError(
            "Got %d embeddings but %d sample ids; pass one id per row" % (len(embeddings), len(sample_ids))
        )
    if patches_field is not None:
        if label_ids is None:
            raise InvalidInputError("This is a patches index on '%s': pass label_ids with the embeddings" % patches_field)
        label_ids = np.array(points.validate_ids(label_ids, "label"), dtype="<U24")
        if len(label_ids) != len(embeddings):
            raise InvalidInputError(
                "Got %d embeddings but %d label ids; pass one id per row" % (len(embeddings), len(label_ids))
            )
    elif label_ids is not None:
        raise InvalidInputError("This index is not a patches index: do not pass label_ids")
    keys = label_ids if label_ids is not None else sample_ids
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        raise InvalidInputError(
            "Id %s appears %d times in this batch; each id may be added once" % (unique[counts > 1][0], counts[counts > 1][0])
        )
    return sample_ids, label_ids


def check_batch(index, batch: EmbeddingBatch, policy: AddPolicy, trusted_ids: bool = False) -> Optional[CheckedBatch]:
    """``batch`` checked against the index (values, ids, dimension, the
    collection's owner, ids already there), or None if nothing of it is to
    be written. ``trusted_ids``: ids listed from the dataset's own
    ``_id``s, valid and unique by construction."""
    config = index.config
    embeddings = as_2d_numeric(batch.embeddings)
    if trusted_ids:
        sample_ids, label_ids = np.asarray(batch.sample_ids, dtype="<U24"), None
    else:
        sample_ids, label_ids = _checked_ids(embeddings, batch.sample_ids, batch.label_ids, config.patches_field)
    norms = checked_norms(embeddings, config.metric == "cosine", label_ids if label_ids is not None else sample_ids)
    checked = CheckedBatch(embeddings, norms, sample_ids, label_ids)
    if len(checked) == 0:
        return None

    spec = index.spec
    dimension = embeddings.shape[1]
    if spec is not None and spec.dimension != dimension:
        raise DimensionMismatchError(
            "Embeddings have dimension %d but Qdrant collection '%s' stores "
            "%d-d vectors. Use the model that built this index, or build a "
            "new index under another brain_key/collection_name"
            % (dimension, index.collection_name, spec.dimension)
        )
    if index._building:
        if spec is not None:
            check_build_target(index)
    elif not trusted_ids:  # a build's ids come from the dataset itself
        check_ids_in_dataset(index._samples._root_dataset, sample_ids.tolist())

    if policy.overwrite and policy.allow_existing and not policy.warn_existing:
        return checked
    keys = checked.keys
    existing = set(index._points.lookup(keys, with_vectors=False)) if spec is not None else set()
    if not existing:
        return checked
    if not policy.allow_existing:
        raise QdrantBackendError(
            "Found %d ids (eg %s) that already exist in the index. Pass "
            "allow_existing=True to skip or overwrite them" % (len(existing), next(iter(existing)))
        )
    if policy.warn_existing:
        logger.warning("%s %d ids that already exist in the index", "Overwriting" if policy.overwrite else "Skipping", len(existing))
    if policy.overwrite:
        return checked
    checked = checked.where(np.array([k not in existing for k in keys]))
    return checked if len(checked) else None


def check_build_target(index) -> None:
    """A build writes into an existing collection only if it has no run
    records (e.g. written by a pipeline) or holds this very run (a killed
    build being resumed): never into the index of another run or dataset,
    whose vectors it would overwrite or mix with its own."""
    runs = list((index.store.get_metadata(index.collection_name).get(records.RUNS_KEY) or {}).values())
    dataset = index._samples._root_dataset
    dataset_id = str(dataset._doc.id)
    if not runs or any(r.get("dataset_id") == dataset_id and r.get("brain_key") == index.key for r in runs):
        return
    owner = runs[0]
    raise ConfigError(
        "Qdrant collection '%s' already holds the index of dataset '%s' (brain key %r); building "
        "brain key %r of dataset '%s' into it would overwrite or mix its vectors. Pass another "
        "`collection_name`, or `embeddings=False` to attach the existing index as it is"
        % (index.collection_name, owner.get("dataset_name"), owner.get("brain_key"), index.key, dataset.name)
    )


# -- writes --------------------------------------------------------------------


def create_collection(index, dimension: int) -> None:
    config = index.config
    spec = config.collection_spec(dimension)
    record = records.make_record(index, dimension)
    fields = ("sample_id", "label_id") if config.patches_field is not None else ("sample_id",)
    index.store.create_collection(index.collection_name, spec, records.add({}, record), keyword_fields=fields)
    index._spec = spec
    index._points.forget(created=True)


def write_embeddings_field(index, piece: CheckedBatch) -> None:
    """Stores added embeddings in the config's ``embeddings_field`` (on
    each label for a patches index), as the sklearn backend does; not
    during a build that reads them from that field."""
    field = index.config.embeddings_field
    if field is None or (index._building and index._field_is_source):
        return
    import fiftyone.brain.internal.core.utils as fbu

    fbu.add_embeddings(
        index._samples,
        [np.asarray(row) for row in piece.embeddings],
        piece.sample_ids.tolist(),
        piece.label_ids.tolist() if piece.label_ids is not None else None,
        field,
        patches_field=index.config.patches_field,
    )


def write_piece(index, piece: CheckedBatch) -> None:
    """One upsert; the embeddings field first: a write killed in between
    leaves field values for points to be written again, never points
    without them."""
    if index.spec is None:
        create_collection(index, piece.embeddings.shape[1])
    write_embeddings_field(index, piece)
    point_ids = index._points.point_ids_for_write(piece.keys)
    normalize = index.config.metric == "cosine"
    payloads = points.payloads(piece.sample_ids, piece.label_ids, piece.norms if normalize else None)
    index.store.upsert(
        index.collection_name, point_ids, np.asarray(piece.embeddings, dtype=np.float32), payloads,
        vector_name=index.config.vector_name,
    )


def iter_write(
    index,
    batches: Iterable[EmbeddingBatch],
    policy: AddPolicy = AddPolicy(),
    rows: int = DEFAULT_ROWS,
    total: Optional[int] = None,
    trusted_ids: bool = False,
) -> Iterator[BuildProgress]:
    """Checks and writes each batch as it comes, yielding after every
    upsert; holds the collection's write session from the first upsert on,
    and closes the source (its loader workers) however it ends."""
    if total is None:
        total = getattr(batches, "total", None)
    written = 0
    session = None
    try:
        for batch in batches:
            checked = check_batch(index, batch, policy, trusted_ids=trusted_ids)
            if checked is None:
                continue
            for piece in checked.pieces(rows):
                write_piece(index, piece)
                written += len(piece)
                if session is None:  # hold the write lock for the rest
                    session = index.store.batch(index.collection_name)
                    session.__enter__()
                yield BuildProgress(written=written, total=total)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        if session is not None:
            session.__exit__(None, None, None)
        index._points.forget()


def write(
    index,
    batches: Iterable[EmbeddingBatch],
    policy: AddPolicy = AddPolicy(),
    rows: int = DEFAULT_ROWS,
    total: Optional[int] = None,
    progress: Any = None,
    trusted_ids: bool = False,
) -> BuildReport:
    """:func:`iter_write` with FiftyOne's progress bar (``progress``:
    FiftyOne's argument; pass False when the source shows its own)."""
    written = 0
    with fou.ProgressBar(total=total, progress=progress) as pb:
        for step in iter_write(index, batches, policy, rows, total, trusted_ids):
            pb.update(step.written - written)
            written = step.written
    return BuildReport(written=written, failures=list(getattr(batches, "failures", ())))

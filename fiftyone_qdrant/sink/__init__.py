"""Streams vector records into Qdrant: the job of Qdrant's Fluvio/Kafka sink
connectors, done correctly and fast, and feeding FiftyOne indexes.

Record format (the connectors'): one JSON object per line::

    {"collection_name": "images", "id": 7, "vectors": [0.1, 0.2, 0.3], "payload": {"sample_id": "..."}}

- ``id``: an unsigned integer (0 to 2**64-1) or a UUID string.
- ``vectors`` (alias ``vector``): a list of numbers (the collection's unnamed
  dense vector), or a map of vector name to a dense list, a sparse vector
  ``{"indices": [...], "values": [...]}`` or a multi-vector (a list of
  equally long lists), in any combination. Integer literals are accepted.
- ``payload``: an optional JSON object.
- **Deletes are explicit**, as in Qdrant's Kafka connector: a *tombstone*
  (the record's value is null) deletes the point its key names. In a
  JSON-lines file a tombstone is the line
  ``{"key": {"collection_name": "images", "id": 7}, "value": null}``; a
  Fluvio record with a key and an empty or ``null`` value is one too. (A
  line of exactly the members ``key`` and ``value`` is such a Kafka-style
  record; a non-null ``value`` is the record itself.)
- A record with an ``id`` and a ``payload`` but **no vectors** (absent or
  null) updates the payload of an *existing* point and keeps its vectors:
  its keys are merged into the stored payload, as Qdrant's ``set_payload``
  does. A point that does not exist is not created (it is dead-lettered:
  send vectors to create it); a record with neither vectors nor payload is
  dead-lettered, never taken for a delete.

Why not the reference connector: it upserts one record per request, and logs
and drops any record that fails, including every record while Qdrant is down.
Here:

- records are batched per collection, by count and by age; inside a batch
  the last record for an id wins, which is what one-by-one application gives;
- transient errors (connection, timeout, 5xx, 429, I/O) are retried with
  exponential backoff; if Qdrant stays down the run stops without committing
  what was not written, and a re-run resumes;
- permanent failures (malformed JSON, missing fields, bad id, NaN/inf, a
  wrong dimension, vector name or kind, a record Qdrant rejects) go to a
  dead-letter JSONL file with the reason and the original line, and no other
  record is lost (a rejected batch is bisected down to the bad records);
- delivery is at-least-once: a source offset (byte offset in a file, record
  offset in a Fluvio partition) is committed only once everything before it
  was durably written or dead-lettered. Writes are made durable and offsets
  committed every ``commit_interval_s`` (5 s) and whenever the source goes
  idle. Writes are idempotent upserts/deletes by id, so re-running after a
  crash neither loses nor duplicates points, and dead letters are written
  exactly once (a re-run skips those an interrupted run already wrote);
- a file's committed offset is tied to the file (device, inode, digests of
  its start and of the bytes before the offset): a rotated, replaced or
  rewritten file is read from its start, and an unfinished last line is
  left for the next run (see :class:`StreamSource`);
- records are parsed by msgspec: plain dense records in one typed pass,
  everything else by the general path that gives the exact reasons;
- a missing collection is created from the shapes of its first record
  (dense sizes, sparse names, multi-vectors compared with max-sim; distance
  ``cosine`` unless told otherwise); an existing one is checked, and a record
  that does not fit is dead-lettered with the reason;
- when the first record's payload carries FiftyOne's ``sample_id`` (and
  ``label_id`` for patches), the collection gets keyword indexes on them, so
  ``fob.compute_similarity(dataset, backend="qdrant", embeddings=False,
  collection_name=..., vector_name=...)`` attaches it as a FiftyOne index.

Sources yield ``(offset, line)`` pairs and take ``commit(offset)`` calls;
files, stdin and Fluvio topics share :class:`QdrantSink`'s one parsing,
validation, batching and commit core.
"""

# The package's modules, each importing only those above it:
#
# - records:    lines -> SinkRecord (parse_record), RecordError
# - schema:     CollectionSchema: the vectors a collection stores
# - targets:    Target, ServerTarget: where records go (open_target)
# - checkpoint: Checkpoint, DeadLetter, DeadLetterFile
# - report:     SinkReport, and the errors that stop a run
# - sources:    Source, StreamSource (file_source), FluvioSource
# - config:     the reference connectors' config.yaml
# - runner:     QdrantSink, run_sink

from .records import (
    DELETE,
    SET_PAYLOAD,
    UPSERT,
    Line,
    PointId,
    RecordError,
    SinkRecord,
    SparseVector,
    VectorShape,
    parse_record,
    tombstone_line,
)
from .schema import CollectionSchema, normalize_distance
from .targets import ServerTarget, Target, open_target
from .checkpoint import Checkpoint, DeadLetter, DeadLetterFile
from .report import SinkReport, SinkUnavailableError, SourceUnavailableError
from .sources import FluvioSource, Source, StreamSource, file_source
from .config import QDRANT_GRPC_PORT, ConnectorConfig, load_connector_config, read_secrets
from .runner import DEFAULT_DEAD_LETTER_PATH, FIFTYONE_ID_FIELDS, QdrantSink, run_sink

__all__ = [
    "DELETE", "SET_PAYLOAD", "UPSERT", "Line", "PointId", "RecordError", "SinkRecord", "SparseVector", "VectorShape",
    "parse_record", "tombstone_line",
    "CollectionSchema", "normalize_distance",
    "ServerTarget", "Target", "open_target",
    "Checkpoint", "DeadLetter", "DeadLetterFile",
    "SinkReport", "SinkUnavailableError", "SourceUnavailableError",
    "FluvioSource", "Source", "StreamSource", "file_source",
    "QDRANT_GRPC_PORT", "ConnectorConfig", "load_connector_config", "read_secrets",
    "DEFAULT_DEAD_LETTER_PATH", "FIFTYONE_ID_FIELDS", "QdrantSink", "run_sink",
]

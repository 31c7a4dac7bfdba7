"""What a run ends with: its :class:`SinkReport`, or the error that stopped
it (Qdrant or the source stayed unavailable), which carries the report. A
module of their own because both the sources (a Fluvio topic that fails
mid-stream) and the sink raise these errors; a record's own problems are
:class:`~fiftyone_qdrant.sink.records.RecordError`."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from ..errors import QdrantBackendError
from .checkpoint import DeadLetter


class SinkUnavailableError(QdrantBackendError):
    """Qdrant stayed unreachable through every retry, or refused every
    write; nothing that was not written was committed, so a re-run
    resumes."""

    #: what the run did before it stopped
    report: Optional["SinkReport"] = None


class SourceUnavailableError(SinkUnavailableError):
    """Reading the source (a Fluvio topic) failed mid-stream."""


@dataclasses.dataclass
class SinkReport:
    records: int = 0
    #: points upserted (with vectors)
    written: int = 0
    #: payloads of existing points updated (records without vectors)
    payload_updated: int = 0
    #: tombstones applied to existing collections
    deleted: int = 0
    #: tombstones for collections that do not exist (nothing was deleted)
    deletes_in_missing_collections: int = 0
    dead_lettered: int = 0
    #: of ``dead_lettered``: letters an earlier, interrupted run had
    #: already written (not written again)
    dead_letters_already_written: int = 0
    superseded: int = 0
    batches: int = 0
    retries: int = 0
    collections_created: List[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False
    #: the dead-letter file (absolute), or None: then every dead letter is
    #: in ``dead_letters``
    dead_letter_path: Optional[str] = None
    #: with a dead-letter file, the first 100 dead letters of the run (all
    #: of them are in the file); without one, all of them
    dead_letters: List[DeadLetter] = dataclasses.field(default_factory=list)
    #: bytes of unfinished last lines left unread (see :class:`StreamSource`)
    unfinished_bytes: int = 0

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        extra = []
        if self.payload_updated:
            extra.append("%d payloads updated" % self.payload_updated)
        if self.deletes_in_missing_collections:
            extra.append("%d deletes in missing collections (nothing deleted)" % self.deletes_in_missing_collections)
        if self.collections_created:
            extra.append("created %s" % ", ".join(self.collections_created))
        if self.dead_lettered:
            extra.append("dead letters in %s" % (self.dead_letter_path or "the report (no dead-letter file)"))
        if self.dead_letters_already_written:
            extra.append("%d of them already there from an interrupted run" % self.dead_letters_already_written)
        if self.unfinished_bytes:
            extra.append("an unfinished last line (%d bytes) left for the next run" % self.unfinished_bytes)
        return (
            "%d records in %.2fs (%.0f records/s): %d written, %d deleted, %d dead-lettered, "
            "%d superseded in batch, %d batches, %d retries%s"
            % (
                self.records, self.elapsed_s, self.records_per_s, self.written, self.deleted,
                self.dead_lettered, self.superseded, self.batches, self.retries,
                "; " + "; ".join(extra) if extra else "",
            )
        )

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["records_per_s"] = self.records_per_s
        d["dead_letters"] = [letter.to_json() for letter in self.dead_letters]
        return d

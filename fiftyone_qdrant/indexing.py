"""Background HNSW indexing for the local Qdrant service.

A Qdrant server gives a collection its HNSW index (and quantized vectors) in
background threads once the collection passes its indexing threshold, and
answers queries exactly until then. qdrant-edge's ``EdgeShard.optimize()``
does the same work but holds Python's GIL until it is done (minutes for
100k x 512 on two cores): run inside the service it would freeze every
request of every collection. So the service:

1. copies the collection into a new shard next to the live one
   (``shard.indexing``): the live shard's files, flushed, under a read
   hold (queries go on, writes wait: ~2 s a GB), so the segments indexed
   before are kept and only what was written since gets indexed; or, for a
   new quantization, its points, page by page, into a fresh shard (every
   segment rebuilt), writers and readers getting in between pages;
2. has a child process (``python -m fiftyone_qdrant.service --optimize
   DIR``, at a lower CPU priority, the collection's description on stdin)
   optimize that shard with the collection's current engine config: the
   GIL it holds is its own;
3. swaps it in under the collection's write lock, after replaying from the
   live shard the points written meanwhile (the service tracks their ids;
   a write by filter during the rebuild discards it, to be retried).

Until the swap, queries are answered by the live shard, exactly. A crash at
any step leaves the live shard authoritative (see :func:`recover`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Set

import qdrant_edge as qe

logger = logging.getLogger("fiftyone_qdrant.service")

LIVE_DIR = "shard"
INDEXING_DIR = "shard.indexing"  # the copy being indexed
RETIRED_DIR = "shard.retired"  # the previous live shard, during the swap
QUIET_S_ENV = "FIFTYONE_QDRANT_INDEX_QUIET_S"
DEFAULT_QUIET_S = 2.0  # no write for this long before a rebuild starts
COPY_PAGE = 1000
_PR_SET_PDEATHSIG = 1  # prctl(2)
_MAX_ATTEMPTS = 5  # for an explicit optimize() that concurrent writes keep spoiling


def recover(directory: str) -> None:
    """Puts a collection directory back in order after a crash mid-rebuild:
    the live shard wins; a copy being indexed is dropped."""
    live, retired = os.path.join(directory, LIVE_DIR), os.path.join(directory, RETIRED_DIR)
    if not os.path.isdir(live) and os.path.isdir(retired):
        os.rename(retired, live)  # crashed between the two renames of the swap
    for leftover in (INDEXING_DIR, RETIRED_DIR):
        shutil.rmtree(os.path.join(directory, leftover), ignore_errors=True)


def vector_bytes(description: Dict) -> int:
    """Bytes of one point's dense vectors (float32), as collection.json describes them."""
    return sum(4 * int(v["size"]) for v in description["vectors"].values())


def needs_index(c, threshold_kb: int) -> bool:
    """Qdrant's rule: a collection with more unindexed vectors than its
    indexing threshold (in KB of vectors) gets an index; 0 turns it off.
    Unindexed: what the engine counts, or the vectors written since the
    last rebuild (the engine still counts an overwritten point's indexed
    copy)."""
    description = c.description
    if threshold_kb <= 0 or not description["vectors"]:
        return False
    info = c.shard.info()
    dense = len(description["vectors"])
    unindexed = max(info.points_count * dense - info.indexed_vectors_count, c.pending_vectors * dense)
    return unindexed > 0 and unindexed * vector_bytes(description) / dense >= threshold_kb * 1024


class Tracker:
    """The ids written to a collection while its copy is being indexed."""

    def __init__(self):
        self.ids: Optional[Set] = set()  # None: a write by filter spoiled the copy

    def wrote(self, ids) -> None:
        if self.ids is None:
            return
        if ids is None:
            self.ids = None
        else:
            self.ids.update(ids)


def _upsert_records(target: qe.EdgeShard, records) -> None:
    """Records read from a shard, written as they are into ``target``."""
    def vector(record):  # an unnamed vector comes back as {"": [...]}
        v = record.vector
        return v[""] if isinstance(v, dict) and list(v) == [""] else v

    target.update(qe.UpdateOperation.upsert_points([qe.Point(r.id, vector(r), r.payload or {}) for r in records]))


def copy_field_indexes(payload_schema: Dict, target: qe.EdgeShard) -> None:
    """The payload indexes of a shard (its ``info().payload_schema``), on ``target``."""
    for field, info in payload_schema.items():
        target.update(qe.UpdateOperation.create_field_index(field, info.data_type))


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


#: what indexing writes for a point not yet indexed, in proportion to the
#: space it takes now (its quantized copy and graph come on top)
_INDEXED_GROWTH = 1.5


def copy_files(shard: qe.EdgeShard, live: str, target: str, check_space, dense_vectors: int) -> None:
    """The live shard's files, flushed, as a shard at ``target``: a copy
    whose indexed segments stay indexed. The caller holds the collection
    for reading, so that no write changes the files meanwhile.

    The disk must take the copy and the segments its indexing writes for
    the points not yet indexed (a full disk must stop it before the
    engine's memory maps hit it): at 10M x 512 int8, a 24.9 GB copy and
    13.7 GB for the 5M points written since the last build."""
    shard.flush()
    size, info = directory_bytes(live), shard.info()
    unindexed = max(0.0, 1.0 - info.indexed_vectors_count / max(1, info.points_count * dense_vectors))
    check_space(int(size * (1.0 + _INDEXED_GROWTH * unindexed)), factor=1.0)
    shutil.copytree(live, target)


def copy_points(source: qe.EdgeShard, target: qe.EdgeShard, ids=None, lock=None) -> int:
    """Copies every point (or those of ``ids``, deleting from ``target``
    the ones ``source`` lacks) with vectors and payload; returns how many
    were copied. ``lock`` (a ReadWriteLock) is held for reading per page only."""
    hold = (lambda: lock.hold("r")) if lock is not None else contextlib.nullcontext
    copied = 0
    if ids is not None:
        ids = list(ids)
        for start in range(0, len(ids), COPY_PAGE):
            page = ids[start : start + COPY_PAGE]
            with hold():
                records = source.retrieve(page, with_payload=True, with_vector=True)
            found = {r.id for r in records}
            if records:
                _upsert_records(target, records)
            gone = [i for i in page if i not in found]
            if gone:
                target.update(qe.UpdateOperation.delete_points(gone))
            copied += len(records)
        return copied
    offset = None
    while True:
        with hold():
            records, offset = source.scroll(
                qe.ScrollRequest(offset=offset, limit=COPY_PAGE, with_payload=True, with_vector=True))
        if records:
            _upsert_records(target, records)
            copied += len(records)
        if offset is None:
            return copied


class Indexer(threading.Thread):
    """Watches the open collections of a service's store and rebuilds, one at
    a time, those past their indexing threshold once writes pause; runs an
    explicit request (``optimize()``) at once."""

    def __init__(self, store, edge_config, threshold_kb, check_space, quiet_s: Optional[float] = None,
                 poll_s: float = 0.5):
        super().__init__(name="qdrant-local-indexer", daemon=True)
        self.store = store
        self.edge_config = edge_config  # description -> qe.EdgeConfig
        self.threshold_kb = threshold_kb  # description -> int
        self.check_space = check_space  # bytes about to be written -> raises when the disk cannot take them
        self.quiet_s = float(os.environ.get(QUIET_S_ENV) or DEFAULT_QUIET_S) if quiet_s is None else quiet_s
        self.poll_s = poll_s
        self.busy = False
        self._requests: Dict[str, List[threading.Event]] = {}
        self._forced: Set[str] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._child: Optional[subprocess.Popen] = None
        self._tried: Dict[str, int] = {}  # collection -> revision of the last rebuild attempt

    # -- asked by the service ---------------------------------------------------

    def request(self, name: str, force: bool = False) -> threading.Event:
        """Rebuild ``name`` now if it needs an index (``force``: even if it
        is indexed, e.g. for a new quantization); the event is set when it
        is done, or when nothing was to be done."""
        done = threading.Event()
        with self._wake:
            if self._stopping:
                done.set()
                return done
            self._requests.setdefault(name, []).append(done)
            if force:
                self._forced.add(name)
            self._wake.notify_all()
        return done

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            for events in self._requests.values():
                for event in events:
                    event.set()
            self._requests.clear()
            self._wake.notify_all()
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()

    # -- the loop -----------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._wake:
                if not self._requests and not self._stopping:
                    self._wake.wait(self.poll_s)
                if self._stopping:
                    return
                requests, self._requests = self._requests, {}
                forced, self._forced = self._forced, set()
            for name, events in requests.items():
                try:
                    self._index_now(name, name in forced)
                except Exception as e:  # never kills the loop; queries stay exact
                    logger.warning("Indexing collection '%s' failed: %s", name, e)
                finally:
                    for event in events:
                        event.set()
            for collection in self.store.open_collections():
                if self._stopping:
                    return
                if self._due(collection):
                    try:
                        self.rebuild(collection)
                    except Exception as e:
                        logger.warning("Indexing collection '%s' failed: %s", collection.name, e)

    def _due(self, c) -> bool:
        if c.tracker is not None or time.monotonic() - c.last_write < self.quiet_s:
            return False
        if self._tried.get(c.name) == c.revision:
            return False  # tried at this state already (e.g. the engine found nothing to index)
        with c.lock.hold("r"):
            return needs_index(c, self.threshold_kb(c.description))

    def _index_now(self, name: str, force: bool) -> None:
        for _ in range(_MAX_ATTEMPTS):
            c = self.store.get(name)
            with c.lock.hold("r"):
                due = force or needs_index(c, self.threshold_kb(c.description))
            if not due or self.rebuild(c, fresh=force):
                return
        logger.warning("Collection '%s': writes kept interrupting its indexing; it stays exact for now", name)

    # -- one rebuild -------------------------------------------------------------

    def rebuild(self, c, fresh: bool = False) -> bool:
        """Copy, index out of process, swap: the copy is the live shard's
        files (only what was written since the last rebuild gets indexed),
        or with ``fresh`` its points in a new shard (every segment rebuilt,
        as a new quantization needs). False when the copy was spoiled or
        the collection went away (the live shard is then untouched)."""
        self.busy = True
        work = os.path.join(c.directory, INDEXING_DIR)
        started = time.monotonic()
        try:
            self._tried[c.name] = c.revision
            shutil.rmtree(work, ignore_errors=True)
            with c.lock.hold("r"):  # no write in between: the tracker sees every later one
                description = dict(c.description)
                c.tracker = Tracker()
                pending = c.pending_vectors
                info = c.shard.info()
                fields = dict(info.payload_schema)
                if not fresh:
                    copy_files(c.shard, os.path.join(c.directory, LIVE_DIR), work, self.check_space,
                               len(description["vectors"]))
            if fresh:
                # the copy needs about the collection's size again
                self.check_space(info.points_count * (vector_bytes(description) + 256))
                new = qe.EdgeShard.create(work, self.edge_config(description))
                try:
                    copy_field_indexes(fields, new)
                    copy_points(c.shard, new, lock=c.lock)
                    new.flush()
                finally:
                    new.close()
            copy_s = time.monotonic() - started
            if not self._optimize_out_of_process(work, description):
                return False
            return self._swap(c, work, pending, info.points_count, copy_s, time.monotonic() - started)
        finally:
            c.tracker = None
            self.busy = False
            shutil.rmtree(work, ignore_errors=True)

    def _optimize_out_of_process(self, work: str, description: Dict) -> bool:
        child = subprocess.Popen([sys.executable, "-m", "fiftyone_qdrant.service", "--optimize", work,
                                  "--parent", str(os.getpid())],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._child = child
        try:
            _, err = child.communicate(json.dumps(description).encode())
        finally:
            self._child = None
        if child.returncode != 0:
            if not self._stopping:
                logger.warning("The indexing process failed (exit %s): %s", child.returncode,
                               err.decode(errors="replace")[-2000:])
            return False
        return True

    def _swap(self, c, work: str, pending: int, copied: int, copy_s: float, total_s: float) -> bool:
        live, retired = os.path.join(c.directory, LIVE_DIR), os.path.join(c.directory, RETIRED_DIR)
        with c.lock.hold("w"):
            tracker, c.tracker = c.tracker, None
            if tracker is None or tracker.ids is None or self.store.open_collection(c.name) is not c:
                logger.info("Collection '%s': written by filter (or deleted) while being indexed; retrying later",
                            c.name)
                return False
            new = qe.EdgeShard.load(work)
            try:
                if tracker.ids:
                    copy_points(c.shard, new, ids=tracker.ids)  # upserted, or deleted where gone
                replayed = len(tracker.ids)
                new.flush()
            finally:
                new.close()
            c.shard.flush()
            c.shard.close()
            os.rename(live, retired)
            os.rename(work, live)
            c.shard = qe.EdgeShard.load(live)
            c.pending_vectors -= pending  # those written meanwhile are still to index
            self._tried[c.name] = c.revision
        shutil.rmtree(retired, ignore_errors=True)
        info = c.shard.info()
        logger.info("Collection '%s' indexed: %d points copied in %.1f s, %d written meanwhile replayed, "
                    "%d of %d vectors indexed, %.1f s in all", c.name, copied, copy_s, replayed,
                    info.indexed_vectors_count, info.points_count, total_s)
        return True


def exit_with_parent(parent_pid: int) -> None:
    """Ends this process when the service that started it dies: left
    running, it would index a copy that nobody swaps in, in the directory
    where the next service makes its own. On Linux the kernel kills it
    with its parent (even while the engine holds the interpreter); elsewhere
    a thread checks every half second."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # it died before the line above
        os._exit(1)


def optimize_shard(directory: str, config: qe.EdgeConfig) -> int:
    """The child process: build the HNSW index (and quantized vectors) of the
    shard at ``directory`` with the collection's engine ``config`` (its
    optimizer settings may have changed since the live shard was made), at
    low priority so the service's queries and writes keep their CPU."""
    try:
        os.nice(10)
    except OSError:
        pass
    shard = qe.EdgeShard.load(directory, config)
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return 0

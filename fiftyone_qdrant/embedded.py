"""Embedded Qdrant: Qdrant's own engine in-process (``qdrant-edge-py``).

Layout of a store (default ``~/.fiftyone/qdrant``)::

    <root>/collections/<name>/shard/            the Edge shard (segments)
    <root>/collections/<name>/collection.json   vector config + metadata
    <root>/collections/<name>/version           bumped after every write
    <root>/collections/<name>/lock              fcntl lock file
    <root>/collections/<name>/stale-close-backup/   only while (or if killed
                                                while) a stale handle closes

The FiftyOne App server is another process that opens the same store while a
notebook still holds it, so shards are created without a WAL (a second
process may then load them) and we coordinate ourselves: writers take an
exclusive lock, write, ``flush()`` and bump ``version``; readers take a shared
lock and reload the shard when ``version`` changed since they loaded it.
Without a WAL a write is durable once ``flush()`` returns, which happens
before the lock is released.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set

import numpy as np
import qdrant_edge as qe

from .engine import (
    CollectionSpec,
    Hit,
    IdRestriction,
    PointRecord,
    VectorStore,
    file_lock,
    iter_pages,
)
from .errors import CollectionNotFoundError, ConfigError, QdrantBackendError

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")

DISTANCES = {
    "cosine": qe.Distance.Cosine,
    "dotproduct": qe.Distance.Dot,
    "euclidean": qe.Distance.Euclid,
    "manhattan": qe.Distance.Manhattan,
}

_HNSW_KEYS = ("m", "ef_construct", "full_scan_threshold", "max_indexing_threads", "on_disk", "payload_m")
_HNSW_DEFAULTS = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000}
# Cluster and WAL settings, which have no meaning for one local shard
_SERVER_ONLY_KEYS = ("replication_factor", "shard_number", "write_consistency_factor", "wal_config")
_OPTIMIZER_KEYS = ("deleted_threshold", "vacuum_min_vector_number", "default_segment_number", "max_segment_size", "indexing_threshold")


def validate_collection_name(name: str) -> str:
    """Collection names become directory names: no separators, no ``..``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ConfigError(
            "Invalid collection name %r: use 1-255 letters, digits, '_', '-' "
            "or '.', starting with a letter or digit" % (name,)
        )
    return name


# Handles must be closed by _SharedShard.close(), never dropped by the
# interpreter's teardown, which would flush a stale one unlocked (see
# _SharedShard._load). So every _SharedShard still open at exit is closed
# then, and one garbage-collected while open is kept until then.
_live_shards: "weakref.WeakSet[_SharedShard]" = weakref.WeakSet()
_parked_shards: List["_SharedShard"] = []


@atexit.register
def _close_shards_at_exit() -> None:
    for shared in list(_live_shards) + _parked_shards:
        try:
            shared.close()
        except Exception:
            pass


# -- closing a stale handle without losing newer data ---------------------------

_SWAP_BACKUP = "stale-close-backup"
# Data that qdrant-edge memory-maps shared: a stale close leaves it as is
# (checked: vectors chunks, payload pages, deleted flags), and it is most
# of the shard's size, so it is not copied
_BULK_FILE_RE = re.compile(r"^(chunk_\d+\.mmap|page_\d+\.dat|flags_\w+\.dat)$")


def _shard_files(shard_dir: str) -> Dict[str, float]:
    """Every file of the shard, relative path -> mtime; directories end with '/'."""
    found: Dict[str, float] = {}
    for root, dirs, files in os.walk(shard_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, shard_dir) + ("/" if name in dirs else "")
            try:
                found[relative] = os.stat(path).st_mtime
            except FileNotFoundError:
                continue
    return found


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_names(shard_dir: str) -> Set[str]:
    try:
        return set(os.listdir(os.path.join(shard_dir, "segments")))
    except FileNotFoundError:
        return set()


def _may_be_overwritten(relative: str, known_segments: Set[str]) -> bool:
    """Whether closing a stale handle may write this shard file: it knows
    only the segments that existed when it was loaded (a segment built later,
    e.g. an HNSW index, is never touched), and leaves the bulk data alone."""
    parts = relative.split("/")
    if parts[0] == "segments" and len(parts) > 2 and parts[1] not in known_segments:
        return False
    return not _BULK_FILE_RE.match(parts[-1])


@contextlib.contextmanager
def _stale_close_guard(
    directory: str, shard_dir: str, changed_since: float, known_segments: Set[str]
) -> Iterator[None]:
    """Around closing a stale handle: first a backup of every shard file
    that its close could write back with old content (written since the
    handle was loaded, see :func:`_may_be_overwritten`), then, after the
    close, that content written back and anything the close created
    removed. The backup is complete before it is named, so a process killed
    before the end leaves a backup that the next loader applies
    (:func:`_finish_swap`). Callers hold the exclusive lock.
    """
    backup = os.path.join(directory, _SWAP_BACKUP)
    staging = backup + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    files = _shard_files(shard_dir)
    saved = [
        relative for relative, mtime in files.items()
        if not relative.endswith("/") and mtime >= changed_since - 1.0 and _may_be_overwritten(relative, known_segments)
    ]
    for relative in saved:
        target = os.path.join(staging, "files", relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(shard_dir, relative), target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
    with open(os.path.join(staging, "manifest.json"), "w") as f:
        json.dump({"paths": sorted(files), "saved": saved}, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(staging, backup)
    _fsync_dir(directory)
    yield
    _finish_swap(directory, shard_dir)


def _finish_swap(directory: str, shard_dir: str) -> None:
    """Writes a stale-close backup back into the shard (idempotent), then
    deletes it; a no-op without one. Callers hold the exclusive lock."""
    backup = os.path.join(directory, _SWAP_BACKUP)
    shutil.rmtree(backup + ".tmp", ignore_errors=True)  # never completed: the close never ran
    try:
        with open(os.path.join(backup, "manifest.json")) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return
    for relative in manifest["saved"]:
        with open(os.path.join(backup, "files", relative), "rb") as f:
            content = f.read()
        path = os.path.join(shard_dir, relative)
        # in place: a handle may have the file mapped
        with open(path, "r+b" if os.path.exists(path) else "wb") as f:
            f.write(content)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    known = set(manifest["paths"])
    for relative in sorted(set(_shard_files(shard_dir)) - known, key=len, reverse=True):
        path = os.path.join(shard_dir, relative)
        if relative.endswith("/"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    logger.debug("Stale-close backup of '%s' applied (%d files)", directory, len(manifest["saved"]))
    shutil.rmtree(backup)
    _fsync_dir(directory)


class _SharedShard:
    """One collection directory, shared safely between processes.

    ``EdgeShard.load()`` itself writes to the shard (it replays and deletes
    the journals that a writer's ``flush()`` leaves), which would corrupt
    the in-memory state of a process that still has the shard open. So a
    writer flushes and closes its handle before releasing its lock (and
    reloads it when its session goes on), and bumps the version file: from
    then on every handle still open elsewhere is stale and is replaced
    before its next read (see :meth:`_load`). The first process to load
    replays the journals, under the exclusive lock that every load takes;
    later loads rewrite nothing, so its fresh handle stays valid.
    """

    # A long write session is consolidated this often so that readers
    # (the App) are not locked out for the whole build
    CONSOLIDATE_EVERY_S = 10.0

    def __init__(self, directory: str):
        self.directory = directory
        self.shard_dir = os.path.join(directory, "shard")
        self._lock_path = os.path.join(directory, "lock")
        self._version_path = os.path.join(directory, "version")
        self._shard: Optional[qe.EdgeShard] = None
        self._loaded_version: Optional[str] = None
        # when self._shard was loaded (time.time()), and the segments it knows
        self._loaded_at = 0.0
        self._loaded_segments: Set[str] = set()
        self._thread_lock = threading.RLock()
        self._lock_fd: Optional[int] = None
        self._session_depth = 0
        self._session_started = 0.0
        self._consolidate_s = 0.0  # how long the last consolidation took
        _live_shards.add(self)
        # exact point count and HNSW-indexed share of the loaded shard,
        # reset on every (re)load and write: counting costs as much as an
        # exact query
        self._count: Optional[int] = None
        self._info: Optional[qe.ShardInfo] = None

    def _read_version(self) -> str:
        try:
            with open(self._version_path) as f:
                return f.read()
        except FileNotFoundError:
            raise CollectionNotFoundError(
                "Qdrant collection at '%s' no longer exists" % self.directory
            ) from None

    def _bump_version(self) -> None:
        tmp = self._version_path + ".tmp-%d" % os.getpid()
        with open(tmp, "w") as f:
            f.write(uuid.uuid4().hex)
        os.replace(tmp, self._version_path)
        self._loaded_version = self._read_version()

    def _load(self, own: bool = False) -> qe.EdgeShard:
        """(Re)loads the shard. ``own``: the handle we hold has just been
        flushed by us (a consolidation); else it may be *stale* (another
        process wrote since we loaded it).

        Closing (or dropping) a stale handle flushes its old in-memory
        state over the newer files (vector count, payload tracker, segment
        version): points stay counted but become unsearchable, for good.
        So a stale handle is closed inside :func:`_stale_close_guard`, which
        writes those files back afterwards, also after a crash in between.
        Callers hold the exclusive lock.
        """
        self._forget_stats()
        old, self._shard = self._shard, None
        if old is not None and own:
            old.close()
            old = None
        _finish_swap(self.directory, self.shard_dir)  # a process killed mid-swap left a backup
        loading_at = time.time()
        new = qe.EdgeShard.load(self.shard_dir)
        if old is not None:
            with _stale_close_guard(
                self.directory, self.shard_dir, changed_since=self._loaded_at, known_segments=self._loaded_segments
            ):
                old.close()
        self._shard = new
        self._loaded_at = loading_at
        self._loaded_segments = _segment_names(self.shard_dir)
        return new

    def _is_fresh(self) -> bool:
        return self._shard is not None and self._read_version() == self._loaded_version

    @contextlib.contextmanager
    def _flock(self, shared: bool = False) -> Iterator[int]:
        with contextlib.ExitStack() as stack:
            try:
                fd = stack.enter_context(file_lock(self._lock_path, shared=shared, create=False))
            except FileNotFoundError:
                raise CollectionNotFoundError(
                    "Qdrant collection at '%s' no longer exists" % self.directory
                ) from None
            yield fd

    @contextlib.contextmanager
    def reading(self) -> Iterator[qe.EdgeShard]:
        with self._thread_lock:
            if self._session_depth:  # inside our own write session
                yield self._shard
                return
            while True:
                if not self._is_fresh():
                    with self._flock():
                        if not self._is_fresh():
                            self._load()
                            self._loaded_version = self._read_version()
                with self._flock(shared=True):
                    if self._is_fresh():  # else a writer got in: reload
                        yield self._shard
                        return

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The write lock alone, for sidecar files (metadata)."""
        with self._thread_lock, self._flock():
            yield

    @contextlib.contextmanager
    def writing(self) -> Iterator[qe.EdgeShard]:
        """One write, or a whole session of them when nested in
        :meth:`session`; durable (flushed) when the session exits or is
        consolidated."""
        with self.session():
            try:
                yield self._shard
            finally:
                self._forget_stats()
                # no flush per write: the session's consolidation flushes
                # (a flush costs as much as writing ~1000 vectors)
                # a consolidation reloads the whole shard (~3.5 s at 1M x
                # 512): spacing them by 10x their cost keeps big builds
                # within ~10% of raw write speed
                interval = max(self.CONSOLIDATE_EVERY_S, 10 * self._consolidate_s)
                if time.monotonic() - self._session_started > interval:
                    self._consolidate()
                    # let readers in, then take the lock back
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                    self._begin()

    def _begin(self) -> None:
        if not self._is_fresh():
            self._load()
        else:  # a backup left by a crash holds the current state: apply it before writing past it
            _finish_swap(self.directory, self.shard_dir)
        # Bumped first: if this process dies mid-session, every other
        # process reloads instead of trusting its in-memory state
        self._bump_version()
        self._session_started = time.monotonic()

    def _consolidate(self, reload: bool = True) -> None:
        """Flushes and closes our handle; reloads it if the session goes on.
        At the end of a session the next read loads it instead (a build's
        last step costs as much as a load less: 0.2 s at 100k x 512)."""
        started = time.monotonic()
        self._shard.flush()
        if reload:
            self._load(own=True)
        else:
            self._forget_stats()
            self._shard.close()
            self._shard = None
        self._bump_version()
        self._consolidate_s = time.monotonic() - started

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Holds the write lock across many writes (one consolidation)."""
        with self._thread_lock:
            if self._session_depth:
                self._session_depth += 1
                try:
                    yield
                finally:
                    self._session_depth -= 1
                return
            with self._flock() as fd:
                self._lock_fd = fd
                self._session_depth = 1
                try:
                    self._begin()
                    yield
                finally:
                    self._session_depth = 0
                    self._lock_fd = None
                    if self._shard is not None:
                        self._consolidate(reload=False)

    def _forget_stats(self) -> None:
        self._count = None
        self._info = None

    def count(self) -> int:
        with self.reading() as shard:
            if self._count is None:
                self._count = shard.count(qe.CountRequest(exact=True))
            return self._count

    def info(self) -> qe.ShardInfo:
        """Points, HNSW-indexed vectors and payload indexes (cached)."""
        with self.reading() as shard:
            if self._info is None:
                self._info = shard.info()
            return self._info

    def __del__(self):
        if self._shard is not None:
            _parked_shards.append(self)  # closed (safely) at exit

    def close(self) -> None:
        """Closes the handle under the exclusive lock: a handle that went
        stale is swapped for a fresh one first (see :meth:`_load`)."""
        with self._thread_lock:
            if self._shard is not None:
                try:
                    with self._flock():
                        if not self._is_fresh():
                            self._load()
                        self._shard.close()
                except CollectionNotFoundError:  # deleted: nothing to protect
                    self._shard.close()
                self._shard = None
            self._forget_stats()


class EmbeddedStore(VectorStore):
    """Collections in a directory on local disk."""

    def __init__(self, path: str):
        self.root = os.path.abspath(os.path.expanduser(path))
        self.location = "embedded store at '%s'" % self.root
        self._collections_dir = os.path.join(self.root, "collections")
        self._open: Dict[str, _SharedShard] = {}
        self._lock = threading.RLock()

    # -- helpers ------------------------------------------------------------

    def _dir(self, name: str) -> str:
        return os.path.join(self._collections_dir, validate_collection_name(name))

    def _shared(self, name: str) -> _SharedShard:
        with self._lock:
            shared = self._open.get(name)
            if shared is None or not os.path.isdir(shared.directory):
                if not self.collection_exists(name):
                    raise CollectionNotFoundError(
                        "Qdrant collection '%s' does not exist in the %s. "
                        "Create it with compute_similarity(), or check "
                        "`collection_name` and the store path"
                        % (name, self.location)
                    )
                shared = _SharedShard(self._dir(name))
                self._open[name] = shared
            return shared

    def _read_json(self, name: str) -> Dict[str, Any]:
        path = os.path.join(self._dir(name), "collection.json")
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise CollectionNotFoundError(
                "Qdrant collection '%s' does not exist in the %s"
                % (name, self.location)
            ) from None

    def _write_json(self, directory: str, doc: Dict[str, Any]) -> None:
        path = os.path.join(directory, "collection.json")
        tmp = path + ".tmp-%d" % os.getpid()
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _store_lock(self):
        os.makedirs(self._collections_dir, exist_ok=True)
        with file_lock(os.path.join(self.root, "store.lock")):
            yield

    # -- collections --------------------------------------------------------

    def list_collections(self) -> List[str]:
        if not os.path.isdir(self._collections_dir):
            return []
        return sorted(
            n
            for n in os.listdir(self._collections_dir)
            if _NAME_RE.match(n)
            and os.path.isfile(os.path.join(self._collections_dir, n, "collection.json"))
        )

    def collection_exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self._dir(name), "collection.json"))

    def create_collection(self, name, spec, metadata, keyword_fields=()) -> None:
        ignored = [key for key in _SERVER_ONLY_KEYS if getattr(spec, key) is not None]
        if ignored:
            logger.warning(
                "%s only apply to a Qdrant server: the embedded store (one shard on local "
                "disk, no WAL, see the README) ignores them for collection '%s'",
                ", ".join("`%s`" % key for key in ignored), name,
            )
        self.create_collection_from_config(
            name,
            edge_config=_edge_config(spec),
            vectors={spec.vector_name or "": {"size": spec.dimension, "metric": spec.metric}},
            metadata=metadata,
            keyword_fields=keyword_fields,
        )

    def create_collection_from_config(
        self,
        name: str,
        edge_config: qe.EdgeConfig,
        vectors: Dict[str, Dict[str, Any]],
        metadata: Dict[str, Any],
        keyword_fields: Sequence[str] = (),
        sparse_vectors: Sequence[str] = (),
    ) -> None:
        """Creates a collection atomically: it appears complete or not at
        all, even if two processes race or one is killed half way."""
        final_dir = self._dir(name)
        with self._store_lock():
            if self.collection_exists(name):
                raise QdrantBackendError(
                    "Qdrant collection '%s' already exists in the %s"
                    % (name, self.location)
                )
            shutil.rmtree(final_dir, ignore_errors=True)  # a crashed attempt
            for entry in os.listdir(self._collections_dir):
                if entry.startswith(".tmp-"):  # creations killed half way (we hold the lock)
                    shutil.rmtree(os.path.join(self._collections_dir, entry), ignore_errors=True)
            tmp_dir = os.path.join(self._collections_dir, ".tmp-%s" % uuid.uuid4().hex)  # never longer than a name
            os.makedirs(tmp_dir)
            shard = qe.EdgeShard.create(os.path.join(tmp_dir, "shard"), edge_config)
            for field in keyword_fields:
                shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
            shard.flush()
            shard.close()
            open(os.path.join(tmp_dir, "lock"), "w").close()
            with open(os.path.join(tmp_dir, "version"), "w") as f:
                f.write(uuid.uuid4().hex)
            self._write_json(
                tmp_dir,
                {"format": 1, "vectors": vectors, "sparse_vectors": list(sparse_vectors), "metadata": metadata},
            )
            os.rename(tmp_dir, final_dir)

    def get_spec(self, name: str, vector_name: Optional[str] = None) -> CollectionSpec:
        vectors = self._read_json(name)["vectors"]
        dense = sorted(k or "(unnamed)" for k, v in vectors.items() if not v.get("multivector"))
        key = vector_name or ""
        if key not in vectors or vectors[key].get("multivector"):
            raise ConfigError(
                "Qdrant collection '%s' has no single dense vector named %r; its dense "
                "vectors are %s. Pass one of them as `vector_name`" % (name, vector_name or "(unnamed)", dense)
            )
        v = vectors[key]
        return CollectionSpec(dimension=v["size"], metric=v["metric"], vector_name=vector_name)

    def vector_names(self, name: str) -> Dict[str, Any]:
        doc = self._read_json(name)
        return {"dense": doc["vectors"], "sparse": doc.get("sparse_vectors", [])}

    def get_metadata(self, name: str) -> Dict[str, Any]:
        return dict(self._read_json(name).get("metadata") or {})

    def set_metadata(self, name: str, metadata: Dict[str, Any]) -> None:
        with self._shared(name).exclusive():
            doc = self._read_json(name)
            doc["metadata"] = metadata
            self._write_json(self._dir(name), doc)

    def delete_collection(self, name: str) -> None:
        directory = self._dir(name)
        with self._store_lock():
            with self._lock:
                shared = self._open.pop(name, None)
                if shared is not None:
                    shared.close()
            if not os.path.isdir(directory):
                return
            trash = os.path.join(self._collections_dir, ".trash-%s" % uuid.uuid4().hex)
            os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def create_keyword_index(self, name: str, field: str) -> None:
        with self._shared(name).writing() as shard:
            shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))

    # -- points -------------------------------------------------------------

    def upsert(self, name, ids, vectors, payloads, vector_name=None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = vectors.tolist()
        if vector_name:
            points = [qe.Point(i, {vector_name: v}, p) for i, v, p in zip(ids, rows, payloads)]
        else:
            points = [qe.Point(i, v, p) for i, v, p in zip(ids, rows, payloads)]
        with self._shared(name).writing() as shard:
            shard.update(qe.UpdateOperation.upsert_points(points))

    @contextlib.contextmanager
    def reading(self, name: str) -> Iterator[qe.EdgeShard]:
        """The collection's shard under the read lock, for raw reads (named,
        sparse and multi-vectors) that the engine interface does not cover."""
        with self._shared(name).reading() as shard:
            yield shard

    def shard(self, name: str) -> qe.EdgeShard:
        """The collection's ``EdgeShard``, freshly loaded if another process
        changed it. Writing to it directly bypasses our locking."""
        with self._shared(name).reading() as shard:
            return shard

    @contextlib.contextmanager
    def snapshot(self, name: str) -> Iterator[None]:
        if not self.collection_exists(name):
            yield
            return
        # the shared lock (and our thread lock) held throughout: reads
        # nested inside reuse the handle, which no writer can change
        with self._shared(name).reading():
            yield

    def batch(self, name: str):
        """Holds the write lock across many writes, consolidating once."""
        return self._shared(name).session()

    def upsert_points(self, name: str, points: List[qe.Point]) -> None:
        """Raw Edge points (any vector kinds), for the streaming sink."""
        with self._shared(name).writing() as shard:
            shard.update(qe.UpdateOperation.upsert_points(points))

    def delete(self, name, ids) -> None:
        with self._shared(name).writing() as shard:
            shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def retrieve(self, name, ids, with_vectors=False, vector_name=None) -> List[PointRecord]:
        with self._shared(name).reading() as shard:
            records = shard.retrieve(list(ids), with_payload=True, with_vector=_with_vector(with_vectors, vector_name))
        return [_record(r, with_vectors, vector_name) for r in records]

    def count(self, name) -> int:
        return self._shared(name).count()

    def revision(self, name) -> Optional[str]:
        return self._shared(name)._read_version()

    def searches_exhaustively(self, name) -> bool:
        info = self._shared(name).info()
        return info.indexed_vectors_count < info.points_count / 2

    def has_keyword_index(self, name, field) -> bool:
        return field in self._shared(name).info().payload_schema

    def scroll(self, name, with_vectors=False, page_size=1000, restriction=None, vector_name=None):
        query_filter = _edge_filter(restriction)

        def fetch_page(offset):
            with self._shared(name).reading() as shard:
                return shard.scroll(
                    qe.ScrollRequest(
                        offset=offset,
                        limit=page_size,
                        filter=query_filter,
                        with_payload=True,
                        with_vector=_with_vector(with_vectors, vector_name),
                    )
                )

        for records in iter_pages(fetch_page):
            yield [_record(r, with_vectors, vector_name) for r in records]

    def query_batch(self, name, vectors, limit, restriction=None, score_threshold=None, vector_name=None, search_params=None):
        query_filter = _edge_filter(restriction)
        params = qe.SearchParams(**search_params) if search_params else None
        requests = [
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(v, using=vector_name),
                filter=query_filter,
                with_payload=True,
                score_threshold=score_threshold,
                params=params,
            )
            for v in np.asarray(vectors, dtype=np.float32).tolist()
        ]
        with self._shared(name).reading() as shard:
            results = shard.query_batch(qe.QueryBatchRequest(requests))
        return [[Hit(str(p.id), p.score, p.payload or {}) for p in hits] for hits in results]

    def optimize(self, name: str) -> None:
        with self._shared(name).writing() as shard:
            shard.optimize()

    def close(self) -> None:
        with self._lock:
            for shared in self._open.values():
                shared.close()
            self._open.clear()


def _with_vector(with_vectors: bool, vector_name: Optional[str]):
    if not with_vectors:
        return False
    return [vector_name] if vector_name else True


def _record(r, with_vectors: bool, vector_name: Optional[str]) -> PointRecord:
    vector = None
    if with_vectors and r.vector is not None:
        v = r.vector[vector_name] if vector_name else r.vector
        if isinstance(v, dict):  # unnamed default vector returned as {"": [...]}
            v = v.get("")
        vector = np.asarray(v, dtype=np.float32)
    return PointRecord(str(r.id), vector, r.payload or {})


def _edge_filter(restriction: Optional[IdRestriction]):
    if restriction is None:
        return None
    if restriction.field is None:
        return qe.Filter(must=[qe.HasIdCondition(set(restriction.values))])
    return qe.Filter(must=[qe.FieldCondition(restriction.field, match=qe.MatchAny(list(restriction.values)))])


def _edge_config(spec: CollectionSpec) -> qe.EdgeConfig:
    params = qe.EdgeVectorParams(size=spec.dimension, distance=DISTANCES[spec.metric])
    vectors = {spec.vector_name: params} if spec.vector_name else params
    hnsw = None
    if spec.hnsw_config:
        hnsw_params = dict(_HNSW_DEFAULTS)
        hnsw_params.update({k: v for k, v in spec.hnsw_config.items() if k in _HNSW_KEYS and v is not None})
        hnsw = qe.HnswIndexConfig(**hnsw_params)
    optimizers = None
    if spec.optimizers_config:
        optimizers = qe.EdgeOptimizersConfig(**{k: v for k, v in spec.optimizers_config.items() if k in _OPTIMIZER_KEYS})
    return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw, optimizers=optimizers, wal_enabled=False)

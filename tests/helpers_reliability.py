"""The subprocess side of ``tests/test_reliability.py``.

The tests start :func:`child` in a process of a ``forkserver`` context that
preloads this module (so FiftyOne is imported once, not once per crash),
or run ``python helpers_reliability.py '<json spec>'`` by hand. Either
way the process inherits the test session's environment
(``FIFTYONE_DATABASE_URI`` ...): it talks to the same MongoDB and opens the
same embedded Qdrant store as the test. Importing FiftyOne opens no
database connection: each process connects on first use.

Ops:
    build   ``compute_similarity(embeddings=...)`` of the whole dataset
    add     ``add_to_index`` of ``ids[start:stop]`` to an existing run
    remove  ``remove_from_index`` of ``ids[start:stop]``
    writer  adds and removes blocks of ids in a loop (concurrency test)

Faults (``spec["fault"]``) are counted over the store's point writes (one
``upsert``/``delete`` call = one write, numbered from 1) and fire once, at
the first matching engine call at or after write N; the process then kills
itself with SIGKILL:
    after_update  right after the engine applied write N (not yet flushed)
    mid_flush     a timer thread fires ``delay`` s into an engine flush
    after_flush   right after an engine flush returned (before the shard is
                  reloaded/consolidated and ``version`` bumped)
    mid_load      ``delay`` s into a shard (re)load (the consolidation that
                  replays the journals a flush leaves)
    in_create     while a new collection is being created (before it is
                  renamed into place)
    none          no self-kill (the test may SIGKILL us from outside; we
                  report ``W <n>`` when write n starts)
"""

import json
import os
import signal
import sys
import threading
import time

import numpy as np

import fiftyone as fo
import fiftyone.brain as fob

import fiftyone_qdrant  # noqa: F401
import fiftyone_qdrant.embedded  # noqa: F401
import fiftyone_qdrant.similarity  # noqa: F401

_report = None  # a multiprocessing connection, in a forkserver child


def emit(line):
    """Reports progress to the test (pipe) or on stdout."""
    if _report is not None:
        _report.send(line)
    else:
        print(line, flush=True)


def _die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


class _State:
    write = 0  # number of the write in progress (0 = none)
    point = "none"
    at = 0
    delay = 0.0


def install_faults(fault):
    """Hooks the embedded store so that the process dies at ``fault``."""
    from fiftyone_qdrant import embedded

    state = _State()
    state.point = fault.get("point", "none")
    state.at = int(fault.get("write", 0))
    state.delay = float(fault.get("delay", 0.0))

    for name in ("_load",):
        assert hasattr(embedded._SharedShard, name), "embedded._SharedShard.%s is gone: update the fault hooks" % name
    for name in ("upsert", "delete", "_write_json"):
        assert hasattr(embedded.EmbeddedStore, name), "embedded.EmbeddedStore.%s is gone: update the fault hooks" % name

    def armed(point):
        return state.point == point and state.at > 0 and state.write >= state.at

    def die_later(delay):
        threading.Timer(delay, _die).start()

    class Proxy:
        """Wraps the Edge shard so that the engine calls can be hooked."""

        def __init__(self, shard):
            self._shard = shard

        def __getattr__(self, name):
            return getattr(self._shard, name)

        def update(self, operation):
            self._shard.update(operation)
            if armed("after_update"):
                _die()

        def flush(self):
            if armed("mid_flush"):
                die_later(state.delay)
                self._shard.flush()
                time.sleep(state.delay + 30)  # the timer kills us
            self._shard.flush()
            if armed("after_flush"):
                _die()

    orig_load = embedded._SharedShard._load

    def _load(self, *args, **kwargs):
        if armed("mid_load"):
            die_later(state.delay)
            orig_load(self, *args, **kwargs)
            time.sleep(state.delay + 30)
        shard = orig_load(self, *args, **kwargs)
        self._shard = Proxy(shard)
        return self._shard

    embedded._SharedShard._load = _load

    def counted(method):
        def wrapper(self, *args, **kwargs):
            state.write += 1
            emit("W %d" % state.write)
            return method(self, *args, **kwargs)

        return wrapper

    embedded.EmbeddedStore.upsert = counted(embedded.EmbeddedStore.upsert)
    embedded.EmbeddedStore.delete = counted(embedded.EmbeddedStore.delete)

    orig_write_json = embedded.EmbeddedStore._write_json

    def _write_json(self, directory, doc):
        if state.point == "in_create" and os.path.basename(directory).startswith(".tmp-"):
            _die()
        return orig_write_json(self, directory, doc)

    embedded.EmbeddedStore._write_json = _write_json
    return state


# -- the concurrency writer --------------------------------------------------


def concurrency_blocks(op_count, num_blocks, window):
    """Blocks indexed after ``op_count`` writer ops (besides stable ids).

    Initially blocks ``0 .. window-1`` are indexed. Op ``2m`` adds block
    ``(m + window) % num_blocks``, op ``2m + 1`` removes block
    ``m % num_blocks``. So after ``2n`` ops blocks ``n .. n+window-1`` are
    indexed, after ``2m + 1`` ops blocks ``m .. m+window``.
    """
    m, odd = divmod(op_count, 2)
    last = m + window if odd else m + window - 1
    return sorted(b % num_blocks for b in range(m, last + 1))


def run_writer(spec):
    dataset = fo.load_dataset(spec["dataset"])
    with open(spec["ids"]) as f:
        ids = json.load(f)
    X = np.load(spec["embeddings"])
    size, num_blocks, window = spec["block_size"], spec["num_blocks"], spec["window"]
    index = dataset.load_brain_results(spec["brain_key"])
    progress = spec["progress"]
    deadline = time.time() + spec["seconds"]
    # keep writing past the deadline until the reader has checked every
    # kind of query at least once (a slow CI machine may need longer)
    hard_deadline = deadline + 120
    reader_done = spec.get("reader_done")
    emit("START")
    op = 0
    while time.time() < deadline or (
        reader_done and not os.path.exists(reader_done) and time.time() < hard_deadline
    ):
        m, odd = divmod(op, 2)
        block = m % num_blocks if odd else (m + window) % num_blocks
        sl = slice(block * size, (block + 1) * size)
        if odd:
            index.remove_from_index(ids[sl], reload=False)
        else:
            index.add_to_index(X[sl], ids[sl], reload=False)
        op += 1
        tmp = progress + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(op))
        os.replace(tmp, progress)
    emit("OPS %d" % op)


def main(spec):
    if spec.get("fault"):
        install_faults(spec["fault"])

    if spec["op"] == "writer":
        run_writer(spec)
        return

    dataset = fo.load_dataset(spec["dataset"])
    with open(spec["ids"]) as f:
        ids = json.load(f)
    X = np.load(spec["embeddings"])
    start, stop = spec.get("start", 0), spec.get("stop", len(ids))
    emit("START")
    if spec["op"] == "build":
        fob.compute_similarity(
            dataset, embeddings=X, backend="qdrant", brain_key=spec["brain_key"], path=spec["path"], progress=False
        )
    elif spec["op"] == "add":
        index = dataset.load_brain_results(spec["brain_key"])
        index.add_to_index(X[start:stop], ids[start:stop], batch_size=spec.get("batch_size", 1000))
    elif spec["op"] == "remove":
        index = dataset.load_brain_results(spec["brain_key"])
        index.remove_from_index(ids[start:stop])
    else:
        raise ValueError(spec["op"])
    emit("DONE")


def child(spec, conn):
    """The ``multiprocessing`` target: errors go back through the pipe (the
    forkserver's stderr is not the test's)."""
    global _report
    _report = conn
    try:
        main(spec)
    except BaseException:
        import traceback

        emit("ERROR " + traceback.format_exc())
        raise


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

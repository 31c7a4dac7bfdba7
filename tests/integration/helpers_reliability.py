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
write N:
    after_write     this process SIGKILLs itself right after handing write N
                    to the store (inside a build the write is pipelined: it
                    may or may not have been acknowledged)
    service_killed  this process SIGKILLs the store's local Qdrant service
                    right after write N, then carries on: the store starts
                    the service again and the operation completes
    in_create       this process SIGKILLs itself right after the collection
                    was created, before its payload indexes exist
    none            no fault (the test may SIGKILL us from outside; we
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
import fiftyone_qdrant.server  # noqa: F401
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
    done = False


def kill_service(store):
    """SIGKILLs the local Qdrant service behind ``store`` (a ServerStore)."""
    from fiftyone_qdrant.local import read_address

    address = read_address(store._local_root)
    os.kill(address.pid, signal.SIGKILL)
    while read_address(store._local_root) is not None:  # the OS releases its lock
        time.sleep(0.01)


def install_faults(fault):
    """Hooks the store so that the process (or its service) dies at ``fault``."""
    from fiftyone_qdrant.server import ServerStore

    state = _State()
    state.point = fault.get("point", "none")
    state.at = int(fault.get("write", 0))
    for name in ("upsert", "delete", "create_collection"):
        assert hasattr(ServerStore, name), "ServerStore.%s is gone: update the fault hooks" % name

    def counted(method):
        def wrapper(self, *args, **kwargs):
            state.write += 1
            emit("W %d" % state.write)
            result = method(self, *args, **kwargs)
            if state.write == state.at and not state.done:
                state.done = True
                if state.point == "after_write":
                    _die()
                if state.point == "service_killed":
                    kill_service(self)
                    emit("SERVICE KILLED")
            return result

        return wrapper

    ServerStore.upsert = counted(ServerStore.upsert)
    ServerStore.delete = counted(ServerStore.delete)
    orig_create = ServerStore.create_collection

    def create_collection(self, name, spec, metadata, keyword_fields=()):
        if state.point == "in_create":
            orig_create(self, name, spec, metadata, keyword_fields=())
            _die()
        return orig_create(self, name, spec, metadata, keyword_fields=keyword_fields)

    ServerStore.create_collection = create_collection
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

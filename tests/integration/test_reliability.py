"""Reliability: what real use throws at a similarity index.

1. a build, add or removal killed with SIGKILL part way, then re-run;
2. one process writing while another queries the same embedded store;
3. unreachable or misconfigured servers;
4. stateful fuzzing against a numpy model, and fuzzed bad inputs;
5. an API key that must never leak;
6. hostile collection names, brain keys and dataset names.

Crash and concurrency tests run the other side in a subprocess
(``helpers_reliability.py``) that shares this session's MongoDB
(``FIFTYONE_DATABASE_URI``) and the test's embedded store path.
"""

import collections
import http.server
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob

import fiftyone_qdrant as foq
from fiftyone_qdrant import planner, points, records
from fiftyone_qdrant.connection import ConnectionSettings, close_all

from conftest import exact_distances, exact_top_k, make_dataset, random_embeddings

# -- shared helpers -----------------------------------------------------------


def assert_neighbors_exact(got_ids, got_dists, ids, X, query, metric, k, reverse=False, where=""):
    """``got_*`` is the exact top-k of ``query`` over (ids, X), up to ties:
    same distances, and every returned id sits at its true distance."""
    expected_ids, expected_dists = exact_top_k(ids, X, query, metric, k=k, reverse=reverse)
    assert len(got_ids) == len(expected_ids), where
    np.testing.assert_allclose(got_dists, expected_dists, rtol=1e-4, atol=1e-4, err_msg=where)
    if len(ids):
        position = {i: n for n, i in enumerate(ids)}
        missing = [i for i in got_ids if i not in position]
        assert not missing, "%s not among the ids %s" % (missing, where)  # (another state's, in a race)
        true = exact_distances(X, query, metric)[[position[i] for i in got_ids]]
        np.testing.assert_allclose(got_dists, true, rtol=1e-4, atol=1e-4, err_msg=where)
    assert len(set(got_ids)) == len(got_ids), where


def point_ids(index):
    return [r.id for page in index.store.scroll(index.collection_name, page_size=5000) for r in page]


def assert_index_is(index, ids, X, metric="cosine", probes=4, seed=0):
    """The index holds exactly ``ids`` (each once) with vectors ``X``, and
    answers queries exactly."""
    ids = list(ids)
    assert index.total_index_size == len(ids)
    points = point_ids(index)
    assert len(points) == len(set(points)) == len(ids), "duplicate or missing points"
    assert sorted(index.sample_ids) == sorted(ids)
    emb, sids, _ = index.get_embeddings(ids, allow_missing=False)
    assert list(sids) == ids
    np.testing.assert_allclose(emb, X, rtol=1e-4, atol=1e-4)
    rng = np.random.default_rng(seed)
    queries = list(rng.normal(size=(probes, X.shape[1])).astype(np.float32))
    for q in queries:
        got, _, dists = index._kneighbors(query=q, k=10, return_dists=True)
        assert_neighbors_exact(got, dists, ids, X, q, metric, 10)
    # every point is searchable (a corrupt shard can count points that no
    # query finds)
    got, _, dists = index._kneighbors(query=queries[0], k=None, return_dists=True)
    assert len(got) == len(ids) and set(got) == set(ids)
    i = int(rng.integers(len(ids)))
    got, _, dists = index._kneighbors(query=ids[i], k=10, return_dists=True)
    assert_neighbors_exact(got, dists, ids, X, X[i], metric, 10)
    assert got[0] == ids[i]


def _mp_context():
    """A forkserver that imports FiftyOne once; each helper process is a
    fresh fork of it, with no database connection, and this session's
    environment. (The forkserver cannot preload ``helpers_reliability``
    itself: it does not see this directory on its path.)"""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["numpy", "fiftyone", "fiftyone.brain", "fiftyone_qdrant.server", "fiftyone_qdrant.similarity"]
    )
    return ctx


def start_helper(spec):
    """Starts the helper process; returns (process, progress connection)."""
    import helpers_reliability

    ctx = _mp_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=helpers_reliability.child, args=(spec, send), daemon=True)
    proc.start()
    send.close()
    return proc, recv


def drain(recv, lines):
    """Appends the helper's pending progress lines; False once it is gone."""
    try:
        while recv.poll():
            lines.append(recv.recv())
    except (EOFError, OSError):
        return False
    return True


def run_helper(spec, kill_at_write=None, kill_delay=0.0, timeout=180):
    """Runs the helper; with ``kill_at_write`` the test SIGKILLs it
    ``kill_delay`` s after it announced that write. Returns (exit code,
    progress lines)."""
    proc, recv = start_helper(spec)
    lines = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if recv.poll(0.05):
                try:
                    line = recv.recv()
                except EOFError:
                    break
                lines.append(line)
                if kill_at_write is not None and line == "W %d" % kill_at_write:
                    time.sleep(kill_delay)
                    proc.kill()
            elif not proc.is_alive():
                break
        proc.join(max(1, deadline - time.time()))
        assert proc.exitcode is not None, "helper ran past %d s" % timeout
        return proc.exitcode, lines
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()


# -- 1. crash mid-build, mid-add, mid-remove ----------------------------------

CRASH_N, CRASH_DIM = 20000, 64


@pytest.fixture(scope="module")
def crash_data(tmp_path_factory):
    """A 20k-sample dataset and 20k x 64 embeddings, shared by the crash
    tests (each uses its own store and brain key)."""
    folder = tmp_path_factory.mktemp("crash")
    dataset = make_dataset(CRASH_N)
    ids = dataset.values("id")
    X = random_embeddings(CRASH_N, CRASH_DIM, seed=42)
    np.save(folder / "X.npy", X)
    (folder / "ids.json").write_text(json.dumps(ids))
    yield dataset, ids, X, str(folder / "X.npy"), str(folder / "ids.json")
    dataset.delete()


def _spec(crash_data, store_path, op, key, fault=None, **kwargs):
    dataset, _, _, x_path, ids_path = crash_data
    spec = dict(op=op, dataset=dataset.name, brain_key=key, path=store_path, embeddings=x_path, ids=ids_path)
    spec.update(kwargs)
    if fault:
        spec["fault"] = fault
    return spec


def _assert_killed(rc, lines):
    assert rc == -signal.SIGKILL, "the helper was not killed (exit code %s), last lines: %s" % (rc, lines[-5:])
    assert "DONE" not in lines


# (fault point, write number, delay): writes are numbered from 1; a build of
# 20k in batches of 1000 makes 20 writes
BUILD_FAULTS = [
    pytest.param(("after_write", 7, 0.0), id="after-write"),
    pytest.param(("in_create", 0, 0.0), id="in-create", marks=pytest.mark.slow),
    pytest.param(("timed", None, None), id="sigkill-from-outside", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("fault", BUILD_FAULTS)
def test_build_killed_part_way_then_rerun_is_exact(crash_data, store_path, fault):
    dataset, ids, X, _, _ = crash_data
    point, write, delay = fault
    key = "crash_" + point
    if point == "timed":
        seed = int(time.time())
        rng = random.Random(seed)
        write, delay = rng.randint(2, 18), rng.uniform(0.0, 0.08)
        rc, lines = run_helper(
            _spec(crash_data, store_path, "build", key, fault={"point": "none"}), kill_at_write=write, kill_delay=delay
        )
    else:
        seed = None
        rc, lines = run_helper(
            _spec(crash_data, store_path, "build", key, fault={"point": point, "write": write})
        )
    _assert_killed(rc, lines)

    # the crashed build left a run without results (the process died)
    dataset.reload()
    assert key in dataset.list_brain_runs()

    # re-running the same call resumes and completes the index
    index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key=key, path=store_path, progress=False)
    assert dataset.list_brain_runs() == [key] and dataset._doc.brain_methods[key].results is not None
    assert_index_is(index, ids, X)
    view = dataset.sort_by_similarity(ids[123], k=5, brain_key=key)
    assert view.values("id") == exact_top_k(ids, X, X[123], "cosine", k=5)[0], "seed=%s" % seed

    # the re-run resumed the killed build's collection: no orphan, no debris
    assert [i["collection_name"] for i in foq.list_indexes(path=store_path)] == [index.collection_name]
    assert os.listdir(os.path.join(store_path, "collections")) == [index.collection_name]

    # what is on disk, read by a fresh handle
    close_all()
    dataset.reload()
    assert_index_is(dataset.load_brain_results(key, cache=False), ids, X, seed=1)
    dataset.delete_brain_run(key)


@pytest.mark.slow
def test_add_to_index_killed_part_way_then_rerun_is_exact(crash_data, store_path):
    dataset, ids, X, _, _ = crash_data
    half = CRASH_N // 2
    key = "crash_add"
    fault = ("after_write", 4, 0.0)
    fob.compute_similarity(dataset.limit(half), embeddings=X[:half], backend="qdrant", brain_key=key, path=store_path, progress=False)
    close_all()

    point, write, delay = fault
    rc, lines = run_helper(
        _spec(crash_data, store_path, "add", key, start=half, stop=CRASH_N, fault={"point": point, "write": write})
    )
    _assert_killed(rc, lines)

    dataset.reload()
    index = dataset.load_brain_results(key, cache=False)
    # nothing was lost, nothing is corrupt (whatever of the killed add
    # survived is checked by assert_index_is below)
    present = set(index.sample_ids)
    assert set(ids[:half]) <= present <= set(ids)
    index.add_to_index(X[half:], ids[half:])
    assert_index_is(index, ids, X)
    close_all()
    assert_index_is(dataset.load_brain_results(key, cache=False), ids, X, seed=2)
    dataset.delete_brain_run(key)


@pytest.mark.slow
def test_remove_from_index_killed_part_way_then_rerun_is_exact(crash_data, store_path):
    dataset, ids, X, _, _ = crash_data
    key = "crash_remove"
    fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key=key, path=store_path, progress=False)
    close_all()

    gone = slice(2000, 9000)  # 7 deletes of 1000
    rc, lines = run_helper(
        _spec(crash_data, store_path, "remove", key, start=gone.start, stop=gone.stop, fault={"point": "after_write", "write": 4})
    )
    _assert_killed(rc, lines)

    dataset.reload()
    index = dataset.load_brain_results(key, cache=False)
    present = set(index.sample_ids)
    assert set(ids[: gone.start]) | set(ids[gone.stop :]) <= present
    index.remove_from_index(ids[gone])
    keep = np.r_[0 : gone.start, gone.stop : CRASH_N]
    assert_index_is(index, [ids[i] for i in keep], X[keep])
    close_all()
    assert_index_is(dataset.load_brain_results(key, cache=False), [ids[i] for i in keep], X[keep], seed=3)
    dataset.delete_brain_run(key)


def _build_complete(dataset, key) -> bool:
    """Whether the run's results say its build finished: a kill that lands
    after the results were saved leaves a complete run (re-running it is
    then an "already exists" error, as for any finished run)."""
    dataset.reload()
    run_doc = dataset._doc.brain_methods.get(key)
    saved = records.saved_results(run_doc) if run_doc is not None else None
    return saved is not None and saved.get("build_complete") is True


@pytest.mark.slow
def test_repeated_crashes_including_during_recovery(crash_data, store_path):
    """SIGKILL at random moments, again and again (the re-run is killed
    too); whatever survives is never corrupt, and a last re-run is exact."""
    dataset, ids, X, _, _ = crash_data
    key = "crash_repeated"
    seed = int(time.time())
    rng = random.Random(seed)
    position = {i: n for n, i in enumerate(ids)}
    faults = 0
    for attempt in range(3):
        write, delay = rng.randint(1, 20), rng.uniform(0.0, 0.1)
        rc, lines = run_helper(
            _spec(crash_data, store_path, "build", key, fault={"point": "none"}), kill_at_write=write, kill_delay=delay
        )
        assert rc in (-signal.SIGKILL, 0), "seed=%d: %s" % (seed, lines[-3:])
        if rc == 0 or _build_complete(dataset, key):  # finished before the kill: nothing to resume
            break
        faults += 1
        close_all()
        store = ConnectionSettings(path=store_path).open()
        dataset.reload()
        name = (dataset._doc.brain_methods[key].config or {}).get("collection_name")
        if name and store.collection_exists(name):  # else killed before it was created
            records = [r for page in store.scroll(name, with_vectors=True) for r in page]
            sids = [r.payload["sample_id"] for r in records]
            emb = np.array([r.vector * r.payload.get("embedding_norm", 1.0) for r in records]).reshape(len(records), CRASH_DIM)
            assert len(set(sids)) == len(sids) == store.count(name), "seed=%d" % seed
            np.testing.assert_allclose(emb, X[[position[i] for i in sids]], rtol=1e-4, atol=1e-4, err_msg="seed=%d" % seed)
        close_all()

    if not _build_complete(dataset, key):
        fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key=key, path=store_path, progress=False)
    close_all()
    dataset.reload()
    assert_index_is(dataset.load_brain_results(key, cache=False), ids, X, seed=seed)
    dataset.delete_brain_run(key)


def test_service_killed_mid_build_restarts_and_the_build_completes_exactly(crash_data, store_path):
    """SIGKILL of the local Qdrant service in the middle of a build: the
    store starts it again, resends what was not acknowledged, and the build
    completes; the WAL kept every acknowledged write."""
    dataset, ids, X, _, _ = crash_data
    key = "crash_service"
    rc, lines = run_helper(_spec(crash_data, store_path, "build", key, fault={"point": "service_killed", "write": 9}))
    assert rc == 0 and "SERVICE KILLED" in lines and "DONE" in lines, lines[-5:]
    dataset.reload()
    assert_index_is(dataset.load_brain_results(key, cache=False), ids, X, seed=4)
    dataset.delete_brain_run(key)


def test_a_run_killed_while_fiftyone_replaced_its_results_is_resumed(dataset_factory, store_path):
    """FiftyOne replaces a run's results by deleting the old GridFS file,
    writing the new one, then saving the run document: a process killed in
    between leaves a document that names a deleted file. Re-running the
    same call resumes the build (not a bare AttributeError)."""
    dataset = dataset_factory(300)
    ids, X = dataset.values("id"), random_embeddings(300, 16, seed=11)
    fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="k", path=store_path, progress=False)
    dataset._doc.brain_methods["k"].results.delete()  # the file only: the stored document still names it
    close_all()
    dataset.reload()
    assert dataset._doc.brain_methods["k"].results and records.saved_results(dataset._doc.brain_methods["k"]) is None

    index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="k", path=store_path,
                                   progress=False)
    assert_index_is(index, ids, X)
    close_all()
    dataset.reload()
    assert records.saved_results(dataset._doc.brain_methods["k"])["build_complete"] is True
    assert_index_is(dataset.load_brain_results("k", cache=False), ids, X, seed=1)


# -- 2. one process writes while another queries ------------------------------


def _read_progress(path):
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("seconds", [pytest.param(5, id="5s"), pytest.param(20, id="20s", marks=pytest.mark.slow)])
def test_queries_while_another_process_writes(dataset_factory, store_path, tmp_path, seconds, monkeypatch):
    """A writer process adds and removes blocks of 100 points for
    ``seconds`` while this process (like the App server) queries the same
    embedded index. Every answer must be exactly right for one of the
    states the index went through while the answer was computed, also
    answers read in many pages (listing every id)."""
    from helpers_reliability import concurrency_blocks

    monkeypatch.setattr(points, "SCROLL_PAGE_SIZE", 64)  # listing every id: many pages
    monkeypatch.setattr(points, "PAGE_SIZE", 8)  # get_embeddings of 40 ids: 5 lookups

    size, num_blocks, window, stable_n, dim = 100, 16, 6, 100, 32
    dataset = dataset_factory(stable_n + num_blocks * size)
    all_ids = dataset.values("id")
    stable, block_ids = all_ids[:stable_n], all_ids[stable_n:]
    X_all = random_embeddings(len(all_ids), dim, seed=11)
    X_stable, X_blocks = X_all[:stable_n], X_all[stable_n:]
    first = stable + block_ids[: window * size]
    key = "conc"
    fob.compute_similarity(
        dataset.select(first), embeddings=np.vstack([X_stable, X_blocks[: window * size]]),
        backend="qdrant", brain_key=key, path=store_path, progress=False,
    )
    close_all()

    states = {}

    def state(op_count):
        blocks = tuple(concurrency_blocks(op_count, num_blocks, window))
        if blocks not in states:
            rows = np.concatenate([np.arange(b * size, (b + 1) * size) for b in blocks])
            ids = stable + [block_ids[r] for r in rows]
            states[blocks] = (ids, np.vstack([X_stable, X_blocks[rows]]), set(ids))
        return states[blocks]

    np.save(tmp_path / "X.npy", X_blocks)
    (tmp_path / "ids.json").write_text(json.dumps(block_ids))
    progress = str(tmp_path / "progress")
    spec = dict(
        op="writer", dataset=dataset.name, brain_key=key, path=store_path, embeddings=str(tmp_path / "X.npy"),
        ids=str(tmp_path / "ids.json"), block_size=size, num_blocks=num_blocks, window=window,
        seconds=seconds, progress=progress, reader_done=str(tmp_path / "reader_done"),
    )
    dataset.reload()
    index = dataset.load_brain_results(key, cache=False)
    rng = np.random.default_rng(seconds)
    checks = {"knn": 0, "knn_by_id": 0, "count": 0, "ids": 0, "embeddings": 0, "sort_by_similarity": 0}
    points_checked = 0
    proc, recv = start_helper(spec)
    lines = []
    try:
        n = 0
        while proc.is_alive():
            drain(recv, lines)
            if not any(l.startswith("START") for l in lines):
                time.sleep(0.01)
                continue
            kind = list(checks)[n % len(checks)]
            n += 1
            q = rng.normal(size=dim).astype(np.float32)
            c0 = _read_progress(progress)
            if kind == "knn":
                got, _, dists = index._kneighbors(query=q, k=10, return_dists=True)
            elif kind == "knn_by_id":
                i = int(rng.integers(stable_n))
                q = X_stable[i]
                got, _, dists = index._kneighbors(query=stable[i], k=10, return_dists=True)
            elif kind == "count":
                got = index.total_index_size
            elif kind == "ids":
                got = list(index.sample_ids)
            elif kind == "embeddings":
                asked = [all_ids[i] for i in rng.choice(len(all_ids), 40, replace=False)]
                emb, sids, _ = index.get_embeddings(asked)
                got = list(sids)
            else:
                got = dataset.sort_by_similarity(q, k=10, brain_key=key).values("id")
            c1 = _read_progress(progress)

            errors = []
            for c in range(c0, c1 + 2):  # the op after c1 may be done but not yet recorded
                ids, X, id_set = state(c)
                try:
                    if kind in ("knn", "knn_by_id"):
                        assert_neighbors_exact(got, dists, ids, X, q, "cosine", 10)
                    elif kind == "count":
                        assert got == len(ids)
                    elif kind == "ids":
                        assert len(got) == len(set(got)) and set(got) == id_set
                    elif kind == "embeddings":
                        assert got == [i for i in asked if i in id_set]
                        np.testing.assert_allclose(emb, X_all[[all_ids.index(i) for i in got]].reshape(len(got), dim), atol=1e-4)
                    else:
                        assert got == exact_top_k(ids, X, q, "cosine", k=10)[0]
                    break
                except AssertionError as e:
                    detail = ""
                    if isinstance(got, list):
                        blocks_of = lambda i: "s" if i in stable else (block_ids.index(i) // size)
                        want = exact_top_k(ids, X, q, "cosine", k=10)[0] if kind.startswith("knn") or kind == "sort_by_similarity" else []
                        detail = "got blocks %s; state blocks %s; not in state: %s; expected but missing: %s" % (
                            [blocks_of(i) for i in got][:12], concurrency_blocks(c, num_blocks, window),
                            [blocks_of(i) for i in got if i not in id_set], [blocks_of(i) for i in want if i not in got],
                        )
                    errors.append("state %d: %s %s" % (c, detail, str(e)[:300]))
            else:
                raise AssertionError("%s answer valid for no state in %d..%d:\n%s" % (kind, c0, c1 + 1, "\n".join(errors)))
            checks[kind] += 1
            points_checked += len(got) if isinstance(got, list) else 1
            if min(checks.values()) >= 1:
                (tmp_path / "reader_done").touch()
        proc.join(30)
        drain(recv, lines)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()

    assert proc.exitcode == 0, lines[-3:]
    ops = int([l for l in lines if l.startswith("OPS")][0].split()[1])
    assert ops == _read_progress(progress) and ops >= 4
    assert min(checks.values()) >= 1, checks

    # the final state, read by a fresh handle
    close_all()
    ids, X, _ = state(ops)
    assert_index_is(dataset.load_brain_results(key, cache=False), ids, X, seed=seconds)
    print("concurrency %ss: %d writer ops, reader checks %s, %d points checked" % (seconds, ops, checks, points_checked))


# -- 3. unreachable or misconfigured servers ----------------------------------

SENTINEL_KEY = "sentinel-key-%s" % uuid.uuid4().hex


class _FakeQdrantHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request like a Qdrant server refusing the API key,
    echoing the key it got in the body (a hostile or chatty proxy)."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {"status": {"error": "Invalid api-key: %s" % self.headers.get("api-key")}, "time": 0.0}
        ).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_qdrant():
    """start(status) -> port of a local HTTP server answering ``status``."""
    servers = []

    def start(status):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeQdrantHandler)
        server.status = status
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


def closed_port(prefer=(40401, 40403, 40404, 14013, 24010, 34041)):
    """A port nobody listens on; preferably one whose digits contain 401,
    403 or 404 (which must not be read as HTTP statuses)."""
    for port in list(prefer) + [0]:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            return sock.getsockname()[1]
        except OSError:
            continue
        finally:
            sock.close()


def _exception_texts(error):
    """Everything about an exception a user, a log or a tracker may show."""
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    seen = set()
    e = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts += [str(e), repr(e), str(getattr(e, "content", b""))]
        e = e.__cause__ or e.__context__
    return "\n".join(texts)


SERVER_FAULTS = [
    # id, settings(ports), expected message, timeout
    ("closed-port", lambda p: dict(url="http://127.0.0.1:%d" % p["closed"]), r"Request to the Qdrant server at .* failed", 2),
    ("no-answer", lambda p: dict(url="http://127.0.0.1:%d" % p["silent"]), r"Request to the Qdrant server at .* failed.*timed out", 1),
    ("wrong-key-401", lambda p: dict(url="http://127.0.0.1:%d" % p["401"]), r"rejected the API key", 2),
    ("wrong-key-403", lambda p: dict(url="http://127.0.0.1:%d" % p["403"]), r"rejected the API key", 2),
    (
        "wrong-grpc-port-closed",
        lambda p: dict(url="http://127.0.0.1:%d" % p["401"], prefer_grpc=True, grpc_port=p["closed"]),
        r"\(gRPC port %(closed)d\) failed", 2,
    ),
    (
        "grpc-port-is-the-rest-port",
        lambda p: dict(url="http://127.0.0.1:%d" % p["401"], prefer_grpc=True, grpc_port=p["401"]),
        r"\(gRPC port %(401)d\) failed", 2,
    ),
    (
        "grpc-no-answer",
        lambda p: dict(url="http://127.0.0.1:%d" % p["401"], prefer_grpc=True, grpc_port=p["silent"]),
        r"\(gRPC port %(silent)d\) failed.*DEADLINE_EXCEEDED", 1,
    ),
]


@pytest.mark.parametrize("fault", SERVER_FAULTS, ids=[f[0] for f in SERVER_FAULTS])
def test_bad_server_fails_fast_and_clearly_and_registers_nothing(dataset_factory, fake_qdrant, silent_port, fault):
    name, settings, message, timeout = fault
    ports = {"closed": closed_port(), "silent": silent_port, "401": fake_qdrant(401), "403": fake_qdrant(403)}
    dataset = dataset_factory(4)
    start = time.monotonic()
    with pytest.raises(foq.ConnectionFailedError) as info:
        fob.compute_similarity(
            dataset, embeddings=random_embeddings(4, 4), backend="qdrant", brain_key="srv",
            api_key=SENTINEL_KEY, timeout=timeout, **settings(ports)
        )
    elapsed = time.monotonic() - start
    assert elapsed < 3 * timeout + 3, "took %.1f s with timeout=%s" % (elapsed, timeout)
    assert re.search(message % ports, str(info.value), re.S), str(info.value)
    assert SENTINEL_KEY not in _exception_texts(info.value)
    assert dataset.list_brain_runs() == []
    dataset.reload()
    assert dataset.list_brain_runs() == []



@pytest.mark.parametrize("where", ["closed-port", "no-answer", "wrong-key"])
def test_run_whose_server_went_away_fails_fast_and_clearly(dataset_factory, store_path, fake_qdrant, silent_port, where):
    """A run loaded with credentials of a server that is down (or refuses
    the key): every query fails with a clear error within the timeout."""
    dataset = dataset_factory(6)
    X = random_embeddings(6, 4)
    fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="gone", path=store_path, timeout=1)
    port = {"closed-port": closed_port(), "no-answer": silent_port, "wrong-key": fake_qdrant(401)}[where]
    results = dataset.load_brain_results("gone", cache=False, url="http://127.0.0.1:%d" % port, api_key=SENTINEL_KEY)
    for call in (lambda: results._kneighbors(query=X[0], k=2), lambda: results.total_index_size,
                 lambda: results.get_embeddings(dataset.values("id")[:2])):
        start = time.monotonic()
        with pytest.raises(foq.ConnectionFailedError, match="127.0.0.1:%d" % port) as info:
            call()
        assert time.monotonic() - start < 6
        assert SENTINEL_KEY not in _exception_texts(info.value)
    assert dataset.list_brain_runs() == ["gone"]

# -- 5. the API key never leaks -----------------------------------------------


def _all_database_bytes():
    """Every document of every collection of this session's MongoDB."""
    import bson

    db = fo.core.odm.get_db_conn()
    for name in db.list_collection_names():
        for doc in db[name].find({}):
            yield name, bson.BSON.encode(doc)


def _all_store_bytes(root):
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                yield path, fh.read()


def test_api_key_never_leaks(dataset_factory, store_path, caplog, monkeypatch, fake_qdrant):
    """The key given as a kwarg, or from the brain config, appears in no
    run record, collection metadata, log, repr or error."""
    import warnings

    from fiftyone_qdrant.similarity import QdrantSimilarityConfig

    caplog.set_level(logging.DEBUG)
    key = SENTINEL_KEY
    dataset = dataset_factory(12)
    ids = dataset.values("id")
    X = random_embeddings(12, 8, seed=3)
    shown = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="sec", path=store_path, api_key=key)
        monkeypatch.setitem(fob.brain_config.similarity_backends["qdrant"], "api_key", key)
        other = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="sec2", path=store_path)
        assert other.config.api_key == key  # it was used...
        index.add_to_index(X[:3], ids[:3])
        dataset.sort_by_similarity(ids[0], k=3, brain_key="sec")
        dataset.rename_brain_run("sec2", "sec3")
        close_all()
        dataset.reload()
        reloaded = dataset.load_brain_results("sec", cache=False)
        reloaded._kneighbors(query=X[1], k=2)

        server_config = QdrantSimilarityConfig(url="http://127.0.0.1:1", api_key=key, grpc_port=6334)
        settings = server_config.connection_settings()
        shown += [
            repr(index), str(index), repr(index.config), str(index.config), index.config.to_str(),
            json.dumps(index.config.serialize()), repr(other.config), other.config.to_str(),
            repr(server_config), str(server_config), server_config.to_str(), json.dumps(server_config.serialize()),
            repr(settings), str(settings), settings.describe(), repr(reloaded.config),
            str(dataset._doc.brain_methods), str(dataset.get_brain_info("sec")), str(dataset.get_brain_info("sec3")),
            repr(foq.list_indexes(path=store_path)),
        ]
        for status in (401, 403):
            port = fake_qdrant(status)  # echoes the key it gets
            for kwargs in ({}, {"prefer_grpc": True, "grpc_port": closed_port()}):
                with pytest.raises(foq.ConnectionFailedError) as info:
                    fob.compute_similarity(
                        dataset, embeddings=X, backend="qdrant", brain_key="srv", url="http://127.0.0.1:%d" % port,
                        api_key=key, timeout=2, **kwargs
                    )
                shown.append(_exception_texts(info.value))
        with pytest.raises(foq.ConnectionFailedError) as info:
            foq.list_indexes(url="http://127.0.0.1:%d" % closed_port(), api_key=key, timeout=1)
        shown.append(_exception_texts(info.value))

    shown += [r.getMessage() + str(r.args) + str(r.exc_text or "") for r in caplog.records]
    shown += [str(w.message) for w in caught]
    leaks = [text for text in shown if key in text]
    assert not leaks, leaks[0][:2000]
    for collection, raw in _all_database_bytes():
        assert key.encode() not in raw, "API key stored in MongoDB collection '%s'" % collection
    for path, raw in _all_store_bytes(store_path):
        assert key.encode() not in raw, "API key stored in %s" % path
    assert len(caplog.records) > 0 and len(shown) > 20


def test_a_password_inside_the_url_never_leaks(dataset_factory, caplog, fake_qdrant):
    """``http://user:secret@host`` carries a secret like the API key: it
    appears in no error, log, repr, store description or CLI output."""
    from fiftyone_qdrant.connection import ConnectionSettings
    from fiftyone_qdrant.similarity import QdrantSimilarityConfig

    caplog.set_level(logging.DEBUG)
    password = "pw-%s" % uuid.uuid4().hex
    dataset = dataset_factory(4)
    X = random_embeddings(4, 4, seed=1)
    shown = []
    for port, kwargs in ((fake_qdrant(401), {}), (closed_port(), {}), (closed_port(), {"prefer_grpc": True})):
        url = "http://admin:%s@127.0.0.1:%d" % (password, port)
        with pytest.raises(foq.ConnectionFailedError) as info:
            fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="pw", url=url, timeout=2, **kwargs)
        shown.append(_exception_texts(info.value))
        config = QdrantSimilarityConfig(url=url)
        settings = ConnectionSettings(url=url)
        shown += [repr(config), config.to_str(), repr(settings), settings.describe()]
        cli = subprocess.run([sys.executable, "-m", "fiftyone_qdrant.cli", "list", "--url", url, "--timeout", "2"],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode != 0
        shown += [cli.stdout, cli.stderr]
    assert "admin:***@127.0.0.1" in settings.describe()
    shown += [r.getMessage() + str(r.args) + str(r.exc_text or "") for r in caplog.records]
    leaks = [text for text in shown if password in text]
    assert not leaks, leaks[0][:2000]
    dataset.reload()
    assert "pw" not in dataset.list_brain_runs()


# -- 6. hostile collection names, brain keys and dataset names ----------------

HOSTILE_COLLECTION_NAMES = [
    "../escape", "..", ".", "a/b", "/tmp/absolute", "a\\b", ".hidden", "", " ", "a b", "x" * 256,
    "a\x00b", "\u00e9t\u00e9", "-lead", "a..b", "new\nline", 123,
]


def _files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_hostile_collection_names_are_refused_before_anything_is_written(dataset_factory, tmp_path):
    store = str(tmp_path / "deep" / "store")
    dataset = dataset_factory(5)
    X = random_embeddings(5, 4)
    for name in HOSTILE_COLLECTION_NAMES:
        with pytest.raises(foq.ConfigError, match="Invalid collection name"):
            fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="h", path=store, collection_name=name)
        assert dataset.list_brain_runs() == []
        with pytest.raises(foq.ConfigError, match="Invalid collection name"):
            foq.attach_index(dataset, name, path=store)
        assert dataset.list_brain_runs() == []
    assert foq.list_indexes(path=store) == []
    assert [f for f in _files_under(str(tmp_path)) if not f.startswith(os.path.join("deep", "store") + os.sep)] == []

    # the longest valid name works (and leaves nothing behind when deleted)
    index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="h", path=store, collection_name="n" * 255)
    assert index.total_index_size == 5
    index.cleanup()
    dataset.delete_brain_run("h")
    assert os.listdir(os.path.join(store, "collections")) == []


@pytest.mark.parametrize("key", ["../x", "a/b", "a b", "x-y", "", "..", "1abc"])
def test_hostile_brain_keys_are_refused_and_create_nothing(dataset_factory, store_path, key):
    dataset = dataset_factory(3)
    with pytest.raises(ValueError):
        fob.compute_similarity(dataset, embeddings=random_embeddings(3, 4), backend="qdrant", brain_key=key, path=store_path)
    assert dataset.list_brain_runs() == []
    assert foq.list_indexes(path=store_path) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/../../b..c", "\u6570\u636e set", "x" * 300, "..hidden. .."])
def test_hostile_dataset_names_stay_inside_the_store(dataset_factory, store_path, name):
    dataset = dataset_factory(6)
    dataset.name = name + " " + uuid.uuid4().hex[:6]
    ids = dataset.values("id")
    X = random_embeddings(6, 4, seed=2)
    index = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", brain_key="k", path=store_path)
    (listed,) = foq.list_indexes(path=store_path)
    assert listed["collection_name"] == index.collection_name and listed["runs"][0]["dataset_name"] == dataset.name
    collections = os.path.join(store_path, "collections")
    assert os.listdir(collections) == [index.collection_name]
    assert os.path.dirname(os.path.realpath(os.path.join(collections, index.collection_name))) == os.path.realpath(collections)
    assert dataset.sort_by_similarity(ids[1], k=2, brain_key="k").values("id") == exact_top_k(ids, X, X[1], "cosine", k=2)[0]


def test_another_datasets_collection_is_never_overwritten(dataset_factory, store_path):
    a, b = dataset_factory(10), dataset_factory(10)
    a_ids = a.values("id")
    XA, XB = random_embeddings(10, 6, seed=1), random_embeddings(10, 6, seed=2)
    fob.compute_similarity(a, embeddings=XA, backend="qdrant", brain_key="a", path=store_path, collection_name="shared")

    def a_is_intact():
        close_all()
        a.reload()
        assert_index_is(a.load_brain_results("a", cache=False), a_ids, XA)

    # building another dataset's index into it: refused, nothing registered
    for key in ("b", None):
        with pytest.raises(foq.ConfigError, match="already holds the index of dataset '%s'" % re.escape(a.name)):
            fob.compute_similarity(b, embeddings=XB, backend="qdrant", brain_key=key, path=store_path, collection_name="shared")
        assert b.list_brain_runs() == []
    # nor another run of the same dataset (it would overwrite run 'a')
    with pytest.raises(foq.ConfigError, match="already holds"):
        fob.compute_similarity(a, embeddings=XA[::-1].copy(), backend="qdrant", brain_key="a2", path=store_path, collection_name="shared")
    assert a.list_brain_runs() == ["a"]
    a_is_intact()

    # embeddings=False attaches it as it is; deleting that run keeps it
    attached = fob.compute_similarity(b, embeddings=False, backend="qdrant", brain_key="b", path=store_path, collection_name="shared")
    assert attached.total_index_size == 10
    b.delete_brain_run("b")
    a_is_intact()

    # a dataset re-created under a deleted one's name, with the same brain
    # key, gets a collection of its own (default names never reuse one)
    name = a.name
    old_name = fob.compute_similarity(a, embeddings=XA, backend="qdrant", brain_key="d", path=store_path).collection_name
    a.delete()
    c = dataset_factory(10)
    c.name = name
    c_ids = c.values("id")
    new = fob.compute_similarity(c, embeddings=XB, backend="qdrant", brain_key="d", path=store_path)
    assert new.collection_name != old_name
    assert_index_is(new, c_ids, XB)
    assert ConnectionSettings(path=store_path).open().count(old_name) == 10


# -- 4. stateful fuzzing against a numpy model ---------------------------------

FUZZ_N, FUZZ_DIM = 40, 5
FUZZ_STATS = collections.Counter()

BAD_INPUTS = [
    "nan", "inf", "huge", "zeros-cosine", "rows-without-ids", "ids-without-rows", "empty-1d", "wrong-dim",
    "3d", "ragged", "complex", "strings-as-embeddings", "duplicate-ids", "other-dataset-ids", "not-an-id",
    "short-hex-id", "int-ids", "none-ids", "scalar-id", "label-ids-on-sample-index", "object-array",
    "query-nan", "query-wrong-dim", "query-empty-array", "query-empty-list", "query-int", "query-dict",
    "query-other-dataset-id", "query-bad-id", "k-zero", "k-negative", "k-string", "k-float", "k-bool",
    "bad-aggregation", "remove-nothing", "remove-bad-id", "remove-missing-strict", "get-bad-id", "get-int",
    "get-missing-strict", "radius-nan", "radius-string", "reverse-on-distance-metric",
]


def _vectors(seeds, dim=FUZZ_DIM):
    return np.array([np.random.default_rng(s).normal(size=dim) for s in seeds], dtype=np.float32).reshape(len(seeds), dim)


def bad_input_call(kind, index, metric, created, seed, sid, other_ids):
    """A call of the index API with bad input ``kind`` (see BAD_INPUTS),
    which must raise a QdrantBackendError and change nothing."""
    X = _vectors([seed, seed + 1])
    calls = {
        "nan": lambda: index.add_to_index(np.where(np.arange(FUZZ_DIM) == 2, np.nan, X), sid),
        "inf": lambda: index.add_to_index(np.where(np.arange(FUZZ_DIM) == 0, -np.inf, X), sid),
        "huge": lambda: index.add_to_index(X * np.float32(1e30), sid),
        "zeros-cosine": lambda: index.add_to_index(np.zeros_like(X), sid) if metric == "cosine" else index._kneighbors(query=X[0], k=0),
        "rows-without-ids": lambda: index.add_to_index(X, []),
        "ids-without-rows": lambda: index.add_to_index(np.empty((0, FUZZ_DIM)), sid),
        "empty-1d": lambda: index.add_to_index(np.array([]), []),
        "wrong-dim": lambda: index.add_to_index(_vectors([seed], FUZZ_DIM + 1), sid[:1]) if created else index.add_to_index(X[:, :0], sid),
        "3d": lambda: index.add_to_index(X[None], sid),
        "ragged": lambda: index.add_to_index([list(X[0]), list(X[1][:2])], sid),
        "complex": lambda: index.add_to_index(X + 1j, sid),
        "strings-as-embeddings": lambda: index.add_to_index([["a"] * FUZZ_DIM] * 2, sid),
        "duplicate-ids": lambda: index.add_to_index(X, [sid[0], sid[0]]),
        "other-dataset-ids": lambda: index.add_to_index(X, other_ids[:2]),
        "not-an-id": lambda: index.add_to_index(X, ["not-an-id", sid[1]]),
        "short-hex-id": lambda: index.add_to_index(X, [sid[0][:23], sid[1]]),
        "int-ids": lambda: index.add_to_index(X, [1, 2]),
        "none-ids": lambda: index.add_to_index(X, None),
        "scalar-id": lambda: index.add_to_index(X[:1], 7),
        "label-ids-on-sample-index": lambda: index.add_to_index(X, sid, label_ids=sid),
        "object-array": lambda: index.add_to_index(np.array([X[0], None], dtype=object), sid),
        "query-nan": lambda: index._kneighbors(query=np.full(FUZZ_DIM, np.nan), k=3),
        "query-wrong-dim": lambda: index._kneighbors(query=np.ones(FUZZ_DIM + 2), k=3),
        "query-empty-array": lambda: index._kneighbors(query=np.empty((0, FUZZ_DIM)), k=3),
        "query-empty-list": lambda: index._kneighbors(query=[], k=3),
        "query-int": lambda: index._kneighbors(query=5, k=3),
        "query-dict": lambda: index._kneighbors(query={"a": 1}, k=3),
        "query-other-dataset-id": lambda: index._kneighbors(query=other_ids[0], k=3),
        "query-bad-id": lambda: index._kneighbors(query="zz" * 12, k=3),
        "k-zero": lambda: index._kneighbors(query=X[0], k=0),
        "k-negative": lambda: index._kneighbors(query=X[0], k=-2),
        "k-string": lambda: index._kneighbors(query=X[0], k="3"),
        "k-float": lambda: index._kneighbors(query=X[0], k=2.5),
        "k-bool": lambda: index._kneighbors(query=X[0], k=True),
        "bad-aggregation": lambda: index._kneighbors(query=X, k=2, aggregation="max"),
        "remove-nothing": lambda: index.remove_from_index(),
        "remove-bad-id": lambda: index.remove_from_index(["bad"]),
        "remove-missing-strict": lambda: index.remove_from_index(other_ids[:1], allow_missing=False),
        "get-bad-id": lambda: index.get_embeddings(["x" * 24]),
        "get-int": lambda: index.get_embeddings(5),
        "get-missing-strict": lambda: index.get_embeddings(other_ids[:1], allow_missing=False),
        "radius-nan": lambda: index._radius_neighbors(query=X[0], thresh=float("nan")),
        "radius-string": lambda: index._radius_neighbors(query=X[0], thresh="far"),
        "reverse-on-distance-metric": lambda: index._kneighbors(query=X[0], k=2, reverse=True) if metric in ("euclidean", "manhattan") else index._kneighbors(query=X[0], k=None, aggregation=7),
    }
    return calls[kind]


def test_fuzzed_bad_inputs_raise_clear_errors_and_change_nothing(dataset_factory, store_path):
    """Every kind of bad input on every metric (and on an index with no
    collection yet), then hypothesis-drawn ones: each raises a ValueError
    subclass of fiftyone_qdrant.errors with a message, and the index is
    unchanged (ids, vectors, neighbours)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    dataset, other = dataset_factory(FUZZ_N), dataset_factory(3, seed=1)
    ids, other_ids = dataset.values("id"), other.values("id")
    X = _vectors(range(FUZZ_N))
    indexes = {
        metric: fob.compute_similarity(
            dataset, embeddings=X, backend="qdrant", brain_key=None, metric=metric, path=store_path,
            collection_name="bad-%s" % metric,
        )
        for metric in ("cosine", "dotproduct", "euclidean", "manhattan")
    }
    indexes["not created"] = fob.compute_similarity(
        dataset, embeddings=False, backend="qdrant", brain_key=None, path=store_path, collection_name="bad-empty"
    )
    snapshot = {}
    for name, index in indexes.items():
        created = name != "not created"
        snapshot[name] = (index.total_index_size, index.get_embeddings() if created else None)
    stats = collections.Counter()

    def check(name, kind, seed, row):
        index = indexes[name]
        created = name != "not created"
        call = bad_input_call(kind, index, index.config.metric, created, seed, [ids[row], ids[(row + 1) % FUZZ_N]], other_ids)
        with pytest.raises(foq.QdrantBackendError) as info:
            call()
        assert isinstance(info.value, ValueError) and len(str(info.value)) > 10, (name, kind)
        size, before = snapshot[name]
        assert index.total_index_size == size and index.store.collection_exists(index.collection_name) == created
        if created:
            emb, sids, _ = index.get_embeddings()
            assert list(sids) == list(before[1])
            np.testing.assert_array_equal(emb, before[0])
        stats[kind] += 1

    for name in indexes:  # every kind, deterministically
        for kind in BAD_INPUTS:
            check(name, kind, seed=7, row=3)

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(sorted(indexes)), kind=st.sampled_from(BAD_INPUTS), seed=st.integers(0, 2**20),
           row=st.integers(0, FUZZ_N - 1))
    def fuzz(name, kind, seed, row):
        check(name, kind, seed, row)

    fuzz()
    # and the indexes still answer exactly
    for metric in ("cosine", "dotproduct", "euclidean", "manhattan"):
        got, _, dists = indexes[metric]._kneighbors(query=X[5], k=7, return_dists=True)
        assert_neighbors_exact(got, dists, ids, X, X[5], metric, 7)
    print("bad inputs: %d calls, %d kinds x %d indexes" % (sum(stats.values()), len(stats), len(indexes)))


@pytest.mark.parametrize("examples", [pytest.param(30, id="30"), pytest.param(80, id="80", marks=pytest.mark.slow)])
def test_stateful_fuzzing_against_numpy(dataset_factory, store_path, monkeypatch, examples):
    """Random add / overwrite / remove / query / get_embeddings / use_view
    sequences and bad inputs; after every step the index and a dict of
    numpy vectors agree exactly (top-k checked against numpy)."""
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

    from fiftyone_qdrant.similarity import QdrantSimilarityIndex

    dataset = dataset_factory(FUZZ_N)
    other = dataset_factory(3, seed=1)
    ids, other_ids = dataset.values("id"), other.values("id")
    names = iter(range(10**6))
    # tiny filter bound: views take the oversampling paths as well
    monkeypatch.setattr(planner, "MAX_FILTER_IDS", 3)
    monkeypatch.setattr(QdrantSimilarityIndex, "_max_filter_ids", staticmethod(lambda total: 3), raising=False)

    rows = st.lists(st.integers(0, FUZZ_N - 1), unique=True, max_size=8)
    seeds = st.integers(0, 2**20)

    class IndexMachine(RuleBasedStateMachine):
        @initialize(
            metric=st.sampled_from(["cosine", "dotproduct", "euclidean", "manhattan"]),
            first=st.one_of(st.just(0), st.integers(1, FUZZ_N)), seed=seeds,
        )
        def build(self, metric, first, seed):
            """An index of the first ``first`` samples (none: not created yet)."""
            self.metric = metric
            self.view = None  # ids of the current view, or None
            X = _vectors(range(seed, seed + first))
            self.model = dict(zip(ids[:first], X))  # id -> vector
            self.created = first > 0
            self.index = fob.compute_similarity(
                dataset.limit(first), embeddings=X if first else False, backend="qdrant", brain_key=None,
                metric=metric, path=store_path, collection_name="fuzz-%d" % next(names),
            )
            FUZZ_STATS["build"] += 1

        def teardown(self):
            if getattr(self, "index", None) is not None and self.created:
                self.index.cleanup()

        # -- the model --------------------------------------------------

        def visible(self):
            keys = [i for i in ids if i in self.model and (self.view is None or i in self.view)]
            return keys, np.array([self.model[i] for i in keys], dtype=np.float32).reshape(len(keys), FUZZ_DIM)

        def check_neighbors(self, query_vector, got_ids, got_dists, k, reverse=False):
            keys, X = self.visible()
            assert_neighbors_exact(got_ids, got_dists, keys, X, query_vector, self.metric, k, reverse=reverse)
            FUZZ_STATS["points checked"] += len(got_ids)

        # -- rules --------------------------------------------------------

        @rule(chosen=rows, seeds=st.lists(seeds, min_size=8, max_size=8), overwrite=st.booleans(),
              copy_existing=st.booleans(), batch_size=st.integers(1, 5))
        def add(self, chosen, seeds, overwrite, copy_existing, batch_size):
            V = _vectors(seeds[: len(chosen)])
            if copy_existing and self.model and len(chosen):
                V[0] = next(iter(self.model.values()))  # exact ties
            self.index.add_to_index(V, [ids[r] for r in chosen], overwrite=overwrite, batch_size=batch_size)
            for r, v in zip(chosen, V):
                if overwrite or ids[r] not in self.model:
                    self.model[ids[r]] = v
            self.created = self.created or bool(chosen)
            FUZZ_STATS["add"] += 1

        @rule(chosen=rows)
        def remove(self, chosen):
            if not self.created:
                with pytest.raises(foq.CollectionNotFoundError):
                    self.index.remove_from_index([ids[r] for r in chosen])
                return
            self.index.remove_from_index([ids[r] for r in chosen])
            for r in chosen:
                self.model.pop(ids[r], None)
            FUZZ_STATS["remove"] += 1

        @rule(seed=seeds, k=st.one_of(st.none(), st.integers(1, 12)), reverse=st.booleans())
        def query_vector(self, seed, k, reverse):
            q = _vectors([seed])[0]
            if not self.created:
                with pytest.raises(foq.CollectionNotFoundError):
                    self.index._kneighbors(query=q, k=k)
                return
            if reverse and self.metric not in ("cosine", "dotproduct"):
                return
            got, _, dists = self.index._kneighbors(query=q, k=k, reverse=reverse, return_dists=True)
            self.check_neighbors(q, got, dists, k, reverse)
            FUZZ_STATS["query by vector"] += 1

        @rule(chosen=st.lists(st.integers(0, FUZZ_N - 1), unique=True, min_size=1, max_size=3), k=st.integers(1, 8))
        def query_ids(self, chosen, k):
            query = [ids[r] for r in chosen]
            if not self.created or not all(i in self.model for i in query):
                with pytest.raises((foq.UnknownIdError, foq.CollectionNotFoundError)):
                    self.index._kneighbors(query=query if len(query) > 1 else query[0], k=k)
                return
            got, _, dists = self.index._kneighbors(query=query if len(query) > 1 else query[0], k=k, return_dists=True)
            if len(query) == 1:
                self.check_neighbors(self.model[query[0]], got, dists, k)
            else:
                for q, g, d in zip(query, got, dists):
                    self.check_neighbors(self.model[q], g, d, k)
            FUZZ_STATS["query by ids"] += 1

        @rule(chosen=rows, strict=st.booleans())
        def get_embeddings(self, chosen, strict):
            asked = [ids[r] for r in chosen]
            if strict and any(i not in self.model for i in asked):
                with pytest.raises(foq.UnknownIdError):
                    self.index.get_embeddings(asked, allow_missing=False)
                return
            emb, sids, lids = self.index.get_embeddings(asked, allow_missing=not strict)
            expected = [i for i in asked if i in self.model]
            assert list(sids) == expected and lids is None
            if expected:
                np.testing.assert_allclose(emb, np.array([self.model[i] for i in expected]), rtol=1e-4, atol=1e-4)
            else:
                assert emb.size == 0
            FUZZ_STATS["get_embeddings"] += 1
            FUZZ_STATS["points checked"] += len(expected)

        @rule(chosen=st.one_of(st.none(), st.lists(st.integers(0, FUZZ_N - 1), unique=True, max_size=FUZZ_N)))
        def use_view(self, chosen):
            if chosen is None:
                self.index.clear_view()
                self.view = None
            else:
                view_ids = [ids[r] for r in chosen]
                self.index.use_view(dataset.select(view_ids))
                self.view = set(view_ids)
            FUZZ_STATS["use_view"] += 1

        @rule(kind=st.sampled_from(BAD_INPUTS), seed=seeds, row=st.integers(0, FUZZ_N - 1))
        def bad_input(self, kind, seed, row):
            call = bad_input_call(kind, self.index, self.metric, self.created, seed, [ids[row], ids[(row + 1) % FUZZ_N]], other_ids)
            with pytest.raises(foq.QdrantBackendError) as info:
                call()
            assert isinstance(info.value, ValueError) and str(info.value)
            FUZZ_STATS["bad input: " + kind] += 1
            FUZZ_STATS["bad inputs"] += 1

        # -- after every step -----------------------------------------------

        @invariant()
        def index_matches_model(self):
            if not getattr(self, "created", False):
                return
            assert self.index.total_index_size == len(self.model)
            emb, sids, _ = self.index.get_embeddings()
            assert len(sids) == len(set(sids)) and set(sids) == set(self.model)
            expected = np.array([self.model[i] for i in sids], dtype=np.float32).reshape(len(sids), FUZZ_DIM)
            np.testing.assert_allclose(emb.reshape(len(sids), FUZZ_DIM), expected, rtol=1e-4, atol=1e-4)
            if self.view is not None:
                assert self.index.index_size == len(self.view & set(self.model))
            FUZZ_STATS["invariant checks"] += 1
            FUZZ_STATS["points checked"] += len(sids)

    FUZZ_STATS.clear()
    run_state_machine_as_test(
        IndexMachine,
        settings=settings(
            max_examples=examples, stateful_step_count=25, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    steps = sum(v for k, v in FUZZ_STATS.items() if not k.startswith(("bad input:", "points", "invariant")))
    assert FUZZ_STATS["bad inputs"] > 0 and FUZZ_STATS["query by vector"] + FUZZ_STATS["query by ids"] > 0
    print("fuzz: %d operations (%d bad inputs, %d kinds), %d invariant checks, %d points checked" % (
        steps, FUZZ_STATS["bad inputs"], len([k for k in FUZZ_STATS if k.startswith("bad input:")]),
        FUZZ_STATS["invariant checks"], FUZZ_STATS["points checked"]))

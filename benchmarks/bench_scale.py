#!/usr/bin/env python
"""Scale benchmark: the Qdrant backend (embedded default) vs raw qdrant-edge
vs FiftyOne's sklearn backend, at N = 10k, 100k (default) and 1M (--million).

    python benchmarks/bench_scale.py                      # 10k + 100k
    python benchmarks/bench_scale.py --sizes 10000        # quick
    python benchmarks/bench_scale.py --million            # 10k + 100k + 1M
    python benchmarks/bench_scale.py --sizes 1000000 --no-sklearn

For each N (512-d float32, random unit vectors):

* build throughput (vectors/s): ``fob.compute_similarity(dataset,
  embeddings=X, backend="qdrant", path=<tmp>)`` vs raw qdrant-edge upserts of
  the same vectors into the same engine config (batches of 1000, with a
  ``sample_id`` payload, one flush at the end) vs ``backend="sklearn"``;
* query latency p50/p95 by sample id, k=10, on the whole dataset, a 10% view
  and a 1% view (``match`` on an indexed random integer field):
  ``view.sort_by_similarity(id, k=10, brain_key=...)`` (the user API: it
  includes FiftyOne's stage/view machinery), the backend's own
  ``_kneighbors`` under ``use_view`` (what the backend controls), a raw
  qdrant-edge query (retrieve the query vector + query with the same k and,
  for views, a precomputed id filter) and sklearn;
* ``get_embeddings`` for 10k ids (vectors/s) vs raw ``retrieve``;
* recall@10 vs numpy exact search on a clustered set (exact search, and at
  the ``--optimize-sizes`` after ``index.optimize()`` builds HNSW);
* peak RSS of this process per phase (psutil, sampled every 10 ms).

Plus a side measurement of qdrant-client local mode (``QdrantClient(path=)``)
at ``--client-local-size`` (default 10k): build and query.

Prints one table and writes JSON to ``benchmarks/results/<date>_<host>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))
from scratch import make_scratch_dir, start_private_mongod  # noqa: E402

# FiftyOne reads these at import time
_TMP = make_scratch_dir("fiftyone-qdrant-bench-")  # removed at exit, after mongod stops
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
os.environ["FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH"] = os.path.join(_TMP, "qdrant-default")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

DIM = 512
K = 10
BATCH = 1000
GET_EMB_IDS = 10000


# -- memory sampling ----------------------------------------------------------


class RSSSampler:
    """Samples this process's RSS in a thread; ``phase()`` records the peak
    (and the rise over the phase's starting RSS) for a named phase."""

    def __init__(self, interval=0.01):
        self.proc = psutil.Process()
        self.interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.phases = {}

    def _run(self):
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            if rss > self._peak:
                self._peak = rss
            time.sleep(self.interval)

    def rss(self):
        return self.proc.memory_info().rss

    @contextmanager
    def phase(self, name):
        start = self.rss()
        self._peak = start
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            peak = max(self._peak, self.rss())
            self.phases[name] = {
                "seconds": round(elapsed, 3),
                "rss_start_mb": round(start / 2**20, 1),
                "rss_peak_mb": round(peak / 2**20, 1),
                "rss_rise_mb": round((peak - start) / 2**20, 1),
            }

    def stop(self):
        self._stop.set()


# -- data ---------------------------------------------------------------------


def random_unit(n, dim, seed):
    rng = np.random.default_rng(seed)
    X = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100000):
        block = rng.standard_normal((min(100000, n - s), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        X[s : s + len(block)] = block
    return X


def clustered_unit(n, dim, seed, num_clusters=None, spread=0.35):
    """Unit vectors around ``num_clusters`` random centres (what image
    embeddings look like far more than uniform noise does)."""
    rng = np.random.default_rng(seed)
    num_clusters = num_clusters or max(10, n // 1000)
    centres = rng.standard_normal((num_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100000):
        m = min(100000, n - s)
        assign = rng.integers(0, num_clusters, m)
        block = centres[assign] + rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        X[s : s + m] = block
    return X, centres


def exact_top_k(X, queries, k):
    """Indexes of the k largest dot products per query (unit vectors:
    cosine), computed in blocks."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_inds = np.zeros((len(queries), k), dtype=np.int64)
    for s in range(0, len(X), 200000):
        scores = queries @ X[s : s + 200000].T
        cand = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        cand_scores = np.take_along_axis(scores, cand, axis=1)
        all_scores = np.concatenate([best_scores, cand_scores], axis=1)
        all_inds = np.concatenate([best_inds, cand + s], axis=1)
        top = np.argsort(-all_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_inds = np.take_along_axis(all_inds, top, axis=1)
    return best_inds


def _vec(v):
    """An Edge record's default vector (unnamed vectors may come as {"": v})."""
    return v[""] if isinstance(v, dict) else v


def percentiles(times):
    arr = np.asarray(times) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "n": len(arr),
    }


def timed_calls(fn, args_list, warmup=2):
    """p50/p95 over ``args_list`` after ``warmup`` untimed calls; ``first_ms``
    is the first (cold) call, which pays one-off costs such as caches."""
    first = None
    for a in args_list[:warmup]:
        t0 = time.perf_counter()
        fn(a)
        if first is None:
            first = time.perf_counter() - t0
    times = []
    for a in args_list:
        t0 = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t0)
    out = percentiles(times)
    out["first_ms"] = round(first * 1000.0, 3) if first is not None else None
    return out


def interleaved_calls(fns, args_list, warmup=2):
    """Like :func:`timed_calls` for several functions at once, alternating
    them call by call (rotating who goes first), so that all of them see
    the same machine load."""
    firsts = {}
    for name, fn in fns.items():
        for a in args_list[:warmup]:
            t0 = time.perf_counter()
            fn(a)
            firsts.setdefault(name, time.perf_counter() - t0)
    names = list(fns)
    times = {name: [] for name in names}
    for j, a in enumerate(args_list):
        for name in names[j % len(names):] + names[: j % len(names)]:
            t0 = time.perf_counter()
            fns[name](a)
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name in names:
        out[name] = percentiles(times[name])
        out[name]["first_ms"] = round(firsts.get(name, 0.0) * 1000.0, 3)
    return out


# -- the benchmark ------------------------------------------------------------


def make_dataset(fo, n, seed):
    """``n`` samples with an indexed random integer field ``bucket`` in
    [0, 100), added in batches through the public API."""
    rng = np.random.default_rng(seed)
    buckets = rng.integers(0, 100, n)
    dataset = fo.Dataset("bench-%d-%d" % (n, os.getpid()))
    for s in range(0, n, 10000):
        dataset.add_samples(
            [
                fo.Sample(filepath="/tmp/bench/img%08d.jpg" % i, bucket=int(buckets[i]))
                for i in range(s, min(n, s + 10000))
            ],
            progress=False,
        )
    dataset.create_index("bucket")
    return dataset


def raw_edge_build(shard_path, point_ids, sample_ids, X):
    import qdrant_edge as qe

    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=X.shape[1], distance=qe.Distance.Cosine), wal_enabled=False
    )
    shard = qe.EdgeShard.create(shard_path, config)
    shard.update(qe.UpdateOperation.create_field_index("sample_id", qe.PayloadSchemaType.Keyword))
    for s in range(0, len(X), BATCH):
        rows = X[s : s + BATCH].tolist()
        points = [
            qe.Point(pid, vec, {"sample_id": sid})
            for pid, vec, sid in zip(point_ids[s : s + BATCH], rows, sample_ids[s : s + BATCH])
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    shard.flush()
    return shard


def client_local_side(n, seed, num_queries):
    """qdrant-client local mode (pure Python) at ``n``: build and query."""
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    X = random_unit(n, DIM, seed)
    path = tempfile.mkdtemp(prefix="client-local-", dir=_TMP)
    client = QdrantClient(path=path)
    client.create_collection("bench", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
    import uuid

    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        client.upsert(
            "bench",
            points=qm.Batch(
                ids=ids[s : s + BATCH],
                vectors=X[s : s + BATCH].tolist(),
                payloads=[{"sample_id": "%024x" % (i + 1)} for i in range(s, min(n, s + BATCH))],
            ),
        )
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    qs = [X[i].tolist() for i in rng.integers(0, n, num_queries)]
    latency = timed_calls(lambda q: client.query_points("bench", query=q, limit=K, with_payload=True), qs)
    client.close()
    t0 = time.perf_counter()
    client = QdrantClient(path=path)
    client.count("bench")
    reopen_s = time.perf_counter() - t0
    client.close()
    shutil.rmtree(path, ignore_errors=True)
    return {
        "n": n,
        "build_vps": round(n / build_s, 1),
        "build_s": round(build_s, 3),
        "query": latency,
        "reopen_s": round(reopen_s, 3),
    }


def bench_size(n, args, sampler):
    import fiftyone as fo
    import fiftyone.brain as fob
    import qdrant_edge as qe
    from fiftyone import ViewField as F

    from fiftyone_qdrant import points as idmap

    out = {"n": n, "dim": DIM, "k": K}
    phases = {}
    sampler.phases = phases
    print("\n== N = %d ==" % n, flush=True)

    with sampler.phase("create_dataset"):
        dataset = make_dataset(fo, n, args.seed)
        ids = np.array(dataset.values("id"))
    print("dataset: %.1f s" % phases["create_dataset"]["seconds"], flush=True)

    with sampler.phase("generate_vectors"):
        X = random_unit(n, DIM, args.seed)
    store_path = os.path.join(_TMP, "store-%d" % n)

    # -- builds ---------------------------------------------------------------
    # qdrant and raw builds alternate (best of --build-repeats each), so that
    # both see the same machine load
    point_ids = idmap.to_point_ids(ids.tolist())
    sample_ids = ids.tolist()
    reps = args.build_repeats if args.build_repeats else (3 if n <= 100000 else 1)
    build_s = {"qdrant": [], "raw": []}
    # vectors of norm 2 (not unit): the backend then stores each norm in the
    # payload; measured up to 100k (it needs a second copy of the vectors)
    X_scaled = 2 * X if n <= 100000 else None
    if X_scaled is not None:
        build_s["qdrant_nonunit"] = []
    results = raw = None
    for r in range(reps):
        last = r == reps - 1
        order = list(build_s)
        for which in order[r % len(order) :] + order[: r % len(order)]:
            gc.collect()
            phase = "build_%s%s" % (which if which != "raw" else "raw_edge", "" if last else "_rep%d" % r)
            if which == "qdrant_nonunit":
                with sampler.phase(phase):
                    scaled = fob.compute_similarity(
                        dataset, embeddings=X_scaled, backend="qdrant", path=store_path, brain_key="qs", progress=False
                    )
                scaled.cleanup()
                dataset.delete_brain_run("qs")
            elif which == "qdrant":
                with sampler.phase(phase):
                    results = fob.compute_similarity(
                        dataset, embeddings=X, backend="qdrant", path=store_path, brain_key="qd", progress=False
                    )
                if not last:
                    results.cleanup()
                    dataset.delete_brain_run("qd")
            else:
                raw_path = os.path.join(_TMP, "raw-%d-%d" % (n, r))
                with sampler.phase(phase):
                    raw = raw_edge_build(raw_path, point_ids, sample_ids, X)
                if not last:
                    raw.close()
                    shutil.rmtree(raw_path, ignore_errors=True)
            build_s[which].append(phases[phase]["seconds"])
    out["build_qdrant_vps"] = n / min(build_s["qdrant"])
    out["build_raw_vps"] = n / min(build_s["raw"])
    out["build_seconds_all_repeats"] = build_s
    print(
        "qdrant build: %.0f vec/s, raw edge build: %.0f vec/s (best of %d; all: %s)"
        % (out["build_qdrant_vps"], out["build_raw_vps"], reps, build_s),
        flush=True,
    )
    if X_scaled is not None:
        out["build_qdrant_nonunit_vps"] = n / min(build_s["qdrant_nonunit"])
        print("qdrant build, vectors of norm 2: %.0f vec/s" % out["build_qdrant_nonunit_vps"], flush=True)
        del X_scaled

    # the package alone: add_to_index() into an empty index (what
    # compute_similarity() does after FiftyOne has listed the dataset's ids)
    empty = fob.compute_similarity(
        dataset, embeddings=False, backend="qdrant", path=store_path, brain_key="qd_add", progress=False
    )
    gc.collect()
    with sampler.phase("add_to_index_qdrant"):
        empty.add_to_index(X, ids)
    out["add_to_index_qdrant_vps"] = n / phases["add_to_index_qdrant"]["seconds"]
    empty.cleanup()
    dataset.delete_brain_run("qd_add")
    del empty
    print("qdrant add_to_index alone: %.0f vec/s" % out["add_to_index_qdrant_vps"], flush=True)

    sk = None
    if not args.no_sklearn and (n < 1000000 or args.sklearn_at_1m):
        gc.collect()
        with sampler.phase("build_sklearn"):
            sk = fob.compute_similarity(dataset, embeddings=X, backend="sklearn", brain_key="sk", progress=False)
        out["build_sklearn_vps"] = n / phases["build_sklearn"]["seconds"]
        print("sklearn build: %.0f vec/s" % out["build_sklearn_vps"], flush=True)

    # -- queries --------------------------------------------------------------
    rng = np.random.default_rng(args.seed + 7)
    query_inds = [int(i) for i in rng.integers(0, n, args.queries)]
    views = {
        "all": dataset,
        "10pct": dataset.match(F("bucket") < 10),
        "1pct": dataset.match(F("bucket") < 1),
    }
    out["queries"] = {}
    for vname, view in views.items():
        view_ids = np.array(view.values("id")) if vname != "all" else ids
        raw_filter = None
        if vname != "all":
            raw_filter = qe.Filter(must=[qe.HasIdCondition(set(idmap.to_point_ids(view_ids.tolist())))])

        def api_query(i, view=view):
            return view.sort_by_similarity(ids[i], k=K, brain_key="qd")

        def backend_query(i, view=view, vname=vname):
            if vname == "all":
                return results._kneighbors(query=ids[i], k=K)
            with results.use_view(view):
                return results._kneighbors(query=ids[i], k=K)

        def raw_query(i, raw_filter=raw_filter):
            rec = raw.retrieve([point_ids[i]], with_payload=False, with_vector=True)[0]
            return raw.query(
                qe.QueryRequest(limit=K, query=qe.Query.Nearest(_vec(rec.vector)), filter=raw_filter, with_payload=True)
            )

        with sampler.phase("query_%s" % vname):
            q = interleaved_calls(
                {"qdrant_api": api_query, "qdrant_backend": backend_query, "raw_edge": raw_query}, query_inds
            )
        q["view_size"] = int(len(view_ids))
        if sk is not None:
            with sampler.phase("query_%s_sklearn" % vname):
                q["sklearn_api"] = timed_calls(
                    lambda i: view.sort_by_similarity(ids[i], k=K, brain_key="sk"),
                    query_inds[: max(10, args.queries // 2)],
                )
        out["queries"][vname] = q
        print(
            "query %-5s (%7d ids): api %.2f ms, backend %.2f ms, raw %.2f ms%s"
            % (
                vname, q["view_size"], q["qdrant_api"]["p50_ms"], q["qdrant_backend"]["p50_ms"],
                q["raw_edge"]["p50_ms"], (", sklearn %.2f ms" % q["sklearn_api"]["p50_ms"]) if sk is not None else "",
            ),
            flush=True,
        )

    # -- get_embeddings ---------------------------------------------------------
    m = min(GET_EMB_IDS, n)
    emb_ids = [ids[i] for i in rng.choice(n, m, replace=False)]
    with sampler.phase("get_embeddings_qdrant"):
        E, _, _ = results.get_embeddings(sample_ids=emb_ids)
    assert E.shape == (m, DIM)
    out["get_embeddings_qdrant_vps"] = m / phases["get_embeddings_qdrant"]["seconds"]
    emb_pids = idmap.to_point_ids(emb_ids)
    with sampler.phase("get_embeddings_raw"):
        recs = raw.retrieve(emb_pids, with_payload=True, with_vector=True)
        E2 = np.array([_vec(r.vector) for r in recs], dtype=np.float32)
    out["get_embeddings_raw_vps"] = m / phases["get_embeddings_raw"]["seconds"]
    if sk is not None:
        with sampler.phase("get_embeddings_sklearn"):
            sk.get_embeddings(sample_ids=emb_ids)
        out["get_embeddings_sklearn_vps"] = m / phases["get_embeddings_sklearn"]["seconds"]
    del E, E2, recs

    # free the random set before the clustered one
    raw.close()
    shutil.rmtree(raw_path, ignore_errors=True)
    if sk is not None:
        dataset.delete_brain_run("sk")
        del sk
    results.cleanup()
    dataset.delete_brain_run("qd")
    del results, X, raw
    gc.collect()

    # -- recall on clustered data -------------------------------------------
    with sampler.phase("generate_clustered"):
        Xc, centres = clustered_unit(n, DIM, args.seed + 1)
        crng = np.random.default_rng(args.seed + 2)
        Q = centres[crng.integers(0, len(centres), args.recall_queries)] + crng.standard_normal(
            (args.recall_queries, DIM), dtype=np.float32
        ) * (0.35 / np.sqrt(DIM))
        Q = (Q / np.linalg.norm(Q, axis=1, keepdims=True)).astype(np.float32)
        truth = exact_top_k(Xc, Q, K)
    with sampler.phase("build_qdrant_clustered"):
        rc = fob.compute_similarity(
            dataset, embeddings=Xc, backend="qdrant", path=store_path, brain_key="qdc", progress=False
        )
    out["build_qdrant_clustered_vps"] = n / phases["build_qdrant_clustered"]["seconds"]
    del Xc
    gc.collect()

    def recall():
        got, _ = rc._kneighbors(query=Q, k=K, aggregation=None)
        hits = [len(set(g) & set(ids[t].tolist())) for g, t in zip(got, truth)]
        return sum(hits) / float(K * len(Q))

    qlist = list(Q)
    out["recall_exact"] = recall()
    out["clustered_query_exact"] = timed_calls(lambda v: rc._kneighbors(query=v, k=K), qlist)
    print("recall@10 exact: %.4f" % out["recall_exact"], flush=True)
    if n in args.optimize_sizes:
        with sampler.phase("optimize_hnsw"):
            rc.optimize()
        out["optimize_s"] = phases["optimize_hnsw"]["seconds"]
        out["recall_hnsw"] = recall()
        out["clustered_query_hnsw"] = timed_calls(lambda v: rc._kneighbors(query=v, k=K), qlist)
        rc.config.search_params = {"hnsw_ef": 128}
        out["recall_hnsw_ef128"] = recall()
        out["clustered_query_hnsw_ef128"] = timed_calls(lambda v: rc._kneighbors(query=v, k=K), qlist)
        rc.config.search_params = None
        print(
            "optimize: %.1f s; recall@10 hnsw: %.4f (ef=128: %.4f)"
            % (out["optimize_s"], out["recall_hnsw"], out["recall_hnsw_ef128"]),
            flush=True,
        )
    rc.cleanup()
    dataset.delete_brain_run("qdc")
    del rc
    dataset.delete()
    shutil.rmtree(store_path, ignore_errors=True)
    gc.collect()

    out["phases"] = phases
    out["peak_rss_mb"] = max(p["rss_peak_mb"] for p in phases.values())
    # ratios measured in this run
    out["ratio_build_vs_raw"] = out["build_qdrant_vps"] / out["build_raw_vps"]
    out["ratio_add_to_index_vs_raw"] = out["add_to_index_qdrant_vps"] / out["build_raw_vps"]
    qa = out["queries"]
    out["ratio_query_backend_vs_raw"] = qa["all"]["qdrant_backend"]["p50_ms"] / qa["all"]["raw_edge"]["p50_ms"]
    out["ratio_query_api_vs_raw"] = qa["all"]["qdrant_api"]["p50_ms"] / qa["all"]["raw_edge"]["p50_ms"]
    out["ratio_1pct_vs_all_api"] = qa["1pct"]["qdrant_api"]["p50_ms"] / qa["all"]["qdrant_api"]["p50_ms"]
    out["ratio_1pct_vs_all_backend"] = qa["1pct"]["qdrant_backend"]["p50_ms"] / qa["all"]["qdrant_backend"]["p50_ms"]
    return out


def machine_info():
    import importlib.metadata as md

    import fiftyone

    def version(dist):
        try:
            return md.version(dist)
        except Exception:  # pragma: no cover
            return "?"

    # (qdrant_client is not imported here: its ~2 s import is part of what
    # a first build may pay)
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import fiftyone_qdrant

    return {
        "package_path": os.path.dirname(fiftyone_qdrant.__file__),
        "load_average_at_start": list(os.getloadavg()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "fiftyone": fiftyone.__version__,
        "fiftyone_brain": version("fiftyone-brain"),
        "qdrant_client": version("qdrant-client"),
        "qdrant_edge_py": version("qdrant-edge-py"),
        "scikit_learn": version("scikit-learn"),
        "numpy": np.__version__,
    }


def fmt(v, spec="%.0f"):
    return "-" if v is None else spec % v


def print_table(runs, side):
    rows = []
    hdr = (
        "N", "build qdrant", "build raw", "build sklearn", "b/raw", "b/raw norm 2",
        "q all api", "q all backend", "q all raw", "q all sk",
        "q 10% api", "q 10% sk", "q 1% api", "q 1% backend", "q 1% raw", "q 1% sk",
        "getemb 10k", "getemb raw", "recall exact", "recall hnsw", "peak RSS",
    )
    for r in runs:
        q = r["queries"]
        g = lambda v, key: q[v].get(key, {}).get("p50_ms")  # noqa: E731
        rows.append((
            "%d" % r["n"],
            fmt(r["build_qdrant_vps"]), fmt(r["build_raw_vps"]), fmt(r.get("build_sklearn_vps")),
            "%.2f" % r["ratio_build_vs_raw"],
            fmt(r["build_qdrant_nonunit_vps"] / r["build_raw_vps"] if "build_qdrant_nonunit_vps" in r else None, "%.2f"),
            fmt(g("all", "qdrant_api"), "%.2f"), fmt(g("all", "qdrant_backend"), "%.2f"),
            fmt(g("all", "raw_edge"), "%.2f"), fmt(g("all", "sklearn_api"), "%.2f"),
            fmt(g("10pct", "qdrant_api"), "%.2f"), fmt(g("10pct", "sklearn_api"), "%.2f"),
            fmt(g("1pct", "qdrant_api"), "%.2f"), fmt(g("1pct", "qdrant_backend"), "%.2f"),
            fmt(g("1pct", "raw_edge"), "%.2f"), fmt(g("1pct", "sklearn_api"), "%.2f"),
            fmt(r["get_embeddings_qdrant_vps"]), fmt(r["get_embeddings_raw_vps"]),
            "%.3f" % r["recall_exact"], fmt(r.get("recall_hnsw"), "%.3f"),
            "%.0f MB" % r["peak_rss_mb"],
        ))
    print("\nBuild in vectors/s; query p50 in ms (k=10, by sample id); get_embeddings in vectors/s")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    print(" | ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths)))
    if side:
        print(
            "\nqdrant-client local mode, N=%d: build %.0f vec/s, query p50 %.2f ms (p95 %.2f), reopen %.2f s"
            % (side["n"], side["build_vps"], side["query"]["p50_ms"], side["query"]["p95_ms"], side["reopen_s"])
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N (default 10000,100000)")
    parser.add_argument("--million", action="store_true", help="also run N = 1,000,000")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per view and backend")
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument(
        "--optimize-sizes", default="10000,100000", help="sizes at which to build HNSW (optimize) and re-measure recall"
    )
    parser.add_argument("--client-local-size", type=int, default=10000, help="0 to skip the qdrant-client local side run")
    parser.add_argument("--no-sklearn", action="store_true", help="skip the sklearn backend")
    parser.add_argument(
        "--sklearn-at-1m", action="store_true",
        help="also run sklearn from 1M (~10 min to build, several GB more memory); skipped by default",
    )
    parser.add_argument(
        "--build-repeats", type=int, default=0, help="alternating qdrant/raw builds, best kept (default 3, 1 from 1M)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.million and 1000000 not in sizes:
        sizes.append(1000000)
    args.optimize_sizes = {int(s) for s in args.optimize_sizes.split(",") if s}

    start_private_mongod(os.path.join(_TMP, "db"))  # FiftyOne's service could share another's
    sampler = RSSSampler()
    started = time.time()
    report = {"machine": machine_info(), "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()}}
    report["started"] = datetime.datetime.now().isoformat(timespec="seconds")
    print("machine: %(cpu)s, %(cores)d cores, %(ram_gib)s GiB" % report["machine"], flush=True)

    runs = []
    try:
        for n in sizes:
            runs.append(bench_size(n, args, sampler))
        side = None
        if args.client_local_size:
            sampler.phases = {}
            side = client_local_side(args.client_local_size, args.seed, min(args.queries, 30))
    finally:
        sampler.stop()
    report["runs"] = runs
    report["qdrant_client_local"] = side
    report["total_seconds"] = round(time.time() - started, 1)
    report["load_average_at_end"] = list(os.getloadavg())

    print_table(runs, side)
    os.makedirs(args.out, exist_ok=True)
    name = "%s_%s%s.json" % (
        datetime.datetime.now().strftime("%Y-%m-%d"),
        socket.gethostname().split(".")[0],
        ("_" + args.tag) if args.tag else "",
    )
    path = os.path.join(args.out, name)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=float)
    print("\nwrote %s (%.0f s total)" % (path, report["total_seconds"]))
    return 0  # exit handlers close the stores, stop mongod, then delete _TMP


if __name__ == "__main__":
    sys.exit(main())

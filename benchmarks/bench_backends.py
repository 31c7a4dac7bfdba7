#!/usr/bin/env python
"""Every backend a FiftyOne user could pick, side by side in one run:

* ``qdrant``: this package (the embedded store's local Qdrant service);
* ``lancedb``: FiftyOne's LanceDB backend (``backend="lancedb"``, a local dir);
* ``milvus``: FiftyOne's Milvus backend on Milvus Lite (``uri=<file>.db``);
* ``sklearn``: FiftyOne's default backend (in memory; skipped from 1M);
* ``faiss`` (``IndexFlatIP``) and ``numpy`` (one matrix product): the CPU's
  limit for exact search, without FiftyOne.

For each N (random unit 512-d vectors, cosine; a dataset of N samples with
an indexed random ``bucket`` field):

* **build**: ``fob.compute_similarity(dataset, embeddings=X, backend=...)``
  (faiss: ``add``; numpy: a contiguous copy), the engines alternating
  round by round, median of ``--repeats``;
* **by vector**: the backend's own ``_kneighbors(query=v, k=10)`` (faiss
  ``search``, numpy ``argpartition``), one query vector at a time;
* **by id, whole / 10% view / new 10% view**:
  ``view.sort_by_similarity(id, k=10)``, the user's call (includes
  FiftyOne's view machinery), on the dataset, on one 10% view sorted again
  and again (``match(F("bucket") < 10)``, as the App does), and on a 10%
  view the index has not seen before (a bucket range that changes every
  call, up to 91 of them);
* **recall@10** of the by-vector answers against numpy's exact ones.

Queries are timed interleaved call by call, rotating who goes first, so
every engine sees the same load: read the ratios. Our index stays exact
here (``FIFTYONE_QDRANT_INDEX_QUIET_S`` very large: no background HNSW), as
faiss flat and numpy are; LanceDB's and Milvus's FiftyOne backends search
exactly too (no index is built).

    python benchmarks/bench_backends.py                       # 10k and 100k
    python benchmarks/bench_backends.py --sizes 10000,100000,1000000

Prints one table per N (engines as columns), writes
``benchmarks/results/<date>_backends[_<tag>].json`` and a plot of build
throughput and query latency against N (``..._backends[_<tag>].png``).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FIFTYONE_QDRANT_INDEX_QUIET_S", "1e9")  # exact, like faiss flat and numpy
import bench_scale as bs  # noqa: E402  (sets the FiftyOne environment)

import numpy as np  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)  # pymilvus's ORM API, used by FiftyOne's backend

ENGINES = ("qdrant", "lancedb", "milvus", "sklearn", "faiss", "numpy")
FIFTYONE_ENGINES = ("qdrant", "lancedb", "milvus", "sklearn")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# -- engines ------------------------------------------------------------------


def fiftyone_kwargs(engine: str, root: str, rep: int) -> dict:
    where = os.path.join(root, "%s-%d" % (engine, rep))
    if engine == "qdrant":  # one store, as a user has (its service starts once: bench_service.py times that)
        return {"path": os.path.join(root, "qdrant")}
    if engine == "lancedb":
        return {"uri": where}
    if engine == "milvus":
        os.makedirs(where, exist_ok=True)
        return {"uri": os.path.join(where, "milvus.db"), "metric": "cosine"}
    return {}


def build(engine: str, dataset, X: np.ndarray, root: str, rep: int):
    """The built index (a FiftyOne index, or the numpy/faiss object) and
    the seconds the build took."""
    import fiftyone.brain as fob

    t0 = time.perf_counter()
    if engine in FIFTYONE_ENGINES:
        index = fob.compute_similarity(
            dataset, embeddings=X, backend=engine, brain_key="%s%d" % (engine, rep), progress=False,
            **fiftyone_kwargs(engine, root, rep),
        )
    elif engine == "faiss":
        import faiss

        index = faiss.IndexFlatIP(X.shape[1])
        index.add(X)
    else:
        index = np.ascontiguousarray(X)
    return index, time.perf_counter() - t0


def drop(engine: str, dataset, index, rep: int) -> None:
    if engine in FIFTYONE_ENGINES:
        try:
            index.cleanup()
        finally:
            dataset.delete_brain_run("%s%d" % (engine, rep))


def by_vector(engine: str, index, ids):
    """``fn(vector) -> top-10 sample ids``."""
    if engine in FIFTYONE_ENGINES:
        return lambda v: index._kneighbors(query=v, k=bs.K)[0]
    if engine == "faiss":
        return lambda v: [ids[i] for i in index.search(v[np.newaxis, :], bs.K)[1][0]]

    def top(v):
        scores = index @ v
        best = np.argpartition(-scores, bs.K)[: bs.K]
        return [ids[i] for i in best[np.argsort(-scores[best])]]

    return top


# -- one size -------------------------------------------------------------------


def bench_size(n: int, args, engines):
    import fiftyone as fo  # noqa: F401
    from fiftyone import ViewField as F

    print("\n== N = %d: %s" % (n, ", ".join(engines)), flush=True)
    dataset = bs.make_dataset(fo, n, seed=n)
    ids = dataset.values("id")
    X = bs.random_unit(n, bs.DIM, seed=n)
    root = os.path.join(bs._TMP, "backends-%d" % n)
    os.makedirs(root, exist_ok=True)

    # builds, alternating engines round by round (rotating who goes first)
    times = {e: [] for e in engines}
    indexes = {}
    for rep in range(args.repeats):
        order = list(engines[rep % len(engines):]) + list(engines[: rep % len(engines)])
        for engine in order:
            index, seconds = build(engine, dataset, X, root, rep)
            times[engine].append(seconds)
            print("  build %-8s %7.2f s" % (engine, seconds), flush=True)
            if rep == args.repeats - 1:
                indexes[engine] = index
            else:
                drop(engine, dataset, index, rep)
    out = {"n": n, "engines": {}}
    for engine in engines:
        median = float(np.median(times[engine]))
        out["engines"][engine] = {"build_s": round(median, 3), "build_vectors_per_s": round(n / median),
                                  "build_runs_s": [round(t, 3) for t in times[engine]]}

    # top-10 by vector, interleaved, and recall against numpy's exact answers
    rng = np.random.default_rng(7)
    queries = bs.random_unit(args.queries, bs.DIM, seed=n + 1)
    fns = {e: by_vector(e, indexes[e], ids) for e in engines}
    timed = bs.interleaved_calls(fns, list(queries))
    exact = bs.exact_top_k(X, queries, bs.K)
    for engine in engines:
        answers = [fns[engine](q) for q in queries]
        recall = np.mean([len(set(a) & {ids[i] for i in e}) / bs.K for a, e in zip(answers, exact)])
        out["engines"][engine]["by_vector"] = timed[engine]
        out["engines"][engine]["recall_at_10"] = round(float(recall), 4)

    # by id through sort_by_similarity: the whole dataset; one 10% view
    # sorted again and again (as in the App); a new 10% view every call
    query_ids = [ids[i] for i in rng.integers(0, n, args.queries)]
    fo_engines = [e for e in engines if e in FIFTYONE_ENGINES]
    key = {e: "%s%d" % (e, args.repeats - 1) for e in fo_engines}
    seen_view = dataset.match(F("bucket") < 10)
    new_views = {e: itertools.count() for e in fo_engines}  # bucket in [s, s + 10), s in 0..90: 91 views

    def new_view(engine: str):
        start = next(new_views[engine]) % 91
        return dataset.match((F("bucket") >= start) & (F("bucket") < start + 10))

    views = {"whole": lambda e: dataset, "view_10pct": lambda e: seen_view, "view_10pct_new": new_view}
    for name, view_of in views.items():
        fns = {
            e: (lambda q, e=e, view_of=view_of: view_of(e).sort_by_similarity(q, k=bs.K, brain_key=key[e]))
            for e in fo_engines
        }
        timed = bs.interleaved_calls(fns, query_ids)
        for engine in fo_engines:
            out["engines"][engine]["by_id_" + name] = timed[engine]
    for engine in engines:
        drop(engine, dataset, indexes[engine], args.repeats - 1)
    dataset.delete()
    shutil.rmtree(root, ignore_errors=True)
    return out


# -- output -----------------------------------------------------------------------


def _cell(row: dict, key: str, sub: str = None, spec: str = "%.1f") -> str:
    value = row.get(key)
    if isinstance(value, dict):
        value = value.get(sub or "p50_ms")
    return "-" if value is None else spec % value


def print_table(result: dict, engines) -> None:
    rows = [
        ("build, s", lambda r: _cell(r, "build_s", spec="%.2f")),
        ("build, vectors/s", lambda r: _cell(r, "build_vectors_per_s", spec="%.0f")),
        ("by vector, p50 ms", lambda r: _cell(r, "by_vector")),
        ("by vector, p95 ms", lambda r: _cell(r, "by_vector", "p95_ms")),
        ("recall@10", lambda r: _cell(r, "recall_at_10", spec="%.3f")),
        ("by id, whole, p50 ms", lambda r: _cell(r, "by_id_whole")),
        ("by id, 10% view, p50 ms", lambda r: _cell(r, "by_id_view_10pct")),
        ("by id, new 10% view, p50 ms", lambda r: _cell(r, "by_id_view_10pct_new")),
    ]
    print("\nN = %d (medians; read the ratios)" % result["n"])
    print("| | " + " | ".join(engines) + " |")
    print("|---|" + "---|" * len(engines))
    for label, cell in rows:
        print("| %s | %s |" % (label, " | ".join(cell(result["engines"][e]) for e in engines)))


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (build_ax, query_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    engines = sorted({e for r in results for e in r["engines"]}, key=ENGINES.index)
    for engine in engines:
        points = [(r["n"], r["engines"][engine]) for r in results if engine in r["engines"]]
        sizes = [n for n, _ in points]
        if engine != "numpy":  # nothing to build: a copy
            build_ax.plot(sizes, [e["build_vectors_per_s"] for _, e in points], marker="o", label=engine)
        query_ax.plot(sizes, [e["by_vector"]["p50_ms"] for _, e in points], marker="o", label=engine)
    build_ax.set(xscale="log", yscale="log", xlabel="N (512-d vectors)", ylabel="build, vectors/s",
                 title="Build throughput (higher is better)")
    query_ax.set(xscale="log", yscale="log", xlabel="N (512-d vectors)", ylabel="top-10 by vector, p50 ms",
                 title="Query latency (lower is better)")
    for ax in (build_ax, query_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def peer_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("lancedb", "pymilvus", "milvus-lite", "faiss-cpu"):
        try:
            out[dist.replace("-", "_")] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeats", type=int, default=3, help="builds per engine (median kept)")
    parser.add_argument("--queries", type=int, default=30, help="timed queries per measure")
    parser.add_argument("--sklearn-max", type=int, default=100000, help="largest N for sklearn")
    parser.add_argument("--tag", default="")
    parser.add_argument("--plot-with", default="",
                        help="JSON files of earlier runs (e.g. a 1M run) whose sizes join this run's plot")
    args = parser.parse_args(argv)

    bs.start_private_mongod(os.path.join(bs._TMP, "db"))
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        engines = [e for e in args.engines.split(",") if e != "sklearn" or n <= args.sklearn_max]
        results.append(bench_size(n, args, engines))
        print_table(results[-1], engines)

    stem = "%s_backends%s" % (datetime.date.today().isoformat(), "_" + args.tag if args.tag else "")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, stem + ".json"), "w") as f:
        json.dump({"machine": dict(bs.machine_info(), **peer_versions()), "args": vars(args), "results": results},
                  f, indent=1)
    plotted = list(results)
    for path in filter(None, args.plot_with.split(",")):
        with open(path) as f:
            plotted += [r for r in json.load(f)["results"] if r["n"] not in {p["n"] for p in plotted}]
    plot(sorted(plotted, key=lambda r: r["n"]), os.path.join(RESULTS_DIR, stem + ".png"))
    print("\nwrote %s.json and %s.png in %s" % (stem, stem, RESULTS_DIR))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""cProfile of the package's hot paths at one size:

* ``fob.compute_similarity(dataset, embeddings=X, backend="qdrant")``
* ``view.sort_by_similarity(id, k=10)`` on the whole dataset, a 10% view and
  a 1% view (``match`` on an indexed random field)

    python benchmarks/profile_paths.py --n 100000 [--top 25]

Prints the top functions by cumulative and by own time for each phase (the
text kept in ``benchmarks/results/profiles/``) and writes
``<--out>/profile_<n>_<phase>.prof`` (default in the temp directory; open
with snakeviz or ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_scale as bs  # noqa: E402  (sets the FiftyOne environment)

import numpy as np  # noqa: E402


def show(prof, title, top, out_dir, tag):
    path = os.path.join(out_dir, "profile_%s.prof" % tag)
    prof.dump_stats(path)
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(top)
        text = s.getvalue()
        body = text[text.find("   ncalls") :]
        print("\n### %s (by %s)\n%s" % (title, key, body))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--phases", default="build,all,10pct,1pct")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "fiftyone-qdrant-profiles"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    phases = args.phases.split(",")

    bs.start_private_mongod(os.path.join(bs._TMP, "db"))
    import fiftyone as fo
    import fiftyone.brain as fob
    from fiftyone import ViewField as F

    n = args.n
    dataset = bs.make_dataset(fo, n, 0)
    ids = dataset.values("id")
    X = bs.random_unit(n, bs.DIM, 0)
    store = os.path.join(bs._TMP, "store")

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    if "build" in phases:
        prof.enable()
    results = fob.compute_similarity(dataset, embeddings=X, backend="qdrant", path=store, brain_key="qd", progress=False)
    prof.disable()
    print("build: %.2f s (%.0f vec/s, profiled)" % (time.perf_counter() - t0, n / (time.perf_counter() - t0)))
    if "build" in phases:
        show(prof, "compute_similarity N=%d" % n, args.top, args.out, "%d_build" % n)

    rng = np.random.default_rng(1)
    qids = [ids[i] for i in rng.integers(0, n, args.queries)]
    views = {"all": dataset, "10pct": dataset.match(F("bucket") < 10), "1pct": dataset.match(F("bucket") < 1)}
    for name, view in views.items():
        if name not in phases:
            continue
        view.sort_by_similarity(qids[0], k=10, brain_key="qd")  # warm caches
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for q in qids:
            view.sort_by_similarity(q, k=10, brain_key="qd")
        prof.disable()
        print("\nsort_by_similarity %s: %.2f ms/query (profiled)" % (name, (time.perf_counter() - t0) * 1000 / len(qids)))
        show(prof, "sort_by_similarity %s N=%d x%d" % (name, n, len(qids)), args.top, args.out, "%d_query_%s" % (n, name))

    results.cleanup()
    dataset.delete()
    return 0  # exit handlers close the stores, stop mongod, then delete bs._TMP


if __name__ == "__main__":
    sys.exit(main())

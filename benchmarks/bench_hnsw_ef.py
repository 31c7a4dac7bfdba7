#!/usr/bin/env python
"""What ``hnsw_ef`` buys at one N: top-10 p50 and recall@10 for a sweep of
``hnsw_ef`` and for exact search, on one collection after ``optimize()``,
queries interleaved across the settings.

Clustered vectors (``bench_10m.clustered``: 1,000 clusters, as embeddings of
a curated dataset) are what real embeddings look like; random unit vectors
are the hard case for HNSW at 512-d. Through ``ServerStore`` (the local
service), float32, cosine, the index's default HNSW graph (m 16,
ef_construct 100).

    python benchmarks/bench_hnsw_ef.py                          # 100k, clustered and random
    python benchmarks/bench_hnsw_ef.py --n 1000000 --data clustered
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("FIFTYONE_QDRANT_INDEX_QUIET_S", "1e9")  # the index is built by optimize(), then timed
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import bench_10m  # noqa: E402
import bench_two_services  # noqa: E402

DIM, QUERIES, K = 512, 100, 10


def data(kind: str, n: int):
    """Vectors and query vectors (queries near points for random data)."""
    rng = np.random.default_rng(3)
    if kind == "clustered":
        middle = bench_10m.centers(DIM)
        return bench_10m.clustered(rng, n, middle), bench_10m.clustered(np.random.default_rng(9), QUERIES, middle)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, QUERIES)] + 0.1 * rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


def sweep(kind: str, n: int, efs) -> None:
    from fiftyone_qdrant import points
    from fiftyone_qdrant.server import ServerStore

    x, queries = data(kind, n)
    sample_ids = np.array(["%024x" % i for i in range(n)], dtype="<U24")
    point_ids = points.to_point_ids(sample_ids)
    row_of = {point_id: row for row, point_id in enumerate(point_ids)}
    store = ServerStore.local(tempfile.mkdtemp(prefix="bench-hnsw-ef-"))
    bench_two_services.upload(store, "c", point_ids, x, sample_ids)
    t0 = time.perf_counter()
    store.optimize("c")
    print("\n%s, N = %d: HNSW built in %.0f s" % (kind, n, time.perf_counter() - t0))
    truth = [set(np.argsort(-(x @ q))[:K].tolist()) for q in queries]
    settings = ["exact"] + list(efs)
    latency = {s: [] for s in settings}
    recall = {s: [] for s in settings}
    for repeat in range(2):
        for query, exact_top in zip(queries, truth):
            for setting in settings:
                params = {"exact": True} if setting == "exact" else {"hnsw_ef": setting}
                t0 = time.perf_counter()
                hits = store.query_batch("c", query[None, :], K, search_params=params)[0]
                latency[setting].append((time.perf_counter() - t0) * 1000)
                if repeat == 0:
                    recall[setting].append(len(exact_top & {row_of[str(h.id)] for h in hits}) / K)
    print("| hnsw_ef | top-10 p50, ms | recall@10 |\n|---|---:|---:|")
    for setting in settings:
        print("| %s | %.2f | %.3f |" % (setting, statistics.median(latency[setting]), np.mean(recall[setting])))
    store.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--data", default="clustered,random")
    parser.add_argument("--ef", default="64,128,256,512,1024")
    args = parser.parse_args(argv)
    for kind in args.data.split(","):
        sweep(kind, args.n, [int(e) for e in args.ef.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())

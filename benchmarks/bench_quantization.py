"""Approximate search on the local Qdrant service: recall@10, latency and
memory of float32 HNSW vs int8 (scalar) vs binary quantization, on clustered
and on random unit vectors.

Through the engine path our index uses (qdrant-client -> the local service
-> qdrant-edge), with the service's own background indexing: each
collection is uploaded, then the benchmark waits until the indexer has
swapped in its HNSW copy (the time reported as "index"). Queries are
interleaved across the collections (round robin), so machine noise hits
them alike; recall@10 is against numpy's exact top 10. Each collection has
a store (and service process) of its own, so RSS is that process's
resident memory after the queries.

    python benchmarks/bench_quantization.py --n 50000 --dim 512

Prints a table and writes ``benchmarks/results/<date>_quantization_<n>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time

import numpy as np
from qdrant_client import models as qm

from fiftyone_qdrant import local
from fiftyone_qdrant.server import ServerStore
from fiftyone_qdrant.similarity import QUANTIZED_SEARCH_DEFAULTS

CONFIGS = {
    "float32": None,
    "int8": qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, always_ram=True)),
    "binary": qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True)),
}


def unit_vectors(n: int, dim: int, clustered: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if clustered:  # 1000 clusters, as embeddings of a curated dataset group
        centers = rng.standard_normal((1000, dim)).astype(np.float32)
        x = centers[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_mb(pid: int) -> float:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_indexed(client, name: str, n: int, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if client.get_collection(name).indexed_vectors_count >= n:
            return time.perf_counter() - start
        time.sleep(0.5)
    raise RuntimeError("collection %s not indexed after %.0f s" % (name, timeout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--configs", default="float32,int8,binary")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--indexing-threshold-kb", type=int, default=None,
                        help="Qdrant's indexing_threshold; default the engine's (10000 KB)")
    args = parser.parse_args()

    os.environ["FIFTYONE_QDRANT_INDEX_QUIET_S"] = "1"
    stores, roots = {}, []
    rng = np.random.default_rng(1)
    cases = [("clustered", c) for c in args.configs.split(",")] + [("random", "float32")]
    data = {kind: unit_vectors(args.n, args.dim, kind == "clustered") for kind in ("clustered", "random")}
    rows = {}
    try:
        for kind, config in cases:
            name = "%s-%s" % (kind, config)
            roots.append(tempfile.mkdtemp(prefix="bench-quant-"))
            stores[name] = ServerStore.local(roots[-1])
            client = stores[name].client
            client.create_collection(name, vectors_config=qm.VectorParams(size=args.dim, distance=qm.Distance.COSINE),
                                     quantization_config=CONFIGS[config],
                                     optimizers_config=qm.OptimizersConfigDiff(
                                         indexing_threshold=args.indexing_threshold_kb))
            start = time.perf_counter()
            client.upload_collection(name, vectors=data[kind], ids=list(range(args.n)), batch_size=256)
            upload_s = time.perf_counter() - start
            index_s = wait_indexed(client, name, args.n, args.timeout)
            rows[name] = {"data": kind, "quantization": config, "upload_s": upload_s, "index_s": index_s,
                          "latency_ms": [], "recall": [], "rss_mb": None}
            print("%s: uploaded in %.1f s, indexed %.1f s later" % (name, upload_s, index_s), flush=True)
        queries = {kind: rng.integers(0, args.n, args.queries) for kind in data}
        params = {name: (qm.SearchParams(quantization=qm.QuantizationSearchParams(**QUANTIZED_SEARCH_DEFAULTS))
                         if row["quantization"] != "float32" else None) for name, row in rows.items()}
        for i in range(args.queries):  # round robin over the collections
            for name, row in rows.items():
                x = data[row["data"]]
                q = x[queries[row["data"]][i]]
                start = time.perf_counter()
                hits = stores[name].client.query_points(name, query=q.tolist(), limit=10, search_params=params[name]).points
                row["latency_ms"].append((time.perf_counter() - start) * 1000)
                exact = set(np.argpartition(-(x @ q), 10)[:10].tolist())
                row["recall"].append(len(exact & {h.id for h in hits}) / 10)
        for name, row in rows.items():
            row["rss_mb"] = rss_mb(local.service_status(roots[list(rows).index(name)])["pid"])
            lat = np.array(row.pop("latency_ms"))
            row.update(p50_ms=float(np.median(lat)), p95_ms=float(np.percentile(lat, 95)),
                       recall_at_10=float(np.mean(row.pop("recall"))))
    finally:
        for store in stores.values():
            store.close()
        for root in roots:
            local.stop_service(root)
            shutil.rmtree(root, ignore_errors=True)

    base = rows["clustered-float32"]
    print("\n%d x %d, %d queries each, interleaved; ratios against clustered float32" % (args.n, args.dim, args.queries))
    print("| collection | recall@10 | p50 ms | p95 ms | p50 ratio | index s | service RSS, MB |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print("| %s | %.3f | %.1f | %.1f | %.2fx | %.0f | %.0f |" % (
            name, row["recall_at_10"], row["p50_ms"], row["p95_ms"], row["p50_ms"] / base["p50_ms"], row["index_s"],
            row["rss_mb"]))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "%s_quantization_%d.json" % (datetime.date.today().isoformat(), args.n))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"n": args.n, "dim": args.dim, "queries": args.queries, "rows": rows,
                   "search_defaults": QUANTIZED_SEARCH_DEFAULTS, "load": os.getloadavg()}, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()

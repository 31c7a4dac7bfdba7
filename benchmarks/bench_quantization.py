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
resident memory after the queries (anonymous: what cannot be paged back to
the files it maps), and "peak" that of the service and its indexing child
while the HNSW copy is built. Quantized collections keep their original
vectors on disk (``on_disk=True``), as a user saving memory would: queries
rescore with them.

    python benchmarks/bench_quantization.py --n 50000 --dim 512
    python benchmarks/bench_quantization.py --n 1000000 --data clustered

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
from typing import List

import numpy as np
from qdrant_client import models as qm

from bench_10m import K, PeakSampler, merge_top_k, process_memory_mb
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


def exact_top10(x: np.ndarray, queries: np.ndarray, rows: int = 100000) -> List[set]:
    """numpy's exact top 10 of each query, merged a block of ``rows`` at a
    time (1M x 200 scores at once would be 800 MB)."""
    ids, scores = np.full((len(queries), K), -1), np.full((len(queries), K), -np.inf)
    for start in range(0, len(x), rows):
        merge_top_k(ids, scores, queries, x[start : start + rows], start)
    return [set(row.tolist()) for row in ids]


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
    parser.add_argument("--data", default="clustered,random",
                        help="clustered and/or random (random: float32 only; its HNSW build is slow at 1M)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--indexing-threshold-kb", type=int, default=None,
                        help="Qdrant's indexing_threshold; default the engine's (10000 KB)")
    args = parser.parse_args()

    os.environ["FIFTYONE_QDRANT_INDEX_QUIET_S"] = "1"
    stores, roots = {}, []
    rng = np.random.default_rng(1)
    kinds = args.data.split(",")
    cases = [("clustered", c) for c in args.configs.split(",") if "clustered" in kinds]
    cases += [("random", "float32")] if "random" in kinds else []
    data = {kind: unit_vectors(args.n, args.dim, kind == "clustered") for kind in kinds}
    rows = {}
    try:
        for kind, config in cases:
            name = "%s-%s" % (kind, config)
            roots.append(tempfile.mkdtemp(prefix="bench-quant-"))
            stores[name] = ServerStore.local(roots[-1])
            client = stores[name].client
            on_disk = config != "float32"  # the originals, read back to rescore
            client.create_collection(name, vectors_config=qm.VectorParams(size=args.dim, distance=qm.Distance.COSINE,
                                                                          on_disk=on_disk),
                                     quantization_config=CONFIGS[config],
                                     optimizers_config=qm.OptimizersConfigDiff(
                                         indexing_threshold=args.indexing_threshold_kb))
            start = time.perf_counter()
            client.upload_collection(name, vectors=data[kind], ids=list(range(args.n)), batch_size=256)
            upload_s = time.perf_counter() - start
            sampler = PeakSampler(local.service_status(roots[-1])["pid"])
            sampler.start()
            index_s = wait_indexed(client, name, args.n, args.timeout)
            peak = sampler.stop()
            rows[name] = {"data": kind, "quantization": config, "originals_on_disk": on_disk, "upload_s": upload_s,
                          "index_s": index_s, "peak_rss_anon_mb": round(peak["RssAnon"]),
                          "latency_ms": [], "recall": []}
            print("%s: uploaded in %.1f s, indexed %.1f s later" % (name, upload_s, index_s), flush=True)
        queries = {kind: rng.integers(0, args.n, args.queries) for kind in data}
        truth = {kind: exact_top10(x, x[queries[kind]]) for kind, x in data.items()}
        params = {name: (qm.SearchParams(quantization=qm.QuantizationSearchParams(**QUANTIZED_SEARCH_DEFAULTS))
                         if row["quantization"] != "float32" else None) for name, row in rows.items()}
        for i in range(args.queries):  # round robin over the collections
            for name, row in rows.items():
                x = data[row["data"]]
                q = x[queries[row["data"]][i]]
                start = time.perf_counter()
                hits = stores[name].client.query_points(name, query=q.tolist(), limit=10, search_params=params[name]).points
                row["latency_ms"].append((time.perf_counter() - start) * 1000)
                row["recall"].append(len(truth[row["data"]][i] & {h.id for h in hits}) / 10)
        for name, row in rows.items():
            memory = process_memory_mb(local.service_status(roots[list(rows).index(name)])["pid"])
            row.update(rss_anon_mb=round(memory["RssAnon"]), rss_file_mb=round(memory["RssFile"]))
            lat = np.array(row.pop("latency_ms"))
            row.update(p50_ms=float(np.median(lat)), p95_ms=float(np.percentile(lat, 95)),
                       recall_at_10=float(np.mean(row.pop("recall"))))
    finally:
        for store in stores.values():
            store.close()
        for root in roots:
            local.stop_service(root)
            shutil.rmtree(root, ignore_errors=True)

    base = rows[next(iter(rows))]
    print("\n%d x %d, %d queries each, interleaved; ratios against %s" % (args.n, args.dim, args.queries, next(iter(rows))))
    print("| collection | recall@10 | p50 ms | p95 ms | p50 ratio | index s | RSS anon / file, MB | peak anon while indexing, MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print("| %s | %.3f | %.1f | %.1f | %.2fx | %.0f | %d / %d | %d |" % (
            name, row["recall_at_10"], row["p50_ms"], row["p95_ms"], row["p50_ms"] / base["p50_ms"], row["index_s"],
            row["rss_anon_mb"], row["rss_file_mb"], row["peak_rss_anon_mb"]))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "%s_quantization_%d.json" % (datetime.date.today().isoformat(), args.n))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"n": args.n, "dim": args.dim, "queries": args.queries, "rows": rows,
                   "search_defaults": QUANTIZED_SEARCH_DEFAULTS, "load": os.getloadavg()}, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()

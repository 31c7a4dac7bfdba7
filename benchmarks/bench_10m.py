#!/usr/bin/env python
"""Toward 10M x 512 on one 24 GiB machine: the engine path our index uses,
built in chunks that resume, measured at checkpoints, projected to 10M.

What an index of 10M samples costs in Qdrant is measured here without a
FiftyOne dataset of 10M samples (FiftyOne's own per-sample costs are
measured at 1M by ``bench_backends.py``): synthetic clustered unit vectors
(1000 clusters, as embeddings of a curated dataset group) go through
``ServerStore.upsert`` (our wire encoding, pipelined write sessions) into a
collection of the local Qdrant service, with the payload and keyword index
our index writes (``sample_id``), int8 scalar quantization kept in RAM and
the original vectors on disk (``--quantization``, ``--no-on-disk``).

At each checkpoint (``--checkpoints``) it waits for the service's background
HNSW build, then measures top-10 p50/p95 and recall@10 against the exact
top 10 (kept up to date chunk by chunk, so the vectors are never held in
memory), the service's resident memory (anonymous and file-backed: the
memory-mapped originals), the peak RSS of the service and its indexing
child, and the store's size on disk.

Every chunk is recorded in ``--state`` once written (the vectors are drawn
from a seed per chunk): run the same command again after an interruption
or with ``--budget-s`` and it goes on where it stopped.

    python benchmarks/bench_10m.py --checkpoints 250000,1000000 --target 1000000
    python benchmarks/bench_10m.py                    # to 10M, as far as the time allows

Prints one row per checkpoint and a projection to ``--target`` from the
largest N measured; writes ``benchmarks/results/<date>_10m<tag>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
QUANTIZATION = {
    "int8": {"scalar": {"type": "int8", "always_ram": True}},
    "binary": {"binary": {"always_ram": True}},
    "float32": None,
}
CLUSTERS, K, UPSERT_BATCH = 1000, 10, 1000


# -- data --------------------------------------------------------------------


def centers(dim: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((CLUSTERS, dim)).astype(np.float32)


def clustered(rng: np.random.Generator, count: int, middle: np.ndarray) -> np.ndarray:
    x = middle[rng.integers(0, CLUSTERS, count)] + 0.5 * rng.standard_normal((count, middle.shape[1]), np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chunk_vectors(index: int, size: int, middle: np.ndarray) -> np.ndarray:
    """Chunk ``index``, the same on every run."""
    return clustered(np.random.default_rng((1, index)), size, middle)


def sample_ids(start: int, count: int) -> List[str]:
    return ["%024x" % i for i in range(start, start + count)]


def merge_top_k(truth_ids: np.ndarray, truth_scores: np.ndarray, queries: np.ndarray, x: np.ndarray,
                start: int) -> None:
    """The exact top K of every query over the points so far, in place."""
    scores = queries @ x.T
    best = np.argpartition(-scores, K, axis=1)[:, :K]
    ids = np.concatenate([truth_ids, best + start], axis=1)
    both = np.concatenate([truth_scores, np.take_along_axis(scores, best, axis=1)], axis=1)
    order = np.argsort(-both, axis=1)[:, :K]
    truth_ids[:] = np.take_along_axis(ids, order, axis=1)
    truth_scores[:] = np.take_along_axis(both, order, axis=1)


# -- the service -------------------------------------------------------------


def process_memory_mb(pid: int) -> Dict[str, float]:
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    return out


def tree_memory_mb(pid: int) -> Dict[str, float]:
    """Memory of ``pid`` and its children (the service and its indexer)."""
    total = {"VmRSS": 0.0, "RssAnon": 0.0}
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        for p in [pid] + [int(c) for c in children]:
            memory = process_memory_mb(p)
            for key in total:
                total[key] += memory.get(key, 0.0)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


class PeakSampler(threading.Thread):
    """Peak RSS (all, and anonymous: what cannot be paged back to the
    files it maps) while the service builds its HNSW copy."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop = pid, {"VmRSS": 0.0, "RssAnon": 0.0}, threading.Event()

    def run(self) -> None:
        while not self._stop.wait(1.0):
            for key, value in tree_memory_mb(self.pid).items():
                self.peak[key] = max(self.peak[key], value)

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        return self.peak


def disk_mb(path: str) -> float:
    return int(subprocess.run(["du", "-sk", path], capture_output=True, text=True).stdout.split()[0]) / 1024


def wait_indexed(store, name: str, n: int, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if (store.client.get_collection(name).indexed_vectors_count or 0) >= n:
            return time.perf_counter() - start
        time.sleep(2.0)
    raise TimeoutError("collection %s not indexed after %.0f s (raise --index-timeout)" % (name, timeout))


# -- the run -----------------------------------------------------------------


def load_state(path: str, config: dict, queries: int) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
        if state["config"] != config:
            raise SystemExit("%s was made with %s; delete it (and the store) to start again with %s"
                             % (path, state["config"], config))
        return state
    return {"config": config, "n": 0, "truth_ids": np.full((queries, K), -1).tolist(),
            "truth_scores": np.full((queries, K), -np.inf).tolist(), "rows": []}  # JSON keeps -Infinity


def save_state(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def measure(store, root: str, name: str, n: int, queries: np.ndarray, truth_ids: np.ndarray, args) -> dict:
    from fiftyone_qdrant import local, points
    from fiftyone_qdrant.similarity import QUANTIZED_SEARCH_DEFAULTS

    pid = local.service_status(root)["pid"]
    sampler = PeakSampler(pid)
    sampler.start()
    index_s = wait_indexed(store, name, n, args.index_timeout)
    peak = sampler.stop()
    base = {"quantization": dict(QUANTIZED_SEARCH_DEFAULTS)} if QUANTIZATION[args.quantization] else {}
    by_ef = {}
    for ef in [None] + [int(e) for e in filter(None, args.hnsw_ef.split(","))]:
        params = dict(base, **({"hnsw_ef": ef} if ef else {})) or None
        latencies, recalls = [], []
        for q, truth in zip(queries, truth_ids):
            start = time.perf_counter()
            hits = store.query_batch(name, q[np.newaxis, :], K, search_params=params, with_payload=False)[0]
            latencies.append(time.perf_counter() - start)
            found = {int(points.from_point_id(h.id), 16) for h in hits}
            recalls.append(len(found & set(truth.tolist())) / K)
        lat = np.array(latencies[3:]) * 1000  # the first few warm the caches
        by_ef[str(ef or "default")] = {"p50_ms": round(float(np.median(lat)), 2),
                                       "p95_ms": round(float(np.percentile(lat, 95)), 2),
                                       "recall_at_10": round(float(np.mean(recalls)), 4)}
    memory = process_memory_mb(pid)
    return {"n": n, "index_wait_s": round(index_s, 1), **by_ef["default"], "by_hnsw_ef": by_ef,
            "rss_mb": round(memory["VmRSS"]), "rss_anon_mb": round(memory["RssAnon"]),
            "rss_file_mb": round(memory["RssFile"]), "peak_rss_mb": round(peak["VmRSS"]),
            "peak_rss_anon_mb": round(peak["RssAnon"]), "disk_mb": round(disk_mb(root))}


def project(rows: List[dict], target: int) -> Optional[dict]:
    """``target`` from the largest N measured: memory and disk per vector
    (linear; the peak is the service and its indexing child during a
    rebuild), the HNSW build as n log n, latency as log n (HNSW's hops)."""
    if not rows:
        return None
    last = rows[-1]
    n, scale = last["n"], target / last["n"]
    build = last.get("build_s_total", 0.0)
    return {
        "from_n": n, "target": target,
        "rss_anon_gb": round(last["rss_anon_mb"] * scale / 1024, 1),
        "peak_rss_anon_gb": round(last.get("peak_rss_anon_mb", 0) * scale / 1024, 1),
        "disk_gb": round(last["disk_mb"] * scale / 1024, 1),
        "index_h": round(last["index_wait_s"] * scale * math.log(target) / math.log(n) / 3600, 1),
        "upload_h": round(build * scale / 3600, 2),
        "p50_ms": round(last["p50_ms"] * math.log(target) / math.log(n), 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=250_000, help="vectors per resumable chunk")
    parser.add_argument("--checkpoints", default="250000,1000000,2500000,5000000,10000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--quantization", choices=sorted(QUANTIZATION), default="int8")
    parser.add_argument("--no-on-disk", action="store_true", help="keep the original vectors in RAM")
    parser.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "fiftyone-qdrant-10m"))
    parser.add_argument("--state", default=None, help="default: <store>/bench_state.json")
    parser.add_argument("--budget-s", type=float, default=None, help="stop (resumably) after this long")
    parser.add_argument("--index-timeout", type=float, default=4 * 3600)
    parser.add_argument("--hnsw-ef", default="128,256,512",
                        help="hnsw_ef values also measured at each checkpoint (after the default's)")
    parser.add_argument("--project-to", type=int, default=10_000_000, help="the N to project the last checkpoint to")
    parser.add_argument("--tag", default="", help="added to the results file's name")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the last checkpoint again (a warm service; new --hnsw-ef values)")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("FIFTYONE_QDRANT_INDEX_QUIET_S", "10")  # chunks come seconds apart
    from fiftyone_qdrant import local, points
    from fiftyone_qdrant.server import ServerStore
    from fiftyone_qdrant.store import CollectionSpec

    started = time.perf_counter()
    os.makedirs(args.store, exist_ok=True)
    state_path = args.state or os.path.join(args.store, "bench_state.json")
    config = {"dim": args.dim, "chunk": args.chunk, "queries": args.queries, "quantization": args.quantization,
              "on_disk": not args.no_on_disk}
    state = load_state(state_path, config, args.queries)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(",") if int(c) <= args.target)
    middle = centers(args.dim)
    queries = clustered(np.random.default_rng(2), args.queries, middle)
    truth_ids, truth_scores = np.array(state["truth_ids"], int), np.array(state["truth_scores"])

    name = "bench10m"
    store = ServerStore.local(args.store)
    if not store.collection_exists(name):
        spec = CollectionSpec(dimension=args.dim, quantization_config=QUANTIZATION[args.quantization],
                              on_disk=not args.no_on_disk, on_disk_payload=True)
        store.create_collection(name, spec, {}, keyword_fields=["sample_id"])
    print("store %s: %d of %d vectors written, checkpoints %s" % (args.store, state["n"], args.target, checkpoints),
          flush=True)
    def measure_if_due() -> None:
        n = state["n"]
        if (n in checkpoints or n == args.target) and n not in {r["n"] for r in state["rows"]}:
            row = measure(store, args.store, name, n, queries, truth_ids, args)
            row.update(build_facts, build_s_total=round(state["build_s_total"], 1))
            state["rows"].append(row)
            save_state(state_path, state)
            print("  checkpoint %s" % row, flush=True)

    build_facts = {}  # what a new measurement cannot see again: the build's
    if args.remeasure:
        for r in [r for r in state["rows"] if r["n"] == state["n"]]:
            build_facts = {k: r[k] for k in ("index_wait_s", "peak_rss_mb", "peak_rss_anon_mb") if k in r}
            build_facts.update(first_p50_ms=r.get("first_p50_ms", r["p50_ms"]),
                               rss_anon_after_swap_mb=r.get("rss_anon_after_swap_mb", r["rss_anon_mb"]))
            state["rows"].remove(r)
    try:
        measure_if_due()  # a run stopped while waiting for the index
        while state["n"] < args.target:
            if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                print("time budget spent: run the same command again to go on from %d" % state["n"])
                return 0
            start, size = state["n"], min(args.chunk, args.target - state["n"])
            x = chunk_vectors(start // args.chunk, size, middle)
            t0 = time.perf_counter()
            with store.batch(name):
                for lo in range(0, size, UPSERT_BATCH):
                    ids = sample_ids(start + lo, min(UPSERT_BATCH, size - lo))
                    store.upsert(name, points.to_point_ids(ids), x[lo : lo + len(ids)],
                                 [{"sample_id": s} for s in ids])
            upload_s = time.perf_counter() - t0
            merge_top_k(truth_ids, truth_scores, queries, x, start)
            state.update(n=start + size, truth_ids=truth_ids.tolist(), truth_scores=truth_scores.tolist())
            state["build_s_total"] = state.get("build_s_total", 0.0) + upload_s
            save_state(state_path, state)
            print("  %9d vectors (+%d in %.1f s, %.0f vec/s)" % (state["n"], size, upload_s, size / upload_s), flush=True)
            measure_if_due()
    finally:
        store.close()
        local.stop_service(args.store)  # flushed; the next run starts it again

    rows = state["rows"]
    print("\n%s quantization, originals %s; p50/p95 after the background HNSW build"
          % (args.quantization, "on disk" if config["on_disk"] else "in RAM"))
    print("| N | upload, vec/s | HNSW build wait, s | p50 ms | p95 ms | recall@10 | RSS anon / file MB "
          "| peak RSS with the indexer, all / anon MB | disk MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %.0f | %.0f | %.1f | %.1f | %.3f | %d / %d | %d / %s | %d |" % (
            r["n"], r["n"] / r["build_s_total"], r["index_wait_s"], r["p50_ms"], r["p95_ms"], r["recall_at_10"],
            r["rss_anon_mb"], r["rss_file_mb"], r["peak_rss_mb"], r.get("peak_rss_anon_mb", "-"), r["disk_mb"]))
    for r in rows:
        if r.get("by_hnsw_ef"):
            print("  N = %d by hnsw_ef: %s" % (r["n"], ", ".join(
                "%s: p50 %.1f ms, recall %.3f" % (ef, m["p50_ms"], m["recall_at_10"]) for ef, m in r["by_hnsw_ef"].items())))
    projection = project(rows, args.project_to)
    if projection and projection["from_n"] < args.project_to:
        print("\nprojected to %(target)d from %(from_n)d: RSS (anon) %(rss_anon_gb)s GB, %(peak_rss_anon_gb)s GB "
              "at the peak of a rebuild, disk %(disk_gb)s GB, "
              "upload %(upload_h)s h, HNSW build %(index_h)s h, p50 ~%(p50_ms)s ms" % projection)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    out = os.path.join(RESULTS_DIR, "%s_10m%s.json" % (datetime.date.today().isoformat(), args.tag))
    with open(out, "w") as f:
        json.dump({"config": config, "rows": rows, "projection": projection, "load": os.getloadavg()}, f, indent=1)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

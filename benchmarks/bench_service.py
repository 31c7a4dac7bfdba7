#!/usr/bin/env python
"""The embedded store's local Qdrant service vs Qdrant's engine in-process
(raw qdrant-edge, same config, WAL on), side by side in one run.

    python benchmarks/bench_service.py                 # 100k x 512
    python benchmarks/bench_service.py --sizes 1000000 # 1M
    python benchmarks/bench_service.py --sizes 20000 --repeats 3   # quick

For each N (512-d float32 random vectors, a keyword ``sample_id`` payload
indexed at creation, batches of 1000), repeated ``--repeats`` times with the
engines interleaved:

* build throughput (vectors/s): raw ``EdgeShard.update(upsert_points)`` +
  ``flush()`` in this process (rows as float32 ``array.array``, the
  binding's fastest input) vs ``ServerStore.upsert`` through the service
  in a write session (what ``compute_similarity`` does: numpy straight into
  protobuf, two requests in flight) vs qdrant-client's own
  ``client.upsert(models.Batch)`` over gRPC;
* where the service path's time goes: encoding here, the call, decoding and
  indexing there (one sequential pass, cProfile-free timers);
* top-10 query latency p50/p95 on the whole collection: raw
  ``shard.query`` vs ``ServerStore.query_batch`` vs qdrant-client's
  ``query_points``;
* reopen + first query in a fresh process, the service already running
  (after imports; imports timed separately), and cold (service not running);
* a reader's latency (p50/p99 of top-10 queries) while another process
  builds N vectors through the service, against the same reader idle.

Prints tables (ratios to raw) and writes JSON to
``benchmarks/results/<date>_service_<N>.json``.
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

# exact search on both sides: the raw shard is never optimize()d, so the
# service must not build HNSW in the background either
os.environ.setdefault("FIFTYONE_QDRANT_INDEX_QUIET_S", "1e9")

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCHMARKS))
sys.path.insert(0, BENCHMARKS)

import qdrant_edge as qe  # noqa: E402
from qdrant_client import models as qm  # noqa: E402

from bench_two_services import upload  # noqa: E402
from fiftyone_qdrant import local  # noqa: E402
from fiftyone_qdrant.store import CollectionSpec  # noqa: E402
from fiftyone_qdrant.server import ServerStore  # noqa: E402
from fiftyone_qdrant.wire import encode_upsert  # noqa: E402

DIM = 512
BATCH = 1000


def vectors(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def point_ids(n):
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def sample_ids(lo, hi):
    return np.array(["%024x" % i for i in range(lo, hi)])


def payloads(lo, hi):
    return [{"sample_id": sample_id} for sample_id in sample_ids(lo, hi).tolist()]


def pct(times, q):
    return float(np.percentile(np.asarray(times) * 1000, q))


# -- builds ------------------------------------------------------------------------


def build_raw(root, X, ids):
    shard = qe.EdgeShard.create(os.path.join(root, "raw"), qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine), wal_enabled=True))
    shard.update(qe.UpdateOperation.create_field_index("sample_id", qe.PayloadSchemaType.Keyword))
    t0 = time.perf_counter()
    for lo in range(0, len(X), BATCH):
        hi = lo + BATCH
        # float32 rows as array.array: the binding's fastest input (a list
        # of Python floats costs ~2x; the service hands the engine the same)
        rows = [array.array("f", row.tobytes()) for row in X[lo:hi]]
        shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(i, r, p) for i, r, p in zip(ids[lo:hi], rows, payloads(lo, min(hi, len(X))))]))
    shard.flush()
    elapsed = time.perf_counter() - t0
    return elapsed, shard


def build_service(store, name, X, ids):
    """Seconds to create ``name`` and write it as a build does."""
    t0 = time.perf_counter()
    upload(store, name, ids, X, sample_ids(0, len(X)))
    return time.perf_counter() - t0


def build_client_models(client, name, X, ids):
    client.create_collection(name, vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
    client.create_payload_index(name, "sample_id", qm.PayloadSchemaType.KEYWORD)
    t0 = time.perf_counter()
    for lo in range(0, len(X), BATCH):
        hi = min(lo + BATCH, len(X))
        client.upsert(name, points=qm.Batch(ids=ids[lo:hi], vectors=X[lo:hi].tolist(), payloads=payloads(lo, hi)))
    return time.perf_counter() - t0


def breakdown(store, name, X, ids, batches=20):
    """One batch at a time, no pipelining: encode here, then the call."""
    from qdrant_client import grpc as pb

    store.create_collection(name, CollectionSpec(DIM, "cosine"), {}, keyword_fields=["sample_id"])
    objects = encode = parse = call = 0.0
    for b in range(batches):
        lo, hi = b * BATCH, (b + 1) * BATCH
        t0 = time.perf_counter()
        points = []  # the per-point message objects that encode_upsert avoids
        for point_id, row, payload in zip(ids[lo:hi], X[lo:hi].tolist(), payloads(lo, hi)):
            p = pb.PointStruct(id=pb.PointId(uuid=point_id), payload={k: pb.Value(string_value=v) for k, v in payload.items()})
            p.vectors.vector.dense.data.extend(row)
            points.append(p)
        t1 = time.perf_counter()
        blob = encode_upsert(name, ids[lo:hi], X[lo:hi], payloads(lo, hi))
        t2 = time.perf_counter()
        request = pb.UpsertPoints.FromString(blob)
        t3 = time.perf_counter()
        store.client.grpc_points.Upsert(request)
        t4 = time.perf_counter()
        objects, encode, parse, call = objects + t1 - t0, encode + t2 - t1, parse + t3 - t2, call + t4 - t3
    n = batches * BATCH
    return {"message_objects_us_per_point (not used)": objects / n * 1e6, "encode_upsert_us_per_point": encode / n * 1e6,
            "parse_us_per_point": parse / n * 1e6, "call_us_per_point (send, decode + index there)": call / n * 1e6}


# -- queries -----------------------------------------------------------------------


def query_latencies(raw_shard, store, name, client, X, num):
    qs = vectors(num, seed=99)
    fns = {
        "raw qdrant-edge": lambda q: raw_shard.query(qe.QueryRequest(
            limit=10, query=qe.Query.Nearest(q.tolist()), with_payload=True)),
        "service (ServerStore)": lambda q: store.query_batch(name, q[None, :], 10),
        "service (client.query_points)": lambda q: client.query_points(name, query=q.tolist(), limit=10),
    }
    times = {k: [] for k in fns}
    for q in qs[:3]:
        for fn in fns.values():
            fn(q)
    for q in qs:  # interleaved
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn(q)
            times[label].append(time.perf_counter() - t0)
    return {k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for k, v in times.items()}


_FRESH = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np
from fiftyone_qdrant.server import ServerStore
t1 = time.perf_counter()
store = ServerStore.local(sys.argv[1])
hits = store.query_batch(sys.argv[2], np.ones((1, %d), dtype=np.float32), 10)
t2 = time.perf_counter()
assert len(hits[0]) == 10
print("%%.4f %%.4f" %% (t1 - t0, t2 - t1))
""" % DIM


def fresh_process(root, name):
    out = subprocess.run([sys.executable, "-c", _FRESH, root, name], capture_output=True, text=True, check=True)
    imports, open_query = map(float, out.stdout.split())
    return imports, open_query


_WRITER = r"""
import sys
sys.path[:0] = [%r, %r]
import bench_service
from fiftyone_qdrant.server import ServerStore
root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = ServerStore.local(root)
X, ids = bench_service.vectors(n, seed=5), bench_service.point_ids(n)
print("START", flush=True)
bench_service.build_service(store, name, X, ids)
print("DONE", flush=True)
""" % (os.path.dirname(BENCHMARKS), BENCHMARKS)


def reader_during_build(root, store, name, n, idle_s=5.0):
    """p50/p99 of this process's queries on ``name`` idle, then while
    another process builds ``n`` vectors into another collection of the
    same service."""
    q = vectors(1, seed=7)
    idle = []
    t_end = time.monotonic() + idle_s
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        store.query_batch(name, q, 10)
        idle.append(time.perf_counter() - t0)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, root, "written", str(n)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "START"
    busy = []
    t_start = time.monotonic()
    while writer.poll() is None:
        t0 = time.perf_counter()
        store.query_batch(name, q, 10)
        busy.append(time.perf_counter() - t0)
    build_s = time.monotonic() - t_start
    assert writer.wait() == 0
    visible = store.count("written")
    return {"idle_p50_ms": pct(idle, 50), "idle_p99_ms": pct(idle, 99), "during_build_p50_ms": pct(busy, 50),
            "during_build_p99_ms": pct(busy, 99), "during_build_max_ms": float(np.max(busy) * 1000),
            "queries_during_build": len(busy), "writer_build_s": build_s, "visible_after_build": visible}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "date": datetime.datetime.now().isoformat(timespec="seconds")}, "sizes": {}}
    for n in [int(s) for s in args.sizes.split(",")]:
        work = tempfile.mkdtemp(prefix="bench-service-")
        try:
            X, ids = vectors(n), point_ids(n)
            root = os.path.join(work, "store")
            store = ServerStore.local(root)
            builds = {"raw qdrant-edge": [], "service (ServerStore)": [], "service (client.upsert models)": []}
            raw_shard = None
            for r in range(args.repeats):
                for label in builds:  # interleaved
                    if label == "raw qdrant-edge":
                        if raw_shard is not None:
                            raw_shard.close()
                        shutil.rmtree(os.path.join(work, "raw"), ignore_errors=True)
                        elapsed, raw_shard = build_raw(work, X, ids)
                    elif label == "service (ServerStore)":
                        store.delete_collection("c") if store.collection_exists("c") else None
                        elapsed = build_service(store, "c", X, ids)
                    else:
                        if n > 20000:  # ~1,000 vectors/s: measured at 20k
                            continue
                        store.delete_collection("m") if store.collection_exists("m") else None
                        elapsed = build_client_models(store.client, "m", X, ids)
                    builds[label].append(n / elapsed)
                    print("N=%d repeat %d %-32s %8.0f vectors/s" % (n, r, label, n / elapsed), flush=True)
            raw_rate = float(np.median(builds["raw qdrant-edge"]))
            size = {"build_vectors_per_s": {k: float(np.median(v)) for k, v in builds.items() if v}}
            size["build_ratio_to_raw"] = {k: v / raw_rate for k, v in size["build_vectors_per_s"].items()}
            size["service_breakdown"] = breakdown(store, "b", X, ids, batches=min(20, n // BATCH))
            store.delete_collection("b")
            size["query"] = query_latencies(raw_shard, store, "c", store.client, X, args.queries)
            raw_p50 = size["query"]["raw qdrant-edge"]["p50_ms"]
            size["query_p50_ratio_to_raw"] = {k: v["p50_ms"] / raw_p50 for k, v in size["query"].items()}
            warm = [fresh_process(root, "c") for _ in range(3)]
            size["fresh_process_service_running"] = {
                "imports_s": float(np.median([w[0] for w in warm])), "open_and_first_query_s": float(np.median([w[1] for w in warm]))}
            store.close()
            local.stop_service(root)
            cold = fresh_process(root, "c")
            size["fresh_process_cold_service"] = {"imports_s": cold[0], "start_open_and_first_query_s": cold[1]}
            store = ServerStore.local(root)
            size["reader_during_build"] = reader_during_build(root, store, "c", n)
            store.close()
            local.stop_service(root)
            raw_shard.close()
            results["sizes"][n] = size
            print(json.dumps(size, indent=1), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "%s_service_%s.json" % (datetime.date.today().isoformat(), args.sizes.replace(",", "-")))
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()

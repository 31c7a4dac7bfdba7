#!/usr/bin/env python
"""How fast a collection sharded over two local service processes could be
written: one store's service taking all N points, against two stores'
services taking N/2 each at once (one client process, a thread a store),
through ``ServerStore.upsert`` as a build sends them (1,000-point batches,
512-d unit vectors, ``sample_id`` payloads, a keyword index on them),
interleaved round by round, medians. Then exact top-10 queries: one
service's against both halves searched at once and merged by score.

This measures the case for sharding the embedded store before building it
(issue 14: the binding holds the GIL, so one service uses one core):

    python benchmarks/bench_two_services.py              # 100k, 4 rounds
    python benchmarks/bench_two_services.py --n 200000 --rounds 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("FIFTYONE_QDRANT_INDEX_QUIET_S", "1e9")  # no background HNSW while timing

import numpy as np  # noqa: E402

DIM, BATCH = 512, 1000


def points_data(start: int, stop: int):
    """Point ids, unit vectors and sample ids of points [start, stop)
    (vectors seeded by ``start``)."""
    from fiftyone_qdrant import points

    vectors = np.random.default_rng(start).standard_normal((stop - start, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample_ids = np.array(["%024x" % (i * 7919 + 99999) for i in range(start, stop)], dtype="<U24")
    return points.to_point_ids(sample_ids), vectors, sample_ids


def upload(store, name: str, point_ids, vectors: np.ndarray, sample_ids: np.ndarray) -> None:
    """A new cosine collection of ``vectors``, written as a build writes
    them: ``sample_id`` payloads (keyword-indexed), BATCH points an upsert."""
    from fiftyone_qdrant.store import CollectionSpec

    store.create_collection(name, CollectionSpec(vectors.shape[1], "cosine"), {}, keyword_fields=["sample_id"])
    write(store, name, point_ids, vectors, sample_ids)


def write(store, name: str, point_ids, vectors: np.ndarray, sample_ids: np.ndarray) -> None:
    """``vectors`` upserted into ``name`` in one write session, as a build does."""
    from fiftyone_qdrant import points

    with store.batch(name):
        for start in range(0, len(vectors), BATCH):
            rows = slice(start, start + BATCH)
            store.upsert(name, point_ids[rows], vectors[rows], points.payloads(sample_ids[rows], None, None))


def compare_queries(stores, one_service, two_services, vectors: np.ndarray, count: int) -> None:
    """Exact top-10 from one service against both halves searched at once
    and merged by score: the same answers, and the p50 of each."""
    one_service("queries")
    two_services("queries_halves")
    queries = vectors[np.random.default_rng(5).integers(0, len(vectors), count)]
    pool = concurrent.futures.ThreadPoolExecutor(2)

    def whole(q):
        return [h.id for h in stores[0].query_batch("queries", q[None, :], 10)[0]]

    def halves(q):
        parts = pool.map(lambda store: store.query_batch("queries_halves", q[None, :], 10)[0], stores)
        return [h.id for h in sorted((h for part in parts for h in part), key=lambda h: -h.score)[:10]]

    latency = {"one service": [], "two services, merged": []}
    for q in queries:
        for label, search in (("one service", whole), ("two services, merged", halves)):
            t0 = time.perf_counter()
            found = search(q)
            latency[label].append((time.perf_counter() - t0) * 1000)
            if label == "one service":
                expected = found
            elif set(found) != set(expected):
                raise AssertionError("the merged halves answered %s, one service %s" % (found, expected))
    pool.shutdown()
    print("\nexact top-10 (%d queries, answers identical)" % count)
    print("| setting | p50 ms |\n|---|---:|")
    for label, times in latency.items():
        print("| %s | %.2f |" % (label, statistics.median(times)))


def main(argv=None) -> int:
    from fiftyone_qdrant.server import ServerStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--queries", type=int, default=50, help="exact top-10 queries timed per setting")
    args = parser.parse_args(argv)

    point_ids, vectors, sample_ids = points_data(0, args.n)
    root = tempfile.mkdtemp(prefix="bench-two-services-")
    stores = [ServerStore.local(os.path.join(root, name)) for name in ("a", "b")]

    def one_service(name: str) -> None:
        upload(stores[0], name, point_ids, vectors, sample_ids)

    def two_services(name: str) -> None:
        half = args.n // 2
        threads = [threading.Thread(target=upload, args=(store, name, point_ids[rows], vectors[rows], sample_ids[rows]))
                   for store, rows in zip(stores, (slice(0, half), slice(half, args.n)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    settings = {"one service, N points": one_service, "two services, N/2 each at once": two_services}
    seconds = {label: [] for label in settings}
    for round_ in range(args.rounds):
        order = list(settings) if round_ % 2 == 0 else list(settings)[::-1]
        for label in order:
            name = "round%d" % round_
            t0 = time.perf_counter()
            settings[label](name)
            seconds[label].append(time.perf_counter() - t0)
            for store in stores:
                if store.collection_exists(name):
                    store.delete_collection(name)

    print("\nN = %d, %d rounds interleaved\n" % (args.n, args.rounds))
    print("| setting | upload, s (median) | runs | vectors/s |")
    print("|---|---:|---|---:|")
    for label, runs in seconds.items():
        med = statistics.median(runs)
        print("| %s | %.2f | %s | %.0f |" % (label, med, " / ".join("%.2f" % r for r in runs), args.n / med))
    one, two = (statistics.median(seconds[label]) for label in settings)
    print("\ntwo services take %.2fx one's time" % (two / one))
    compare_queries(stores, one_service, two_services, vectors, args.queries)
    for store in stores:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

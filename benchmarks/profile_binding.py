#!/usr/bin/env python
"""The engine binding's floor for a build: what the local service cannot go
below however little it adds, measured in one process.

For batches as our client sends them (512-d float32, UUID ids, a
``sample_id`` payload, a keyword index on it, the WAL on), per point:

* ``engine_points``: the service's reading of the upsert's bytes into
  ``qe.Point`` objects (by column), and ``qe.Point`` alone;
* ``update``: ``EdgeShard.update(upsert_points(...))`` up to ``--n`` points,
  and the kernel's share of it (system CPU time: page faults on the
  engine's memory-mapped files, which the WAL doubles);

each measured alone, alone with the shard's WAL off (what the WAL costs;
the service keeps it on, for durability), beside a neighbour process that copies memory
(what a client encoding and sending batches does to the shared caches and
memory bus of a small VM), and as two shards written at once by two
processes (the best a collection sharded over two service processes could
do), interleaved round by round. It prints
medians and the build time those floors imply at ``--n``: compare it with
LanceDB's build in ``bench_backends.py``.

    python benchmarks/profile_binding.py               # 50k points, 3 rounds each
    python benchmarks/profile_binding.py --n 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import array
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

BATCH = 1000
DIM = 512


def _copy_memory(stop) -> None:
    block = np.random.default_rng(0).random(4_000_000, dtype=np.float32)  # 16 MB, past the L2 caches
    while not stop.is_set():
        block.copy()


def _batches(n: int):
    from fiftyone_qdrant import points, wire

    rng = np.random.default_rng(1)
    for start in range(0, n, BATCH):
        sample_ids = np.array(["%024x" % (i * 7919 + 99999) for i in range(start, start + BATCH)], dtype="<U24")
        vectors = rng.standard_normal((BATCH, DIM)).astype(np.float32)
        yield wire.encode_upsert("c", points.to_point_ids(sample_ids), vectors, points.payloads(sample_ids, None, None))


def one_round(n: int, wal: bool = True) -> dict:
    """Microseconds a point in each step of a build of ``n`` points into a new shard."""
    import qdrant_edge as qe
    from qdrant_client import grpc as pb

    from fiftyone_qdrant import service, wire

    shard = qe.EdgeShard.create(tempfile.mkdtemp(prefix="profile-binding-"), qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0), wal_enabled=wal,
    ))
    shard.update(qe.UpdateOperation.create_field_index("sample_id", qe.PayloadSchemaType.Keyword))
    spent = {"engine_points": 0.0, "update": 0.0, "update_kernel": 0.0}
    for serialized in _batches(n):
        message = pb.UpsertPoints.FromString(serialized)
        t0 = time.perf_counter()
        _, engine_points = service.engine_points(message, serialized)
        t1, kernel = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        shard.update(qe.UpdateOperation.upsert_points(engine_points))
        spent["update"] += time.perf_counter() - t1
        spent["update_kernel"] += resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel
        spent["engine_points"] += t1 - t0
    # qe.Point alone, on the last batch's columns (best of 5)
    columns = wire.point_columns(serialized, BATCH, 3)
    vectors = [array.array("f", row.tobytes()) for row in columns.vectors]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        [qe.Point(*point) for point in zip(columns.ids, vectors, columns.payloads)]
        best = min(best, time.perf_counter() - t0)
    shard.close()
    return dict({step: seconds / n * 1e6 for step, seconds in spent.items()}, **{"qe.Point": best / BATCH * 1e6})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    two_shards = "two shards, one process each (N/2 points each)"
    no_wal = "alone, WAL off"
    runs = {"alone": [], no_wal: [], "beside a memory copier": [], two_shards: []}
    # spawned, not forked: the parent has the engine's threads running
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        for _ in range(args.rounds):
            for setting in runs:
                if setting == two_shards:
                    halves = pool.map(one_round, [args.n // 2, args.n - args.n // 2])
                    runs[setting].append({step: statistics.mean(h[step] for h in halves) for step in halves[0]})
                    continue
                stop = multiprocessing.Event()
                neighbour = None
                if setting == "beside a memory copier":
                    neighbour = multiprocessing.Process(target=_copy_memory, args=(stop,), daemon=True)
                    neighbour.start()
                    time.sleep(0.3)
                try:
                    runs[setting].append(one_round(args.n, wal=setting != no_wal))
                finally:
                    stop.set()
                    if neighbour is not None:
                        neighbour.join()

    print("\nus a point, median of %d rounds at N = %d (%d-point batches, %d-d)\n" % (args.rounds, args.n, BATCH, DIM))
    print("| setting | engine_points | of which qe.Point | update | of which kernel | floor (engine_points + update) "
          "| implied build of N, s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setting, rounds in runs.items():
        med = {step: statistics.median(r[step] for r in rounds) for step in rounds[0]}
        floor = med["engine_points"] + med["update"]
        shards = 2 if setting == two_shards else 1  # each writes its share at the same time
        print("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f |" % (
            setting, med["engine_points"], med["qe.Point"], med["update"], med["update_kernel"], floor,
            floor * args.n / shards / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())

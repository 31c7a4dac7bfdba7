#!/usr/bin/env python
"""Periodic flushes of the embedded store's shards during a build, against
none: N points written through ``ServerStore`` as a build writes them
(``bench_two_services.write``: 1,000-point upserts of 512-d unit vectors
with keyword-indexed ``sample_id`` payloads), into local services started
with ``$FIFTYONE_QDRANT_FLUSH_MB`` set to each value (0: no flush until the
shard closes, as before 2026-12-04), interleaved round by round.

The engine truncates its WAL only at a flush, and replays it when a shard
is loaded after a crash. This prints the seconds of each slice of the build
(where writes slow down), the total, the size of the WAL at the end, and
how long the first count takes after a SIGKILL of the service (a new
service, loading the shard and replaying its WAL):

    python benchmarks/bench_flush.py                     # 1M points, 2 rounds
    python benchmarks/bench_flush.py --n 300000 --flush-mb 0,8,32,128
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("FIFTYONE_QDRANT_INDEX_QUIET_S", "1e9")  # no background HNSW while timing
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_10m  # noqa: E402
import bench_two_services  # noqa: E402

DIM = bench_two_services.DIM


def build(store, root: str, name: str, n: int, slice_size: int) -> dict:
    """Seconds per slice of an N-point build, the WAL's size after it, and
    the seconds to the first answer after a SIGKILL of the service."""
    from fiftyone_qdrant import local
    from fiftyone_qdrant.store import CollectionSpec

    store.create_collection(name, CollectionSpec(DIM, "cosine"), {}, keyword_fields=["sample_id"])
    seconds = []
    for start in range(0, n, slice_size):
        data = bench_two_services.points_data(start, min(n, start + slice_size))  # made per slice: 1M is 2 GB
        t0 = time.perf_counter()
        bench_two_services.write(store, name, *data)
        seconds.append(time.perf_counter() - t0)
    wal = bench_10m.disk_mb(os.path.join(root, "collections", name, "shard", "wal"))
    os.kill(local.read_address(root).pid, signal.SIGKILL)
    t0 = time.perf_counter()
    assert store.count(name) == n  # the store starts the service again
    return {"slices": seconds, "wal_mb": wal, "recovery_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    from fiftyone_qdrant import local, service
    from fiftyone_qdrant.server import ServerStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slice", type=int, default=100000, help="points timed together")
    parser.add_argument("--flush-mb", default="0,%d" % service.DEFAULT_FLUSH_MB,
                        help="comma-separated values of $%s, one service each" % service.FLUSH_MB_ENV)
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="bench-flush-")
    stores = {}
    for value in args.flush_mb.split(","):  # each service reads it from the environment it starts in
        os.environ[service.FLUSH_MB_ENV] = value
        root = os.path.join(work, "flush-" + value)
        stores[value] = (root, ServerStore.local(root))
    del os.environ[service.FLUSH_MB_ENV]
    runs = {value: [] for value in stores}
    try:
        for round_ in range(args.rounds):
            order = list(stores) if round_ % 2 == 0 else list(stores)[::-1]
            for value in order:
                root, store = stores[value]
                name = "round%d" % round_
                runs[value].append(build(store, root, name, args.n, args.slice))
                print("  flush every %s MB, round %d: %.1f s, WAL %.0f MB, recovery %.1f s" % (
                    value, round_, sum(runs[value][-1]["slices"]), runs[value][-1]["wal_mb"],
                    runs[value][-1]["recovery_s"]), flush=True)
                store.delete_collection(name)
    finally:
        for root, store in stores.values():
            store.close()
            local.stop_service(root)
        subprocess.run(["rm", "-rf", work])

    slices = (args.n + args.slice - 1) // args.slice
    print("\nN = %d, %d rounds interleaved, medians; seconds per %d-point slice\n" % (args.n, args.rounds, args.slice))
    print("| $%s | build, s | vectors/s | first slice, s | last slice, s | WAL at the end, MB "
          "| first count after a SIGKILL, s |" % service.FLUSH_MB_ENV)
    print("|---|---:|---:|---:|---:|---:|---:|")
    for value, builds in runs.items():
        total = statistics.median(sum(b["slices"]) for b in builds)
        print("| %s | %.1f | %.0f | %.2f | %.2f | %.0f | %.1f |" % (
            value, total, args.n / total, *(statistics.median(b["slices"][i] for b in builds) for i in (0, slices - 1)),
            *(statistics.median(b[key] for b in builds) for key in ("wal_mb", "recovery_s"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

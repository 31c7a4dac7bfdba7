#!/usr/bin/env python
"""Streaming sink throughput: ``fiftyone_qdrant.sink`` vs one upsert per
record (what Qdrant's reference Fluvio connector does), on the same embedded
engine and the same records.

    python benchmarks/bench_sink.py                    # 20k 512-d records
    python benchmarks/bench_sink.py --records 5000 --dim 128
    python benchmarks/bench_sink.py --json out.json

Every path starts from the same JSON lines (connector format, with a
``sample_id`` payload) and parses them with the same validation core, so
the difference is batching alone:

* **sink**: ``QdrantSink`` over a file source, the full production path:
  batches of ``--batch-size``, dead-letter file, writes made durable and
  the file offset checkpointed every 5 s and at the end, collection created
  from the first record;
* **per record**: the reference connector's behaviour, each record one
  durable write through the store (``EmbeddedStore.upsert_points(name,
  [point])``: lock, write, flush, reload for other processes);
* **per record, raw engine**: the least one durable write per record can
  cost on this engine: ``EdgeShard.update([point])`` + ``flush()`` on a shard
  held open, with none of the store's cross-process coordination.

One write per record is slow, so the two baselines run on the first
``--baseline-records`` records (rates are per second, so they compare).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import qdrant_edge as qe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fiftyone_qdrant.embedded import EmbeddedStore  # noqa: E402
from fiftyone_qdrant.sink import (  # noqa: E402
    Checkpoint,
    CollectionSchema,
    EmbeddedTarget,
    QdrantSink,
    file_source,
    parse_record,
)

COLLECTION = "bench"


def write_records(path: str, count: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for start in range(0, count, 1000):
            block = rng.standard_normal((min(1000, count - start), dim)).astype(np.float32)
            for offset, vector in enumerate(block.tolist()):
                i = start + offset
                f.write(json.dumps({
                    "collection_name": COLLECTION, "id": i, "vectors": vector,
                    "payload": {"sample_id": "%024x" % i},
                }) + "\n")


def bench_sink(records_path: str, work_dir: str, batch_size: int) -> dict:
    store_path = os.path.join(work_dir, "sink-store")
    dead_letter = os.path.join(work_dir, "dead.jsonl")
    started = time.perf_counter()
    with QdrantSink(EmbeddedTarget(EmbeddedStore(store_path)), batch_size=batch_size,
                    dead_letter_path=dead_letter) as sink:
        report = sink.run([file_source(records_path, Checkpoint(dead_letter + ".checkpoint.json"))])
    elapsed = time.perf_counter() - started
    store = EmbeddedStore(store_path)
    assert store.count(COLLECTION) == report.records == report.written, report.summary()
    store.close()
    return {"records": report.records, "seconds": elapsed, "records_per_s": report.records / elapsed}


def _point(line: str) -> qe.Point:
    record = parse_record(line)
    return qe.Point(record.point_id, record.vectors[""], record.payload)


def _first_lines(records_path: str, limit: int) -> list:
    with open(records_path) as f:
        return [next(f) for _ in range(limit)]


def bench_per_record(records_path: str, work_dir: str, limit: int) -> dict:
    """One validated record, one durable upsert: the connector's loop."""
    store = EmbeddedStore(os.path.join(work_dir, "per-record-store"))
    lines = _first_lines(records_path, limit)
    # the collection exists up front (not timed), created as the sink would
    EmbeddedTarget(store).create(
        COLLECTION, CollectionSchema.from_record(parse_record(lines[0]), "cosine"), ["sample_id"]
    )
    started = time.perf_counter()
    for line in lines:
        store.upsert_points(COLLECTION, [_point(line)])
    elapsed = time.perf_counter() - started
    assert store.count(COLLECTION) == limit
    store.close()
    return {"records": limit, "seconds": elapsed, "records_per_s": limit / elapsed}


def bench_per_record_raw_engine(records_path: str, work_dir: str, limit: int, dim: int) -> dict:
    """One durable write per record on a bare shard: update + flush."""
    shard = qe.EdgeShard.create(
        os.path.join(work_dir, "per-record-raw"),
        qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine), wal_enabled=False),
    )
    shard.update(qe.UpdateOperation.create_field_index("sample_id", qe.PayloadSchemaType.Keyword))
    lines = _first_lines(records_path, limit)
    started = time.perf_counter()
    for line in lines:
        shard.update(qe.UpdateOperation.upsert_points([_point(line)]))
        shard.flush()
    elapsed = time.perf_counter() - started
    assert shard.count(qe.CountRequest(exact=True)) == limit
    shard.close()
    return {"records": limit, "seconds": elapsed, "records_per_s": limit / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--baseline-records", type=int, default=300,
                        help="records written one by one for the baselines (default 300)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    work_dir = tempfile.mkdtemp(prefix="bench-sink-")
    try:
        records_path = os.path.join(work_dir, "records.jsonl")
        write_records(records_path, args.records, args.dim)
        size_mb = os.path.getsize(records_path) / 1e6
        print("%d records, %d-d, %.0f MB of JSON lines; %s, %d CPUs"
              % (args.records, args.dim, size_mb, platform.machine(), os.cpu_count()))

        baseline_count = min(args.baseline_records, args.records)
        results = {
            "sink": bench_sink(records_path, work_dir, args.batch_size),
            "per_record": bench_per_record(records_path, work_dir, baseline_count),
            "per_record_raw_engine": bench_per_record_raw_engine(records_path, work_dir, baseline_count, args.dim),
        }
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    sink_rate = results["sink"]["records_per_s"]
    rows = [
        ("fiftyone-qdrant sink (batch %d)" % args.batch_size, results["sink"]),
        ("one upsert per record (reference connector)", results["per_record"]),
        ("one upsert per record, raw engine (update+flush)", results["per_record_raw_engine"]),
    ]
    print()
    print("%-50s %9s %9s %12s %9s" % ("", "records", "seconds", "records/s", "speed-up"))
    for label, r in rows:
        print("%-50s %9d %9.2f %12.0f %8.1fx" % (label, r["records"], r["seconds"], r["records_per_s"],
                                                 sink_rate / r["records_per_s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

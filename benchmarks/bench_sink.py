#!/usr/bin/env python
"""Streaming sink throughput: ``fiftyone_qdrant.sink`` vs one upsert per
record, on the same embedded store (its local Qdrant service) and the same
records.

    python benchmarks/bench_sink.py                    # 20k 512-d records, 3 interleaved rounds
    python benchmarks/bench_sink.py --records 5000 --dim 128 --rounds 5
    python benchmarks/bench_sink.py --json out.json

Every path starts from the same JSON lines (connector format, with a
``sample_id`` payload) and times reading, parsing and writing them:

* **sink**: ``QdrantSink`` over a file source, the full production path:
  parsing and validation (msgspec fast path), batches of ``--batch-size``,
  dead-letter file, writes made durable and the file offset checkpointed
  every 5 s and at the end, collection created from the first record;
* **fair baseline: one upsert per record, no flush**: the reference
  connectors' loop at its cheapest on the same store: each line parsed
  (``json.loads``, no validation) into one ``client.upsert([point],
  wait=False)`` through qdrant-client to the same local service (no
  durability wait per record, no checkpoint);
* **same, parsed with msgspec**: the fair baseline with the sink's fast
  parser, to show what the parser alone is worth;
* **per record, durable**: one acknowledged write per record through the
  store (``client.upsert([point], wait=True)``), what the reference
  connector's per-record ``wait=true`` upsert costs here;
* **per record, durable, raw engine**: ``update([point])`` + ``flush()`` on a
  bare shard;
* **a reader during the stream**: a second process's top-10 queries on
  another collection of the same store, idle and while ``fiftyone-qdrant
  sink`` streams the records in (p50/p95/p99/max).

The sink and the two no-flush baselines run ``--rounds`` times, interleaved
(sink, baseline, baseline with msgspec, sink, ...), and the medians are
reported, with CPU time (user + system of this process and of the local
service, engine threads included). One durable write per record is slow, so those two run once, on
the first ``--baseline-records`` records (rates are per second, so they
compare).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import msgspec
import numpy as np
import qdrant_edge as qe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qdrant_client import models as qm  # noqa: E402

from fiftyone_qdrant import local  # noqa: E402
from fiftyone_qdrant.server import ServerStore  # noqa: E402
from fiftyone_qdrant.sink import (  # noqa: E402
    Checkpoint,
    CollectionSchema,
    QdrantSink,
    ServerTarget,
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


def _cpu(store_path: str = None) -> float:
    """CPU seconds of this process, plus the store's local service."""
    times = os.times()
    total = times.user + times.system
    address = local.read_address(store_path) if store_path else None
    if address is not None:
        import psutil

        service = psutil.Process(address.pid).cpu_times()
        total += service.user + service.system
    return total


def _fresh_store(path: str) -> ServerStore:
    local.stop_service(path)
    shutil.rmtree(path, ignore_errors=True)
    return ServerStore.local(path)


def bench_sink(records_path: str, work_dir: str, batch_size: int) -> dict:
    store_path = os.path.join(work_dir, "sink-store")
    shutil.rmtree(store_path, ignore_errors=True)
    dead_letter = os.path.join(work_dir, "dead.jsonl")
    for leftover in (dead_letter, dead_letter + ".checkpoint.json"):
        if os.path.exists(leftover):
            os.remove(leftover)
    store = _fresh_store(store_path)
    cpu, started = _cpu(store_path), time.perf_counter()
    with QdrantSink(ServerTarget(store), batch_size=batch_size, dead_letter_path=dead_letter) as sink:
        report = sink.run([file_source(records_path, Checkpoint(dead_letter + ".checkpoint.json"))])
    elapsed, cpu = time.perf_counter() - started, _cpu(store_path) - cpu
    store = ServerStore.local(store_path)
    assert store.count(COLLECTION) == report.records == report.written, report.summary()
    store.close()
    return {"records": report.records, "seconds": elapsed, "cpu_seconds": cpu,
            "records_per_s": report.records / elapsed}


def bench_per_record_no_flush(records_path: str, work_dir: str, dim: int, parser: str) -> dict:
    """The fair baseline: one parsed line, one upsert, no wait per record."""
    store_path = os.path.join(work_dir, "per-record-no-flush")
    store = _fresh_store(store_path)
    client = store.client
    loads = json.loads if parser == "json" else msgspec.json.decode
    cpu, started = _cpu(store_path), time.perf_counter()
    client.create_collection(COLLECTION, vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE))
    client.create_payload_index(COLLECTION, "sample_id", qm.PayloadSchemaType.KEYWORD)
    count = 0
    with open(records_path, "rb", buffering=1 << 20) as f:  # read as the sink reads files
        for line in f:
            doc = loads(line)
            client.upsert(COLLECTION, points=[qm.PointStruct(id=doc["id"], vector=doc["vectors"], payload=doc["payload"])],
                          wait=False)
            count += 1
    elapsed, cpu = time.perf_counter() - started, _cpu(store_path) - cpu
    assert store.count(COLLECTION) == count
    store.close()
    local.stop_service(store_path)
    return {"records": count, "seconds": elapsed, "cpu_seconds": cpu, "records_per_s": count / elapsed}


def _point(line: str) -> qe.Point:
    record = parse_record(line)
    return qe.Point(record.point_id, record.vectors[""], record.payload)


def _client_point(line: str) -> qm.PointStruct:
    record = parse_record(line)
    return qm.PointStruct(id=record.point_id, vector=record.vectors[""], payload=record.payload)


def _first_lines(records_path: str, limit: int) -> list:
    with open(records_path) as f:
        return [next(f) for _ in range(limit)]


def bench_per_record(records_path: str, work_dir: str, limit: int) -> dict:
    """One validated record, one acknowledged upsert: the connector's loop."""
    store_path = os.path.join(work_dir, "per-record-store")
    store = _fresh_store(store_path)
    lines = _first_lines(records_path, limit)
    # the collection exists up front (not timed), created as the sink would
    ServerTarget(store).create(
        COLLECTION, CollectionSchema.from_record(parse_record(lines[0]), "cosine"), ["sample_id"]
    )
    started = time.perf_counter()
    for line in lines:
        store.client.upsert(COLLECTION, points=[_client_point(line)], wait=True)
    elapsed = time.perf_counter() - started
    assert store.count(COLLECTION) == limit
    store.close()
    local.stop_service(store_path)
    return {"records": limit, "seconds": elapsed, "records_per_s": limit / elapsed}


def bench_per_record_raw_engine(records_path: str, work_dir: str, limit: int, dim: int) -> dict:
    """One durable write per record on a bare shard: update + flush."""
    shard = qe.EdgeShard.create(
        os.path.join(work_dir, "per-record-raw"),
        qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine), wal_enabled=True),
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


def bench_reader_during_stream(records_path: str, work_dir: str, dim: int, idle_s: float = 5.0) -> dict:
    """A second process's top-10 queries on a collection (as the App does)
    idle, then while ``fiftyone-qdrant sink`` streams the records into
    another collection of the same store, through the same local service."""
    store_path = os.path.join(work_dir, "reader-store")
    store = _fresh_store(store_path)
    # the collection queried: 20k points, as a FiftyOne index would be
    store.client.create_collection("queried", vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE))
    X = np.random.default_rng(1).standard_normal((20000, dim)).astype(np.float32)
    with store.batch("queried"):
        for lo in range(0, len(X), 1000):
            store.upsert("queried", list(range(lo + 1, lo + 1001)), X[lo:lo + 1000], [{} for _ in range(1000)])
    query = X[:1]

    def timed_queries(until) -> list:
        times = []
        while until():
            t0 = time.perf_counter()
            store.query_batch("queried", query, 10)
            times.append(time.perf_counter() - t0)
        return times

    end = time.monotonic() + idle_s
    idle = timed_queries(lambda: time.monotonic() < end)
    sink = subprocess.Popen([sys.executable, "-m", "fiftyone_qdrant.cli", "sink", records_path, "--path", store_path,
                             "--dead-letter", os.path.join(work_dir, "reader-dead.jsonl")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while sink.poll() is None and not store.collection_exists(COLLECTION):
        time.sleep(0.01)
    busy = timed_queries(lambda: sink.poll() is None)
    assert sink.wait() == 0
    written = store.count(COLLECTION)
    store.close()
    local.stop_service(store_path)

    def ms(times, q):
        return float(np.percentile(np.asarray(times) * 1000, q))

    return {"idle_p50_ms": ms(idle, 50), "idle_p95_ms": ms(idle, 95), "idle_p99_ms": ms(idle, 99),
            "streaming_p50_ms": ms(busy, 50), "streaming_p95_ms": ms(busy, 95), "streaming_p99_ms": ms(busy, 99),
            "streaming_max_ms": float(np.max(busy) * 1000), "queries_while_streaming": len(busy),
            "records_written": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--baseline-records", type=int, default=300,
                        help="records written one durable write at a time (default 300)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the sink and the no-flush baselines; medians reported (3)")
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
        rounds = {"sink": [], "no_flush_json": [], "no_flush_msgspec": []}
        for i in range(args.rounds):
            rounds["sink"].append(bench_sink(records_path, work_dir, args.batch_size))
            rounds["no_flush_json"].append(bench_per_record_no_flush(records_path, work_dir, args.dim, "json"))
            rounds["no_flush_msgspec"].append(bench_per_record_no_flush(records_path, work_dir, args.dim, "msgspec"))
            print("round %d: %s" % (i + 1, ", ".join("%s %.2fs" % (k, v[-1]["seconds"]) for k, v in rounds.items())))
        results = {name: _median(runs) for name, runs in rounds.items()}
        results["per_record"] = bench_per_record(records_path, work_dir, baseline_count)
        results["per_record_raw_engine"] = bench_per_record_raw_engine(records_path, work_dir, baseline_count,
                                                                       args.dim)
        results["reader_during_stream"] = bench_reader_during_stream(records_path, work_dir, args.dim)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    sink_rate = results["sink"]["records_per_s"]
    rows = [
        ("fiftyone-qdrant sink (batch %d)" % args.batch_size, results["sink"]),
        ("fair baseline: 1 upsert/record, no flush (json)", results["no_flush_json"]),
        ("same, parsed with msgspec", results["no_flush_msgspec"]),
        ("1 durable upsert/record through the store", results["per_record"]),
        ("1 durable upsert/record, raw engine (update+flush)", results["per_record_raw_engine"]),
    ]
    print()
    print("%-52s %8s %9s %9s %11s %9s" % ("", "records", "seconds", "CPU s", "records/s", "speed-up"))
    for label, r in rows:
        cpu = "%9.2f" % r["cpu_seconds"] if "cpu_seconds" in r else "%9s" % "-"
        print("%-52s %8d %9.2f %s %11.0f %8.2fx" % (label, r["records"], r["seconds"], cpu, r["records_per_s"],
                                                    sink_rate / r["records_per_s"]))
    reader = results["reader_during_stream"]
    print()
    print("a second process querying while the sink streams (top-10 over 20k points, ms):")
    print("  idle       p50 %.1f  p95 %.1f  p99 %.1f" % (reader["idle_p50_ms"], reader["idle_p95_ms"], reader["idle_p99_ms"]))
    print("  streaming  p50 %.1f  p95 %.1f  p99 %.1f  max %.1f  (%d queries)" % (
        reader["streaming_p50_ms"], reader["streaming_p95_ms"], reader["streaming_p99_ms"], reader["streaming_max_ms"],
        reader["queries_while_streaming"]))
    results["rounds"] = rounds
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


def _median(runs: list) -> dict:
    """Median seconds and CPU seconds over rounds (each key separately)."""
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"records": runs[0]["records"], "seconds": seconds,
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
            "records_per_s": runs[0]["records"] / seconds, "rounds": len(runs)}


if __name__ == "__main__":
    main()

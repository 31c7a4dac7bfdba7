"""The streaming sink on the real embedded engine: every connector message
format, deletes, dead letters, retries, crash recovery (in-process and a
SIGKILLed CLI), the CLI itself, and the FiftyOne bridge checked against
exact numpy rankings. Server paths run only when QDRANT_URL is set."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest


from fiftyone_qdrant import cli
from fiftyone_qdrant.server import ServerStore
from fiftyone_qdrant.errors import ConfigError
from fiftyone_qdrant.sink import (
    Checkpoint,
    FluvioSource,
    QdrantSink,
    RecordError,
    ServerTarget,
    SinkUnavailableError,
    Source,
    file_source,
    load_connector_config,
    parse_record,
)

from conftest import exact_top_k

CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "fiftyone-qdrant")
README_UUID = "f0ed0746-c140-4014-9dee-75f906cd0ad9"


# -- helpers ------------------------------------------------------------------


def line(collection, point_id, vectors=None, payload=None, key="vectors", **extra):
    doc = {"collection_name": collection, "id": point_id}
    if vectors is not None:
        doc[key] = vectors
    if payload is not None:
        doc["payload"] = payload
    doc.update(extra)
    return json.dumps(doc)


def tombstone(collection, point_id):
    """A Kafka-style tombstone: the record's value is null, its key names the point."""
    return json.dumps({"key": {"collection_name": collection, "id": point_id}, "value": None})


def sink_lines(path, lines, dead_letter=None, target=None, **options):
    target = target or ServerTarget(ServerStore.local(path))
    with QdrantSink(target, dead_letter_path=dead_letter, **options) as sink:
        return sink.write_lines(lines)


def read_points(path, collection):
    """Every point as {id: (vectors by name, payload)}; "" is the unnamed vector."""
    store = ServerStore.local(path)
    points, offset = {}, None
    try:
        while True:
            records, offset = store.client.scroll(
                collection, offset=offset, limit=1000, with_payload=True, with_vectors=True
            )
            for r in records:
                vector = r.vector if isinstance(r.vector, dict) else {"": r.vector}
                points[r.id if isinstance(r.id, int) else str(r.id)] = (vector, r.payload or {})
            if offset is None:
                return points
    finally:
        store.close()


def described(path, collection):
    """The collection's vectors as the sink sees them: name -> (kind, size), and the distance."""
    target = ServerTarget(ServerStore.local(path))
    try:
        schema = target.schema(collection)
        return {n: (v.kind, v.size) for n, v in schema.vectors.items()}, schema.distance
    finally:
        target.close()


def dead_letters(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def sparse_dict(v):
    return {"indices": list(v.indices), "values": list(v.values)}


def run_cli(args, input=None, timeout=120):
    env = dict(os.environ)
    env.pop("FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL", None)
    return subprocess.run(
        [CONSOLE_SCRIPT] + args, input=input, capture_output=True, text=True, timeout=timeout, env=env
    )


# -- every message format of the connector's documentation ---------------------

FORMATS = {
    "unnamed dense": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "named dense": {"some-image": [0.1, 0.2, 0.3, 0.4], "some-text": [0.5, 0.6, 0.7, 0.8, 0.9]},
    "sparse": {
        "some-sparse": {"indices": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                        "values": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}
    },
    "multi-vector": {"some-multi": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, 1.1, 1.2]]},
    "dense + sparse + multi": {
        "sparse": {"indices": [432, 5235, 523532], "values": [0.5235, 0.2423, 0.3]},
        "multi": [[0.5235, 0.2, 0.3, 0.325], [0.65643, 0.643, 0.6364, 0.9979]],
        "dense": [0.5235, 0.2, 0.3, 0.325],
    },
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_connector_message_format_round_trips(tmp_path, name):
    path = str(tmp_path / "store")
    vectors = FORMATS[name]
    records = [
        line("fluvio", README_UUID, vectors, {"some_key": False}),
        line("fluvio", 32, vectors, {"some_other_data": 3223}),
    ]
    report = sink_lines(path, records, distance="dotproduct")  # dot: stored as sent
    assert (report.written, report.dead_lettered, report.collections_created) == (2, 0, ["fluvio"])

    points = read_points(path, "fluvio")
    assert set(points) == {README_UUID, 32}
    stored, payload = points[README_UUID]
    assert payload == {"some_key": False}
    expected = {"": vectors} if isinstance(vectors, list) else vectors
    assert set(stored) == set(expected)
    for vector_name, value in expected.items():
        if isinstance(value, dict):
            assert list(stored[vector_name].indices) == value["indices"]
            np.testing.assert_allclose(stored[vector_name].values, value["values"], rtol=1e-6)
        else:
            np.testing.assert_allclose(stored[vector_name], value, rtol=1e-6)

    # the collection was created from the record's shapes
    shapes, distance = described(path, "fluvio")
    assert distance == "dotproduct" or all(kind == "sparse" for kind, _ in shapes.values())
    for vector_name, value in expected.items():
        if isinstance(value, dict):
            assert shapes[vector_name][0] == "sparse"
        else:
            kind, size = shapes[vector_name]
            assert size == (len(value[0]) if isinstance(value[0], list) else len(value))
            assert kind == ("multi" if isinstance(value[0], list) else "dense")


def test_cosine_by_default_distance_option_and_multivector_max_sim(tmp_path):
    path = str(tmp_path / "store")
    sink_lines(path, [line("cos", 1, [3, 4])])
    sink_lines(path, [line("l2", 1, {"m": [[1, 0], [0, 1]]})], distance="Euclid")
    assert described(path, "cos") == ({"": ("dense", 2)}, "cosine")
    assert described(path, "l2") == ({"m": ("multi", 2)}, "euclidean")
    np.testing.assert_allclose(read_points(path, "cos")[1][0][""], [0.6, 0.8], rtol=1e-6)  # normalized
    with pytest.raises(ConfigError):
        QdrantSink(ServerTarget(ServerStore.local(path)), distance="hamming")


def test_integer_literals_and_vector_alias(tmp_path):
    path = str(tmp_path / "store")
    report = sink_lines(path, [
        line("ints", 1, [1, 2, 3], key="vector"),
        line("ints", 2, [4, 5.5, -6]),
        line("named", 1, {"d": [1, 2], "s": {"indices": [3], "values": [7]}, "m": [[1, 2], [3, 4]]}, key="vector"),
    ], distance="dotproduct")
    assert report.written == 3 and report.dead_lettered == 0
    assert read_points(path, "ints")[1][0][""] == [1.0, 2.0, 3.0]
    named = read_points(path, "named")[1][0]
    assert named["d"] == [1.0, 2.0] and named["m"] == [[1.0, 2.0], [3.0, 4.0]]
    assert sparse_dict(named["s"]) == {"indices": [3], "values": [7.0]}


def test_deletes_and_last_write_wins_inside_a_batch(tmp_path):
    path = str(tmp_path / "store")
    sink_lines(path, [line("c", i, [float(i), 1.0]) for i in range(1, 6)], distance="dotproduct")
    report = sink_lines(path, [
        tombstone("c", 2),                   # delete
        tombstone("c", 4),
        tombstone("c", 5),
        line("c", 6, [6.0, 1.0]),
        tombstone("c", 6),                   # upsert then delete: gone
        tombstone("c", 7),
        line("c", 7, [7.0, 1.0]),            # delete then upsert: present
        line("c", 1, [10.0, 1.0]),
        line("c", 1, [11.0, 1.0]),           # last write wins
        tombstone("c", 99),                  # deleting a missing point is fine
        tombstone("nowhere", 1),             # ...and from a missing collection, reported as such
    ], distance="dotproduct")
    assert report.dead_lettered == 0 and report.superseded == 3
    assert (report.deleted, report.deletes_in_missing_collections) == (5, 1)
    assert "1 deletes in missing collections (nothing deleted)" in report.summary()
    points = read_points(path, "c")
    assert sorted(points) == [1, 3, 7]
    assert points[1][0][""] == [11.0, 1.0] and points[7][0][""] == [7.0, 1.0]
    assert not ServerStore.local(path).collection_exists("nowhere")


def test_uuid_spellings_are_one_id(tmp_path):
    path = str(tmp_path / "store")
    hex_id = README_UUID.replace("-", "").upper()
    report = sink_lines(path, [line("u", README_UUID, [1, 0]), line("u", hex_id, [0, 1])], distance="dotproduct")
    assert report.superseded == 1
    assert read_points(path, "u")[README_UUID][0][""] == [0.0, 1.0]


# -- malformed records go to the dead-letter file, nothing else is lost --------

BAD_RECORDS = [
    ('{"collection_name": "good", "id": 1, "vectors": [1, 2', "malformed JSON"),
    ("[1, 2, 3]", "expected a JSON object"),
    ('"just a string"', "expected a JSON object"),
    (line("good", 1, [1, 2, 3]).replace('"collection_name": "good", ', ""), "missing field 'collection_name'"),
    (json.dumps({"collection_name": "good", "vectors": [1, 2, 3]}), "missing field 'id'"),
    (line(7, 1, [1, 2, 3]), "'collection_name' must be a non-empty string"),
    (line("../escape", 1, [1, 2, 3]), "Invalid collection name"),
    (line("good", -1, [1, 2, 3]), "out of range"),
    (line("good", 2**64, [1, 2, 3]), "out of range"),
    (line("good", 1.5, [1, 2, 3]), "unsigned integer or a UUID"),
    (line("good", True, [1, 2, 3]), "unsigned integer or a UUID"),
    (line("good", "not-a-uuid", [1, 2, 3]), "is not a UUID"),
    ('{"collection_name": "good", "id": 9, "vectors": [1, NaN, 3]}', "non-finite value at index 1"),
    ('{"collection_name": "good", "id": 9, "vectors": [1, 2, Infinity]}', "non-finite value at index 2"),
    (line("good", 9, [1, 2, 1e39]), "non-finite value at index 2"),
    (line("good", 9, [1, "2", 3]), "element 1 is \"2\""),
    (line("good", 9, [1, True, 3]), "element 1 is true"),
    (line("good", 9, [1, None, 3]), "element 1 is null"),
    (line("good", 9, []), "is empty"),
    (line("good", 9, {}), "empty map"),
    (line("good", 9, "1,2,3"), "'vectors' must be a list"),
    (line("good", 9, [1, 2]), "has dimension 2 but collection 'good' stores a 3-d dense vector"),
    (line("good", 9, {"x": [1, 2, 3]}), "single unnamed vector"),
    (line("good", 9, [1, 2, 3], key="vectors", vector=[1, 2, 3]), "both 'vectors' and its alias"),
    (line("good", 9, [1, 2, 3], payload=[1]), "'payload' must be a JSON object"),
    (line("good", 9, {"indices": [1], "values": [0.5]}), "sparse vector must be named"),
    (line("named", 9, {"d": [1, 2]}), "vector 'd' has dimension 2 but collection 'named' stores a 4-d"),
    (line("named", 9, {"other": [1, 2, 3, 4]}), "no vector named 'other'"),
    (line("named", 9, [1, 2, 3, 4]), "has named vectors"),
    (line("named", 9, {"d": {"indices": [1], "values": [1.0]}}), "vector 'd' is a sparse vector"),
    (line("named", 9, {"s": [1, 2, 3, 4]}), "stores a sparse vector there"),
    (line("named", 9, {"m": [[1, 2], [3]]}), "rows of a multi-vector must have one size"),
    (line("named", 9, {"m": [[1, 2], 3]}), "row 1 of a multi-vector must be a list"),
    (line("named", 9, {"s": {"indices": [1, 2], "values": [0.5]}}), "has 2 indices but 1 values"),
    (line("named", 9, {"s": {"indices": [1, 1], "values": [0.5, 0.5]}}), "duplicate indices"),
    (line("named", 9, {"s": {"indices": [-1], "values": [0.5]}}), "0..2^32-1"),
    (line("named", 9, {"s": {"indices": [1.5], "values": [0.5]}}), "indices must be integers"),
    (line("named", 9, {"s": {"indices": [1], "vals": [0.5]}}), "got keys ['indices', 'vals']"),
    (line("named", 9, {"d": 5}), "must be a list of numbers, a list of lists"),
    (line("named", 9, {"": [1, 2, 3, 4]}), "vector names must be non-empty"),
]


def test_malformed_records_are_dead_lettered_and_nothing_else_is_lost(tmp_path):
    path = str(tmp_path / "store")
    dead_letter = str(tmp_path / "dead.jsonl")
    named = {"d": [1, 2, 3, 4], "s": {"indices": [1], "values": [1.0]}, "m": [[1, 2], [3, 4]]}
    lines, good_ids = [line("good", 0, [1, 2, 3]), line("named", 0, named)], {"good": {0}, "named": {0}}
    for i, (bad, _) in enumerate(BAD_RECORDS, start=1):
        lines.append(bad)
        lines.append(line("good", i, [i, 2, 3]))
        lines.append(line("named", i, {"d": [i, 1, 1, 1]}))
        good_ids["good"].add(i)
        good_ids["named"].add(i)
    lines.append("   ")  # blank lines are skipped, not dead-lettered
    report = sink_lines(path, lines, dead_letter, batch_size=7)

    assert report.dead_lettered == len(BAD_RECORDS)
    assert report.written == len(good_ids["good"]) + len(good_ids["named"])
    for collection, ids in good_ids.items():
        assert set(read_points(path, collection)) == ids
    letters = dead_letters(dead_letter)
    assert [x["line"] for x in letters] == [bad for bad, _ in BAD_RECORDS]
    for letter, (_, reason) in zip(letters, BAD_RECORDS):
        assert reason in letter["reason"], (letter["reason"], reason)
        assert letter["source"] == "<lines>" and isinstance(letter["offset"], int)


def test_existing_collection_from_fiftyone_is_checked_not_recreated(tmp_path):
    from fiftyone_qdrant.store import CollectionSpec

    path = str(tmp_path / "store")
    store = ServerStore.local(path)
    store.create_collection("made-by-fiftyone", CollectionSpec(dimension=3, metric="euclidean"), {"k": "v"})
    store.close()
    dead_letter = str(tmp_path / "dead.jsonl")
    lines = [line("made-by-fiftyone", 1, [1, 2, 3]), line("made-by-fiftyone", 2, [1, 2])]
    report = sink_lines(path, lines, dead_letter)
    assert (report.written, report.dead_lettered, report.collections_created) == (1, 1, [])
    assert "stores a 3-d dense vector" in dead_letters(dead_letter)[0]["reason"]
    assert ServerStore.local(path).get_metadata("made-by-fiftyone") == {"k": "v"}


def test_keyword_indexes_on_fiftyone_ids(tmp_path):
    path = str(tmp_path / "store")
    sink_lines(path, [
        line("patches", 1, [1, 2], {"sample_id": "a" * 24, "label_id": "b" * 24}),
        line("plain", 1, [1, 2], {"other": 1}),
    ])
    from qdrant_client import models as qm

    client = ServerStore.local(path).client
    schema = client.get_collection("patches").payload_schema
    assert sorted(schema) == ["label_id", "sample_id"]
    assert all(info.data_type == qm.PayloadSchemaType.KEYWORD for info in schema.values())
    assert client.get_collection("plain").payload_schema == {}


# -- retries, rejections and crashes -----------------------------------------


class FlakyTarget(ServerTarget):
    """The real engine behind a connection that drops ``failures`` times."""

    def __init__(self, store, failures):
        super().__init__(store)
        self.failures = failures

    def upsert(self, name, records):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("connection reset by peer")
        super().upsert(name, records)


class RejectingTarget(ServerTarget):
    """Rejects any batch holding a given id, as a server rejects a bad point."""

    def __init__(self, store, bad_id):
        super().__init__(store)
        self.bad_id = bad_id

    def upsert(self, name, records):
        if any(r.point_id == self.bad_id for r in records):
            raise ValueError("Wrong input: point %d is invalid" % self.bad_id)
        super().upsert(name, records)


class SimulatedCrash(BaseException):
    pass


class CrashingTarget(ServerTarget):
    """Dies right after its ``crash_after``-th write has landed, before the
    sink can commit it."""

    def __init__(self, store, crash_after):
        super().__init__(store)
        self.writes_left = crash_after

    def upsert(self, name, records):
        super().upsert(name, records)
        self.writes_left -= 1
        if self.writes_left == 0:
            raise SimulatedCrash()


def test_transient_errors_are_retried_with_backoff(tmp_path):
    path = str(tmp_path / "store")
    delays = []
    target = FlakyTarget(ServerStore.local(path), failures=3)
    report = sink_lines(path, [line("c", i, [i, 1]) for i in range(50)], target=target,
                        batch_size=20, sleep=delays.append, retry_base_s=1.0, retry_max_s=3.0)
    assert (report.written, report.retries, report.dead_lettered) == (50, 3, 0)
    assert delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 1.5 <= delays[2] <= 3.0  # doubling, capped, jittered
    assert len(read_points(path, "c")) == 50


def test_qdrant_down_stops_without_committing_and_a_rerun_resumes(tmp_path):
    path, data = str(tmp_path / "store"), tmp_path / "in.jsonl"
    data.write_text("".join(line("c", i, [i, 1]) + "\n" for i in range(100)))
    checkpoint = Checkpoint(str(tmp_path / "ckpt.json"))
    target = FlakyTarget(ServerStore.local(path), failures=10**6)
    with QdrantSink(target, batch_size=30, max_retries=2, sleep=lambda s: None) as sink:
        with pytest.raises(SinkUnavailableError, match="failed 3 times.*run the sink again") as raised:
            sink.run([file_source(str(data), checkpoint)])
    assert raised.value.report.retries == 2
    assert checkpoint.get("file:" + str(data)) is None  # nothing committed

    with QdrantSink(ServerTarget(ServerStore.local(path)), batch_size=30) as sink:
        report = sink.run([file_source(str(data), checkpoint)])
    assert report.written == 100 and len(read_points(path, "c")) == 100


def test_a_batch_qdrant_rejects_is_bisected_to_the_bad_record(tmp_path):
    path, dead_letter = str(tmp_path / "store"), str(tmp_path / "dead.jsonl")
    target = RejectingTarget(ServerStore.local(path), bad_id=13)
    report = sink_lines(path, [line("c", i, [i, 1]) for i in range(40)], dead_letter, target=target, batch_size=40)
    assert (report.written, report.dead_lettered) == (39, 1)
    (letter,) = dead_letters(dead_letter)
    assert letter["id"] == 13 and "point 13 is invalid" in letter["reason"]
    assert set(read_points(path, "c")) == set(range(40)) - {13}


def _stream_with_history(n):
    """Records with re-writes, deletes and bad lines, and the state and dead
    letters that applying them in order must give."""
    rng = np.random.default_rng(5)
    lines, state, bad = [], {}, []
    for i in range(n):
        vector = rng.integers(-50, 50, 4).tolist()
        lines.append(line("c", i, vector, {"n": i}))
        state[i] = vector
        if i % 7 == 6:
            lines.append(line("c", i - 3, [i, i, i, i], {"n": -i}))
            state[i - 3] = [i, i, i, i]
        if i % 11 == 10:
            lines.append(tombstone("c", i - 5))
            state.pop(i - 5, None)
        if i % 13 == 12:
            bad.append(line("c", i, [1, 2]))
            lines.append(bad[-1])
    return lines, state, bad


def _assert_state(path, state):
    points = read_points(path, "c")
    assert sorted(points) == sorted(state)
    for point_id, vector in state.items():
        assert points[point_id][0][""] == [float(v) for v in vector], point_id


def test_crash_after_some_batches_then_rerun_gives_every_id_exactly_once(tmp_path):
    path, data = str(tmp_path / "store"), tmp_path / "in.jsonl"
    dead_letter, checkpoint = str(tmp_path / "dead.jsonl"), Checkpoint(str(tmp_path / "ckpt.json"))
    lines, state, bad = _stream_with_history(2000)
    data.write_text("\n".join(lines) + "\n")
    key = "file:" + str(data)

    target = CrashingTarget(ServerStore.local(path), crash_after=4)
    with QdrantSink(target, batch_size=150, dead_letter_path=dead_letter, distance="dotproduct") as sink:
        with pytest.raises(SimulatedCrash):
            sink.run([file_source(str(data), checkpoint)])
    committed = checkpoint.get(key)
    assert 0 < committed < data.stat().st_size

    with QdrantSink(ServerTarget(ServerStore.local(path)), batch_size=150, dead_letter_path=dead_letter) as sink:
        report = sink.run([file_source(str(data), checkpoint)])
    assert 0 < report.records < len(lines)  # resumed, not restarted
    assert checkpoint.get(key) == data.stat().st_size
    _assert_state(path, state)
    assert {x["line"] for x in dead_letters(dead_letter)} == set(bad)  # at least once each, nothing else

    with QdrantSink(ServerTarget(ServerStore.local(path)), dead_letter_path=dead_letter) as sink:
        assert sink.run([file_source(str(data), checkpoint)]).records == 0  # idempotent re-run


class ListSource(Source):
    """What a Fluvio partition looks like to the sink: offsets and commits."""

    name = "fake-topic/0"

    def __init__(self, lines):
        self.lines = lines
        self.commits = []

    def __iter__(self):
        for offset, text in enumerate(self.lines):
            yield offset + 1, text

    def commit(self, offset):
        self.commits.append(offset)


def test_topic_offsets_are_committed_only_after_their_upsert(tmp_path):
    path = str(tmp_path / "store")
    source = ListSource([line("a" if i % 3 else "b", i, [i, 1]) for i in range(300)])
    target = CrashingTarget(ServerStore.local(path), crash_after=5)
    with QdrantSink(target, batch_size=40) as sink:
        with pytest.raises(SimulatedCrash):
            sink.run([source])
    assert source.commits == sorted(source.commits) and source.commits
    written = {c: set(read_points(path, c)) for c in ("a", "b")}
    committed = source.lines[: source.commits[-1]]
    for text in committed:  # every committed offset's record is in Qdrant
        record = json.loads(text)
        assert record["id"] in written[record["collection_name"]]


def test_a_collection_deleted_mid_run_is_created_again(tmp_path):
    path = str(tmp_path / "store")

    class DeletingSource(ListSource):
        def __iter__(self):
            for offset, text in super().__iter__():
                if offset == 51:  # someone deletes the collection meanwhile
                    ServerStore.local(path).delete_collection("c")
                yield offset, text

    source = DeletingSource([line("c", i, [i, 1]) for i in range(100)])
    with QdrantSink(ServerTarget(ServerStore.local(path)), batch_size=20) as sink:
        report = sink.run([source])
    assert report.collections_created == ["c", "c"] and report.dead_lettered == 0
    assert sorted(read_points(path, "c")) == list(range(40, 100))  # 0-39 went with the deletion


# -- issue 13: rotation, unfinished lines, exactly-once dead letters, explicit deletes

def _write_lines_file(path, lines, mode="w"):
    with open(path, mode) as f:
        f.write("".join(x + "\n" for x in lines))


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_a_replaced_longer_file_is_read_from_its_start(tmp_path, how):
    path, data = str(tmp_path / "store"), str(tmp_path / "in.jsonl")
    checkpoint = Checkpoint(str(tmp_path / "ckpt.json"))
    _write_lines_file(data, [line("rot", i, [i, 1]) for i in range(105)])
    with QdrantSink(ServerTarget(ServerStore.local(path)), distance="dotproduct") as sink:
        assert sink.run([file_source(data, checkpoint)]).written == 105
    inode = os.stat(data).st_ino

    # the producer's next file, longer, with other records at other offsets
    replacement = [line("rot", 1000 + i, [i, 2], {"generation": 2}) for i in range(300)]
    if how == "renamed over":
        _write_lines_file(data + ".tmp", replacement)
        os.replace(data + ".tmp", data)
        assert os.stat(data).st_ino != inode
    else:
        _write_lines_file(data, replacement)
        assert os.stat(data).st_ino == inode
    dead_letter = str(tmp_path / "dead.jsonl")
    with QdrantSink(ServerTarget(ServerStore.local(path)), dead_letter_path=dead_letter) as sink:
        report = sink.run([file_source(data, checkpoint)])
    assert (report.records, report.written, report.dead_lettered) == (300, 300, 0)
    assert sorted(read_points(path, "rot")) == list(range(105)) + list(range(1000, 1300))
    assert checkpoint.get("file:" + data) == os.path.getsize(data)
    assert not os.path.exists(dead_letter)

    # appending to the same file is not a replacement: only the new records are read
    _write_lines_file(data, [line("rot", 5000, [5, 5])], mode="a")
    with QdrantSink(ServerTarget(ServerStore.local(path))) as sink:
        report = sink.run([file_source(data, checkpoint)])
    assert (report.records, report.written) == (1, 1)


def test_a_line_the_producer_writes_in_two_parts_is_read_once_finished(tmp_path):
    path, data = str(tmp_path / "store"), tmp_path / "in.jsonl"
    dead_letter = str(tmp_path / "dead.jsonl")
    checkpoint = Checkpoint(dead_letter + ".checkpoint.json")
    key = "file:" + str(data)
    whole = line("two", 10, [10, 1], {"n": 10}) + "\n"
    first, rest = whole[:25], whole[25:]
    data.write_text("".join(line("two", i, [i, 1]) + "\n" for i in range(10)) + first)  # first write

    def run():
        with QdrantSink(ServerTarget(ServerStore.local(path)), dead_letter_path=dead_letter,
                        distance="dotproduct") as sink:
            return sink.run([file_source(str(data), checkpoint)])

    report = run()
    assert (report.written, report.dead_lettered) == (10, 0)
    assert report.unfinished_bytes == 25
    assert "unfinished last line (25 bytes)" in report.summary()
    assert checkpoint.get(key) == data.stat().st_size - 25  # committed up to the unfinished line
    with open(data, "a") as f:  # second write
        f.write(rest + line("two", 11, [11, 1]) + "\n")
    report = run()
    assert (report.records, report.written, report.dead_lettered, report.unfinished_bytes) == (2, 2, 0, 0)
    points = read_points(path, "two")
    assert sorted(points) == list(range(12)) and points[10] == ({"": [10.0, 1.0]}, {"n": 10})
    assert not os.path.exists(dead_letter)

    # a finished last line without a newline is a record; its newline later is nothing new
    with open(data, "a") as f:
        f.write(line("two", 12, [12, 1]))
    assert run().written == 1
    with open(data, "a") as f:
        f.write("\n" + line("two", 13, [13, 1]) + "\n")
    report = run()
    assert (report.records, report.written, report.dead_lettered) == (1, 1, 0)
    assert checkpoint.get(key) == data.stat().st_size
    assert sorted(read_points(path, "two")) == list(range(14))


def test_dead_letters_are_written_exactly_once_across_a_crash(tmp_path):
    path, data = str(tmp_path / "store"), tmp_path / "in.jsonl"
    dead_letter = str(tmp_path / "dead.jsonl")
    checkpoint = Checkpoint(dead_letter + ".checkpoint.json")
    lines, bad = [], []
    for i in range(1000):
        if i % 20 == 7:  # 50 records the collection rejects (wrong dimension)
            bad.append(line("once", i, [1, 2, 3]))
            lines.append(bad[-1])
        else:
            lines.append(line("once", i, [i, 1]))
    data.write_text("\n".join(lines) + "\n")

    target = CrashingTarget(ServerStore.local(path), crash_after=3)  # dies mid-run, after rejects it had written
    with QdrantSink(target, batch_size=100, dead_letter_path=dead_letter, distance="dotproduct") as sink:
        with pytest.raises(SimulatedCrash):
            sink.run([file_source(str(data), checkpoint)])
    committed = checkpoint.get("file:" + str(data))
    first = dead_letters(dead_letter)
    uncommitted = [x for x in first if x["offset"] > committed]
    assert uncommitted, "the crash must leave dead letters past the committed offset"

    with QdrantSink(ServerTarget(ServerStore.local(path)), batch_size=100, dead_letter_path=dead_letter) as sink:
        report = sink.run([file_source(str(data), checkpoint)])
    letters = dead_letters(dead_letter)
    assert [x["line"] for x in letters] == bad  # 50 letters, each bad record once, in order
    assert report.dead_letters_already_written == len(uncommitted)
    assert report.dead_lettered == 50 - len(first) + len(uncommitted)
    assert {x["source_key"] for x in letters} == {"file:" + str(data)}
    assert all(x["collection_name"] == "once" and "dimension 3" in x["reason"] for x in letters)
    assert [x["id"] for x in letters] == [i for i in range(1000) if i % 20 == 7]
    assert len(read_points(path, "once")) == 950


def test_run_sink_without_a_dead_letter_path_keeps_every_reject(tmp_path, monkeypatch):
    from fiftyone_qdrant.sink import DEFAULT_DEAD_LETTER_PATH, run_sink

    monkeypatch.chdir(tmp_path)
    path, data = str(tmp_path / "store"), tmp_path / "in.jsonl"
    lines = [line("rej", 0, [1.0, 2.0])]
    for i in range(1, 151):
        lines.append(line("rej", i, [1.0, 2.0, 3.0]))  # 150 rejects: wrong dimension
        lines.append(line("rej", 1000 + i, [i, 1.0]))
    data.write_text("\n".join(lines) + "\n")
    report = run_sink([str(data)], target=ServerTarget(ServerStore.local(path)))
    expected_path = str(tmp_path / DEFAULT_DEAD_LETTER_PATH)
    assert (report.written, report.dead_lettered, report.dead_letter_path) == (151, 150, expected_path)
    letters = dead_letters(expected_path)
    assert [x["id"] for x in letters] == list(range(1, 151))
    assert "dead letters in %s" % expected_path in report.summary()
    assert Checkpoint(expected_path + ".checkpoint.json").get("file:" + str(data)) == data.stat().st_size

    # the sink itself with no dead-letter file keeps all of them in the report
    with QdrantSink(ServerTarget(ServerStore.local(path))) as sink:
        report = sink.write_lines(lines)
    assert report.dead_letter_path is None and report.dead_lettered == 150
    assert [x.point_id for x in report.dead_letters] == list(range(1, 151))
    assert "dead letters in the report (no dead-letter file)" in report.summary()


def test_tombstones_delete_and_a_record_without_vectors_never_does(tmp_path):
    path, dead_letter = str(tmp_path / "store"), str(tmp_path / "dead.jsonl")
    sink_lines(path, [line("c", i, [i, 1], {"sample_id": "s%d" % i, "n": i}) for i in range(1, 5)],
               distance="dotproduct")
    report = sink_lines(path, [
        line("c", 1),                                          # forgot the vectors: refused, not a delete
        line("c", 2, payload={"n": 20, "tag": "x"}),           # payload update, merged, vectors kept
        json.dumps({"collection_name": "c", "id": 3, "vectors": None, "payload": {"tag": "y"}}),
        tombstone("c", 4),                                     # the explicit delete
        line("c", 9, payload={"a": 1}),                        # no such point: refused
        tombstone("gone", 1),                                  # no such collection: reported
        line("gone", 2, payload={"a": 1}),                     # no such collection: refused
        json.dumps({"key": {"id": 5}, "value": {"collection_name": "c", "id": 5, "vectors": [5, 1]}}),
        line("c", 6, [6, 1], {"n": 6}),
        line("c", 6, payload={"tag": "z"}),                    # after its upsert in the same batch
        "null",                                                # a tombstone without a key
    ], dead_letter, distance="dotproduct")
    points = read_points(path, "c")
    assert sorted(points) == [1, 2, 3, 5, 6]
    assert points[1] == ({"": [1.0, 1.0]}, {"sample_id": "s1", "n": 1})
    assert points[2] == ({"": [2.0, 1.0]}, {"sample_id": "s2", "n": 20, "tag": "x"})
    assert points[3] == ({"": [3.0, 1.0]}, {"sample_id": "s3", "n": 3, "tag": "y"})
    assert points[6] == ({"": [6.0, 1.0]}, {"n": 6, "tag": "z"})
    assert (report.written, report.payload_updated, report.deleted) == (2, 3, 1)
    assert (report.deletes_in_missing_collections, report.dead_lettered) == (1, 4)
    assert not ServerStore.local(path).collection_exists("gone")
    letters = {(x["collection_name"], x["id"]): x["reason"] for x in dead_letters(dead_letter)}
    assert sorted(letters, key=str) == sorted([("c", 1), ("c", 9), ("gone", 2), (None, None)], key=str)
    assert letters[("c", 1)].startswith("the record has no vectors and no payload") and "tombstone" in letters[("c", 1)]
    assert letters[("c", 9)].startswith("point 9 does not exist in collection 'c'")
    assert letters[("gone", 2)].startswith("collection 'gone' does not exist")
    assert letters[(None, None)].startswith("a tombstone (null value) needs a key")


def test_fluvio_tombstones_become_tombstone_lines():
    from fiftyone_qdrant.sink.sources import _fluvio_line

    class Record:  # the fluvio client's Record: value() and key() as lists of byte values
        def __init__(self, key, value):
            self._key, self._value = key, value

        def key(self):
            return list(self._key)

        def value(self):
            return list(self._value)

    tomb = _fluvio_line(Record(b'{"collection_name": "c", "id": 7}', b""))
    assert parse_record(tomb).is_delete and parse_record(tomb).point_id == 7
    assert parse_record(_fluvio_line(Record(b'{"id": 8}', b"null")), collection_name="c").point_id == 8
    plain = line("c", 1, [1, 2])
    assert _fluvio_line(Record(b"partition-key", plain.encode())) == plain.encode()  # keys of upserts are ignored
    with pytest.raises(RecordError, match="tombstone's key must be a JSON object"):
        parse_record(_fluvio_line(Record(b"not json", b"")))


def test_collection_name_override_and_refusing_unknown_collections(tmp_path):
    path, dead_letter = str(tmp_path / "store"), str(tmp_path / "dead.jsonl")
    report = sink_lines(path, [
        line("anything", 1, [1, 2]),
        json.dumps({"id": 2, "vectors": [2, 1]}),  # no collection_name: the override names it
        tombstone("other", 1),  # the override names the point too: fixed/1, upserted just before
    ], collection_name="fixed", distance="dotproduct")
    assert (report.written, report.deleted, report.superseded, report.collections_created) == (1, 1, 1, ["fixed"])
    assert sorted(read_points(path, "fixed")) == [2]

    report = sink_lines(path, [
        line("fixed", 3, [3, 1]),
        line("fixde", 4, [4, 1]),      # misspelt: refused, nothing created
        line("fixed", 5, [1, "x"]),    # refused while parsing: the letter still names collection and id
        line("fixed", -1, [1, 2]),
    ], dead_letter, create_collections=False)
    assert (report.written, report.dead_lettered, report.collections_created) == (1, 3, [])
    assert not ServerStore.local(path).collection_exists("fixde")
    letters = dead_letters(dead_letter)
    assert [(x["collection_name"], x["id"]) for x in letters] == [("fixde", 4), ("fixed", 5), ("fixed", None)]
    assert "collection 'fixde' does not exist" in letters[0]["reason"]
    assert "does not create collections" in letters[0]["reason"]
    assert sorted(read_points(path, "fixed")) == [2, 3]


def _listening_socket():
    """A TCP port that records the first bytes of each connection: what
    protocol a client speaks to it (no Qdrant behind it)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    received = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                received.append(conn.recv(64))
            except OSError:
                received.append(b"")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, received


def test_fluvio_connector_config_url_is_grpc(tmp_path):
    config = tmp_path / "config.yaml"
    server, received = _listening_socket()
    port = server.getsockname()[1]
    config.write_text("meta:\n  name: files\nqdrant:\n  url: http://127.0.0.1:%d\n  api_key: k\n" % port)
    data = tmp_path / "in.jsonl"
    data.write_text(line("c", 1, [1, 2]) + "\n")
    try:
        result = run_cli(["sink", str(data), "--connector-config", str(config), "--max-retries", "0",
                          "--timeout", "3", "--dead-letter", str(tmp_path / "dead.jsonl")])
    finally:
        server.close()
    assert received and all(r.startswith(b"PRI * HTTP/2.0") for r in received), received  # gRPC, not REST
    assert result.returncode == 3, result.stderr

    assert load_connector_config(str(config)).connection() == {
        "url": "http://127.0.0.1", "grpc_port": port, "prefer_grpc": True, "https": False, "api_key": "k"}
    tls = tmp_path / "tls.yaml"
    tls.write_text("meta:\n  topic: t\nqdrant:\n  url: https://xyz.cloud.qdrant.io\n")
    assert load_connector_config(str(tls)).connection() == {
        "url": "https://xyz.cloud.qdrant.io", "grpc_port": 6334, "prefer_grpc": True, "https": True, "api_key": None}


def test_fluvio_source_needs_the_optional_client():
    try:
        import fluvio  # noqa: F401

        pytest.skip("the fluvio client is installed; no cluster runs here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"pip install 'fiftyone-qdrant\[fluvio\]'"):
        next(iter(FluvioSource("topic")))


def test_connector_config_and_secrets(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "apiVersion: 0.1.0\nmeta:\n  version: 0.1.0\n  name: my-qdrant-connector\n  type: qdrant-sink\n"
        "  topic: topic-name\n  secrets:\n    - name: QDRANT_API_KEY\n"
        "qdrant:\n  url: https://xyz-example.cloud.qdrant.io:6334\n  api_key: \"${{ secrets.QDRANT_API_KEY }}\"\n"
    )
    secrets = tmp_path / "secrets.txt"
    secrets.write_text("# comment\nQDRANT_API_KEY=from-file\n")
    loaded = load_connector_config(str(config), str(secrets))
    assert (loaded.topic, loaded.url, loaded.api_key) == (
        "topic-name", "https://xyz-example.cloud.qdrant.io:6334", "from-file")
    assert load_connector_config(str(config), environ={"QDRANT_API_KEY": "from-env"}).api_key == "from-env"
    with pytest.raises(ConfigError, match="QDRANT_API_KEY"):
        load_connector_config(str(config), environ={})


def test_parse_record_is_the_one_validation_core():
    record = parse_record(b'{"collection_name": "c", "id": 3, "vector": {"a": [1, 2]}, "payload": {"k": 1}}')
    assert (record.collection_name, record.point_id, record.payload, record.is_delete) == ("c", 3, {"k": 1}, False)
    assert record.shapes["a"].describe() == "a 2-d dense vector"
    assert parse_record(tombstone("c", 3)).is_delete
    assert parse_record('{"collection_name": "c", "id": 3, "payload": {"k": 2}}').is_payload_update
    with pytest.raises(RecordError, match="missing field 'id'"):
        parse_record('{"collection_name": "c"}')


def test_the_fast_dense_path_gives_the_general_paths_records():
    """msgspec's typed decoder takes plain dense upserts; whatever it takes
    must be exactly what the general path makes of the line, and whatever
    it declines (every bad record) must take the general path."""
    from fiftyone_qdrant.sink.records import _parse_dense, _parse_general

    taken = [
        line("c", 3, [1, 2.5, -3e38]),
        line("c", README_UUID.upper(), {"a": [1, 2], "b": [0.5]}, {"k": [1, {"x": None}]}),
        line("c", 2**64 - 1, [1e-30], None),
        json.dumps({"id": 4, "vectors": [1.0]}),  # with an override only
    ]
    for text in taken[:3]:
        fast = _parse_dense(text, None)
        assert fast is not None, text
        assert dataclasses.asdict(fast) == dataclasses.asdict(_parse_general(text, None)), text
    assert _parse_dense(taken[3], None) is None
    assert _parse_dense(taken[3], "o").collection_name == "o" == parse_record(taken[3], "o").collection_name
    for bad, _ in BAD_RECORDS:
        if _parse_dense(bad, None) is not None:  # only records the general path accepts too
            _parse_general(bad, None)
    for declined in [line("c", 1, [1, 2], vector=[1, 2]), line("c", 1, {"indices": [1], "values": [0.5]}),
                     line("c", 1, {"s": {"indices": [1], "values": [0.5]}}), line("c", 1, [[1, 2], [3, 4]]),
                     line("c", 1, [3.5e38]), line("c", True, [1]), line("c", 1, {"": [1]}), tombstone("c", 1)]:
        assert _parse_dense(declined, None) is None, declined


# -- the CLI ------------------------------------------------------------------


def test_cli_stdin_exit_status_summary_and_help(tmp_path):
    store, dead_letter = str(tmp_path / "store"), str(tmp_path / "dl" / "dead.jsonl")
    good = "\n".join(line("cli", i, [i, 1.0]) for i in range(5)) + "\n"
    result = run_cli(["sink", "--path", store, "--dead-letter", dead_letter, "--json"], input=good)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["records"], summary["written"], summary["dead_lettered"]) == (5, 5, 0)
    assert "5 written, 0 deleted, 0 dead-lettered" in result.stderr and "records/s" in result.stderr

    result = run_cli(["sink", "-", "--path", store, "--dead-letter", dead_letter], input=tombstone("cli", 1) + "\n{oops\n")
    assert result.returncode == 1
    assert "1 deleted, 1 dead-lettered" in result.stderr and dead_letter in result.stderr
    assert dead_letters(dead_letter)[0]["line"] == "{oops"
    assert sorted(read_points(store, "cli")) == [0, 2, 3, 4]
    assert not os.path.exists(dead_letter + ".checkpoint.json")  # stdin is never checkpointed

    result = run_cli(["sink", str(tmp_path / "missing.jsonl"), "--path", store])
    assert result.returncode == 2 and "Cannot read input" in result.stderr

    help_text = run_cli(["sink", "--help"]).stdout
    assert "tombstone" in help_text and "--no-create-collections" in help_text and "--dead-letter" in help_text and "--distance" in help_text


def test_cli_sink_connector_options():
    args = cli.build_parser().parse_args(["sink", "in.jsonl", "--collection-name", "fixed", "--no-create-collections"])
    assert (args.collection_name, args.create_collections, args.inputs) == ("fixed", False, ["in.jsonl"])
    defaults = cli.build_parser().parse_args(["sink"])
    assert (defaults.collection_name, defaults.create_collections) == (None, True)


def test_cli_list_subcommand(tmp_path, capsys):
    store = str(tmp_path / "store")
    sink_lines(store, [line("listed", i, [i, 1.0]) for i in range(3)])
    assert cli.main(["list", "--path", store, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["collection_name"], listed["size"], listed["runs"]) == ("listed", 3, [])


@pytest.mark.slow
def test_cli_killed_mid_file_then_rerun_loses_and_duplicates_nothing(tmp_path):
    store, data = str(tmp_path / "store"), tmp_path / "big.jsonl"
    dead_letter = str(tmp_path / "dead.jsonl")
    checkpoint = dead_letter + ".checkpoint.json"
    n = 40000
    vectors = np.random.default_rng(3).integers(-1000, 1000, (n, 16))
    with open(data, "w") as f:
        for i, v in enumerate(vectors.tolist()):
            f.write(line("big", i, v, {"sample_id": "%024x" % i}) + "\n")
    size = data.stat().st_size
    args = ["sink", str(data), "--path", store, "--dead-letter", dead_letter, "--batch-size", "500",
            "--commit-interval", "0.3", "--distance", "dotproduct"]

    process = subprocess.Popen([CONSOLE_SCRIPT] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            committed = Checkpoint(checkpoint).get("file:" + str(data)) or 0
        except ConfigError:
            committed = 0  # caught mid-write: never happens with rename, but be safe
        if committed > 0:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the sink finished before it could be killed"
    committed = Checkpoint(checkpoint).get("file:" + str(data))
    assert 0 < committed < size

    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert "0 dead-lettered" in result.stderr
    points = read_points(store, "big")
    assert sorted(points) == list(range(n))
    for i in (0, 1, n // 2, n - 1):
        assert points[i][0][""] == [float(x) for x in vectors[i]]
        assert points[i][1] == {"sample_id": "%024x" % i}
    assert Checkpoint(checkpoint).get("file:" + str(data)) == size

    again = run_cli(args)
    assert again.returncode == 0 and "0 records" in again.stderr


def test_cli_streaming_stdin_writes_while_idle(tmp_path):
    store = str(tmp_path / "store")
    process = subprocess.Popen(
        [CONSOLE_SCRIPT, "sink", "--path", store, "--dead-letter", str(tmp_path / "dead.jsonl"), "--max-delay", "0.2"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        process.stdin.write(line("live", 1, [1.0, 2.0]) + "\n")
        process.stdin.flush()
        deadline, seen = time.monotonic() + 30, {}
        while time.monotonic() < deadline and not seen:
            if ServerStore.local(store).collection_exists("live"):
                seen = read_points(store, "live")
            time.sleep(0.1)
        assert list(seen) == [1]  # written although stdin is still open
        process.stdin.write(line("live", 2, [2.0, 1.0]) + "\n")
    finally:
        process.stdin.close()
    assert process.wait(timeout=30) == 0
    assert sorted(read_points(store, "live")) == [1, 2]


def _read_until(stream, text: str, timeout: float) -> str:
    """What ``stream`` printed up to the first line containing ``text``."""
    import select

    seen, deadline = b"", time.monotonic() + timeout
    while text.encode() not in seen:  # raw reads: nothing left in a Python buffer
        assert select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0], (
            "no %r within %.0f s; got: %s" % (text, timeout, seen.decode()))
        got = os.read(stream.fileno(), 65536)
        assert got, "the process ended first: %s" % seen.decode()
        seen += got
    return seen.decode()


def test_cli_sigterm_writes_what_was_read_then_exits_130(tmp_path):
    store = str(tmp_path / "store")
    process = subprocess.Popen(
        [CONSOLE_SCRIPT, "sink", "-v", "--path", store, "--dead-letter", str(tmp_path / "dead.jsonl"),
         "--max-delay", "60"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    process.stdin.write("".join(line("t", i, [i, 1.0]) + "\n" for i in range(5)) + '{"collection_name": "t", "id"')
    process.stdin.flush()
    started = _read_until(process.stderr, "Reading <stdin>", timeout=60)  # start-up imports FiftyOne
    time.sleep(1.0)  # read, but not due for 60 s
    process.send_signal(signal.SIGTERM)  # stdin stays open: no end of input
    process.wait(timeout=30)
    stderr = started + process.stderr.read()
    process.stdin.close()
    process.stderr.close()
    assert process.returncode == 130, stderr
    assert "5 written" in stderr
    assert sorted(read_points(store, "t")) == list(range(5))  # the unfinished line is not a record


# -- the FiftyOne bridge -------------------------------------------------------


def test_sink_output_attaches_as_fiftyone_indexes(tmp_path, dataset_factory, store_path):
    import fiftyone.brain as fob

    dataset = dataset_factory(40, num_patches=2, seed=4)
    sample_ids = dataset.values("id")
    rng = np.random.default_rng(8)
    image = rng.normal(size=(40, 12)).astype(np.float32)
    lines = []
    for i, sample_id in enumerate(sample_ids):  # foreign ids: the sample id is in the payload
        lines.append(line("images", 1000 + i, {
            "image": image[i].tolist(),
            "keywords": {"indices": [i, i + 100], "values": [1.0, 0.5]},
        }, {"sample_id": sample_id}))
    label_ids = [d.id for dets in dataset.values("ground_truth") for d in dets.detections]
    label_samples = [s for s, dets in zip(sample_ids, dataset.values("ground_truth")) for _ in dets.detections]
    patch = rng.normal(size=(len(label_ids), 6)).astype(np.float32)
    for i, (label_id, sample_id) in enumerate(zip(label_ids, label_samples)):
        payload = {"sample_id": sample_id, "label_id": label_id}
        lines.append(line("patches", str(uuid.uuid4()), patch[i].tolist(), payload))
    report = sink_lines(store_path, lines)
    assert report.written == len(lines) and report.dead_lettered == 0

    fob.compute_similarity(dataset, backend="qdrant", embeddings=False, collection_name="images",
                           vector_name="image", brain_key="streamed", path=store_path)
    for q in (0, 13, 39):
        expected, _ = exact_top_k(sample_ids, image, image[q], "cosine", k=6)
        assert dataset.sort_by_similarity(sample_ids[q], k=6, brain_key="streamed").values("id") == expected

    fob.compute_similarity(dataset, backend="qdrant", embeddings=False, collection_name="patches",
                           patches_field="ground_truth", brain_key="streamed_patches", path=store_path)
    patches = dataset.to_patches("ground_truth")
    for q in (0, 41):
        expected, _ = exact_top_k(label_ids, patch, patch[q], "cosine", k=5)
        view = patches.sort_by_similarity(label_ids[q], k=5, brain_key="streamed_patches")
        assert [d.id for d in view.values("ground_truth")] == expected


# -- a Qdrant server ------------------------------------------------------------


def _check_server_target(client, collection, tmp_path):
    dead_letter = str(tmp_path / "dead.jsonl")
    vectors = FORMATS["dense + sparse + multi"]
    lines = [
        line(collection, README_UUID, vectors, {"sample_id": "a" * 24}),
        line(collection, 32, {"dense": [1, 2, 3, 4]}),
        line(collection, 33, {"dense": [1, 2, 3, 4]}),
        tombstone(collection, 33),
        line(collection, 34, {"dense": [1, 2, 3]}),
        tombstone(collection + "-missing", 1),
    ]
    target = ServerTarget(client)
    with QdrantSink(target, dead_letter_path=dead_letter, distance="dotproduct") as sink:
        report = sink.write_lines(lines)
        assert (report.written, report.deleted, report.dead_lettered) == (2, 1, 1)
        assert report.deletes_in_missing_collections == 1
        # payload-only updates through qdrant-client: merged into the existing point, a missing one refused
        update = sink.write_lines([line(collection, 32, payload={"tag": "x"}), line(collection, 77, payload={"a": 1})])
        assert (update.payload_updated, update.dead_lettered) == (1, 2)  # one report for the sink's life
        assert client.retrieve(collection, [32])[0].payload == {"tag": "x"}
        assert "point 77 does not exist in collection" in dead_letters(dead_letter)[-1]["reason"]
        points = {str(p.id): p for p in client.retrieve(collection, [README_UUID, 32, 33], with_vectors=True)}
        assert set(points) == {README_UUID, "32"}
        np.testing.assert_allclose(points[README_UUID].vector["dense"], vectors["dense"], rtol=1e-6)
        np.testing.assert_allclose(points[README_UUID].vector["multi"], vectors["multi"], rtol=1e-6)
        assert sorted(points[README_UUID].vector["sparse"].indices) == [432, 5235, 523532]
        assert points[README_UUID].payload == {"sample_id": "a" * 24}
        assert "stores a 4-d dense vector" in dead_letters(dead_letter)[0]["reason"]
        schema = target.schema(collection)
        assert schema.distance == "dotproduct" and schema.vectors["multi"].kind == "multi"
        assert not client.collection_exists(collection + "-missing")


def test_server_target_on_qdrant_client_local_mode(tmp_path):
    """The server code paths (qdrant-client models, schema reading) against
    qdrant-client's own in-process implementation of the server API."""
    from qdrant_client import QdrantClient

    import warnings

    with warnings.catch_warnings():
        # local mode warns (once per process) that payload indexes do nothing
        warnings.simplefilter("ignore", UserWarning)
        _check_server_target(QdrantClient(":memory:"), "local", tmp_path)


def test_cli_unreachable_server_stops_with_status_3(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(line("c", 1, [1, 2]) + "\n")
    dead_letter = str(tmp_path / "dead.jsonl")
    result = run_cli(["sink", str(data), "--url", "http://127.0.0.1:9", "--max-retries", "1",
                      "--dead-letter", dead_letter])
    assert result.returncode == 3, result.stderr
    assert "Connection refused" in result.stderr and "run the sink again" in result.stderr
    assert not os.path.exists(dead_letter)  # an outage is not the records' fault
    assert Checkpoint(dead_letter + ".checkpoint.json").get("file:" + str(data)) is None


def test_cli_takes_unset_settings_from_brain_config_json(tmp_path):
    """Like a brain run: an embedded path, then a server URL and API key,
    read from ``brain_config.json`` when no flag or variable sets them; an
    explicit ``--path`` still writes to that embedded store."""
    data = tmp_path / "in.jsonl"
    data.write_text(line("from_config", 1, [1, 2]) + "\n")
    brain_config = tmp_path / "brain_config.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIFTYONE_BRAIN_SIMILARITY_QDRANT_")}
    env["FIFTYONE_BRAIN_CONFIG_PATH"] = str(brain_config)

    def sink(*args):
        command = [CONSOLE_SCRIPT, "sink", str(data), "--dead-letter", str(tmp_path / "dead.jsonl"), "--from-start"]
        return subprocess.run(command + list(args), capture_output=True, text=True, timeout=120, env=env)

    store = tmp_path / "configured-store"
    brain_config.write_text(json.dumps({"similarity_backends": {"qdrant": {"path": str(store)}}}))
    result = sink()
    assert result.returncode == 0, result.stderr
    assert list(read_points(str(store), "from_config")) == [1]

    key = "sentinel-brain-config-key-5521"
    brain_config.write_text(json.dumps(
        {"similarity_backends": {"qdrant": {"url": "http://127.0.0.1:9", "api_key": key, "timeout": 2}}}))
    result = sink("--max-retries", "0")
    assert result.returncode == 3, result.stderr
    assert "http://127.0.0.1:9" in result.stderr and key not in result.stderr + result.stdout

    # an explicit --path means the embedded store, whatever URL is configured
    explicit = tmp_path / "explicit-store"
    result = sink("--path", str(explicit))
    assert result.returncode == 0, result.stderr
    assert list(read_points(str(explicit), "from_config")) == [1]


def test_server_errors_never_carry_the_api_key(tmp_path):
    """A client error whose text echoes the API key (e.g. a URL with
    credentials) is reported redacted, in the log, the exception and its
    chain."""
    import logging


    key = "sentinel-sink-key-7291"

    class UnreachableClient:  # injects the fault; the sink's handling is what is tested
        def collection_exists(self, name):
            raise ConnectionError("cannot reach https://user:%s@qdrant.example:6333" % key)

        def close(self):
            pass

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fiftyone_qdrant.sink").addHandler(handler)
    try:
        with pytest.raises(SinkUnavailableError) as info:
            with QdrantSink(ServerTarget(UnreachableClient(), api_key=key), dead_letter_path=str(tmp_path / "dead.jsonl"),
                            max_retries=2, sleep=lambda s: None) as sink:
                sink.write_lines([line("c", 1, [1, 2])])
    finally:
        logging.getLogger("fiftyone_qdrant.sink").removeHandler(handler)
    error = info.value
    assert "failed 3 times" in str(error) and "user:***@qdrant.example" in str(error)
    assert error.__cause__ is None and error.__context__ is None
    assert len(records) == 2 and all(key not in r.getMessage() and "***" in r.getMessage() for r in records)


@pytest.mark.server
@pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason="needs a Qdrant server: set QDRANT_URL")
def test_server_target_on_a_real_server(tmp_path):
    from qdrant_client import QdrantClient

    def connect():
        return QdrantClient(url=os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY"))

    collection = "fiftyone-qdrant-sink-test-%s" % uuid.uuid4().hex[:8]
    try:
        _check_server_target(connect(), collection, tmp_path)
        assert "sample_id" in connect().get_collection(collection).payload_schema  # keyword index for FiftyOne
    finally:
        connect().delete_collection(collection)

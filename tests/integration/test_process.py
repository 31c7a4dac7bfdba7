"""What other processes see: plugin routing in a fresh interpreter, an index
shared with a second process (like the App server), and runs created by
FiftyOne's built-in Qdrant backend."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fiftyone.brain as fob

from conftest import exact_top_k, random_embeddings


def run_python(code: str, env_update=None, timeout=120) -> str:
    env = dict(os.environ)
    env.update(env_update or {})
    for key, value in list(env.items()):
        if value is None:
            del env[key]
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


ROUTING = """
import sys
import fiftyone.brain as fob
print(fob.brain_config.similarity_backends["qdrant"]["config_cls"], "fiftyone_qdrant.similarity" in sys.modules)
"""


def test_fresh_process_routes_qdrant_to_this_package():
    out = run_python(ROUTING)
    assert out == "fiftyone_qdrant.similarity.QdrantSimilarityConfig False"


def test_explicit_config_cls_wins_and_plugin_can_be_disabled():
    custom = "fiftyone.brain.internal.core.qdrant.QdrantSimilarityConfig"
    out = run_python(ROUTING, {"FIFTYONE_BRAIN_SIMILARITY_QDRANT_CONFIG_CLS": custom})
    assert out.split()[0] == custom
    out = run_python(ROUTING, {"FIFTYONE_QDRANT_DISABLE_PLUGIN": "true"})
    assert out.split()[0] == custom


def test_default_backend_env_var(dataset_factory, store_path):
    dataset = dataset_factory(8)
    dataset.persistent = True
    try:
        out = run_python(
            f"""
            import numpy as np, fiftyone as fo, fiftyone.brain as fob
            ds = fo.load_dataset({dataset.name!r})
            r = fob.compute_similarity(ds, embeddings=np.random.rand(8, 4), brain_key="dflt", path={store_path!r})
            print(type(r).__module__, r.total_index_size)
            """,
            {"FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND": "qdrant"},
        )
    finally:
        dataset.persistent = False
    assert out == "fiftyone_qdrant.similarity 8"


def test_second_process_queries_while_first_holds_the_store(dataset_factory, store_path):
    dataset = dataset_factory(500)
    dataset.persistent = True
    ids = dataset.values("id")
    X = random_embeddings(500, 16, seed=21)
    index = fob.compute_similarity(
        dataset.limit(400), embeddings=X[:400], backend="qdrant", brain_key="shared", path=store_path
    )
    # this process keeps its shard open while the child loads and queries
    assert dataset.sort_by_similarity(ids[0], k=3, brain_key="shared").values("id")[0] == ids[0]

    child = f"""
        import json, fiftyone as fo
        ds = fo.load_dataset({dataset.name!r})
        print(json.dumps(ds.sort_by_similarity({ids[1]!r}, k=10, brain_key="shared").values("id")))
    """
    try:
        expected, _ = exact_top_k(ids[:400], X[:400], X[1], "cosine", k=10)
        assert json.loads(run_python(child)) == expected

        # writes made here are seen by the next query of another process
        index.add_to_index(X[400:], ids[400:])
        expected, _ = exact_top_k(ids, X, X[1], "cosine", k=10)
        assert json.loads(run_python(child)) == expected

        # and writes made there are seen here
        run_python(
            f"""
            import fiftyone as fo
            ds = fo.load_dataset({dataset.name!r})
            ds.load_brain_results("shared").remove_from_index({ids[:250]!r})
            print("ok")
            """
        )
        assert index.total_index_size == 250
        expected, _ = exact_top_k(ids[250:], X[250:], X[300], "cosine", k=10)
        assert dataset.sort_by_similarity(ids[300], k=10, brain_key="shared").values("id") == expected
    finally:
        dataset.persistent = False


def _make_builtin_style_run(dataset, X, key, collection):
    """A run as FiftyOne's built-in Qdrant backend leaves it: its class
    paths in the records, point ids ObjectId+'00000000', payload only
    ``sample_id``, no payload index."""
    from fiftyone_qdrant import points as idmap
    from fiftyone_qdrant.connection import ConnectionSettings
    from fiftyone_qdrant.store import CollectionSpec
    from fiftyone_qdrant.similarity import QdrantSimilarityConfig

    sample_ids = dataset.values("id")
    store = ConnectionSettings().open()  # the default (env) embedded store
    store.create_collection(collection, CollectionSpec(dimension=X.shape[1], metric="cosine"), {})
    store.upsert(collection, idmap.to_point_ids(sample_ids), X, [{"sample_id": s} for s in sample_ids])

    config = QdrantSimilarityConfig(collection_name=collection, metric="cosine")
    method = config.build()
    method.register_run(dataset, key)
    method.save_run_results(dataset, key, method.initialize(dataset, key))

    builtin = "fiftyone.brain.internal.core.qdrant.QdrantSimilarity"
    run_doc = dataset._doc.brain_methods[key]
    stored = dict(run_doc.config)
    stored["cls"] = builtin + "Config"
    stored = {k: v for k, v in stored.items() if k not in ("path", "vector_name", "search_params", "model_spec", "timeout")}
    run_doc.config = stored
    results = json.loads(run_doc.results.read().decode())
    results["cls"] = builtin + "Index"
    run_doc.results.delete()
    run_doc.results.put(json.dumps(results).encode(), content_type="application/json")
    run_doc.save()
    dataset.save()


def test_builtin_backend_runs_load_query_and_migrate(dataset_factory):
    import fiftyone_qdrant as foq
    from fiftyone_qdrant.similarity import QdrantSimilarityIndex

    dataset = dataset_factory(60)
    dataset.persistent = True
    ids = dataset.values("id")
    X = random_embeddings(60, 8, seed=22)
    collection = "legacy-" + dataset.name.replace(":", "-").replace(" ", "-")[-40:]
    _make_builtin_style_run(dataset, X, "legacy", collection)
    expected, _ = exact_top_k(ids, X, X[5], "cosine", k=6)
    try:
        assert dataset._doc.brain_methods["legacy"].config["cls"].startswith("fiftyone.brain.internal")

        # a fresh process that never imports fiftyone_qdrant loads and queries it
        out = run_python(
            f"""
            import json, sys, fiftyone as fo
            ds = fo.load_dataset({dataset.name!r})
            got = ds.sort_by_similarity({ids[5]!r}, k=6, brain_key="legacy").values("id")
            print(json.dumps([type(ds.load_brain_results("legacy")).__module__, got]))
            """
        )
        module, got = json.loads(out)
        assert module == "fiftyone_qdrant.similarity" and got == expected

        assert foq.migration.builtin_run_keys(dataset) == ["legacy"]
        with pytest.raises(ValueError, match=r"Not runs of FiftyOne's built-in Qdrant backend: \['nope'\]"):
            foq.migrate_builtin_runs(dataset, brain_keys=["legacy", "nope"])
        assert foq.migration.builtin_run_keys(dataset) == ["legacy"]  # checked before anything was rewritten
        assert foq.migrate_builtin_runs(dataset) == ["legacy"]
        dataset.reload()
        assert dataset._doc.brain_methods["legacy"].config["cls"] == "fiftyone_qdrant.similarity.QdrantSimilarityConfig"
        assert foq.migration.builtin_run_keys(dataset) == []
        index = dataset.load_brain_results("legacy", cache=False)
        assert isinstance(index, QdrantSimilarityIndex)
        assert dataset.sort_by_similarity(ids[5], k=6, brain_key="legacy").values("id") == expected
        emb, _, _ = index.get_embeddings(ids[:2])
        np.testing.assert_allclose(emb, X[:2] / np.linalg.norm(X[:2], axis=1, keepdims=True), atol=1e-5)
        index.cleanup()
    finally:
        dataset.persistent = False

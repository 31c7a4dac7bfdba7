"""Model builds and text prompts end to end: a real (tiny, trained) open_clip
model, ``compute_similarity(model=...)`` streaming into the embedded store,
and ``sort_by_similarity("a red circle")`` in this process and in a fresh
one, checked against the exact numpy ranking."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fiftyone.brain as fob

import fiftyone_qdrant.models as models

import tiny_clip


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)
    return tiny_clip.ensure_tiny_clip(cache.mkdir("tiny-clip") if cache else tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def model(tiny):
    return models.resolve_model("open_clip:" + tiny.arch, tiny.model_kwargs, device="cpu").model


@pytest.fixture
def shapes(tmp_path):
    dataset = tiny_clip.build_shapes_dataset(tiny_clip.write_shape_images(tmp_path / "img", 36))
    dataset.persistent = True  # a subprocess loads it
    yield dataset
    dataset.delete()


def prompt_ranking(index, model, prompt, k):
    """The exact ranking of the prompt's embedding against what is stored."""
    emb, sample_ids, _ = index.get_embeddings()
    text = models.embed_prompts(model, [prompt])[0]
    sims = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (text / np.linalg.norm(text))
    return [sample_ids[i] for i in np.argsort(-sims, kind="stable")[:k]]


def test_text_prompts_in_process_and_in_a_fresh_process(shapes, model, store_path):
    index = fob.compute_similarity(shapes, model=model, backend="qdrant", brain_key="clip", path=store_path)
    assert index.total_index_size == 36
    assert index.config.supports_prompts and index.config.model_spec["model"].startswith("open_clip:")
    assert shapes.get_brain_info("clip").config.supports_prompts

    view = shapes.sort_by_similarity("a red circle", k=4, brain_key="clip")
    assert view.values("id") == prompt_ranking(index, model, "a red circle", 4)
    assert view.values("ground_truth.label") == ["red circle"] * 4

    # the App server is another process: it reloads the model from the spec
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import json, fiftyone as fo
            ds = fo.load_dataset({shapes.name!r})
            view = ds.sort_by_similarity("a blue square", k=4, brain_key="clip")
            print(json.dumps(view.values("ground_truth.label")))
        """)],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["blue square"] * 4


def test_patch_index_with_a_model(tmp_path, model, store_path):
    images = tiny_clip.write_shape_images(tmp_path / "multi", 6, shapes_per_image=3, image_size=96)
    dataset = tiny_clip.build_shapes_dataset(images)
    index = fob.compute_similarity(
        dataset, model=model, patches_field="shapes", backend="qdrant", brain_key="patches", path=store_path
    )
    label_ids = dataset.values("shapes.detections.id", unwind=True)
    assert sorted(index.label_ids) == sorted(label_ids)
    emb, _, lids = index.get_embeddings(label_ids=label_ids)
    text = models.embed_prompts(model, ["a green triangle"])[0]
    sims = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (text / np.linalg.norm(text))
    expected = [lids[i] for i in np.argsort(-sims, kind="stable")[:3]]
    got = dataset.to_patches("shapes").sort_by_similarity("a green triangle", k=3, brain_key="patches")
    assert got.values("shapes.id") == expected
    dataset.delete()


def test_interrupted_build_resumes_and_unreadable_images_are_skipped(shapes, model, store_path, caplog):
    ids = shapes.values("id")
    # a first build that stopped after 20 samples (its run never saved results)
    partial = fob.compute_similarity(
        shapes.limit(20), model=model, backend="qdrant", brain_key="resume", path=store_path
    )
    fob.Similarity.save_run_results(shapes, "resume", None)
    stale = shapes._doc.brain_methods["resume"]
    assert not stale.results
    before, _, _ = partial.get_embeddings(sample_ids=ids[:20])

    broken = shapes.skip(30).first()
    broken.filepath = "/nonexistent/missing.png"
    broken.save()
    import logging

    with caplog.at_level(logging.WARNING):
        index = fob.compute_similarity(shapes, model=model, backend="qdrant", brain_key="resume", path=store_path)
    assert index.collection_name == partial.collection_name
    assert index.total_index_size == 35  # every sample once, minus the unreadable one
    assert broken.id not in set(index.sample_ids)
    assert "missing.png" in caplog.text
    after, _, _ = index.get_embeddings(sample_ids=ids[:20])
    np.testing.assert_array_equal(before, after)  # not embedded again


def test_prompt_on_an_index_without_a_reloadable_model_is_a_clear_error(shapes, store_path):
    fob.compute_similarity(
        shapes, embeddings=np.random.rand(36, 8), backend="qdrant", brain_key="plain", path=store_path
    )
    with pytest.raises(ValueError, match="does not support prompts"):
        shapes.sort_by_similarity("a red circle", k=3, brain_key="plain")


def test_prompt_warning_only_for_models_no_process_can_reload(shapes, model, store_path):
    """fiftyone-brain warns that an index built from a model instance cannot
    answer prompts in other processes; for models built by
    ``resolve_model`` that is false (their spec is stored), so it is dropped."""
    import copy
    import logging

    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("fiftyone.brain.similarity")
    log.addHandler(handler)
    try:
        reloadable = fob.compute_similarity(shapes, model=model, backend="qdrant", brain_key="spec", path=store_path)
        assert reloadable.config.model_spec is not None
        assert not [r for r in records if "will not support prompt" in r.getMessage()]

        plain = copy.copy(model)  # the same network, as a bare FiftyOne model instance
        del plain.__dict__[models.SPEC_ATTRIBUTE]
        bare = fob.compute_similarity(shapes, model=plain, backend="qdrant", brain_key="bare", path=store_path)
        assert bare.config.model_spec is None
        assert [r for r in records if "will not support prompt" in r.getMessage()]
    finally:
        log.removeHandler(handler)

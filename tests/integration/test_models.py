"""Tests for fiftyone_qdrant.models with a real (tiny, locally trained)
open_clip model and a real FiftyOne database: no downloads, no mocks."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import fiftyone as fo
import fiftyone.utils.open_clip as fouoc
import fiftyone.utils.torch as fout

import tiny_clip
from fiftyone_qdrant import models

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny(request, tmp_path_factory) -> tiny_clip.TinyClip:
    """Trained once, then cached in .pytest_cache across sessions (when the cache plugin is on)."""
    cache = getattr(request.config, "cache", None)
    return tiny_clip.ensure_tiny_clip(cache.mkdir("tiny-clip") if cache else tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def resolved(tiny) -> models.ResolvedModel:
    return models.resolve_model("open_clip:" + tiny.arch, tiny.model_kwargs, device="cpu")


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory):
    """27 one-shape images, 3 of each colour x shape."""
    images = tiny_clip.write_shape_images(tmp_path_factory.mktemp("shapes"), 27)
    dataset = tiny_clip.build_shapes_dataset(images)
    yield dataset
    dataset.delete()


@pytest.fixture(scope="module")
def patches_dataset(tmp_path_factory):
    """5 images with 3 shapes each, boxed in the ``shapes`` Detections field."""
    images = tiny_clip.write_shape_images(tmp_path_factory.mktemp("multi"), 5, shapes_per_image=3, image_size=96)
    dataset = tiny_clip.build_shapes_dataset(images)
    yield dataset
    dataset.delete()


def _all_rows(batches):
    embeddings = np.concatenate([batch.embeddings for batch in batches])
    sample_ids = [sid for batch in batches for sid in batch.sample_ids]
    return embeddings, sample_ids


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- specs and resolution -----------------------------------------------------


def test_parse_model_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert models.parse_model_spec("open_clip:ViT-B-32@laion2b_s34b_b79k") == {
        "model": "open_clip:ViT-B-32",
        "model_kwargs": {"pretrained": "laion2b_s34b_b79k"},
    }
    # local paths become absolute, so another process finds the same file
    spec = models.parse_model_spec("open_clip:ViT-B-32", {"pretrained": "weights/ckpt.pt", "text_prompt": "A photo of"})
    assert spec["model_kwargs"] == {"pretrained": str(tmp_path / "weights" / "ckpt.pt"), "text_prompt": "A photo of"}
    assert json.loads(json.dumps(spec)) == spec
    # zoo names pass through untouched
    assert models.parse_model_spec("clip-vit-base32-torch") == {"model": "clip-vit-base32-torch", "model_kwargs": {}}

    for bad_name, bad_kwargs, message in [
        ("open_clip:ViT-B-32", None, "pretrained"),
        ("open_clip:ViT-B-32@", None, "after '@'"),
        ("open_clip:", {"pretrained": "x"}, "architecture"),
        ("open_clip:ViT-B-32@openai", {"pretrained": "laion2b_s34b_b79k"}, "pretrained"),
        ("open_clip:ViT-B-32@openai", {"classes": {"a", "b"}}, "JSON"),
        ("clip-vit-base32-torch", {"device": "cuda"}, "device="),
        ("", None, "non-empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            models.parse_model_spec(bad_name, bad_kwargs)


@settings(max_examples=50, deadline=None)
@given(
    arch=st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_."), min_size=1, max_size=20),
    tag=st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_"), min_size=1, max_size=20),
)
def test_shorthand_equals_kwargs(arch, tag):
    shorthand = models.parse_model_spec("open_clip:%s@%s" % (arch, tag))
    assert shorthand == models.parse_model_spec("open_clip:" + arch, {"pretrained": tag})
    assert models.parse_model_spec(shorthand["model"], shorthand["model_kwargs"]) == shorthand  # idempotent


def test_resolve_open_clip_spec_with_local_checkpoint(tiny, resolved):
    assert isinstance(resolved.model, fouoc.TorchOpenClipModel)
    assert resolved.spec == tiny.spec
    assert resolved.supports_prompts
    assert resolved.device == torch.device("cpu")
    assert models.model_spec_of(resolved.model) == tiny.spec  # the instance carries its spec
    assert models.embed_prompts(resolved, ["a red circle", "a blue square"]).shape == (2, 64)

    # the shorthand resolves to the same spec
    shorthand = models.resolve_model("open_clip:%s@%s" % (tiny.arch, tiny.checkpoint_path), {"config_path": tiny.config_path})
    assert shorthand.spec == tiny.spec


def test_resolve_model_instance(tiny, resolved):
    config = fouoc.TorchOpenClipModelConfig(
        {"clip_model": tiny.arch, "pretrained": tiny.checkpoint_path, "device": "cpu", "text_prompt": ""}
    )
    instance = fouoc.TorchOpenClipModel(config)
    result = models.resolve_model(instance)
    assert result.model is instance
    assert result.spec is None  # cannot be reloaded in another process
    assert result.supports_prompts
    np.testing.assert_allclose(
        models.embed_prompts(result, "a red circle"), models.embed_prompts(resolved, "a red circle"), atol=1e-6
    )

    # a model built from a spec keeps it when passed back as an instance
    assert models.resolve_model(resolved.model).spec == tiny.spec
    assert models.resolve_model(resolved).model is resolved.model
    with pytest.raises(ValueError, match="model_kwargs"):
        models.resolve_model(instance, {"pretrained": "x"})


def test_load_model_from_spec_in_a_fresh_process(tiny, resolved):
    """The App server reloads the model from the JSON spec alone: no
    tiny_clip import, the config is registered from the spec's config_path."""
    code = (
        "import json, sys\n"
        "from fiftyone_qdrant.models import load_model_from_spec, embed_prompts\n"
        "model = load_model_from_spec(json.loads(sys.argv[1]))\n"
        "print(json.dumps(embed_prompts(model, ['a green triangle']).tolist()))\n"
    )
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(resolved.spec)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_allclose(reloaded, models.embed_prompts(resolved, ["a green triangle"]), atol=1e-5)


def test_select_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.select_device().type == expected
    assert models.select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="Invalid device"):
        models.select_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            models.select_device("cuda:1")


def test_instance_on_another_device_is_refused(resolved):
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="cannot be moved"):
            models.resolve_model(resolved.model, device="cuda")
    assert models.resolve_model(resolved.model, device="cpu").model is resolved.model


@needs_cuda
def test_cuda_half_precision_matches_cpu(tiny, resolved, shapes_dataset):
    on_gpu = models.resolve_model("open_clip:" + tiny.arch, tiny.model_kwargs, device="cuda")
    assert on_gpu.device.type == "cuda"
    iterator = models.iter_embedding_batches(shapes_dataset, on_gpu, batch_size=8, num_workers=2)
    gpu_embeddings, gpu_ids = _all_rows(list(iterator))
    cpu_embeddings, cpu_ids = _all_rows(list(models.iter_embedding_batches(shapes_dataset, resolved, num_workers=0)))
    assert gpu_ids == cpu_ids and gpu_embeddings.dtype == np.float32
    cosine = (_normalize(gpu_embeddings) * _normalize(cpu_embeddings)).sum(axis=1)
    assert cosine.min() > 0.999  # float16 autocast
    np.testing.assert_allclose(models.embed_prompts(on_gpu, "a red circle"), models.embed_prompts(resolved, "a red circle"), atol=1e-3)


# -- streaming embeddings -----------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 1, None])  # None: the first batch picks 0 or the recommended count
def test_iter_embedding_batches_matches_embed_all(resolved, shapes_dataset, num_workers):
    iterator = models.iter_embedding_batches(shapes_dataset, resolved, batch_size=10, num_workers=num_workers)
    batches = list(iterator)
    if num_workers is None:
        assert iterator.num_workers in (0, fout.recommend_num_workers(None))
    assert [len(batch) for batch in batches] == [10, 10, 7]
    assert all(batch.label_ids is None and batch.embeddings.dtype == np.float32 for batch in batches)
    embeddings, sample_ids = _all_rows(batches)
    assert sample_ids == shapes_dataset.values("id")
    assert iterator.failures == [] and iterator.num_embedded == 27 and iterator.num_skipped == 0

    images = [Image.open(path).convert("RGB") for path in shapes_dataset.values("filepath")]
    expected = resolved.model.embed_all(images)  # FiftyOne's own path
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_the_first_batch_decides_whether_loader_workers_pay_off(resolved, shapes_dataset, tmp_path):
    # per-batch costs measured by benchmarks/bench_embedding.py on 2 cores, 1 worker
    vit_b_32 = dict(decode_s=0.1, forward_s=1.4, workers=1, all_threads=2, threads_beside=1)
    tiny = dict(decode_s=0.05, forward_s=0.02, workers=1, all_threads=2, threads_beside=1)
    assert not models._workers_pay_off(**vit_b_32) and models._workers_pay_off(**tiny)

    # an unreadable first batch leaves nothing to time: the rest still streams
    dataset = fo.Dataset()
    try:
        dataset.add_samples([fo.Sample(filepath=str(tmp_path / ("missing-%d.png" % i))) for i in range(4)])
        dataset.add_samples([fo.Sample(filepath=path) for path in shapes_dataset.values("filepath")])
        iterator = models.iter_embedding_batches(dataset, resolved, batch_size=4)
        batches = list(iterator)
        assert [failure.sample_id for failure in iterator.failures] == dataset.values("id")[:4]
        assert [sid for batch in batches for sid in batch.sample_ids] == dataset.values("id")[4:]
    finally:
        dataset.delete()


def test_cpu_bfloat16_is_opt_in(resolved, shapes_dataset):
    view = shapes_dataset.limit(9)
    exact, _ = _all_rows(list(models.iter_embedding_batches(view, resolved, num_workers=0)))
    fast, _ = _all_rows(list(models.iter_embedding_batches(view, resolved, num_workers=0, half_precision=True)))
    assert fast.dtype == np.float32 and not np.array_equal(fast, exact)
    assert (_normalize(fast) * _normalize(exact)).sum(axis=1).min() > 0.99


def test_patches_are_cropped_like_fiftyone(resolved, patches_dataset):
    label_ids = [det.id for dets in patches_dataset.values("shapes") for det in dets.detections]
    label_sample_ids = [sid for sid, dets in zip(patches_dataset.values("id"), patches_dataset.values("shapes")) for _ in dets.detections]
    assert len(label_ids) == 15

    # batches never exceed batch_size: an image's 3 patches are split over two batches
    batches = list(models.iter_embedding_batches(patches_dataset, resolved, patches_field="shapes", batch_size=2, num_workers=1))
    assert max(len(batch) for batch in batches) == 2
    embeddings, sample_ids = _all_rows(batches)
    assert [lid for batch in batches for lid in batch.label_ids] == label_ids
    assert sample_ids == label_sample_ids

    expected = patches_dataset.compute_patch_embeddings(resolved.model, "shapes", progress=False)
    np.testing.assert_allclose(embeddings, np.concatenate([expected[sid] for sid in patches_dataset.values("id")]), atol=1e-5)

    # each crop shows one shape: the crop's best caption is its label
    captions = ["a " + label for dets in patches_dataset.values("shapes") for label in [d.label for d in dets.detections]]
    prompt_embeddings = models.embed_prompts(resolved, list(tiny_clip.CAPTIONS))
    best = (_normalize(embeddings) @ _normalize(prompt_embeddings).T).argmax(axis=1)
    accuracy = np.mean([tiny_clip.CAPTIONS[i] == caption for i, caption in zip(best, captions)])
    assert accuracy >= 0.8


def test_other_patch_label_types(resolved, patches_dataset):
    """Detection, Polylines and Keypoints fields give the same crops as the
    Detections with the same boxes, keyed by their own label ids."""
    reference, _ = _all_rows(list(models.iter_embedding_batches(patches_dataset, resolved, patches_field="shapes", num_workers=0)))
    dataset = patches_dataset.clone()
    try:
        for sample in dataset.iter_samples(autosave=True):
            boxes = [det.bounding_box for det in sample.shapes.detections]
            corners = [[(x, y), (x + w, y), (x + w, y + h), (x, y + h)] for x, y, w, h in boxes]
            sample["first_shape"] = sample.shapes.detections[0].copy()
            sample["outlines"] = fo.Polylines(polylines=[fo.Polyline(points=[c], closed=True) for c in corners])
            sample["corners"] = fo.Keypoints(keypoints=[fo.Keypoint(points=c) for c in corners])
        for field, expected_rows in [("first_shape", reference[::3]), ("outlines", reference), ("corners", reference)]:
            batches = list(models.iter_embedding_batches(dataset, resolved, patches_field=field, num_workers=0))
            embeddings, _ = _all_rows(batches)
            label_path = field + ".id" if field == "first_shape" else "%s.%s.id" % (field, "polylines" if field == "outlines" else "keypoints")
            expected_ids = dataset.values(label_path, unwind=True)
            assert [lid for batch in batches for lid in batch.label_ids] == expected_ids, field
            np.testing.assert_allclose(embeddings, expected_rows, atol=1e-5, err_msg=field)
    finally:
        dataset.delete()
    with pytest.raises(ValueError, match="patches_field"):
        models.iter_embedding_batches(patches_dataset, resolved, patches_field="ground_truth")  # a Classification


def test_skip_ids(resolved, shapes_dataset, patches_dataset):
    ids = shapes_dataset.values("id")
    skipped = set(ids[::2])
    iterator = models.iter_embedding_batches(shapes_dataset, resolved, batch_size=4, num_workers=0, skip_ids=skipped)
    batches = list(iterator)
    assert [sid for batch in batches for sid in batch.sample_ids] == ids[1::2]
    assert all(len(batch) <= 4 for batch in batches)
    assert iterator.num_skipped == len(skipped) and iterator.num_embedded == len(ids) - len(skipped)

    label_ids = [det.id for dets in patches_dataset.values("shapes") for det in dets.detections]
    iterator = models.iter_embedding_batches(patches_dataset, resolved, patches_field="shapes", num_workers=0, skip_ids=label_ids[:7])
    assert [lid for batch in iterator for lid in batch.label_ids] == label_ids[7:]
    assert iterator.num_skipped == 7


def test_unreadable_images_are_skipped_and_reported(resolved, shapes_dataset, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    missing = str(tmp_path / "missing.png")
    dataset = shapes_dataset.clone()
    try:
        dataset.add_samples([fo.Sample(filepath=missing), fo.Sample(filepath=str(corrupt))])
        bad_ids = dataset.values("id")[-2:]
        failures = []
        iterator = models.iter_embedding_batches(dataset, resolved, batch_size=8, num_workers=1, failures=failures)
        batches = list(iterator)
        embedded_ids = [sid for batch in batches for sid in batch.sample_ids]
        assert embedded_ids == dataset.values("id")[:-2]
        assert failures is iterator.failures
        assert [f.sample_id for f in failures] == bad_ids
        assert failures[0].filepath == missing and "FileNotFoundError" in failures[0].error
        summary = iterator.failure_summary()
        assert "2 image(s)" in summary and missing in summary and str(corrupt) in summary

        with pytest.raises(RuntimeError, match="missing.png"):
            list(models.iter_embedding_batches(dataset, resolved, batch_size=8, num_workers=0, skip_failures=False))
    finally:
        dataset.delete()


def test_prompts_rank_matching_images_first(resolved, shapes_dataset):
    embeddings, _ = _all_rows(list(models.iter_embedding_batches(shapes_dataset, resolved, num_workers=0)))
    labels = np.array(shapes_dataset.values("ground_truth.label"))
    prompt_embeddings = models.embed_prompts(resolved, list(tiny_clip.CAPTIONS))
    assert prompt_embeddings.shape == (9, 64) and prompt_embeddings.dtype == np.float32
    scores = _normalize(prompt_embeddings) @ _normalize(embeddings).T
    precisions = []
    for caption, caption_scores in zip(tiny_clip.CAPTIONS, scores):
        ranked = labels[np.argsort(-caption_scores)]
        assert "a " + ranked[0] == caption, (caption, ranked[:3])
        precisions.append(np.mean(["a " + label == caption for label in ranked[:3]]))
    assert np.mean(precisions) >= 0.9


# -- failures of weights ------------------------------------------------------

# A hub URL on a local port nobody listens on: "no network", even on a machine that has one
_REFUSING_HUB = "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"


def test_unknown_tag_or_missing_file_fails_immediately(tmp_path):
    with pytest.raises(ValueError, match="Unknown pretrained tag 'no-such-tag'.*laion2b_s34b_b79k"):
        models.resolve_model("open_clip:ViT-B-32@no-such-tag", device="cpu")
    with pytest.raises(ValueError, match="Checkpoint file not found"):
        models.resolve_model("open_clip:ViT-B-32", {"pretrained": str(tmp_path / "nope.pt")}, device="cpu")
    with pytest.raises(ValueError, match="Unknown open_clip architecture"):
        models.resolve_model("open_clip:NoSuchArch@openai", device="cpu")


@pytest.mark.parametrize("offline_env", [False, True])
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("open_clip:ViT-B-32", {"pretrained": "laion2b_s34b_b79k"}),
        ("open-clip-torch", {"clip_model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}),  # zoo model on open_clip
    ],
)
def test_named_tag_without_network_fails_fast(tmp_path, monkeypatch, offline_env, name, kwargs):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", _REFUSING_HUB)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"model_kwargs=\{'pretrained': '/path/to/checkpoint.pt'\}") as error:
        models.resolve_model(name, kwargs, device="cpu")
    assert time.perf_counter() - start < 10
    assert ("HF_HUB_OFFLINE" if offline_env else "unreachable") in str(error.value)


def test_cached_tag_loads_offline(tiny, resolved, tmp_path, monkeypatch):
    """A tag whose weights are in the Hugging Face cache loads without
    touching the network (no 45 s of retries)."""
    import huggingface_hub.constants
    import open_clip.pretrained

    snapshot = tmp_path / "models--tiny-org--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(open(tiny.checkpoint_path, "rb").read())
    (tmp_path / "models--tiny-org--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--tiny-org--tiny-clip" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", _REFUSING_HUB)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny.arch, {"cached": {"hf_hub": "tiny-org/tiny-clip/"}})

    start = time.perf_counter()
    cached = models.resolve_model("open_clip:%s@cached" % tiny.arch, {"config_path": tiny.config_path}, device="cpu")
    assert time.perf_counter() - start < 10
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored
    np.testing.assert_allclose(
        models.embed_prompts(cached, "a red circle"), models.embed_prompts(resolved, "a red circle"), atol=1e-6
    )


def test_mismatched_checkpoint(tiny, tmp_path):
    wide_config = dict(tiny_clip.MODEL_CONFIG, embed_dim=32)
    config_path = tmp_path / "tiny-clip-test-wide.json"
    config_path.write_text(json.dumps(wide_config))
    with pytest.raises(ValueError, match="does not match the open_clip architecture 'tiny-clip-test-wide'"):
        models.resolve_model(
            "open_clip:tiny-clip-test-wide", {"pretrained": tiny.checkpoint_path, "config_path": str(config_path)}, device="cpu"
        )

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="Could not load checkpoint"):
        models.resolve_model("open_clip:" + tiny.arch, {"pretrained": str(garbage), "config_path": tiny.config_path}, device="cpu")

    with pytest.raises(ValueError, match="registers 'tiny-clip-test', not 'other'"):
        models.resolve_model("open_clip:other", {"pretrained": tiny.checkpoint_path, "config_path": tiny.config_path})

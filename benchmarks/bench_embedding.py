"""Images/s of fiftyone_qdrant's streaming embedder vs FiftyOne's compute_embeddings.

Both embed the same generated PNGs with the same model instance (an open_clip
model loaded from a local checkpoint: a random-init ViT-B-32 by default, or
the tiny test model with ``--model tiny``), one timed run each, after one
untimed warm-up batch. FiftyOne runs twice: with its defaults (batch size 1)
and with our batch size and worker count, to separate what batching buys
from the rest. Embeddings are checked to agree.

    python benchmarks/bench_embedding.py                      # CPU, ViT-B-32, 160 images
    python benchmarks/bench_embedding.py --model tiny --num-images 2000
    python benchmarks/bench_embedding.py --device cuda --num-images 5000

With ``--device cuda`` it also reports our float16 images/s and the GPU
utilisation sampled while our embedder runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_REPO_ROOT, os.path.join(_REPO_ROOT, "tests", "integration")]

from scratch import make_scratch_dir, start_private_mongod  # noqa: E402

# Images, checkpoint and a database of our own, all removed at exit
_WORK_DIR = make_scratch_dir("embedding-bench-")
start_private_mongod(os.path.join(_WORK_DIR, "db"))
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tiny_clip  # noqa: E402  (shape images and the tiny model)
from fiftyone_qdrant import models  # noqa: E402


class GpuUtilizationSampler:
    """Samples GPU utilisation (%) in a background thread while active."""

    def __init__(self, device: torch.device, interval_s: float = 0.2):
        self.device = device
        self.interval_s = interval_s
        self.samples: List[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._read = self._pick_reader()

    def _pick_reader(self) -> Optional[Callable[[], float]]:
        try:
            torch.cuda.utilization(self.device)  # needs pynvml
            return lambda: float(torch.cuda.utilization(self.device))
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            index = self.device.index or 0
            command = ["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return lambda: float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self._read())

    def __enter__(self) -> "GpuUtilizationSampler":
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *args) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> str:
        if self._read is None:
            return "n/a (neither pynvml nor nvidia-smi available)"
        if not self.samples:
            return "n/a (run too short to sample)"
        return "mean %.0f%%, max %.0f%% (%d samples)" % (np.mean(self.samples), np.max(self.samples), len(self.samples))


def build_model(args, checkpoint_dir: str) -> models.ResolvedModel:
    """The same local-checkpoint path a user without internet would take."""
    if args.model == "tiny":
        tiny = tiny_clip.ensure_tiny_clip(os.path.join(_REPO_ROOT, ".pytest_cache", "d", "tiny-clip"))
        return models.resolve_model("open_clip:" + tiny.arch, tiny.model_kwargs, device=args.device)
    import open_clip

    checkpoint = os.path.join(checkpoint_dir, "ViT-B-32-random.pt")
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    torch.save(model.state_dict(), checkpoint)
    del model
    return models.resolve_model("open_clip:ViT-B-32", {"pretrained": checkpoint}, device=args.device)


def time_ours(dataset, resolved, batch_size, num_workers, half_precision=None):
    """Seconds, embeddings and the loader workers used (``None``: ours choose)."""
    start = time.perf_counter()
    iterator = models.iter_embedding_batches(
        dataset, resolved, batch_size=batch_size, num_workers=num_workers, half_precision=half_precision
    )
    embeddings = np.concatenate([batch.embeddings for batch in iterator])
    if resolved.device.type == "cuda":
        torch.cuda.synchronize(resolved.device)
    return time.perf_counter() - start, embeddings, iterator.num_workers


def time_fiftyone(dataset, resolved, batch_size, num_workers):
    start = time.perf_counter()
    embeddings = dataset.compute_embeddings(resolved.model, batch_size=batch_size, num_workers=num_workers, progress=False)
    return time.perf_counter() - start, np.asarray(embeddings, dtype=np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["vit-b-32", "tiny"], default="vit-b-32")
    parser.add_argument("--num-images", type=int, default=None, help="default: 160 for ViT-B-32 on CPU, 2000 otherwise")
    parser.add_argument("--image-size", type=int, default=320, help="side of the generated PNGs")
    parser.add_argument("--batch-size", type=int, default=None, help="ours; default 32 on CPU, 128 on CUDA")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="loader workers; default: ours choose from the first batch, FiftyOne's recommendation")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the model (default: torch's)")
    parser.add_argument("--cpu-bf16", action="store_true", help="also time ours with half_precision=True (bf16) on CPU")
    parser.add_argument("--skip-fiftyone-defaults", action="store_true", help="skip FiftyOne with batch size 1")
    args = parser.parse_args()

    import fiftyone.utils.torch as fout

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = str(models.select_device(args.device))
    on_cuda = args.device.startswith("cuda")
    num_images = args.num_images or (160 if args.model == "vit-b-32" and not on_cuda else 2000)
    batch_size = args.batch_size or (models.DEFAULT_CUDA_BATCH_SIZE if on_cuda else models.DEFAULT_CPU_BATCH_SIZE)
    num_workers = fout.recommend_num_workers(args.num_workers)

    images = tiny_clip.write_shape_images(os.path.join(_WORK_DIR, "images"), num_images, image_size=args.image_size)
    dataset = tiny_clip.build_shapes_dataset(images)
    resolved = build_model(args, _WORK_DIR)
    print(
        "model=%s device=%s images=%d (%dx%d PNG) torch_threads=%d cpus=%d batch_size=%d num_workers=%d"
        % (args.model, args.device, num_images, args.image_size, args.image_size, torch.get_num_threads(),
           os.cpu_count(), batch_size, num_workers)
    )
    print("load average before: %.1f %.1f %.1f" % os.getloadavg())
    time_ours(dataset.limit(batch_size), resolved, batch_size, 0)  # warm-up: allocator, oneDNN/cuDNN kernels

    results = []
    with GpuUtilizationSampler(resolved.device) if on_cuda else contextlib.nullcontext() as sampler:
        seconds, ours, ours_workers = time_ours(dataset, resolved, batch_size, args.num_workers)
    label = "fiftyone_qdrant iter_embedding_batches (num_workers=%d%s)" % (
        ours_workers, "" if args.num_workers is not None else ", chosen")
    results.append((label + (" fp16 autocast" if on_cuda else ""), seconds))
    if on_cuda:
        seconds, _, _ = time_ours(dataset, resolved, batch_size, args.num_workers, half_precision=False)
        results.append(("fiftyone_qdrant iter_embedding_batches (fp32)", seconds))
    elif args.cpu_bf16:
        seconds, _, _ = time_ours(dataset, resolved, batch_size, args.num_workers, half_precision=True)
        results.append(("fiftyone_qdrant iter_embedding_batches (bf16 autocast, opt-in)", seconds))

    seconds, theirs = time_fiftyone(dataset, resolved, batch_size, num_workers)
    results.append(("FiftyOne compute_embeddings (batch_size=%d, num_workers=%d)" % (batch_size, num_workers), seconds))
    if ours_workers != num_workers:  # FiftyOne with the worker count ours chose, too
        seconds, _ = time_fiftyone(dataset, resolved, batch_size, ours_workers)
        results.append(("FiftyOne compute_embeddings (batch_size=%d, num_workers=%d)" % (batch_size, ours_workers),
                        seconds))
    cosine = np.sum(_normalize(ours) * _normalize(theirs), axis=1)
    if not args.skip_fiftyone_defaults:
        seconds, _ = time_fiftyone(dataset, resolved, None, None)
        results.append(("FiftyOne compute_embeddings (defaults: batch_size=1)", seconds))

    ours_rate = num_images / results[0][1]
    print("\n%-68s %10s %9s" % ("", "images/s", "vs ours"))
    for label, seconds in results:
        rate = num_images / seconds
        print("%-68s %10.1f %8.2fx" % (label, rate, ours_rate / rate))
    print("\nembeddings agree: min cosine(ours, FiftyOne) = %.6f" % cosine.min())
    print("load average after: %.1f %.1f %.1f (other processes skew timings)" % os.getloadavg())
    if on_cuda:
        print("GPU utilisation during our run: %s" % sampler.summary())
    return 0


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


if __name__ == "__main__":
    sys.exit(main())

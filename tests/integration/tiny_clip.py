"""A tiny open_clip model trained in seconds on synthetic coloured shapes.

No pretrained CLIP weights can be downloaded in CI, yet text-prompt search
must be tested end to end with a real model. This module registers a tiny
open_clip architecture (~3.6M parameters, most of them the token embedding),
trains it for a few seconds on images of red/green/blue circles, squares and
triangles paired with captions such as ``"a red circle"``, and saves a local
checkpoint. After training, the prompt ``"a red circle"`` ranks red circles
first.

From pytest (e.g. a session fixture in ``conftest.py``; pytest puts
``tests/`` on ``sys.path``). Training takes ~11 s on 2 idle cores, once:
pytest's cache directory keeps the checkpoint across sessions, and
``tests/test_models.py`` uses the same directory, so both share one
training::

    import tiny_clip

    @pytest.fixture(scope="session")
    def tiny(request, tmp_path_factory) -> tiny_clip.TinyClip:
        return tiny_clip.ensure_tiny_clip(request.config.cache.mkdir("tiny-clip"))

    models.resolve_model("open_clip:" + tiny.arch, tiny.model_kwargs)  # or tiny.spec
    images = tiny_clip.write_shape_images(tmp_path / "imgs", 27)  # 3 per caption
    dataset = tiny_clip.build_shapes_dataset(images)  # ground_truth + shapes fields

From a subprocess: the spec alone reloads the model, no import of this module
is needed (``fiftyone_qdrant.models.load_model_from_spec(tiny.spec)``); to
train or write images from a shell, use the CLI, which prints JSON::

    python tests/tiny_clip.py train /tmp/tiny_clip          # {"arch", "config_path", "checkpoint_path", ..., "spec"}
    python tests/tiny_clip.py images /tmp/shapes --count 30 --shapes-per-image 1

It depends only on open_clip, torch and PIL (fiftyone is imported only by
:func:`build_shapes_dataset`), so that subprocesses start quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

ARCH = "tiny-clip-test"
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
}
SHAPES = ("circle", "square", "triangle")
CAPTIONS = tuple("a %s %s" % (color, shape) for color in COLORS for shape in SHAPES)

# Small enough to train in seconds on 2 CPU cores: 64 px images in 16 px
# patches give 16 tokens that still see the full resolution of the shapes
MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# Bump when the config, the data or the training recipe changes, so that a
# cached checkpoint from an older recipe is not reused
RECIPE_VERSION = 2

PathLike = Union[str, "os.PathLike[str]"]


@dataclasses.dataclass(frozen=True)
class TinyClip:
    """Where a trained tiny model lives, and how to name it to the models module."""

    arch: str
    config_path: str
    checkpoint_path: str
    train_seconds: float
    heldout_accuracy: float

    @property
    def model_kwargs(self) -> Dict[str, str]:
        """``model_kwargs`` for ``resolve_model("open_clip:" + arch, ...)``."""
        return {"pretrained": self.checkpoint_path, "config_path": self.config_path}

    @property
    def spec(self) -> Dict[str, object]:
        """A model spec that reloads this model in any process."""
        return {"model": "open_clip:" + self.arch, "model_kwargs": self.model_kwargs}


@dataclasses.dataclass(frozen=True)
class DrawnShape:
    """One shape drawn in an image; ``bounding_box`` is relative [x, y, w, h]."""

    color: str
    shape: str
    bounding_box: Tuple[float, float, float, float]

    @property
    def label(self) -> str:
        return "%s %s" % (self.color, self.shape)

    @property
    def caption(self) -> str:
        return "a " + self.label


@dataclasses.dataclass(frozen=True)
class ShapeImage:
    """A PNG written by :func:`write_shape_images` and the shapes it shows."""

    filepath: str
    shapes: Tuple[DrawnShape, ...]

    @property
    def label(self) -> str:
        """The label of the first (for one-shape images, the only) shape."""
        return self.shapes[0].label


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def register_config(config_dir: PathLike) -> str:
    """Writes the tiny config JSON into ``config_dir`` and registers it with open_clip."""
    import open_clip

    config_path = Path(config_dir) / (ARCH + ".json")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(MODEL_CONFIG, indent=2)
    if not config_path.exists() or config_path.read_text() != text:
        _atomic_write_bytes(config_path, text.encode())
    if ARCH not in open_clip.list_models():
        open_clip.add_model_config(str(config_path))
    return str(config_path)


def draw_shapes_image(
    rng: random.Random,
    image_size: int = 64,
    shapes_per_image: int = 1,
    class_indices: Optional[Sequence[int]] = None,
):
    """Draws random shapes (or the given caption indices) on a random grey background.

    With several shapes, each gets its own vertical strip so that boxes do not
    overlap and every crop shows exactly one shape.

    Returns:
        a ``(PIL.Image, tuple of DrawnShape)`` pair
    """
    from PIL import Image, ImageDraw

    if class_indices is None:
        class_indices = [rng.randrange(len(CAPTIONS)) for _ in range(shapes_per_image)]
    grey = rng.randint(150, 255)
    img = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    strip = image_size / len(class_indices)
    drawn = []
    for index, class_index in enumerate(class_indices):
        color, shape = CAPTIONS[class_index][2:].split(" ")
        side = max(6, int(rng.uniform(0.55, 0.95) * min(strip, image_size)))
        x0 = int(index * strip) + rng.randint(0, max(0, int(strip) - side))
        y0 = rng.randint(0, image_size - side)
        x1, y1 = x0 + side - 1, y0 + side - 1
        fill = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLORS[color])
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0 + side / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        relative_box = (x0 / image_size, y0 / image_size, side / image_size, side / image_size)
        drawn.append(DrawnShape(color, shape, relative_box))
    return img, tuple(drawn)


def write_shape_images(
    output_dir: PathLike,
    count: int,
    shapes_per_image: int = 1,
    image_size: int = 64,
    seed: int = 0,
) -> List[ShapeImage]:
    """Writes ``count`` PNGs of random shapes, cycling through all colour x shape pairs.

    For one-shape images the first 9 images cover every caption once, so any
    ``count >= 9`` has every class (retrieval tests need positives for each).
    """
    rng = random.Random(seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        class_indices = [index % len(CAPTIONS)] if shapes_per_image == 1 else None
        img, shapes = draw_shapes_image(rng, image_size, shapes_per_image, class_indices)
        path = output_dir / ("shapes-%05d.png" % index)
        img.save(path)
        images.append(ShapeImage(str(path), shapes))
    return images


def build_shapes_dataset(images: Sequence[ShapeImage], name: Optional[str] = None):
    """A FiftyOne dataset with ``ground_truth`` (Classification of the first
    shape) and ``shapes`` (Detections of all shapes) for the given images."""
    import fiftyone as fo

    dataset = fo.Dataset(name)
    dataset.add_samples(
        fo.Sample(
            filepath=image.filepath,
            ground_truth=fo.Classification(label=image.label),
            shapes=fo.Detections(
                detections=[
                    fo.Detection(label=shape.label, bounding_box=list(shape.bounding_box))
                    for shape in image.shapes
                ]
            ),
        )
        for image in images
    )
    return dataset


def ensure_tiny_clip(output_dir: PathLike, seed: int = 0) -> TinyClip:
    """Trains the tiny model into ``output_dir``, or reuses a checkpoint there.

    Safe to call from several processes: files are written atomically (two
    processes may both train, one wins).
    """
    import torch

    output_dir = Path(output_dir)
    config_path = register_config(output_dir)
    checkpoint_path = output_dir / ("%s-v%d-seed%d.pt" % (ARCH, RECIPE_VERSION, seed))
    info_path = checkpoint_path.with_suffix(".json")
    if not (checkpoint_path.exists() and info_path.exists()):
        state_dict, info = train_tiny_clip(seed=seed)
        with tempfile.NamedTemporaryFile(dir=output_dir, suffix=".tmp", delete=False) as tmp:
            torch.save(state_dict, tmp)
        os.replace(tmp.name, checkpoint_path)
        _atomic_write_bytes(info_path, json.dumps(info).encode())
    info = json.loads(info_path.read_text())
    return TinyClip(ARCH, config_path, str(checkpoint_path), info["train_seconds"], info["heldout_accuracy"])


def train_tiny_clip(seed: int = 0, steps: int = 300, per_class: int = 9) -> Tuple[Dict[str, Any], Dict[str, float]]:
    """Trains a fresh tiny model on synthetic shapes for a fixed number of steps.

    Each step draws a fresh class-balanced batch (a fixed pool overfits) and
    contrasts it with the 9 distinct captions in both directions (image ->
    caption, and caption -> all images of its class): with only 9 captions, a
    plain CLIP batch would be full of duplicate captions treated as negatives.
    Warmup, then cosine decay to zero: stopping early, at a high learning
    rate, leaves a noticeably less reliable model. ~11 s on 2 idle cores;
    held-out image -> caption accuracy ~99.9%, caption -> image precision 1.0.

    Returns:
        ``(state_dict, {"train_seconds": ..., "heldout_accuracy": ...})``
    """
    import open_clip
    import torch
    import torch.nn.functional as F

    if ARCH not in open_clip.list_models():
        with tempfile.TemporaryDirectory(prefix="tiny-clip-config-") as config_dir:
            register_config(config_dir)  # open_clip reads the file right away

    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    # training from scratch: open_clip's "No pretrained weights loaded" is expected
    quiet = _DropRecords("No pretrained weights loaded")
    logging.getLogger().addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    finally:
        logging.getLogger().removeFilter(quiet)
    caption_tokens = open_clip.get_tokenizer(ARCH)(list(CAPTIONS))

    def make_batch(class_indices: Sequence[int]):
        pixels = [preprocess(draw_shapes_image(rng, 64, class_indices=[c])[0]) for c in class_indices]
        return torch.stack(pixels), torch.tensor(class_indices)

    balanced_classes = [index % len(CAPTIONS) for index in range(per_class * len(CAPTIONS))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    warmup_steps = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        pixels, classes = make_batch(balanced_classes)
        image_features = F.normalize(model.encode_image(pixels), dim=-1)
        text_features = F.normalize(model.encode_text(caption_tokens), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.t()
        same_class = F.one_hot(classes, len(CAPTIONS)).t().float()
        image_to_text = F.cross_entropy(logits, classes)
        text_to_image = -(same_class * logits.t().log_softmax(dim=1)).sum(1).div(same_class.sum(1)).mean()
        optimizer.zero_grad()
        (image_to_text + text_to_image).backward()
        optimizer.step()
        schedule.step()
    train_seconds = time.perf_counter() - start

    model.eval()
    heldout_pixels, heldout_classes = make_batch([rng.randrange(len(CAPTIONS)) for _ in range(270)])
    with torch.inference_mode():
        image_features = F.normalize(model.encode_image(heldout_pixels), dim=-1)
        text_features = F.normalize(model.encode_text(caption_tokens), dim=-1)
    accuracy = float(((image_features @ text_features.t()).argmax(1) == heldout_classes).float().mean())
    return model.state_dict(), {"train_seconds": train_seconds, "heldout_accuracy": accuracy}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI for subprocesses; prints one JSON object on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (or reuse) the tiny model; prints its TinyClip fields and spec")
    train.add_argument("output_dir")
    train.add_argument("--seed", type=int, default=0)
    images = commands.add_parser("images", help="write shape PNGs; prints their paths and shapes")
    images.add_argument("output_dir")
    images.add_argument("--count", type=int, default=27)
    images.add_argument("--shapes-per-image", type=int, default=1)
    images.add_argument("--image-size", type=int, default=64)
    images.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "train":
        tiny = ensure_tiny_clip(args.output_dir, seed=args.seed)
        result = {**dataclasses.asdict(tiny), "spec": tiny.spec}
    else:
        written = write_shape_images(args.output_dir, args.count, args.shapes_per_image, args.image_size, args.seed)
        result = {"images": [dataclasses.asdict(image) for image in written]}
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

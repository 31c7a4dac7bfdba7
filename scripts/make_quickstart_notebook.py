"""Writes ``notebooks/quickstart.ipynb`` from the cells below and, with
``--execute``, runs it and stores its outputs.

The notebook follows FiftyOne's Qdrant integration guide
(https://docs.voxel51.com/integrations/qdrant.html) with ``backend="qdrant"``
served by fiftyone-qdrant's embedded store: build an index, query it by id,
ids, vector and text prompt, patches, add/remove embeddings, read them back,
clean up. Its images ship with scikit-image or are drawn on the fly; its
CLIP model is any local open_clip checkpoint (``FIFTYONE_QDRANT_CLIP_SPEC``)
or a tiny CLIP trained in seconds by ``tests/integration/tiny_clip.py``: nothing is
downloaded.

Usage::

    python scripts/make_quickstart_notebook.py             # write the cells
    python scripts/make_quickstart_notebook.py --execute   # ...and run them

``--execute`` needs nbclient and ipykernel, and a MongoDB for FiftyOne (set
``FIFTYONE_DATABASE_DIR`` to a scratch directory to keep it apart).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")

# (kind, source, tags)
CELLS = [
    ("markdown", """\
# Qdrant similarity search in FiftyOne, embedded

This notebook walks through [FiftyOne's Qdrant integration guide](https://docs.voxel51.com/integrations/qdrant.html)
with `fiftyone-qdrant`: `backend="qdrant"` works as the guide describes, but by default the index lives in an
**embedded** Qdrant store on local disk (Qdrant's own engine, in-process). No server, no Docker, no downloads:

* images come with scikit-image or are drawn here;
* the CLIP model is any open_clip checkpoint on disk, or a tiny CLIP trained here in seconds.

To use a Qdrant server instead, pass `url=` (and `api_key=`) or set `FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL`;
everything below works the same.""", []),
    ("markdown", """\
## Setup

`pip install fiftyone-qdrant` is all it takes: it registers the `qdrant` backend in every Python process
(including the FiftyOne App's server) and ships a FiftyOne App plugin. This tour keeps its vectors in a
temporary store; by default they live in `~/.fiftyone/qdrant`.""", []),
    ("code", """\
import json
import os
import sys
import tempfile
import uuid

WORKDIR = tempfile.mkdtemp(prefix="fiftyone-qdrant-quickstart-")
os.environ["FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH"] = os.path.join(WORKDIR, "qdrant")

import numpy as np

import fiftyone as fo
import fiftyone.brain as fob
from fiftyone import ViewField as F

import fiftyone_qdrant as foq

print("fiftyone", fo.__version__, "| fiftyone-qdrant", foq.__version__)""", ["setup"]),
    ("markdown", """\
## A dataset

Six photos that ship with scikit-image, and 36 drawn images of red, green and blue circles, squares and
triangles. Every shape has a box in the `ground_truth` field, for the patches section.""", []),
    ("code", """\
from PIL import Image, ImageDraw
from skimage import data as skimage_data

IMAGES = os.path.join(WORKDIR, "images")
os.makedirs(IMAGES)
COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square", "triangle")
rng = np.random.default_rng(51)


def draw_shapes(path, kinds, size):
    grey = int(rng.integers(150, 256))
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    strip = size / len(kinds)
    boxes = []
    for i, (color, shape) in enumerate(kinds):
        side = int(rng.uniform(0.4, 0.9) * min(strip, size))
        x0 = int(i * strip) + int(rng.integers(0, max(1, int(strip) - side)))
        y0 = int(rng.integers(0, size - side))
        x1, y1 = x0 + side - 1, y0 + side - 1
        fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLORS[color])
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0 + side / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        boxes.append(fo.Detection(label="%s %s" % (color, shape), bounding_box=[x0 / size, y0 / size, side / size, side / size]))
    image.save(path)
    return boxes


samples = []
for name in ("astronaut", "chelsea", "coffee", "rocket", "coins", "camera"):
    path = os.path.join(IMAGES, name + ".png")
    Image.fromarray(getattr(skimage_data, name)()).convert("RGB").save(path)
    samples.append(fo.Sample(filepath=path, kind=name))

kinds = [(c, s) for c in COLORS for s in SHAPES]
for i in range(36):
    picked = [kinds[i % 9]] if i < 27 else [kinds[(i + j) % 9] for j in (0, 4)]
    path = os.path.join(IMAGES, "shapes-%02d.png" % i)
    boxes = draw_shapes(path, picked, 64 if len(picked) == 1 else 96)
    samples.append(fo.Sample(filepath=path, kind=boxes[0].label, ground_truth=fo.Detections(detections=boxes)))

dataset = fo.Dataset("qdrant-quickstart-" + uuid.uuid4().hex[:6])
dataset.add_samples(samples, progress=False)
print(dataset)""", ["dataset"]),
    ("markdown", """\
## A CLIP model

The guide uses the zoo's `clip-vit-base32-torch`, a download. Any open_clip checkpoint on disk works too:
set `FIFTYONE_QDRANT_CLIP_SPEC` to e.g.
`{"model": "open_clip:ViT-B-32", "model_kwargs": {"pretrained": "/path/to/open_clip_model.safetensors"}}`.
Without one, this cell trains a tiny CLIP on coloured shapes (`tests/integration/tiny_clip.py` in the repository, about
30 s on a laptop CPU): enough for text prompts such as *"a red circle"*.

`fiftyone_qdrant.models` records how the model was built, so that the index can embed text prompts in other
processes too, e.g. in the App.""", []),
    ("code", """\
from fiftyone_qdrant.models import resolve_model

spec = os.environ.get("FIFTYONE_QDRANT_CLIP_SPEC")
if spec:
    spec = json.loads(spec)
else:
    sys.path.insert(0, os.path.abspath(os.path.join("..", "tests", "integration")))
    import tiny_clip

    spec = tiny_clip.ensure_tiny_clip(os.path.expanduser("~/.cache/fiftyone-qdrant/tiny-clip")).spec

clip = resolve_model(spec["model"], spec["model_kwargs"]).model
print(spec["model"], "| embeds text prompts:", clip.can_embed_prompts)""", ["model"]),
    ("markdown", """\
## Build a Qdrant similarity index

Exactly the guide's call. The images are embedded and written to Qdrant batch by batch.""", []),
    ("code", """\
qdrant_index = fob.compute_similarity(
    dataset,
    model=clip,
    brain_key="qdrant_index",
    backend="qdrant",
)

print(qdrant_index.total_index_size, "vectors in collection", repr(qdrant_index.collection_name))
print(qdrant_index.config.supports_prompts, dataset.list_brain_runs())""", ["build"]),
    ("markdown", """\
## Query by one id, several ids, a vector, a text prompt

`sort_by_similarity()` returns a view, most similar first; `dist_field` stores each distance
(for `cosine`, `1 - cosine similarity`).""", []),
    ("code", """\
query = dataset.match(F("kind") == "red circle").first()

view = dataset.sort_by_similarity(query.id, k=6, brain_key="qdrant_index", dist_field="distance")
for kind, distance in zip(*view.values(["kind", "distance"])):
    print("%-15s %.3f" % (kind, distance))""", ["query-id"]),
    ("code", """\
# several ids: their mean embedding
greens = dataset.match(F("kind").starts_with("green")).limit(3).values("id")
print(dataset.sort_by_similarity(greens, k=5, brain_key="qdrant_index").values("kind"))

# a vector
vector = qdrant_index.get_embeddings(sample_ids=[query.id])[0][0]
print(dataset.sort_by_similarity(vector, k=5, brain_key="qdrant_index").values("kind"))

# the least similar
print(dataset.sort_by_similarity(query.id, k=5, reverse=True, brain_key="qdrant_index").values("kind"))""", ["query-ids"]),
    ("code", """\
for prompt in ("a red circle", "a blue square", "a green triangle"):
    print("%-18s" % prompt, dataset.sort_by_similarity(prompt, k=4, brain_key="qdrant_index").values("kind"))""", ["query-text"]),
    ("markdown", """\
## In the App

`fo.launch_app(dataset)` starts the App's server in another process; it opens the same embedded store while
this notebook keeps it open. Select one or more samples and click *Sort by similarity*, or type a prompt when
nothing is selected. The plugin shipped with the package adds *Build Qdrant similarity index*,
*List Qdrant indexes*, *Delete Qdrant index*, *Attach Qdrant index* and *Migrate built-in Qdrant runs* to the
operator browser (press `` ` ``).""", []),
    ("code", """\
if os.environ.get("QUICKSTART_LAUNCH_APP"):
    session = fo.launch_app(dataset)""", ["app"]),
    ("markdown", """\
## Objects: a patches index

With `patches_field`, every box is embedded and indexed; queries then run on a patches view.""", []),
    ("code", """\
patches_index = fob.compute_similarity(
    dataset,
    patches_field="ground_truth",
    model=clip,
    brain_key="qdrant_patches",
    backend="qdrant",
)
print(patches_index.total_index_size, "patches indexed")

patches = dataset.to_patches("ground_truth")
triangle = patches.match(F("ground_truth.label") == "green triangle").first()
print(patches.sort_by_similarity(triangle.id, k=5, brain_key="qdrant_patches").values("ground_truth.label"))
print(patches.sort_by_similarity("a blue circle", k=5, brain_key="qdrant_patches").values("ground_truth.label"))""", ["patches"]),
    ("markdown", """\
## Add and remove embeddings

An index can change after it is built: new samples, deleted samples, re-computed embeddings.""", []),
    ("code", """\
ids = dataset.values("id")
embeddings, sample_ids, _ = qdrant_index.get_embeddings(sample_ids=ids[:5])

qdrant_index.remove_from_index(sample_ids=ids[:5])
print("after removing 5:", qdrant_index.total_index_size)

qdrant_index.add_to_index(embeddings, sample_ids)
print("after adding them back:", qdrant_index.total_index_size)

# a new sample
path = os.path.join(IMAGES, "new.png")
new = fo.Sample(filepath=path, kind="blue triangle", ground_truth=fo.Detections(detections=draw_shapes(path, [("blue", "triangle")], 64)))
dataset.add_sample(new)
qdrant_index.add_to_index(dataset.select(new.id).compute_embeddings(clip), [new.id])
print("with the new sample:", qdrant_index.total_index_size)
print(dataset.sort_by_similarity("a blue triangle", k=3, brain_key="qdrant_index").values("kind"))""", ["add-remove"]),
    ("markdown", """\
## Retrieve embeddings, reach the engine

`get_embeddings()` reads vectors back from Qdrant. `client` is a `qdrant_client.QdrantClient`: on the embedded
store it talks to the store's local Qdrant service, so everything in Qdrant's own docs works as written.""", []),
    ("code", """\
embeddings, sample_ids, _ = qdrant_index.get_embeddings(sample_ids=ids[:3])
print(embeddings.shape, list(sample_ids) == ids[:3])

embeddings, sample_ids, label_ids = patches_index.get_embeddings(label_ids=patches.values("id")[:4])
print(embeddings.shape, len(set(sample_ids)), "samples")

print(type(qdrant_index.client).__name__, qdrant_index.client.count(qdrant_index.collection_name).count)""", ["embeddings"]),
    ("markdown", """\
## What the store holds

Every collection keeps the FiftyOne run record it belongs to (dataset, brain key, model...), so indexes can be
listed, and re-attached if FiftyOne's database is lost (`foq.attach_index`).""", []),
    ("code", """\
for entry in foq.list_indexes():
    for run in entry["runs"]:
        print(entry["collection_name"], entry["size"], run["brain_key"], run["dimension"], run["metric"], (run["model_spec"] or {}).get("model"))""", ["list"]),
    ("markdown", """\
## Clean up

`cleanup()` deletes the Qdrant collection; `delete_brain_run()` deletes FiftyOne's record of the run.
Last, the tour's temporary images and store go too.""", []),
    ("code", """\
import shutil

for brain_key in ("qdrant_index", "qdrant_patches"):
    dataset.load_brain_results(brain_key).cleanup()
    dataset.delete_brain_run(brain_key)

print(dataset.list_brain_runs(), foq.list_indexes())
dataset.delete()
shutil.rmtree(WORKDIR, ignore_errors=True)""", ["cleanup"]),
]


def build():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source, tags in CELLS:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    # stable ids, so that regenerating does not churn the file
    for i, cell in enumerate(nb.cells):
        cell["id"] = "cell-%02d" % i
    return nb


def execute(nb, cwd, timeout=600):
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}})
    client.execute()
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run the notebook and store its outputs")
    parser.add_argument("--output", default=NOTEBOOK)
    args = parser.parse_args(argv)

    import nbformat

    nb = build()
    if args.execute:
        execute(nb, os.path.dirname(os.path.abspath(args.output)))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    nbformat.write(nb, args.output)
    print("wrote", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

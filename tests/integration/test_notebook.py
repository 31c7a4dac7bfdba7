"""``notebooks/quickstart.ipynb`` runs top to bottom in a real Jupyter kernel
(nbclient + ipykernel), on a real MongoDB and the embedded Qdrant store,
with the tiny CLIP model for text prompts; and the stored copy is the one
``scripts/make_quickstart_notebook.py`` writes, with its outputs."""

import importlib.util
import json
import os

import pytest

import tiny_clip

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel")
nbclient = pytest.importorskip("nbclient", reason="pip install nbformat nbclient ipykernel")
pytest.importorskip("ipykernel", reason="pip install nbformat nbclient ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
SCRIPT = os.path.join(ROOT, "scripts", "make_quickstart_notebook.py")


def _script():
    spec = importlib.util.spec_from_file_location("make_quickstart_notebook", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def _by_tag(nb):
    return {tag: cell for cell in nb.cells for tag in cell.metadata.get("tags", [])}


def _lists(text):
    """The Python lists printed in a cell's output, one per line."""
    import ast

    found = []
    for line in text.splitlines():
        start = line.find("[")
        if start >= 0 and line.rstrip().endswith("]"):
            found.append(ast.literal_eval(line[start:].strip()))
    return found


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    try:
        import open_clip  # noqa: F401
    except ImportError:
        pytest.skip("open_clip is not installed")
    cache = getattr(request.config, "cache", None)
    directory = cache.mkdir("tiny-clip") if cache is not None else tmp_path_factory.mktemp("tiny-clip")
    return tiny_clip.ensure_tiny_clip(os.path.abspath(directory))


def test_stored_notebook_matches_its_script_and_has_outputs():
    stored = nbformat.read(NOTEBOOK, as_version=4)
    built = _script().build()
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in built.cells], (
        "notebooks/quickstart.ipynb is out of date: run python scripts/make_quickstart_notebook.py --execute"
    )
    for cell in stored.cells:
        if cell.cell_type != "code":
            continue
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        if "app" not in cell.metadata.get("tags", []):
            assert cell.outputs and cell.execution_count, "no stored output for: %s" % cell.source[:60]


def test_quickstart_notebook_runs(tiny, tmp_path, monkeypatch):
    """Executes the notebook as the script builds it, in a fresh kernel."""
    monkeypatch.setenv("FIFTYONE_QDRANT_CLIP_SPEC", json.dumps(tiny.spec))
    monkeypatch.delenv("QUICKSTART_LAUNCH_APP", raising=False)
    nb = _script().build()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    nbformat.write(nb, str(tmp_path / "quickstart.ipynb"))
    cells = _by_tag(nb)

    assert "embeds text prompts: True" in _text(cells["model"])
    build = _text(cells["build"])
    assert "42 vectors in collection" in build and "True ['qdrant_index']" in build

    # by id: the query itself first, at distance 0
    first = _text(cells["query-id"]).splitlines()[0].split()
    assert first[:2] == ["red", "circle"] and float(first[2]) == pytest.approx(0, abs=1e-4)

    # text prompts: the tiny CLIP finds the shape it is asked for
    for line in _text(cells["query-text"]).splitlines():
        prompt, results = line[:18].strip(), _lists(line)[0]
        assert results[0] == prompt[2:], line

    by_id, by_text = _lists(_text(cells["patches"]))
    assert by_id[0] == "green triangle" and by_text[0] == "blue circle"

    add_remove = _text(cells["add-remove"])
    assert "after removing 5: 37" in add_remove and "after adding them back: 42" in add_remove
    assert "with the new sample: 43" in add_remove
    assert _lists(add_remove)[-1][0] == "blue triangle"

    assert "(3, 64) True" in _text(cells["embeddings"]) and "QdrantClient 43" in _text(cells["embeddings"])
    listed = _text(cells["list"]).splitlines()
    assert len(listed) == 2 and all("open_clip:" + tiny.arch in line for line in listed)
    assert _text(cells["cleanup"]).strip() == "[] []"

"""Pins what :mod:`fiftyone_qdrant.brain_internals` reads of the installed
fiftyone-brain. If one of these fails after a brain upgrade, the readers
fall back to FiftyOne's generic path (tested below): update the names in
brain_internals.py, or accept the slower path."""

import inspect
import re

import fiftyone.brain as fob  # noqa: F401  (imports brain's config)
import fiftyone.brain.similarity as fbs

from fiftyone_qdrant import brain_internals


def test_compute_similarity_still_has_the_locals_we_read():
    assert fbs.compute_similarity.__module__ == brain_internals.COMPUTE_SIMILARITY_MODULE
    local_names = set(fbs.compute_similarity.__code__.co_varnames)
    assert set(brain_internals.COMPUTE_SIMILARITY_LOCALS) <= local_names


def test_similarity_index_still_keeps_the_view_where_we_read_it():
    source = inspect.getsource(fbs.SimilarityIndex.use_view)
    assigned = set(re.findall(r"self\.(_curr_\w+)\s*=", source))
    assert set(brain_internals.VIEW_ATTRIBUTES) <= assigned


def test_brain_env_parsing_still_turns_digits_into_numbers():
    assert brain_internals.parse_env_value("0012345") == 12345
    assert brain_internals.parse_env_value("key") == "key"


def _frame_of(module_name: str, source: str):
    """Runs ``compute_similarity`` defined in a module named ``module_name``
    and returns what brain_internals reads from inside it."""
    namespace = {"__name__": module_name, "brain_internals": brain_internals}
    exec(compile(source, "<brain>", "exec"), namespace)
    return namespace["compute_similarity"]()


_ALL_LOCALS = "\n".join("    %s = %r" % (name, name) for name in brain_internals.COMPUTE_SIMILARITY_LOCALS)


def test_the_locals_are_read_from_brain_compute_similarity_only():
    source = "def compute_similarity():\n%s\n    return brain_internals.compute_similarity_args(__import__('sys')._getframe())\n" % _ALL_LOCALS
    args = _frame_of("fiftyone.brain.similarity", source)
    assert args["_model"] == "_model" and args["samples"] == "samples"
    assert _frame_of("somewhere.else", source) is None


def test_a_renamed_local_means_the_generic_path():
    source = "def compute_similarity():\n%s\n    return brain_internals.compute_similarity_args(__import__('sys')._getframe())\n" % (
        _ALL_LOCALS.replace("_model =", "_the_model =")
    )
    assert _frame_of("fiftyone.brain.similarity", source) is None


def test_a_missing_view_attribute_means_listing_the_view():
    class Index:
        _curr_view, _curr_sample_ids, _curr_view_allow_missing, _curr_view_warn_missing = "view", None, True, False

    state = brain_internals.view_state(Index())
    assert state == brain_internals.ViewState(view="view", ids_listed=False, allow_missing=True, warn_missing=False)
    del Index._curr_view_warn_missing
    assert brain_internals.view_state(Index()) is None

"""Pins the FiftyOne internals that :mod:`fiftyone_qdrant.integration`
patches, against the installed FiftyOne: if one moves, its patch fails to
apply (and says so on stderr) rather than silently doing nothing."""

import inspect

import fiftyone.brain.config as fbc
import fiftyone.brain.internal.core.qdrant as builtin_qdrant
import fiftyone.plugins.core as fopc

from fiftyone_qdrant import integration


def test_the_brain_config_still_keeps_builtin_backends_in_a_dict():
    assert isinstance(fbc.BrainConfig._BUILTIN_SIMILARITY_BACKENDS, dict)
    assert "sklearn" in fbc.BrainConfig._BUILTIN_SIMILARITY_BACKENDS


def test_the_builtin_qdrant_module_still_names_its_three_classes():
    for name in ("QdrantSimilarityConfig", "QdrantSimilarity", "QdrantSimilarityIndex"):
        assert hasattr(builtin_qdrant, name)


def test_plugin_discovery_still_has_the_functions_we_wrap():
    assert list(inspect.signature(fopc._iter_plugin_metadata_files.__wrapped__ if hasattr(
        fopc._iter_plugin_metadata_files, "__wrapped__") else fopc._iter_plugin_metadata_files).parameters) == [
        "root_dir", "strict"]
    assert callable(fopc.delete_plugin) and callable(fopc.get_plugin)


def test_every_patch_has_a_status_and_the_modules_match():
    names = [p.name for p in integration.status(load=True)]
    assert names == ["backend registration", "built-in class aliasing", "App plugin discovery", "prompt-warning filter"]
    assert [module for _, module, _ in integration._STATES] == list(integration.PATCHES)

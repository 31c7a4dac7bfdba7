"""Routes ``backend="qdrant"`` to this package in every Python process.

fiftyone-brain has no discovery mechanism for third-party similarity
backends: it resolves ``backend="qdrant"`` through
``BrainConfig._BUILTIN_SIMILARITY_BACKENDS``. The installed
``fiftyone_qdrant.pth`` imports this module at interpreter start-up, so that a
process that never imports ``fiftyone_qdrant`` (a user's script, the FiftyOne
App server) still gets our backend.

This module must stay cheap: it imports nothing from FiftyOne. It installs an
import hook that waits for ``fiftyone.brain.config`` and then applies the
backends declared in the ``fiftyone.brain.similarity_backends`` entry-point
group. It also points FiftyOne's built-in Qdrant classes (which no longer work
with current qdrant-client) at ours, so runs created by the built-in backend
load and query, and it makes FiftyOne's plugin discovery find the App plugin
shipped in ``fiftyone_qdrant/plugin`` (see :mod:`fiftyone_qdrant.plugin`).

Opt out with ``FIFTYONE_QDRANT_DISABLE_PLUGIN=true``. An explicit
``config_cls`` (``FIFTYONE_BRAIN_SIMILARITY_QDRANT_CONFIG_CLS`` or
``brain_config.json``) always wins, as FiftyOne documents.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

ENTRY_POINT_GROUP = "fiftyone.brain.similarity_backends"
DISABLE_ENV_VAR = "FIFTYONE_QDRANT_DISABLE_PLUGIN"

_BRAIN_CONFIG_MODULE = "fiftyone.brain.config"
_BUILTIN_QDRANT_MODULE = "fiftyone.brain.internal.core.qdrant"
_PLUGINS_CORE_MODULE = "fiftyone.plugins.core"


def plugin_disabled() -> bool:
    return os.environ.get(DISABLE_ENV_VAR, "").lower() in ("1", "true", "yes")


def declared_backends() -> dict[str, str]:
    """Maps backend name -> dotted config class path, from entry points."""
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python < 3.10
        eps = entry_points().get(ENTRY_POINT_GROUP, [])

    return {ep.name: ep.value.replace(":", ".") for ep in eps}


def register_backends(brain_config_module) -> None:
    """Declares entry-point backends as FiftyOne builtins (before the brain
    config is parsed, so user settings still take precedence)."""
    builtins = brain_config_module.BrainConfig._BUILTIN_SIMILARITY_BACKENDS
    for name, config_cls in declared_backends().items():
        builtins[name] = {"config_cls": config_cls}


def alias_builtin_qdrant(builtin_module) -> None:
    """Makes run records of FiftyOne's built-in Qdrant backend load with our
    classes (they store ``fiftyone.brain.internal.core.qdrant.*`` names)."""
    from fiftyone_qdrant import similarity

    builtin_module.QdrantSimilarityConfig = similarity.QdrantSimilarityConfig
    builtin_module.QdrantSimilarity = similarity.QdrantSimilarity
    builtin_module.QdrantSimilarityIndex = similarity.QdrantSimilarityIndex


def discover_app_plugin(plugins_core_module) -> None:
    """Makes FiftyOne discover the App plugin shipped in
    ``fiftyone_qdrant/plugin`` (FiftyOne only looks in ``plugins_dir``).
    Opt out with ``FIFTYONE_QDRANT_DISABLE_APP_PLUGIN=true``."""
    from fiftyone_qdrant import plugin

    plugin.patch_plugin_discovery(plugins_core_module)


class _AfterImportHook:
    """Runs a callback right after a given module has executed.

    A ``sys.meta_path`` finder needs only ``find_spec``; not subclassing
    ``importlib.abc.MetaPathFinder`` spares every Python process importing
    ``importlib.abc`` (~14 ms, it pulls in importlib.resources) at start-up."""

    def __init__(self, callbacks: dict):  # module name -> function(module)
        self._callbacks = callbacks

    def find_spec(self, fullname, path, target=None):
        callback = self._callbacks.get(fullname)
        if callback is None:
            return None

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None

        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            try:
                callback(module)
            except Exception as e:  # never break `import fiftyone`
                print(
                    "fiftyone-qdrant: could not patch %s: %s" % (fullname, e),
                    file=sys.stderr,
                )

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if plugin_disabled():
        return

    if any(isinstance(f, _AfterImportHook) for f in sys.meta_path):
        return

    callbacks = {
        _BRAIN_CONFIG_MODULE: register_backends,
        _BUILTIN_QDRANT_MODULE: alias_builtin_qdrant,
        _PLUGINS_CORE_MODULE: discover_app_plugin,
    }

    # Modules imported before the hook (e.g. an interactive re-install) are
    # patched right away
    for name, callback in list(callbacks.items()):
        if name in sys.modules:
            callback(sys.modules[name])

    sys.meta_path.insert(0, _AfterImportHook(callbacks))


install()

"""Every change this package makes to FiftyOne, in one place, behind one switch.

fiftyone-brain has no discovery mechanism for third-party similarity
backends, and FiftyOne discovers App plugins only in ``plugins_dir``. The
installed ``fiftyone_qdrant.pth`` imports this module at interpreter
start-up, so that a process that never imports ``fiftyone_qdrant`` (a
user's script, the FiftyOne App server) still gets, once FiftyOne imports
the module each patch applies to:

- **backend registration** (``fiftyone.brain.config``): the backends declared
  in the ``fiftyone.brain.similarity_backends`` entry-point group become
  builtins before the brain config is parsed, so an explicit ``config_cls``
  (``FIFTYONE_BRAIN_SIMILARITY_QDRANT_CONFIG_CLS`` or ``brain_config.json``)
  still wins, as FiftyOne documents;
- **built-in class aliasing** (``fiftyone.brain.internal.core.qdrant``):
  FiftyOne's own Qdrant classes, which no longer work with current
  qdrant-client, point at ours, so runs the built-in backend created load
  and query;
- **App plugin discovery** (``fiftyone.plugins.core``): the plugin shipped in
  ``fiftyone_qdrant/plugin`` is found after the user's plugins;
- **prompt-warning filter** (``fiftyone.brain.similarity``'s logger): drops
  brain's "will not support prompt queries" warning where it is untrue.

``FIFTYONE_QDRANT_DISABLE_PLUGIN=true`` turns all of them off;
``fiftyone-qdrant status`` prints which are active and why (:func:`status`).
This module must stay cheap: it imports nothing from FiftyOne itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import logging
import os
import sys
from typing import Callable, Dict, List

ENTRY_POINT_GROUP = "fiftyone.brain.similarity_backends"
DISABLE_ENV_VAR = "FIFTYONE_QDRANT_DISABLE_PLUGIN"

_BRAIN_CONFIG_MODULE = "fiftyone.brain.config"
_BUILTIN_QDRANT_MODULE = "fiftyone.brain.internal.core.qdrant"
_PLUGINS_CORE_MODULE = "fiftyone.plugins.core"
_BRAIN_SIMILARITY_MODULE = "fiftyone.brain.similarity"
_PATCHED = "_fiftyone_qdrant"  # marks the functions we wrapped
#: the App plugin shipped in the package (see fiftyone_qdrant.plugin)
APP_PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin")
APP_PLUGIN_METADATA = os.path.join(APP_PLUGIN_DIR, "fiftyone.yml")


def disabled() -> bool:
    """Whether the one switch turns every patch off."""
    return os.environ.get(DISABLE_ENV_VAR, "").lower() in ("1", "true", "yes")


# -- backend registration ------------------------------------------------------


def declared_backends() -> Dict[str, str]:
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


# -- built-in class aliasing -----------------------------------------------------


def alias_builtin_qdrant(builtin_module) -> None:
    """Makes run records of FiftyOne's built-in Qdrant backend load with our
    classes (they store ``fiftyone.brain.internal.core.qdrant.*`` names)."""
    from fiftyone_qdrant import similarity

    builtin_module.QdrantSimilarityConfig = similarity.QdrantSimilarityConfig
    builtin_module.QdrantSimilarity = similarity.QdrantSimilarity
    builtin_module.QdrantSimilarityIndex = similarity.QdrantSimilarityIndex


# -- App plugin discovery ----------------------------------------------------------


def patch_plugin_discovery(core_module) -> None:
    """Makes ``fiftyone.plugins.core`` discover the packaged plugin.

    ``core_module._iter_plugin_metadata_files()`` (no ``root_dir``: the
    user's plugins directory) also yields our ``fiftyone.yml``, after the
    user's plugins, so that a copy installed in ``plugins_dir`` shadows it.
    ``delete_plugin()`` refuses to delete the package's own directory (it
    would delete files of the installed package). Idempotent.
    """
    original_iter = core_module._iter_plugin_metadata_files
    if getattr(original_iter, _PATCHED, False):
        return

    def _iter_plugin_metadata_files(root_dir=None, strict=False):
        seen = set()
        for path in original_iter(root_dir=root_dir, strict=strict):
            seen.add(os.path.realpath(os.path.dirname(path)))
            yield path

        if root_dir is None and not disabled() and os.path.isfile(APP_PLUGIN_METADATA):
            if os.path.realpath(APP_PLUGIN_DIR) not in seen:
                yield APP_PLUGIN_METADATA

    _wrap(_iter_plugin_metadata_files, original_iter)
    core_module._iter_plugin_metadata_files = _iter_plugin_metadata_files

    original_delete = core_module.delete_plugin

    def delete_plugin(plugin_name):
        plugin = core_module.get_plugin(plugin_name)
        if os.path.realpath(plugin.directory) == os.path.realpath(APP_PLUGIN_DIR):
            raise ValueError(
                "Plugin '%s' ships with the fiftyone-qdrant package; uninstall "
                "the package, or disable the plugin with `fiftyone plugins "
                "disable %s`" % (plugin_name, plugin_name)
            )
        return original_delete(plugin_name)

    _wrap(delete_plugin, original_delete)
    core_module.delete_plugin = delete_plugin

    # `fiftyone.plugins` re-exports delete_plugin; patch it if it was bound
    # before this hook ran
    package = sys.modules.get("fiftyone.plugins")
    if package is not None and getattr(package, "delete_plugin", None) is original_delete:
        package.delete_plugin = delete_plugin


def _wrap(wrapper: Callable, original: Callable) -> None:
    setattr(wrapper, _PATCHED, True)
    wrapper.__wrapped__ = original
    wrapper.__doc__ = original.__doc__


# -- prompt-warning filter ---------------------------------------------------------


class ReloadableModelWarningFilter(logging.Filter):
    """Drops fiftyone-brain's warning that an index built from a model
    *instance* "will not support prompt queries in the App or in future
    Python sessions" when that is untrue: the instance was built by
    :mod:`fiftyone_qdrant.models`, so the Qdrant backend stores its spec and
    any process reloads it. Kept for every other model and backend."""

    MESSAGE = "This index will not support prompt queries"

    def filter(self, record: logging.LogRecord) -> bool:
        if disabled() or not str(record.msg).startswith(self.MESSAGE):
            return True
        from fiftyone_qdrant.brain_internals import running_compute_similarity_args

        args = running_compute_similarity_args()
        if args is None:
            return True
        backend = args.get("backend")
        if backend is None:
            import fiftyone.brain as fb

            backend = fb.brain_config.default_similarity_backend
        if backend != "qdrant" or args.get("_model") is None:
            return True
        from fiftyone_qdrant.models import model_spec_of  # the model is loaded: so is torch

        return model_spec_of(args["_model"]) is None


def add_prompt_warning_filter(brain_similarity_module) -> None:
    logger = logging.getLogger(brain_similarity_module.__name__)
    if not any(isinstance(f, ReloadableModelWarningFilter) for f in logger.filters):
        logger.addFilter(ReloadableModelWarningFilter())


# -- installation ------------------------------------------------------------------

#: module FiftyOne imports -> the patch applied right after it
PATCHES: Dict[str, Callable] = {
    _BRAIN_CONFIG_MODULE: register_backends,
    _BUILTIN_QDRANT_MODULE: alias_builtin_qdrant,
    _PLUGINS_CORE_MODULE: patch_plugin_discovery,
    _BRAIN_SIMILARITY_MODULE: add_prompt_warning_filter,
}


class _AfterImportHook:
    """Runs a callback right after a given module has executed.

    A ``sys.meta_path`` finder needs only ``find_spec``; not subclassing
    ``importlib.abc.MetaPathFinder`` spares every Python process importing
    ``importlib.abc`` (~14 ms, it pulls in importlib.resources) at start-up."""

    def __init__(self, callbacks: Dict[str, Callable]):  # module name -> function(module)
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
                print("fiftyone-qdrant: could not patch %s: %s" % (fullname, e), file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


def installed() -> bool:
    return any(isinstance(f, _AfterImportHook) for f in sys.meta_path)


def install() -> None:
    if disabled() or installed():
        return
    # Modules imported before the hook (e.g. an interactive re-install) are
    # patched right away
    for name, callback in PATCHES.items():
        if name in sys.modules:
            callback(sys.modules[name])
    sys.meta_path.insert(0, _AfterImportHook(PATCHES))


# -- status --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PatchStatus:
    name: str
    module: str
    active: bool
    why: str


def _registration_state(config_module):
    declared = declared_backends().get("qdrant")
    builtins = config_module.BrainConfig._BUILTIN_SIMILARITY_BACKENDS
    if declared is None or builtins.get("qdrant", {}).get("config_cls") != declared:
        return False, "no 'qdrant' entry point is installed in group %s" % ENTRY_POINT_GROUP
    import fiftyone.brain as fb

    used = (fb.brain_config.similarity_backends.get("qdrant") or {}).get("config_cls")
    if used != declared:
        return True, "registered, but the brain config's config_cls %s wins for backend='qdrant'" % used
    return True, "backend='qdrant' uses %s (entry point in %s)" % (declared, ENTRY_POINT_GROUP)


def _aliasing_state(builtin_module):
    config_cls = getattr(builtin_module, "QdrantSimilarityConfig", None)
    if getattr(config_cls, "__module__", None) == "fiftyone_qdrant.similarity":
        return True, "runs of FiftyOne's built-in Qdrant backend load with fiftyone_qdrant's classes"
    return False, "FiftyOne's built-in Qdrant classes are its own"


def _discovery_state(core_module):
    if getattr(core_module._iter_plugin_metadata_files, _PATCHED, False):
        return True, "FiftyOne finds the App plugin in the package, after plugins_dir"
    return False, "the discovery hook is not applied"


def _filter_state(brain_similarity_module):
    logger = logging.getLogger(brain_similarity_module.__name__)
    if any(isinstance(f, ReloadableModelWarningFilter) for f in logger.filters):
        return True, "brain's 'will not support prompt queries' warning is dropped for models fiftyone_qdrant reloads"
    return False, "the filter is not installed"


#: (name, the module it patches, how to tell whether it is active), in PATCHES' order
_STATES = (
    ("backend registration", _BRAIN_CONFIG_MODULE, _registration_state),
    ("built-in class aliasing", _BUILTIN_QDRANT_MODULE, _aliasing_state),
    ("App plugin discovery", _PLUGINS_CORE_MODULE, _discovery_state),
    ("prompt-warning filter", _BRAIN_SIMILARITY_MODULE, _filter_state),
)


def status(load: bool = True) -> List[PatchStatus]:
    """Which patches are active in this process and why; ``load`` imports
    the FiftyOne modules they apply to first (as the App server does)."""
    if disabled():
        return [PatchStatus(name, module, False, "off: %s is set" % DISABLE_ENV_VAR) for name, module, _ in _STATES]
    out = []
    for name, module_name, state in _STATES:
        if load:
            try:
                importlib.import_module(module_name)
            except ImportError:  # e.g. qdrant-client missing: the patch has nothing to apply to
                pass
        module = sys.modules.get(module_name)
        if module is None:
            active, why = False, "not applied yet: %s is not imported in this process" % module_name
        else:
            active, why = state(module)
        out.append(PatchStatus(name, module_name, active, why))
    return out


install()

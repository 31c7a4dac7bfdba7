"""The FiftyOne App plugin shipped with fiftyone-qdrant.

This directory is a FiftyOne plugin (``fiftyone.yml`` + this module). Its
operators (see :mod:`.operators`) build a Qdrant similarity index from the
App with progress, list the indexes of a Qdrant store with the run records
stored in them, re-attach or delete an index, and migrate runs made by
FiftyOne's built-in Qdrant backend.

How FiftyOne finds it
---------------------
FiftyOne discovers plugins by walking ``fo.config.plugins_dir``
(``FIFTYONE_PLUGINS_DIR``); it has no entry point for plugins that ship
inside a pip package. Two routes, both handled here:

- automatic: :func:`patch_plugin_discovery` makes
  ``fiftyone.plugins.core`` also yield this directory after the user's
  plugins. :mod:`fiftyone_qdrant.integration` (imported by the installed
  ``.pth`` file in every process, the App server included) applies it when
  ``fiftyone.plugins.core`` is imported. Opt out with
  ``FIFTYONE_QDRANT_DISABLE_PLUGIN=true`` (which turns off every FiftyOne
  patch of this package), or disable the plugin the FiftyOne way:
  ``fiftyone plugins disable @fiftyone-qdrant/qdrant``.
- explicit: :func:`install` links (or copies) this directory into
  ``plugins_dir``, e.g. for a shared plugins directory or a FiftyOne
  deployment where the integration hook is turned off.

This module imports nothing from FiftyOne at import time, so that the
bootstrap hook and the command line can use it cheaply; FiftyOne's plugin
loader calls :func:`register`, which imports the operators.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

from fiftyone_qdrant import integration

PLUGIN_NAME = "@fiftyone-qdrant/qdrant"
# discovery is a FiftyOne patch: it lives with the others, in fiftyone_qdrant.integration
PLUGIN_DIR = integration.APP_PLUGIN_DIR
METADATA_PATH = integration.APP_PLUGIN_METADATA

# The directory name used by install(); FiftyOne identifies plugins by the
# name in fiftyone.yml, not by directory
INSTALL_DIRNAME = "fiftyone-qdrant"


def register(p):
    """Called by FiftyOne's plugin loader."""
    from . import operators

    for cls in operators.OPERATORS:
        p.register(cls)


# -- explicit installation ----------------------------------------------------


def _plugins_dir(plugins_dir: Optional[str]) -> str:
    if plugins_dir is None:
        import fiftyone as fo

        plugins_dir = fo.config.plugins_dir
    if not plugins_dir:
        raise ValueError("No plugins directory: set FIFTYONE_PLUGINS_DIR or pass plugins_dir")
    return os.path.abspath(os.path.expanduser(plugins_dir))


def install(plugins_dir: Optional[str] = None, copy: bool = False, overwrite: bool = False) -> str:
    """Installs the packaged plugin into a FiftyOne plugins directory.

    Args:
        plugins_dir (None): default ``fo.config.plugins_dir``
        copy (False): copy the files instead of linking to the installed
            package (a link follows package upgrades; a copy survives the
            package's removal and works where links are not allowed)
        overwrite (False): replace an existing installation

    Returns:
        the installed plugin directory
    """
    plugins_dir = _plugins_dir(plugins_dir)
    target = os.path.join(plugins_dir, INSTALL_DIRNAME)
    if os.path.lexists(target):
        if os.path.realpath(target) == os.path.realpath(PLUGIN_DIR) and not copy:
            return target
        if not overwrite:
            raise FileExistsError("'%s' already exists; pass overwrite=True to replace it" % target)
        uninstall(plugins_dir)

    os.makedirs(plugins_dir, exist_ok=True)
    if copy:
        shutil.copytree(
            PLUGIN_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    else:
        os.symlink(PLUGIN_DIR, target, target_is_directory=True)
    return target


def uninstall(plugins_dir: Optional[str] = None) -> bool:
    """Removes what :func:`install` put in ``plugins_dir``; returns whether
    anything was removed. Never touches the package's own files."""
    target = os.path.join(_plugins_dir(plugins_dir), INSTALL_DIRNAME)
    if os.path.islink(target):
        os.unlink(target)
        return True
    if os.path.isdir(target):
        if os.path.realpath(target) == os.path.realpath(PLUGIN_DIR):
            return False
        if not os.path.isfile(os.path.join(target, "fiftyone.yml")):
            raise ValueError("'%s' is not a fiftyone-qdrant plugin; not removing it" % target)
        with open(os.path.join(target, "fiftyone.yml")) as f:
            if PLUGIN_NAME not in f.read():
                raise ValueError("'%s' holds another plugin; not removing it" % target)
        shutil.rmtree(target)
        return True
    return False


def status() -> dict:
    """Where FiftyOne finds the plugin, for humans and for ``--json``."""
    import fiftyone as fo
    import fiftyone.plugins as fop
    import fiftyone.plugins.core as fopc

    found = [p for p in fop.list_plugins(enabled="all", builtin="all") if p.name == PLUGIN_NAME]
    return {
        "plugin": PLUGIN_NAME,
        "package_dir": PLUGIN_DIR,
        "plugins_dir": fo.config.plugins_dir,
        "discovery_hook": bool(getattr(fopc._iter_plugin_metadata_files, integration._PATCHED, False))
        and not integration.disabled(),
        "found_at": found[0].directory if found else None,
        "enabled": bool(found) and PLUGIN_NAME not in fop.list_disabled_plugins(),
    }


# -- command line: ``fiftyone-qdrant plugin ...`` -----------------------------


def add_cli_command(subparsers) -> None:
    """Adds ``plugin {install,uninstall,status}`` to the ``fiftyone-qdrant``
    command's subparsers."""
    parser = subparsers.add_parser(
        "plugin",
        help="install the FiftyOne App plugin into a plugins directory, or show where FiftyOne finds it",
        description=(
            "FiftyOne finds the App plugin shipped with this package automatically (an import hook "
            "installed with the package). 'install' links it into a FiftyOne plugins directory "
            "(default: fo.config.plugins_dir / FIFTYONE_PLUGINS_DIR) for setups where the hook is "
            "off or another machine serves the App."
        ),
    )
    actions = parser.add_subparsers(dest="plugin_action", metavar="ACTION")
    actions.required = True
    install_parser = actions.add_parser("install", help="link (or --copy) the plugin into a plugins directory")
    install_parser.add_argument("--plugins-dir", help="default: fo.config.plugins_dir")
    install_parser.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    install_parser.add_argument("--force", action="store_true", help="replace an existing installation")
    uninstall_parser = actions.add_parser("uninstall", help="remove what 'install' put in a plugins directory")
    uninstall_parser.add_argument("--plugins-dir", help="default: fo.config.plugins_dir")
    status_parser = actions.add_parser("status", help="show where FiftyOne finds the plugin")
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_cli_command)


def run_cli_command(args) -> int:
    import json

    try:
        if args.plugin_action == "install":
            target = install(args.plugins_dir, copy=args.copy, overwrite=args.force)
            print("Installed %s at %s" % (PLUGIN_NAME, target))
        elif args.plugin_action == "uninstall":
            removed = uninstall(args.plugins_dir)
            print("Removed %s" % PLUGIN_NAME if removed else "Nothing to remove")
        else:
            info = status()
            if args.json:
                print(json.dumps(info, indent=1))
            else:
                for key, value in info.items():
                    print("%-15s %s" % (key + ":", value))
            return 0 if info["found_at"] else 1
    except (ValueError, FileExistsError) as e:
        print("fiftyone-qdrant plugin: %s" % e, file=sys.stderr)
        return 2
    return 0

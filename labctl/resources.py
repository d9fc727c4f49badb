"""Where the shipped files are: inside the package when installed from a wheel, at the repository top otherwise."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent


def _shipped(inside: str, in_checkout: str) -> Path:
    path = PACKAGE / inside
    return path if path.exists() else PACKAGE.parent / in_checkout


TEMPLATES = _shipped("templates", "templates")
DEFAULT_CLUSTERS_JSON = _shipped("data/clusters.json", "clusters.json")


def phases_package() -> ModuleType:
    # The wheel installs phases/ as labctl.phases; in a checkout it is the top-level `phases` package.
    try:
        return importlib.import_module("labctl.phases")
    except ModuleNotFoundError:
        return importlib.import_module("phases")

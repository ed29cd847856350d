"""Loading a bench script as a module (bench/ is a package of the project), for the tests of its pure parts."""
from __future__ import annotations

import importlib.util
from types import ModuleType


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module."""
    return importlib.import_module(f"bench.{name}")

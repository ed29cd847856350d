"""Loading a bench script (bench/ is not a package) as a module, for the tests of its pure parts."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.app.conftest import ROOT


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module, with bench/ importable for the scripts that import each other."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

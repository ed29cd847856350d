"""A pool's folder: its catalog and every file kept beside it, named and found in one place.

    data/demo-smollm2/
        catalog.csv            the models (core.pool.catalog)
        vectors.parquet        their Delta Activations           python -m core embed
        TITLE                  the pool's name for people (one line)
        recipe.json            how its models were finetuned     (a task is finetuned the same way)
        search.json            task-search settings: {"steps": N, "lens_shrinkage": S}
        novelty.json           the "no close match" rule's settings (bench/calibrate_novelty.py)
        references.parquet     everyday reference tasks          python -m core references
        descriptions.json      what each model learned           python -m core describe
        report.json            clustering against baselines      python -m core report --json
        search_quality.json    task search, measured             bench/eval_find.py --summary

A folder may hold several catalogs (``data/catalogs/paper-*.csv``); a catalog's vector file is then named after it
(``pool.csv`` -> ``pool.vectors.parquet``). The app and every command find it with :func:`vectors_file`, in one
order: the catalog's own name first, the folder's shared ``vectors.parquet`` last.
"""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import DeltaAtlasError
from core.pool.catalog import Catalog, read_catalog
from core.textio import file_problem

# The pool the app and the commands open when given none: SmolLM2-135M finetunes (bench/README.md says why).
DEMO_CATALOG = Path(__file__).resolve().parents[2] / "data" / "demo-smollm2" / "catalog.csv"

TITLE_FILE = "TITLE"
RECIPE_FILE = "recipe.json"
SEARCH_FILE = "search.json"
NOVELTY_FILE = "novelty.json"
REFERENCE_FILE = "references.parquet"
FINGERPRINT_FILE = "fingerprints.parquet"
DESCRIPTIONS_FILE = "descriptions.json"
REPORT_FILE = "report.json"
SEARCH_QUALITY_FILE = "search_quality.json"
VECTOR_NAMES = ("{own}", "{stem}_vectors.parquet", "{stem}.parquet", "vectors.parquet")  # the order they are tried in
MAX_SETTINGS_BYTES = 1 << 20    # a settings file is a few lines


def beside(catalog_path: str | Path, name: str) -> Path:
    """The file called ``name`` in the catalog's folder."""
    return Path(catalog_path).parent / name


def own_vectors_name(catalog_path: str | Path) -> str:
    """The vector file named after the catalog: ``catalog.csv`` -> ``vectors.parquet``, ``x.csv`` -> ``x.vectors.parquet``."""
    stem = Path(catalog_path).stem
    return "vectors.parquet" if stem == "catalog" else f"{stem}.vectors.parquet"


def vectors_file(catalog_path: str | Path) -> Path | None:
    """The catalog's stored vector file, if any: the one named after it, then ``<stem>_vectors.parquet``,
    ``<stem>.parquet``, then the folder's shared ``vectors.parquet``."""
    stem = Path(catalog_path).stem
    for pattern in VECTOR_NAMES:
        path = beside(catalog_path, pattern.format(own=own_vectors_name(catalog_path), stem=stem))
        if path.is_file():
            return path
    return None


def vectors_target(catalog_path: str | Path) -> Path:
    """Where the catalog's vectors are read from and written to: the stored file, else the one named after it."""
    return vectors_file(catalog_path) or beside(catalog_path, own_vectors_name(catalog_path))


def open_catalog(catalog: str | Path | Catalog) -> Catalog:
    """A catalog, with a plain hint when the demo zoo (the default) has not been built yet."""
    if isinstance(catalog, Catalog):
        return catalog
    if Path(catalog).resolve() == DEMO_CATALOG and not DEMO_CATALOG.is_file():
        raise DeltaAtlasError(f"The demo zoo is not built yet ({DEMO_CATALOG} is missing): run `python -m core "
                              "build-demo --data-dir ../shared/datasets`, or pass --catalog CATALOG.csv.")
    return read_catalog(catalog)


def read_settings(catalog_path: str | Path | None, name: str) -> dict | None:
    """The JSON object of settings file ``name`` beside the catalog (recipe.json, search.json, novelty.json...);
    None when there is none; a clear error, naming the file, when it cannot be read."""
    return None if catalog_path is None else read_settings_file(beside(catalog_path, name))


def read_settings_file(path: str | Path) -> dict | None:
    """:func:`read_settings` for a settings file given by its own path."""
    path = Path(path)
    if not path.exists():
        return None
    problem = file_problem(path)
    try:
        if problem:
            raise ValueError(f"it {problem}")
        if path.stat().st_size > MAX_SETTINGS_BYTES:
            raise ValueError(f"it is {path.stat().st_size:,} bytes; a settings file is a few lines")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object of settings")
    except (ValueError, OSError, RecursionError) as exc:
        raise DeltaAtlasError(f"Settings file {path} cannot be read ({exc}): fix or delete it (without it, the "
                              "default settings are used).") from None
    return data


def quality_key(tasks: str, compare: str) -> str:
    """The key of a figure in search_quality.json: the task set (``ood``, ``held_out``, ``dev``), with the comparison
    after an underscore unless it is the paper's (``ood``, ``ood_domain-lens``); bench/eval_find.py --summary
    writes them."""
    return tasks if compare == "delta" else f"{tasks}_{compare}"


def title(catalog_path: str | Path) -> str | None:
    """The pool's TITLE (one line beside a ``catalog.csv``), if it has one."""
    path = beside(catalog_path, TITLE_FILE)
    if Path(catalog_path).stem != "catalog" or file_problem(path) or path.stat().st_size > MAX_SETTINGS_BYTES:
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text.splitlines()[0].strip()[:80] if text else None

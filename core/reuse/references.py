"""Reference tasks: general tasks that fit no pool, kept beside a pool to tell "nothing fits" from "a weak match".

Why: a task adapter trained on a dozen examples shares much with *any* other few-shot task adapter (the task
recipe, the assistant's answer style), so its similarity to a pool's models alone does not say whether it belongs
to one of the pool's domains. The reference tasks are hand-written tasks of everyday kinds the demo pools do not
cover (pet care, greeting cards, board games, ...; ``data/reference_tasks/``). They are trained with the pool's own
task recipe, exactly as a user's task is, and their vectors are stored beside the catalog (``references.parquet``).
A user's task that sits nearer to the reference tasks than to the pool's models is "not close"
(``margin`` in core.reuse.novelty.CloseMatchRule). They are never ranked or shown as results.

    core.reuse.reference_build.embed_references(catalog)   # trains each reference task, writes references.parquet
    table = load_references(catalog.path)      # the stored table, or None
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from core.errors import DeltaAtlasError
from core.pool.folder import REFERENCE_FILE, beside
from core.pool.vectors import matrix, read_metadata, read_vectors
from core.reuse.examples import load_examples

log = logging.getLogger(__name__)

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "data" / "reference_tasks"
MIN_REFERENCES = 3                        # fewer cannot stand for "everything else"


def reference_tasks(folder: str | Path = REFERENCE_DIR) -> dict[str, list]:
    """{name: examples} for every ``*.jsonl`` file of ``folder``, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DeltaAtlasError(f"Reference task folder {folder} is missing: pass a folder of .jsonl task files.")
    tasks = {path.stem: load_examples(path) for path in sorted(folder.glob("*.jsonl"))}
    if len(tasks) < MIN_REFERENCES:
        raise DeltaAtlasError(f"{folder} holds {len(tasks)} reference tasks; give at least {MIN_REFERENCES} .jsonl "
                              "files of tasks that fit none of the pool's models.")
    return tasks


def reference_path(catalog_path: str | Path) -> Path:
    return beside(catalog_path, REFERENCE_FILE)


def load_references(catalog_path: str | Path | None, width: int | None = None) -> pd.DataFrame | None:
    """The pool's stored reference vectors, or None when it has none (or too few, or of another width: a
    warning then, since the verdict falls back to the pool's own similarities)."""
    if catalog_path is None:
        return None
    path = reference_path(catalog_path)
    if not path.is_file():
        return None
    table = read_vectors(path)
    if len(table) < MIN_REFERENCES:
        log.warning("%s holds %d reference tasks (fewer than %d): not used.", path, len(table), MIN_REFERENCES)
        return None
    if width is not None and matrix(table).shape[1] != width:
        log.warning("%s was made with another base (%d numbers per vector, the pool has %d): not used; "
                    "recompute it with `python -m core references`.", path, matrix(table).shape[1], width)
        return None
    return table


def reference_settings(catalog_path: str | Path) -> dict:
    """The engine settings the reference vectors were made with (the pool's), for a consistency check."""
    path = reference_path(catalog_path)
    return read_metadata(path) if path.is_file() else {}

"""Compute a pool's reference vectors: ``python -m core references --catalog CATALOG``.

Each everyday reference task (core.reuse.references) is trained and embedded with the pool's own task recipe, as
a user's task is, and the vectors are written beside the catalog (``references.parquet``). About one task search
per reference task: 9 tasks took ~7 min on 2 CPU cores for the SmolLM2 zoo, seconds for the tiny zoo.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.engine.pool_vectors import pool_vectors
from core.errors import DeltaAtlasError
from core.pool.catalog import pool_base
from core.pool.folder import DEMO_CATALOG, open_catalog
from core.pool.vectors import make_table, write_vectors
from core.progress import ProgressFn, TextBar, report
from core.reuse.references import REFERENCE_DIR, reference_path, reference_tasks
from core.reuse.run import Run
from core.reuse.task import embed_task

log = logging.getLogger(__name__)


def embed_references(catalog, folder: str | Path = REFERENCE_DIR, *, device=None,
                     progress: ProgressFn | None = None, models=None) -> pd.DataFrame:
    """Train every reference task with the pool's task recipe and store their vectors beside the catalog.
    Returns the table (name, vector). Progress: one ``reference`` item per task, then the engine's own."""
    catalog = open_catalog(catalog)
    if catalog.path is None:
        raise DeltaAtlasError("Reference vectors are stored beside a catalog file: give a catalog read from disk.")
    tasks = reference_tasks(folder)
    pool, settings = pool_vectors(catalog, progress)
    base = pool_base(catalog, list(pool["name"]))
    vectors = []
    for i, (name, examples) in enumerate(tasks.items()):
        report(progress, i, len(tasks), "reference", name)
        work = Path(tempfile.mkdtemp(prefix=".reference-"))
        try:
            vector, _ = embed_task(examples, catalog, base, settings=settings, adapter_dir=work,
                                   run=Run(device, progress, models))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        vectors.append(vector)
        log.info("reference task %s embedded (%d of %d)", name, i + 1, len(tasks))
    report(progress, len(tasks), len(tasks), "reference", "")
    table = make_table(list(tasks), np.stack(vectors))
    write_vectors(table, reference_path(catalog.path), metadata={**settings, "reference_tasks": list(tasks)})
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", default=str(DEMO_CATALOG), help="the pool's catalog (default: the demo zoo)")
    parser.add_argument("--tasks", default=str(REFERENCE_DIR), metavar="FOLDER",
                        help="a folder of .jsonl tasks that fit none of the pool's models (default: the shipped "
                             "everyday tasks)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best there is)")


def main(args: argparse.Namespace) -> int:
    table = embed_references(args.catalog, args.tasks, device=args.device, progress=TextBar())
    print(f"{len(table)} reference vectors -> {reference_path(open_catalog(args.catalog).path)}")
    return 0

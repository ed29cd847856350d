"""A pool's vector table: the file stored beside its catalog (core.pool.folder finds it), else computed by the
engine (and cached), with the engine settings it was made with."""
from __future__ import annotations

import logging

import pandas as pd

from core.engine.embed import embed_catalog
from core.errors import DeltaAtlasError
from core.pool.catalog import Catalog
from core.pool.folder import vectors_file
from core.pool.vectors import read_metadata, read_vectors
from core.progress import ProgressFn

log = logging.getLogger(__name__)


def stored_vectors(catalog: Catalog) -> tuple[pd.DataFrame | None, dict]:
    """The vector table stored beside the catalog (or None) and the engine settings it was made with."""
    path = vectors_file(catalog.path) if catalog.path else None
    if path is None:
        return None, {}
    return catalog.align(read_vectors(path), path), (read_metadata(path) if path.suffix == ".parquet" else {})


def pool_vectors(catalog: Catalog, progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """The pool's vector table and the engine settings it was made with: the stored file, else computed (cached)."""
    table, settings = stored_vectors(catalog)
    if table is not None:
        return table, settings
    log.info("No vector file beside %s: embedding the pool (cached for next time).", catalog.path)
    result = embed_catalog(catalog, progress=progress)
    if len(result.table) == 0:
        raise DeltaAtlasError(f"No model of {catalog.path} could be embedded: run `python -m core embed` to see why.")
    return result.table, result.metadata

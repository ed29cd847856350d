"""Vector tables: one row per model with ``name``, ``vector`` (list of float32) and every label column.

Parquet is the contract between the engine, the CLI and the app; CSV export is offered besides.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import DeltaAtlasError
from core.textio import file_problem, spreadsheet_safe, unescape_frame

META_KEY = b"delta_atlas"


def make_table(names: list[str], vectors: np.ndarray, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Assemble a vector table. ``vectors`` is [n_models, d]; ``labels`` has a ``name`` column (extra rows ignored)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    frame = pd.DataFrame({"name": list(names), "vector": [row for row in vectors]})
    if labels is not None and len(labels.columns) > 1:
        frame = frame.merge(labels, on="name", how="left", sort=False)
    return frame


def matrix(table: pd.DataFrame) -> np.ndarray:
    """The vectors of a table as one float32 array [n_models, d]."""
    if len(table) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in table["vector"]])


def label_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in ("name", "vector")]


def write_vectors(table: pd.DataFrame, path: str | Path, metadata: dict | None = None) -> Path:
    """Write a vector table to Parquet (or CSV when the suffix is .csv, with its text cells made safe for a
    spreadsheet), atomically: each writer fills a temporary file of its own, renamed into place only once complete;
    a failure (a full disk) leaves the old file as it was and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")   # one name per writer
    try:
        if path.suffix.lower() == ".csv":
            flat = table.copy()
            flat["vector"] = [json.dumps([float(x) for x in v]) for v in flat["vector"]]
            spreadsheet_safe(flat).to_csv(tmp, index=False)
        else:
            vectors = pa.array([np.asarray(v, dtype=np.float32) for v in table["vector"]], type=pa.list_(pa.float32()))
            rest = pa.Table.from_pandas(table.drop(columns=["vector"]).astype(str), preserve_index=False)
            arrow = rest.add_column(1, "vector", vectors)
            meta = dict(arrow.schema.metadata or {})
            meta[META_KEY] = json.dumps(metadata or {}).encode()
            pq.write_table(arrow.replace_schema_metadata(meta), tmp)
        tmp.replace(path)
    except OSError as exc:
        raise DeltaAtlasError(f"Cannot write the vector file {path} ({exc.strerror or exc}): free some disk space or "
                              "choose another folder; the file there (if any) was left as it was.") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_vectors(path: str | Path) -> pd.DataFrame:
    """Read a vector table written by :func:`write_vectors` (Parquet or CSV)."""
    path = Path(path)
    if problem := file_problem(path):
        raise DeltaAtlasError(f"Vector file {path} {problem}: run `python -m core embed` to make it.")
    try:
        if path.suffix.lower() == ".csv":
            table = unescape_frame(pd.read_csv(path, dtype=str, keep_default_na=False))
            table["vector"] = [np.asarray(json.loads(v), dtype=np.float32) for v in table["vector"]]
        else:
            table = pq.read_table(path).to_pandas()
            table["vector"] = [np.asarray(v, dtype=np.float32) for v in table["vector"]]
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise DeltaAtlasError(f"Vector file {path} cannot be read ({exc}); recompute it with `python -m core embed`.") from None
    if "name" not in table.columns or "vector" not in table.columns:
        raise DeltaAtlasError(f"Vector file {path} lacks a 'name' or 'vector' column; recompute it with `python -m core embed`.")
    check_table(table, path)
    return table


def check_table(table: pd.DataFrame, path) -> None:
    """Refuse a vector table that would rank, report or map wrongly: repeated names (rows and labels would
    misalign), rows of different widths, or values that are not finite."""
    repeated = table["name"][table["name"].duplicated()].unique()
    if len(repeated):
        raise DeltaAtlasError(f"Vector file {path} names {repeated[0]!r} more than once ({len(repeated)} repeated "
                              "names): keep one row per model, or recompute it with `python -m core embed`.")
    blank = [i for i, n in enumerate(table["name"]) if not str(n).strip() or str(n).lower() == "nan"]
    if blank:
        raise DeltaAtlasError(f"Vector file {path}: row {blank[0] + 1} has no model name ({len(blank)} such rows): "
                              "name every row after its model in the catalog, or recompute it with "
                              "`python -m core embed`.")
    widths = {len(v) for v in table["vector"]}
    if widths == {0}:
        raise DeltaAtlasError(f"Vector file {path} holds empty vectors (no numbers): recompute it with "
                              "`python -m core embed`.")
    if len(widths) > 1:
        raise DeltaAtlasError(f"Vector file {path} mixes vectors of {len(widths)} widths ({sorted(widths)[:4]}): its "
                              "models come from different bases; keep one base per file.")
    bad = [n for n, v in zip(table["name"], table["vector"]) if not np.isfinite(v).all()]
    if bad:
        raise DeltaAtlasError(f"Vector file {path}: the vector of {bad[0]!r} holds values that are not finite (NaN "
                              f"or infinity; {len(bad)} model(s)): recompute it with `python -m core embed`.")


def read_metadata(path: str | Path) -> dict:
    """The engine's metadata stored with a Parquet vector file (base, probes, layer, dtype, engine version)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        data = json.loads(raw) if raw else {}
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DeltaAtlasError(f"The settings stored in vector file {path} cannot be read ({exc}); recompute it with "
                              "`python -m core embed`.") from None
    if not isinstance(data, dict):
        raise DeltaAtlasError(f"The settings stored in vector file {path} are not a JSON object; recompute it with "
                              "`python -m core embed`.")
    return data

"""Time `describe` (what each model learned) on the first N models of a pool, and `embed` of the same models beside
it, in one run: seconds per model for each, and the whole pool's describe time extrapolated from them.

    .venv/bin/python bench/bench_describe.py --catalog data/demo-smollm2/catalog.csv --models 6 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from core.engine.embed import embed_catalog
from core.engine.pool_vectors import pool_vectors
from core.map.describe import describe_pool
from core.pool.catalog import Catalog, read_catalog
from core.pool.folder import DEMO_CATALOG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--models", type=int, default=6, help="how many of the pool's models with weights on disk")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    catalog = read_catalog(args.catalog)
    table, _ = pool_vectors(catalog)
    on_disk = [e for e in catalog if e.source.is_local and e.source.local.is_dir()][: args.models]
    subset = Catalog(entries=on_disk, label_columns=catalog.label_columns, path=catalog.path)
    rows = table[table["name"].isin({e.name for e in on_disk})].reset_index(drop=True)
    describe_pool(subset, rows.head(1))                           # warm-up: the base loads, libraries import
    start = time.perf_counter()
    describe_pool(subset, rows)
    describe_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:                   # a cold cache: every model embedded again
        start = time.perf_counter()
        embed_catalog(subset, cache_dir=cache)
        embed_s = time.perf_counter() - start
    n, pool = len(rows), len(table)
    out = {"catalog": str(catalog.path), "models": n, "describe_s": round(describe_s, 1),
           "describe_s_per_model": round(describe_s / n, 2), "embed_s": round(embed_s, 1),
           "embed_s_per_model": round(embed_s / n, 2), "pool_models": pool,
           "pool_describe_s_extrapolated": round(describe_s / n * pool, 0)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m core embed``: the Delta Activations of every model in a catalog, written as a vector file.

Exit status: 0 when every model was embedded, 1 when some failed (the others are still written), 2 when the
catalog or an option is invalid (nothing is loaded then). With ``--ray``, the models are spread over Ray workers
(:mod:`core.engine.ray_embed`); the vector file and the summary are the same.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.engine.embed import ADAPTER_BATCH, embed_catalog
from core.engine.probes import load_probes
from core.errors import DeltaAtlasError
from core.pool.catalog import read_catalog
from core.pool.vectors import write_vectors
from core.progress import TextBar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", required=True, type=Path, help="CSV file: name, source, kind, base, labels...")
    parser.add_argument("--out", required=True, type=Path, help="vector file to write (.parquet, or .csv)")
    parser.add_argument("--device", default=None, help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, mps")
    parser.add_argument("--dtype", default=None, help="auto (default: bfloat16 on a GPU, float32 on the CPU), "
                        "float32, bfloat16, float16")
    parser.add_argument("--layer", type=int, default=-1, help="hidden-state layer (default -1: the final one)")
    parser.add_argument("--probes", type=Path, default=None, help="probe file (one probe per blank-line block, "
                        "or a JSON list); default: the paper's five")
    parser.add_argument("--force", action="store_true", help="recompute even what is cached")
    parser.add_argument("--allow-pickle", action="store_true", help="also load pickle (.bin/.pt) weights; they "
                        "can run code, so only for sources you trust")
    parser.add_argument("--cache-dir", type=Path, default=None, help="vector cache (default: $DELTA_ATLAS_CACHE "
                        "or ~/.cache/delta-atlas)")
    parser.add_argument("--adapter-batch", type=int, default=ADAPTER_BATCH, help="adapters per forward pass "
                        f"(default {ADAPTER_BATCH}; with --ray, also the models sent to a worker at a time)")
    parser.add_argument("--ray", default=None, metavar="auto|local|ADDRESS", help="spread the models over Ray "
                        "workers: local (a Ray instance on this machine), auto (the running cluster) or HOST:PORT; "
                        "on several machines the model sources and --cache-dir must be on a shared filesystem")
    parser.add_argument("--describe", action="store_true", help="then say what each model learned (as `python -m "
                        "core describe` does; descriptions.json beside the catalog, only new models computed)")
    parser.add_argument("--workers", type=int, default=None, help="with --ray: workers to start (default: one "
                        "per GPU of the cluster, or one per CPU core when it has none)")


def main(args: argparse.Namespace) -> int:
    catalog = read_catalog(args.catalog)            # a malformed catalog stops here, before any model loads
    probes = load_probes(args.probes)
    options = dict(probes=probes, layer=args.layer, device=args.device, dtype=args.dtype, force=args.force,
                   cache_dir=args.cache_dir, allow_pickle=args.allow_pickle, adapter_batch=args.adapter_batch,
                   progress=TextBar(stream=sys.stderr))
    if args.ray:
        from core.engine.ray_embed import embed_catalog_ray

        result = embed_catalog_ray(catalog, address=args.ray, workers=args.workers, batch=args.adapter_batch,
                                   **options)
    elif args.workers is not None:
        raise DeltaAtlasError("--workers is for --ray: add --ray local (this machine) or --ray auto (a cluster).")
    else:
        result = embed_catalog(catalog, **options)
    if len(result.table):
        write_vectors(result.table, args.out, {**result.metadata, "catalog": str(args.catalog)})
    print(f"{len(result.table)} of {len(catalog)} models embedded in {result.seconds:.1f} s: "
          f"{len(result.computed)} computed, {len(result.cached)} cached, {len(result.failures)} failed"
          + (f" -> {args.out}" if len(result.table) else "; nothing written"))
    for failure in result.failures:
        print(f"  FAILED {failure.name}: {failure.reason}")
    return 1 if result.failures else 0

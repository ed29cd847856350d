"""How long adding a model takes in the app: measuring it (its vector) and reading it (its answers and words), as the
Add models page's job does, for a first model (the base not loaded yet) and the next ones (the base shared in memory).

    python bench/bench_add.py --models 3          # demo zoo adapters copied into a temporary folder, cold cache

Prints one line per model and a JSON summary. Run it on a quiet machine: the timings share the CPU with anything else.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from core.engine.shared import SharedModels
from core.map.describe import update_descriptions
from core.pool.catalog import read_catalog
from core.pool.folder import DEMO_CATALOG
from core.pool.userpool import UserPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEMO_CATALOG)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = [e for e in read_catalog(args.catalog) if e.kind == "lora"][: args.models]
    with tempfile.TemporaryDirectory() as tmp:
        allowed = Path(tmp) / "allowed"
        os.environ.update(DELTA_ATLAS_ALLOWED_ROOTS=str(allowed), DELTA_ATLAS_CACHE=str(Path(tmp) / "cache"))
        users, models, rows = UserPool(Path(tmp) / "user"), SharedModels(), []
        for entry in entries:
            folder = shutil.copytree(entry.source.local, allowed / entry.name)
            start = time.perf_counter()
            table = users.add_local(folder, base=str(entry.base), name=f"mine-{entry.name}", kind="auto",
                                    models=models)
            measured = time.perf_counter()
            update_descriptions(users.catalog(), table, models=models)
            done = time.perf_counter()
            rows.append({"model": entry.name, "measure_s": round(measured - start, 2),
                         "describe_s": round(done - measured, 2), "total_s": round(done - start, 2)})
            print(f"{entry.name}: measured in {rows[-1]['measure_s']} s, read in {rows[-1]['describe_s']} s")
    later = [r["total_s"] for r in rows[1:]]
    print(json.dumps({"first_s": rows[0]["total_s"] if rows else None,
                      "next_mean_s": round(sum(later) / len(later), 2) if later else None, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

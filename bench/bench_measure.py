""""Do the closest models help?": the loss check's seconds with the examples padded in parts of similar length
(``core.reuse.fit.EXAMPLES_PER_PART``, shipped) against all examples padded together (one part, as before), in
one process, alternating, with the same base in memory. The losses must agree; only the padding differs.

    python bench/bench_measure.py --examples data/sample_tasks/math-word-problems.jsonl \
        --examples bench/dev_tasks/math-percent.jsonl --limit 20

Run it on a quiet machine: the timings share the CPU with anything else.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.engine.shared import SharedModels
from core.pool.catalog import pool_base
from core.pool.folder import DEMO_CATALOG, open_catalog
from core.reuse import fit
from core.reuse.examples import load_examples

CANDIDATES = ("math-gsm8k-first", "math-svamp", "coding-mbpp-first", "medical-pubmedqa-first", "mix-gsm8k+mbpp")


def timed(examples, catalog, base, models, part: int) -> tuple[float, list[float]]:
    fit.EXAMPLES_PER_PART = part
    start = time.perf_counter()
    gains = fit.measure_gains(examples, catalog, list(CANDIDATES), base, models=models)
    return time.perf_counter() - start, [float(gains["base_loss"].iloc[0]), *gains["loss"].tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEMO_CATALOG)
    parser.add_argument("--examples", type=Path, action="append", required=True, help="example file (repeatable)")
    parser.add_argument("--limit", type=int, default=20, help="examples used, at most")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = [e for path in args.examples for e in load_examples(path)][: args.limit]
    catalog = open_catalog(args.catalog)
    base, models = pool_base(catalog, list(catalog.names)), SharedModels()
    shipped = fit.EXAMPLES_PER_PART
    timed(examples, catalog, base, models, shipped)                     # warm-up: the base into memory
    seconds = {"one part (before)": [], f"parts of {shipped} (shipped)": []}
    losses = {}
    for _ in range(args.repeats):
        for name, part in zip(seconds, (len(examples), shipped)):
            took, losses[name] = timed(examples, catalog, base, models, part)
            seconds[name].append(round(took, 1))
    fit.EXAMPLES_PER_PART = shipped
    before, after = (np.array(v, dtype=float) for v in losses.values())
    print(json.dumps({"examples": len(examples), "models": 1 + len(CANDIDATES), "seconds": seconds,
                      "ratio_of_medians": round(float(np.median(seconds[f"parts of {shipped} (shipped)"])
                                                      / np.median(seconds["one part (before)"])), 2),
                      "largest_loss_difference": float(np.nanmax(np.abs(before - after)))}, indent=1))


if __name__ == "__main__":
    main()

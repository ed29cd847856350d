"""A search with the lower layers' pass shared between its stages (core.reuse.lower_states) against the same search
with every stage running its own, alternating in one process with the base in memory (as in the app): each
search's seconds per stage, and the largest difference between the two answers (task vector, fingerprints, losses).

    .venv/bin/python bench/bench_shared_states.py --examples data/sample_tasks/math-word-problems.jsonl \\
        --examples bench/dev_tasks/math-percent.jsonl --limit 20 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import statistics
from contextlib import nullcontext
from unittest import mock

import numpy as np
import torch

from bench.bench_search_stages import timed_search
from core.engine.shared import SharedModels
from core.pool.folder import DEMO_CATALOG
from core.reuse.examples import load_examples
from core.reuse.lower_states import LowerStates
from core.reuse.task import find_models


def answers_differ(a, b) -> dict[str, float]:
    """The largest absolute difference of each part of two search results."""
    out = {"vector": float(np.abs(a.vector - b.vector).max()),
           "loss": float(np.abs(a.gains["loss"].to_numpy(float) - b.gains["loss"].to_numpy(float)).max())}
    if a.fingerprints is not None:
        out["fingerprints"] = float(np.abs(a.fingerprints - b.fingerprints).max())
    out["same verdict"] = float(a.verdict == b.verdict and list(a.gains["better"]) == list(b.gains["better"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", action="append", required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    examples = [ex for path in args.examples for ex in load_examples(path)][: args.limit]
    models = SharedModels()
    find_models(examples[:4], args.catalog, steps=1, check_help=1, models=models)      # the base into memory
    runs: dict[str, list[dict]] = {"shared": [], "alone": []}
    results = {}
    for _ in range(args.rounds):
        for way in ("alone", "shared"):
            alone = mock.patch.object(LowerStates, "find", lambda *a: None) if way == "alone" else nullcontext()
            with alone:
                timing = timed_search(examples, args.catalog, models, keep_result=True)
            runs[way].append(timing)
            results[way] = timing.pop("result")
    out = {way: {"seconds": [t["seconds"] for t in timings],
                 "stages": {stage: [t["stages"].get(stage) for t in timings] for stage in timings[0]["stages"]}}
           for way, timings in runs.items()}
    out["ratio of medians (shared / alone)"] = round(statistics.median(out["shared"]["seconds"]) /
                                                     statistics.median(out["alone"]["seconds"]), 3)
    out["largest difference"] = answers_differ(results["shared"], results["alone"])
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

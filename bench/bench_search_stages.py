"""Where a task search's time goes: each stage's seconds (loading the base, teaching it the task, measuring the task,
checking whether the closest models help), for a first search (base loaded from disk) and a second one (base in
memory, as in the app after its first search).

    python bench/bench_search_stages.py --examples data/sample_tasks/math-word-problems.jsonl \
        --examples bench/dev_tasks/math-percent.jsonl --limit 20

Run it on a quiet machine: the timings share the CPU with anything else.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core.engine.shared import SharedModels
from core.pool.folder import DEMO_CATALOG
from core.progress import Progress
from core.reuse.examples import load_examples
from core.reuse.task import find_models


def timed_search(examples: list, catalog, models: SharedModels | None = None, keep_result: bool = False) -> dict:
    """One search's total seconds, the seconds before its first progress report, and each stage's seconds (and,
    with ``keep_result``, the TaskResult under "result")."""
    stages: dict[str, list[float]] = {}
    start = time.perf_counter()

    def progress(p: Progress) -> None:
        now = time.perf_counter() - start
        stages.setdefault(p.stage, [now, now])[1] = now

    result = find_models(examples, catalog, progress=progress, models=models)
    total = time.perf_counter() - start
    first = min((a for a, _ in stages.values()), default=total)
    return {"seconds": round(total, 1), "before_first_progress": round(first, 1), "verdict": result.verdict,
            "stages": {k: round(b - a, 1) for k, (a, b) in stages.items()}, **({"result": result} if keep_result else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEMO_CATALOG)
    parser.add_argument("--examples", type=Path, action="append", required=True, help="example file (repeatable)")
    parser.add_argument("--limit", type=int, default=20, help="examples used, at most")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = [e for path in args.examples for e in load_examples(path)][: args.limit]
    models = SharedModels()
    runs = {name: timed_search(examples, args.catalog, models) for name in ("first search", "second search")}
    print(json.dumps({"examples": len(examples), **runs}, indent=1))


if __name__ == "__main__":
    main()

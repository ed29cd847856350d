"""Add the data side to an earlier eval_find run: each task's examples read by the base (core.reuse.fingerprints).

The rows of ``eval_find.py --out`` runs made before the data side keep their task vectors and measured gains but not
their examples' fingerprints; this rebuilds each task exactly as that run drew it and stores the fingerprints in
its row (``fingerprints``), so that ``--replay`` and calibrate_novelty.py can weigh the data side without a new
search (seconds a task instead of a minute). The file is rewritten in place.

    .venv/bin/python bench/add_fingerprints.py bench/out/dev.json --dev --off-domain
    .venv/bin/python bench/add_fingerprints.py bench/out/ood.json --ood
    .venv/bin/python bench/add_fingerprints.py bench/out/heldout.json --tasks-per-dataset 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.eval_find import DEV_DIRS, OOD_DIR, ROOT, held_out_tasks, off_domain_tasks, ood_tasks
from core.engine.loading import load_model, resolve_source
from core.pool.catalog import pool_base, read_catalog
from core.pool.folder import DEMO_CATALOG
from core.reuse.fingerprints import read_examples


def open_run(description: str, argv: list[str] | None = None):
    """Parse the options that say how an eval_find run drew its tasks (give the run's own); returns (args, the
    run's path, its parsed content, [(row, the row's examples rebuilt as the run drew them)])."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", help="an eval_find.py --out file")
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--ood", action="store_true")
    parser.add_argument("--dev", action="store_true")
    parser.add_argument("--off-domain", action="store_true")
    parser.add_argument("--tasks-per-dataset", type=int, default=2)
    parser.add_argument("--examples", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)
    if args.ood:
        tasks = ood_tasks(OOD_DIR)
    elif args.dev:
        tasks = [task for folder in DEV_DIRS for task in ood_tasks(folder)]
    else:
        tasks = held_out_tasks(data_dir, args.tasks_per_dataset, args.examples, args.seed)
    if args.off_domain:
        tasks += off_domain_tasks(data_dir, args.examples, args.seed)
    examples = {name: task_examples for name, _, task_examples in tasks}
    path = Path(args.run)
    runs = json.loads(path.read_text())
    pairs = []
    for row in (row for rows in runs.values() for row in rows):
        task = examples.get(row["dataset"])
        if task is None or len(task) != row["examples"]:
            raise SystemExit(f"{row['dataset']}: not rebuilt as the run drew it (give the run's task options)")
        pairs.append((row, task))
    return args, path, runs, pairs


def main(argv: list[str] | None = None) -> int:
    args, path, runs, pairs = open_run(__doc__.splitlines()[0], argv)
    catalog = read_catalog(args.catalog)
    model, tokenizer = load_model(resolve_source(pool_base(catalog, catalog.names)), "cpu", torch.float32)
    for row, task in pairs:
        read = read_examples(model, tokenizer, task)                                       # [m, d]
        row["fingerprints"] = [[round(float(x), 4) for x in example] for example in read]
        print(f"{row['dataset']}: {len(task)} examples read", file=sys.stderr)
    path.write_text(json.dumps(runs, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Add each example's loss to an earlier eval_find run: the base's and each measured candidate's, example by example.

The rows of ``eval_find.py --out`` keep each candidate's loss over all of a task's examples (``gains``); whether a
model helps on most examples, or only thanks to one or two, needs the losses example by example. This rebuilds each
task exactly as the run drew it, measures the base and the row's candidates again (core.reuse.fit.example_losses)
and stores, per model, each example's summed response-token loss and token count (``example_losses``: {name:
{"sums": [...], "counts": [...]}}, the base under ""). Checkpointed: the file is rewritten after every task, and
rows that already have them are skipped. bench/choose_help_rule.py reads them.

    .venv/bin/python bench/add_example_losses.py bench/out/dev.json --dev --off-domain
    .venv/bin/python bench/add_example_losses.py bench/out/ood_s6.json --ood
"""
from __future__ import annotations

import json
import sys
import time

from bench.add_fingerprints import open_run
from core.engine.shared import SharedModels
from core.pool.catalog import pool_base, read_catalog
from core.reuse.fit import example_losses


def main(argv: list[str] | None = None) -> int:
    args, path, runs, pairs = open_run(__doc__.splitlines()[0], argv)
    catalog = read_catalog(args.catalog)
    base = pool_base(catalog, catalog.names)
    models = SharedModels()
    for row, task in pairs:
        if "example_losses" in row or not row.get("gains"):
            continue
        start = time.perf_counter()
        losses, notes = example_losses(task, catalog, [gain["name"] for gain in row["gains"]], base, models=models)
        row["example_losses"] = {name: {"sums": sums.tolist(), "counts": counts.tolist()}
                                 for name, (sums, counts) in losses.items()}
        path.write_text(json.dumps(runs, default=str))
        print(f"{row['dataset']}: {len(task)} examples, {len(losses) - 1} models, "
              f"{time.perf_counter() - start:.1f} s{'; not measured: ' + str(notes) if notes else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

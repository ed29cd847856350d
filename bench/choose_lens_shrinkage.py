"""Choose a pool's lens shrinkage (``lens_shrinkage`` in its search.json) on its development tasks, by replaying
their saved task vectors (no finetuning):

    .venv/bin/python bench/choose_lens_shrinkage.py bench/out/dev.json --check bench/out/ood.json \
        --write-settings data/demo-smollm2/search.json

The choice: the most dev tasks whose top match is of their domain, then the most whose top 5 are mostly of it; among
values that tie, the middle one of the longest unbroken run (a value inside a plateau, not at its edge). The --check
file only reports, it never chooses.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.calibrate_novelty import rows_of
from bench.eval_find import in_domain
from core.engine.pool_vectors import pool_vectors
from core.pool.catalog import read_catalog
from core.pool.folder import DEMO_CATALOG
from core.reuse.task import default_compare, rank, rank_groups

SHRINKAGES = ("auto", 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def scores(rows: list[dict], table, shrinkage) -> tuple[int, int, int, int]:
    """(top-1 right, top-5 majority right, best group right, in-domain tasks) with the pool's default comparison."""
    compare = default_compare(table)
    top1 = top5 = group = n = 0
    for row in rows:
        if row["domain"] == "off":
            continue
        matches = rank(np.asarray(row["vector"], dtype=np.float32), table, compare=compare, shrinkage=shrinkage)
        groups = rank_groups(matches)
        domains = groups[groups["group_by"] == "domain"]
        top1 += in_domain(matches["domain"].iloc[0], row["domain"])
        top5 += sum(in_domain(d, row["domain"]) for d in matches["domain"].head(5)) >= 3
        group += bool(len(domains)) and in_domain(domains["group"].iloc[0], row["domain"])
        n += 1
    return top1, top5, group, n


def choose(results: dict) -> str | float:
    """The best (top-1, top-5) value; ties: the middle of the longest run of tied neighbours in SHRINKAGES order."""
    best = max(r[:2] for r in results.values())
    tied = [s for s in SHRINKAGES if s in results and results[s][:2] == best]
    runs, run = [], []
    for s in SHRINKAGES:
        run = run + [s] if s in tied else []
        runs.append(list(run))
    longest = max(runs, key=len)
    return longest[(len(longest) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev", help="eval_find output of the development tasks (chooses)")
    parser.add_argument("--check", default=None, help="eval_find output to report on (never chooses)")
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--write-settings", default=None, metavar="FILE", help="the pool's search.json to update")
    args = parser.parse_args(argv)
    table = pool_vectors(read_catalog(args.catalog))[0]
    dev, check = rows_of([args.dev]), rows_of([args.check]) if args.check else None
    results = {}
    print("| shrinkage | dev: top-1 / top-5 majority / best group |" + (" check: the same |" if check else ""))
    print("|---|---|" + ("---|" if check else ""))
    for shrinkage in SHRINKAGES:
        results[shrinkage] = scores(dev, table, shrinkage)
        line = f"| {shrinkage} | {'{}/{n} / {}/{n} / {}/{n}'.format(*results[shrinkage][:3], n=results[shrinkage][3])} |"
        if check:
            c = scores(check, table, shrinkage)
            line += f" {c[0]}/{c[3]} / {c[1]}/{c[3]} / {c[2]}/{c[3]} |"
        print(line)
    chosen = choose(results)
    print(f"chosen on the development tasks: lens_shrinkage {chosen}")
    if args.write_settings:
        path = Path(args.write_settings)
        settings = json.loads(path.read_text()) if path.is_file() else {}
        top1, _, _, n = results[chosen]
        settings["lens_shrinkage"] = chosen
        settings["lens_shrinkage_chosen_on"] = (f"{Path(args.dev).name}: {top1}/{n} development tasks right first "
                                                "(bench/choose_lens_shrinkage.py)")
        path.write_text(json.dumps(settings, indent=1))
        print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

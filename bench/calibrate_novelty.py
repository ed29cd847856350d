"""Choose the "no close match" quantile (core/novelty.py) from eval_find results, without searching again.

Each eval_find row keeps the task's similarity to every pool model, so the rule can be replayed for any quantile.
Run it on the *calibration* results (held-out rows of the datasets plus the off-domain tasks made from pretrain/),
pick the quantile there, and only then look at the hand-written set (--check), which never chooses anything:

    .venv/bin/python bench/eval_find.py --tasks-per-dataset 1 --off-domain --out bench/out/calibration.json
    .venv/bin/python bench/calibrate_novelty.py bench/out/calibration.json
    .venv/bin/python bench/calibrate_novelty.py bench/out/calibration.json --check bench/out/eval_find_ood.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.novelty import CloseMatchRule  # noqa: E402
from core.task import DEMO_CATALOG, pool_vectors  # noqa: E402
from core.catalog import read_catalog  # noqa: E402
from core.vectors import matrix  # noqa: E402

QUANTILES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def rows_of(path: str) -> list[dict]:
    data = json.loads(Path(path).read_text())
    return next(iter(data.values()))                     # the first step count's rows


def flags(rows: list[dict], rule: CloseMatchRule) -> tuple[int, int, int, int]:
    """(off-domain flagged, off-domain tasks, in-domain flagged, in-domain tasks)."""
    off = [r for r in rows if r["domain"] == "off"]
    inside = [r for r in rows if r["domain"] != "off"]
    judged = lambda group: sum(not rule.is_close(np.array([m["similarity"] for m in r["matches"]])) for r in group)  # noqa: E731
    return judged(off), len(off), judged(inside), len(inside)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration", help="eval_find output with in-domain and off-domain tasks")
    parser.add_argument("--check", default=None, help="eval_find output to report on (never used to choose)")
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--top", type=int, default=3)
    args = parser.parse_args(argv)
    vectors = matrix(pool_vectors(read_catalog(args.catalog))[0])
    calibration = rows_of(args.calibration)
    check = rows_of(args.check) if args.check else None
    print("| quantile | threshold | calibration: off-domain flagged | calibration: in-domain flagged wrongly |"
          + (" check: off-domain flagged | check: in-domain flagged wrongly |" if check else ""))
    print("|---|---|---|---|" + ("---|---|" if check else ""))
    for q in QUANTILES:
        rule = CloseMatchRule(quantile=q, top=args.top).fit(vectors)
        a, n_off, b, n_in = flags(calibration, rule)
        line = f"| {q:.2f} | {rule.threshold_:.3f} | {a}/{n_off} | {b}/{n_in} |"
        if check:
            c, m_off, d, m_in = flags(check, rule)
            line += f" {c}/{m_off} | {d}/{m_in} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

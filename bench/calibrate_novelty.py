"""Choose the "no close match" quantile (core/reuse/novelty.py) from eval_find results, without searching again.

Each eval_find row keeps the task's similarity to every pool model, so the rule can be replayed for any quantile.
Run it on the *calibration* results (held-out rows of the datasets plus the off-domain tasks made from pretrain/),
pick the quantile there, and only then look at the hand-written set (--check), which never chooses anything:

    .venv/bin/python bench/eval_find.py --tasks-per-dataset 1 --off-domain --out bench/out/calibration.json
    .venv/bin/python bench/calibrate_novelty.py bench/out/calibration.json
    .venv/bin/python bench/calibrate_novelty.py bench/out/calibration.json --check bench/out/eval_find_ood.json \
        --write-settings data/demo/novelty.json --write-summary data/demo/search_quality.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core.engine.vectors import matrix  # noqa: E402
from core.pool.catalog import read_catalog  # noqa: E402
from core.reuse.novelty import CloseMatchRule  # noqa: E402
from core.reuse.task import pool_vectors  # noqa: E402
from core.zoo import DEMO_CATALOG  # noqa: E402

QUANTILES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.95)


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
    parser.add_argument("--write-settings", default=None, metavar="FILE",
                        help="write the chosen quantile (most off-domain flags with at most one in-domain flag on "
                             "the calibration tasks) as the pool's novelty.json")
    parser.add_argument("--write-summary", default=None, metavar="FILE",
                        help="replay the default rule on both files and write the How it works counts "
                             "(calibration -> held_out, --check -> ood)")
    args = parser.parse_args(argv)
    vectors = matrix(pool_vectors(read_catalog(args.catalog))[0])
    calibration = rows_of(args.calibration)
    check = rows_of(args.check) if args.check else None
    print("| quantile | threshold | calibration: off-domain flagged | calibration: in-domain flagged wrongly |"
          + (" check: off-domain flagged | check: in-domain flagged wrongly |" if check else ""))
    print("|---|---|---|---|" + ("---|---|" if check else ""))
    best = None
    for q in QUANTILES:
        rule = CloseMatchRule(quantile=q, top=args.top).fit(vectors)
        a, n_off, b, n_in = flags(calibration, rule)
        if b <= 1 and (best is None or a > best[1]):
            best = (q, a)
        line = f"| {q:.2f} | {rule.threshold_:.3f} | {a}/{n_off} | {b}/{n_in} |"
        if check:
            c, m_off, d, m_in = flags(check, rule)
            line += f" {c}/{m_off} | {d}/{m_in} |"
        print(line)
    if args.write_settings and best is not None:
        Path(args.write_settings).write_text(json.dumps({
            "quantile": best[0], "top": args.top,
            "chosen_on": f"{Path(args.calibration).name}: the most off-domain flags with at most 1 in-domain flag"}, indent=1))
        print(f"chosen quantile {best[0]} -> {args.write_settings}")
    if args.write_summary:
        write_summary(Path(args.write_summary), vectors, calibration, check, Path(args.write_settings or ""))
    return 0


def write_summary(path: Path, vectors: np.ndarray, calibration: list[dict], check: list[dict] | None,
                  settings: Path | None = None) -> None:
    """eval_find's counts with the verdicts of the pool's rule (the runs may have used another quantile)."""
    from eval_find import summary

    from core.reuse.novelty import load_rule

    rule = load_rule(settings if settings and settings.is_file() else None).fit(vectors)
    out = {}
    for key, rows in (("held_out", calibration), ("ood", check)):
        if not rows:
            continue
        for row in rows:
            row["no_close_match"] = not rule.is_close(np.array([m["similarity"] for m in row["matches"]]))
        counts = summary(rows)
        if "in" in counts:
            out[key] = counts["in"]
        if "off" in counts and (key == "ood" or "off" not in out):
            out["off"] = counts["off"]
    out["rule"] = {"quantile": rule.quantile, "top": rule.top, "threshold": round(rule.threshold_, 4)}
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())

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
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core.engine.vectors import matrix  # noqa: E402
from core.pool.catalog import read_catalog  # noqa: E402
from core.reuse.fit import helps  # noqa: E402
from core.reuse.novelty import COMBINE, CloseMatchRule, verdict  # noqa: E402
from core.reuse.task import pool_vectors  # noqa: E402
from core.zoo import DEMO_CATALOG  # noqa: E402

QUANTILES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.95)
MAX_IN_FLAGGED = 1          # the choice: the most off-domain flags with at most this many in-domain flags


def rows_of(paths: list[str]) -> list[dict]:
    """The rows of one or more eval_find outputs (each file's first step count)."""
    return [row for path in paths for row in next(iter(json.loads(Path(path).read_text()).values()))]


def raw_similarities(rows: list[dict], vectors: np.ndarray) -> list[np.ndarray]:
    """Each task's raw cosine to every pool model (the rows' own ``matches`` may be through a lens)."""
    from core.map.geometry import cosine_similarities

    tasks = np.asarray([row["vector"] for row in rows], dtype=np.float64)
    return list(cosine_similarities(tasks, vectors))


def any_helps(row: dict) -> bool | None:
    """Whether a measured model lowered the loss by HELP_MARGIN; None when nothing was measured."""
    gains = [g["gain"] for g in row.get("gains") or [] if g.get("gain") is not None and math.isfinite(g["gain"])]
    return None if not gains else any(helps(g) for g in gains)


def flags(rows: list[dict], sims: list[np.ndarray], rule: CloseMatchRule) -> tuple[int, int, int, int]:
    """(off-domain flagged, off-domain tasks, in-domain flagged, in-domain tasks) under ``rule`` and its combine."""
    flagged = [verdict_of(rule, s, row) == "none" for row, s in zip(rows, sims)]
    off = [f for f, row in zip(flagged, rows) if row["domain"] == "off"]
    inside = [f for f, row in zip(flagged, rows) if row["domain"] != "off"]
    return sum(off), len(off), sum(inside), len(inside)


def verdict_of(rule: CloseMatchRule, sims: np.ndarray, row: dict) -> str:
    helps = any_helps(row)
    gains = None if helps is None else pd.DataFrame({"gain": [1.0 if helps else -1.0], "helps": [helps]})
    return verdict(rule.is_close(sims), gains, rule.combine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration", nargs="+", help="eval_find outputs with in-domain and off-domain tasks")
    parser.add_argument("--check", default=None, help="eval_find output to report on (never used to choose)")
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--write-settings", default=None, metavar="FILE",
                        help="write the chosen quantile and combination (most off-domain flags with at most "
                             f"{MAX_IN_FLAGGED} in-domain flag on the calibration tasks) as the pool's novelty.json")
    parser.add_argument("--write-summary", default=None, metavar="FILE",
                        help="replay the chosen rule on both sets and write the How it works counts "
                             "(calibration -> held_out, --check -> ood)")
    args = parser.parse_args(argv)
    vectors = matrix(pool_vectors(read_catalog(args.catalog))[0])
    calibration = rows_of(args.calibration)
    check = rows_of([args.check]) if args.check else None
    cal_sims = raw_similarities(calibration, vectors)
    check_sims = raw_similarities(check, vectors) if check else None
    print("| combine | quantile | threshold | calibration: off-domain flagged | calibration: in-domain flagged wrongly |"
          + (" check: off-domain flagged | check: in-domain flagged wrongly |" if check else ""))
    print("|---|---|---|---|---|" + ("---|---|" if check else ""))
    best = None
    for combine in COMBINE:
        for q in QUANTILES if combine != "help" else QUANTILES[:1]:
            rule = CloseMatchRule(quantile=q, top=args.top, combine=combine).fit(vectors)
            a, n_off, b, n_in = flags(calibration, cal_sims, rule)
            if b <= MAX_IN_FLAGGED and (best is None or a > best[2] or (a == best[2] and b < best[3])):
                best = (combine, q, a, b)
            line = f"| {combine} | {q:.2f} | {rule.threshold_:.3f} | {a}/{n_off} | {b}/{n_in} |"
            if check:
                c, m_off, d, m_in = flags(check, check_sims, rule)
                line += f" {c}/{m_off} | {d}/{m_in} |"
            print(line)
    if best is not None:
        print(f"chosen on the calibration tasks: combine {best[0]}, quantile {best[1]} ({best[2]} off-domain flagged, "
              f"{best[3]} in-domain flagged)")
    if args.write_settings and best is not None:
        Path(args.write_settings).write_text(json.dumps({
            "quantile": best[1], "top": args.top, "combine": best[0],
            "chosen_on": f"{', '.join(Path(p).name for p in args.calibration)}: the most off-domain flags with at "
                         f"most {MAX_IN_FLAGGED} in-domain flag"}, indent=1))
        print(f"-> {args.write_settings}")
    if args.write_summary:
        write_summary(Path(args.write_summary), vectors, calibration, check, Path(args.write_settings or ""))
    return 0


def write_summary(path: Path, vectors: np.ndarray, calibration: list[dict], check: list[dict] | None,
                  settings: Path | None = None) -> None:
    """eval_find's counts with the verdicts of the pool's rule (the runs may have used another quantile).

    Only the keys this tool owns are replaced; the rest of the summary (e.g. ``loss_on``) stays as it was."""
    from eval_find import summary

    from core.reuse.novelty import load_rule

    rule = load_rule(settings if settings and settings.is_file() else None).fit(vectors)
    out = json.loads(path.read_text()) if path.is_file() else {}  # keep the keys other tools wrote (loss_on, lens)
    for key in ("held_out", "off", "ood"):
        out.pop(key, None)
    for key, rows in (("held_out", calibration), ("ood", check)):
        if not rows:
            continue
        for row, sims in zip(rows, raw_similarities(rows, vectors)):
            row["no_close_match"] = verdict_of(rule, sims, row) == "none"
        counts = summary(rows)
        if "in" in counts:
            out[key] = counts["in"]
        if "off" in counts and (key == "ood" or "off" not in out):
            out["off"] = counts["off"]
    out["rule"] = {"quantile": rule.quantile, "top": rule.top, "combine": rule.combine,
                   "threshold": round(rule.threshold_, 4)}
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())

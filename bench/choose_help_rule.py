"""Choose how many of a task's examples a model must do better on to "help" (core.reuse.fit.HELP_SHARE).

A model helps when its loss on the task's examples is at least HELP_MARGIN lower than the base's and, example by
example, lower than the base's on at least a share s of them. The share is chosen by asking whether the claim holds
on examples it was not judged on: for every task and measured candidate of an eval_find run with per-example losses
(bench/add_example_losses.py), the examples are split at random into two halves (``--splits`` times), the rule
judges on one half, and the other half says whether the model really lowers the error there (its token-weighted
loss below the base's). Per share: the claims made, the share of claims that hold (precision), the share of
models lowering the error on the other half that were claimed (recall), and F1. The share with the best F1 on the
development tasks is chosen (the smallest among ties); ``--check`` files only report. ``--write-summary`` puts
the precision of the shipped rule (core.reuse.fit.HELP_SHARE) on both sets into a pool's search_quality.json, for
the How it works page.

    .venv/bin/python bench/choose_help_rule.py bench/out/dev.json --check bench/out/ood_s6.json \
        --write-summary data/demo-smollm2/search_quality.json
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from core.reuse import fit

SHARES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def candidates(path: str) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(task, base sums [n], model sums [n], counts [n]) for every measured candidate of every row of a run."""
    out = []
    for row in next(iter(json.loads(Path(path).read_text()).values())):
        per_example = row.get("example_losses") or {}
        if "" not in per_example:
            continue
        base, counts = (np.asarray(per_example[""][k], dtype=np.float64) for k in ("sums", "counts"))
        out += [(row["dataset"], base, np.asarray(losses["sums"], dtype=np.float64), counts)
                for name, losses in per_example.items() if name]
    return out


def claims(base: np.ndarray, model: np.ndarray, counts: np.ndarray, shares) -> dict[float, bool]:
    """Per share, the search's rule (core.reuse.fit.helps) on these examples: the gain is at least HELP_MARGIN and
    the model beats the base on at least that share of them."""
    if not (counts > 0).any():
        return {s: False for s in shares}
    gain = float((base.sum() - model.sum()) / base.sum())
    better, compared = fit.examples_better(base, model, counts)
    return {s: fit.helps(gain, better, compared, share=s) for s in shares}


def split_half(items, shares, splits: int, seed: int) -> dict[float, dict]:
    """Per share: claims, claims that hold, and models that lower the error on the other half."""
    rng = random.Random(seed)
    tally = {s: {"claims": 0, "held": 0, "real": 0} for s in shares}
    for _, base, model, counts in items:
        n = len(counts)
        for _ in range(splits):
            order = list(range(n))
            rng.shuffle(order)
            judged, other = np.array(order[: n // 2]), np.array(order[n // 2:])
            real = model[other].sum() < base[other].sum()
            for s, said in claims(base[judged], model[judged], counts[judged], shares).items():
                t = tally[s]
                t["claims"] += said
                t["held"] += said and real
                t["real"] += real
    for t in tally.values():          # a claim that holds is also a model that lowers the error and was found
        t["precision"] = t["held"] / t["claims"] if t["claims"] else float("nan")
        t["recall"] = t["held"] / t["real"] if t["real"] else float("nan")
        p, r = t["precision"], t["recall"]
        t["f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return tally


def whole(items, shares) -> dict[float, int]:
    """Per share: how many candidates the rule says help, judged on all of their task's examples."""
    said = [claims(b, m, c, shares) for _, b, m, c in items]
    return {s: sum(each[s] for each in said) for s in shares}


def report(name: str, items, splits: int, seed: int) -> dict[float, dict]:
    tally, counts = split_half(items, SHARES, splits, seed), whole(items, SHARES)
    print(f"\n{name}: {len(items)} candidates of {len({t for t, *_ in items})} tasks, {splits} splits each")
    print("share  helps (all examples)  claims  precision  recall   F1")
    for s in SHARES:
        t = tally[s]
        print(f"{s:5.2f}  {counts[s]:20d}  {t['claims']:6d}  {t['precision']:9.3f}  {t['recall']:6.3f}  {t['f1']:.3f}")
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an eval_find.py --out file of the development tasks, with per-example losses")
    parser.add_argument("--check", action="append", default=[], help="other runs: reported, never used to choose")
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-summary", default=None, metavar="FILE",
                        help="add the shipped rule's split-half precision (dev, first --check) to search_quality.json")
    args = parser.parse_args(argv)
    tally = report(args.run, candidates(args.run), args.splits, args.seed)
    best = max(SHARES, key=lambda s: (round(tally[s]["f1"], 3), -s))
    print(f"\nchosen on {args.run}: share {best} (F1 {tally[best]['f1']:.3f}); shipped: {fit.HELP_SHARE}")
    checks = [report(f"{path} (report only)", candidates(path), args.splits, args.seed) for path in args.check]
    if args.write_summary:
        write_summary(Path(args.write_summary), tally, checks[0] if checks else None, args.splits)
    return 0


def write_summary(path: Path, dev: dict, check: dict | None, splits: int) -> None:
    """``help_check`` in search_quality.json: how often a "helps" of the shipped rule held on the other half."""
    shipped = min(SHARES, key=lambda s: abs(s - fit.HELP_SHARE))
    out = json.loads(path.read_text()) if path.is_file() else {}
    out["help_check"] = {"margin": fit.HELP_MARGIN, "share": fit.HELP_SHARE, "splits": splits,
                         "dev_claims": dev[shipped]["claims"], "dev_held": round(dev[shipped]["precision"], 3),
                         **({"ood_claims": check[shipped]["claims"], "ood_held": round(check[shipped]["precision"], 3)}
                            if check else {})}
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())

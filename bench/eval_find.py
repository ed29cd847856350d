"""Measure task search on the demo zoo with held-out tasks.

For every dataset of ../shared/datasets that ``core.zoo.demo_data`` knows, a few tasks of N examples are drawn from the
part the pool never trained on (``held_out``); each task is embedded (few-shot LoRA + Delta Activations) and the
pool ranked. Printed per domain: how often the top-1 model is in the task's domain, how often the majority (3 of
5) of the top 5 are, how often the best *domain group* (mean similarity of the domain's models) is right, and
the seconds per task. A mixture model (domain ``math+coding``) counts as right for either of its domains.

    .venv/bin/python bench/eval_find.py                       # the demo zoo, 2 tasks per dataset, 15 examples each
    .venv/bin/python bench/eval_find.py --steps 40,80,120     # compare few-shot step counts
    .venv/bin/python bench/eval_find.py --threads 2           # the issue's timing condition: 2 CPU cores
    .venv/bin/python bench/eval_find.py --ood                 # the hand-written tasks of bench/ood_tasks/
    .venv/bin/python bench/eval_find.py --dev                 # the hand-written development tasks (may choose)
    .venv/bin/python bench/eval_find.py --off-domain          # off-domain tasks made from pretrain/ (calibration)
    .venv/bin/python bench/eval_find.py --compare domain-lens --replay bench/out/eval_find.json
                                          # re-rank the task vectors of an earlier run by another comparison
                                          # (with --ood when that run was --ood: it names the --summary entry)

Held-out rows of the training datasets are the easy case; ``--ood`` is the real test (tasks written by hand for
this project, never used to choose a default). ``--dev`` runs a second hand-written set (bench/dev_tasks/ and the
app's data/sample_tasks/), written apart from the first, on which settings may be compared and chosen. Off-domain
tasks (domain ``off``) count as right when the search says "no close match"; every in-domain task reports whether it
was flagged wrongly.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=FutureWarning)   # transformers' deprecation notes inside PEFT

from core.engine.pool_vectors import pool_vectors
from core.pool.catalog import read_catalog
from core.pool.folder import DEMO_CATALOG, NOVELTY_FILE, quality_key, read_settings
from core.reuse.fit import HELP_MARGIN, helps
from core.reuse.fit import examples_better as fit_examples_better
from core.reuse.task import COMPARISONS, default_compare, find_models, match_task, rank_groups, task_steps


def in_domain(label: str, domain: str) -> bool:
    return domain in str(label).split("+")


def held_out_tasks(data_dir: Path, per_dataset: int, n_examples: int, seed: int, only: list[str] | None = None):
    """(dataset, domain, examples) tuples: disjoint slices of each dataset's held-out part, in a seeded order."""
    from core.zoo import demo_data

    tasks = []
    for key, info in demo_data.DATASETS.items():
        if only and key not in only and info.domain not in only:
            continue
        if not (data_dir / info.folder).is_dir():
            print(f"skipping {key}: {data_dir / info.folder} is missing", file=sys.stderr)
            continue
        held = demo_data.held_out(data_dir, key)
        random.Random(f"{seed}:{key}").shuffle(held)
        for t in range(min(per_dataset, len(held) // n_examples)):
            tasks.append((key, info.domain, held[t * n_examples:(t + 1) * n_examples]))
    return tasks


OOD_DIR = ROOT / "bench" / "ood_tasks"
DEV_DIRS = (ROOT / "bench" / "dev_tasks", ROOT / "data" / "sample_tasks")


def ood_tasks(folder: Path = OOD_DIR, only: list[str] | None = None):
    """(task name, domain, examples) for every ``<domain>-<slug>.jsonl`` file; ``off-*`` files are off-domain."""
    from core.reuse.examples import load_examples

    tasks = []
    for path in sorted(folder.glob("*.jsonl")):
        domain = path.stem.split("-", 1)[0]
        if only and domain not in only and path.stem not in only:
            continue
        tasks.append((path.stem, domain, load_examples(path)))
    return tasks


def off_domain_tasks(data_dir: Path, n_examples: int, seed: int):
    from core.zoo import demo_data

    return [(f"off-{name}", "off", examples) for name, examples in
            demo_data.off_domain_tasks(data_dir, n_examples, seed).items()]


def evaluate(tasks, catalog, steps: int, device=None, compare: str | None = None,
             checkpoint: Path | None = None) -> list[dict]:
    """Search every task; with ``checkpoint``, each finished row is saved there at once and a rerun with the same
    checkpoint skips the tasks it already holds (a long run resumes where it stopped)."""
    done = {}
    if checkpoint is not None and checkpoint.is_file():
        done = {row["dataset"]: row for row in json.loads(checkpoint.read_text()).get(str(steps), [])}
    rows = []
    for i, (dataset, domain, examples) in enumerate(tasks, start=1):
        if dataset in done:
            rows.append(done[dataset])
            continue
        start = time.perf_counter()
        result = find_models(examples, catalog, steps=steps, device=device,   # vectors: the file beside the catalog
                             compare=compare)
        rows.append(row_of(dataset, domain, len(examples), steps, time.perf_counter() - start, result))
        row = rows[-1]
        print(f"[{i}/{len(tasks)}] {dataset:<24} top-1 {row['top1']:<32} {'ok ' if row['top1_right'] else 'NO '}"
              f"group {row['group_top1']:<12} {result.verdict:<7}{row['seconds']:5.1f} s", file=sys.stderr)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text(json.dumps({str(steps): rows}, default=str))
    return rows


def replay(rows: list[dict], catalog, compare: str | None, hide_labels: bool = False) -> list[dict]:
    """The rows of an earlier run, re-ranked by ``compare`` from their saved task vectors (no finetuning). With
    ``hide_labels`` the ranking sees the vectors alone, as for a pool from the Hub; the labels only score it."""
    import numpy as np

    pool, _ = pool_vectors(catalog)
    seen = pool[["name", "vector"]] if hide_labels else pool
    domains = dict(zip(pool["name"], pool["domain"]))
    out = []
    for row in rows:
        vector = np.asarray(row["vector"], dtype=np.float32)
        gains = saved_gains(row)
        fingerprints = np.asarray(row["fingerprints"], dtype=np.float32) if row.get("fingerprints") else None
        result = match_task(vector, seen, compare=compare, catalog_path=catalog.path,
                            gains=gains, fingerprints=fingerprints)
        if hide_labels:
            result.matches["domain"] = result.matches["name"].map(domains)
            result.group_matches = rank_groups(result.matches)
        out.append(row_of(row["dataset"], row["domain"], row["examples"], row["steps"], row["seconds"], result,
                          row.get("final_loss")))
    return out


def saved_gains(row: dict):
    """A saved row's measured gains as the search's loss check gives them (name, loss, base_loss, gain, better,
    compared, helps), or None when nothing was measured. ``better``/``compared`` come from the row's own counts, or
    from its per-example losses (bench/add_example_losses.py); rows with neither judge by the overall gain alone."""
    import pandas as pd

    if not row.get("gains"):
        return None
    gains = pd.DataFrame(row["gains"])
    per_example = row.get("example_losses") or {}
    if "better" not in gains and "" in per_example:
        counted = [examples_better(per_example, name) for name in gains["name"]]
        gains["better"] = [c[0] for c in counted]
        gains["compared"] = [c[1] for c in counted]
    if "better" not in gains:
        gains["better"], gains["compared"] = None, 0
    gains["helps"] = [helps(g, None if pd.isna(b) else int(b), int(c or 0))
                      for g, b, c in zip(gains["gain"], gains["better"], gains["compared"])]
    return gains


def examples_better(per_example: dict, name: str) -> tuple[int | None, int]:
    """(examples on which model ``name`` has a lower mean loss than the base, examples compared) from a row's
    ``example_losses`` (core.reuse.fit.examples_better); (None, 0) for a model not measured."""
    if name not in per_example:
        return None, 0
    return fit_examples_better(per_example[""]["sums"], per_example[name]["sums"], per_example[""]["counts"])


def row_of(dataset, domain, n_examples, steps, seconds, result, final_loss=None) -> dict:
    """One task's figures: top-1, top-5 majority and best domain group right or not, and its saved vector."""
    top = result.matches.head(5)
    domains = result.group_matches[result.group_matches["group_by"] == "domain"]   # mixtures count in both
    row = {"dataset": dataset, "domain": domain, "steps": steps, "seconds": seconds, "compare": result.compare,
           "examples": n_examples, "no_close_match": result.no_close_match, "strength": result.match_strength,
           "close": result.close, "verdict": result.verdict,
           "top1": top["name"].iloc[0], "top1_domain": top["domain"].iloc[0],
           "top1_right": in_domain(top["domain"].iloc[0], domain),
           "top5_majority": sum(in_domain(d, domain) for d in top["domain"]) >= 3,
           "group_top1": domains["group"].iloc[0] if len(domains) else "",
           "group_right": bool(len(domains)) and in_domain(domains["group"].iloc[0], domain),
           "final_loss": final_loss if final_loss is not None else result.to_json()["final_loss"],
           "matches": result.matches[["name", "similarity", "domain"]].to_dict(orient="records"),
           "gains": [] if result.gains is None else result.gains[
               [c for c in ("name", "loss", "base_loss", "gain", "better", "compared") if c in result.gains]].to_dict(
               orient="records"),
           "vector": [round(float(x), 6) for x in result.vector]}   # to replay other rankings offline
    if result.fingerprints is not None:      # the examples read by the base, for replaying the data side
        row["fingerprints"] = [[round(float(x), 4) for x in example] for example in result.fingerprints]
    return row


def table(rows: list[dict]) -> str:
    by_domain = defaultdict(list)
    for row in rows:
        by_domain[row["domain"]].append(row)
    lines = ["| domain | tasks | top-1 right | top-5 majority right | best group right | flagged 'no close match' "
             "| s / task |", "|---|---|---|---|---|---|---|"]
    inside = [r for r in rows if r["domain"] != "off"]
    for domain, group in [*sorted(by_domain.items()), ("all in-domain", inside)]:
        n = len(group)
        if n == 0:
            continue
        pct = lambda key: f"{sum(r[key] for r in group)}/{n} ({100 * sum(r[key] for r in group) / n:.0f}%)"  # noqa: E731
        right = (lambda key: "–") if domain == "off" else pct                                           # noqa: E731
        lines.append(f"| {domain} | {n} | {right('top1_right')} | {right('top5_majority')} | {right('group_right')} | "
                     f"{pct('no_close_match')} | {sum(r['seconds'] for r in group) / n:.1f} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Counts for people ("27/30"), as the How it works page shows them."""
    def share(group, key):
        return f"{sum(r[key] for r in group)}/{len(group)}"

    inside, off = [r for r in rows if r["domain"] != "off"], [r for r in rows if r["domain"] == "off"]
    out = {}
    if inside:
        out["in"] = {"tasks": len(inside), "top1": share(inside, "top1_right"),
                     "top5_majority": share(inside, "top5_majority"), "group": share(inside, "group_right"),
                     "in_flagged": share(inside, "no_close_match"), "steps": int(inside[0]["steps"]),
                     "median_seconds": sorted(r["seconds"] for r in inside)[len(inside) // 2]}
    if off:
        out["off"] = {"tasks": len(off), "flagged": share(off, "no_close_match")}
    return out


def verdict_counts(rows: list[dict]) -> dict:
    """How many in-domain and off-domain tasks got each verdict ("strong", "weak", "none")."""
    out = {"in": defaultdict(int), "off": defaultdict(int)}
    for row in rows:
        out["off" if row["domain"] == "off" else "in"][row["verdict"]] += 1
    return {side: dict(counts) for side, counts in out.items() if counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--tasks-per-dataset", type=int, default=2)
    parser.add_argument("--examples", type=int, default=15, help="examples per task (the issue asks 10-20)")
    parser.add_argument("--steps", default=None,
                        help="few-shot finetuning steps; a list compares them (default: the pool's, as find uses)")
    parser.add_argument("--only", default="", help="comma-separated datasets or domains to keep")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (the goal is set on 2)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", default=None, choices=list(COMPARISONS),
                        help="how tasks meet models (default: the search's own default for the pool)")
    parser.add_argument("--replay", default=None, metavar="FILE",
                        help="re-rank the saved task vectors of an earlier run (its --out) instead of finetuning")
    parser.add_argument("--hide-labels", action="store_true",
                        help="with --replay: rank with the vectors alone (a pool without labels); labels only score")
    parser.add_argument("--ood", action="store_true", help="the hand-written tasks of bench/ood_tasks/")
    parser.add_argument("--dev", action="store_true",
                        help="the hand-written development tasks (bench/dev_tasks/, data/sample_tasks/)")
    parser.add_argument("--tasks-dir", default=None, metavar="DIR",
                        help="the <domain>-<slug>.jsonl tasks of another folder (e.g. bench/fresh_tasks/)")
    parser.add_argument("--off-domain", action="store_true", help="add off-domain tasks made from pretrain/")
    parser.add_argument("--no-held-out", action="store_true", help="leave out the held-out rows of the datasets")
    parser.add_argument("--summary", default=None, metavar="FILE",
                        help="also write the counts (for the How it works page: data/demo/search_quality.json)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "eval_find.json"))
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    catalog = read_catalog(args.catalog)
    if args.replay:
        earlier = json.loads(Path(args.replay).read_text())
        results = {steps: replay(rows, catalog, args.compare, args.hide_labels) for steps, rows in earlier.items()}
        for steps, rows in results.items():
            print(f"\n### steps = {steps}, compare = {args.compare} (replayed from {args.replay})\n\n{table(rows)}")
        return finish(args, results, catalog)
    pool, _ = pool_vectors(catalog)
    only = [s for s in args.only.split(",") if s]
    if args.ood or args.tasks_dir:
        tasks = ood_tasks(Path(args.tasks_dir) if args.tasks_dir else OOD_DIR, only)
    elif args.dev:
        tasks = [task for folder in DEV_DIRS for task in ood_tasks(folder, only)]
    elif args.no_held_out:
        tasks = []
    else:
        tasks = held_out_tasks(Path(args.data_dir), args.tasks_per_dataset, args.examples, args.seed, only)
    if args.off_domain:
        tasks += off_domain_tasks(Path(args.data_dir), args.examples, args.seed)
    print(f"{len(tasks)} tasks; pool of {len(pool)} models", file=sys.stderr)
    results = {}
    for steps in [int(s) for s in (args.steps or str(task_steps(catalog.path))).split(",")]:
        rows = evaluate(tasks, catalog, steps, args.device, args.compare,
                        Path(args.out).with_suffix(".partial.json"))
        results[steps] = rows
        print(f"\n### steps = {steps}\n\n{table(rows)}")
    return finish(args, results, catalog)


def finish(args, results: dict, catalog) -> int:
    """Write the rows (``--out``) and, with ``--summary``, the counts the How it works page shows."""
    if args.summary:
        path = Path(args.summary)
        known = json.loads(path.read_text()) if path.is_file() else {}
        rows = next(iter(results.values()))
        compare = args.compare or rows[0]["compare"]          # None: the pool's default, which the rows record
        which = "ood" if args.ood else "dev" if args.dev else "fresh" if args.tasks_dir else "held_out"
        counts = summary(rows)
        if "in" in counts:
            known[quality_key(which, compare)] = counts["in"]
        if "off" in counts:   # the verdict reads raw similarities and the saved gains, whichever comparison ranks
            known["off" if which == "ood" else f"off_{which}"] = counts["off"]
        if not args.compare:  # the pool's own default: what a user gets
            known[f"{which}_verdicts"] = verdict_counts(rows)
            known["rule"] = {**(read_settings(catalog.path, NOVELTY_FILE) or {"default": "no novelty.json"}),
                             "help_margin": HELP_MARGIN}
        known["default_compare"] = default_compare(pool_vectors(catalog)[0])
        path.write_text(json.dumps(known, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure selection for merging on the demo zoo: the top-k adapters by similarity to a task against k adapters
drawn at random (several draws), judged by the merged adapter's loss on held-out examples of the task.

Every task is two disjoint slices of a dataset's held-out part (never trained on by the pool): N examples that the
user would upload (task embedding, and the weight search with ``--weights search``) and M examples that only
score the merge. Candidates are the pool's LoRA adapters of the most common rank (so every method applies).

    .venv/bin/python bench/eval_merge.py                          # ties, auto weights, k=3, 3 random draws
    .venv/bin/python bench/eval_merge.py --weights search --budget 20
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=FutureWarning)   # transformers' deprecation notes inside PEFT

from core.pool.catalog import read_catalog
from core.pool.folder import DEMO_CATALOG
from core.reuse.task import find_models, task_steps


def candidates(catalog) -> list[str]:
    """LoRA adapters of the pool's most common rank, in catalog order."""
    from core.engine.loading import detect_kind, read_json, resolve_source

    ranks = {}
    for entry in catalog:
        if entry.kind == "full":
            continue
        folder = resolve_source(entry.source)
        if detect_kind(folder) == "lora":
            config = read_json(folder / "adapter_config.json")
            if str(config.get("peft_type", "")).upper() == "LORA" and not config.get("use_dora"):
                ranks[entry.name] = int(config.get("r", 0))
    common = Counter(ranks.values()).most_common(1)[0][0]
    return [name for name, r in ranks.items() if r == common]


def tasks_for(data_dir: Path, per_dataset: int, n_fit: int, n_eval: int, seed: int, only: list[str]):
    from core.zoo import demo_data

    tasks = []
    for key, info in demo_data.DATASETS.items():
        if (only and key not in only and info.domain not in only) or not (data_dir / info.folder).is_dir():
            continue
        held = demo_data.held_out(data_dir, key)
        random.Random(f"{seed}:{key}").shuffle(held)
        size = n_fit + n_eval
        for t in range(min(per_dataset, len(held) // size)):
            chunk = held[t * size:(t + 1) * size]
            tasks.append((key, info.domain, chunk[:n_fit], chunk[n_fit:]))
    return tasks


def heldout_loss(catalog, adapter_dir: Path | None, examples) -> float:
    """Loss on ``examples`` of the pool's base, with ``adapter_dir`` on it when given."""
    import torch
    from peft import PeftModel

    from core.engine.loading import load_model, resolve_source
    from core.reuse.train import example_loss

    model, tokenizer = load_model(resolve_source(catalog.entries[0].base), "cpu", torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return example_loss(model, tokenizer, examples)


def merged_loss(catalog, names, vector, fit, held, args) -> float:
    from core.reuse.merge import merge_adapters

    with tempfile.TemporaryDirectory(prefix="eval-merge-") as tmp:
        out = Path(tmp) / "merged"
        merge_adapters(catalog, names, args.method, args.weights, fit if args.weights == "search" else None, out,
                       task_vector=vector, budget=args.budget, measure=False, seed=args.seed)
        return heldout_loss(catalog, out, held)


def run_task(catalog, pool: list[str], task, args, index: int) -> dict:
    dataset, domain, fit, held = task
    start = time.perf_counter()
    found = find_models(fit, catalog, steps=args.steps)
    top = [n for n in found.matches["name"] if n in pool][: args.k]
    row = {"dataset": dataset, "domain": domain, "top_k": top, "base": heldout_loss(catalog, None, held),
           "top1_alone": heldout_loss(catalog, catalog.get(top[0]).source.local, held),
           "top_k_merged": merged_loss(catalog, top, found.vector, fit, held, args), "random": []}
    rng = random.Random(f"{args.seed}:{index}")
    for _ in range(args.draws):
        names = rng.sample(pool, args.k)
        row["random"].append({"names": names, "loss": merged_loss(catalog, names, found.vector, fit, held, args)})
    row["random_mean"] = sum(r["loss"] for r in row["random"]) / len(row["random"])
    row["seconds"] = time.perf_counter() - start
    return row


def table(rows: list[dict]) -> str:
    by_domain = defaultdict(list)
    for row in rows:
        by_domain[row["domain"]].append(row)
    lines = ["| domain | tasks | base | top-1 alone | top-k merged | random-k merged (mean of draws) | top-k beats random |",
             "|---|---|---|---|---|---|---|"]
    for domain, group in [*sorted(by_domain.items()), ("all", rows)]:
        mean = lambda key: sum(r[key] for r in group) / len(group)  # noqa: E731
        wins = sum(r["top_k_merged"] < r["random_mean"] for r in group)
        lines.append(f"| {domain} | {len(group)} | {mean('base'):.3f} | {mean('top1_alone'):.3f} | "
                     f"{mean('top_k_merged'):.3f} | {mean('random_mean'):.3f} | {wins}/{len(group)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--tasks-per-dataset", type=int, default=1)
    parser.add_argument("--fit", type=int, default=15, help="examples the user uploads")
    parser.add_argument("--eval", type=int, default=40, help="held-out examples that score the merge")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--draws", type=int, default=3, help="random selections per task")
    parser.add_argument("--method", default="ties")
    parser.add_argument("--weights", default="auto", choices=["auto", "search"])
    parser.add_argument("--budget", type=int, default=20, help="evaluations of --weights search")
    parser.add_argument("--steps", type=int, default=None,
                        help="few-shot steps of each task search (default: the pool's own search.json)")
    parser.add_argument("--only", default="", help="comma-separated datasets or domains to keep")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "eval_merge.json"))
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    catalog = read_catalog(args.catalog)
    if args.steps is None:
        args.steps = task_steps(Path(args.catalog))
    pool = candidates(catalog)
    tasks = tasks_for(Path(args.data_dir), args.tasks_per_dataset, args.fit, args.eval, args.seed,
                      [s for s in args.only.split(",") if s])
    print(f"{len(tasks)} tasks; {len(pool)} candidate adapters; {args.method}, {args.weights} weights, k={args.k}",
          file=sys.stderr)
    rows = []
    for i, task in enumerate(tasks, start=1):
        rows.append(run_task(catalog, pool, task, args, i))
        r = rows[-1]
        print(f"[{i}/{len(tasks)}] {r['dataset']:<24} base {r['base']:.3f} top-k {r['top_k_merged']:.3f} "
              f"random {r['random_mean']:.3f} ({r['seconds']:.0f} s)", file=sys.stderr)
    print(f"\n### merge {args.method}, {args.weights} weights, k={args.k}, {args.draws} random draws, "
          f"held-out loss on {args.eval} examples per task\n\n{table(rows)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment: rank a pool's LoRA adapters by how well they already answer a task (response loss), not by vectors.

For each task, the base's frozen layers below the adapters' first layer run once on the task's examples; then
the adapters' top layers run side by side (stacked LoRA, 11 at a time) and each adapter's mean response-token loss
is kept. Lower loss ranks first; the relative gain over the base, (base - best) / base, is a candidate "no close
match" signal. Only for pools whose adapters all sit on the same top layers (the SmolLM2 zoo: layers 22-29).

    python bench/eval_fit.py --ood --examples 8          # the hand-written tasks
    python bench/eval_fit.py --examples 8                # one held-out task per dataset + off-domain tasks
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

from bench import eval_find
from core.engine.bases import ensure_base
from core.engine.stacked_lora import read_lora, stacked_lora
from core.reuse.task import pool_recipe
from core.reuse.train import TopLayers, collate, encode, top_layer_ids

POOL = ROOT / "data" / "demo-smollm2"
CHUNK = 11          # adapters per stacked forward pass


class FitScorer:
    def __init__(self, pool: Path, max_length: int = 128):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.catalog = pd.read_csv(pool / "catalog.csv")
        shipped = self.catalog[(self.catalog.shipped == "yes") & (self.catalog.kind == "lora")]
        folder = ensure_base(str(shipped.base.iloc[0]))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.adapters = {row.name: read_lora(pool / row.source, self.model) for row in shipped.itertuples()}
        self.start = top_layer_ids(self.model, pool_recipe(pool / "catalog.csv"))[0]   # the adapters' first layer
        self.max_length = max_length

    @torch.no_grad()
    def score(self, examples) -> tuple[float, dict[str, float]]:
        """The base's and each adapter's mean response-token loss on ``examples``."""
        encoded = encode(examples, self.tokenizer, self.max_length)
        labels = collate(encoded, self.tokenizer.pad_token_id)["labels"]                  # [B, T]
        top = TopLayers(self.model, self.start, encoded, self.tokenizer.pad_token_id, nullcontext())

        def group_means(k: int) -> list[float]:          # row group g (rows g*B..(g+1)*B-1) runs through adapter g
            rows = [i for _ in range(k) for i in range(len(encoded))]
            losses, batch_rows = top.token_losses(rows, labels.repeat(k, 1))
            group = batch_rows // len(encoded)
            return (torch.zeros(k).index_add_(0, group, losses) / torch.bincount(group, minlength=k)).tolist()

        base = group_means(1)[0]
        names, losses = list(self.adapters), []
        for first in range(0, len(names), CHUNK):
            chunk = names[first:first + CHUNK]
            with stacked_lora(self.model, [self.adapters[n] for n in chunk]):
                losses += group_means(len(chunk))
        return base, dict(zip(names, losses))


def summary(rows: list[dict], catalog: pd.DataFrame, gain_threshold: float) -> dict:
    domains = catalog.set_index("name").domain
    top1 = majority = group = 0
    inside = [r for r in rows if r["domain"] != "off"]
    for r in inside:
        order = pd.Series(r["losses"]).sort_values()
        labels = domains[order.index]
        top1 += eval_find.in_domain(labels.iloc[0], r["domain"])
        majority += labels.iloc[:5].value_counts().index[0] == r["domain"]
        single = order[~labels.str.contains("+", regex=False)]
        group += single.groupby(domains[single.index]).apply(lambda x: x.nsmallest(3).mean()).idxmin() == r["domain"]
    gain = {r["task"]: (r["base"] - min(r["losses"].values())) / r["base"] for r in rows}
    off = [r for r in rows if r["domain"] == "off"]
    return {"tasks": len(inside), "top1": f"{top1}/{len(inside)}", "top5_majority": f"{majority}/{len(inside)}",
            "group": f"{group}/{len(inside)}", "gain_threshold": gain_threshold,
            "off_flagged": f"{sum(gain[r['task']] < gain_threshold for r in off)}/{len(off)}",
            "in_flagged": f"{sum(gain[r['task']] < gain_threshold for r in inside)}/{len(inside)}",
            "median_seconds": float(np.median([r["seconds"] for r in rows]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=str(POOL))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--ood", action="store_true", help="the hand-written tasks of bench/ood_tasks/")
    parser.add_argument("--examples", type=int, default=8, help="examples scored per task")
    parser.add_argument("--gain-threshold", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scorer = FitScorer(Path(args.pool))
    data = Path(args.data_dir)
    tasks = eval_find.ood_tasks() if args.ood else (eval_find.held_out_tasks(data, 1, 15, 0)
                                                    + eval_find.off_domain_tasks(data, 15, 0))
    rows = []
    for name, domain, examples in tasks:
        start = time.perf_counter()
        base, losses = scorer.score(examples[:args.examples])
        rows.append({"task": name, "domain": domain, "base": base, "losses": losses,
                     "seconds": time.perf_counter() - start})
        print(f"{name:<28} best {min(losses, key=losses.get):<28} {rows[-1]['seconds']:5.1f} s", file=sys.stderr)
    result = summary(rows, scorer.catalog, args.gain_threshold)
    print(json.dumps(result, indent=1))
    out = Path(args.out or ROOT / "bench" / "out" / f"eval_fit_{'ood' if args.ood else 'held'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": result, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

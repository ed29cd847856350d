"""Find -> Merge on the app's sample tasks, as a user clicks it: search, keep the models that help, merge them.

For every sample task of data/sample_tasks/: the search the Find page runs (the pool's default comparison, the
5 closest models' loss measured on the examples); the merge offer the page makes (``core.reuse.fit.
merge_candidates``: only LoRA adapters that lower the error by HELP_MARGIN, at most 3); when it offers one, the
merge the Merge page runs by default (TIES, automatic weights from similarity to the task), measured on the
same examples against the base. Also times one search of 20 examples end to end (``--timing``).

    .venv/bin/python bench/sample_merge.py --threads 2 --out bench/out/sample_merge.json \
        --summary data/demo-smollm2/search_quality.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.bench_search_stages import timed_search
from core.pool.catalog import read_catalog
from core.pool.folder import DEMO_CATALOG
from core.reuse.examples import load_examples
from core.reuse.fit import merge_candidates
from core.reuse.merge import merge_adapters
from core.reuse.task import find_models

SAMPLES = ROOT / "data" / "sample_tasks"
TO_MERGE = 3                 # the Find page's offer (pages/find.py TO_MERGE)


def run_task(catalog, path: Path) -> dict:
    examples = load_examples(path)
    start = time.perf_counter()
    result = find_models(examples, catalog)
    row = {"task": path.stem, "examples": len(examples), "search_seconds": time.perf_counter() - start,
           "verdict": result.verdict, "headline": result.headline,
           "gains": result.gains[["name", "loss", "base_loss", "gain"]].to_dict(orient="records")}
    take, left_out = merge_candidates(result.gains, catalog)
    row["offered"], row["left_out"] = take[:TO_MERGE], left_out
    if len(row["offered"]) >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            report = merge_adapters(catalog, row["offered"], "ties", "auto", examples, Path(tmp) / "merged",
                                    task_vector=result.vector)
        row["losses"] = report.losses
        row["merge_beats_base"] = report.losses["merged"] < report.losses["base"]
    print(f"{path.stem:<36} {result.verdict:<7} offered {row['offered']} "
          f"{'merged %.3f vs base %.3f' % (row['losses']['merged'], row['losses']['base']) if 'losses' in row else ''}",
          file=sys.stderr)
    return row


def timing(catalog) -> dict:
    """One search of 20 examples (the first 10 of two sample tasks), end to end in this process."""
    files = sorted(SAMPLES.glob("*.jsonl"))[:2]
    examples = [ex for f in files for ex in load_examples(f)[:10]]
    return {"examples": len(examples), **timed_search(examples, catalog)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timing", action="store_true", help="also time one 20-example search")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "sample_merge.json"))
    parser.add_argument("--summary", default=None, metavar="FILE",
                        help="also write the counts the How it works page shows (its search_quality.json)")
    parser.add_argument("--from", dest="earlier", default=None, metavar="FILE",
                        help="write --summary from an earlier --out file instead of running the tasks again")
    args = parser.parse_args(argv)
    if args.earlier and not args.summary:
        parser.error("--from writes the summary: give --summary FILE too.")
    if args.earlier:
        write_summary(Path(args.summary), json.loads(Path(args.earlier).read_text())["tasks"])
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    catalog = read_catalog(args.catalog)
    out = {"tasks": [run_task(catalog, path) for path in sorted(SAMPLES.glob("*.jsonl"))]}
    if args.timing:
        out["timing"] = timing(catalog)
        print(f"20 examples: {out['timing']['seconds']:.1f} s {out['timing']['stages']}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    if args.summary:
        write_summary(Path(args.summary), out["tasks"])
    return 0


def merge_counts(tasks: list[dict]) -> dict:
    """How many sample tasks were offered a merge, and how many of those merges beat the base."""
    offered = [t for t in tasks if len(t.get("offered") or []) >= 2]
    beats = sum(bool(t.get("merge_beats_base")) for t in offered)
    return {"tasks": len(tasks), "offered": f"{len(offered)}/{len(tasks)}", "beats_base": f"{beats}/{len(offered)}"}


def write_summary(path: Path, tasks: list[dict]) -> None:
    known = json.loads(path.read_text()) if path.is_file() else {}
    known["sample_merge"] = merge_counts(tasks)
    path.write_text(json.dumps(known, indent=1))


if __name__ == "__main__":
    sys.exit(main())

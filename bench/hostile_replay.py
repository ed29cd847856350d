"""Replay every hostile input of the bad-input table and print the verdicts by door (not a test: a report).

Each row of ``tests/core/bad_inputs/table.py``'s ``BAD`` table is one hostile or careless input at one door (a
catalog, an examples file, a zip upload, a hub id, a local folder, a merge, a recipe, a probe file, a vector file, a
pool's settings, ...). This script runs each one in a fresh world, as the test does, and classifies what happened:

    refused clearly     a DeltaAtlasError whose message names the value and says what to fix (the test's pattern)
    refused, unclear    a DeltaAtlasError with another message
    accepted            no error: a silent wrong result, or the input was not hostile after all
    traceback           any other exception
    changed files       anything outside the row's own input folder changed (with any of the above)

    .venv/bin/python bench/hostile_replay.py [--markdown]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from core.errors import DeltaAtlasError
from tests.core.bad_inputs.table import BAD
from tests.core.bad_inputs.world import make_world, snapshot

VERDICTS = ("refused clearly", "refused, unclear", "accepted", "traceback")


def replay(row) -> tuple[str, bool, str]:
    """(verdict, whether files changed, the message or error) of one table row."""
    make, pattern = row.values
    with tempfile.TemporaryDirectory() as folder:
        world = make_world(Path(folder))
        call = make(world)
        before = snapshot(world.root)
        try:
            call()
            verdict, message = "accepted", ""
        except DeltaAtlasError as exc:
            message = str(exc)
            verdict = "refused clearly" if re.search(pattern, message, re.S) else "refused, unclear"
        except Exception as exc:  # noqa: BLE001 - that is what this script counts
            verdict, message = "traceback", f"{type(exc).__name__}: {exc}"
        changed = snapshot(world.root) != before
    return verdict, changed, message


POOL_SETTINGS = {"novelty", "search", "pool", "reference"}   # files beside a catalog: one door


def door(row_id: str) -> str:
    prefix = row_id.split("-", 1)[0]
    return "pool settings" if prefix in POOL_SETTINGS else prefix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for bench/README.md)")
    args = parser.parse_args(argv)
    counts: dict[str, Counter] = defaultdict(Counter)
    problems = []
    for row in BAD:
        verdict, changed, message = replay(row)
        counts[door(row.id)][verdict] += 1
        counts[door(row.id)]["changed files"] += changed
        if verdict != "refused clearly" or changed:
            problems.append(f"{row.id}: {verdict}{', changed files' if changed else ''}: {message[:200]}")
    columns = ["door", "inputs", *VERDICTS, "changed files"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] if args.markdown else []
    for name in sorted(counts):
        c = counts[name]
        cells = [name, str(sum(c[v] for v in VERDICTS)), *(str(c[v]) for v in VERDICTS), str(c["changed files"])]
        lines.append("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(f"{x:<16}" for x in cells))
    total = Counter()
    for c in counts.values():
        total.update(c)
    cells = ["all", str(sum(total[v] for v in VERDICTS)), *(str(total[v]) for v in VERDICTS),
             str(total["changed files"])]
    lines.append("| " + " | ".join(f"**{x}**" for x in cells) + " |" if args.markdown else "  ".join(f"{x:<16}" for x in cells))
    if not args.markdown:
        lines.insert(0, "  ".join(f"{x:<16}" for x in columns))
    print("\n".join(lines))
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Read the demo zoo's training examples with its base: ``python -m core fingerprints --catalog CATALOG``.

A seeded sample of every dataset the pool was trained on (its catalog's ``dataset`` column, read from
../shared/datasets by core.zoo.demo_data) and the everyday reference tasks' examples are read by the base and stored
beside the catalog (core.reuse.fingerprints: numbers only, never the text). The SmolLM2 zoo: 23 datasets of 64
examples and 9 reference tasks, about 13 min on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from core.errors import DeltaAtlasError
from core.pool.folder import DEMO_CATALOG, open_catalog
from core.progress import TextBar
from core.reuse.fingerprints import fingerprint_path, pool_datasets, write_fingerprints
from core.reuse.references import REFERENCE_DIR, reference_tasks
from core.reuse.train import Example
from core.zoo import demo_data

PER_DATASET = 64          # training examples read per dataset of the pool (a seeded sample of its trainable part)


def demo_training_examples(catalog, data_dir: str | Path, per_dataset: int = PER_DATASET) -> dict[str, list[Example]]:
    """{dataset: a seeded sample of ``per_dataset`` of its trainable examples} for every dataset the pool was trained
    on, read from ``data_dir`` by the demo zoo's readers (core.zoo.demo_data)."""
    if isinstance(per_dataset, bool) or not isinstance(per_dataset, int) or per_dataset < 1:
        raise DeltaAtlasError(f"per_dataset={per_dataset!r}: give a positive whole number of examples per dataset.")
    datasets = pool_datasets(open_catalog(catalog))
    unknown = [d for d in datasets if d not in demo_data.DATASETS]
    if unknown:
        raise DeltaAtlasError(f"No reader for dataset(s) {', '.join(unknown)}: fingerprints can be built from the "
                              f"demo datasets only ({', '.join(demo_data.DATASETS)}).")
    out = {}
    for key in datasets:
        examples = demo_data.trainable(data_dir, key)
        random.Random(key).shuffle(examples)
        out[key] = examples[:per_dataset]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", default=str(DEMO_CATALOG), help="the pool's catalog (default: the demo zoo)")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[3] / "shared" / "datasets"),
                        help="the datasets the pool was trained on (default: ../shared/datasets)")
    parser.add_argument("--references", default=str(REFERENCE_DIR), metavar="FOLDER",
                        help="the everyday reference tasks (default: the shipped ones)")
    parser.add_argument("--per-dataset", type=int, default=PER_DATASET)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best there is)")


def main(args: argparse.Namespace) -> int:
    training = demo_training_examples(args.catalog, args.data_dir, args.per_dataset)
    table = write_fingerprints(args.catalog, training, reference_tasks(args.references), device=args.device,
                               progress=TextBar())
    print(f"{len(table)} fingerprints -> {fingerprint_path(open_catalog(args.catalog).path)}")
    return 0

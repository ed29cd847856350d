"""What the pool's models were taught, as the base reads it: the data side of "nothing fits".

A task vector says how a dozen examples moved the base; every few-shot adapter moves it in a shared direction too
(the answer style, the end-of-answer habit), so the vectors alone blur a recipe task into the math models. The base's
own reading of a text does not share that blur: its final hidden state, averaged over the text's tokens ([d], a
*fingerprint*). A pool that knows what its models were trained on keeps the fingerprints of a sample of those
training examples, and of its everyday reference tasks' examples (core.reuse.references), beside its catalog
(``fingerprints.parquet``: numbers only, never the examples' text). A user's task is then read the same way and
compared example by example (bench/README.md, "The data side"):

    like_data   mean over the task's examples of the highest cosine to any pool training example
    data_lead   mean over the task's examples of (highest cosine to a pool example - highest to a reference example)

Both feed the weighted "nothing fits" rule (core.reuse.novelty.SIGNALS) of a pool whose novelty.json reads them.

    write_fingerprints(catalog, training, references)   # core.zoo.fingerprint_build: `python -m core fingerprints`
    pool, refs = load_fingerprints(catalog.path)   # [p, d], [r, d] or None
    task = read_task(examples, base)               # [m, d], or read_examples(model, tokenizer, examples)
    task_signals(task, pool, refs)                 # {"like_data": ..., "data_lead": ...}
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.engine.device import pick_device
from core.engine.loading import load_model, resolve_source
from core.errors import DeltaAtlasError
from core.map.geometry import cosine_similarities
from core.pool.catalog import Source, pool_base
from core.pool.folder import FINGERPRINT_FILE, NOVELTY_FILE, beside, open_catalog
from core.pool.vectors import make_table, matrix, read_vectors, write_vectors
from core.progress import ProgressFn, report
from core.reuse.fit import borrow_base
from core.reuse.lower_states import LowerStates
from core.reuse.novelty import load_rule
from core.reuse.train import Example, TopLayers, collate, length_parts

log = logging.getLogger(__name__)

MAX_TOKENS = 256          # tokens read per example (its start: the instruction, then the answer)
BATCH = 16                # examples per forward pass, in length order (less padding; the same means)
POOL, REFERENCE = "pool", "reference"     # the two sides of the stored table


# -- reading examples ------------------------------------------------------------------------------------------
@torch.no_grad()
def read_examples(model, tokenizer, examples: list[Example], kept: LowerStates | None = None) -> np.ndarray:
    """Each example's fingerprint [n, d]: the base's final hidden state (after its last norm) averaged over the
    tokens of the example's whole text (prompt and answer). Padding does not change it (right padding, masked).
    With ``kept`` (a search's LowerStates holding float32 states) the lower layers' output is taken from it where
    the search already ran them on these tokens, and only the layers above run."""
    if tokenizer is None:
        raise DeltaAtlasError("The base has no tokenizer: the examples cannot be read.")
    ids = [tokenizer(ex.prompt() + ex.response, truncation=True, max_length=MAX_TOKENS)["input_ids"]
           for ex in examples]
    pad_id = tokenizer.pad_token_id or 0
    starts = kept.starts("float32") if kept is not None else []
    top = TopLayers(model, starts[0], [(seq, seq) for seq in ids], pad_id, nullcontext(), kept=kept) if starts else None
    inner = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    for rows in length_parts([len(seq) for seq in ids], range(len(ids)), BATCH):
        if top is not None:
            hidden, mask = top.hidden(rows)                                              # [B, T, d], [B, T]
        else:
            batch = collate([(ids[i], ids[i]) for i in rows], pad_id)                   # right-padded, [B, T]
            mask = batch["attention_mask"].to(model.device)
            hidden = inner(input_ids=batch["input_ids"].to(model.device), use_cache=False,
                           attention_mask=mask).last_hidden_state                        # [B, T, d]
        weights = mask.unsqueeze(-1).float()                                             # [B, T, 1]
        out[rows] = ((hidden.float() * weights).sum(1) / weights.sum(1)).cpu().numpy()
    return out


def read_task(examples: list[Example], base: Source, *, device=None, models=None,
              kept: LowerStates | None = None) -> np.ndarray:
    """The fingerprints [m, d] of a task's examples, read by the pool's base (lent by ``models`` when given;
    ``kept``: the search's LowerStates)."""
    with borrow_base(resolve_source(base), pick_device(device), models) as (model, tokenizer):
        return read_examples(model, tokenizer, examples, kept)


def task_signals(task: np.ndarray, pool: np.ndarray, references: np.ndarray | None = None) -> dict[str, float]:
    """The data-side signals of a task from its examples' fingerprints [m, d], against the pool's training
    examples' [p, d] and (for ``data_lead``) the reference tasks' examples' [r, d]."""
    task, pool = np.asarray(task), np.asarray(pool)
    if task.ndim != 2 or pool.ndim != 2 or not len(task) or not len(pool) or task.shape[1] != pool.shape[1]:
        raise DeltaAtlasError(f"Fingerprints of shapes {task.shape} and {pool.shape} cannot be compared: both need "
                              "one row per example and the same width (the same base).")
    nearest_pool = cosine_similarities(task, pool).max(axis=1)                       # [m]
    out = {"like_data": float(nearest_pool.mean())}
    if references is not None and len(references):
        nearest_reference = cosine_similarities(task, references).max(axis=1)        # [m]
        out["data_lead"] = float((nearest_pool - nearest_reference).mean())
    return out


# -- the stored table ------------------------------------------------------------------------------------------
def fingerprint_path(catalog_path: str | Path) -> Path:
    return beside(catalog_path, FINGERPRINT_FILE)


def load_fingerprints(catalog_path: str | Path | None,
                      width: int | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The pool's stored fingerprints: (pool training examples [p, d], reference examples [r, d] or None), or None
    when the pool keeps none (or of another width: a warning then, and the rule falls back)."""
    if catalog_path is None or not fingerprint_path(catalog_path).is_file():
        return None
    path = fingerprint_path(catalog_path)
    try:
        table = read_vectors(path)
    except DeltaAtlasError as exc:      # a broken file must not stop a search: the rule falls back, and says so
        log.warning("%s cannot be used (%s); make it again with `python -m core fingerprints`.", path, exc)
        return None
    if "side" not in table.columns or not (table["side"] == POOL).any():
        log.warning("%s holds no pool fingerprints: not used; make it again with `python -m core fingerprints`.", path)
        return None
    vectors = matrix(table)
    if width is not None and vectors.shape[1] != width:
        log.warning("%s was read by another base (%d numbers per example, the base reads %d): not used; make it "
                    "again with `python -m core fingerprints`.", path, vectors.shape[1], width)
        return None
    pool = vectors[(table["side"] == POOL).to_numpy()]
    refs = vectors[(table["side"] == REFERENCE).to_numpy()]
    return pool, (refs if len(refs) else None)


def reads_data_side(catalog_path: str | Path | None) -> bool:
    """Whether a search of this pool should read the task's examples: its rule weighs the data side and it keeps
    fingerprints."""
    if catalog_path is None or not fingerprint_path(catalog_path).is_file():
        return False
    return load_rule(beside(catalog_path, NOVELTY_FILE)).reads_data()


def data_signals(task: np.ndarray | None, catalog_path: str | Path | None) -> dict[str, float]:
    """The task's data-side signals against the pool's stored fingerprints; {} when either is missing."""
    if task is None or catalog_path is None:
        return {}
    stored = load_fingerprints(catalog_path, width=np.asarray(task).shape[-1])
    return {} if stored is None else task_signals(task, *stored)


def pool_datasets(catalog) -> list[str]:
    """The datasets the pool's models were trained on (its catalog's ``dataset`` column; ``a+b`` for a mixture)."""
    names = {part for entry in catalog for part in str(entry.labels.get("dataset") or "").split("+") if part}
    if not names:
        raise DeltaAtlasError("The catalog names no training datasets (its 'dataset' column is empty): fingerprints "
                              "need to know what the pool's models were taught.")
    return sorted(names)


def write_fingerprints(catalog, training: dict[str, list[Example]], references: dict[str, list[Example]], *,
                       device=None, progress: ProgressFn | None = None) -> pd.DataFrame:
    """Read the pool's ``training`` examples and the reference tasks' examples ({name: examples} each) with the
    pool's base and store them beside the catalog. Returns the table (name, vector, side, source)."""
    catalog = open_catalog(catalog)
    if catalog.path is None:
        raise DeltaAtlasError("Fingerprints are stored beside a catalog file: give a catalog read from disk.")
    if not any(training.values()):
        raise DeltaAtlasError("No training examples to read: fingerprints need a sample of what the pool was taught.")
    sources = [(POOL, name, examples) for name, examples in training.items() if examples]
    sources += [(REFERENCE, name, examples) for name, examples in references.items() if examples]
    model, tokenizer = load_model(resolve_source(pool_base(catalog, catalog.names)), pick_device(device),
                                  torch.float32)
    sides, names, vectors = [], [], []
    for i, (side, name, examples) in enumerate(sources):
        report(progress, i, len(sources), "fingerprints", name)
        vectors.append(read_examples(model, tokenizer, examples))                     # [n_i, d]
        sides += [side] * len(examples)
        names += [name] * len(examples)
    report(progress, len(sources), len(sources), "fingerprints", "")
    table = make_table([f"{name}:{i}" for i, name in enumerate(names)], np.concatenate(vectors))
    table.insert(1, "side", sides)
    table.insert(2, "source", names)
    write_vectors(table, fingerprint_path(catalog.path),
                  metadata={"max_tokens": MAX_TOKENS, "training": {k: len(v) for k, v in training.items()}})
    return table

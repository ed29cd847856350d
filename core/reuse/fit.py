"""Does a model help with a task? Its loss on the task's own examples, measured against the base's.

Task search ranks the pool by how alike two deltas are; that says what a model is *about*, not whether it answers
the task better than the untouched base. This module measures the second: the mean response-token loss of the
base and of each candidate on the user's examples (the candidates never saw them), and the relative gain

    gain = (base loss - model loss) / base loss        e.g. 0.12: "lowers the error on your examples by 12%"

A candidate *helps* when its gain is at least ``HELP_MARGIN``. Plain LoRA adapters that sit on the base's top
layers run side by side: the frozen layers below them run once (``train.TopLayers``, exact), then the top layers
for a few adapters at a time through the stacked-LoRA hooks, which always remove themselves. Full finetunes and
other adapter types are loaded one by one; a model whose weights are not on disk is reported as not measured.
"""
from __future__ import annotations

import copy
import logging
import math
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from core.engine.device import pick_device
from core.engine.loading import detect_kind, load_model, resolve_source
from core.engine.stacked_lora import LoraWeights, NotStackableError, read_lora, stacked_lora
from core.errors import DeltaAtlasError
from core.pool.catalog import Catalog, Source
from core.progress import ProgressFn, report
from core.reuse.examples import check_count
from core.reuse.train import (
    Example,
    TopLayers,
    collate,
    decoder_layers,
    encode,
    encoded_loss,
    example_loss,
    length_parts,
)

log = logging.getLogger(__name__)

HELP_MARGIN = 0.03        # "helps": at least 3% lower loss on the examples (chosen on the dev set: bench/README.md)
MAX_LENGTH = 256          # tokens per example, as example_loss and the merge page measure
ROWS_PER_PASS = 48        # example rows per stacked forward pass (adapters x examples), bounds the logits' memory
EXAMPLES_PER_PART = 8     # examples of similar length padded together (less padding; the same token-weighted means)
LAYER = re.compile(r"\.layers\.(\d+)\.")

VERDICTS = {"helps": "helps", "no": "does not help", "unmeasured": "not measured"}


@dataclass(frozen=True)
class Gain:
    name: str
    loss: float | None        # mean response-token loss on the examples; None when not measured
    base_loss: float
    note: str = ""            # why it was not measured

    @property
    def gain(self) -> float | None:
        return None if self.loss is None else (self.base_loss - self.loss) / self.base_loss

    @property
    def verdict(self) -> str:
        if self.gain is None:
            return VERDICTS["unmeasured"]
        return VERDICTS["helps"] if helps(self.gain) else VERDICTS["no"]


def helps(gain: float | None) -> bool:
    """Whether a relative gain counts as helping: measured, finite, and at least HELP_MARGIN."""
    return gain is not None and math.isfinite(gain) and gain >= HELP_MARGIN


def gain_words(gain: float | None) -> str:
    """One plain phrase for a person: "lowers the error on your examples by 12%" / "does not help"."""
    if gain is None:
        return "could not be measured"
    if helps(gain):
        return f"lowers the error on your examples by {100 * gain:.0f}%"
    if gain > -HELP_MARGIN:
        return "does not help (about as good as the base model)"
    return f"does not help (raises the error on your examples by {100 * -gain:.0f}%)"


def gain_short(gain: float | None) -> str:
    """The same in a few words, for a table cell: "yes, 12% lower error" / "no" / "no, 30% higher error"."""
    if gain is None:
        return "not measured"
    if helps(gain):
        return f"yes, {100 * gain:.0f}% lower error"
    return "no" if gain > -HELP_MARGIN else f"no, {100 * -gain:.0f}% higher error"


def measure_gains(examples: list[Example], catalog: Catalog, names: list[str], base: Source, *, device=None,
                  models=None, progress: ProgressFn | None = None) -> pd.DataFrame:
    """Loss of the base and of each named model on ``examples``: one row per name (in the given order) with
    ``name, loss, base_loss, gain, helps, verdict, words, note``. ``models`` (a ``SharedModels``) lends the base
    from memory; it is never changed (hooks only)."""
    check_count(len(examples), "The task")
    entries = [catalog.get(name) for name in names]          # an unknown name is refused before any model loads
    base_dir = resolve_source(base)
    device = pick_device(device)
    with borrow_base(base_dir, device, models) as (model, tokenizer):
        if tokenizer is None:
            raise DeltaAtlasError(f"Base {base_dir} has no tokenizer: the task's examples cannot be measured.")
        encoded = encode(examples, tokenizer, MAX_LENGTH)
        if not any(label != -100 for _, labels in encoded for label in labels):
            raise DeltaAtlasError("None of the task's examples has a response left to measure after tokenizing: "
                                  "give examples with a non-empty response.")
        losses, notes = _measure(model, tokenizer, encoded, examples, entries, progress)
    base_loss = losses.pop("")
    rows = [Gain(e.name, losses.get(e.name), base_loss, notes.get(e.name, "")) for e in entries]
    return pd.DataFrame([{"name": g.name, "loss": g.loss, "base_loss": g.base_loss, "gain": g.gain,
                          "helps": g.verdict == VERDICTS["helps"], "verdict": g.verdict, "words": gain_words(g.gain),
                          "short": gain_short(g.gain), "note": g.note} for g in rows],
                        columns=["name", "loss", "base_loss", "gain", "helps", "verdict", "words", "short", "note"])


@contextmanager
def borrow_base(base_dir: Path, device, models):
    """The base (model, tokenizer) in float32: lent from ``models`` (a SharedModels) when given, else loaded."""
    if models is not None:
        with models.lend(base_dir, device, torch.float32) as pair:
            yield pair
    else:
        yield load_model(base_dir, device, torch.float32)


def _measure(model, tokenizer, encoded, examples, entries, progress) -> tuple[dict, dict]:
    """{"": base loss, name: loss} and {name: why not measured}."""
    total = len(entries) + 1
    report(progress, 0, total, "measure", "the base model and the closest adapters")
    stacked, alone, notes = {}, [], {}
    for entry in entries:
        folder, problem = _local_folder(entry)
        if problem:
            notes[entry.name] = problem
        elif detect_kind(folder) == "lora":
            try:
                stacked[entry.name] = read_lora(folder, model)
            except NotStackableError:
                alone.append((entry, folder))
        else:
            alone.append((entry, folder))
    losses = _stacked_losses(model, tokenizer, encoded, stacked)     # the base's too, under the key ""
    done = 1 + len(stacked)
    report(progress, done, total, "measure", "the base model and the closest adapters")
    for entry, folder in alone:
        try:
            losses[entry.name] = _loss_alone(model, tokenizer, examples, entry, folder)
        except DeltaAtlasError as exc:
            notes[entry.name] = str(exc)
        done += 1
        report(progress, done, total, "measure", entry.name)
    report(progress, total, total, "measure", "")
    return losses, notes


def _local_folder(entry) -> tuple[Path | None, str]:
    """The model's folder on this machine, or why it is not measured. Hub adapters are fetched (megabytes); a
    full model from the Hub is not (gigabytes, during a search)."""
    if entry.source.is_local and not entry.source.local.is_dir():
        return None, "its weights are not on this machine"
    if not entry.source.is_local and entry.kind != "lora":
        return None, "a full model on the Hub is not downloaded during a search"
    try:
        return resolve_source(entry.source), ""
    except DeltaAtlasError as exc:
        return None, str(exc)


def _first_layer(adapters: list[LoraWeights]) -> int:
    """The lowest transformer layer any adapter changes (0 when one changes something outside the layers)."""
    first = None
    for adapter in adapters:
        for name in adapter.modules:
            match = LAYER.search(name)
            layer = int(match.group(1)) if match else 0
            first = layer if first is None else min(first, layer)
    return first or 0


@torch.no_grad()
def _stacked_losses(model, tokenizer, encoded, adapters: dict[str, LoraWeights]) -> dict[str, float]:
    """Mean response-token loss of the base ("") and of each adapter: lower layers once, top layers side by side.

    The examples run in parts of similar length (each padded only to its own longest), every adapter on every
    part; each model's token losses are summed over the parts, then divided by its token count."""
    start = _first_layer(list(adapters.values())) if adapters else len(decoder_layers(model)) - 1
    if start == 0:                       # an adapter touches the lowest layer: no frozen part to run once
        return _full_pass_losses(model, tokenizer, encoded, adapters)
    top = TopLayers(model, start, encoded, tokenizer.pad_token_id, nullcontext())
    names = list(adapters)
    sums = torch.zeros(1 + len(names), dtype=torch.float64)        # [models]: the base, then each adapter
    counts = torch.zeros(1 + len(names), dtype=torch.float64)
    for part in length_parts(top.lengths, range(len(encoded)), EXAMPLES_PER_PART):
        labels = collate([encoded[i] for i in part], tokenizer.pad_token_id)["labels"].to(model.device)   # [P, T]
        _add_group_losses(top, part, labels, 1, sums[:1], counts[:1])
        per_pass = max(ROWS_PER_PASS // len(part), 1)
        for first in range(0, len(names), per_pass):
            chunk = names[first:first + per_pass]
            with stacked_lora(model, [adapters[name] for name in chunk]):
                picked = slice(1 + first, 1 + first + len(chunk))
                _add_group_losses(top, part, labels, len(chunk), sums[picked], counts[picked])
    means = (sums / counts.clamp(min=1)).tolist()
    return {"": means[0], **dict(zip(names, means[1:]))}


def _add_group_losses(top: TopLayers, part: list[int], labels: torch.Tensor, k: int, sums: torch.Tensor,
                      counts: torch.Tensor) -> None:
    """Row group g (every example of ``part`` once) runs through adapter g: add its token losses to ``sums[g]`` and
    its token count to ``counts[g]`` (views of the caller's totals)."""
    token_losses, batch_rows = top.token_losses(part * k, labels.repeat(k, 1))     # [N], [N]
    group = (batch_rows // len(part)).cpu()
    sums.index_add_(0, group, token_losses.double().cpu())
    counts.index_add_(0, group, torch.ones_like(group, dtype=torch.float64))


def _full_pass_losses(model, tokenizer, encoded, adapters: dict[str, LoraWeights]) -> dict[str, float]:
    """The same losses without the shortcut, one adapter at a time through the whole model."""
    out = {"": encoded_loss(model, tokenizer, encoded)}
    for name, adapter in adapters.items():
        with stacked_lora(model, [adapter]):
            out[name] = encoded_loss(model, tokenizer, encoded)
    return out


def _loss_alone(model, tokenizer, examples, entry, folder: Path) -> float:
    """A full finetune or an adapter PEFT must run: loaded on its own, measured, freed."""
    if detect_kind(folder) == "full":
        other, _ = load_model(folder, model.device, torch.float32)
        try:
            return example_loss(other, tokenizer, examples, MAX_LENGTH)
        finally:
            del other
    from peft import PeftModel  # heavy, and only for adapters the stacked path cannot run

    private = copy.deepcopy(model)
    try:
        wrapped = PeftModel.from_pretrained(private, str(folder))
        return example_loss(wrapped, tokenizer, examples, MAX_LENGTH)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise DeltaAtlasError(f"{entry.name} could not be loaded on the base ({type(exc).__name__})") from None
    finally:
        del private


def merge_candidates(gains: pd.DataFrame | None, catalog: Catalog) -> tuple[list[str], dict[str, str]]:
    """What a merge for this task should take: the measured models that help and can be merged (LoRA adapters on
    disk), best first, and every other measured model with the plain reason it is left out."""
    take, left_out = [], {}
    if gains is None:
        return take, left_out
    kinds = {entry.name: entry.kind for entry in catalog}
    for row in gains.sort_values("gain", ascending=False, na_position="last").itertuples():
        if row.gain is None or pd.isna(row.gain):
            left_out[row.name] = f"it could not be measured ({row.note})" if row.note else "it could not be measured"
        elif not row.helps:
            left_out[row.name] = "it does not help with your examples"
        elif kinds.get(row.name) == "full":
            left_out[row.name] = "it is a full finetune, which cannot be merged with LoRA adapters"
        else:
            take.append(row.name)
    return take, left_out

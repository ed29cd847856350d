"""Does a model help with a task? Its loss on the task's own examples, measured against the base's.

Task search ranks the pool by how alike two deltas are; that says what a model is *about*, not whether it answers
the task better than the untouched base. This module measures the second: the mean response-token loss of the
base and of each candidate on the user's examples (the candidates never saw them), and the relative gain

    gain = (base loss - model loss) / base loss        e.g. 0.12: "lowers the error on your examples by 12%"

A candidate *helps* when its gain is at least ``HELP_MARGIN`` (and, with ``HELP_SHARE`` above 0, when its loss
is lower than the base's on at least that share of the examples; the dev set chose 0). Each example is also counted
on its own ("better on 9 of 12"), so that a person sees whether a gain is one example's doing. Plain LoRA adapters
that sit on the base's top layers run side by side: the frozen layers below them run once (``train.TopLayers``, exact), then the top layers
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

import numpy as np
import pandas as pd
import torch

from core.engine.device import pick_device
from core.engine.loading import detect_kind, load_model, resolve_source
from core.engine.stacked_lora import LoraWeights, NotStackableError, read_lora, stacked_lora
from core.errors import DeltaAtlasError
from core.pool.catalog import Catalog, Source
from core.progress import ProgressFn, report
from core.reuse.examples import check_count
from core.reuse.lower_states import LowerStates
from core.reuse.train import Example, TopLayers, collate, decoder_layers, encode, encoded_example_losses, length_parts

log = logging.getLogger(__name__)

HELP_MARGIN = 0.03        # "helps": at least 3% lower loss on the examples (chosen on the dev set: bench/README.md)
HELP_SHARE = 0.0          # ... and lower than the base's on this share of them (0: not asked; chosen on dev)
MAX_LENGTH = 256          # tokens per example, as example_loss and the merge page measure
ROWS_PER_PASS = 48        # example rows per stacked forward pass (adapters x examples), bounds the logits' memory
EXAMPLES_PER_PART = 8     # examples of similar length padded together (less padding; the same token-weighted means)
LAYER = re.compile(r"\.layers\.(\d+)\.")

Losses = tuple[torch.Tensor, torch.Tensor]   # each example's summed token loss [n] and token count [n], float64
VERDICTS = {"helps": "helps", "no": "does not help", "unmeasured": "not measured"}


@dataclass(frozen=True)
class Gain:
    name: str
    loss: float | None        # mean response-token loss on the examples; None when not measured
    base_loss: float
    note: str = ""            # why it was not measured
    better: int | None = None   # examples on which its loss is lower than the base's (None: not counted)
    compared: int = 0         # examples compared (those with a response left after tokenizing)

    @property
    def gain(self) -> float | None:
        return None if self.loss is None else (self.base_loss - self.loss) / self.base_loss

    @property
    def verdict(self) -> str:
        if self.gain is None:
            return VERDICTS["unmeasured"]
        return VERDICTS["helps"] if helps(self.gain, self.better, self.compared) else VERDICTS["no"]


def helps(gain: float | None, better: int | None = None, compared: int = 0, share: float | None = None) -> bool:
    """Whether a relative gain counts as helping: measured, finite, at least HELP_MARGIN, and (where the examples
    were counted one by one) a lower loss than the base's on at least ``share`` (default HELP_SHARE) of the
    ``compared`` examples."""
    if gain is None or not math.isfinite(gain) or gain < HELP_MARGIN:
        return False
    share = HELP_SHARE if share is None else share
    return better is None or not compared or better >= share * compared


def examples_better(base_sums, sums, counts) -> tuple[int, int]:
    """(examples on which a model's mean loss is below the base's, examples compared) from each example's summed
    loss [n] of the base and of the model and its token count [n]; examples with no token are not compared."""
    base_sums, sums, counts = (np.asarray(x, dtype=np.float64) for x in (base_sums, sums, counts))
    seen = counts > 0
    return int((sums[seen] / counts[seen] < base_sums[seen] / counts[seen]).sum()), int(seen.sum())


def gain_words(gain: float | None, better: int | None = None, compared: int = 0) -> str:
    """One plain phrase for a person: "lowers the error on your examples by 12% (better on 9 of 12)" / "does not
    help"."""
    if gain is None:
        return "could not be measured"
    counted = better is not None and compared > 0
    if helps(gain, better, compared):
        return f"lowers the error on your examples by {100 * gain:.0f}%" + (
            f" (better on {better} of {compared})" if counted else "")
    if gain >= HELP_MARGIN and counted:
        return (f"does not help (its error is {100 * gain:.0f}% lower overall, but lower on only {better} of your "
                f"{compared} examples)")
    if gain > -HELP_MARGIN:
        return "does not help (about as good as the base model)"
    return f"does not help (raises the error on your examples by {100 * -gain:.0f}%)"


def gain_short(gain: float | None, better: int | None = None, compared: int = 0) -> str:
    """The same in a few words, for a table cell: "yes, 12% lower error" / "no" / "no, 30% higher error" (the
    count of examples goes in a column of its own)."""
    if gain is None:
        return "not measured"
    if helps(gain, better, compared):
        return f"yes, {100 * gain:.0f}% lower error"
    if gain >= HELP_MARGIN and better is not None:
        return f"no, better on only {better} of {compared}"
    return "no" if gain > -HELP_MARGIN else f"no, {100 * -gain:.0f}% higher error"


def measure_gains(examples: list[Example], catalog: Catalog, names: list[str], base: Source, *, device=None,
                  models=None, progress: ProgressFn | None = None, kept: LowerStates | None = None) -> pd.DataFrame:
    """Loss of the base and of each named model on ``examples``: one row per name (in the given order) with
    ``name, loss, base_loss, gain, helps, verdict, better, compared, words, short, note``. ``models`` (a
    ``SharedModels``) lends the base from memory; it is never changed (hooks only). ``kept``: the search's
    LowerStates, shared with its other stages."""
    losses, notes = example_losses(examples, catalog, names, base, device=device, models=models, progress=progress,
                                   kept=kept)
    base_losses = losses.pop("")
    rows = [_gain(name, losses.get(name), base_losses, notes.get(name, "")) for name in names]
    return pd.DataFrame([{"name": g.name, "loss": g.loss, "base_loss": g.base_loss, "gain": g.gain,
                          "helps": g.verdict == VERDICTS["helps"], "verdict": g.verdict, "better": g.better,
                          "compared": g.compared, "words": gain_words(g.gain, g.better, g.compared),
                          "short": gain_short(g.gain, g.better, g.compared), "note": g.note} for g in rows],
                        columns=["name", "loss", "base_loss", "gain", "helps", "verdict", "better", "compared",
                                 "words", "short", "note"])


def example_losses(examples: list[Example], catalog: Catalog, names: list[str], base: Source, *, device=None,
                   models=None, progress: ProgressFn | None = None,
                   kept: LowerStates | None = None) -> tuple[dict[str, Losses], dict[str, str]]:
    """Each example's summed response-token loss and token count, for the base (key "") and each named model that
    could be measured, and {name: why not measured} for the others."""
    check_count(len(examples), "The task")
    entries = [catalog.get(name) for name in names]          # an unknown name is refused before any model loads
    base_dir = resolve_source(base)
    with borrow_base(base_dir, pick_device(device), models) as (model, tokenizer):
        if tokenizer is None:
            raise DeltaAtlasError(f"Base {base_dir} has no tokenizer: the task's examples cannot be measured.")
        encoded = encode(examples, tokenizer, MAX_LENGTH)
        if not any(label != -100 for _, labels in encoded for label in labels):
            raise DeltaAtlasError("None of the task's examples has a response left to measure after tokenizing: "
                                  "give examples with a non-empty response.")
        return _measure(model, tokenizer, encoded, entries, progress, kept)


def _gain(name: str, losses: Losses | None, base: Losses, note: str) -> Gain:
    """A model's Gain from its and the base's per-example losses: token-weighted means, and the examples on which
    its mean loss is below the base's."""
    base_sums, counts = base
    tokens = float(counts.sum().clamp(min=1))
    base_loss = float(base_sums.sum()) / tokens
    if losses is None:
        return Gain(name, None, base_loss, note)
    better, compared = examples_better(base_sums.numpy(), losses[0].numpy(), counts.numpy())
    return Gain(name, float(losses[0].sum()) / tokens, base_loss, note, better, compared)


@contextmanager
def borrow_base(base_dir: Path, device, models):
    """The base (model, tokenizer) in float32: lent from ``models`` (a SharedModels) when given, else loaded."""
    if models is not None:
        with models.lend(base_dir, device, torch.float32) as pair:
            yield pair
    else:
        yield load_model(base_dir, device, torch.float32)


def _measure(model, tokenizer, encoded, entries, progress,
             kept: LowerStates | None = None) -> tuple[dict[str, Losses], dict[str, str]]:
    """{"": the base's per-example losses, name: the model's} and {name: why not measured}."""
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
    losses = _stacked_losses(model, tokenizer, encoded, stacked, kept)     # the base's too, under the key ""
    done = 1 + len(stacked)
    report(progress, done, total, "measure", "the base model and the closest adapters")
    for entry, folder in alone:
        try:
            losses[entry.name] = _losses_alone(model, tokenizer, encoded, entry, folder)
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
def _stacked_losses(model, tokenizer, encoded, adapters: dict[str, LoraWeights],
                    kept: LowerStates | None = None) -> dict[str, Losses]:
    """Per-example response-token losses of the base ("") and of each adapter: lower layers once, top layers side
    by side. The examples run in parts of similar length (each padded only to its own longest), every adapter on
    every part; each example's token losses are summed, and its tokens counted."""
    start = _first_layer(list(adapters.values())) if adapters else len(decoder_layers(model)) - 1
    if start == 0:                       # an adapter touches the lowest layer: no frozen part to run once
        return _full_pass_losses(model, tokenizer, encoded, adapters)
    top = TopLayers(model, start, encoded, tokenizer.pad_token_id, nullcontext(), kept=kept)
    names = list(adapters)
    sums = torch.zeros(1 + len(names), len(encoded), dtype=torch.float64)   # [models, examples]: base, then each
    counts = torch.zeros(1 + len(names), len(encoded), dtype=torch.float64)
    for part in length_parts(top.lengths, range(len(encoded)), EXAMPLES_PER_PART):
        labels = collate([encoded[i] for i in part], tokenizer.pad_token_id)["labels"].to(model.device)   # [P, T]
        _add_group_losses(top, part, labels, 1, sums[:1], counts[:1])
        per_pass = max(ROWS_PER_PASS // len(part), 1)
        for first in range(0, len(names), per_pass):
            chunk = names[first:first + per_pass]
            with stacked_lora(model, [adapters[name] for name in chunk]):
                picked = slice(1 + first, 1 + first + len(chunk))
                _add_group_losses(top, part, labels, len(chunk), sums[picked], counts[picked])
    return {name: (sums[m], counts[m]) for m, name in enumerate(["", *names])}


def _add_group_losses(top: TopLayers, part: list[int], labels: torch.Tensor, k: int, sums: torch.Tensor,
                      counts: torch.Tensor) -> None:
    """Row group g (every example of ``part`` once) runs through adapter g: add each example's token losses to
    ``sums[g, example]`` and its tokens to ``counts[g, example]`` (views of the caller's [models, examples] totals)."""
    token_losses, batch_rows = top.token_losses(part * k, labels.repeat(k, 1))     # [N], [N]
    batch_rows = batch_rows.cpu()
    group, example = batch_rows // len(part), torch.tensor(part)[batch_rows % len(part)]
    sums.index_put_((group, example), token_losses.double().cpu(), accumulate=True)
    counts.index_put_((group, example), torch.ones_like(group, dtype=torch.float64), accumulate=True)


def _full_pass_losses(model, tokenizer, encoded, adapters: dict[str, LoraWeights]) -> dict[str, Losses]:
    """The same losses without the shortcut, one adapter at a time through the whole model."""
    out = {"": encoded_example_losses(model, tokenizer, encoded)}
    for name, adapter in adapters.items():
        with stacked_lora(model, [adapter]):
            out[name] = encoded_example_losses(model, tokenizer, encoded)
    return out


def _losses_alone(model, tokenizer, encoded, entry, folder: Path) -> Losses:
    """A full finetune or an adapter PEFT must run: loaded on its own, measured, freed."""
    if detect_kind(folder) == "full":
        other, _ = load_model(folder, model.device, torch.float32)
        try:
            return encoded_example_losses(other, tokenizer, encoded)
        finally:
            del other
    from peft import PeftModel  # heavy, and only for adapters the stacked path cannot run

    private = copy.deepcopy(model)
    try:
        wrapped = PeftModel.from_pretrained(private, str(folder))
        return encoded_example_losses(wrapped, tokenizer, encoded)
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

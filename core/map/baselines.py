"""The paper's baselines (SPEC §2 table), computed on the same models as Delta Activations, for the report.

- flattened weights: the dense update ΔW of every targeted module, flattened (LoRA: scaling · B @ A; full finetune:
  W_ft - W_base on the same modules), so that LoRAs of any rank and full finetunes are comparable. Always the dense
  ΔW, never the raw A and B (those are only defined up to an invertible r x r mix and cannot compare across ranks).
- salient mask: the binary mask of each model's top 1% |ΔW| entries (one threshold over all its modules), compared
  by cosine (= shared entries / sqrt(size x size)).
- output embedding: each model's greedy answer to each probe (at most 32 new tokens), embedded by the BASE model as
  the mean final hidden state over the answer's tokens (the answer alone, like a sentence embedding); mean over probes.

Weights are read tensor by tensor, row block by row block, straight from safetensors files; pairwise cosines come
from a Gram matrix accumulated block by block, so memory stays small (about CHUNK_ELEMENTS floats) whatever the
model size. The top-1% threshold is exact: a running top-k over the same blocks.
"""
from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from core.engine.activations import right_pad, strip_adapter_layers
from core.engine.device import pick_device, pick_dtype
from core.engine.loading import check_adapter_fits, check_full_fits, check_kind, load_model, resolve_source
from core.engine.probes import DEFAULT_PROBES, MAX_PROBE_TOKENS
from core.errors import ComputationError, DeltaAtlasError, IncompatibleModelError, ModelSourceError
from core.map.geometry import cosine_similarities
from core.pool.catalog import Catalog, ModelEntry, read_catalog
from core.progress import ProgressFn, report

log = logging.getLogger(__name__)

TOP_FRACTION = 0.01          # salient mask: share of |ΔW| entries kept
CHUNK_ELEMENTS = 2 ** 24     # floats per block of [n_models, rows x cols] (64 MiB float32)
MAX_NEW_TOKENS = 32          # output baseline: greedy answer length
LORA_PREFIX = "base_model.model."


@dataclass
class Similarity:
    """Pairwise cosine similarities of ``names`` under one embedding, [n, n]; ``dim`` its dimension."""

    names: list[str]
    matrix: np.ndarray
    dim: int
    about: str = ""
    details: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading weights
class Tensors:
    """The safetensors files of one model folder (sharded or not), read lazily, tensor by tensor."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ModelSourceError(f"Model folder {folder} holds no *.safetensors file: the weight baselines read "
                                   "safetensors only.")
        self._handles, self._where = [], {}
        for file in files:
            handle = safe_open(file, "pt")
            self._handles.append(handle)
            self._where.update({key: handle for key in handle.keys()})

    def keys(self):
        return self._where.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._where[key].get_slice(key)[start:stop].float()

    def full(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key).float()


def read_lora(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float, bool]]:
    """The LoRA factors of an adapter folder: module -> (A [r, in], B [out, r], scaling, fan_in_fan_out)."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise DeltaAtlasError(f"Adapter {adapter_dir} is a {kind or 'unknown'} adapter: the weight baselines handle "
                              "LoRA adapters and full finetunes only; use --no-baselines for this pool.")
    if config.get("use_dora"):
        raise DeltaAtlasError(f"Adapter {adapter_dir} is a DoRA adapter, whose update is not scaling · B @ A: the "
                              "weight baselines cannot use it; use --no-baselines for this pool.")
    tensors = Tensors(adapter_dir)
    factors: dict[str, tuple] = {}
    for key in tensors.keys():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix(LORA_PREFIX).removesuffix(".lora_A.weight")
            A = tensors.full(key)                                            # [r, in]
            B = tensors.full(key.replace(".lora_A.", ".lora_B."))            # [out, r]
            rank = A.shape[0]
            alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
            scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
            factors[module] = (A, B, float(scaling), bool(config.get("fan_in_fan_out")))
        elif ".lora_B." not in key:
            log.warning("Adapter %s: tensor %s is not a LoRA factor; the weight baselines ignore it.", adapter_dir, key)
    if not factors:
        raise DeltaAtlasError(f"Adapter {adapter_dir} holds no LoRA factor (lora_A / lora_B weights).")
    return factors


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override (rank_pattern / alpha_pattern): a key matching the end of the module name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?{pattern}$", module):
            return value
    return default


def lora_delta(adapter_dir: Path, module: str) -> torch.Tensor:
    """The dense update scaling · B @ A of one module, shaped like the base weight [out, in]."""
    factors = read_lora(adapter_dir)
    if module not in factors:
        raise DeltaAtlasError(f"Adapter {adapter_dir} does not change {module}; it changes {', '.join(factors)}.")
    A, B, scaling, transposed = factors[module]
    delta = scaling * (B @ A)
    return delta.T if transposed else delta


class _Delta:
    """ΔW of one model, row block by row block: ``rows(module, start, stop)`` is [stop - start, in] float32."""

    def __init__(self, entry_dir: Path, kind: str, base: Tensors):
        self.dir, self.kind, self.base = Path(entry_dir), kind, base
        if kind == "lora":
            self.factors = read_lora(self.dir)
        else:
            self.tensors = Tensors(self.dir)

    def modules(self) -> list[str]:
        return list(self.factors) if self.kind == "lora" else []

    def rows(self, module: str, start: int, stop: int) -> torch.Tensor:
        key = module + ".weight"
        if self.kind == "lora":
            if module not in self.factors:
                return torch.zeros(stop - start, self.base.shape(key)[1])
            A, B, scaling, transposed = self.factors[module]
            block = A[:, start:stop].T @ B.T if transposed else B[start:stop] @ A   # [rows, in]
            return scaling * block
        if key not in self.tensors.keys() or self.tensors.shape(key) != self.base.shape(key):
            raise IncompatibleModelError(f"Full model {self.dir} has no weight {key} shaped like the base's "
                                         f"{self.base.shape(key)}: it does not fit base {self.base.folder}.")
        return self.tensors.rows(key, start, stop) - self.base.rows(key, start, stop)


def pool_modules(deltas: Sequence[_Delta], base: Tensors) -> list[str]:
    """The modules the comparison covers: every module some LoRA targets; for a pool of full finetunes only, every
    2-D weight inside the decoder layers. In the base's order."""
    targeted = {m for d in deltas for m in d.modules()}
    order = [k.removesuffix(".weight") for k in base.keys() if k.endswith(".weight")]
    for module in targeted:
        if module + ".weight" not in base.keys():
            raise IncompatibleModelError(f"A LoRA adapter changes {module}, which base {base.folder} does not have: "
                                         "the adapter was made for another base.")
    if targeted:
        return [m for m in order if m in targeted]
    return [m for m in order if ".layers." in f".{m}." and len(base.shape(m + ".weight")) == 2]


def _blocks(modules: list[str], base: Tensors, n_models: int):
    """(module, start, stop) row blocks of at most CHUNK_ELEMENTS floats for all models together."""
    for module in modules:
        out, width = base.shape(module + ".weight")[:2]
        step = max(1, CHUNK_ELEMENTS // max(1, n_models * width))
        for start in range(0, out, step):
            yield module, start, min(out, start + step)


# ---------------------------------------------------------------------------------------------- weight baselines
def weight_similarities(deltas: Sequence[_Delta], base: Tensors, names: list[str],
                        top_fraction: float = TOP_FRACTION, progress: ProgressFn | None = None) -> dict[str, Similarity]:
    """Cosine of the flattened ΔW ("weights") and of the top-``top_fraction`` |ΔW| masks ("mask")."""
    if not 0 < top_fraction <= 1:
        raise DeltaAtlasError(f"top_fraction {top_fraction} is not valid: give a share between 0 and 1, e.g. 0.01.")
    modules = pool_modules(deltas, base)
    total = sum(math.prod(base.shape(m + ".weight")[:2]) for m in modules)
    keep = max(1, round(top_fraction * total))
    thresholds = torch.tensor([_threshold(d, modules, base, keep) for d in _counted(deltas, names, progress, "mask")])
    blocks = list(_blocks(modules, base, len(deltas)))
    gram_w = torch.zeros(len(deltas), len(deltas), dtype=torch.float64)
    gram_m = torch.zeros_like(gram_w)
    for done, (module, start, stop) in enumerate(blocks):
        D = torch.stack([d.rows(module, start, stop).reshape(-1) for d in deltas])     # [n, rows * in]
        M = ((D.abs() >= thresholds[:, None]) & (D != 0)).float()                      # [n, rows * in]
        gram_w += (D @ D.T).double()
        gram_m += (M @ M.T).double()
        report(progress, done + 1, len(blocks), "weights", module)
    kept = torch.diagonal(gram_m).long().tolist()
    return {
        "weights": Similarity(names, _gram_to_cosine(gram_w), total, "flattened weight updates ΔW, cosine",
                              {"modules": len(modules)}),
        "mask": Similarity(names, _gram_to_cosine(gram_m), total, f"top {top_fraction:.0%} |ΔW| masks, cosine",
                           {"top_fraction": top_fraction, "entries_kept": dict(zip(names, kept))}),
    }


def _counted(items, names, progress, stage):
    for i, (item, name) in enumerate(zip(items, names)):
        yield item
        report(progress, i + 1, len(names), stage, name)


def _threshold(delta: _Delta, modules: list[str], base: Tensors, keep: int) -> float:
    """The ``keep``-th largest |ΔW| entry of one model: a running top-k over its row blocks."""
    top = torch.zeros(0)
    for module, start, stop in _blocks(modules, base, 1):
        values = torch.cat([top, delta.rows(module, start, stop).abs().reshape(-1)])
        top = torch.topk(values, keep, sorted=False).values if len(values) > keep else values
    return float(top.min()) if len(top) else 0.0


def _gram_to_cosine(gram: torch.Tensor) -> np.ndarray:
    """Cosine from a Gram matrix; a model with a zero update has cosine 0 to the others (1 to itself)."""
    norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0))
    scale = torch.outer(norms, norms)
    cosine = torch.where(scale > 0, gram / torch.where(scale > 0, scale, 1), torch.zeros_like(gram))
    cosine.fill_diagonal_(1.0)
    return cosine.clamp(-1, 1).numpy()


# ---------------------------------------------------------------------------------------------- output baseline
@torch.no_grad()
def greedy_answers(model, tokenizer, probes: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """Each probe's greedy continuation (token ids, cut at the first EOS), all probes in one left-padded batch."""
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer(list(probes), return_tensors="pt", padding=True, truncation=True, max_length=MAX_PROBE_TOKENS)
    device = next(model.parameters()).device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                   # generation-config notes about unused sampling settings
        out = model.generate(input_ids=encoded["input_ids"].to(device), max_new_tokens=max_new_tokens,
                             attention_mask=encoded["attention_mask"].to(device), do_sample=False, num_beams=1,
                             pad_token_id=pad)
    answers = []
    for row in out[:, encoded["input_ids"].shape[1]:].tolist():                  # [P, <= max_new_tokens]
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        answers.append(row)
    return answers


@torch.no_grad()
def embed_answers(base, tokenizer, answers: list[list[int]]) -> np.ndarray:
    """Mean over probes of the base's mean final hidden state over each answer's tokens: [d]. Empty answers are
    left out; a model whose every answer is empty gets the zero vector."""
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]                 # BOS where the tokenizer adds one
    kept = [a for a in answers if a]
    d = base.config.get_text_config().hidden_size
    if not kept:
        return np.zeros(d, dtype=np.float32)
    device = next(base.parameters()).device
    input_ids, mask = right_pad([prefix + a for a in kept], 0)                   # [P, T]
    hidden = base(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                  output_hidden_states=True).hidden_states[-1].float().cpu()    # [P, T, d]
    answer = mask.clone()
    answer[:, : len(prefix)] = 0                                                 # answer tokens only
    means = (hidden * answer[..., None]).sum(1) / answer.sum(1, keepdim=True)    # [P, d]
    return means.mean(0).numpy()


def output_embeddings(entries: list[ModelEntry], paths: dict[str, Path], base_dir: Path, probes: Sequence[str],
                      device=None, dtype=None, max_new_tokens: int = MAX_NEW_TOKENS,
                      progress: ProgressFn | None = None) -> np.ndarray:
    """The output-embedding baseline of every entry: [n, d] float32."""
    from peft import PeftModel


    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    base, tokenizer = load_model(base_dir, device, dtype)
    if tokenizer is None:
        raise ModelSourceError(f"Base {base_dir} has no tokenizer: the output baseline needs one to generate.")
    rows = []
    for i, entry in enumerate(entries):
        path = paths[entry.name]
        if entry.kind == "lora":
            check_adapter_fits(path, base_dir, base)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = PeftModel.from_pretrained(base, path, adapter_name="baseline").eval()
            try:
                answers = greedy_answers(model, tokenizer, probes, max_new_tokens)
            finally:
                base = model.unload()
                if not strip_adapter_layers(base):
                    raise ComputationError(f"Adapter {path} could not be removed from the base after generating.")
        else:
            check_full_fits(path, base_dir)
            model, _ = load_model(path, device, dtype)
            answers = greedy_answers(model, tokenizer, probes, max_new_tokens)
            del model
        rows.append(embed_answers(base, tokenizer, answers))
        report(progress, i + 1, len(entries), "outputs", entry.name)
    return np.stack(rows).astype(np.float32)


# ---------------------------------------------------------------------------------------------- all baselines
def compute_baselines(catalog: Catalog | str | Path, names: list[str] | None = None, *,
                      which: Sequence[str] = ("weights", "mask", "outputs"), top_fraction: float = TOP_FRACTION,
                      probes: Sequence[str] | None = None, device=None, dtype=None,
                      max_new_tokens: int = MAX_NEW_TOKENS, progress: ProgressFn | None = None) -> dict[str, Similarity]:
    """The paper's baselines for the models ``names`` of a catalog (all by default), which must share one base."""
    catalog = catalog if isinstance(catalog, Catalog) else read_catalog(catalog)
    entries = [catalog.get(n) for n in names] if names is not None else list(catalog)
    bases = {str(e.base) for e in entries}
    if len(bases) != 1:
        raise DeltaAtlasError(f"The baselines compare models of one base, but these models have {len(bases)} bases "
                              f"({', '.join(sorted(bases))}): report each base's models separately.")
    base_dir = resolve_source(entries[0].base)
    paths = {e.name: resolve_source(e.source) for e in entries}
    entries = [_with_kind(e, check_kind(paths[e.name], e.kind)) for e in entries]
    names = [e.name for e in entries]
    result: dict[str, Similarity] = {}
    if "weights" in which or "mask" in which:
        base = Tensors(base_dir)
        deltas = [_Delta(paths[e.name], e.kind, base) for e in entries]
        result.update({k: v for k, v in weight_similarities(deltas, base, names, top_fraction, progress).items()
                       if k in which})
    if "outputs" in which:
        vectors = output_embeddings(entries, paths, base_dir, probes or DEFAULT_PROBES, device, dtype,
                                    max_new_tokens, progress)
        result["outputs"] = Similarity(names, cosine_similarities(vectors), vectors.shape[1],
                                       "base-model embedding of greedy answers to the probes, cosine",
                                       {"max_new_tokens": max_new_tokens, "vectors": vectors})
    return result


def _with_kind(entry: ModelEntry, kind: str) -> ModelEntry:
    from dataclasses import replace

    return replace(entry, kind=kind)

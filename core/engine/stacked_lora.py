"""Plain LoRA adapters run side by side on one base without PEFT: stacked weights and forward hooks.

PEFT's mixed-adapter batches (``adapter_names=...``) loop over the adapters inside every layer with index masks,
and its wrappers must be injected into the base and stripped again. Here, for a batch of K plain LoRA adapters,
each targeted ``nn.Linear`` gets a forward hook that adds the low-rank term of adapter k to the rows of adapter k,
with two batched matrix products on stacked weights:

    y[k] = base(x)[k] + scale_k * (x[k] @ A_k^T) @ B_k^T        A_k: [r, d_in], B_k: [d_out, r]

Rows must be grouped per adapter (x is [K*m, T, d_in], rows k*m..(k+1)*m-1 belong to adapter k). The base model's
modules are never replaced: the hooks are removed in a ``finally``, so nothing can leak into the next batch.
Anything this path does not model exactly (DoRA, LoRA biases, modules_to_save, embedding LoRA, ...) raises
:class:`NotStackableError`, and the caller runs that adapter through PEFT instead.
"""
from __future__ import annotations

import logging
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from core.engine.activations import repeated_probe_states
from core.engine.loading import ADAPTER_CONFIG, check_adapter_fits, read_json, weight_files
from core.errors import ComputationError

log = logging.getLogger(__name__)

PREFIX = "base_model.model."
# config fields that may hold any value: they do not change what a loaded plain LoRA adapter computes
HARMLESS = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "r", "lora_alpha",
            "lora_dropout", "target_modules", "exclude_modules", "init_lora_weights", "layers_to_transform",
            "layers_pattern", "rank_pattern", "alpha_pattern", "use_rslora", "auto_mapping", "peft_version",
            "megatron_core", "qalora_group_size", "loftq_config", "runtime_config", "bias"}
PLAIN_INITS = (True, False, "gaussian")   # other inits (PiSSA, OLoRA, LoftQ...) may rewrite the base: PEFT's job


class NotStackableError(ComputationError):
    """This adapter needs PEFT (a LoRA variant or extra the stacked path does not model)."""


@dataclass
class LoraWeights:
    """One plain LoRA adapter: per module name (as in ``model.named_modules()``), A [r, d_in], B [d_out, r], scale."""
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]


def unstackable_reason(config: dict) -> str | None:
    """Why an adapter with this adapter_config.json cannot be stacked, or None when it can."""
    if str(config.get("peft_type", "")).upper() != "LORA":
        return f"peft_type is {config.get('peft_type')!r}"
    if config.get("bias", "none") != "none":
        return f"bias is {config.get('bias')!r}"
    if config.get("init_lora_weights", True) not in PLAIN_INITS:
        return f"init_lora_weights is {config.get('init_lora_weights')!r}"
    extras = sorted(k for k, v in config.items() if k not in HARMLESS and v)    # use_dora, lora_bias, ...
    return f"it sets {', '.join(extras)}" if extras else None


def read_lora(adapter_dir: Path, model: nn.Module) -> LoraWeights:
    """The adapter's A, B and scale per module of ``model``; NotStackableError when PEFT is needed for it."""
    from safetensors.torch import load_file

    config = read_json(Path(adapter_dir) / ADAPTER_CONFIG)
    reason = unstackable_reason(config)
    files = weight_files(Path(adapter_dir))
    if reason is None and not files:
        reason = "it has no safetensors weights"
    if reason:
        raise NotStackableError(f"Adapter {adapter_dir} cannot be stacked: {reason}.")
    tensors = {k: v for f in files for k, v in load_file(f).items()}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, part = key.removeprefix(PREFIX).rpartition(".lora_")
        if not key.startswith(PREFIX) or part not in ("A.weight", "B.weight"):
            raise NotStackableError(f"Adapter {adapter_dir} cannot be stacked: it holds {key}.")
        pairs.setdefault(name, {})[part[0]] = value
    return LoraWeights({name: _module_weights(adapter_dir, model, config, name, pair) for name, pair in pairs.items()})


def _module_weights(adapter_dir: Path, model: nn.Module, config: dict, name: str,
                    pair: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A [r, d_in], B [d_out, r], scale) of one module, checked against the base and the config's rank."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    a, b = pair.get("A"), pair.get("B")
    if type(module) is not nn.Linear or a is None or b is None or a.dim() != 2 or b.dim() != 2 \
            or a.shape[1] != module.in_features or b.shape != (module.out_features, a.shape[0]):
        raise NotStackableError(f"Adapter {adapter_dir} cannot be stacked at {name}.")
    if not _targeted(config.get("target_modules"), name):
        raise NotStackableError(f"Adapter {adapter_dir} holds weights for {name}, which its target_modules miss.")
    rank, alpha = _rank_and_alpha(config, name)
    if rank != a.shape[0]:
        raise NotStackableError(f"Adapter {adapter_dir}: {name} has rank {a.shape[0]} but its config says {rank}.")
    return a, b, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _targeted(targets, name: str) -> bool:
    """Whether PEFT would put a LoRA layer on ``name`` (a list: exact name or suffix; a string: a full regex match),
    so that weights PEFT would not load are not applied here either."""
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets or ())


def _rank_and_alpha(config: dict, name: str) -> tuple[int, float]:
    """PEFT's own reading of rank_pattern / alpha_pattern (regexes on the module name) when there are any."""
    rank, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    if ranks or alphas:
        try:
            from peft.utils.other import get_pattern_key
        except ImportError:
            raise NotStackableError("rank_pattern / alpha_pattern need PEFT's matcher, which is missing.") from None
        rank = int(ranks.get(get_pattern_key(ranks.keys(), name), rank))
        alpha = float(alphas.get(get_pattern_key(alphas.keys(), name), alpha))
    return rank, alpha


# ------------------------------------------------------------------------------------------------ the hooks
@contextmanager
def stacked_lora(model: nn.Module, adapters: Sequence[LoraWeights]) -> Iterator[None]:
    """Within the block, row group k of every forward pass of ``model`` runs through ``adapters[k]``."""
    names = list(dict.fromkeys(name for adapter in adapters for name in adapter.modules))
    handles = []
    try:
        for name in names:
            module = model.get_submodule(name)
            a_t, b_t = _stack(module, [adapter.modules.get(name) for adapter in adapters])
            handles.append(module.register_forward_hook(_hook(a_t, b_t), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _stack(module: nn.Linear, weights: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A^T [K, d_in, r] and scale * B^T [K, r, d_out]; smaller ranks and absent adapters are zero-padded.

    Like PEFT, the low-rank term is computed in float32 when the base is in half precision."""
    k, rank = len(weights), max(w[0].shape[0] for w in weights if w is not None)
    dtype, device = torch.promote_types(module.weight.dtype, torch.float32), module.weight.device
    a_t = torch.zeros(k, module.in_features, rank, dtype=dtype)
    b_t = torch.zeros(k, rank, module.out_features, dtype=dtype)
    for i, w in enumerate(weights):
        if w is not None:
            a, b, scale = w
            a_t[i, :, : a.shape[0]] = a.T
            b_t[i, : a.shape[0], :] = b.T * scale        # s * (x A^T) B^T == (x A^T)(s B^T): one op less per call
    return a_t.to(device), b_t.to(device)


def _hook(a_t: torch.Tensor, b_t: torch.Tensor):
    k = a_t.shape[0]

    def add_lora(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        x = args[0] if args else kwargs["input"]                               # [K*m, T, d_in]
        if x.dim() < 3 or x.shape[0] % k:
            raise NotStackableError(f"Stacked LoRA needs rows grouped per adapter ({k} groups), got {tuple(x.shape)}.")
        with torch.autocast(x.device.type, enabled=False):                    # the low-rank term stays float32
            low = torch.bmm(x.reshape(k, -1, x.shape[-1]).to(a_t.dtype), a_t)     # [K, m*T, r]
            base = output.reshape(k, -1, output.shape[-1]).to(a_t.dtype)           # [K, m*T, d_out]
            return torch.baddbmm(base, low, b_t).reshape(output.shape).to(output.dtype)   # [K*m, T, d_out]

    return add_lora


def run_stacked(model: nn.Module, base_dir: Path, adapters: dict[str, Path], tokenizer, probes: Sequence[str],
                layer: int = -1) -> tuple[dict[str, torch.Tensor], dict[str, Exception], dict[str, Path]]:
    """States [P, d] per adapter, the error of each adapter that failed, and the adapters left for PEFT.

    Each probe is one forward pass of K rows (one per adapter): rows of one length, so nothing is padded."""
    weights: dict[str, LoraWeights] = {}
    errors: dict[str, Exception] = {}
    rest: dict[str, Path] = {}
    for name, path in adapters.items():
        try:
            check_adapter_fits(path, base_dir, model)
            weights[name] = read_lora(path, model)
        except NotStackableError:
            rest[name] = path
        except Exception as exc:  # noqa: BLE001 - one bad adapter must not stop the batch
            errors[name] = exc
    if not weights:
        return {}, errors, rest
    try:
        with stacked_lora(model, list(weights.values())):
            rows = repeated_probe_states(model, tokenizer, probes, len(weights), layer=layer)     # [K, P, d]
    except Exception:  # noqa: BLE001 - this path is only a shortcut: PEFT's proven path runs the batch instead
        log.debug("Stacked LoRA failed on %s; running the batch through PEFT.", base_dir, exc_info=True)
        return {}, errors, {**rest, **{name: adapters[name] for name in weights}}
    return {name: rows[k] for k, name in enumerate(weights)}, errors, rest

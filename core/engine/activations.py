"""Last-token hidden states (SPEC §2): the batched version the engine runs, and the plain reference loop.

h(x) = hidden_states[layer] (default -1: the final layer, after the final norm) at the LAST REAL token of probe x,
cast to float32. Two ways to batch:
  * ``last_token_states``: several prompts in one pass, right-padded. With a causal mask the real tokens never see
    the padding and keep their positions, so a padded row gives the same numbers as the prompt alone; the last real
    token is found from the attention mask. Used where each model runs once (the base, full models).
  * ``repeated_probe_states``: one pass per probe, of K identical rows (one per adapter, the adapter chosen per row
    by stacked LoRA hooks or PEFT's ``adapter_names``). Rows of one probe have one length, so nothing is padded:
    one padded batch of every probe spends about a quarter of its work on padding with the paper's probes.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from core.engine.loading import check_adapter_fits
from core.engine.probes import MAX_PROBE_TOKENS
from core.engine.quiet import quiet_transformers
from core.errors import ComputationError

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
HALF = (torch.bfloat16, torch.float16)


def tokenize(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt on its own: default special tokens (BOS where the tokenizer adds one), truncated."""
    return [tokenizer(p, truncation=True, max_length=MAX_PROBE_TOKENS)["input_ids"] for p in prompts]


def right_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask, both [B, T], padded on the right."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids, mask


def check_layer(model, layer: int) -> None:
    n = model.config.get_text_config().num_hidden_layers + 1  # embeddings + one per decoder layer
    if not -n <= layer < n:
        raise ComputationError(f"Layer {layer} does not exist: this model has hidden states 0..{n - 1} (or -1..-{n}).")


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: Sequence[str], *, layer: int = -1, batch_size: int = 16,
                      adapter_names: Sequence[str] | None = None) -> torch.Tensor:
    """Hidden state of the last real token of every prompt, [len(prompts), d] float32 on the CPU.

    ``adapter_names`` (PEFT model only) names the adapter each prompt runs through; ``"__base__"`` means none.
    """
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ValueError(f"{len(adapter_names)} adapter names for {len(prompts)} prompts")
    check_layer(model, layer)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: any id will do
    ids = tokenize(tokenizer, prompts)
    chunks = []
    for start in range(0, len(ids), batch_size):
        input_ids, mask = right_pad(ids[start:start + batch_size], pad_id)          # [B, T]
        extra = {} if adapter_names is None else {"adapter_names": list(adapter_names[start:start + batch_size])}
        out = _forward(model, input_ids.to(device), mask.to(device), extra)
        hidden = out.hidden_states[layer]                                            # [B, T', d]
        offset = hidden.shape[1] - input_ids.shape[1]   # virtual tokens a prompt-learning adapter put in front
        last = offset + mask.sum(dim=1) - 1                                          # [B]
        chunks.append(hidden[torch.arange(len(last)), last.to(device)].float().cpu())  # [B, d]
        del out, hidden
    return torch.cat(chunks)


@torch.no_grad()
def repeated_probe_states(model, tokenizer, probes: Sequence[str], copies: int, *, layer: int = -1,
                          extra: dict | None = None) -> torch.Tensor:
    """[copies, P, d] float32 on the CPU: each probe as ``copies`` identical rows, one forward pass per probe.

    ``extra`` goes to every forward call (e.g. PEFT's ``adapter_names``, one per row)."""
    check_layer(model, layer)
    device = next(model.parameters()).device
    per_probe = []
    for ids in tokenize(tokenizer, probes):
        input_ids = torch.tensor([ids] * copies, dtype=torch.long, device=device)   # [K, T]
        out = _forward(model, input_ids, torch.ones_like(input_ids), extra or {})
        per_probe.append(out.hidden_states[layer][:, -1].float().cpu())            # [K, d]: last token, no padding
        del out
    return torch.stack(per_probe, dim=1)                                            # [K, P, d]


@contextmanager
def float32_residual(model):
    """Half-precision weights, float32 residual stream. Why: a delta is a small difference of two large hidden
    states, and a residual stream kept in bf16 rounds each layer's sum, so the error grows with depth (an 8B-shaped
    base, 32 layers: cosine 0.9962 to the fp32 vectors). Here the embeddings come out in float32 and autocast runs
    each matrix product in the weights' dtype, so every sub-layer's output is rounded once and the residual sums
    stay in float32. Nothing changes for float32 weights. The hook removes itself."""
    weight = next(model.parameters())
    if weight.dtype not in HALF:
        yield
        return
    handle = model.get_input_embeddings().register_forward_hook(lambda module, args, output: output.float())
    try:
        with torch.autocast(weight.device.type, dtype=weight.dtype):
            yield
    finally:
        handle.remove()


def _forward(model, input_ids: torch.Tensor, mask: torch.Tensor, extra: dict):
    """One forward pass with every hidden state; logits only for one position (they are not needed)."""
    kwargs = dict(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False, **extra)
    with float32_residual(model):
        try:
            return model(**kwargs, logits_to_keep=1)
        except TypeError as exc:            # an architecture without logits_to_keep: compute all logits
            if "logits_to_keep" not in str(exc):
                raise
            return model(**kwargs)


def check_finite(states: torch.Tensor | np.ndarray, what: str) -> None:
    values = torch.as_tensor(states)
    if not torch.isfinite(values).all():
        raise ComputationError(f"{what} gives NaN or infinite activations: its weights are broken (or the dtype "
                               "overflows; try --dtype float32).")


# ----------------------------------------------------------------------------------------------- ground truth
@torch.no_grad()
def _reference_states(model, tokenizer, probes: Sequence[str], layer: int) -> torch.Tensor:
    """One probe at a time, no padding, no batching: [P, d] float32 (on the CPU)."""
    rows = []
    for probe in probes:
        encoded = tokenizer(probe, truncation=True, max_length=MAX_PROBE_TOKENS, return_tensors="pt")
        with float32_residual(model):                                      # the engine's precision rule
            out = model(**encoded.to(model.device), output_hidden_states=True)
        rows.append(out.hidden_states[layer][0, -1].float().cpu())
    return torch.stack(rows)


def reference_delta(base_dir: Path, model_dir: Path, kind: str, probes: Sequence[str], layer: int = -1,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Delta Activations the plain way (the released reference code's loop): fresh loads, fp32 on the CPU (unless
    told otherwise: the benchmark races it on a GPU in bf16), one probe at a time. Slow, but obviously right: the
    tests hold the engine to it and the benchmark races it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer


    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device).eval()
    base_states = _reference_states(base, tokenizer, probes, layer)                 # [P, d]
    del base
    model = AutoModelForCausalLM.from_pretrained(base_dir if kind == "lora" else model_dir, dtype=dtype).to(device)
    if kind == "lora":
        model = PeftModel.from_pretrained(model, model_dir)
    model_states = _reference_states(model.eval(), tokenizer, probes, layer)        # [P, d]
    return (model_states - base_states).mean(dim=0).numpy()                         # [d]


# ----------------------------------------------------------------------------------------------- adapters on a base
class AdapterHost:
    """PEFT adapters loaded by name onto one base model, run, and removed again, so nothing leaks.

    ``run`` loads a batch of adapters (checking first that each fits the base), runs them x each probe in one
    mixed-adapter forward pass per probe (or one adapter at a time with ``set_adapter`` for types PEFT cannot mix),
    and deletes them. ``close`` strips PEFT's wrappers and says whether the base is exactly the plain model again.
    (The engine runs plain LoRA adapters through ``stacked_lora``, which is faster; this is the general route.)
    """

    def __init__(self, model, base_dir: Path):
        self.base, self.base_dir, self.peft = model, Path(base_dir), None

    def run(self, adapters: dict[str, Path], tokenizer, probes: Sequence[str], layer: int = -1,
            mixed: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Exception]]:
        """States [P, d] per adapter name, and the error of each adapter that failed."""
        states: dict[str, torch.Tensor] = {}
        errors: dict[str, Exception] = {}
        loaded: dict[str, str] = {}                      # caller's name -> PEFT name (safe for module keys)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="peft")
            warnings.filterwarnings("ignore", category=FutureWarning)   # transformers deprecation notes
            try:
                for i, (name, path) in enumerate(adapters.items()):
                    try:
                        self._add(f"adapter_{i}", Path(path))
                        loaded[name] = f"adapter_{i}"
                    except Exception as exc:  # noqa: BLE001 - one bad adapter must not stop the batch
                        errors[name] = exc
                        self._remove(f"adapter_{i}")
                if mixed and len(loaded) > 1:
                    try:
                        states = self._run_mixed(loaded, tokenizer, probes, layer)
                        loaded = {}
                    except Exception:  # noqa: BLE001 - fall back to one at a time to find the culprit
                        states = {}
                for name, internal in loaded.items():
                    try:
                        states[name] = self._run_one(internal, tokenizer, probes, layer)
                    except Exception as exc:  # noqa: BLE001
                        errors[name] = exc
            finally:
                for i in range(len(adapters)):
                    self._remove(f"adapter_{i}")
        return states, errors

    def _add(self, internal: str, path: Path) -> None:
        from peft import PeftModel


        check_adapter_fits(path, self.base_dir, self.base)
        if self.peft is None:
            try:
                self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=internal)
            except Exception:
                strip_adapter_layers(self.base)          # PEFT may have injected layers before it failed
                raise
        else:
            self.peft.load_adapter(path, adapter_name=internal)
        self.peft.eval()

    def _run_mixed(self, loaded: dict[str, str], tokenizer, probes, layer) -> dict[str, torch.Tensor]:
        internals = list(loaded.values())
        self.peft.set_adapter(internals[0])              # PEFT only routes adapter_names when one is active
        rows = repeated_probe_states(self.peft, tokenizer, probes, len(internals), layer=layer,
                                     extra={"adapter_names": internals})                  # [K, P, d]
        return {name: rows[k] for k, name in enumerate(loaded)}

    def _run_one(self, internal: str, tokenizer, probes, layer) -> torch.Tensor:
        self.peft.set_adapter(internal)
        return last_token_states(self.peft, tokenizer, probes, layer=layer, batch_size=len(probes))

    def _remove(self, internal: str) -> None:
        if self.peft is not None and internal in self.peft.peft_config:
            try:
                self.peft.delete_adapter(internal)
            except Exception:  # noqa: BLE001 - close() will notice anything left behind
                pass

    def close(self) -> bool:
        """Strip PEFT's wrappers from the base; True when no adapter layer is left in it."""
        if self.peft is not None:
            try:
                self.base = self.peft.unload()
            except Exception:  # noqa: BLE001 - fall back to stripping the wrappers by hand
                log.debug("PEFT unload failed", exc_info=True)
            self.peft = None
        return strip_adapter_layers(self.base)


def strip_adapter_layers(model) -> bool:
    """Put back the plain layer wherever a PEFT adapter layer wraps one; True when none is left."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return not any(isinstance(m, BaseTunerLayer) for m in model.modules())

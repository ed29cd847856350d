"""Finetuning on instruction/response examples: LoRA (the paper's recipe) or full-parameter.

Used by the demo-zoo builder (to train the pool) and by task search (a brief few-shot finetune of the pool's base
on the user's examples). The loss is on the response tokens only (the paper's), or with ``loss_on="text"`` on the
instruction and input too, or with ``loss_on="prompt"`` on the instruction and input alone (what a task is about,
not how it answers); never on the Alpaca template, which is one for every domain, so that the template itself
never tells domains apart.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from core.engine.device import fast_bfloat16
from core.errors import DeltaAtlasError
from core.reuse.examples import PROMPT, PROMPT_WITH_INPUT, Example  # noqa: F401  (Example: re-exported)
from core.reuse.lower_states import LowerStates

log = logging.getLogger(__name__)

PROMPT_TAIL_TOKENS = 12  # tokens of the prompt's end kept when a long prompt is cut
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")  # the paper's: no o_proj


@dataclass(frozen=True)
class Recipe:
    """Every finetuning hyper-parameter in one place. Stored with a catalog (``recipe.json``) so that a task
    embedding is made exactly as the pool was."""

    method: str = "lora"          # "lora" or "full"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGETS
    learning_rate: float = 1e-3
    steps: int = 150              # optimiser steps (the paper counts epochs; small pools are clearer in steps)
    batch_size: int = 8
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_length: int = 256         # tokens per example, prompt + response
    seed: int = 0
    layers: int = 0               # train only the top N transformer layers (0: all); see TopLayers
    precision: str = "float32"    # "bfloat16": mixed precision (bf16 compute, fp32 weights and optimiser)
    loss_on: str = "response"     # "text": also the instruction and input (what the examples are about); "prompt": those alone

    def replace(self, **changes) -> "Recipe":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise DeltaAtlasError(f"Unknown recipe setting(s) {', '.join(sorted(unknown))}.")
        return Recipe(**{**asdict(self), **changes})

    def to_json(self) -> dict:
        return {**asdict(self), "target_modules": list(self.target_modules)}

    @classmethod
    def from_json(cls, data: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if "target_modules" in data:
            data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)


@dataclass
class TrainResult:
    out_dir: Path
    losses: list[float] = field(default_factory=list)  # loss of every step

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return sum(tail) / max(len(tail), 1)


LOSS_ON = ("response", "text", "prompt")


def encode(examples: list[Example], tokenizer, max_length: int,
           loss_on: str = "response") -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example. Labels are -100 off the loss: on the whole prompt (``loss_on="response"``)
    or only on its template (``"text"``: the instruction and input count, like the response and its EOS), or
    (``"prompt"``) on the instruction and input alone, the response off the loss."""
    if loss_on not in LOSS_ON:
        raise DeltaAtlasError(f"Unknown loss_on {loss_on!r}: use {' or '.join(LOSS_ON)}.")
    encoded = []
    for ex in examples:
        prompt_ids, prompt_labels = _prompt_tokens(ex, tokenizer, loss_on)
        response_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        response_ids = response_ids[: max_length // 2] if len(prompt_ids) + len(response_ids) > max_length else response_ids
        budget = max_length - len(response_ids)
        if len(prompt_ids) > budget:  # cut the middle of the prompt, keep its start and the "### Response:" tail
            keep = lambda seq: seq[: budget - PROMPT_TAIL_TOKENS] + seq[-PROMPT_TAIL_TOKENS:]   # noqa: E731
            prompt_ids, prompt_labels = keep(prompt_ids), keep(prompt_labels)
        response_labels = [-100] * len(response_ids) if loss_on == "prompt" else response_ids
        encoded.append((prompt_ids + response_ids, prompt_labels + response_labels))
    return encoded


def _prompt_tokens(ex: Example, tokenizer, loss_on: str) -> tuple[list[int], list[int]]:
    """The prompt's token ids, and its labels: -100 everywhere, or (``"text"``, ``"prompt"``) the id of every token that starts
    inside the instruction or the input (character spans, through the fast tokenizer's offsets)."""
    prompt = ex.prompt()
    if loss_on == "response":
        ids = tokenizer(prompt)["input_ids"]
        return ids, [-100] * len(ids)
    if not getattr(tokenizer, "is_fast", False):
        raise DeltaAtlasError(f"loss_on={loss_on!r} needs a fast (Rust) tokenizer, which gives character offsets; "
                              "use loss_on='response' with this base.")
    template = PROMPT_WITH_INPUT if ex.input else PROMPT
    head, rest = template.split("{instruction}")
    start = len(head)
    spans = [(start, start + len(ex.instruction))]
    if ex.input:
        middle = rest.split("{input}")[0]
        begin = spans[0][1] + len(middle)
        spans.append((begin, begin + len(ex.input)))
    encoding = tokenizer(prompt, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    labels = [i if any(a <= first < b for a, b in spans) and last > first else -100
              for i, (first, last) in zip(ids, encoding["offset_mapping"])]
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels, each [B, T]."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batch_indices(n: int, batch_size: int, steps: int, seed: int):
    """``steps`` batches of example indices, drawn epoch by epoch from a seeded shuffle (the last partial batch
    wraps around into the next epoch)."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order.extend(epoch)
        yield order[:batch_size]
        del order[:batch_size]


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(recipe.steps - recipe.warmup_steps, 1)
    return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (``model.model.layers`` in Llama, Qwen, Gemma...)."""
    inner = getattr(model.get_base_model() if hasattr(model, "get_base_model") else model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise DeltaAtlasError(f"Cannot find the transformer layers of {type(model).__name__}: train it with "
                              "layers=0 (every layer).")
    return layers


def top_layer_ids(model, recipe: Recipe) -> list[int]:
    """The layers that learn when the recipe limits them; [] for ``layers=0`` (every weight, any architecture)."""
    if not recipe.layers:
        return []
    n = len(decoder_layers(model))
    if recipe.layers < 0 or recipe.layers > n:
        raise DeltaAtlasError(f"Recipe layers={recipe.layers} but the model has {n} layers: use 0 (all) to {n}.")
    return list(range(n - recipe.layers, n))


def wrap_lora(model, recipe: Recipe, adapter_name: str = "default"):
    """Put a fresh, seeded LoRA adapter on ``model`` (a PeftModel is returned)."""
    from peft import LoraConfig, get_peft_model

    layer_ids = top_layer_ids(model, recipe)
    top = {"layers_to_transform": layer_ids, "layers_pattern": "layers"} if layer_ids else {}
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=list(recipe.target_modules), bias="none", task_type="CAUSAL_LM", **top)
    torch.manual_seed(recipe.seed)
    return get_peft_model(model, config, adapter_name=adapter_name)


def finetune(model, tokenizer, examples: list[Example], recipe: Recipe, out_dir: str | Path,
             progress: Callable[[int, int, float], None] | None = None, save_dtype: torch.dtype | None = None,
             kept: LowerStates | None = None) -> TrainResult:
    """Finetune ``model`` (a freshly loaded base; it is changed in place) on ``examples`` and save the result.

    LoRA saves a PEFT adapter folder; full saves a whole HF model folder with the tokenizer. ``progress(step,
    total, loss)`` is called after every step. Seeded: the same inputs give the same weights. With
    ``recipe.layers = N`` only the top N layers learn (LoRA on them, or all their weights for full), and the frozen
    layers below run once per example instead of once per step (:class:`TopLayers`), and ``kept`` (a search's
    LowerStates) shares their output with the search's later stages.
    """
    if recipe.method not in ("lora", "full"):
        raise DeltaAtlasError(f"Unknown finetuning method {recipe.method!r}: use lora or full.")
    if recipe.precision not in PRECISIONS:
        raise DeltaAtlasError(f"Unknown precision {recipe.precision!r}: use {' or '.join(PRECISIONS)}.")
    if len(examples) == 0:
        raise DeltaAtlasError("No training example: give at least one instruction/response pair.")
    torch.manual_seed(recipe.seed)
    device = next(model.parameters()).device
    layer_ids = top_layer_ids(model, recipe)
    if recipe.method == "lora":
        model = wrap_lora(model, recipe)
    elif layer_ids:
        learning = {f"layers.{i}." for i in layer_ids}
        for name, param in model.named_parameters():
            param.requires_grad_(any(k in name for k in learning))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    encoded = encode(examples, tokenizer, recipe.max_length, recipe.loss_on)
    autocast = _autocast(device, recipe.precision)
    # all layers learning (layers == n) leaves nothing frozen below to run once
    top = TopLayers(model, layer_ids[0], encoded, tokenizer.pad_token_id, autocast, kept=kept,
                    precision=precision_in_use(device, recipe.precision)) if layer_ids and layer_ids[0] else None
    model.train()
    result = TrainResult(out_dir=Path(out_dir))
    for step, rows in enumerate(batch_indices(len(encoded), recipe.batch_size, recipe.steps, recipe.seed)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        batch = collate([encoded[i] for i in rows], tokenizer.pad_token_id)
        with autocast:
            if top is not None:
                loss = top.loss(rows, batch["labels"].to(device))
            else:
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss   # mean over the labelled tokens
        if not torch.isfinite(loss):
            raise DeltaAtlasError(f"Training diverged at step {step + 1} (loss {loss.item()}): lower the learning rate.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(loss.item())
        if progress is not None:
            progress(step + 1, recipe.steps, loss.item())
    model.eval()
    save_trained(model, tokenizer, recipe, result.out_dir, save_dtype)
    return result


PRECISIONS = ("float32", "bfloat16")


def precision_in_use(device: torch.device, precision: str) -> str:
    """What a recipe's ``precision`` computes in on ``device``: bfloat16 only where the hardware has it natively."""
    return "bfloat16" if precision == "bfloat16" and fast_bfloat16(device) else "float32"


def _autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision="bfloat16"`` where the hardware computes bf16 natively; float32 elsewhere, where
    emulated bf16 is tens of times slower (the numbers move by rounding only)."""
    used = precision_in_use(device, precision)
    if precision == "bfloat16" and used != precision:
        log.info("This %s has no native bfloat16: computing in float32 instead.", device.type)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=used == "bfloat16")


class _StopForward(Exception):
    pass


class TopLayers:
    """Training the top layers only: the frozen layers below ``start`` run once per example, and every step feeds
    their kept output to the top layers. Exact, not an approximation: the lower layers are frozen and have no
    dropout, so their output is the same at every step. On SmolLM2 (30 layers) with the top 8 learning, this
    makes a step about 3x cheaper than a full forward and backward pass."""

    def __init__(self, model, start: int, encoded: list, pad_id: int, autocast, chunk: int = 16,
                 kept: LowerStates | None = None, precision: str = "float32"):
        """``kept``: states one search shares between its stages (core.reuse.lower_states), read from and added
        to; ``precision``: what ``autocast`` computes in, part of their key."""
        self.causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.layers, self.start = decoder_layers(model), start
        self.lengths = [len(ids) for ids, _ in encoded]
        found = [kept.find(start, precision, ids) if kept is not None else None for ids, _ in encoded]
        self.states: list[torch.Tensor] = [torch.empty(0) if state is None else state for state in found]  # [T_i, d]
        missing = [i for i, state in enumerate(found) if state is None]
        for rows in length_parts(self.lengths, missing, chunk):
            batch = collate([encoded[i] for i in rows], pad_id)
            with autocast:
                hidden = self._below(batch["input_ids"], batch["attention_mask"])     # [B, T, d]
            for b, i in enumerate(rows):
                self.states[i] = hidden[b, : self.lengths[i]].float()
                if kept is not None:
                    kept.keep(start, precision, encoded[i][0], self.states[i])

    @torch.no_grad()
    def _below(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Output of layer ``start - 1`` (the input of layer ``start``), by stopping the forward pass there."""
        kept = {}

        def grab(module, args, output):
            kept["h"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        device = self.causal.device
        handle = self.layers[self.start - 1].register_forward_hook(grab)
        try:
            self.causal.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return kept["h"]

    def loss(self, rows: list[int], labels: torch.Tensor) -> torch.Tensor:
        """Mean loss on the labelled tokens of examples ``rows`` (labels [B, T], -100 off the loss)."""
        logits, targets, _ = self._response_logits(rows, labels)
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    def token_losses(self, rows: list[int], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each response token's loss [N] and the batch row it belongs to [N] (for per-group means)."""
        logits, targets, batch_rows = self._response_logits(rows, labels)
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none"), batch_rows

    def hidden(self, rows: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's final hidden state (after its last norm) [B, T, d] for examples ``rows``, right-padded to
        ``width`` (default: the longest), and the mask [B, T] of their real tokens."""
        width = width or max(self.lengths[i] for i in rows)
        device = self.causal.device
        hidden = torch.zeros(len(rows), width, self.states[0].shape[-1], device=device)    # [B, T, d]
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for b, i in enumerate(rows):
            hidden[b, : len(self.states[i])] = self.states[i]
            mask[b, : len(self.states[i])] = 1
        inner, everything = self.causal.model, self.layers
        inner.layers = everything[self.start:]          # the top layers only, for this one call
        try:
            return inner(inputs_embeds=hidden, attention_mask=mask, use_cache=False).last_hidden_state, mask
        finally:
            inner.layers = everything

    def _response_logits(self, rows: list[int], labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits [N, V] at the response tokens of examples ``rows``, their targets [N] and batch rows [N]."""
        out, _ = self.hidden(rows, labels.shape[1])                                    # [B, T, d]
        targets = labels[:, 1:]
        keep = targets != -100                          # the vocabulary projection only where there is a loss
        logits = self.causal.lm_head(out[:, :-1][keep])                                # [N, V]
        return logits, targets[keep], keep.nonzero()[:, 0]


def length_parts(lengths: list[int], rows, size: int) -> list[list[int]]:
    """``rows`` (indices into ``lengths``) in parts of at most ``size``, shortest first, so that rows of similar
    length are padded together."""
    order = sorted(rows, key=lambda i: lengths[i])
    return [order[first:first + size] for first in range(0, len(order), size)]


def save_trained(model, tokenizer, recipe: Recipe, out_dir: Path, save_dtype: torch.dtype | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.method == "lora":
        if save_dtype is not None:
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.data = param.data.to(save_dtype)
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        if save_dtype is not None:
            model = model.to(save_dtype)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(json.dumps({"recipe": recipe.to_json()}, indent=1))


@torch.no_grad()
def example_loss(model, tokenizer, examples: list[Example], max_length: int = 256, batch_size: int = 8,
                 precision: str = "float32") -> float:
    """Mean response-token loss of ``model`` on ``examples`` (token-weighted), for evaluating merges and bases."""
    return encoded_loss(model, tokenizer, encode(examples, tokenizer, max_length), batch_size, precision)


@torch.no_grad()
def encoded_loss(model, tokenizer, encoded: list[tuple[list[int], list[int]]], batch_size: int = 8,
                 precision: str = "float32") -> float:
    """Mean loss on the labelled tokens of already encoded examples (see :func:`encode`), token-weighted."""
    sums, counts = encoded_example_losses(model, tokenizer, encoded, batch_size, precision)
    return float(sums.sum() / max(float(counts.sum()), 1.0))


@torch.no_grad()
def encoded_example_losses(model, tokenizer, encoded: list[tuple[list[int], list[int]]], batch_size: int = 8,
                           precision: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's summed loss over its labelled tokens [n] and its count of labelled tokens [n] (float64)."""
    device = next(model.parameters()).device
    sums = torch.zeros(len(encoded), dtype=torch.float64)
    counts = torch.zeros(len(encoded), dtype=torch.float64)
    model.eval()
    for start in range(0, len(encoded), batch_size):
        inputs = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], tokenizer.pad_token_id).items()}
        with _autocast(device, precision):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
        shift_logits, shift_labels = logits[:, :-1], inputs["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100,
                                                   reduction="none")                      # [B, T - 1], 0 off the loss
        sums[start:start + len(losses)] = losses.double().sum(1).cpu()
        counts[start:start + len(losses)] = (shift_labels != -100).sum(1).double().cpu()
    return sums, counts

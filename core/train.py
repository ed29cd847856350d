"""Finetuning on instruction/response examples: LoRA (the paper's recipe) or full-parameter.

Used by the demo-zoo builder (to train the pool) and by task search (a brief few-shot finetune of the pool's base
on the user's examples). The loss is on the response tokens only; the prompt is one Alpaca template for every
domain, so that the prompt itself never tells domains apart.
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

from .errors import DeltaAtlasError

log = logging.getLogger(__name__)

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
          "\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                     "Write a response that appropriately completes the request."
                     "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_TAIL_TOKENS = 12  # tokens of the prompt's end kept when a long prompt is cut
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")  # the paper's: no o_proj


@dataclass(frozen=True)
class Example:
    instruction: str
    response: str
    input: str = ""

    def prompt(self) -> str:
        if self.input:
            return PROMPT_WITH_INPUT.format(instruction=self.instruction, input=self.input)
        return PROMPT.format(instruction=self.instruction)


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


def load_recipe(path: str | Path) -> Recipe:
    return Recipe.from_json(json.loads(Path(path).read_text()))


@dataclass
class TrainResult:
    out_dir: Path
    losses: list[float] = field(default_factory=list)  # loss of every step

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return sum(tail) / max(len(tail), 1)


def encode(examples: list[Example], tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example; labels are -100 on the prompt so the loss is on the response (+ EOS)."""
    encoded = []
    for ex in examples:
        prompt_ids = tokenizer(ex.prompt())["input_ids"]
        response_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        response_ids = response_ids[: max_length // 2] if len(prompt_ids) + len(response_ids) > max_length else response_ids
        budget = max_length - len(response_ids)
        if len(prompt_ids) > budget:  # cut the middle of the prompt, keep its start and the "### Response:" tail
            prompt_ids = prompt_ids[: budget - PROMPT_TAIL_TOKENS] + prompt_ids[-PROMPT_TAIL_TOKENS:]
        encoded.append((prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids))
    return encoded


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


def batches(encoded: list, batch_size: int, steps: int, seed: int):
    """``steps`` batches drawn epoch by epoch from a seeded shuffle (the last partial batch wraps around)."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            epoch = list(range(len(encoded)))
            rng.shuffle(epoch)
            order.extend(epoch)
        yield [encoded[i] for i in order[:batch_size]]
        del order[:batch_size]


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(recipe.steps - recipe.warmup_steps, 1)
    return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def wrap_lora(model, recipe: Recipe, adapter_name: str = "default"):
    """Put a fresh, seeded LoRA adapter on ``model`` (a PeftModel is returned)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=list(recipe.target_modules), bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(recipe.seed)
    return get_peft_model(model, config, adapter_name=adapter_name)


def finetune(model, tokenizer, examples: list[Example], recipe: Recipe, out_dir: str | Path,
             progress: Callable[[int, int, float], None] | None = None, save_dtype: torch.dtype | None = None) -> TrainResult:
    """Finetune ``model`` (a freshly loaded base; it is changed in place) on ``examples`` and save the result.

    LoRA saves a PEFT adapter folder; full saves a whole HF model folder with the tokenizer. ``progress(step,
    total, loss)`` is called after every step. Seeded: the same inputs give the same weights.
    """
    if recipe.method not in ("lora", "full"):
        raise DeltaAtlasError(f"Unknown finetuning method {recipe.method!r}: use lora or full.")
    if len(examples) == 0:
        raise DeltaAtlasError("No training example: give at least one instruction/response pair.")
    torch.manual_seed(recipe.seed)
    device = next(model.parameters()).device
    if recipe.method == "lora":
        model = wrap_lora(model, recipe)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    encoded = encode(examples, tokenizer, recipe.max_length)
    model.train()
    result = TrainResult(out_dir=Path(out_dir))
    for step, batch in enumerate(batches(encoded, recipe.batch_size, recipe.steps, recipe.seed)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        inputs = {k: v.to(device) for k, v in collate(batch, tokenizer.pad_token_id).items()}
        loss = model(**inputs).loss                       # mean over response tokens of the batch
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
def example_loss(model, tokenizer, examples: list[Example], max_length: int = 256, batch_size: int = 8) -> float:
    """Mean response-token loss of ``model`` on ``examples`` (token-weighted), for evaluating merges and bases."""
    encoded = encode(examples, tokenizer, max_length)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(encoded), batch_size):
        inputs = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], tokenizer.pad_token_id).items()}
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
        shift_logits, shift_labels = logits[:, :-1], inputs["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100,
                                                   reduction="sum")
        total += losses.item()
        count += int((shift_labels != -100).sum())
    return total / max(count, 1)

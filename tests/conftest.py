"""Tiny random models, built once per test session in a temporary folder.

A Llama-architecture base (2 layers, d=64) with a BPE tokenizer trained on a few sentences, LoRA adapters with
non-zero random weights, and full finetunes (the base with perturbed weights). Nothing here touches ../shared.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # the CI machine has 2 cores; one thread per test process avoids oversubscription

SENTENCES = [
    "The court held that the contract was void.", "Two plus three equals five.",
    "The patient was given aspirin for the headache.", "def square(x): return x * x",
    "Birds fly south in the winter.", "Please provide a response.", "Below is an instruction that describes a task.",
    "### Instruction:", "### Response:", "Write a response that appropriately completes the request.",
    "Input. The task described below requires a response.", "You are given an instruction and input.",
]
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)


def make_base(out_dir: Path, seed: int = 0, vocab_size: int = 320, **shape) -> Path:
    from core.zoo.tinylm import BaseShape, init_base, save_model, train_tokenizer

    tokenizer = train_tokenizer(SENTENCES * 20, vocab_size)
    model = init_base(tokenizer, BaseShape(**{**TINY_SHAPE, **shape}), seed=seed)
    return save_model(model, tokenizer, out_dir)


def make_lora(base_dir: Path, out_dir: Path, seed: int, rank: int = 4, targets=("q_proj", "v_proj", "up_proj"),
              scale: float = 0.5) -> Path:
    """A LoRA adapter with random non-zero A and B (so it really changes the activations)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False,
                        task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, scale)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def make_full(base_dir: Path, out_dir: Path, seed: int, scale: float = 0.02) -> Path:
    """A 'full finetune': the base with every weight perturbed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def write_catalog(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory) -> dict:
    """A base, four LoRA adapters (two 'domains'), two full finetunes and a catalog of them all (relative paths)."""
    root = tmp_path_factory.mktemp("tiny_pool")
    base = make_base(root / "base")
    loras = {f"lora_{i}": make_lora(base, root / f"lora_{i}", seed=i) for i in range(4)}
    fulls = {f"full_{i}": make_full(base, root / f"full_{i}", seed=100 + i) for i in range(2)}
    rows = [{"name": n, "source": f"./{n}", "kind": "lora", "base": "./base", "domain": "ab"[i % 2]}
            for i, n in enumerate(loras)]
    rows += [{"name": n, "source": f"./{n}", "kind": "full", "base": "./base", "domain": "ab"[i % 2]}
             for i, n in enumerate(fulls)]
    catalog = write_catalog(root / "catalog.csv", rows)
    return {"root": root, "base": base, "loras": loras, "fulls": fulls, "catalog": catalog}

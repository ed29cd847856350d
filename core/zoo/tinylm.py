"""Small Llama-architecture models made from scratch: a BPE tokenizer and a randomly initialised base.

Used by the demo-zoo builder (then pretrained), by the tests (tiny random models in fixtures) and by the benchmark
(a random base of 100M+ parameters). Everything is saved in the standard HF format, so the engine loads these
models exactly as it loads a model from the Hub.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


@dataclass(frozen=True)
class BaseShape:
    """Every size hyper-parameter of a base model, in one place."""

    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer that prepends BOS (as Llama's does); save it in HF format if ``out_dir``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 pad_token="<pad>", model_max_length=4096)
    if out_dir is not None:
        hf.save_pretrained(out_dir)
    return hf


def init_base(tokenizer: PreTrainedTokenizerFast, shape: BaseShape = BaseShape(), seed: int = 0,
              dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A randomly initialised Llama causal LM sized by ``shape``, with ids matching ``tokenizer``."""
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         rms_norm_eps=1e-5, **asdict(shape))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_model(model: torch.nn.Module, tokenizer, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save model + tokenizer as safetensors in HF format, optionally cast to ``dtype`` (e.g. fp16 to save space)."""
    out_dir = Path(out_dir)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Finetuning: the top-layers path computes exactly the full model's loss, trains only the top layers, and saves an
adapter PEFT reads back; mixed precision and bad settings."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import DeltaAtlasError
from core.reuse.train import Example, Recipe, TopLayers, _autocast, batch_indices, collate, encode, finetune, wrap_lora

EXAMPLES = [Example("Add two and three.", "Five."), Example("Name a bird.", "A robin, which sings in the morning."),
            Example("Is the sky green?", "No."), Example("Write a function.", "def f(x): return x")]


@pytest.fixture()
def base(tmp_path):
    from tests.conftest import make_base

    folder = make_base(tmp_path / "base3", num_hidden_layers=3)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder), folder


@pytest.mark.parametrize("start", [1, 2])
def test_top_layers_loss_equals_the_full_model_loss(base, start):
    model, tokenizer, folder = base
    model = wrap_lora(model, Recipe(rank=4, alpha=8, layers=3 - start))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)                 # a non-trivial adapter, so the top layers matter
    encoded = encode(EXAMPLES, tokenizer, 64)
    batch = collate(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(**batch).loss
        top = TopLayers(model, start, encoded, tokenizer.pad_token_id, _autocast(torch.device("cpu"), "float32"))
        mine = top.loss(list(range(len(EXAMPLES))), batch["labels"])
    assert mine.item() == pytest.approx(full.item(), rel=1e-5)


def test_lora_on_top_layers_trains_only_them_and_peft_reads_it_back(base, tmp_path):
    model, tokenizer, folder = base
    recipe = Recipe(rank=4, alpha=8, layers=1, steps=4, batch_size=2, warmup_steps=1, learning_rate=1e-2)
    result = finetune(model, tokenizer, EXAMPLES, recipe, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [2]
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(".layers.2." in k for k in keys)
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "adapter")
    assert any("layers.2" in name and "lora_A" in name for name, _ in reloaded.named_parameters())


def test_full_finetune_of_top_layers_leaves_lower_layers_alone(base, tmp_path):
    model, tokenizer, folder = base
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe(method="full", layers=1, steps=3, batch_size=2, warmup_steps=1, learning_rate=1e-2,
                    precision="bfloat16")
    finetune(model, tokenizer, EXAMPLES, recipe, tmp_path / "full")
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers.2." in k for k in changed)


def test_mixed_precision_training_is_close_to_float32(base, tmp_path):
    model, tokenizer, folder = base
    recipe = Recipe(rank=4, alpha=8, layers=2, steps=2, batch_size=4, warmup_steps=1)
    fp32 = finetune(model, tokenizer, EXAMPLES, recipe, tmp_path / "a").losses
    model = AutoModelForCausalLM.from_pretrained(folder)
    bf16 = finetune(model, tokenizer, EXAMPLES, recipe.replace(precision="bfloat16"), tmp_path / "b").losses
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)


@pytest.mark.parametrize("change, message", [(dict(layers=9), "has 3 layers"), (dict(precision="fp8"), "precision"),
                                             (dict(method="prefix"), "Unknown finetuning method"),
                                             (dict(loss_on="everything"), "Unknown loss_on")])
def test_bad_recipes_are_refused_with_a_message(base, tmp_path, change, message):
    model, tokenizer, folder = base
    with pytest.raises(DeltaAtlasError, match=message):
        finetune(model, tokenizer, EXAMPLES, Recipe(**change), tmp_path / "x")


def test_batches_cover_every_example_each_epoch():
    seen = [i for batch in batch_indices(5, 2, 5, seed=1) for i in batch]   # 10 draws = 2 epochs of 5
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))


def test_every_layer_training_works_on_any_layout(base, tmp_path):
    """layers=0 never looks for ``model.model.layers``: a GPT-2 layout (``transformer.h``) still finetunes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer, _ = base
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128))
    recipe = Recipe(rank=2, alpha=4, target_modules=("c_attn",), steps=2, batch_size=2, warmup_steps=1)
    assert len(finetune(gpt2, tokenizer, EXAMPLES, recipe, tmp_path / "gpt2").losses) == 2
    with pytest.raises(DeltaAtlasError, match="transformer layers"):
        finetune(GPT2LMHeadModel(gpt2.config), tokenizer, EXAMPLES, recipe.replace(layers=1), tmp_path / "x")


def test_loss_on_text_labels_the_instruction_input_and_response_but_never_the_template(base):
    _, tokenizer, _ = base
    example = Example("Summarise the clause.", "Rent is due monthly.", input="The tenant shall pay rent.")
    (ids, labels), = encode([example], tokenizer, 256, loss_on="text")
    (same_ids, response_only), = encode([example], tokenizer, 256)
    assert ids == same_ids
    labelled = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100]).replace(" ", "")
    assert labelled.startswith("Summarisetheclause.Thetenantshallpayrent.Rentisduemonthly.")
    assert "Instruction" not in labelled and "Response" not in labelled and "Below" not in labelled
    assert [label for label in labels if label != -100][-len([x for x in response_only if x != -100]):] == \
        [x for x in response_only if x != -100]           # the response part is labelled exactly as before


def test_loss_on_prompt_labels_the_instruction_and_input_alone(base):
    _, tokenizer, _ = base
    example = Example("Summarise the clause.", "Rent is due monthly.", input="The tenant shall pay rent.")
    (ids, labels), = encode([example], tokenizer, 256, loss_on="prompt")
    (_, text_labels), = encode([example], tokenizer, 256, loss_on="text")
    labelled = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100]).replace(" ", "")
    assert labelled == "Summarisetheclause.Thetenantshallpayrent."
    response_start = len(tokenizer(example.prompt())["input_ids"])
    assert labels[:response_start] == text_labels[:response_start] and set(labels[response_start:]) == {-100}

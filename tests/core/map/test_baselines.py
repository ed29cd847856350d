"""The paper's baselines on the tiny pool: ΔW is what PEFT applies, Gram cosines equal brute force, masks keep 1%,
a model compared with itself has cosine 1 under every baseline, and adapters never leak between models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import core.map.baselines as baselines
from core.errors import DeltaAtlasError
from core.map.baselines import Tensors, compute_baselines, lora_delta, read_lora
from tests.conftest import write_catalog


def merged_delta(base_dir, adapter_dir, module: str) -> torch.Tensor:
    """W_merged - W_base as PEFT itself computes it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = load_file(base_dir / "model.safetensors")[module + ".weight"]
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).merge_and_unload()
    return merged.state_dict()[module + ".weight"] - base


def test_lora_delta_is_scaling_b_a(tiny_pool):
    module = "model.layers.1.self_attn.q_proj"
    delta = lora_delta(tiny_pool["loras"]["lora_0"], module)
    A, B, scaling, _ = read_lora(tiny_pool["loras"]["lora_0"])[module]
    config = json.loads((tiny_pool["loras"]["lora_0"] / "adapter_config.json").read_text())
    assert scaling == config["lora_alpha"] / config["r"] and delta.shape == (64, 64)
    assert torch.allclose(delta, scaling * B @ A)
    assert torch.allclose(delta, merged_delta(tiny_pool["base"], tiny_pool["loras"]["lora_0"], module), atol=1e-5)
    with pytest.raises(DeltaAtlasError, match="does not change"):
        lora_delta(tiny_pool["loras"]["lora_0"], "model.layers.0.mlp.down_proj")


def flat_deltas(tiny_pool, names) -> np.ndarray:
    """Brute force: every model's ΔW over the LoRA-targeted modules, concatenated: [n, total]."""
    base = Tensors(tiny_pool["base"])
    modules = baselines.pool_modules([baselines._Delta(tiny_pool["loras"]["lora_0"], "lora", base)], base)
    rows = []
    for name in names:
        parts = []
        for module in modules:
            if name.startswith("lora"):
                parts.append(lora_delta(tiny_pool["loras"][name], module).reshape(-1))
            else:
                full = load_file(tiny_pool["fulls"][name] / "model.safetensors")[module + ".weight"]
                parts.append((full - base.full(module + ".weight")).reshape(-1))
        rows.append(torch.cat(parts).numpy())
    return np.stack(rows)


def test_weight_and_mask_cosines_match_brute_force(tiny_pool, monkeypatch):
    monkeypatch.setattr(baselines, "CHUNK_ELEMENTS", 3000)             # many row blocks per module
    names = ["lora_0", "lora_1", "lora_2", "full_0", "full_1"]
    result = compute_baselines(tiny_pool["catalog"], names, which=("weights", "mask"))
    X = flat_deltas(tiny_pool, names)                                   # [5, total]
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert np.allclose(result["weights"].matrix, unit @ unit.T, atol=1e-5)
    assert result["weights"].dim == X.shape[1] == result["mask"].dim
    keep = round(0.01 * X.shape[1])
    masks = np.stack([np.abs(x) >= np.sort(np.abs(x))[-keep] for x in X]).astype(float)
    assert np.allclose(masks.sum(1), keep)
    assert list(result["mask"].details["entries_kept"].values()) == [keep] * 5
    expected = (masks @ masks.T) / keep
    assert np.allclose(result["mask"].matrix, expected, atol=1e-6)
    assert result["mask"].matrix[0, 1] < 0.5                          # independent random adapters share little


def test_same_model_twice_has_cosine_one_and_nothing_leaks(tiny_pool, tmp_path):
    root = tiny_pool["root"]
    rows = [{"name": n, "source": str(root / s), "kind": k, "base": str(tiny_pool["base"])}
            for n, s, k in [("a", "lora_0", "lora"), ("b", "lora_1", "lora"), ("a_again", "lora_0", "lora"),
                            ("f", "full_0", "full"), ("f_again", "full_0", "auto")]]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    events = []
    result = compute_baselines(catalog, max_new_tokens=8, progress=events.append)
    assert set(result) == {"weights", "mask", "outputs"}
    for sim in result.values():
        M = sim.matrix
        assert M.shape == (5, 5) and np.allclose(M, M.T) and np.allclose(np.diag(M), 1.0)
        assert M[0, 2] == pytest.approx(1.0, abs=1e-5) and M[3, 4] == pytest.approx(1.0, abs=1e-5)
    outputs = result["outputs"]
    assert outputs.dim == 64 and outputs.details["vectors"].shape == (5, 64)
    assert not np.allclose(outputs.details["vectors"][0], outputs.details["vectors"][1])   # the adapters differ
    assert {e.stage for e in events} >= {"mask", "weights", "outputs"} and events[-1].done == events[-1].total


def test_refuses_pools_it_cannot_compare(tiny_pool, tmp_path):
    root = tiny_pool["root"]
    other = root / "lora_1"
    rows = [{"name": "a", "source": str(root / "lora_0"), "kind": "lora", "base": str(tiny_pool["base"])},
            {"name": "b", "source": str(other), "kind": "lora", "base": str(root / "full_0")}]
    with pytest.raises(DeltaAtlasError, match="2 bases"):
        compute_baselines(write_catalog(tmp_path / "two.csv", rows), which=("weights",))
    with pytest.raises(DeltaAtlasError, match="top_fraction"):
        compute_baselines(tiny_pool["catalog"], ["lora_0", "lora_1"], which=("mask",), top_fraction=0)
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(DeltaAtlasError, match="IA3 adapter"):
        read_lora(ia3)


def test_embed_answers_means_the_answer_tokens_only(tiny_pool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.map.baselines import embed_answers

    base = AutoModelForCausalLM.from_pretrained(tiny_pool["base"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_pool["base"])
    answer = tokenizer("Two plus three", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = base(torch.tensor([[tokenizer.bos_token_id, *answer]]), output_hidden_states=True).hidden_states[-1]
    expected = hidden[0, 1:].mean(0).numpy()                            # BOS left out
    assert np.allclose(embed_answers(base, tokenizer, [answer, []]), expected, atol=1e-5)   # empty answer left out
    assert np.allclose(embed_answers(base, tokenizer, [answer, answer[:1]]),
                       (expected + hidden[0, 1].numpy()) / 2, atol=1e-4)
    assert not embed_answers(base, tokenizer, [[]]).any()

"""Stacked LoRA: equal to PEFT adapter by adapter (ranks, targets, rsLoRA, rank/alpha patterns), equal to the
reference loop, hooks gone after the block (even after an error), and whatever it cannot model left to PEFT."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import core.engine.embed as engine
from core.engine.activations import AdapterHost, last_token_states, reference_delta, repeated_probe_states
from core.engine.loading import load_model
from core.engine.probes import DEFAULT_PROBES
from core.engine.stacked_lora import NotStackableError, read_lora, run_stacked, stacked_lora, unstackable_reason
from core.errors import IncompatibleModelError
from tests.conftest import make_base, make_lora


def edit_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of adapter ``src`` with its adapter_config.json changed (the weights stay the same)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return dst


def make_peft_lora(base_dir: Path, out_dir: Path, seed: int, **config) -> Path:
    """A LoRA adapter with any LoraConfig options (rank_pattern, lora_bias...) and random non-zero weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="peft")                # lora_bias on a layer without a bias
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                               LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", **config))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.5)
        model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def hooks_of(model) -> dict[str, list]:
    return {name: list(m._forward_hooks.values()) for name, m in model.named_modules() if m._forward_hooks}


@pytest.fixture(scope="module")
def base(tiny_pool):
    return load_model(tiny_pool["base"], "cpu", torch.float32)


@pytest.fixture(scope="module")
def zoo(tiny_pool, tmp_path_factory) -> dict[str, Path]:
    """Plain LoRA adapters of different ranks, targets and scalings."""
    root, base_dir = tmp_path_factory.mktemp("stacked"), tiny_pool["base"]
    adapters = {
        "r2_qv": make_lora(base_dir, root / "r2_qv", seed=11, rank=2, targets=("q_proj", "v_proj")),
        "r8_mlp": make_lora(base_dir, root / "r8_mlp", seed=12, rank=8, targets=("gate_proj", "up_proj", "down_proj")),
        "r4_all": make_lora(base_dir, root / "r4_all", seed=13, rank=4,
                            targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        "patterns": make_peft_lora(base_dir, root / "patterns", seed=14, r=4, lora_alpha=8,
                                   target_modules=["q_proj", "v_proj", "down_proj"],
                                   rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 6},
                                   alpha_pattern={"q_proj": 3, "down_proj": 20}),
    }
    adapters["rslora"] = edit_config(adapters["r2_qv"], root / "rslora", use_rslora=True, lora_alpha=3)
    return adapters


def peft_states(model, tokenizer, base_dir: Path, adapters: dict[str, Path]) -> dict[str, torch.Tensor]:
    """PEFT's states [P, d], one adapter at a time (set_adapter), the base stripped clean afterwards."""
    host = AdapterHost(model, base_dir)
    states, errors = host.run(adapters, tokenizer, DEFAULT_PROBES, mixed=False)
    assert host.close() and not errors, errors
    return states


def test_stacked_equals_peft_for_every_adapter(tiny_pool, base, zoo):
    model, tokenizer = base
    assert all(unstackable_reason(json.loads((p / "adapter_config.json").read_text())) is None for p in zoo.values())
    states, errors, rest = run_stacked(model, tiny_pool["base"], zoo, tokenizer, DEFAULT_PROBES)
    assert not errors and not rest and list(states) == list(zoo)
    expected = peft_states(model, tokenizer, tiny_pool["base"], zoo)
    for name in zoo:
        assert states[name].shape == (len(DEFAULT_PROBES), 64)
        torch.testing.assert_close(states[name], expected[name], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(states["r2_qv"], states["rslora"], atol=1e-3)      # rsLoRA scaling did act


def test_stacked_equals_the_reference_loop(tiny_pool, base, zoo):
    model, tokenizer = base
    base_mean = last_token_states(model, tokenizer, DEFAULT_PROBES).mean(dim=0)
    picked = {name: zoo[name] for name in ("r8_mlp", "patterns")}
    states, _, _ = run_stacked(model, tiny_pool["base"], picked, tokenizer, DEFAULT_PROBES)
    for name, path in picked.items():
        vector = (states[name].mean(dim=0) - base_mean).numpy()
        reference = reference_delta(tiny_pool["base"], path, "lora", DEFAULT_PROBES)
        assert float(np.dot(vector, reference) / (np.linalg.norm(vector) * np.linalg.norm(reference))) >= 0.99999


def test_rows_are_grouped_per_adapter(base, zoo):
    """x may hold several rows per adapter: [K*m, T, d], rows k*m..(k+1)*m-1 belong to adapter k."""
    model, tokenizer = base
    weights = [read_lora(zoo[name], model) for name in ("r2_qv", "r8_mlp")]
    with stacked_lora(model, weights):
        once = repeated_probe_states(model, tokenizer, DEFAULT_PROBES[:2], 2)                  # [2, P, d]
        twice = repeated_probe_states(model, tokenizer, DEFAULT_PROBES[:2], 4)                 # [4, P, d]
    torch.testing.assert_close(twice[0::2], once, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(twice[1::2], once, atol=1e-5, rtol=1e-5)


def test_the_base_is_untouched_after_the_block_even_after_an_error(base, zoo):
    model, tokenizer = base
    modules = dict(model.named_modules())
    before = last_token_states(model, tokenizer, DEFAULT_PROBES)      # transformers installs its own hooks here
    hooks = hooks_of(model)
    weights = [read_lora(path, model) for path in zoo.values()]
    with pytest.raises(RuntimeError, match="boom"):
        with stacked_lora(model, weights):
            assert hooks_of(model) != hooks
            raise RuntimeError("boom")
    assert hooks_of(model) == hooks
    with stacked_lora(model, weights):
        repeated_probe_states(model, tokenizer, DEFAULT_PROBES[:1], len(weights))
    assert hooks_of(model) == hooks
    assert all(modules[name] is module for name, module in model.named_modules()) and len(modules) == len(
        dict(model.named_modules()))
    torch.testing.assert_close(last_token_states(model, tokenizer, DEFAULT_PROBES), before, atol=0, rtol=0)


def test_what_it_cannot_model_is_left_to_peft_and_misfits_fail(tiny_pool, base, zoo, tmp_path):
    model, tokenizer = base
    dora = edit_config(zoo["r2_qv"], tmp_path / "dora", use_dora=True)
    biased = make_peft_lora(tiny_pool["base"], tmp_path / "biased", seed=15, r=2, target_modules=["q_proj"],
                            lora_bias=True)
    other_base = make_base(tmp_path / "other_base", seed=1, hidden_size=32, intermediate_size=64)
    other = make_lora(other_base, tmp_path / "other", seed=5)
    narrowed = edit_config(zoo["r2_qv"], tmp_path / "narrowed", target_modules=["q_proj"])   # v_proj weights: unused
    for path, reason in ((dora, "use_dora"), (biased, "lora_bias"), (narrowed, "target_modules miss")):
        with pytest.raises(NotStackableError, match=reason):
            read_lora(path, model)
    states, errors, rest = run_stacked(model, tiny_pool["base"], {"ok": zoo["r2_qv"], "dora": dora, "biased": biased,
                                                                   "other": other}, tokenizer, DEFAULT_PROBES)
    assert set(states) == {"ok"} and set(rest) == {"dora", "biased"} and set(errors) == {"other"}
    assert isinstance(errors["other"], IncompatibleModelError)
    assert not any(m._forward_hooks for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_engine_stacks_plain_lora_without_peft_and_routes_the_rest(tiny_pool, zoo, tmp_path, monkeypatch):
    biased = make_peft_lora(tiny_pool["base"], tmp_path / "biased", seed=16, r=2, target_modules=["q_proj", "up_proj"],
                            lora_bias=True)
    hosted = []
    real_run = AdapterHost.run
    monkeypatch.setattr(engine.AdapterHost, "run", lambda self, adapters, *a, **k: hosted.extend(adapters) or
                        real_run(self, adapters, *a, **k))
    adapters = {"r2_qv": zoo["r2_qv"], "biased": biased, "patterns": zoo["patterns"]}
    vectors = engine.embed_adapters(tiny_pool["base"], adapters, cache_dir=tmp_path / "cache")
    assert hosted == ["biased"]                                                        # only it went through PEFT
    for name, path in adapters.items():
        reference = reference_delta(tiny_pool["base"], path, "lora", DEFAULT_PROBES)
        vector = vectors[name]
        assert float(np.dot(vector, reference) / (np.linalg.norm(vector) * np.linalg.norm(reference))) >= 0.99999

"""Last-token states: batching and padding change nothing, mixed-adapter batches equal one adapter at a time,
and adapters never leak into the base."""
from __future__ import annotations

import pytest
import torch

from core.engine.activations import (
    AdapterHost,
    _forward,
    _reference_states,
    float32_residual,
    last_token_states,
    reference_delta,
)
from core.engine.loading import load_model
from core.engine.probes import DEFAULT_PROBES
from core.errors import ComputationError

LONG = "Below is an instruction. " * 12 + "Write a long response that appropriately completes the request."


@pytest.fixture(scope="module")
def base(tiny_pool):
    model, tokenizer = load_model(tiny_pool["base"], "cpu", torch.float32)
    return model, tokenizer


def test_batched_equals_one_probe_at_a_time(base):
    model, tokenizer = base
    batched = last_token_states(model, tokenizer, DEFAULT_PROBES, batch_size=5)           # one padded batch
    assert batched.shape == (5, model.config.hidden_size) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, _reference_states(model, tokenizer, DEFAULT_PROBES, -1), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_probe(base):
    model, tokenizer = base
    alone = last_token_states(model, tokenizer, ["Input."])
    padded = last_token_states(model, tokenizer, ["Input.", LONG, DEFAULT_PROBES[0]])
    assert len(tokenizer(LONG)["input_ids"]) > 3 * len(tokenizer("Input.")["input_ids"])
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_final_layer_is_after_the_norm_and_layer_is_a_parameter(base):
    model, tokenizer = base
    with torch.no_grad():
        encoded = tokenizer(DEFAULT_PROBES[0], return_tensors="pt")
        normed = model.model(**encoded).last_hidden_state[0, -1]
    states = last_token_states(model, tokenizer, DEFAULT_PROBES[:1])
    torch.testing.assert_close(states[0], normed, atol=1e-5, rtol=1e-5)
    first = last_token_states(model, tokenizer, DEFAULT_PROBES, layer=1)
    torch.testing.assert_close(first, _reference_states(model, tokenizer, DEFAULT_PROBES, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, last_token_states(model, tokenizer, DEFAULT_PROBES))
    with pytest.raises(ComputationError, match="Layer 7 does not exist"):
        last_token_states(model, tokenizer, DEFAULT_PROBES, layer=7)


def test_mixed_adapter_batch_equals_one_adapter_at_a_time(tiny_pool, base):
    model, tokenizer = base
    loras = tiny_pool["loras"]
    host = AdapterHost(model, tiny_pool["base"])
    mixed, errors = host.run(dict(loras), tokenizer, DEFAULT_PROBES, mixed=True)
    single = {}
    for name, path in loras.items():
        states, _ = host.run({name: path}, tokenizer, DEFAULT_PROBES, mixed=False)
        single.update(states)
    assert host.close() and not errors
    for name in loras:
        torch.testing.assert_close(mixed[name], single[name], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed["lora_0"], mixed["lora_1"], atol=1e-3)


def test_adapters_do_not_leak_into_the_base(tiny_pool, base):
    model, tokenizer = base
    before = last_token_states(model, tokenizer, DEFAULT_PROBES)
    host = AdapterHost(model, tiny_pool["base"])
    states, _ = host.run(dict(tiny_pool["loras"]), tokenizer, DEFAULT_PROBES)
    assert not torch.allclose(states["lora_0"], before, atol=1e-3)                      # the adapter did act
    assert host.close()
    assert host.base is model and not any("lora" in name for name, _ in model.named_modules())
    torch.testing.assert_close(last_token_states(model, tokenizer, DEFAULT_PROBES), before, atol=0, rtol=0)


def test_a_failing_adapter_does_not_stop_the_batch(tiny_pool, base, tmp_path):
    model, tokenizer = base
    host = AdapterHost(model, tiny_pool["base"])
    states, errors = host.run({"bad": tmp_path / "missing", "good": tiny_pool["loras"]["lora_2"]}, tokenizer,
                              DEFAULT_PROBES)
    assert host.close() and set(states) == {"good"} and set(errors) == {"bad"}


def test_reference_delta_of_a_lora_is_nonzero_and_of_the_base_zero(tiny_pool):
    delta = reference_delta(tiny_pool["base"], tiny_pool["loras"]["lora_0"], "lora", DEFAULT_PROBES)
    assert delta.shape == (64,) and abs(delta).max() > 1e-2
    assert abs(reference_delta(tiny_pool["base"], tiny_pool["base"], "full", DEFAULT_PROBES)).max() == 0


def test_half_precision_keeps_a_float32_residual_and_removes_its_hook(tmp_path):
    from tests.conftest import make_base

    path = make_base(tmp_path / "deep", num_hidden_layers=8)
    exact, tokenizer = load_model(path, "cpu", torch.float32)
    half, _ = load_model(path, "cpu", torch.bfloat16)
    encoded = tokenizer(list(DEFAULT_PROBES), return_tensors="pt", padding=True)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]

    def final(model, wrapped: bool) -> torch.Tensor:                       # [P, d]
        with torch.no_grad():
            out = _forward(model, ids, mask, {}) if wrapped else model(input_ids=ids, attention_mask=mask,
                                                                     output_hidden_states=True)
        return out.hidden_states[-1][:, -1]

    target = final(exact, True)
    residual, plain = final(half, True), final(half, False)
    assert residual.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert (residual - target).norm() < (plain.float() - target).norm()
    with float32_residual(exact):                                           # float32 weights: nothing changes
        assert not exact.get_input_embeddings()._forward_hooks
    assert not half.get_input_embeddings()._forward_hooks                   # the hook removed itself

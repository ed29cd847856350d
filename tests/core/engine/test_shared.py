"""Shared bases: loaded once, lent to one borrower at a time, never handed on changed; and the engine, task search
and merge give the same numbers with a shared base as with their own load."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from core.engine.embed import embed_catalog
from core.engine.shared import SharedModels, leftover
from core.reuse.train import Example

EXAMPLES = [Example("Add two and three.", "Five."), Example("Add one and one.", "Two."),
            Example("Add four and four.", "Eight."), Example("Add two and two.", "Four.")]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))


def test_a_base_is_loaded_once_and_lent_read_only(tiny_pool):
    models = SharedModels()
    with models.lend(tiny_pool["base"], "cpu", torch.float32) as (first, tokenizer):
        assert tokenizer is not None and leftover(first) == ""
    with models.lend(tiny_pool["base"], "cpu", torch.float32) as (second, _):
        assert second is first
    assert models.loads == 1
    with models.lend(tiny_pool["base"], "cpu", torch.bfloat16) as (other, _):   # another dtype is another model
        assert other is not first and other.dtype == torch.bfloat16
    assert models.loads == 2


def test_a_model_left_changed_is_dropped_not_lent_again(tiny_pool):
    models = SharedModels()
    with models.lend(tiny_pool["base"], "cpu", torch.float32) as (model, _):
        handle = model.model.layers[0].register_forward_hook(lambda *args: None)   # a borrower forgets its hook
    assert models.loaded() == []
    handle.remove()
    with models.lend(tiny_pool["base"], "cpu", torch.float32) as (fresh, _):
        assert fresh is not model and leftover(fresh) == ""
    assert models.loads == 2


def test_private_copy_is_trainable_and_leaves_the_shared_one_alone(tiny_pool):
    models = SharedModels()
    copy, _ = models.private_copy(tiny_pool["base"], "cpu", torch.float32)
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert all(p.requires_grad for p in copy.parameters())
    with models.lend(tiny_pool["base"], "cpu", torch.float32) as (shared, _):
        assert not torch.equal(next(shared.parameters()), next(copy.parameters()))
        assert leftover(shared) == ""
    assert models.loads == 1


def test_borrowers_of_one_base_take_turns(tiny_pool):
    models = SharedModels()
    inside, overlaps = [], []

    def borrow():
        with models.lend(tiny_pool["base"], "cpu", torch.float32):
            if inside:
                overlaps.append(True)
            inside.append(1)
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=borrow) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert overlaps == [] and models.loads == 1


def test_least_recently_used_base_is_dropped(tiny_pool):
    models = SharedModels(max_models=1)
    with models.lend(tiny_pool["base"], "cpu", torch.float32):
        pass
    with models.lend(tiny_pool["base"], "cpu", torch.bfloat16):
        pass
    assert [key[2] for key in models.loaded()] == ["torch.bfloat16"]


def test_engine_with_a_shared_base_matches_its_own_load(tiny_pool, tmp_path):
    own = embed_catalog(tiny_pool["catalog"], cache_dir=tmp_path / "a")
    models = SharedModels()
    shared = embed_catalog(tiny_pool["catalog"], cache_dir=tmp_path / "b", models=models)
    again = embed_catalog(tiny_pool["catalog"], cache_dir=tmp_path / "c", models=models)
    for table in (shared.table, again.table):
        assert list(table["name"]) == list(own.table["name"])
        assert np.allclose(np.stack(table["vector"]), np.stack(own.table["vector"]), atol=1e-6)
    assert models.loads == 1 and len(models.loaded()) == 1          # the base stays in memory, unchanged
    with models.lend(tiny_pool["base"], "cpu", torch.float32) as (model, _):
        assert leftover(model) == ""


def test_task_search_and_merge_with_a_shared_base(tiny_pool, tmp_path):
    from core.reuse.merge import merge_adapters
    from core.reuse.task import find_models

    models = SharedModels()
    kwargs = dict(steps=2)
    own = find_models(EXAMPLES, tiny_pool["catalog"], **kwargs)
    shared = find_models(EXAMPLES, tiny_pool["catalog"], models=models, **kwargs)
    assert np.allclose(own.vector, shared.vector, atol=1e-5)
    merged_own = merge_adapters(tiny_pool["catalog"], ["lora_0", "lora_1"], "linear", [0.5, 0.5], EXAMPLES,
                                tmp_path / "m1")
    merged = merge_adapters(tiny_pool["catalog"], ["lora_0", "lora_1"], "linear", [0.5, 0.5], EXAMPLES,
                            tmp_path / "m2", models=models)
    assert merged.losses == pytest.approx(merged_own.losses, rel=1e-5)
    assert np.allclose(merged.measured_vector, merged_own.measured_vector, atol=1e-5)
    assert models.loads == 1
    with models.lend(tiny_pool["base"], "cpu", torch.float32) as (model, _):
        assert leftover(model) == ""

"""embed_catalog / embed_adapters: equal to the plain reference loop, cached, isolated, and robust to bad models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import core.engine.embed as engine
from core.engine.activations import reference_delta
from core.engine.embed import embed_adapters, embed_catalog
from core.engine.probes import DEFAULT_PROBES
from core.errors import CatalogError, IncompatibleModelError
from core.pool.vectors import matrix
from core.zoo.tinylm import train_tokenizer
from tests.conftest import make_base, make_lora, write_catalog


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def vector_of(result, name: str) -> np.ndarray:
    return result.table.set_index("name").loc[name, "vector"]


def make_ia3(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """An IA3 adapter with random scales: a PEFT type that mixed-adapter batches do not support."""
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                                     task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="module")
def first_run(tiny_pool, tmp_path_factory):
    events = []
    cache_dir = tmp_path_factory.mktemp("engine_cache")
    result = embed_catalog(tiny_pool["catalog"], cache_dir=cache_dir, adapter_batch=3, progress=events.append)
    return {"result": result, "cache": cache_dir, "events": events}


@pytest.fixture(scope="module")
def bad(tiny_pool, tmp_path_factory) -> dict:
    """A catalog mixing good models with every kind of broken one; names map to the expected reason."""
    root = tmp_path_factory.mktemp("bad_pool")
    base, loras, fulls = tiny_pool["base"], tiny_pool["loras"], tiny_pool["fulls"]
    other_base = make_base(root / "other_base", seed=1, hidden_size=32, intermediate_size=64)
    make_lora(other_base, root / "other_lora", seed=5)
    corrupt = shutil.copytree(loras["lora_1"], root / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes((corrupt / "adapter_model.safetensors").read_bytes()[:300])
    nan = shutil.copytree(loras["lora_2"], root / "nan")
    weights = load_file(nan / "adapter_model.safetensors")
    save_file({k: v.fill_(float("nan")) if "lora_B" in k else v for k, v in weights.items()},
              nan / "adapter_model.safetensors", metadata={"format": "pt"})
    arch = shutil.copytree(fulls["full_0"], root / "other_arch")
    config = json.loads((arch / "config.json").read_text())
    (arch / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    tok = shutil.copytree(fulls["full_1"], root / "other_tok")
    train_tokenizer(["Entirely unrelated sentences go here.", "Zebras quietly juggle."] * 40, 320, tok)
    same = shutil.copytree(base, root / "same_as_base")                # a "finetune" that is its base
    zero = shutil.copytree(loras["lora_3"], root / "zero")
    weights = load_file(zero / "adapter_model.safetensors")
    save_file({k: v.zero_() if "lora_A" in k else v for k, v in weights.items()}, zero / "adapter_model.safetensors",
              metadata={"format": "pt"})
    pickled = shutil.copytree(loras["lora_3"], root / "pickled")
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    expected = {
        "missing": ("./nope", "lora", "does not exist"),
        "hub": ("nobody-here/no-such-adapter", "lora", "cannot be fetched"),
        "other_base": ("./other_lora", "lora", "does not fit base"),
        "corrupt": ("./corrupt", "auto", "corrupt or truncated"),
        "nan": ("./nan", "lora", "NaN"),
        "other_hidden": ("./other_base", "full", "hidden size is 32"),
        "other_arch": ("./other_arch", "full", "architecture is ['GPT2LMHeadModel']"),
        "other_tok": ("./other_tok", "full", "tokenizer differs"),
        "pickled": ("./pickled", "lora", "pickle weights"),
        "wrong_kind": (str(loras["lora_0"]), "full", "declared 'full'"),
        "same_as_base": ("./same_as_base", "full", "changes nothing at the probes"),
        "zero": ("./zero", "lora", "changes nothing: its weights are all zero"),
    }
    del same
    rows = [{"name": "good_lora", "source": str(loras["lora_0"]), "kind": "lora", "base": str(base), "note": "ok"}]
    rows += [{"name": n, "source": src, "kind": kind, "base": str(base), "note": "bad"}
             for n, (src, kind, _) in expected.items()]
    rows += [{"name": "good_full", "source": str(fulls["full_0"]), "kind": "auto", "base": str(base), "note": "ok"}]
    return {"root": root, "catalog": write_catalog(root / "catalog.csv", rows), "expected": expected,
            "other_base": other_base, "other_lora": root / "other_lora"}


def test_engine_equals_the_reference_loop(tiny_pool, first_run):
    result = first_run["result"]
    assert not result.failures and sorted(result.computed) == sorted(result.table["name"]) and not result.cached
    for name, path in {**tiny_pool["loras"], **tiny_pool["fulls"]}.items():
        kind = "lora" if name.startswith("lora") else "full"
        assert cosine(vector_of(result, name), reference_delta(tiny_pool["base"], path, kind, DEFAULT_PROBES)) >= 0.99999


def test_table_is_in_catalog_order_with_labels(tiny_pool, first_run):
    table = first_run["result"].table
    assert list(table["name"]) == ["lora_0", "lora_1", "lora_2", "lora_3", "full_0", "full_1"]
    assert list(table.columns) == ["name", "vector", "domain"] and list(table["domain"]) == list("ababab")
    assert matrix(table).shape == (6, 64) and matrix(table).dtype == np.float32
    meta = first_run["result"].metadata
    assert meta["dtype"] == "float32" and meta["device"] == "cpu" and meta["layer"] == -1 and meta["engine_version"]
    assert meta["bases"] == [str(tiny_pool["base"])]


def test_progress_names_the_running_model_and_what_is_left(first_run):
    events = first_run["events"]
    assert {e.stage for e in events} == {"base", "adapters", "full"}
    adapters = [e for e in events if e.stage == "adapters"]
    assert adapters[0].done == 0 and adapters[0].total == 4 and "lora_0" in adapters[0].item
    assert adapters[-1].done == adapters[-1].total == 4
    assert [e.item for e in events if e.stage == "full" and e.done < e.total] == ["full_0", "full_1"]


def test_second_run_is_fully_cached_and_loads_no_model(tiny_pool, first_run, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded on a fully cached run")

    monkeypatch.setattr(engine, "load_model", no_load)
    monkeypatch.setattr(engine, "load_tokenizer", no_load)
    again = embed_catalog(tiny_pool["catalog"], cache_dir=first_run["cache"])
    assert again.computed == [] and len(again.cached) == 6 and not again.failures
    np.testing.assert_array_equal(matrix(again.table), matrix(first_run["result"].table))


def test_adding_one_model_computes_one(tiny_pool, first_run, tmp_path):
    new = make_lora(tiny_pool["base"], tmp_path / "new_lora", seed=42)
    rows = [{"name": f"lora_{i}", "source": str(p), "kind": "lora", "base": str(tiny_pool["base"])}
            for i, p in enumerate(tiny_pool["loras"].values())]
    rows.append({"name": "new", "source": str(new), "kind": "lora", "base": str(tiny_pool["base"])})
    result = embed_catalog(write_catalog(tmp_path / "c.csv", rows), cache_dir=first_run["cache"])
    assert result.computed == ["new"] and len(result.cached) == 4
    assert cosine(vector_of(result, "new"), reference_delta(tiny_pool["base"], new, "lora", DEFAULT_PROBES)) >= 0.99999


def test_cache_survives_a_crash_and_force_recomputes(tiny_pool, first_run, tmp_path):
    cache_dir = shutil.copytree(first_run["cache"], tmp_path / "cache")
    entries = {json.loads(p.read_text())["info"].get("name"): p for p in (cache_dir / "vectors").rglob("*.json")}
    truncated = entries["lora_2"]
    truncated.write_text(truncated.read_text()[:100])                        # a torn entry
    (truncated.parent / f".{entries['full_1'].name}.999.tmp").write_text("{")  # a killed writer's leftover
    result = embed_catalog(tiny_pool["catalog"], cache_dir=cache_dir)
    assert result.computed == ["lora_2"] and len(result.cached) == 5
    np.testing.assert_allclose(vector_of(result, "lora_2"), vector_of(first_run["result"], "lora_2"), atol=1e-5)
    forced = embed_catalog(tiny_pool["catalog"], cache_dir=cache_dir, force=True)
    assert sorted(forced.computed) == sorted([*tiny_pool["loras"], *tiny_pool["fulls"]]) and not forced.cached


def test_cache_key_changes_with_probes_and_layer(tiny_pool, first_run):
    other = embed_catalog(tiny_pool["catalog"], cache_dir=first_run["cache"], probes=DEFAULT_PROBES[:2], layer=1)
    assert len(other.computed) == 6 and not other.cached
    name, path = "lora_1", tiny_pool["loras"]["lora_1"]
    assert cosine(vector_of(other, name), reference_delta(tiny_pool["base"], path, "lora", DEFAULT_PROBES[:2], 1)) >= 0.99999


def test_adapters_do_not_leak_between_batches(tiny_pool, tmp_path):
    a, b = tiny_pool["loras"]["lora_0"], tiny_pool["loras"]["lora_1"]
    alone = embed_adapters(tiny_pool["base"], {"A": a}, cache_dir=tmp_path / "one")
    together = embed_adapters(tiny_pool["base"], {"B": b, "A": a}, cache_dir=tmp_path / "two")
    np.testing.assert_allclose(together["A"], alone["A"], atol=1e-5)
    assert cosine(together["A"], together["B"]) < 0.999


def test_embed_adapters_raises_the_models_own_error(tiny_pool, bad, tmp_path):
    with pytest.raises(IncompatibleModelError, match="does not fit base"):
        embed_adapters(tiny_pool["base"], {"x": bad["other_lora"]}, cache_dir=tmp_path)


def test_every_bad_model_fails_alone_with_its_reason(bad, tmp_path):
    result = embed_catalog(bad["catalog"], cache_dir=tmp_path)
    reasons = {f.name: f.reason for f in result.failures}
    assert set(reasons) == set(bad["expected"])
    for name, (_, _, expected) in bad["expected"].items():
        assert expected in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]
    assert list(result.table["name"]) == ["good_lora", "good_full"]
    assert sorted(result.computed) == ["good_full", "good_lora"]


def test_unmixable_adapter_type_runs_alone_and_does_not_leak(tiny_pool, tmp_path):
    ia3 = make_ia3(tiny_pool["base"], tmp_path / "ia3", seed=3)
    rows = [{"name": "lora_0", "source": str(tiny_pool["loras"]["lora_0"]), "kind": "lora"},
            {"name": "ia3", "source": str(ia3), "kind": "auto"},
            {"name": "lora_1", "source": str(tiny_pool["loras"]["lora_1"]), "kind": "lora"}]
    catalog = write_catalog(tmp_path / "c.csv", [{**r, "base": str(tiny_pool["base"])} for r in rows])
    result = embed_catalog(catalog, cache_dir=tmp_path / "cache")
    assert not result.failures
    for row in rows:
        reference = reference_delta(tiny_pool["base"], Path(row["source"]), "lora", DEFAULT_PROBES)
        assert cosine(vector_of(result, row["name"]), reference) >= 0.99999


def test_two_bases_in_one_catalog(tiny_pool, bad, tmp_path):
    rows = [{"name": "on_tiny", "source": str(tiny_pool["loras"]["lora_3"]), "kind": "lora", "base": str(tiny_pool["base"])},
            {"name": "on_other", "source": str(bad["other_lora"]), "kind": "lora", "base": str(bad["other_base"])}]
    result = embed_catalog(write_catalog(tmp_path / "c.csv", rows), cache_dir=tmp_path / "cache")
    assert not result.failures and list(result.table["name"]) == ["on_tiny", "on_other"]
    for row in rows:
        reference = reference_delta(Path(row["base"]), Path(row["source"]), "lora", DEFAULT_PROBES)
        assert cosine(vector_of(result, row["name"]), reference) >= 0.99999
    assert [len(v) for v in result.table["vector"]] == [64, 32]


def test_a_broken_base_fails_its_models_only(tiny_pool, tmp_path):
    rows = [{"name": "orphan", "source": str(tiny_pool["loras"]["lora_0"]), "kind": "lora", "base": str(tmp_path / "gone")},
            {"name": "fine", "source": str(tiny_pool["loras"]["lora_1"]), "kind": "lora", "base": str(tiny_pool["base"])}]
    result = embed_catalog(write_catalog(tmp_path / "c.csv", rows), cache_dir=tmp_path / "cache")
    assert [f.name for f in result.failures] == ["orphan"] and "its base" in result.failures[0].reason
    assert list(result.table["name"]) == ["fine"]


def test_malformed_catalog_is_refused_before_any_model_loads(tiny_pool, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    rows = [{"name": "ok", "source": str(tiny_pool["loras"]["lora_0"]), "kind": "lora", "base": str(tiny_pool["base"])},
            {"name": "odd", "source": str(tiny_pool["loras"]["lora_1"]), "kind": "qlora", "base": str(tiny_pool["base"])}]
    with pytest.raises(CatalogError, match=r"line 3, column 'kind'"):
        embed_catalog(write_catalog(tmp_path / "c.csv", rows), cache_dir=tmp_path / "cache")


def test_a_base_left_unclean_is_reloaded_before_the_next_batch(tiny_pool, first_run, tmp_path, monkeypatch):
    loads = []
    real_load = engine.load_model
    monkeypatch.setattr(engine, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(engine.AdapterHost, "close", lambda self: False)      # as if an adapter could not be removed
    monkeypatch.setattr(engine, "unstackable_reason", lambda config: "forced")  # PEFT's path, not stacked LoRA
    rows = [{"name": n, "source": str(p), "kind": "lora", "base": str(tiny_pool["base"])}
            for n, p in tiny_pool["loras"].items()]
    result = embed_catalog(write_catalog(tmp_path / "c.csv", rows), cache_dir=tmp_path / "cache", adapter_batch=2)
    assert len(loads) == 2 and not result.failures                              # one load per batch of two
    for name in tiny_pool["loras"]:
        np.testing.assert_allclose(vector_of(result, name), vector_of(first_run["result"], name), atol=1e-5)

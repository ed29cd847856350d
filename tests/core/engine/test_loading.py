"""Sources (local / hub), the safetensors-only policy, kind detection and the fits-its-base checks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.engine.loading import check_adapter_fits, check_full_fits, check_kind, detect_kind, load_model, resolve_source
from core.errors import IncompatibleModelError, ModelSourceError
from core.pool.catalog import parse_source
from core.zoo.tinylm import train_tokenizer
from tests.conftest import make_base, make_lora


@pytest.fixture(scope="module")
def other(tiny_pool, tmp_path_factory) -> dict:
    """A second, smaller base (hidden 32) and an adapter made for it."""
    root = tmp_path_factory.mktemp("other_base")
    base = make_base(root / "base", seed=1, hidden_size=32, intermediate_size=64)
    return {"root": root, "base": base, "lora": make_lora(base, root / "lora", seed=7)}


def pickle_only(src: Path, dst: Path, weights: str, bin_name: str) -> Path:
    """A copy of ``src`` whose weights are a pickle file instead of safetensors."""
    shutil.copytree(src, dst)
    torch.save(load_file(dst / weights), dst / bin_name)
    (dst / weights).unlink()
    return dst


def test_local_folder_resolves(tiny_pool):
    assert resolve_source(parse_source(str(tiny_pool["base"]))) == tiny_pool["base"]


def test_missing_folder_and_file_are_refused(tiny_pool, tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source(parse_source(str(tmp_path / "nope")))
    (tmp_path / "weights.safetensors").write_text("x")
    with pytest.raises(ModelSourceError, match="is a file, not a folder"):
        resolve_source(parse_source(str(tmp_path / "weights.safetensors")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="neither config.json nor adapter_config.json"):
        resolve_source(parse_source(str(tmp_path / "empty")))


def test_hub_id_calls_snapshot_download_with_repo_and_revision(tiny_pool, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        return str(tiny_pool["loras"]["lora_0"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    path = resolve_source(parse_source("someone/some-adapter@v1.2"))
    assert path == tiny_pool["loras"]["lora_0"]
    assert calls[0]["repo_id"] == "someone/some-adapter" and calls[0]["revision"] == "v1.2"
    assert "*.safetensors" in calls[0]["allow_patterns"] and "*.bin" not in calls[0]["allow_patterns"]
    resolve_source(parse_source("someone/some-adapter"), allow_pickle=True)
    assert calls[1]["revision"] is None and "*.bin" in calls[1]["allow_patterns"]


def test_hub_id_fails_cleanly_offline():
    with pytest.raises(ModelSourceError, match=r"Hub model 'nobody-here/no-such-model' cannot be fetched") as info:
        resolve_source(parse_source("nobody-here/no-such-model"))
    assert "\n" not in str(info.value)


def test_pickle_weights_refused_unless_opted_in(tiny_pool, tmp_path):
    full = pickle_only(tiny_pool["base"], tmp_path / "full_bin", "model.safetensors", "pytorch_model.bin")
    lora = pickle_only(tiny_pool["loras"]["lora_0"], tmp_path / "lora_bin", "adapter_model.safetensors",
                       "adapter_model.bin")
    for folder in (full, lora):
        with pytest.raises(ModelSourceError, match="pickle weights.*--allow-pickle"):
            resolve_source(parse_source(str(folder)))
        assert resolve_source(parse_source(str(folder)), allow_pickle=True) == folder
    model, _ = load_model(full, "cpu", torch.float32, allow_pickle=True)
    reference, _ = load_model(tiny_pool["base"], "cpu", torch.float32)
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)
    with pytest.raises(ModelSourceError, match="cannot be loaded"):
        load_model(full, "cpu", torch.float32)        # the loader refuses pickle too, not only resolve_source


def test_corrupt_safetensors_is_refused(tiny_pool, tmp_path):
    broken = shutil.copytree(tiny_pool["loras"]["lora_1"], tmp_path / "broken")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match="adapter_model.safetensors is corrupt or truncated"):
        resolve_source(parse_source(str(broken)))


def test_detect_kind_and_contradicting_catalog_kind(tiny_pool):
    lora, full = tiny_pool["loras"]["lora_0"], tiny_pool["fulls"]["full_0"]
    assert detect_kind(lora) == "lora" and detect_kind(full) == "full"
    assert check_kind(lora, "auto") == "lora" and check_kind(full, "full") == "full"
    with pytest.raises(ModelSourceError, match="declared 'full'.*set kind to lora"):
        check_kind(lora, "full")


def test_remote_code_is_never_run(tiny_pool, tmp_path):
    custom = shutil.copytree(tiny_pool["base"], tmp_path / "custom")
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="my_custom_lm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (custom / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code_ran"
    (custom / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('yes')\n")
    with pytest.raises(ModelSourceError, match="cannot be loaded"):
        load_model(custom, "cpu", torch.float32)
    assert not marker.exists()


def test_adapter_of_another_base_is_refused_naming_both(tiny_pool, other):
    base_model, _ = load_model(tiny_pool["base"], "cpu", torch.float32)
    check_adapter_fits(tiny_pool["loras"]["lora_0"], tiny_pool["base"], base_model)     # fits: no error
    with pytest.raises(IncompatibleModelError) as info:
        check_adapter_fits(other["lora"], tiny_pool["base"], base_model)
    message = str(info.value)
    assert str(other["lora"]) in message and str(tiny_pool["base"]) in message and "made for" in message


def test_adapter_touching_missing_modules_is_refused(tiny_pool, tmp_path):
    base_model, _ = load_model(tiny_pool["base"], "cpu", torch.float32)
    deep = make_lora(make_base(tmp_path / "deep_base", num_hidden_layers=3), tmp_path / "deep_lora", seed=3)
    with pytest.raises(IncompatibleModelError, match="layers.2.*which the base does not have"):
        check_adapter_fits(deep, tiny_pool["base"], base_model)


def test_full_model_checks(tiny_pool, other, tmp_path):
    base = tiny_pool["base"]
    check_full_fits(tiny_pool["fulls"]["full_0"], base)                                 # fits: no error
    with pytest.raises(IncompatibleModelError, match="hidden size is 32 but the base's is 64") as info:
        check_full_fits(other["base"], base)
    assert str(other["base"]) in str(info.value) and str(base) in str(info.value)

    renamed = shutil.copytree(tiny_pool["fulls"]["full_0"], tmp_path / "renamed")
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(IncompatibleModelError, match="architecture is"):
        check_full_fits(renamed, base)

    retokenized = shutil.copytree(tiny_pool["fulls"]["full_0"], tmp_path / "retokenized")
    train_tokenizer(["Completely different words here.", "Nothing like the base at all!"] * 40, 320, retokenized)
    with pytest.raises(IncompatibleModelError, match="tokenizer differs"):
        check_full_fits(retokenized, base)


# -- every file of a model folder is checked where it is opened -------------------------------------------------
def test_a_weights_file_linked_out_of_the_folder_is_refused(tiny_pool, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(tiny_pool["loras"]["lora_0"] / "adapter_model.safetensors", outside / "secret.safetensors")
    folder = tmp_path / "linked"
    folder.mkdir()
    shutil.copy(tiny_pool["loras"]["lora_0"] / "adapter_config.json", folder)
    (folder / "adapter_model.safetensors").symlink_to(outside / "secret.safetensors")
    with pytest.raises(ModelSourceError, match="is a link to .*outside the model folder"):
        resolve_source(parse_source(str(folder)))


def copy_of_adapter(tiny_pool, folder: Path, replace: str | None = None) -> Path:
    """A copy of a tiny adapter folder, with file ``replace`` removed (for the test to put something else there)."""
    shutil.copytree(tiny_pool["loras"]["lora_0"], folder)
    if replace:
        (folder / replace).unlink()
    return folder


def test_a_config_linked_to_a_system_file_is_refused_before_it_is_read(tiny_pool, tmp_path):
    folder = copy_of_adapter(tiny_pool, tmp_path / "config-link", replace="adapter_config.json")
    (folder / "adapter_config.json").symlink_to("/etc/passwd")
    with pytest.raises(ModelSourceError, match="outside the model folder"):
        resolve_source(parse_source(str(folder)))


def test_links_inside_the_folder_and_broken_links(tiny_pool, tmp_path):
    folder = copy_of_adapter(tiny_pool, tmp_path / "inside")
    (folder / "weights").mkdir()
    (folder / "adapter_model.safetensors").rename(folder / "weights" / "real.safetensors")
    (folder / "adapter_model.safetensors").symlink_to(folder / "weights" / "real.safetensors")
    assert resolve_source(parse_source(str(folder))) == folder             # a link that stays inside is fine
    (folder / "dangling.json").symlink_to(folder / "nowhere.json")
    with pytest.raises(ModelSourceError, match="broken link"):
        resolve_source(parse_source(str(folder)))


def test_a_named_pipe_is_refused_without_hanging(tiny_pool, tmp_path):
    import os

    folder = copy_of_adapter(tiny_pool, tmp_path / "pipe", replace="adapter_model.safetensors")
    os.mkfifo(folder / "adapter_model.safetensors")
    with pytest.raises(ModelSourceError, match="not a regular file"):
        resolve_source(parse_source(str(folder)))


# -- round two: an adapter that names another base, names other layers, or changes nothing --------------------------
def edited_adapter(src: Path, dst: Path, config: dict | None = None, tensors=None) -> Path:
    """A copy of adapter ``src`` with its config updated by ``config`` and its weights mapped by ``tensors``."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    if config is not None:
        data = json.loads((dst / "adapter_config.json").read_text())
        (dst / "adapter_config.json").write_text(json.dumps({**data, **config}))
    if tensors is not None:
        weights = dst / "adapter_model.safetensors"
        save_file(tensors(load_file(weights)), weights)
    return dst


@pytest.mark.parametrize("declared, refused", [
    ("HuggingFaceTB/SmolLM2-135M", True),            # another model of the same width
    ("HuggingFaceTB/SmolLM2-135M-Instruct", False),   # the base's own hub id
    ("smollm2-135m-instruct", False),
    ("/somewhere/else/base", False),                  # a local path: only the shapes can tell
])
def test_an_adapter_naming_another_base_is_refused(tiny_pool, tmp_path, declared, refused):
    base_model, _ = load_model(tiny_pool["base"], "cpu", torch.float32)
    named_base = tmp_path / "bases" / "smollm2-135m-instruct-0123456789abcdef"      # a built-in base's cache folder
    shutil.copytree(tiny_pool["base"], named_base)
    adapter = edited_adapter(tiny_pool["loras"]["lora_0"], tmp_path / "adapter", {"base_model_name_or_path": declared})
    if not refused:
        check_adapter_fits(adapter, named_base, base_model)
        return
    with pytest.raises(IncompatibleModelError, match=f"it names {declared} as its base, but this base is "
                                                     "smollm2-135m-instruct"):
        check_adapter_fits(adapter, named_base, base_model)


def test_base_names_come_from_the_cache_folder_the_hub_layout_and_the_config(tmp_path):
    from core.engine.loading import base_names

    snapshot = tmp_path / "models--HuggingFaceTB--SmolLM2-360M" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"_name_or_path": "HuggingFaceTB/SmolLM2-360M"}))
    assert base_names(snapshot) == {"smollm2-360m"}
    plain = tmp_path / "my-model"
    plain.mkdir()
    assert base_names(plain) == set()                  # no recorded name: the check is left to the shapes


def test_an_adapter_whose_config_names_other_layers_is_refused(tiny_pool, tmp_path):
    base_model, _ = load_model(tiny_pool["base"], "cpu", torch.float32)
    adapter = edited_adapter(tiny_pool["loras"]["lora_0"], tmp_path / "adapter", {"layers_to_transform": [0]})
    with pytest.raises(IncompatibleModelError, match=r"names layers \[0\] but the weights change layer 1"):
        check_adapter_fits(adapter, tiny_pool["base"], base_model)


@pytest.mark.parametrize("config, tensors, why", [
    (None, lambda t: {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in t.items()}, "its weights are all zero"),
    ({"lora_alpha": 0}, None, "its lora_alpha is 0"),
    (None, lambda t: {}, "it holds no tensors"),
])
def test_an_adapter_that_changes_nothing_is_refused(tiny_pool, tmp_path, config, tensors, why):
    base_model, _ = load_model(tiny_pool["base"], "cpu", torch.float32)
    adapter = edited_adapter(tiny_pool["loras"]["lora_0"], tmp_path / "adapter", config, tensors)
    with pytest.raises(IncompatibleModelError, match=f"changes nothing: {why}.*train it"):
        check_adapter_fits(adapter, tiny_pool["base"], base_model)

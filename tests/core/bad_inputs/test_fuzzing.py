"""Property-based fuzzing of every parser: any text or bytes give a result or a DeltaAtlasError, never another exception."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.engine.probes import MAX_PROBES, load_probes
from core.errors import DeltaAtlasError
from core.pool.catalog import Source, hub_id_problem, parse_source, read_catalog, write_catalog
from core.pool.userpool import UserPool, check_local_path
from core.pool.vectors import read_vectors, write_vectors
from core.reuse import examples
from core.reuse.examples import MAX_EXAMPLES, parse_examples
from tests.core.bad_inputs.world import HEADER, assert_neutralised, jsonl, stored_zip
from tests.core.pool.test_userpool import fake_embed

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CELL = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
CSVISH = st.tuples(st.sampled_from([HEADER, "name,source,kind,base,domain\n", "name,kind\n", "", "\ufeff" + HEADER]),
                   st.lists(st.lists(st.one_of(CELL, st.sampled_from(["lora", "full", "auto", "./m", "org/m@v1",
                                                                      '"', '""', "\n", "=1+1"])), max_size=6)
                            .map(",".join), max_size=5)).map(lambda t: t[0] + "\n".join(t[1]))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["instruction", "response", "prompt", "text", "input", "output", "x"]),
                        inner, max_size=4), max_leaves=12)
SUFFIXES = st.sampled_from(["x.jsonl", "x.json", "x.csv", "x.tsv", "x.txt", "x.md", "x", "x.bin"])


def result_or_refusal(call: Callable[[], object]) -> object | None:
    """What ``call`` returns, or None when it refuses with a DeltaAtlasError; any other exception fails the test."""
    try:
        return call()
    except DeltaAtlasError:
        return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), CSVISH.map(str.encode)))
def test_fuzz_catalog_reading(scratch, data):
    (scratch / "catalog.csv").write_bytes(data)
    result = result_or_refusal(lambda: read_catalog(scratch / "catalog.csv"))
    if result is not None:
        assert len(result) >= 1 and len(set(result.names)) == len(result.names)


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), st.text(max_size=300).map(str.encode),
                      st.lists(JSON, max_size=4).map(lambda items: jsonl(items).encode()),
                      st.lists(JSON, max_size=4).map(lambda items: json.dumps(items).encode()),
                      CSVISH.map(str.encode)),
       filename=SUFFIXES)
def test_fuzz_example_files(data, filename):
    result = result_or_refusal(lambda: parse_examples(data, filename))
    if result is not None:
        assert examples.MIN_EXAMPLES <= len(result) <= MAX_EXAMPLES and all(e.response for e in result)


@FUZZ
@given(text=st.one_of(st.text(max_size=60), st.from_regex(r"[A-Za-z0-9_.~/@\\ -]{0,40}", fullmatch=True),
                      st.text("ab/.~@", min_size=250, max_size=320),           # longer than a file name may be
                      st.from_regex(r"[a-z]{1,5}/[a-z.-]{1,8}(@[a-z./-]{0,8})?", fullmatch=True)))
def test_fuzz_hub_ids_and_sources(scratch, text):
    problem = hub_id_problem(text)
    if problem is None:
        hub_id, _, revision = text.partition("@")
        assert ".." not in text and hub_id.count("/") == 1 and "--" not in hub_id and text.isascii()
    source = result_or_refusal(lambda: parse_source(text, scratch))
    assert source is None or isinstance(source, Source)
    if source is not None and source.hub_id is not None:
        assert hub_id_problem(text.strip()) is None
    pool = UserPool(scratch / "user", roots=[(scratch / "user").resolve()], embed=fake_embed(), budget=2**30)
    added = result_or_refusal(lambda: pool.add_hub(text, base="org/base"))
    assert added is None or hub_id_problem(text.strip()) is None
    resolved = result_or_refusal(lambda: check_local_path(text, [scratch.resolve()]))
    assert resolved is None or resolved.is_relative_to(scratch.resolve())


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), st.text(max_size=300).map(str.encode),
                      JSON.map(lambda value: json.dumps(value).encode())),
       name=st.sampled_from(["p.json", "p.txt", "p"]))
def test_fuzz_probe_files(scratch, data, name):
    (scratch / name).write_bytes(data)
    result = result_or_refusal(lambda: load_probes(scratch / name))
    assert result is None or (1 <= len(result) <= MAX_PROBES and all(isinstance(p, str) and p.strip() for p in result))


@FUZZ
@given(labels=st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
                                max_size=12).map(str.strip), min_size=1, max_size=4))
def test_fuzz_catalog_cells_survive_the_round_trip_and_never_run(scratch, labels):
    assume(not any(v.startswith("'") for v in labels))
    rows = [{"name": f"m{i}", "source": "./m", "kind": "lora", "base": "./b", "note": v} for i, v in enumerate(labels)]
    path = write_catalog(rows, scratch / "round.csv")
    assert_neutralised(path)
    assert [e.labels["note"] for e in read_catalog(path)] == labels




# -- round two: vector files, recipes, zip layouts, adapter configs

FLOAT = st.one_of(st.floats(width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))
NAME = st.one_of(st.text(max_size=6), st.sampled_from(["a", "a", "", " ", "nan", "=1+1", "<b>x</b>"]))


@FUZZ
@given(rows=st.lists(st.tuples(NAME, st.lists(FLOAT, max_size=3)), max_size=5), suffix=st.sampled_from([".parquet",
                                                                                                      ".csv"]))
def test_fuzz_vector_files(scratch, rows, suffix):
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"name": [n for n, _ in rows], "vector": [np.asarray(v, dtype=np.float32) for _, v in rows]})
    path = result_or_refusal(lambda: write_vectors(table, scratch / f"fuzz{suffix}"))
    result = None if path is None else result_or_refusal(lambda: read_vectors(path))
    if result is not None:                         # what is read back can be ranked, reported and mapped safely
        assert result["name"].is_unique and all(str(n).strip() for n in result["name"])
        assert len({len(v) for v in result["vector"]}) <= 1 and all(np.isfinite(v).all() for v in result["vector"])


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode)))
def test_fuzz_vector_file_bytes(scratch, data):
    for name in ("raw.parquet", "raw.csv"):
        (scratch / name).write_bytes(data)
        result_or_refusal(lambda: read_vectors(scratch / name))


YAMLISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                           st.sampled_from(["base", "method", "weights", "ingredients", "name", "source", "seed",
                                            "density", "x"]), inner, max_size=5), max_leaves=10)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), YAMLISH.map(lambda v: __import__("yaml").safe_dump(v)),
                      st.sampled_from(["a: &x [1]\nb: *x\n", "!!python/object/apply:os.system ['true']\n",
                                       "a: 1\na: 2\n", "[" * 300 + "]" * 300])))
def test_fuzz_recipes(scratch, text):
    from core.reuse.merge import read_recipe

    (scratch / "recipe.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    recipe = result_or_refusal(lambda: read_recipe(scratch / "recipe.yaml"))
    assert recipe is None or {"base", "method", "weights", "ingredients"} <= set(recipe)


PART = st.one_of(st.text("ab.", min_size=1, max_size=4), st.sampled_from(["..", ".", ".hidden", "__MACOSX", "a" * 300,
                                                                          "adapter_config.json"]))
MEMBER = st.lists(PART, min_size=1, max_size=14).map("/".join)


@FUZZ
@given(extra=st.lists(MEMBER.map(lambda p: p + st_suffix(p)), max_size=6), top=st.sampled_from(["", "model/", ".x/"]))
def test_fuzz_zip_layouts(scratch, extra, top):
    import shutil

    from core.pool.userpool import extract_zip

    files = [(top + "adapter_config.json", "{}"), (top + "adapter_model.safetensors", "x"),
             *((top + name, "y") for name in extra)]
    out = scratch / "unzipped"
    shutil.rmtree(out, ignore_errors=True)
    data = stored_zip(files)
    result = result_or_refusal(lambda: extract_zip(data, out))
    if result is not None:                                     # everything written stays inside the folder
        for path in out.rglob("*"):
            assert path.resolve().is_relative_to(out.resolve())


def st_suffix(path: str) -> str:
    return "" if path.endswith((".json", ".safetensors")) else ".txt"


CONFIG_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(), st.text(max_size=30),
                         st.lists(st.integers(-2, 4), max_size=3), st.sampled_from(["HuggingFaceTB/SmolLM2-135M",
                                                                                    "/tmp", "org/x y", "LORA"]))


@FUZZ
@given(config=st.one_of(st.dictionaries(st.sampled_from(["peft_type", "base_model_name_or_path", "lora_alpha", "r",
                                                          "layers_to_transform", "target_modules", "bias",
                                                          "use_dora", "init_lora_weights"]), CONFIG_VALUE, max_size=6),
                        JSON))
def test_fuzz_adapter_configs(tiny_pool, scratch, config):
    import shutil

    import torch

    from core.engine.loading import check_adapter_fits, load_model

    base_model = FUZZ_BASE.setdefault("model", load_model(tiny_pool["base"], "cpu", torch.float32)[0])
    folder = scratch / "adapter"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny_pool["loras"]["lora_0"], folder)
    original = json.loads((folder / "adapter_config.json").read_text())
    merged = {**original, **config} if isinstance(config, dict) else config
    (folder / "adapter_config.json").write_text(json.dumps(merged))
    result_or_refusal(lambda: check_adapter_fits(folder, tiny_pool["base"], base_model))


FUZZ_BASE: dict = {}      # the tiny base, loaded once for every fuzzed adapter config

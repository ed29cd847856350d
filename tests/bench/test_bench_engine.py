"""bench/bench_engine.py end to end at the reduced 8B-shaped preset, on the CPU: real numbers, checked twice.

The script builds a random pool (no download), races the engine against the naive loop and compares its bf16 and
fp32 paths; here its JSON figures are checked, and its vectors are checked again against the reference loop run by
the test itself, so a wrong figure or a wrong vector both fail.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.bench_engine import PRESETS, random_base
from core.engine.activations import reference_delta
from core.engine.device import fast_bfloat16
from core.engine.probes import DEFAULT_PROBES
from core.zoo.tinylm import count_parameters, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PRESET = "llama-8b-shape-tiny"
NATIVE_BF16 = fast_bfloat16(torch.device("cpu"))
FULL = 1                          # the preset has none: a flag overrides it, and the full-model path is covered


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def expected_parameters(p: dict) -> int:
    """A Llama's parameter count from its shape (untied embeddings, GQA, no biases)."""
    head_dim = p["hidden"] // p["heads"]
    attention = 2 * p["hidden"] * p["hidden"] + 2 * p["hidden"] * p["kv_heads"] * head_dim
    layer = attention + 3 * p["hidden"] * p["intermediate"] + 2 * p["hidden"]
    return 2 * p["vocab"] * p["hidden"] + p["layers"] * layer + p["hidden"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_engine")
    command = [sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--preset", PRESET, "--random-weights",
               "--device", "cpu", "--full", str(FULL), "--threads", "1", "--json", str(out / "figures.json"),
               "--vectors", str(out / "vectors.npz"), "--keep", str(out / "pool")]
    if not NATIVE_BF16:          # emulated bf16 is ~90x slower: the bf16 run alone would take many minutes
        command.append("--no-precision-check")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"figures": json.loads((out / "figures.json").read_text()), "vectors": np.load(out / "vectors.npz"),
            "pool": out / "pool", "stdout": done.stdout}


def test_the_8b_preset_is_llama_3_8b_shaped():
    """Built on the meta device (no memory): 8.03B parameters, Llama-3-8B's count."""
    tokenizer = train_tokenizer(["a few words"] * 5, 300)
    model = random_base(tokenizer, PRESETS["llama-8b-shape"], "meta", torch.bfloat16)
    assert count_parameters(model) == expected_parameters(PRESETS["llama-8b-shape"]) == 8_030_261_248


def test_pool_follows_the_preset_and_the_flags(run):
    figures = run["figures"]
    assert figures["preset"] == PRESET and figures["device"] == "cpu" and figures["race_dtype"] == "float32"
    assert figures["shape"] == PRESETS[PRESET] | {"full": FULL}
    assert figures["models"] == PRESETS[PRESET]["adapters"] + FULL
    assert figures["parameters"] == expected_parameters(PRESETS[PRESET])       # vocab rows as asked, not ~430


def test_engine_equals_the_naive_loop(run):
    figures, vectors = run["figures"], run["vectors"]
    names, naive_names = list(vectors["names"]), list(vectors["naive_names"])
    assert sorted(naive_names) == sorted(names) and len(names) == figures["models"]   # small pool: naive on all
    engine = dict(zip(names, vectors["engine_float32"]))
    for name, reference in zip(naive_names, vectors["naive"]):
        assert np.abs(reference).max() > 1e-3                                       # a real delta, not zeros
        np.testing.assert_allclose(engine[name], reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    assert figures["agreement"]["models"] == len(names)
    assert figures["agreement"]["cosine_min"] > 0.99999 and figures["agreement"]["max_rel_error"] < 1e-4


def test_vectors_match_the_reference_loop_run_here(run):
    """Independent of the script's own naive phase: the reference loop, run by the test on the kept pool."""
    vectors = dict(zip(run["vectors"]["names"], run["vectors"]["engine_float32"]))
    pool = run["pool"]
    for name, kind in (("lora_000", "lora"), ("full_0", "full")):
        reference = reference_delta(pool / "base", pool / name, kind, DEFAULT_PROBES)
        assert cosine(vectors[name], reference) > 0.99999, name


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (emulated, ~90x slower than float32); the "
                    "bf16 path is checked on such machines by tests/core/test_engine.py's small models")
def test_bf16_against_fp32_is_reported_and_close(run):
    figures, vectors = run["figures"], run["vectors"]
    check = figures["bf16_vs_fp32"]
    recomputed = [cosine(a, b) for a, b in zip(vectors["engine_bfloat16"], vectors["engine_float32"])]
    assert check["cosine_min"] == pytest.approx(min(recomputed), abs=1e-9)
    assert check["cosine_mean"] == pytest.approx(np.mean(recomputed), abs=1e-9)
    assert 0.99 <= check["cosine_min"] < 1.0                  # bf16 really ran (not fp32 twice), and it is close
    assert check["threshold"] == 0.999 and check["pass"] == (check["cosine_min"] >= 0.999)
    assert ("PASS" if check["pass"] else "FAIL") in run["stdout"]


def test_timings_and_ratio(run):
    figures = run["figures"]
    engine, naive = figures["engine"]["float32"], figures["naive"]
    for phase in (engine, *([figures["engine"]["bfloat16"]] if NATIVE_BF16 else []), naive):
        assert phase["seconds"] > 0 and phase["rss"] > phase["idle_rss"] > 0 and phase["cuda_peak"] is None
        assert phase["models_per_s"] == pytest.approx(figures["models"] / phase["seconds"])
    assert figures["speedup"] == pytest.approx(naive["seconds"] / engine["seconds"])
    assert engine["warm_computed"] == 0 and engine["warm"] < engine["seconds"]
    assert naive["extrapolated"] is False and naive["timed"] == figures["models"]

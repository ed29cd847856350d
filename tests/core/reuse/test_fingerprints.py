"""The data side of "nothing fits": examples read by the base (padding-free means), the two signals, the stored
table beside the catalog, a weighted rule that reads them, and the fallback when the file is missing."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from core.engine.loading import load_model
from core.errors import DeltaAtlasError
from core.pool.vectors import make_table, write_vectors
from core.reuse.fingerprints import (
    data_signals,
    fingerprint_path,
    load_fingerprints,
    read_examples,
    reads_data_side,
    task_signals,
    write_fingerprints,
)
from core.reuse.novelty import CloseMatchRule
from core.reuse.task import find_models
from core.reuse.train import Example
from tests.core.reuse.test_task import EXAMPLES, STEPS, pool  # noqa: F401  (the tiny pool fixture)

TRAINING = {"set0": [Example("Add two and five.", "Seven."), Example("Add one and six.", "Seven.")],
            "set1": [Example("Spell cat.", "C-A-T."), Example("Spell dog.", "D-O-G.")]}
EVERYDAY = {"weather": [Example("Sunny today?", "Yes, lovely.")], "pets": [Example("Feed a cat?", "Twice a day.")]}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))


def test_an_example_reads_the_same_alone_and_padded_in_a_batch(tiny_pool):
    model, tokenizer = load_model(tiny_pool["base"], "cpu", torch.float32)
    examples = [Example("Add two and three.", "Five."), Example("A much longer question about many things.", "No.")]
    together = read_examples(model, tokenizer, examples)                     # [2, d], the short one padded
    alone = np.concatenate([read_examples(model, tokenizer, [ex]) for ex in examples])
    assert together.shape == (2, model.config.hidden_size)
    assert np.allclose(together, alone, atol=1e-5)
    # the mean over the tokens of the last hidden state, as the model itself computes it
    ids = tokenizer(examples[0].prompt() + examples[0].response, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(ids, output_hidden_states=True).hidden_states[-1][0].mean(0).numpy()
    assert np.allclose(together[0], expected, atol=1e-5)


def test_the_signals_are_nearest_example_cosines():
    training = np.array([[1.0, 0.0], [0.0, 1.0]])
    references = np.array([[1.0, 1.0]])
    task = np.array([[2.0, 0.0], [1.0, 1.0]])            # one on a training example, one on the reference
    signals = task_signals(task, training, references)
    assert signals["like_data"] == pytest.approx((1.0 + np.sqrt(0.5)) / 2)
    assert signals["data_lead"] == pytest.approx(((1.0 - np.sqrt(0.5)) + (np.sqrt(0.5) - 1.0)) / 2)
    assert set(task_signals(task, training)) == {"like_data"}             # no references: no lead
    with pytest.raises(DeltaAtlasError, match="cannot be compared"):
        task_signals(np.ones((2, 3)), training)


def test_a_weighted_rule_reads_the_data_side_or_falls_back_to_the_pool():
    rule = CloseMatchRule(top=1, weights={"like_data": 10.0}, bias=-5.0).fit(np.eye(4))
    sims = np.array([0.9, 0.1, 0.1, 0.1])
    assert rule.reads_data() and not rule.reads_references()
    assert rule.is_close(sims, data={"like_data": 0.6}) and not rule.is_close(sims, data={"like_data": 0.4})
    assert "training examples at 0.40" in rule.explain(sims, data={"like_data": 0.4})
    assert rule.reads_background(None, None) and not rule.reads_background(None, {"like_data": 0.4})
    assert rule.is_close(sims) == (rule.strength(sims) >= rule.threshold_)   # without the data side: the pool's


def test_fingerprints_are_stored_beside_the_catalog_and_read_back(pool, tmp_path, caplog):  # noqa: F811
    try:
        table = write_fingerprints(pool, TRAINING, EVERYDAY)
        assert fingerprint_path(pool).is_file() and len(table) == 6
        assert list(table["side"]) == ["pool"] * 4 + ["reference"] * 2
        assert "Add two" not in fingerprint_path(pool).read_bytes().decode("latin-1")   # numbers, never the text
        stored = load_fingerprints(pool)
        assert stored[0].shape[0] == 4 and stored[1].shape[0] == 2
        with caplog.at_level(logging.WARNING):
            assert load_fingerprints(pool, width=stored[0].shape[1] + 1) is None
        assert "another base" in caplog.text
        assert data_signals(None, pool) == {} and data_signals(stored[0][:1], None) == {}
        assert data_signals(stored[0][:1], pool)["like_data"] == pytest.approx(1.0)   # a training example itself
        with pytest.raises(DeltaAtlasError, match="No training examples"):
            write_fingerprints(pool, {"set0": []}, EVERYDAY)
    finally:
        fingerprint_path(pool).unlink(missing_ok=True)


def test_a_search_reads_the_examples_only_where_the_pool_weighs_them(pool):  # noqa: F811
    novelty = pool.parent / "novelty.json"
    (pool.parent / "search.json").write_text(json.dumps({"steps": STEPS}))
    try:
        write_fingerprints(pool, TRAINING, EVERYDAY)
        assert not reads_data_side(pool)                 # no rule weighs them: nothing read, nothing shown
        assert find_models(EXAMPLES, pool, check_help=0).data_signals == {}
        novelty.write_text(json.dumps({"weights": {"like_data": 1.0, "data_lead": 1.0}, "bias": -10.0}))
        assert reads_data_side(pool)
        result = find_models(EXAMPLES, pool, check_help=0)
        assert set(result.data_signals) == {"like_data", "data_lead"} and result.fingerprints.shape[0] == len(EXAMPLES)
        assert not result.close and result.verdict == "none"            # bias -10: nothing can reach it
        assert "unlike what this pool's models were trained on" in result.headline
        assert set(result.to_json()["data_signals"]) == {"like_data", "data_lead"}
        fingerprint_path(pool).unlink()                  # the file gone: the pool's own background, and how to mend it
        result = find_models(EXAMPLES, pool, check_help=0)
        assert result.data_signals == {} and "python -m core fingerprints" in result.match_note
    finally:
        for name in ("search.json", "novelty.json", "fingerprints.parquet"):
            (pool.parent / name).unlink(missing_ok=True)


def test_a_broken_file_is_not_used_and_a_search_still_answers(pool, caplog):  # noqa: F811
    (pool.parent / "search.json").write_text(json.dumps({"steps": STEPS}))
    (pool.parent / "novelty.json").write_text(json.dumps({"weights": {"like_data": 1.0}, "bias": -10.0}))
    fingerprint_path(pool).write_bytes(b"PAR1 not really a parquet file")
    try:
        with caplog.at_level(logging.WARNING):
            assert load_fingerprints(pool) is None
            result = find_models(EXAMPLES, pool, check_help=0)
        assert "cannot be used" in caplog.text and "python -m core fingerprints" in result.match_note
        assert result.data_signals == {} and result.verdict in ("strong", "none")   # the pool's own background
    finally:
        for name in ("search.json", "novelty.json", "fingerprints.parquet"):
            (pool.parent / name).unlink(missing_ok=True)


def test_a_table_without_pool_rows_is_not_used(tmp_path, caplog):
    catalog = tmp_path / "catalog.csv"
    table = make_table(["a", "b"], np.ones((2, 4)))
    table.insert(1, "side", ["reference", "reference"])
    write_vectors(table, fingerprint_path(catalog))
    with caplog.at_level(logging.WARNING):
        assert load_fingerprints(catalog) is None
    assert "no pool fingerprints" in caplog.text

"""What each model learned: leaning words through the output head, answers beside the base's, group names from the
words alone, kept beside the catalog and computed again only for new or changed models."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from core.engine.embed import embed_catalog
from core.map import describe
from core.map.describe import (
    describe_pool,
    group_names,
    leaning_words,
    load_descriptions,
    update_descriptions,
    word_tokens,
    write_descriptions,
)
from core.pool.catalog import read_catalog


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))


def test_leaning_words_are_the_words_a_delta_raises_most_against_the_pool():
    words = ["alpha", "beta", "gamma", "delta"]
    head = np.eye(4)                                            # word j's score is coordinate j
    deltas = np.array([[5.0, 1, 0, 0], [1.0, 5, 0, 0], [1.0, 1, 3, 0]])
    out = leaning_words(deltas, head, np.arange(4), words, k=2)
    assert [row[0] for row in out] == ["alpha", "beta", "gamma"]    # relative to the mean: not just the biggest
    assert all(len(row) == 2 and len(set(row)) == 2 for row in out)


def test_group_names_come_from_the_words_a_group_shares_and_others_do_not():
    found = {"models": {"a1": {"words": ["court", "clause", "answer"]}, "a2": {"words": ["court", "judge", "answer"]},
                        "b1": {"words": ["dose", "patient", "answer"]}, "b2": {"words": ["patient", "dose", "answer"]}}}
    names = group_names(found, {"a1": 0, "a2": 0, "b1": 1, "b2": 1}, k=2)
    assert names[0].split(", ")[0] == "court" and "answer" not in names[0]
    assert set(names[1].split(", ")) == {"dose", "patient"}
    assert group_names({}, {"a1": 0}) == {0: ""}


def test_word_tokens_keep_whole_words_only(tiny_pool):
    from core.engine.loading import load_tokenizer

    ids, words = word_tokens(load_tokenizer(tiny_pool["base"]))
    assert len(ids) == len(words) >= 3 and all(w.isalpha() and len(w) >= 4 and w == w.lower() for w in words)


class WordsOnly:
    """A tokenizer's vocabulary and nothing else: tokens are their own text, a leading space marks a word start."""

    def __init__(self, tokens: list[str]):
        self.vocab = {t: i for i, t in enumerate(tokens)}

    def get_vocab(self) -> dict:
        return self.vocab

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)


def test_names_word_pieces_and_identifiers_are_not_words_a_person_reads():
    tokens = [" court", " Martha", " Legal", " legal", " lawsu", " setattr", " the", "clause", " Court", " Lily"]
    ids, words = word_tokens(WordsOnly(tokens))
    assert words == ["court", "legal", "legal", "court"]   # "Lily" is a name here (no " lily"), "the" too short
    assert list(ids) == [0, 2, 3, 8]


def test_a_pool_is_described_and_only_new_models_are_computed_again(tiny_pool, tmp_path, monkeypatch):
    catalog = read_catalog(tiny_pool["catalog"])
    table = embed_catalog(catalog).table
    found = describe_pool(catalog, table)
    assert len(found["base"]["answers"]) == 5 and set(found["models"]) == set(table["name"])
    for name, about in found["models"].items():
        assert len(about["answers"]) == 5 and all(isinstance(a, str) for a in about["answers"]), name
        assert about["words"] and len(about["key"]) == 16
    path = write_descriptions(catalog.path, found)
    assert load_descriptions(catalog.path) == json.loads(path.read_text())
    calls = []
    real = describe.greedy_answers
    monkeypatch.setattr(describe, "greedy_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = describe_pool(catalog, table, known=found)
    assert calls == [] and again["models"] == found["models"]           # nothing changed: nothing computed
    changed = table.copy()
    changed.loc[0, "vector"] = changed.loc[0, "vector"] * 2
    describe_pool(catalog, changed, known=found)
    assert len(calls) == 1                                              # only the changed model answers again
    path.unlink()


def test_an_added_model_is_described_and_the_others_are_kept(tiny_pool, monkeypatch):
    catalog = read_catalog(tiny_pool["catalog"])
    table = embed_catalog(catalog).table
    first, added = table.iloc[:-1].reset_index(drop=True), table.iloc[-1:].reset_index(drop=True)
    update_descriptions(catalog, first)
    calls = []
    real = describe.greedy_answers
    monkeypatch.setattr(describe, "greedy_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    try:
        found = update_descriptions(catalog, added)                        # what the app runs after an add
        assert load_descriptions(catalog.path) == found
        assert set(found["models"]) == set(table["name"])                   # the others are kept
        assert len(calls) == 1                                              # only the added model answers
    finally:
        describe.descriptions_path(catalog.path).unlink()


def test_a_model_without_weights_keeps_its_words_and_says_why_it_has_no_answers(tiny_pool, tmp_path):
    from tests.conftest import write_catalog

    rows = [{"name": n, "source": str(p), "kind": "lora", "base": str(tiny_pool["base"])}
            for n, p in tiny_pool["loras"].items()]
    catalog = read_catalog(write_catalog(tmp_path / "catalog.csv", rows))
    table = embed_catalog(catalog).table
    rows[0]["source"] = str(tmp_path / "gone")                          # the weights left the disk
    gone = read_catalog(write_catalog(tmp_path / "catalog.csv", rows))
    found = describe_pool(gone, table)
    first = found["models"][rows[0]["name"]]
    assert first["answers"] is None and first["words"] and "does not exist" in first["note"]


def test_the_describe_command_writes_the_descriptions_and_names_the_groups(tiny_pool, capsys):
    from core.cli import main

    catalog = tiny_pool["catalog"]
    embed_catalog(catalog)
    from core.pool.vectors import write_vectors

    vectors = catalog.with_name("vectors.parquet")
    write_vectors(embed_catalog(catalog).table, vectors)
    try:
        assert main(["describe", "--catalog", str(catalog)]) == 0
        out = capsys.readouterr().out
        assert "group 1: " in out and "models described" in out
        assert len(load_descriptions(catalog)["models"]) == 6
    finally:
        vectors.unlink(missing_ok=True)
        describe.descriptions_path(catalog).unlink(missing_ok=True)


def test_broken_descriptions_are_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "descriptions.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING):
        assert load_descriptions(tmp_path / "catalog.csv") == {}
    assert "recompute it with `python -m core describe`" in caplog.text
    assert load_descriptions(None) == {}


def test_answer_words_say_what_a_model_answers_beyond_the_base():
    from core.map.describe import answer_words

    base = ["I am ready to assist you with your request."]
    assert answer_words(["The answer is 1,500 and 200."], base)[-1] == "numbers"
    assert "code" in answer_words(["def add(a, b): return a + b"], base)
    assert answer_words(["Your request: the court held the contract void."], base)[:3] == ["court", "held",
                                                                                          "contract"]
    assert answer_words(None, base) == [] and answer_words([""], base) == []


def test_group_names_read_the_answers_too():
    found = {"base": {"answers": ["Hello there."]},
             "models": {"m1": {"answers": ["The answer is 12345 and 678."], "words": ["jess"]},
                        "m2": {"answers": ["It is 99 plus 1234."], "words": ["carl"]},
                        "c1": {"answers": ["def f(x): return x"], "words": ["import"]},
                        "c2": {"answers": ["def g(): return 1"], "words": ["python"]}}}
    names = group_names(found, {"m1": "a", "m2": "a", "c1": "b", "c2": "b"})
    assert names["a"].startswith("numbers") and names["b"].startswith("code")

"""Example files in: every accepted format and field pair, and every kind of bad file gets a message naming the line."""
from __future__ import annotations

import json

import pytest

from core.errors import ExamplesError
from core.reuse.examples import (
    MAX_EXAMPLE_CHARS,
    MAX_EXAMPLES,
    MAX_FILE_BYTES,
    load_examples,
    parse_examples,
    sample_domain,
    sample_tasks,
)
from core.reuse.train import Example


def jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def qa(*answers) -> bytes:
    """A JSON Lines file: one good question/answer, then one record per item of ``answers`` (dicts)."""
    return jsonl([{"question": "q", "answer": "a"}, *answers])


PAIRS = [("instruction", "response"), ("prompt", "completion"), ("input", "output"), ("question", "answer"),
         ("Question", "ANSWER")]


@pytest.mark.parametrize("prompt_key,response_key", PAIRS)
def test_field_pairs(prompt_key, response_key):
    rows = [{prompt_key: f"q{i}", response_key: f"a{i}"} for i in range(3)]
    assert parse_examples(jsonl(rows), "t.jsonl") == [Example(f"q{i}", f"a{i}") for i in range(3)]


def test_alpaca_keeps_the_input():
    rows = [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "hi"}]
    examples = parse_examples(jsonl(rows), "alpaca.json")  # one object per line, though named .json
    assert examples == [Example("Add.", "5", "2 and 3"), Example("Say hi.", "hi")]
    assert "### Input:\n2 and 3" in examples[0].prompt()


def test_text_field_and_extra_fields_ignored():
    rows = [{"text": "first", "id": 1}, {"text": "second", "id": 2}]
    assert parse_examples(jsonl(rows), "t.jsonl") == [Example("", "first"), Example("", "second")]


def test_numbers_become_text():
    rows = [{"question": "2+2?", "answer": 4}, {"question": "3+3?", "answer": 6.5}]
    assert [e.response for e in parse_examples(jsonl(rows), "t.jsonl")] == ["4", "6.5"]


def test_json_list_csv_tsv_and_text():
    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    expected = [Example("p1", "c1"), Example("p2", "c2")]
    assert parse_examples(json.dumps(rows, indent=2).encode(), "t.json") == expected
    assert parse_examples(b"prompt,completion\np1,c1\r\np2,c2\r\n", "t.csv") == expected
    assert parse_examples(b"\xef\xbb\xbfprompt\tcompletion\np1\tc1\np2\tc2\n", "t.tsv") == expected  # BOM dropped
    assert parse_examples(b"one\nstill one\n\n\n two \n", "t.txt") == [Example("", "one\nstill one"),
                                                                       Example("", "two")]


def test_unknown_suffix_is_sniffed():
    rows = [{"question": "q", "answer": "a"}] * 2
    assert len(parse_examples(json.dumps(rows).encode(), "upload")) == 2
    assert len(parse_examples(jsonl(rows), "upload")) == 2
    assert len(parse_examples(b"a\n\nb", "upload")) == 2


def test_csv_quoted_multiline_field_keeps_line_numbers():
    data = b'instruction,response\n"multi\nline",ok\nq2,\n'
    with pytest.raises(ExamplesError, match=r"t\.csv, line 4: the 'response' field is empty"):
        parse_examples(data, "t.csv")


@pytest.mark.parametrize("data,filename,pattern", [
    (b"", "e.jsonl", "is empty"),
    (b"  \n\n ", "e.txt", "is empty"),
    (b"PK\x03\x04\x00\x00binary", "x.jsonl", "binary"),
    ("\ufeff".encode("utf-16-le") + "question,answer\n".encode("utf-16-le"), "x.csv", "binary"),
    (b'{"question": "caf\xe9", "answer": "a"}\n', "latin1.jsonl", r"line 1, column 18: byte 0xe9 is not UTF-8"),
    (jsonl([{"question": "only one", "answer": "a"}]), "one.jsonl", "holds 1 example; give at least 2"),
    (jsonl([{"foo": "x", "bar": "y"}] * 2), "f.jsonl", r"line 1: no usable field names \(found: bar, foo\)"),
    (qa({"question": "q"}), "h.jsonl", r"line 2: has 'question' but no matching"),
    (qa({"question": " ", "answer": "a"}), "b.jsonl", r"line 2: the 'question' field is empty"),
    (qa({"question": "q", "answer": ["a"]}), "l.jsonl", "holds list; it must be text"),
    (b'{"question": "q", "answer": "a"}\n{"question": "q", "answer": \n', "s.jsonl", r"line 2: not valid JSON"),
    (b'[\n {"question": "q", "answer": "a"},\n {"question": "q" "answer": "a"}\n]', "s.json", "line 3: not valid JSON"),
    (b'[\n {"question": "q", "answer": "a"},\n {"question": "q", "answer": 1},\n 7\n]', "n.json", "line 4: expected an obj"),
    (b'[{"question": "q", "answer": "a"}, {"question": "q", "answer": "a"}', "u.json", "never closed"),
    (b'{"not": "a list"', "o.json", "not valid JSON"),
    (b"instruction,response\na,b\nc,d,e\n", "w.csv", r"line 3: 3 fields but the header has 2"),
    (b"\n\n,\n", "h.csv", "must name the columns"),
])
def test_bad_files(data, filename, pattern):
    with pytest.raises(ExamplesError, match=pattern):
        parse_examples(data, filename)


def test_too_many_and_too_long():
    many = jsonl([{"question": f"q{i}", "answer": "a"} for i in range(MAX_EXAMPLES + 1)])
    with pytest.raises(ExamplesError, match=f"holds {MAX_EXAMPLES + 1} examples; the limit is {MAX_EXAMPLES}"):
        parse_examples(many, "many.jsonl")
    long = jsonl([{"question": "q", "answer": "a"}, {"question": "q", "answer": "x" * MAX_EXAMPLE_CHARS}])
    with pytest.raises(ExamplesError, match="line 2: the example has .* characters; the limit"):
        parse_examples(long, "long.jsonl")


def test_huge_file_refused_before_reading(tmp_path):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is really written
    with pytest.raises(ExamplesError, match="MiB; the limit is 5 MiB"):
        load_examples(huge)
    with pytest.raises(ExamplesError, match="MiB; the limit"):
        parse_examples(b"x" * (MAX_FILE_BYTES + 1), "huge.txt")


def test_load_examples_missing_file(tmp_path):
    with pytest.raises(ExamplesError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")


def test_sample_tasks_cover_every_domain():
    tasks = sample_tasks()
    domains = {sample_domain(p) for p in tasks.values()}
    assert {"legal", "math", "medical", "commonsense", "coding"} <= domains
    for title, path in tasks.items():
        examples = load_examples(path)
        assert 12 <= len(examples) <= 20, title
        assert title.split(":")[0].lower() == sample_domain(path)

"""Task examples in: JSON Lines, JSON (a list), CSV and plain text, turned into :class:`Example` pairs (no torch
needed: parsing an upload loads no model library).

A person uploads a handful of examples of their task; everything is validated before any model is touched, and a
file that fails says which line is at fault and what to change. Accepted field names (case-insensitive):

    instruction / response      prompt / completion      input / output      question / answer
    instruction + input + output (Alpaca)                 text (a single field: the whole example is the response)

Plain text holds one example per blank-line-separated block (read like a ``text`` field).
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import ExamplesError
from core.textio import check_size, decode_text, file_problem

MIN_EXAMPLES = 2                 # a task needs at least two examples (10-50 is the useful range)
MAX_EXAMPLES = 1000
MAX_FILE_BYTES = 5 * 2**20       # 5 MiB
SURROGATE = re.compile("[\ud800-\udfff]")   # lone surrogates: valid JSON escapes, not text a tokenizer can take
MAX_EXAMPLE_CHARS = 20_000       # prompt + response of one example; training truncates to 256 tokens anyway
TOO_BIG = f"upload fewer or shorter examples (at most {MAX_EXAMPLES})."
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample_tasks"

# Field names, best first. A record needs one prompt field and one response field, or a single text field.
PROMPT_FIELDS = ("instruction", "prompt", "question", "input")
RESPONSE_FIELDS = ("response", "completion", "output", "answer")
TEXT_FIELDS = ("text",)
ACCEPTED = ("instruction/response, prompt/completion, input/output, question/answer, instruction+input+output "
            "(Alpaca) or a single text field")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
            ".txt": "text", ".text": "text", ".md": "text"}

# The Alpaca template a model is finetuned and measured with (core.reuse.train, core.reuse.fit).
PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
          "\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                     "Write a response that appropriately completes the request."
                     "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclass(frozen=True)
class Example:
    """One example of a task: what is asked (``instruction``, optional ``input``) and the answer (``response``)."""

    instruction: str
    response: str
    input: str = ""

    def prompt(self) -> str:
        if self.input:
            return PROMPT_WITH_INPUT.format(instruction=self.instruction, input=self.input)
        return PROMPT.format(instruction=self.instruction)


# -- bytes to text ----------------------------------------------------------------------------------------------
def decode(data: bytes, filename: str) -> str:
    """UTF-8 text of an upload, or an :class:`ExamplesError` naming the line that is not UTF-8 or not text."""
    text = decode_text(data, filename, ExamplesError, MAX_FILE_BYTES, TOO_BIG,
                       "save the examples as UTF-8 text (JSON Lines, JSON, CSV or plain text; in a spreadsheet: "
                       "'CSV UTF-8')")
    if not text.strip():
        raise ExamplesError(f"{filename} is empty: write at least {MIN_EXAMPLES} examples, e.g. one JSON object per "
                            'line like {"instruction": "...", "response": "..."}.')
    return text.replace("\r\n", "\n").replace("\r", "\n")


def file_format(text: str, filename: str) -> str:
    """The format by suffix; an unknown suffix is sniffed from the first character."""
    known = SUFFIXES.get(Path(filename).suffix.lower())
    if known:
        return known
    first = text.lstrip()[:1]
    return {"[": "json", "{": "jsonl"}.get(first, "text")


# -- records (dicts with their line numbers) --------------------------------------------------------------------
def jsonl_records(text: str, filename: str) -> list[tuple[int, object]]:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ExamplesError(f"{filename}, line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                "JSON Lines holds one complete JSON object per line.") from None
        except (RecursionError, ValueError) as exc:
            raise not_flat(f"{filename}, line {lineno}", exc) from None
    return records


def not_flat(where: str, exc: Exception) -> ExamplesError:
    """The message for JSON that Python's parser gives up on: nested too deeply, or a number too long."""
    what = "is nested too deeply" if isinstance(exc, RecursionError) else "holds a number too long to read"
    return ExamplesError(f"{where}: the JSON {what}; each example must be one flat object of text fields, e.g. "
                         '{"instruction": "...", "response": "..."}.')


def json_records(text: str, filename: str) -> list[tuple[int, object]]:
    """Items of a top-level JSON list, each with the line it starts on. A file of one object per line is read
    as JSON Lines (people often name those ``.json``)."""
    body = text.lstrip()
    if body.startswith("{"):
        return jsonl_records(text, filename)
    if not body.startswith("["):
        raise ExamplesError(f"{filename}, line 1: a JSON examples file must be a list of objects "
                            '([{"instruction": ..., "response": ...}, ...]).')
    decoder, pos, records = json.JSONDecoder(), text.index("[") + 1, []

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\n":
            p += 1
        return p

    try:
        pos = skip(pos)
        while pos < len(text) and text[pos] != "]":
            item, end = decoder.raw_decode(text, pos)
            records.append((text.count("\n", 0, pos) + 1, item))
            pos = skip(end)
            if pos < len(text) and text[pos] == ",":
                pos = skip(pos + 1)
            elif pos < len(text) and text[pos] != "]":
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
        if pos >= len(text):
            raise json.JSONDecodeError("the list is never closed with ']'", text, pos)
        if text[pos + 1:].strip():
            raise json.JSONDecodeError("text after the closing ']'", text, pos + 1)
    except json.JSONDecodeError as exc:
        raise ExamplesError(f"{filename}, line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "fix the syntax there (a missing comma or quote is the usual cause).") from None
    except (RecursionError, ValueError) as exc:
        line = text.count("\n", 0, pos) + 1
        raise not_flat(f"{filename}, line {line}", exc) from None
    return records


def csv_records(text: str, filename: str, delimiter: str = ",") -> list[tuple[int, object]]:
    """Rows as dicts keyed by the header; a row's line is where it starts (quoted fields may span lines)."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        header = []
    header = [h.strip() for h in header]
    if not any(header):
        raise ExamplesError(f"{filename}, line 1: the first line must name the columns, e.g. instruction,response.")
    records, start = [], reader.line_num + 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) != len(header):
                    raise ExamplesError(f"{filename}, line {start}: {len(row)} fields but the header has "
                                        f"{len(header)}; put quotes around values with commas or line breaks.")
                records.append((start, dict(zip(header, row))))
            start = reader.line_num + 1
    except csv.Error as exc:
        where = f"{filename}, line {start}"
        if "field limit" in str(exc):
            raise ExamplesError(f"{where}: a field is longer than {csv.field_size_limit():,} characters, usually "
                                "because a quote is never closed; check the quotes on that line.") from None
        raise ExamplesError(f"{where}: not valid CSV ({exc}); check the quotes on that line.") from None
    return records


def text_records(text: str) -> list[tuple[int, object]]:
    """One record per blank-line-separated block."""
    records, block, start = [], [], 0
    for lineno, line in enumerate([*text.split("\n"), ""], start=1):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            records.append((start, {"text": "\n".join(block).strip()}))
            block = []
    return records


# -- a record to an Example -------------------------------------------------------------------------------------
def _field(record: dict, names: tuple[str, ...], where: str) -> tuple[str | None, str]:
    """The first of ``names`` present in ``record`` (keys compared case-insensitively) and its text."""
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for name in names:
        if name in lowered and lowered[name] is not None:
            value = lowered[name]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ExamplesError(f"{where}: field {name!r} holds {type(value).__name__}; it must be text.")
            text = str(value).strip()
            if lone := SURROGATE.search(text):     # a JSON escape like \ud800 without its pair: not a character
                raise ExamplesError(f"{where}: field {name!r} holds the escape \\u{ord(lone.group()):04x} at "
                                    f"character {lone.start() + 1}, half of a character pair: fix or remove that "
                                    "escape (save the file as UTF-8 text instead).")
            return name, text
    return None, ""


def to_example(record: object, where: str) -> Example:
    """One validated :class:`Example` from a parsed record; ``where`` ("file, line N") starts every message."""
    if not isinstance(record, dict):
        raise ExamplesError(f"{where}: expected an object with fields ({ACCEPTED}), found {type(record).__name__}.")
    keys = sorted({str(k).strip().lower() for k in record})
    prompt_key, prompt = _field(record, PROMPT_FIELDS, where)
    response_key, response = _field(record, RESPONSE_FIELDS, where)
    extra = _field(record, ("input",), where)[1] if prompt_key not in (None, "input") else ""   # Alpaca's input
    if prompt_key is None or response_key is None:
        text_key, text = _field(record, TEXT_FIELDS, where)
        if text_key is None:
            half = f"has {prompt_key or response_key!r} but no matching field; " if prompt_key or response_key else ""
            raise ExamplesError(f"{where}: {half}no usable field names (found: {', '.join(keys) or 'none'}); "
                                f"use {ACCEPTED}.")
        prompt_key, prompt, response_key, response, extra = None, "", text_key, text, ""
    if not response:
        raise ExamplesError(f"{where}: the {response_key!r} field is empty; every example needs a response.")
    if prompt_key is not None and not prompt:
        raise ExamplesError(f"{where}: the {prompt_key!r} field is empty; every example needs a prompt.")
    size = len(prompt) + len(extra) + len(response)
    if size > MAX_EXAMPLE_CHARS:
        raise ExamplesError(f"{where}: the example has {size:,} characters; the limit is {MAX_EXAMPLE_CHARS:,}. "
                            "Shorten it (only the first ~256 tokens are used).")
    return Example(instruction=prompt, response=response, input=extra)


def check_count(n: int, source: str) -> None:
    if n < MIN_EXAMPLES:
        raise ExamplesError(f"{source} holds {n} example{'s' if n != 1 else ''}; give at least {MIN_EXAMPLES} "
                            "(10 to 50 work best).")
    if n > MAX_EXAMPLES:
        raise ExamplesError(f"{source} holds {n} examples; the limit is {MAX_EXAMPLES}: keep a representative subset.")


# -- public API -------------------------------------------------------------------------------------------------
def parse_examples(data: bytes, filename: str) -> list[Example]:
    """Examples from an uploaded file's bytes; the suffix of ``filename`` picks the format."""
    text = decode(data, filename)
    fmt = file_format(text, filename)
    if fmt == "jsonl":
        records = jsonl_records(text, filename)
    elif fmt == "json":
        records = json_records(text, filename)
    elif fmt in ("csv", "tsv"):
        records = csv_records(text, filename, "," if fmt == "csv" else "\t")
    else:
        records = text_records(text)
    check_count(len(records), filename)
    return [to_example(record, f"{filename}, line {line}") for line, record in records]


def load_examples(path: str | Path) -> list[Example]:
    """Examples from a file on disk (its size is checked before it is read)."""
    path = Path(path)
    if problem := file_problem(path):
        raise ExamplesError(f"Examples file {path} {problem}: give a JSON Lines, JSON, CSV or text file.")
    check_size(path.stat().st_size, str(path), ExamplesError, MAX_FILE_BYTES, TOO_BIG)
    return parse_examples(path.read_bytes(), str(path))


def sample_tasks(folder: str | Path = SAMPLE_DIR) -> dict[str, Path]:
    """The built-in sample tasks, title -> file; ``legal-contract-questions.jsonl`` is titled
    'Legal: contract questions'."""
    out = {}
    for path in sorted(Path(folder).glob("*")):
        if path.suffix.lower() in SUFFIXES and path.is_file():
            domain, _, rest = path.stem.partition("-")
            out[f"{domain.capitalize()}: {rest.replace('-', ' ')}" if rest else domain.capitalize()] = path
    return out


def sample_domain(path: str | Path) -> str:
    """The domain a sample task belongs to (the first word of its file name)."""
    return Path(path).stem.partition("-")[0].lower()

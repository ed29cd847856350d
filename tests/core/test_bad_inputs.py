"""Bad input, systematically: every door a user has (catalog CSV, task example files, zip uploads, hub ids and
revisions, local paths, merge settings and recipes, probe files) is given inputs it must refuse.

Each row of ``BAD`` is one bad input. It must raise a :class:`DeltaAtlasError` whose message names the value and says
what to fix (a regex per row: the value, then the remedy), and it must leave every file as it was: the user folder
(its catalog, vectors and models) and the folders around it. Then: CSV cells a spreadsheet would run as formulas are
neutralised on the way out and restored on the way back; property-based fuzzing of the parsers (any text or bytes
give a result or a DeltaAtlasError, never another exception); the upload caps agree with .streamlit/config.toml; the
user folder's disk budget.
"""
from __future__ import annotations

import csv
import io
import json
import math
import mmap
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import tomllib
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.engine.loading import resolve_source
from core.engine.probes import MAX_PROBES, load_probes
from core.errors import DeltaAtlasError
from core.pool import userpool
from core.pool.catalog import Source, hub_id_problem, parse_source, read_catalog, write_catalog
from core.pool.userpool import UserPool, check_local_path
from core.pool.vectors import META_KEY, make_table, read_metadata, read_vectors, write_vectors
from core.reuse import examples
from core.reuse.examples import MAX_EXAMPLES, load_examples, parse_examples
from core.reuse.merge import replay_recipe
from core.reuse.merge_plan import plan_merge
from core.reuse.novelty import load_rule
from core.reuse.references import reference_tasks
from core.reuse.task import pool_recipe, task_steps
from core.textio import FORMULA_START, NUMBER
from tests.core.pool.test_userpool import GOOD, fake_embed, model_folder, zip_bytes

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".streamlit" / "config.toml"
HEADER = "name,source,kind,base\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"


# ---- the world a row runs in -------------------------------------------------------------------------------------

@dataclass
class World:
    """``root`` holds the user folder (one model already added), an allowed folder, a folder outside every allowed
    root, a small merge catalog, and ``inputs`` where rows put the files they hand in (not watched)."""

    root: Path
    pool: UserPool
    base: Path
    merge_catalog: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def sparse(self, name: str, size: int) -> Path:
        """A file of ``size`` bytes that takes no room on disk."""
        path = self.write(name, b"")
        with open(path, "r+b") as handle:
            handle.truncate(size)
        return path

    def pool_with(self, budget: int) -> UserPool:
        return UserPool(self.pool.root, roots=self.pool.roots, embed=self.pool.embed, budget=budget)


@pytest.fixture
def world(tmp_path) -> World:
    return make_world(tmp_path)


def make_world(tmp_path: Path) -> World:
    """The world of one row (bench/hostile_replay.py builds it too, outside pytest)."""
    user, allowed, outside = tmp_path / "user", tmp_path / "allowed", tmp_path / "outside"
    (allowed / "base").mkdir(parents=True)
    model_folder(allowed / "legal-lora")
    model_folder(outside / "foreign")
    (outside / "secret.txt").write_text("not for the app")
    (allowed / "link").symlink_to(outside / "foreign")
    (allowed / "loop").symlink_to(allowed / "loop")
    pool = UserPool(user, roots=[user.resolve(), allowed.resolve()], embed=fake_embed())
    pool.add_local(allowed / "legal-lora", base=allowed / "base", labels={"domain": "legal"})
    pool.add_zip(zip_bytes(GOOD), base=allowed / "base", name="zipped")
    merge_catalog = tmp_path / "pools" / "catalog.csv"
    merge_catalog.parent.mkdir()
    merge_catalog.write_text(HEADER + "a,./a,lora,./base\nb,./b,lora,./base\n")
    (tmp_path / "inputs").mkdir()
    return World(tmp_path, pool, allowed / "base", merge_catalog)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under ``root`` but ``inputs``; links by their target."""
    seen = {}
    for top, folders, files in os.walk(root):
        folders[:] = [f for f in folders if Path(top, f) != root / "inputs"]
        for name in folders + files:
            path = Path(top, name)
            key = str(path.relative_to(root))
            seen[key] = (f"-> {os.readlink(path)}".encode() if path.is_symlink()
                         else None if path.is_dir() else path.read_bytes() if path.is_file()
                         else b"<special file>")                     # a pipe: reading it would wait for ever
    return seen


# ---- how rows hand their input in ----------------------------------------------------------------------------------

Make = Callable[[World], Callable[[], object]]


def catalog(data: str | bytes, name: str = "catalog.csv") -> Make:
    return lambda w: (lambda path=w.write(name, data): read_catalog(path))


def catalog_file(path: Callable[[World], Path]) -> Make:
    return lambda w: (lambda p=path(w): read_catalog(p))


def task(data: str | bytes | Callable[[], bytes], filename: str) -> Make:
    def make(w: World):
        content = data() if callable(data) else data
        return lambda: parse_examples(content.encode() if isinstance(content, str) else content, filename)
    return make


def task_file(path: Callable[[World], Path]) -> Make:
    return lambda w: (lambda p=path(w): load_examples(p))


def pool_of(w: World, room: int | None) -> UserPool:
    """The world's user pool; with ``room`` bytes left in its disk budget when given."""
    return w.pool if room is None else w.pool_with(userpool.folder_bytes(w.pool.root) + room)


def upload(data: bytes | Callable[[], bytes], name: str = "upload", room: int | None = None) -> Make:
    def make(w: World):
        content = data() if callable(data) else data
        return lambda pool=pool_of(w, room): pool.add_zip(content, base=w.base, name=name)
    return make


def hub(hub_id: str, room: int | None = None) -> Make:
    return lambda w: (lambda pool=pool_of(w, room): pool.add_hub(hub_id, base=w.base))


def local(path: Callable[[World], str | Path], room: int | None = None) -> Make:
    return lambda w: (lambda p=path(w), pool=pool_of(w, room): pool.add_local(p, base=w.base))


def linked_model(file: str, target: Callable[[World], Path]) -> Make:
    """A model folder inside the allowed root whose ``file`` is a link to ``target`` (elsewhere), added in place."""
    def make(w: World):
        folder = model_folder(w.root / "allowed" / f"linked-{file.replace('.', '-')}")
        (folder / file).unlink(missing_ok=True)
        (folder / file).symlink_to(target(w))
        return lambda: w.pool.add_local(folder, base=w.base)
    return make


def piped_model(file: str) -> Make:
    """A model folder inside the allowed root whose ``file`` is a named pipe (a read would wait for ever)."""
    def make(w: World):
        folder = model_folder(w.root / "allowed" / "piped")
        (folder / file).unlink()
        os.mkfifo(folder / file)
        return lambda: w.pool.add_local(folder, base=w.base)
    return make


def vectors_file(table_of: Callable[[], object]) -> Make:
    return lambda w: (lambda p=write_vectors(table_of(), w.inputs / "v.parquet"): read_vectors(p))


def merge(names, method="ties", weights="auto", density=None) -> Make:
    return lambda w: (lambda: plan_merge(w.merge_catalog, names, method, weights, density))


def recipe(text: str | bytes | None) -> Make:
    def make(w: World):
        path = w.inputs / "none.yaml" if text is None else w.write("recipe.yaml", text)
        return lambda: replay_recipe(path, None, w.root / "merged")
    return make


def probes(data: str | bytes | None, name: str = "probes.txt") -> Make:
    return lambda w: (lambda path=w.inputs / name if data is None else w.write(name, data): load_probes(path))


def jsonl(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def rows(n: int, sep: str = ",") -> str:
    return f"instruction{sep}response\n" + "".join(f"q{i}{sep}a{i}\n" for i in range(n))


def a_zip(files: dict, links: dict | None = None) -> bytes:
    return zip_bytes({"adapter_config.json": "{}", "adapter_model.safetensors": b"\0" * 8, **files}, links)


def patched(data: bytes, member: str, offset: int, value: int, size: int = 4) -> bytes:
    """``data`` (a zip) with one field of ``member``'s central-directory record set to ``value``: the sizes, flags or
    compression method that a hand-made malicious archive can claim."""
    out, pos = bytearray(data), data.index(b"PK\x01\x02")
    while pos >= 0:
        length = struct.unpack_from("<H", out, pos + 28)[0]
        if out[pos + 46: pos + 46 + length].decode() == member:
            struct.pack_into("<I" if size == 4 else "<H", out, pos + offset, value)
            return bytes(out)
        pos = data.find(b"PK\x01\x02", pos + 46)
    raise AssertionError(f"no member {member}")


def stored_zip(files: dict | list[tuple[str, str]]) -> bytes:
    """A zip whose members are stored uncompressed (so a byte of their content can be flipped); given as pairs, it
    may hold one name twice (archivers warn, but write it)."""
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        warnings.simplefilter("ignore", UserWarning)                  # "Duplicate name"
        for name, content in (files.items() if isinstance(files, dict) else files):
            archive.writestr(name, content)
    return buffer.getvalue()


def bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("adapter_config.json", "{}")
        archive.writestr("adapter_model.safetensors", b"\0" * (3 * 2**20))  # 3 MB of zeros in 3 KB
    return buffer.getvalue()


def flipped() -> bytes:
    data = stored_zip({"adapter_config.json": "{}", "adapter_model.safetensors": b"WEIGHTS-WEIGHTS"})
    return data.replace(b"WEIGHTS-WEIGHTS", b"WEIGHTS-WEIGHTZ")


CENTRAL_FLAGS, CENTRAL_METHOD, CENTRAL_SIZE = 8, 10, 24   # offsets in a central-directory record
OUT = "outside"   # the folder next to the user folder that zip-slip entries aim at (see World)


def aligned(table_of: Callable[[], object], catalog_text: str = HEADER + "a,./a,lora,./base\nb,./b,lora,./base\n") -> Make:
    """A vector file checked against the catalog beside it, as find, report and the map do before any ranking."""
    def make(w: World):
        path = w.write("pool/catalog.csv", catalog_text)
        vectors = write_vectors(table_of(), w.inputs / "pool" / "vectors.parquet")
        return lambda: read_catalog(path).align(read_vectors(vectors), vectors)
    return make


def vector_bytes(name: str, data: Callable[[Path], None]) -> Make:
    """A vector file written by ``data`` (raw bytes, other columns, broken settings), then read with its settings."""
    def make(w: World):
        path = w.inputs / name
        data(path)
        return lambda: (read_vectors(path), read_metadata(path))
    return make


def parquet_with(columns: dict, meta: bytes | None = None) -> Callable[[Path], None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(path: Path) -> None:
        table = pa.table(columns)
        pq.write_table(table.replace_schema_metadata({META_KEY: meta}) if meta is not None else table, path)
    return write


def source(text: str) -> Make:
    """A catalog's model source, resolved as the engine does before it embeds."""
    return lambda w: (lambda: resolve_source(parse_source(text, w.inputs)))


def settings_file(name: str, text: str, read: Callable[[Path], object]) -> Make:
    """One of a pool's settings files beside its catalog (search.json, novelty.json, recipe.json)."""
    def make(w: World):
        w.write(f"pool/{name}", text)
        return lambda: read(w.inputs / "pool" / "catalog.csv")
    return make


def reference_folder(files: dict) -> Make:
    def make(w: World):
        folder = w.inputs / "references"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        return lambda: reference_tasks(folder)
    return make


def special(name: str, read: Callable[[Path], object], kind: str = "pipe") -> Make:
    """A path that names a named pipe (a read would wait for ever) or a folder, handed to ``read``."""
    def make(w: World):
        path = w.inputs / name
        os.mkfifo(path) if kind == "pipe" else path.mkdir()
        return lambda: read(path)
    return make


def surrogate(field: str = "instruction", code: str = "\\ud800") -> str:
    other = "response" if field == "instruction" else "instruction"
    return f'{{"{field}": "a{code}b", "{other}": "c"}}\n{{"instruction": "x", "response": "y"}}\n'


def bad(id_: str, make: Make, value: str, fix: str):
    """One bad input: the message must name ``value`` (literally) and then say ``fix`` (a regex)."""
    return pytest.param(make, re.escape(value) + ".*" + fix, id=id_)


BAD = [
    # -- catalog CSV ------------------------------------------------------------------------------------------------
    bad("catalog-missing-column", catalog("name,source,base\nx,./x,./b\n", "nokind.csv"),
        "nokind.csv, line 1: missing column(s) kind", "the header must include name, source, kind, base"),
    bad("catalog-duplicate-name", catalog(HEADER + "a,./a,lora,./b\na,./c,lora,./b\n"),
        "line 3, column 'name': 'a' already used on line 2", "names must be unique"),
    bad("catalog-empty", catalog(b"", "empty.csv"), "empty.csv is empty", "the first line must name the columns"),
    bad("catalog-header-only", catalog(HEADER, "header.csv"), "header.csv lists no model", "add one row per model"),
    bad("catalog-huge", catalog_file(lambda w: w.sparse("huge.csv", 21 * 2**20)), "huge.csv is 21.0 MiB",
        "the limit is 20 MiB: split the pool into several catalogs"),
    bad("catalog-not-utf8", catalog(HEADER.encode() + b"caf\xe9,./a,lora,./b\n", "latin1.csv"),
        "latin1.csv, line 2, column 4: byte 0xe9 is not UTF-8", "save the catalog as CSV UTF-8"),
    bad("catalog-utf16", catalog(HEADER.encode("utf-16"), "utf16.csv"), "utf16.csv, line 1: holds a NUL byte",
        "save the catalog as CSV UTF-8"),
    bad("catalog-binary", catalog(PNG * 10, "picture.csv"), "picture.csv, line 3: holds a NUL byte",
        "binary .*save the catalog as CSV UTF-8"),
    bad("catalog-unknown-kind", catalog(HEADER + "a,./a,adapter,./b\n"), "unknown kind 'adapter'",
        "use one of lora, full, auto"),
    bad("catalog-empty-cell", catalog(HEADER + "a,,lora,./b\n"), "line 2, column 'source': empty",
        "every model needs a source"),
    bad("catalog-short-row", catalog(HEADER + "a,./a,lora\n"), "line 2: 3 fields but the header has 4",
        "quote values that contain commas"),
    bad("catalog-unclosed-quote", catalog(HEADER + 'a,"./a,lora,./b\n'), "line 2: 2 fields but the header has 4",
        "close every quote you open"),
    bad("catalog-duplicate-column", catalog("name,source,kind,base,domain,domain\na,./a,lora,./b,x,y\n"),
        "line 1: column 'domain' appears twice", "keep one"),
    bad("catalog-unnamed-column", catalog("name,source,kind,base,,note\na,./a,lora,./b,x,y\n"),
        "line 1: column 5 has no name", "name it or delete it"),
    bad("catalog-cell-over-field-limit", catalog(HEADER + 'a,"' + "x" * 140_000 + "\n"),
        "line 2: not valid CSV (field larger than field limit", "check the quotes on that line"),
    bad("catalog-control-character", catalog(HEADER + "a,./a\x1bb,lora,./b\n"),
        "line 2: Model source './a\\x1bb' holds a control character", "write the folder path or hub id on one line"),
    bad("catalog-hub-revision-traversal", catalog(HEADER + "a,org/model@../../etc,lora,org/base\n"),
        "line 2: 'org/model@../../etc' is not a hub id ('..' is not allowed", "write it as organisation/model"),
    bad("catalog-unknown-home", catalog(HEADER + "a,~nosuchuser-da/x,lora,./b\n"),
        "'~nosuchuser-da/x' starts with ~ but names no user", "write the full path"),
    bad("catalog-missing-file", catalog_file(lambda w: w.inputs / "nope.csv"), "nope.csv does not exist",
        "give the path of a CSV file with columns name, source, kind, base"),
    # -- task example files, in each accepted format ----------------------------------------------------------------
    *[bad(f"examples-empty-{fmt}", task(content, f"e.{fmt}"), f"e.{fmt} is empty", "write at least 2 examples")
      for fmt, content in [("jsonl", b""), ("json", b"  \n"), ("csv", b""), ("tsv", b"\n\n"), ("txt", b"   ")]],
    *[bad(f"examples-one-{fmt}", task(content, f"one.{fmt}"), f"one.{fmt} holds 1 example", "give at least 2")
      for fmt, content in [("jsonl", jsonl([{"instruction": "q", "response": "a"}])),
                           ("json", json.dumps([{"prompt": "q", "completion": "a"}])),
                           ("csv", rows(1)), ("tsv", rows(1, "\t")), ("txt", "Just one paragraph.\n")]],
    bad("examples-10000-jsonl", task(jsonl([{"question": f"q{i}", "answer": "a"} for i in range(10_000)]), "m.jsonl"),
        "m.jsonl holds 10000 examples; the limit is 1000", "keep a representative subset"),
    bad("examples-10000-csv", task(rows(10_000), "m.csv"), "m.csv holds 10000 examples", "keep a representative"),
    bad("examples-10000-txt", task("\n\n".join(f"Example {i}." for i in range(10_000)), "m.txt"),
        "m.txt holds 10000 examples", "keep a representative subset"),
    bad("examples-binary-jsonl", task(PNG, "picture.jsonl"), "picture.jsonl, line 3: holds a NUL byte",
        "save the examples as UTF-8 text"),
    bad("examples-binary-unknown-suffix", task(b"MZ\x90\x00\x03" * 50, "setup.exe"),
        "setup.exe, line 1: holds a NUL byte", "save the examples as UTF-8 text"),
    bad("examples-utf16-txt", task("Hello\n\nWorld\n".encode("utf-16"), "u.txt"), "u.txt, line 1: holds a NUL byte",
        "save the examples as UTF-8 text"),
    bad("examples-latin1-csv", task(rows(2).encode() + b"caf\xe9,x\n", "l.csv"),
        "l.csv, line 4, column 4: byte 0xe9 is not UTF-8", "save the examples as UTF-8"),
    bad("examples-wrong-fields-jsonl", task(jsonl([{"foo": "x", "bar": "y"}] * 3), "f.jsonl"),
        "f.jsonl, line 1: no usable field names (found: bar, foo)", "use instruction/response"),
    bad("examples-wrong-fields-csv", task("name,age\nann,3\nbob,4\n", "f.csv"),
        "f.csv, line 2: no usable field names (found: age, name)", "use instruction/response"),
    bad("examples-wrong-fields-json", task(json.dumps([{"q": "x", "a": "y"}] * 2), "f.json"),
        "f.json, line 1: no usable field names (found: a, q)", "use instruction/response"),
    bad("examples-json-not-a-list", task('"just a string"', "s.json"), "s.json, line 1: a JSON examples file must",
        "be a list of objects"),
    bad("examples-json-list-of-numbers", task("[1, 2, 3]", "n.json"),
        "n.json, line 1: expected an object with fields", r"instruction/response.*found int"),
    bad("examples-deeply-nested-json", task("[" * 100_000 + "]" * 100_000, "deep.json"),
        "deep.json, line 1: the JSON is nested too deeply", "each example must be one flat object"),
    bad("examples-deeply-nested-jsonl", task(jsonl([{"instruction": "q", "response": "a"}]) + '{"a": ' * 50_000
                                             + "1" + "}" * 50_000 + "\n", "deep.jsonl"),
        "deep.jsonl, line 2: the JSON is nested too deeply", "each example must be one flat object"),
    bad("examples-number-too-long", task('{"instruction": ' + "9" * 5000 + ', "response": "a"}\n', "big.jsonl"),
        "big.jsonl, line 1: the JSON holds a number too long to read", "one flat object of text fields"),
    bad("examples-50MB-line", task(lambda: b"x" * (50 * 2**20), "line.txt"), "line.txt is 50.0 MiB; the limit is 5 MiB",
        "upload fewer or shorter examples"),
    bad("examples-50MB-file-on-disk", task_file(lambda w: w.sparse("huge.jsonl", 50 * 2**20)),
        "huge.jsonl is 50.0 MiB; the limit is 5 MiB", "upload fewer or shorter examples"),
    bad("examples-field-is-an-object", task(jsonl([{"instruction": {"x": 1}, "response": "a"}] * 2), "o.jsonl"),
        "o.jsonl, line 1: field 'instruction' holds dict", "it must be text"),
    bad("examples-example-too-long", task(jsonl([{"instruction": "q", "response": "x" * 20_001}] * 2), "t.jsonl"),
        "t.jsonl, line 1: the example has 20,002 characters; the limit is 20,000", "Shorten it"),
    bad("examples-empty-response-tsv", task("prompt\tcompletion\nq\ta\nq\t \n", "r.tsv"),
        "r.tsv, line 3: the 'completion' field is empty", "every example needs a response"),
    bad("examples-csv-unclosed-quote", task('instruction,response\n"' + "x" * 140_000 + ",y\n", "q.csv"),
        "q.csv, line 2: a field is longer than 131,072 characters", "check the quotes on that line"),
    bad("examples-missing-file", task_file(lambda w: w.inputs / "gone.jsonl"), "gone.jsonl does not exist",
        "give a JSON Lines, JSON, CSV or text file"),
    # -- zip uploads ------------------------------------------------------------------------------------------------
    bad("zip-slip", upload(a_zip({f"../../../{OUT}/evil.json": "{}"})), f"'../../../{OUT}/evil.json' points outside",
        "rebuild the zip from inside the model folder"),
    bad("zip-slip-backslashes", upload(a_zip({f"..\\..\\..\\{OUT}\\evil.json": "{}"})),
        repr(f"..\\..\\..\\{OUT}\\evil.json") + " points outside", "rebuild the zip"),
    bad("zip-absolute-path", upload(a_zip({"/etc/cron.d/evil.json": "{}"})), "'/etc/cron.d/evil.json' points outside",
        "rebuild the zip from inside the model folder"),
    bad("zip-windows-drive", upload(a_zip({"C:/Windows/evil.json": "{}"})), "'C:/Windows/evil.json' points outside",
        "rebuild the zip"),
    bad("zip-symlink", upload(a_zip({}, links={"tokenizer.json": "/etc/passwd"})),
        "'tokenizer.json' is a symbolic link", "zip real files only"),
    bad("zip-bomb-declared", upload(lambda: patched(bomb(), "adapter_model.safetensors", CENTRAL_SIZE, 0xF0000000)),
        "The zip unpacks to more than the 2.0 GB allowed (3.8 GB)", "upload the adapter only"),
    bad("zip-bomb-over-the-disk-budget", upload(bomb, room=2**20),
        "unpacks to more than the 1.0 MB left in your models folder's disk budget (3.0 MB)",
        "remove some of your models first, or ask the admin to raise DELTA_ATLAS_USER_BUDGET_MB"),
    bad("zip-bomb-lying-about-its-size", upload(lambda: patched(bomb(), "adapter_model.safetensors", CENTRAL_SIZE, 10)),
        "'adapter_model.safetensors' is damaged", "zip the folder again"),
    bad("zip-pickle-bin", upload(zip_bytes({"adapter_config.json": "{}", "adapter_model.bin": b"\x80\x04"})),
        "'adapter_model.bin' holds pickle weights", "save the model with safe_serialization=True"),
    bad("zip-pickle-pkl", upload(a_zip({"extra/state.pkl": b"\x80\x04cos\nsystem\n"})),
        "'extra/state.pkl' holds pickle weights", "safe_serialization=True"),
    bad("zip-nested-zip", upload(a_zip({"inner.zip": zip_bytes(GOOD)})), "'inner.zip' is an archive inside the archive",
        "unpack the inner archive first"),
    bad("zip-not-a-zip", upload(b"this is a text file, renamed .zip"), "The upload is not a zip file",
        "zip the folder that save_pretrained wrote"),
    bad("zip-empty", upload(b""), "The upload is not a zip file", "upload it again"),
    bad("zip-cut-short", upload(lambda: a_zip({"README.md": "x" * 5000})[:200]), "is not a zip file (or it is damaged",
        "upload it again"),
    bad("zip-no-safetensors", upload(zip_bytes({"adapter_config.json": "{}"})), "The zip holds no .safetensors file",
        "save the model with safe_serialization=True"),
    bad("zip-no-config", upload(zip_bytes({"a.safetensors": b"\0"})), "holds no adapter_config.json or config.json",
        "zip the whole folder that save_pretrained wrote"),
    bad("zip-script-inside", upload(a_zip({"run.sh": "rm -rf /"})), "'run.sh' is not a model file",
        "zip only the model folder"),
    bad("zip-too-many-files", upload(a_zip({f"f{i}.json": "{}" for i in range(200)})),
        "The zip holds 202 files, over the limit of 200", "zip only the model folder"),
    bad("zip-encrypted", upload(lambda: patched(a_zip({}), "adapter_model.safetensors", CENTRAL_FLAGS, 1, 2)),
        "'adapter_model.safetensors' is encrypted", "zip the folder again without a password"),
    bad("zip-bad-crc", upload(flipped), "'adapter_model.safetensors' is damaged (Bad CRC-32", "zip the folder again"),
    bad("zip-unknown-compression",
        upload(lambda: patched(stored_zip({"adapter_config.json": "{}", "a.safetensors": b"w"}), "a.safetensors",
                               CENTRAL_METHOD, 99, 2)),
        "'a.safetensors' uses a compression this server cannot read", "zip the folder again with ordinary"),
    bad("zip-name-traversal", upload(a_zip({}), name="../x"), "The name '../x' is not allowed",
        "use letters, digits"),
    bad("zip-name-taken", upload(a_zip({}), name="legal-lora"), "You already added a model called 'legal-lora'",
        "choose another name or remove it first"),
    bad("zip-folder-full", upload(a_zip({}), name="new", room=0), "Your models folder", "is full: .*Remove some of "
        "your models first, or ask the admin to raise DELTA_ATLAS_USER_BUDGET_MB"),
    # -- hub ids and revisions --------------------------------------------------------------------------------------
    *[bad(f"hub-{id_}", hub(text), f"{text!r} is not a hub id ({why}", "write it as organisation/model")
      for id_, text, why in [
          ("path-traversal", "../../etc/passwd", "'..' is not allowed"),
          ("revision-traversal", "org/model@../../etc", "'..' is not allowed"),
          ("no-slash", "just-a-name", "it needs exactly one '/'"),
          ("two-slashes", "org/team/model", "it needs exactly one '/'"),
          ("url", "https://huggingface.co/org/model", "it needs exactly one '/'"),
          ("empty-revision", "org/model@", "nothing follows '@'"),
          ("spaces", "my org/my model", "only letters, digits"),
          ("not-ascii", "org/modèle", "only letters, digits"),
          ("double-dash", "org/mo--del", "'--' is not allowed"),
          ("name-too-long", "org/" + "m" * 200, "the organisation or model name is over 96"),
          ("revision-too-long", "org/model@" + "r" * 300, "the revision is over 200"),
          ("line-break", "org/model\nrm -rf ~", "only letters, digits"),
          ("two-revisions", "org/model@v1@v2", "only letters, digits"),
          ("empty", "", "it needs exactly one '/'"),
      ]],
    bad("hub-folder-full", hub("org/model", room=0), "Your models folder", "is full: .*Remove some of your models"),
    # -- local paths outside the allowed roots ----------------------------------------------------------------------
    bad("local-etc", local(lambda w: "/etc"), "The folder /etc is outside the folders this app may read",
        "copy the model there, or ask the admin to add its folder to DELTA_ATLAS_ALLOWED_ROOTS"),
    bad("local-relative-dotdot", local(lambda w: "../../../../etc"), "The folder ../../../../etc is outside",
        "copy the model there"),
    bad("local-dotdot-escape", local(lambda w: f"{w.root}/allowed/../{OUT}/foreign"), f"allowed/../{OUT}/foreign is "
        "outside the folders this app may read", "copy the model there"),
    bad("local-symlink-escape", local(lambda w: w.root / "allowed" / "link"), "allowed/link is outside the folders",
        "copy the model there"),
    bad("local-home", local(lambda w: "~"), "The folder ~ is outside the folders", "copy the model there"),
    bad("local-nul-byte", local(lambda w: f"{w.root}/allowed/a\0b"), "allowed/a\\x00b' holds a control character",
        "type its path on one line"),
    bad("local-empty", local(lambda w: "  "), "No folder given", "type the path of the folder"),
    bad("local-a-file", local(lambda w: w.root / "allowed" / "legal-lora" / "adapter_config.json"),
        "legal-lora/adapter_config.json is a file, not a folder", "give the folder that holds the model's files"),
    bad("local-missing", local(lambda w: w.root / "allowed" / "missing"), "allowed/missing does not exist",
        "give the folder that holds the model's files"),
    bad("local-symlink-loop", local(lambda w: w.root / "allowed" / "loop"), "allowed/loop' cannot be resolved",
        "type the full path of a real folder"),
    bad("local-name-too-long", local(lambda w: w.root / "allowed" / ("n" * 300)), "nnn' cannot be read (File name "
        "too long)", "fix the path"),
    bad("local-unknown-user", local(lambda w: "~nosuchuser-da/models"), "'~nosuchuser-da/models' cannot be resolved",
        "type the full path"),
    bad("local-folder-full", local(lambda w: w.root / "allowed" / "base", room=0), "Your models folder",
        "is full: .*Remove some of your models first"),
    bad("local-already-added", local(lambda w: w.root / "allowed" / "legal-lora"),
        "You already added a model called 'legal-lora'", "choose another name or remove it first"),
    # -- merge settings ---------------------------------------------------------------------------------------------
    bad("merge-unknown-method", merge("a,b", "average"), "Unknown merge method 'average'",
        "use one of linear, ties, dare_ties"),
    bad("merge-method-not-text", merge("a,b", ["ties"]), "Unknown merge method ['ties']", "use one of linear"),
    bad("merge-too-few-weights", merge("a,b", "linear", "0.5"), "1 weight(s) for 2 adapters (got 0.5)",
        "give exactly one weight per adapter"),
    bad("merge-too-many-weights", merge("a,b", "linear", [1, 1, 1]), "3 weight(s) for 2 adapters (got 1, 1, 1)",
        "give exactly one weight per adapter"),
    bad("merge-weights-not-numbers", merge("a,b", "linear", "heavy,light"), "Weights ['heavy', 'light'] are not "
        "numbers", "give one number per adapter"),
    bad("merge-weights-infinite", merge("a,b", "linear", "inf,1"), "Weights [inf, 1.0] include a non-finite",
        "use ordinary numbers"),
    bad("merge-weights-nan", merge("a,b", "linear", [math.nan, 1]), "Weights [nan, 1.0] include a non-finite",
        "use ordinary numbers"),
    bad("merge-negative-density", merge("a,b", "ties", "auto", -0.5), "Density -0.5 does not apply",
        r"a number in \(0, 1\] such as 0.5"),
    bad("merge-zero-density", merge("a,b", "dare_ties", "auto", 0), "Density 0.0 does not apply",
        r"a number in \(0, 1\]"),
    bad("merge-density-above-one", merge("a,b", "dare_linear", "auto", 2), "Density 2.0 does not apply",
        r"a number in \(0, 1\]"),
    bad("merge-density-for-linear", merge("a,b", "linear", "auto", 0.5), "Density 0.5 does not apply to method "
        "'linear'", "leave the density out"),
    bad("merge-density-not-a-number", merge("a,b", "ties", "auto", "half"), "Density 'half' is not a number",
        r"give a fraction in \(0, 1\]"),
    bad("merge-one-adapter", merge("a"), "at least two adapters; got 1 (a)", ""),
    bad("merge-adapter-twice", merge("a,a"), "Adapter 'a' is listed twice", "list every adapter once"),
    bad("merge-unknown-adapter", merge("a,ghost"), "catalog.csv: ghost. Known names", "a, b"),
    bad("merge-names-not-text", merge([1, 2]), "Adapters [1, 2] are not a list of names", "give the catalog names"),
    bad("merge-adapter-folder-missing", merge("a,b", "linear", "1,1"), "Cannot merge a, b: a: Model folder",
        "does not exist: fix the path"),
    # -- merge recipes ----------------------------------------------------------------------------------------------
    bad("recipe-missing", recipe(None), "none.yaml does not exist", "give the recipe.yaml of an earlier merge"),
    bad("recipe-not-yaml", recipe("method: [unclosed\n"), "recipe.yaml is not valid YAML",
        "give the recipe.yaml an earlier merge wrote"),
    bad("recipe-python-tag", recipe("!!python/object/apply:os.system ['touch pwned']\n"),
        "recipe.yaml is not valid YAML (could not determine a constructor", "give the recipe.yaml"),
    bad("recipe-not-utf8", recipe(b"method: t\xefes\n"), "recipe.yaml is not valid YAML", "give the recipe.yaml"),
    bad("recipe-missing-keys", recipe("method: ties\n"), "recipe.yaml lacks base, weights, ingredients",
        "it must hold base, method, weights, ingredients"),
    bad("recipe-a-list", recipe("- ties\n- 0.5\n"), "lacks base, method, weights, ingredients", "it must hold"),
    bad("recipe-ingredients-not-a-list", recipe("base: b\nmethod: ties\nweights: auto\ningredients: a,b\n"),
        "ingredients must be a list of {name, source} entries", ""),
    bad("recipe-seed-not-a-number",
        recipe("base: b\nmethod: ties\nweights: [1, 1]\nseed: lucky\ningredients: [{name: a, source: ./a}, "
               "{name: b, source: ./b}]\n"), "seed 'lucky' is not a whole number", "write e.g. seed: 0"),
    bad("recipe-unknown-method",
        recipe("base: b\nmethod: average\nweights: [1, 1]\ningredients: [{name: a, source: ./a}, "
               "{name: b, source: ./b}]\n"), "Unknown merge method 'average'", "use one of"),
    bad("recipe-density-text",
        recipe("base: b\nmethod: ties\nweights: [1, 1]\ndensity: half\ningredients: [{name: a, source: ./a}, "
               "{name: b, source: ./b}]\n"), "Density 'half' is not a number", r"give a fraction in \(0, 1\]"),
    bad("recipe-weights-a-mapping",
        recipe("base: b\nmethod: ties\nweights: {a: 1}\ningredients: [{name: a, source: ./a}, "
               "{name: b, source: ./b}]\n"), "Weights {'a': 1} are not numbers", "give one number per adapter"),
    # -- probe files ------------------------------------------------------------------------------------------------
    bad("probes-missing", probes(None, "gone.txt"), "Probe file", "gone.txt does not exist: pass a text file"),
    bad("probes-empty", probes("\n\n  \n"), "probes.txt holds no probe", "write at least one non-empty prompt"),
    bad("probes-empty-list", probes("[]", "p.json"), "p.json holds no probe", "write at least one"),
    bad("probes-json-object", probes('{"probes": ["a"]}', "p.json"), "p.json holds dict",
        "it must hold a JSON list of strings"),
    bad("probes-json-numbers", probes("[1, 2]", "p.json"), "p.json holds a list with int", "a JSON list of strings"),
    bad("probes-bad-json", probes('["a",', "p.json"), "p.json is not valid JSON (line 1", "a list of strings"),
    bad("probes-deeply-nested", probes("[" * 100_000 + "]" * 100_000, "p.json"), "p.json is JSON that cannot be read",
        "a flat list of strings"),
    bad("probes-too-many", probes("\n\n".join(f"Probe {i}." for i in range(MAX_PROBES + 1))),
        f"holds {MAX_PROBES + 1} probes; the limit is {MAX_PROBES}", "keep fewer"),
    bad("probes-not-utf8", probes(b"Below is \xff an instruction.\n"), "probes.txt, line 1, column 10: byte 0xff is "
        "not UTF-8", "save the probes as UTF-8"),
    bad("probes-binary", probes(PNG), "probes.txt, line 3: holds a NUL byte", "save the probes as UTF-8 text"),
    bad("probes-huge", lambda w: (lambda p=w.sparse("huge.txt", 3 * 2**20): load_probes(p)), "huge.txt is 3.0 MiB",
        "the limit is 2 MiB: keep at most 1000 probes"),
    # -- round two: links and special files inside an allowed folder, vector files, recipes, reserved labels --------
    bad("local-weights-link-out", linked_model("adapter_model.safetensors", lambda w: w.root / "outside" / "secret.txt"),
        "adapter_model.safetensors is a link to", "outside the model folder: copy the file into the folder"),
    bad("local-config-link-to-system-file", linked_model("adapter_config.json", lambda w: Path("/etc/passwd")),
        "adapter_config.json is a link to /etc/passwd", "outside the model folder"),
    bad("local-tokenizer-broken-link", linked_model("tokenizer.json",
                                                    lambda w: w.root / "allowed" / "linked-tokenizer-json" / "gone.json"),
        "tokenizer.json is a broken link", "remove it or copy the file"),
    bad("local-weights-named-pipe", piped_model("adapter_model.safetensors"),
        "adapter_model.safetensors is not a regular file", "remove it from the model folder"),
    bad("vectors-duplicate-name", vectors_file(lambda: make_table(["a", "a"], [[1.0, 0.0], [0.0, 1.0]])),
        "names 'a' more than once", "keep one row per model"),
    bad("vectors-nan", vectors_file(lambda: make_table(["a", "b"], [[math.nan, 0.0], [0.0, 1.0]])),
        "the vector of 'a' holds values that are not finite", "recompute it"),
    bad("vectors-infinite", vectors_file(lambda: make_table(["a", "b"], [[1.0, 0.0], [0.0, math.inf]])),
        "the vector of 'b' holds values that are not finite", "recompute it"),
    bad("recipe-yaml-aliases", recipe("a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"),
        "recipe.yaml uses YAML aliases", "write every value out"),
    bad("recipe-huge", lambda w: (lambda p=w.sparse("recipe.yaml", 2**20): replay_recipe(p, None, w.root / "m")),
        "recipe.yaml is 1,048,576 bytes", "give the recipe.yaml an earlier merge wrote"),
    bad("catalog-reserved-label-vector", catalog(HEADER.strip() + ",vector\na,./a,lora,./b,x\n"),
        "line 1: column 'vector' is a name the app uses", "rename that label column"),
    bad("catalog-reserved-label-x", catalog(HEADER.strip() + ",X\na,./a,lora,./b,1\n"),
        "line 1: column 'X' is a name the app uses", "rename that label column, e.g. to 'X_label'"),
    # -- round two, continued: a vector file against its catalog, surrogates, zip layouts, sources, settings --------
    bad("vectors-unknown-model", aligned(lambda: make_table(["a", "c"], [[1.0, 0.0], [0.0, 1.0]])),
        "holds 1 model(s) that catalog", r"\('c'\).*Recompute it with `python -m core embed --catalog"),
    bad("vectors-of-another-catalog", aligned(lambda: make_table([f"x{i}" for i in range(7)], [[1.0, 0.0]] * 7)),
        "holds 7 model(s) that catalog", r"'x4' \.\.\.\).*made for another catalog"),
    bad("vectors-ragged-widths", vectors_file(lambda: pd.DataFrame({"name": ["a", "b"],
                                                                    "vector": [np.ones(2), np.ones(1)]})),
        "mixes vectors of 2 widths", "keep one base per file"),
    bad("vectors-empty-vectors", vectors_file(lambda: make_table(["a", "b"], [[], []])),
        "holds empty vectors", "recompute it"),
    bad("vectors-blank-name", vectors_file(lambda: make_table(["a", " "], [[1.0, 0.0], [0.0, 1.0]])),
        "row 2 has no model name", "name every row after its model"),
    bad("vectors-not-parquet", vector_bytes("v.parquet", lambda p: p.write_text("name,vector\na,[1]\n")),
        "v.parquet cannot be read", "recompute it with `python -m core embed`"),
    bad("vectors-no-name-column", vector_bytes("v.parquet", parquet_with({"model": ["a"], "vector": [[1.0]]})),
        "v.parquet lacks a 'name' or 'vector' column", "recompute it"),
    bad("vectors-settings-not-json", vector_bytes("v.parquet", parquet_with({"name": ["a"], "vector": [[1.0]]},
                                                                             b"{not json")),
        "The settings stored in vector file", "cannot be read .*recompute it"),
    bad("vectors-settings-a-list", vector_bytes("v.parquet", parquet_with({"name": ["a"], "vector": [[1.0]]},
                                                                           b"[1, 2]")),
        "The settings stored in vector file", "are not a JSON object"),
    bad("vectors-csv-cell-not-a-list", vector_bytes("v.csv", lambda p: p.write_text('name,vector\na,"[1, 2"\n')),
        "v.csv cannot be read", "recompute it"),
    bad("examples-lone-surrogate-jsonl", task(surrogate(), "t.jsonl"),
        "t.jsonl, line 1: field 'instruction' holds the escape \\ud800", "half of a character pair: fix or remove"),
    bad("examples-lone-low-surrogate-response", task(surrogate("response", "\\udc41"), "t.jsonl"),
        "field 'response' holds the escape \\udc41 at character 2", "fix or remove that escape"),
    bad("examples-lone-surrogate-json-list", task("[" + surrogate().strip().replace("\n", ",") + "]", "t.json"),
        "t.json, line 1: field 'instruction' holds the escape", "fix or remove"),
    bad("zip-file-and-folder-one-name", upload(a_zip({"notes.txt": "a", "notes.txt/inner.txt": "b"})),
        "both a file and a folder named 'notes.txt'", "rename one of them"),
    bad("zip-same-file-twice", upload(lambda: stored_zip([("adapter_config.json", "{}"),
                                                                ("adapter_model.safetensors", "x"),
                                                                ("adapter_config.json", "{}")])),
        "holds 'adapter_config.json' twice", "so that each file is in it once"),
    bad("zip-name-too-long", upload(a_zip({"a" * 300 + ".txt": "x"})), "has a name of 304 bytes",
        "the limit is 255: rename it"),
    bad("zip-nested-too-deep", upload(a_zip({"/".join(["d"] * 30) + "/x.txt": "y"})), "is nested 30 folders deep",
        "the limit is 12: zip the model folder itself"),
    bad("zip-hidden-top-folder", upload(lambda: stored_zip({".model/adapter_config.json": "{}",
                                                           ".model/adapter_model.safetensors": "x"})),
        "sits in the folder '.model', whose name starts with a dot", "rename the folder without the dot"),
    bad("catalog-hub-id-with-space", source("org/my model"), "does not exist",
        "If 'org/my model' was meant as a hub id, it is not one: only letters"),
    bad("hub-id-with-space", hub("org/my model"), "'org/my model' is not a hub id", "only letters, digits"),
    bad("hub-id-two-slashes", hub("org/team/model"), "'org/team/model' is not a hub id", "exactly one '/'"),
    bad("hub-id-empty-revision", hub("org/model@"), "'org/model@' is not a hub id", "nothing follows '@'"),
    bad("catalog-reserved-label-similarity", catalog(HEADER.strip() + ",similarity\na,./a,lora,./b,0.9\n"),
        "column 'similarity' is a name the app uses", "rename that label column"),
    bad("catalog-reserved-label-cluster", catalog(HEADER.strip() + ",cluster\na,./a,lora,./b,3\n"),
        "column 'cluster' is a name the app uses", "rename that label column"),
    bad("catalog-reserved-label-origin", catalog(HEADER.strip() + ",origin\na,./a,lora,./b,hub\n"),
        "column 'origin' is a name the app uses", "rename that label column"),
    bad("catalog-reserved-label-y", catalog(HEADER.strip() + ",y\na,./a,lora,./b,1\n"),
        "column 'y' is a name the app uses", "rename that label column"),
    bad("recipe-yaml-merge-key", recipe("base: &b {x: 1}\nmethod: ties\nother:\n  <<: *b\n"),
        "recipe.yaml uses YAML aliases", "write every value out"),
    bad("recipe-yaml-deep-nesting", recipe("a: " + "[" * 5000 + "]" * 5000 + "\n"),
        "recipe.yaml nests lists or mappings too deeply", "a merge recipe is flat"),
    bad("recipe-key-twice", recipe("base: a\nbase: b\nmethod: ties\nweights: auto\ningredients: []\n"),
        "recipe.yaml is not valid YAML (the key 'base' is given twice)", "fix the line it names"),
    bad("search-settings-negative-steps", settings_file("search.json", '{"steps": -3}', task_steps),
        "search.json cannot be read (steps must be a positive whole number, got -3)", "fix or delete it"),
    bad("search-settings-not-json", settings_file("search.json", "steps = 3", task_steps),
        "search.json cannot be read", "fix or delete it"),
    bad("novelty-settings-margin-text", settings_file("novelty.json", '{"margin": "wide"}',
                                                      lambda c: load_rule(c.parent / "novelty.json")),
        "novelty.json cannot be read", "fix it or delete it to use the default settings"),
    bad("novelty-settings-margin-nan", settings_file("novelty.json", '{"margin": NaN}',
                                                     lambda c: load_rule(c.parent / "novelty.json").fit(np.eye(4))),
        "CloseMatchRule(margin=nan)", "give a finite number"),
    bad("pool-recipe-not-json", settings_file("recipe.json", "{rank: 8", pool_recipe),
        "recipe.json cannot be read", "fix or delete it"),
    bad("reference-tasks-too-few", reference_folder({"a.jsonl": surrogate().replace("\\ud800", ""),
                                                     "b.jsonl": surrogate().replace("\\ud800", "")}),
        "holds 2 reference tasks", "give at least 3 .jsonl files of tasks that fit none"),
    bad("catalog-a-named-pipe", special("catalog.csv", read_catalog), "catalog.csv is not a regular file",
        "give the path of a CSV file"),
    bad("examples-a-named-pipe", special("task.jsonl", load_examples), "task.jsonl is not a regular file",
        "give a JSON Lines, JSON, CSV or text file"),
    bad("examples-a-folder", special("task.jsonl", load_examples, "folder"), "task.jsonl is a folder, not a file",
        "give a JSON Lines"),
    bad("probes-a-named-pipe", special("probes.txt", load_probes), "probes.txt is not a regular file", "pass a text file"),
    bad("vectors-a-named-pipe", special("v.parquet", read_vectors), "v.parquet is not a regular file",
        "run `python -m core embed`"),
    bad("recipe-a-named-pipe", special("recipe.yaml", lambda p: replay_recipe(p, None, p.parent / "m")),
        "recipe.yaml is not a regular file", "give the recipe.yaml of an earlier merge"),
    bad("reference-task-bad-file", reference_folder({"a.jsonl": "x", "b.jsonl": "y", "c.jsonl": "z"}),
        "a.jsonl, line 1", ""),
]

def test_the_table_is_big_and_distinct():
    ids = [p.id for p in BAD]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize("make, pattern", BAD)
def test_bad_input_is_refused_clearly_and_changes_nothing(world, make, pattern):
    call = make(world)                                  # the row writes its input (under inputs/) first
    before = snapshot(world.root)
    rows_before = world.pool.rows()
    with pytest.raises(DeltaAtlasError) as caught:
        call()
    message = str(caught.value)
    assert re.search(pattern, message, re.S), message
    assert "Traceback" not in message
    assert snapshot(world.root) == before               # nothing outside the user folder, nor in it, changed
    assert world.pool.rows() == rows_before and [p.name for p in world.pool.models_dir.iterdir()] == ["zipped"]
    assert not Path("pwned").exists()


# ---- CSV cells a spreadsheet would run ------------------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
            "@SUM(1+9)*cmd|' /C calc'!A0", "=1+1", "-", "+"]
HARMLESS = ["-0.5", "+3", "1e-5", "plain text", "", "a=b", "'quoted"]


def raw_cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def assert_neutralised(path: Path) -> None:
    for cell in raw_cells(path):
        assert not cell.startswith(FORMULA_START) or NUMBER.match(cell), (cell, path)


@pytest.mark.parametrize("formula", FORMULAS)
def test_formula_cells_are_neutralised_in_every_csv_written(tmp_path, formula):
    """In a cell and as a column name; harmless cells (numbers too) are written as they are."""
    rows = [{"name": f"m{i}", "source": "./m", "kind": "lora", "base": "./b", "note": formula, "other": harmless,
             formula: "x"} for i, harmless in enumerate(HARMLESS)]
    catalog_path = write_catalog(rows, tmp_path / "catalog.csv")
    assert_neutralised(catalog_path)
    read = read_catalog(catalog_path)
    assert [e.labels for e in read] == [{"note": formula, "other": h, formula: "x"} for h in HARMLESS]
    assert {"note": formula} == {"note": UserPool(tmp_path).rows()[0]["note"]}  # the app's table shows what was typed
    table = make_table(read.names, [[0.5, -1.0]] * len(rows), read.labels_frame())
    vectors_path = write_vectors(table, tmp_path / "vectors.csv")   # the map's "Vectors (CSV)" download
    assert_neutralised(vectors_path)
    back = read_vectors(vectors_path)
    assert list(back["note"]) == [formula] * len(rows) and list(back["other"]) == HARMLESS
    assert list(back["vector"][0]) == [0.5, -1.0]


def test_projection_points_csv_is_neutralised(tmp_path):
    from argparse import Namespace

    from core.map.projection import main

    names = ["=1+1", "@x", "plain", "-y", "+z", "q"]
    table = make_table(names, [[float(i), float(i % 2), 1.0] for i in range(len(names))])
    table["domain"] = ["=cmd", "a", "b", "a", "b", "a"]
    write_vectors(table, tmp_path / "v.parquet")
    main(Namespace(vectors=str(tmp_path / "v.parquet"), method="pca", clusters="2", color_by=None,
                   out=str(tmp_path / "points.csv"), seed=0, json=True))
    assert_neutralised(tmp_path / "points.csv")
    assert "'=1+1" in raw_cells(tmp_path / "points.csv")


def test_a_label_typed_in_the_app_is_neutralised_on_disk(world):
    world.pool.add_local(model_folder(world.root / "allowed" / "math"), base=world.base, labels={"note": "=1+1"})
    assert_neutralised(world.pool.catalog_path)
    assert world.pool.rows()[-1]["note"] == "=1+1" and world.pool.catalog().get("math").labels["note"] == "=1+1"


# ---- fuzzing the parsers ------------------------------------------------------------------------------------------

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


# ---- limits ---------------------------------------------------------------------------------------------------------

def upload_cap() -> int:
    """Streamlit's upload limit, in bytes (server.maxUploadSize is in MB of 2**20 bytes)."""
    return tomllib.loads(CONFIG.read_text())["server"]["maxUploadSize"] * 2**20


def test_core_caps_agree_with_the_streamlit_upload_cap():
    assert userpool.MAX_ZIP_BYTES == upload_cap()               # the largest upload the app takes: a zipped adapter
    assert examples.MAX_FILE_BYTES <= upload_cap()              # example files are capped lower again in core
    assert userpool.MAX_UNPACKED_BYTES <= userpool.DEFAULT_BUDGET_MB * 2**20


@pytest.fixture
def over_the_cap(tmp_path_factory):
    """An upload 1 MB over Streamlit's cap, as a memory map of a sparse file: real size, nothing in memory."""
    path = tmp_path_factory.mktemp("upload") / "big.upload"
    with open(path, "wb") as handle:
        handle.truncate(upload_cap() + 2**20)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield data


def test_core_refuses_an_upload_over_the_cap(world, over_the_cap):
    cap_mb = upload_cap() // 2**20
    before = snapshot(world.root)
    with pytest.raises(DeltaAtlasError, match=rf"The upload is {cap_mb + 1} MB, over the {cap_mb} MB limit: upload "
                                              "the adapter only"):
        world.pool.add_zip(over_the_cap, base=world.base, name="big")
    with pytest.raises(DeltaAtlasError, match=rf"task.jsonl is {cap_mb + 1}.0 MiB; the limit is 5 MiB: upload fewer"):
        parse_examples(over_the_cap, "task.jsonl")
    assert snapshot(world.root) == before


def test_the_disk_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(userpool.BUDGET_ENV, raising=False)
    assert userpool.budget_bytes() == userpool.DEFAULT_BUDGET_MB * 2**20
    monkeypatch.setenv(userpool.BUDGET_ENV, "1.5")
    assert userpool.budget_bytes() == int(1.5 * 2**20)
    for wrong in ("lots", "-1", "nan"):
        monkeypatch.setenv(userpool.BUDGET_ENV, wrong)
        with pytest.raises(DeltaAtlasError, match=f"DELTA_ATLAS_USER_BUDGET_MB='{wrong}' is not a number of "
                                                  "megabytes: the admin should set it to e.g. 4096"):
            userpool.budget_bytes()


def test_a_zip_that_does_not_fit_is_refused_before_it_is_unpacked(world, monkeypatch):
    used = userpool.folder_bytes(world.pool.root)
    monkeypatch.setenv(userpool.BUDGET_ENV, str((used + 2**20) / 2**20))   # 1 MB left
    pool = UserPool(world.pool.root, roots=world.pool.roots, embed=world.pool.embed)
    data, reads = bomb(), []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: reads.append(a) or pytest.fail("read a member"))
    with pytest.raises(DeltaAtlasError, match=r"more than the 1.0 MB left in your models folder's disk budget \(3.0"):
        pool.add_zip(data, base=world.base, name="big")
    assert reads == [] and sorted(p.name for p in pool.models_dir.iterdir()) == ["zipped"]


def test_a_full_folder_takes_nothing_until_a_model_is_removed(world):
    full = world.pool_with(userpool.folder_bytes(world.pool.root))
    adds = [lambda: full.add_zip(a_zip({}), base=world.base, name="one"),
            lambda: full.add_local(model_folder(world.root / "allowed" / "two"), base=world.base),
            lambda: full.add_hub("org/three", base="org/base")]
    for add in adds:
        with pytest.raises(DeltaAtlasError, match=r"Your models folder .* is full: it holds .* of the .* allowed"):
            add()
    assert [r["name"] for r in full.rows()] == ["legal-lora", "zipped"]
    full.remove("zipped")                                # frees the unpacked upload
    full.add_hub("org/three", base="org/base")
    assert [r["name"] for r in full.rows()] == ["legal-lora", "three"]


# ---- fuzzing, round two: vector files, recipes, zip layouts, adapter configs ----------------------------------------

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

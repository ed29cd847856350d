"""How a row of the bad-input table runs: the world it runs in (a user folder with one model added, an allowed
folder, a folder outside every allowed root), the makers that hand a row's input in at its door, and the check every
row must pass — a DeltaAtlasError whose message names the value and says what to fix, and every file as it was."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from core.engine.loading import resolve_source
from core.engine.probes import load_probes
from core.errors import DeltaAtlasError
from core.pool import userpool
from core.pool.catalog import parse_source, read_catalog
from core.pool.userpool import UserPool
from core.pool.vectors import META_KEY, read_metadata, read_vectors, write_vectors
from core.reuse.examples import load_examples, parse_examples
from core.reuse.merge import replay_recipe
from core.reuse.merge_plan import plan_merge
from core.reuse.references import reference_tasks
from core.textio import FORMULA_START, NUMBER
from tests.core.pool.test_userpool import GOOD, fake_embed, model_folder, zip_bytes

ROOT = Path(__file__).resolve().parents[3]
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


def check_refused(world: World, make: Make, pattern: str) -> None:
    """The row's input is refused with a message matching ``pattern`` and nothing on disk changes."""
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


def raw_cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def assert_neutralised(path: Path) -> None:
    for cell in raw_cells(path):
        assert not cell.startswith(FORMULA_START) or NUMBER.match(cell), (cell, path)

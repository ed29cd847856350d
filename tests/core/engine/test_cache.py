"""The content-addressed vector cache: round trips, corruption, atomic writes, memoised file hashes."""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

import core.engine.cache as cache_module
from core.engine.cache import FileHasher, VectorCache, content_key, default_cache_dir, entry_key
from core.errors import DeltaAtlasError


@pytest.fixture
def cache(tmp_path) -> VectorCache:
    return VectorCache(tmp_path / "cache")


def test_round_trip_and_miss(cache):
    vector = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    key = entry_key(model="m", layer=-1)
    assert cache.get(key) is None
    cache.put(key, vector, {"name": "m"})
    got = cache.get(key)
    assert got.dtype == np.float32 and np.array_equal(got, vector)
    assert cache.get(entry_key(model="m", layer=-2)) is None


def test_keys_depend_on_every_part():
    parts = dict(model="a", base="b", probes="p", layer=-1, dtype="float32", engine="1")
    keys = {entry_key(**{**parts, name: "other"}) for name in parts}
    assert len(keys | {entry_key(**parts)}) == len(parts) + 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other_key"])
def test_corrupt_entry_is_detected_logged_and_removed(cache, caplog, damage):
    key = entry_key(model="m")
    path = cache.put(key, np.ones(16, dtype=np.float32))
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "flip":
        entry = json.loads(text)
        entry["data"] = entry["data"][:-8] + ("A" * 8 if not entry["data"].endswith("A" * 8) else "B" * 8)
        path.write_text(json.dumps(entry))
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 10)
    else:
        entry = json.loads(text)
        path.write_text(json.dumps({**entry, "key": entry_key(model="n")}))
    with caplog.at_level(logging.WARNING, logger="core.engine.cache"):
        assert cache.get(key) is None
    assert "corrupt" in caplog.text and not path.exists()


def test_a_half_written_temporary_file_is_ignored(cache):
    key = entry_key(model="m")
    path = cache.path(key)
    path.parent.mkdir(parents=True)
    (path.parent / f".{path.name}.12345.tmp").write_text('{"format": 1, "key": "')    # a killed writer's leftover
    assert cache.get(key) is None
    cache.put(key, np.zeros(3, dtype=np.float32))
    assert np.array_equal(cache.get(key), np.zeros(3, dtype=np.float32))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp") and str(os.getpid()) in p.name]


def test_interrupted_write_keeps_the_old_entry(cache, monkeypatch):
    key = entry_key(model="m")
    cache.put(key, np.ones(4, dtype=np.float32))

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key, np.full(4, 2, dtype=np.float32))
    monkeypatch.undo()
    assert np.array_equal(cache.get(key), np.ones(4, dtype=np.float32))


def test_file_hashes_are_memoised_by_size_and_mtime(tmp_path, monkeypatch):
    calls = []
    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda p: calls.append(p) or real(p))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"abc" * 1000)
    hasher = FileHasher(tmp_path / "memo.json")
    first = hasher.digest(weights)
    assert hasher.digest(weights) == first and len(calls) == 1
    hasher.save()
    assert FileHasher(tmp_path / "memo.json").digest(weights) == first and len(calls) == 1   # survives a restart
    weights.write_bytes(b"abd" * 1000)
    os.utime(weights, ns=(1, 1))
    assert FileHasher(tmp_path / "memo.json").digest(weights) != first and len(calls) == 2


def test_content_key_follows_content_not_location(tmp_path):
    hasher = FileHasher()
    one = tmp_path / "one"
    one.mkdir()
    (one / "model.safetensors").write_bytes(b"weights")
    (one / "config.json").write_text("{}")
    two = shutil.copytree(one, tmp_path / "two")
    key = content_key([one / "model.safetensors", one / "config.json"], hasher)
    assert content_key([two / "config.json", two / "model.safetensors"], hasher) == key
    (two / "model.safetensors").write_bytes(b"weightz")
    assert content_key([two / "model.safetensors", two / "config.json"], hasher) != key


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("DELTA_ATLAS_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "delta-atlas")


# -- vector files are checked where they are read ---------------------------------------------------------------
def _table(names, vectors):
    import pandas as pd

    from core.pool.vectors import make_table

    return make_table(names, np.asarray(vectors, dtype=np.float32), pd.DataFrame({"name": names, "domain": "x"}))


@pytest.mark.parametrize("names, vectors, pattern", [
    (["a", "b", "a"], [[1, 0], [0, 1], [1, 1]], "names 'a' more than once"),
    (["a", "b"], [[1, np.nan], [0, 1]], "not finite"),
    (["a", "b"], [[np.inf, 0], [0, 1]], "not finite")])
def test_vector_files_that_would_misalign_or_mislead_are_refused(tmp_path, names, vectors, pattern):
    from core.pool.vectors import read_vectors, write_vectors

    path = write_vectors(_table(names, vectors), tmp_path / "v.parquet")
    with pytest.raises(DeltaAtlasError, match=pattern):
        read_vectors(path)


def test_vectors_of_two_widths_and_broken_metadata_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.pool.vectors import META_KEY, read_metadata, read_vectors, write_vectors

    path = write_vectors(_table(["a", "b"], [[1, 0], [0, 1]]), tmp_path / "v.parquet")
    arrow = pq.read_table(path)
    wide = arrow.set_column(1, "vector", pa.array([[1.0, 0.0], [0.0, 1.0, 2.0]], type=pa.list_(pa.float32())))
    pq.write_table(wide, tmp_path / "wide.parquet")
    with pytest.raises(DeltaAtlasError, match="2 widths"):
        read_vectors(tmp_path / "wide.parquet")
    pq.write_table(arrow.replace_schema_metadata({META_KEY: b"{not json"}), tmp_path / "meta.parquet")
    with pytest.raises(DeltaAtlasError, match="settings stored in vector file .* cannot be read"):
        read_metadata(tmp_path / "meta.parquet")


def test_a_failed_vector_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from core.pool.vectors import read_vectors, write_vectors

    path = write_vectors(_table(["a"], [[1, 0]]), tmp_path / "v.parquet")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk)
    with pytest.raises(DeltaAtlasError, match="No space left on device"):
        write_vectors(_table(["b"], [[0, 1]]), path)
    assert list(read_vectors(path)["name"]) == ["a"] and [p.name for p in tmp_path.iterdir()] == ["v.parquet"]

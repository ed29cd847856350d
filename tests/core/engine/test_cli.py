"""``python -m core embed`` end to end: the vector file, its metadata, the summary and the exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from core.cli import main
from core.engine.probes import probes_digest
from core.pool.vectors import read_metadata, read_vectors
from tests.conftest import write_catalog


@pytest.fixture(scope="module")
def small_catalog(tiny_pool, tmp_path_factory):
    rows = [{"name": "a", "source": str(tiny_pool["loras"]["lora_0"]), "kind": "lora", "base": str(tiny_pool["base"]),
             "domain": "legal", "notes": "first, with a comma"},
            {"name": "b", "source": str(tiny_pool["fulls"]["full_1"]), "kind": "auto", "base": str(tiny_pool["base"]),
             "domain": "math", "notes": ""}]
    return write_catalog(tmp_path_factory.mktemp("cli") / "catalog.csv", rows)


def embed(*args) -> int:
    return main(["embed", *map(str, args)])


def test_embed_writes_parquet_with_names_vectors_labels_and_metadata(small_catalog, tmp_path, capsys):
    out = tmp_path / "vectors.parquet"
    assert embed("--catalog", small_catalog, "--out", out, "--cache-dir", tmp_path / "cache") == 0
    table = read_vectors(out)
    assert list(table.columns) == ["name", "vector", "domain", "notes"]
    assert list(table["name"]) == ["a", "b"] and list(table["notes"]) == ["first, with a comma", ""]
    assert table["vector"][0].dtype == np.float32 and len(table["vector"][0]) == 64
    meta = read_metadata(out)
    assert meta["layer"] == -1 and meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["engine_version"] and len(meta["probes_digest"]) == 16
    assert "2 computed, 0 cached, 0 failed" in capsys.readouterr().out
    assert embed("--catalog", small_catalog, "--out", out, "--cache-dir", tmp_path / "cache") == 0
    assert "0 computed, 2 cached, 0 failed" in capsys.readouterr().out


def test_embed_describe_says_what_each_model_learned(tiny_pool, tmp_path, capsys):
    rows = [{"name": n, "source": str(tiny_pool["loras"][n]), "kind": "lora", "base": str(tiny_pool["base"])}
            for n in ("lora_0", "lora_1")]
    (tmp_path / "pool").mkdir()
    catalog = write_catalog(tmp_path / "pool" / "catalog.csv", rows)
    out = tmp_path / "pool" / "vectors.parquet"
    assert embed("--catalog", catalog, "--out", out, "--cache-dir", tmp_path / "cache", "--describe") == 0
    assert "2 models described" in capsys.readouterr().out
    found = json.loads((tmp_path / "pool" / "descriptions.json").read_text())
    assert set(found["models"]) == {"lora_0", "lora_1"}
    assert all(len(m["answers"]) == 5 for m in found["models"].values())


def test_csv_output_probe_file_and_layer(small_catalog, tmp_path):
    probes = tmp_path / "probes.json"
    probes.write_text(json.dumps(["Translate this.", "Solve: 2 + 2 ="]))
    out = tmp_path / "vectors.csv"
    assert embed("--catalog", small_catalog, "--out", out, "--cache-dir", tmp_path / "cache", "--probes", probes,
                 "--layer", "1", "--adapter-batch", "1", "--device", "cpu", "--dtype", "float32") == 0
    table = read_vectors(out)
    assert list(table["name"]) == ["a", "b"] and table["vector"][0].shape == (64,)
    default = tmp_path / "default.parquet"
    embed("--catalog", small_catalog, "--out", default, "--cache-dir", tmp_path / "cache")
    assert not np.allclose(read_vectors(default)["vector"][0], table["vector"][0], atol=1e-3)
    assert read_metadata(default)["probes_digest"] != probes_digest(["Translate this.", "Solve: 2 + 2 ="])


def test_a_broken_row_is_reported_and_exits_nonzero(tiny_pool, tmp_path, capsys):
    rows = [{"name": "good", "source": str(tiny_pool["loras"]["lora_1"]), "kind": "lora", "base": str(tiny_pool["base"])},
            {"name": "gone", "source": str(tmp_path / "nowhere"), "kind": "lora", "base": str(tiny_pool["base"])}]
    out = tmp_path / "v.parquet"
    assert embed("--catalog", write_catalog(tmp_path / "c.csv", rows), "--out", out, "--cache-dir", tmp_path / "c") == 1
    printed = capsys.readouterr().out
    assert "1 failed" in printed and "FAILED gone:" in printed and "does not exist" in printed
    assert list(read_vectors(out)["name"]) == ["good"]


def test_malformed_catalog_exits_2_with_line_and_column(tmp_path, capsys):
    catalog = tmp_path / "c.csv"
    catalog.write_text("name,source,kind,base\nx,./x,lora,./b\nx,./y,lora,./b\n")
    assert embed("--catalog", catalog, "--out", tmp_path / "v.parquet", "--cache-dir", tmp_path / "c") == 2
    assert "line 3, column 'name'" in capsys.readouterr().err
    assert not (tmp_path / "v.parquet").exists()


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "core", "embed", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--adapter-batch" in done.stdout and "--allow-pickle" in done.stdout

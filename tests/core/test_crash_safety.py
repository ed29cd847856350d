"""Crash safety: ``python -m core embed``, ``build-demo`` and ``merge`` killed with SIGKILL in the middle of their work
(as soon as their first finished piece shows on disk), then run again: nothing corrupt or half-written is read back,
the rerun finishes, and its vectors equal those of an uninterrupted run. Two processes adding models to one user
folder at the same moment both land, and what killed or failed runs leave behind is cleaned up.

No test hook in the library: the test watches the output and cache folders and kills the process from outside.
This module imports nothing heavy at its top, as the user-folder test runs a function of it in spawned processes.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.engine.cache import VectorCache
from core.pool.userpool import UserPool, sweep_stale
from core.pool.vectors import make_table, read_vectors
from tests.core.pool.test_userpool import model_folder

REPO = Path(__file__).resolve().parents[2]
MERGE_FILES = ["adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "report.json"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The in-process reference runs get a cache of their own, apart from the subprocesses' one."""
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "reference-cache"))


# -- running and killing `python -m core` ------------------------------------------------------------------------
def core_command(args: list[str], tmp_path: Path, log_name: str) -> tuple[list[str], dict, Path]:
    env = {**os.environ, "DELTA_ATLAS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    return [sys.executable, "-m", "core", *args], env, tmp_path / log_name


def kill_when(args: list[str], tmp_path: Path, ready, timeout: float = 120) -> None:
    """Start ``python -m core ARGS`` and SIGKILL it as soon as ``ready()`` is true; it must not have finished."""
    command, env, log = core_command(args, tmp_path, "killed.log")
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"{args[0]} ended (status {process.returncode}) before the kill point:\n{log.read_text()}")
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, f"{args[0]} finished before the kill landed:\n{log.read_text()}"


def run_to_end(args: list[str], tmp_path: Path, timeout: float = 120) -> str:
    command, env, _ = core_command(args, tmp_path, "rerun.log")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"the rerun of {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def cache_entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "vectors").glob("*/*.json"))


def assert_cache_sound(cache_dir: Path) -> None:
    """Every finished entry reads back (a corrupt one would come back as None); only temporary files may be torn."""
    cache = VectorCache(cache_dir)
    bad = [p.name for p in cache_entries(cache_dir) if cache.get(p.stem) is None]
    assert bad == [], f"corrupt cache entries: {bad}"
    memo = cache_dir / "file_hashes.json"
    if memo.exists():
        json.loads(memo.read_text())


def assert_same_vectors(got, want) -> None:
    assert list(got["name"]) == list(want["name"])
    for name, a, b in zip(got["name"], got["vector"], want["vector"]):
        assert np.allclose(a, b, atol=1e-6), name


def absolute_catalog(tiny_pool, folder: Path) -> Path:
    """The tiny pool's catalog with absolute sources, alone in its folder (so no vector file sits beside it)."""
    from tests.conftest import write_catalog

    folder.mkdir()
    rows = [{"name": n, "source": str(p), "kind": "lora", "base": str(tiny_pool["base"])}
            for n, p in tiny_pool["loras"].items()]
    rows += [{"name": n, "source": str(p), "kind": "full", "base": str(tiny_pool["base"])}
             for n, p in tiny_pool["fulls"].items()]
    return write_catalog(folder / "catalog.csv", rows)


# -- kill, rerun, compare ----------------------------------------------------------------------------------------
def test_killed_embed_resumes_from_its_cache_to_the_same_vectors(tiny_pool, tmp_path):
    from core.engine.embed import embed_catalog

    catalog, out = absolute_catalog(tiny_pool, tmp_path / "pool"), tmp_path / "out.parquet"
    args = ["embed", "--catalog", str(catalog), "--out", str(out), "--adapter-batch", "1", "--device", "cpu",
            "--dtype", "float32"]
    kill_when(args, tmp_path, lambda: len(cache_entries(tmp_path / "cache")) >= 2)  # base states + one model
    assert not out.exists()
    assert_cache_sound(tmp_path / "cache")
    summary = run_to_end(args, tmp_path)
    assert int(re.search(r"(\d+) cached", summary).group(1)) >= 1, summary        # it resumed from the cache
    assert_cache_sound(tmp_path / "cache")
    reference = embed_catalog(catalog, device="cpu", dtype="float32")
    assert_same_vectors(read_vectors(out), reference.table)


def test_killed_build_demo_keeps_its_finished_models_and_ends_as_an_uninterrupted_build(tmp_path):
    from core.zoo.demo_build import ZooPlan, build_demo
    from tests.core.zoo.test_demo_build import write_micro_corpus

    data, zoo = write_micro_corpus(tmp_path / "datasets"), tmp_path / "zoo"
    args = ["build-demo", "--micro", "--data-dir", str(data), "--out", str(zoo)]

    def model_folders(pattern: str = "[!.]*") -> list[Path]:
        return [p for kind in ("models", "full") for p in sorted((zoo / kind).glob(pattern))]

    # one model is finished and the next one's temporary folder is being written
    kill_when(args, tmp_path, lambda: model_folders() and model_folders(".tmp-*"))
    finished = model_folders()
    for folder in finished:                       # only complete models sit under their own name
        assert (folder / "training.json").is_file() and list(folder.glob("*.safetensors")), folder
    assert not (zoo / "catalog.csv").exists() and not (zoo / "vectors.parquet").exists()
    stamps = {p: (p / "training.json").stat().st_mtime_ns for p in finished}
    run_to_end(args, tmp_path)
    assert {p: (p / "training.json").stat().st_mtime_ns for p in finished} == stamps      # not trained again
    assert [p.name for kind in ("models", "full") for p in (zoo / kind).glob(".*")] == []  # no temporary folder
    build_demo(data, tmp_path / "reference", ZooPlan.micro(), vectors=True, report_too=False)
    assert_same_vectors(read_vectors(zoo / "vectors.parquet"), read_vectors(tmp_path / "reference" / "vectors.parquet"))
    assert (zoo / "catalog.csv").read_text() == (tmp_path / "reference" / "catalog.csv").read_text()


def test_killed_merge_publishes_nothing_and_its_rerun_gives_the_same_merge(tiny_pool, tmp_path):
    from core.reuse.merge import merge_adapters
    from tests.core.reuse.test_merge import EXAMPLES

    catalog, out = absolute_catalog(tiny_pool, tmp_path / "pool"), tmp_path / "merged"
    examples = tmp_path / "task.jsonl"
    examples.write_text("\n".join(json.dumps({"prompt": e.instruction, "completion": e.response}) for e in EXAMPLES))
    args = ["merge", "--models", "lora_0,lora_1", "--method", "linear", "--weights", "0.7,0.3", "--examples",
            str(examples), "--catalog", str(catalog), "--out", str(out), "--device", "cpu", "--json"]
    # the merged adapter is saved in the temporary folder; its vector is being measured when the kill lands
    kill_when(args, tmp_path, lambda: any(tmp_path.glob(".merged.tmp-*/adapter_model.safetensors")))
    assert not out.exists()
    assert_cache_sound(tmp_path / "cache")
    left = list(tmp_path.glob(".merged.tmp-*"))
    assert len(left) == 1
    an_hour_ago = time.time() - 3601
    os.utime(left[0], (an_hour_ago, an_hour_ago))         # the rerun deletes a killed merge's folder once it is stale
    run_to_end(args, tmp_path)
    assert [p.name for p in tmp_path.glob(".merged*")] == []
    assert sorted(p.name for p in out.iterdir() if p.name != "README.md") == MERGE_FILES
    assert_cache_sound(tmp_path / "cache")
    report = json.loads((out / "report.json").read_text())
    reference = merge_adapters(catalog, ["lora_0", "lora_1"], "linear", [0.7, 0.3], EXAMPLES, tmp_path / "reference",
                               device="cpu")
    for key in ("measured_vector", "predicted_vector"):
        assert np.allclose(report[key], getattr(reference, key), atol=1e-6), key
    assert report["losses"] == pytest.approx(reference.losses, abs=1e-6)


# -- the user folder: two processes at once, stale leftovers, uploads -------------------------------------------
def name_embed(catalog, progress=None, **kwargs):
    """Stands in for core.engine.embed.embed_catalog: each model's vector is made from its name."""
    vectors = [np.full(4, zlib.crc32(n.encode()) % 1000, dtype=np.float32) for n in catalog.names]
    return SimpleNamespace(table=make_table(catalog.names, np.stack(vectors), catalog.labels_frame()), failures=[])


def add_models(root: str, folders: list[str], base: str, start) -> None:
    """In a spawned process: add ``folders`` to the user pool in ``root``, each when both processes are ready."""
    pool = UserPool(root, roots=[Path(root).parent.resolve()], embed=name_embed)
    try:
        for folder in folders:
            start.wait(timeout=60)
            pool.add_local(folder, base=base)
    except BaseException:
        start.abort()                                    # the other process stops waiting for this one
        raise


def test_two_processes_adding_models_at_the_same_moment_both_land(tmp_path):
    root, rounds = tmp_path / "user", 5
    folders = {side: [str(model_folder(tmp_path / f"{side}-{i}")) for i in range(rounds)] for side in "ab"}
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=add_models, args=(str(root), folders[side], str(tmp_path), start))
               for side in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    names = sorted(f"{side}-{i}" for side in "ab" for i in range(rounds))
    pool = UserPool(root)
    assert sorted(r["name"] for r in pool.rows()) == names
    table = pool.vectors()
    assert sorted(table["name"]) == names
    for name, vector in zip(table["name"], table["vector"]):
        assert np.array_equal(vector, np.full(4, zlib.crc32(name.encode()) % 1000))
    assert sorted(p.name for p in root.iterdir()) == [".lock", "catalog.csv", "vectors.parquet"]


def test_opening_a_pool_sweeps_what_killed_additions_left_once_it_is_stale(tmp_path):
    root = tmp_path / "user"
    pool = UserPool(root, roots=[tmp_path.resolve()], embed=name_embed)
    pool.add_local(model_folder(tmp_path / "kept"), base=tmp_path)
    (root / "models" / ".upload-dead").mkdir(parents=True)
    (root / "models" / ".upload-dead" / "adapter_model.safetensors").write_bytes(b"\0")
    (root / "models" / ".upload-live").mkdir()
    (root / ".pending-dead.csv").write_text("name,source,kind,base\n")
    (root / ".vectors.parquet.tmp").write_bytes(b"PAR1")
    an_hour_ago = time.time() - 3601
    for name in ("models/.upload-dead", ".pending-dead.csv", ".vectors.parquet.tmp"):
        os.utime(root / name, (an_hour_ago, an_hour_ago))
    os.utime(root / "catalog.csv", (an_hour_ago, an_hour_ago))       # old, but not temporary: kept
    again = UserPool(root)
    assert sorted(p.name for p in root.iterdir()) == [".lock", "catalog.csv", "models", "vectors.parquet"]
    assert [p.name for p in (root / "models").iterdir()] == [".upload-live"]     # fresh: it may be in progress
    assert [r["name"] for r in again.rows()] == ["kept"]
    assert sweep_stale(root, max_age_s=0) == [root / "models" / ".upload-live"]
    assert sweep_stale(tmp_path / "nowhere") == []


def test_an_upload_gets_its_folder_name_only_with_its_catalog_row(tmp_path, monkeypatch):
    """So a kill while it is embedded leaves no model folder without a row (which would also block its name)."""
    import core.pool.userpool
    from tests.core.pool.test_userpool import GOOD, zip_bytes

    seen = []

    def embed(catalog, **kwargs):
        seen.append((catalog.entries[0].source.local.name, (pool.models_dir / "zipped").exists()))
        return name_embed(catalog)

    pool = UserPool(tmp_path / "user", roots=[tmp_path.resolve()], embed=embed)
    pool.add_zip(zip_bytes(GOOD), base=tmp_path, name="zipped")
    assert seen[0][0].startswith(".upload-") and seen[0][1] is False
    assert pool.catalog().get("zipped").source.local == (pool.models_dir / "zipped").resolve()
    assert sorted(p.name for p in (pool.models_dir / "zipped").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]

    write_catalog = core.pool.userpool.write_catalog

    def full_disk(rows, path):                 # the catalog cannot be written: in the locked step, after the rename
        if Path(path) == pool.catalog_path:
            raise OSError(28, "No space left on device")
        return write_catalog(rows, path)

    monkeypatch.setattr(core.pool.userpool, "write_catalog", full_disk)
    with pytest.raises(OSError, match="No space"):
        pool.add_zip(zip_bytes(GOOD), base=tmp_path, name="second")
    assert [p.name for p in pool.models_dir.iterdir()] == ["zipped"] and len(seen) == 2
    assert [r["name"] for r in pool.rows()] == list(pool.vectors()["name"]) == ["zipped"]


# -- temporary folders of task search and merging, on failure ------------------------------------------------------
def test_failed_merge_and_task_search_remove_their_temporary_folders(tiny_pool, tmp_path, monkeypatch):
    import core.reuse.merge
    import core.reuse.task
    from tests.core.reuse.test_merge import EXAMPLES

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    catalog = absolute_catalog(tiny_pool, tmp_path / "pool")
    monkeypatch.setattr(core.reuse.merge, "load_ingredients", fail)
    merge_dir = tmp_path / "merges"
    with pytest.raises(RuntimeError, match="out of memory"):
        core.reuse.merge.merge_adapters(catalog, ["lora_0", "lora_1"], "linear", [1, 1], EXAMPLES, merge_dir / "m",
                                  measure=False)
    assert list(merge_dir.iterdir()) == []
    monkeypatch.setattr(core.reuse.task, "embed_task", fail)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()
    vectors = make_table(["lora_0", "lora_1"], np.ones((2, 4)))
    for keep in (None, tmp_path / "kept" / "task-adapter"):
        with pytest.raises(RuntimeError, match="out of memory"):
            core.reuse.task.find_models(EXAMPLES, catalog, vectors=vectors, keep_adapter=keep)
    assert list((tmp_path / "system-tmp").iterdir()) == [] and list((tmp_path / "kept").iterdir()) == []

"""Scale-out on Ray: a local Ray instance with 2 CPU workers and a catalog of 60 tiny adapters gives the vectors of
the single-process engine, also when a worker dies mid-batch (the batch is redone, what it finished is kept)."""
from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from core.cli import main
from core.engine.embed import embed_catalog
from core.engine.ray_embed import CRASH_ENV, embed_catalog_ray
from core.errors import DeltaAtlasError
from core.pool.vectors import read_metadata, read_vectors
from tests.conftest import make_lora, write_catalog

ray = pytest.importorskip("ray")

N_ADAPTERS = 60


@pytest.fixture(scope="module")
def pool(tiny_pool, tmp_path_factory):
    """60 LoRA adapters on the tiny base (plus one full model), their catalog and the single-process vectors."""
    root = tmp_path_factory.mktemp("ray_pool")
    rows = [{"name": f"a{i:02d}", "source": str(make_lora(tiny_pool["base"], root / f"a{i:02d}", seed=1000 + i)),
             "kind": "lora", "base": str(tiny_pool["base"]), "group": "xy"[i % 2]} for i in range(N_ADAPTERS)]
    rows.append({"name": "full", "source": str(tiny_pool["fulls"]["full_0"]), "kind": "full",
                 "base": str(tiny_pool["base"]), "group": "x"})
    catalog = write_catalog(root / "catalog.csv", rows)
    single = embed_catalog(catalog, device="cpu", dtype="float32", cache_dir=root / "single-cache")
    assert not single.failures and len(single.table) == N_ADAPTERS + 1
    return {"root": root, "catalog": catalog, "single": single}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray instance with 2 CPUs for this module (its session folder); the workers see the crash hook's
    folder."""
    crash_dir = tmp_path_factory.mktemp("ray_crash")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                       runtime_env={"env_vars": {CRASH_ENV: str(crash_dir), "HF_HUB_OFFLINE": "1"}})
    yield {"crash_dir": crash_dir, "session_dir": context.address_info["session_dir"]}
    ray.shutdown()


def assert_same(result, single):
    assert not result.failures
    assert list(result.table.columns) == list(single.table.columns)
    assert list(result.table["name"]) == list(single.table["name"])
    assert list(result.table["group"]) == list(single.table["group"])
    np.testing.assert_allclose(np.stack(result.table["vector"]), np.stack(single.table["vector"]), atol=1e-6, rtol=0)
    assert result.metadata == single.metadata


def test_auto_without_a_running_cluster_says_so(pool):
    # first in this file: the local_ray fixture (a running instance "auto" would find) is not up yet
    assert not ray.is_initialized()
    with pytest.raises(DeltaAtlasError, match="No Ray cluster answers at 'auto'.*--ray local"):
        embed_catalog_ray(pool["catalog"], address="auto", device="cpu", cache_dir=pool["root"] / "unused")


def test_two_workers_give_the_single_process_vectors(pool, local_ray, tmp_path):
    seen = []
    result = embed_catalog_ray(pool["catalog"], workers=2, batch=8, device="cpu", dtype="float32",
                               cache_dir=tmp_path / "cache", progress=seen.append)
    assert_same(result, pool["single"])
    assert sorted(result.computed) == sorted(pool["single"].table["name"]) and not result.cached
    assert seen[-1].done == seen[-1].total == N_ADAPTERS + 1
    again = embed_catalog(pool["catalog"], device="cpu", dtype="float32", cache_dir=tmp_path / "cache")
    assert len(again.cached) == N_ADAPTERS + 1 and not again.computed       # the engine's own cache, keys and all


def test_a_worker_killed_mid_batch_has_its_batch_redone(pool, local_ray, tmp_path):
    crash_dir = local_ray["crash_dir"]
    (crash_dir / "crash").touch()                    # the first worker to reach the hook dies (os._exit) there
    result = embed_catalog_ray(pool["catalog"], workers=2, batch=8, adapter_batch=4, device="cpu",
                               dtype="float32", cache_dir=tmp_path / "cache")
    assert (crash_dir / "crashed").exists(), "no worker died: the hook did not fire"
    assert_same(result, pool["single"])
    # the dead worker had finished (and cached) the first forward pass of its batch: the redone batch reads those
    assert len(result.cached) == 4 and len(result.computed) == N_ADAPTERS + 1 - 4


def test_cli_with_ray_writes_the_same_vector_file(pool, local_ray, tmp_path, capsys):
    out = tmp_path / "vectors.parquet"                 # "local" here joins the module's instance (already up)
    assert main(["embed", "--catalog", str(pool["catalog"]), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                 "--ray", "local", "--workers", "1", "--device", "cpu"]) == 0
    assert f"{N_ADAPTERS + 1} computed, 0 cached, 0 failed" in capsys.readouterr().out
    table = read_vectors(out)
    np.testing.assert_allclose(np.stack(table["vector"]), np.stack(pool["single"].table["vector"]), atol=1e-6, rtol=0)
    assert read_metadata(out)["device"] == "cpu" and read_metadata(out)["bases"] == pool["single"].metadata["bases"]


def test_workers_without_ray_is_refused(pool, tmp_path, capsys):
    assert main(["embed", "--catalog", str(pool["catalog"]), "--out", str(tmp_path / "v.parquet"),
                 "--workers", "2"]) == 2
    assert "--workers is for --ray" in capsys.readouterr().err


def test_no_ray_process_is_left_behind(local_ray):
    ray.shutdown()                                   # the fixture's own shutdown is then a no-op
    time.sleep(1)
    left = subprocess.run(["pgrep", "-af", local_ray["session_dir"]], capture_output=True, text=True).stdout
    assert not left.strip(), f"Ray processes of this session still running: {left}"

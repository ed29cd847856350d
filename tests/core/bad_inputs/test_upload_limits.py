"""The upload caps agree with .streamlit/config.toml; the user folder's disk budget."""
from __future__ import annotations

import mmap
import zipfile

import pytest
import tomllib

from core.errors import DeltaAtlasError
from core.pool import userpool
from core.pool.userpool import UserPool
from core.reuse import examples
from core.reuse.examples import parse_examples
from tests.core.bad_inputs.world import CONFIG, a_zip, bomb, snapshot
from tests.core.pool.test_userpool import model_folder


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

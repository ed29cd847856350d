import io
import os
import stat
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.errors import DeltaAtlasError, ModelSourceError, PathNotAllowedError
from core.pool import userpool
from core.pool.userpool import UserPool, allowed_roots, check_local_path, extract_zip
from core.pool.vectors import make_table


def fake_embed(fail: bool = False):
    """Stands in for core.engine.embed.embed_catalog: one random vector per entry, or one failure."""
    calls = []

    def embed(catalog, progress=None, **kwargs):
        calls.append([e.name for e in catalog])
        if fail:
            return SimpleNamespace(table=make_table([], np.zeros((0, 4))), failures=[
                SimpleNamespace(name=catalog.entries[0].name, reason="the adapter is for another base")])
        vectors = np.random.default_rng(len(calls)).normal(size=(len(catalog), 4))
        return SimpleNamespace(table=make_table(catalog.names, vectors, catalog.labels_frame()), failures=[])

    embed.calls = calls
    return embed


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return path


def zip_bytes(files: dict, links: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


GOOD = {"my_adapter/adapter_config.json": "{}", "my_adapter/adapter_model.safetensors": b"\0" * 8,
        "my_adapter/README.md": "hi", "__MACOSX/my_adapter/._README.md": "junk"}


@pytest.fixture
def pool(tmp_path):
    return UserPool(tmp_path / "user", roots=[(tmp_path / "user").resolve(), (tmp_path / "models").resolve()],
                    embed=fake_embed())


def test_user_dir_and_roots_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(userpool.USER_DIR_ENV, str(tmp_path / "u"))
    monkeypatch.setenv(userpool.ALLOWED_ROOTS_ENV, os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert userpool.user_dir() == tmp_path / "u"
    assert allowed_roots() == [(tmp_path / p).resolve() for p in ("u", "a", "b")]
    monkeypatch.delenv(userpool.ALLOWED_ROOTS_ENV)
    assert allowed_roots() == [(tmp_path / "u").resolve()]  # nothing but the user dir by default


def test_local_paths_outside_the_roots_are_refused(tmp_path):
    root = (tmp_path / "allowed").resolve()
    inside = model_folder(root / "m")
    outside = model_folder(tmp_path / "secret")
    assert check_local_path(inside, [root]) == inside
    with pytest.raises(PathNotAllowedError, match="outside the folders"):
        check_local_path(outside, [root])
    with pytest.raises(PathNotAllowedError):
        check_local_path(root / ".." / "secret", [root])  # '..' escape
    (root / "link").symlink_to(outside)
    with pytest.raises(PathNotAllowedError):
        check_local_path(root / "link", [root])  # symlink escape
    with pytest.raises(ModelSourceError, match="does not exist"):
        check_local_path(root / "missing", [root])


def test_add_local_persists_and_reads_back(pool, tmp_path):
    folder = model_folder(tmp_path / "models" / "legal-lora")
    row = pool.add_local(folder, base=tmp_path / "models", labels={"domain": "legal"})
    assert list(row["name"]) == ["legal-lora"]
    assert [r["name"] for r in pool.rows()] == ["legal-lora"]
    assert pool.catalog().get("legal-lora").labels["domain"] == "legal"
    again = UserPool(pool.root, roots=pool.roots)  # a new session reads the same files
    assert list(again.vectors()["name"]) == ["legal-lora"]
    assert again.vectors(base=tmp_path / "models") is not None
    assert again.vectors(base=tmp_path / "elsewhere") is None
    with pytest.raises(DeltaAtlasError, match="already added"):
        pool.add_local(folder, base=tmp_path / "models")


def test_add_hub_validates_the_id(pool, tmp_path):
    with pytest.raises(ModelSourceError, match="not a hub id"):
        pool.add_hub("not a hub id", base=tmp_path)
    pool.add_hub("org/model-x@main", base="org/base", labels={"note": "from the hub"})
    assert pool.rows()[0]["source"] == "org/model-x@main" and pool.rows()[0]["name"] == "model-x"


def test_failed_embedding_leaves_everything_as_it_was(tmp_path):
    good = UserPool(tmp_path / "user", roots=[(tmp_path).resolve()], embed=fake_embed())
    good.add_local(model_folder(tmp_path / "a"), base=tmp_path)
    before = (good.catalog_path.read_bytes(), good.vectors_path.read_bytes())
    bad = UserPool(good.root, roots=good.roots, embed=fake_embed(fail=True))
    with pytest.raises(ModelSourceError, match="another base"):
        bad.add_local(model_folder(tmp_path / "b"), base=tmp_path)
    with pytest.raises(ModelSourceError):
        bad.add_zip(zip_bytes(GOOD), base=tmp_path, name="zipped")
    assert (good.catalog_path.read_bytes(), good.vectors_path.read_bytes()) == before
    assert not (good.models_dir / "zipped").exists()
    assert [p.name for p in good.models_dir.iterdir()] == []  # no staging folder left


def test_add_zip_extracts_and_remove_cleans_up(pool, tmp_path):
    pool.add_zip(zip_bytes(GOOD), base=tmp_path, name="zipped", labels={"domain": "math"})
    folder = pool.models_dir / "zipped"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert pool.catalog().get("zipped").source.local == folder.resolve()
    pool.remove("zipped")
    assert pool.rows() == [] and not folder.exists()
    with pytest.raises(DeltaAtlasError, match="not among"):
        pool.remove("zipped")


@pytest.mark.parametrize("files, links, message", [
    ({"../evil/adapter_config.json": "{}", "a.safetensors": b""}, None, "outside the folder"),
    ({"/etc/adapter_config.json": "{}", "a.safetensors": b""}, None, "outside the folder"),
    ({"adapter_config.json": "{}", "a.safetensors": b""}, {"b.json": "/etc/passwd"}, "symbolic link"),
    ({"adapter_config.json": "{}", "adapter_model.bin": b""}, None, "pickle"),
    ({"adapter_config.json": "{}", "a.safetensors": b"", "run.sh": "rm -rf /"}, None, "not a model file"),
    ({"adapter_config.json": "{}"}, None, "no .safetensors"),
    ({"a.safetensors": b""}, None, "no adapter_config.json"),
])
def test_unsafe_zips_are_refused(tmp_path, files, links, message):
    with pytest.raises(ModelSourceError, match=message):
        extract_zip(zip_bytes(files, links), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_caps(tmp_path, monkeypatch):
    with pytest.raises(ModelSourceError, match="not a zip"):
        extract_zip(b"hello", tmp_path / "a")
    monkeypatch.setattr(userpool, "MAX_ZIP_BYTES", 10)
    with pytest.raises(ModelSourceError, match="limit"):
        extract_zip(zip_bytes(GOOD), tmp_path / "b")
    monkeypatch.setattr(userpool, "MAX_ZIP_BYTES", 2**20)
    monkeypatch.setattr(userpool, "MAX_FILES", 2)
    with pytest.raises(ModelSourceError, match="files, over the limit"):
        extract_zip(zip_bytes(GOOD), tmp_path / "c")
    monkeypatch.setattr(userpool, "MAX_FILES", 10)
    monkeypatch.setattr(userpool, "MAX_UNPACKED_BYTES", 1000)
    bomb = {"adapter_config.json": "{}", "a.safetensors": b"\0" * 5000}  # compresses to a few bytes
    with pytest.raises(ModelSourceError, match="unpacks to more"):
        extract_zip(zip_bytes(bomb), tmp_path / "d")


def test_bad_names_are_refused(pool, tmp_path):
    for name in ("../x", "", "a b", ".hidden"):
        with pytest.raises(DeltaAtlasError, match="not allowed"):
            pool.add_zip(zip_bytes(GOOD), base=tmp_path, name=name)
    assert pool.rows() == []

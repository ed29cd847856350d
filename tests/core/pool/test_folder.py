"""A pool's folder: one order for finding the vector file, settings files read with a clear message, the title."""
from __future__ import annotations

import pytest

from core.errors import DeltaAtlasError
from core.pool.folder import (
    DEMO_CATALOG,
    SEARCH_FILE,
    open_catalog,
    own_vectors_name,
    read_settings,
    title,
    vectors_file,
    vectors_target,
)


def test_the_vector_file_named_after_the_catalog_wins_over_the_shared_one(tmp_path):
    catalog = tmp_path / "pool.csv"
    assert vectors_file(catalog) is None and vectors_target(catalog) == tmp_path / "pool.vectors.parquet"
    (tmp_path / "vectors.parquet").write_bytes(b"shared")
    assert vectors_file(catalog) == tmp_path / "vectors.parquet"           # the folder's shared file, last
    (tmp_path / "pool.parquet").write_bytes(b"x")
    assert vectors_file(catalog) == tmp_path / "pool.parquet"
    (tmp_path / "pool.vectors.parquet").write_bytes(b"own")
    assert vectors_file(catalog) == vectors_target(catalog) == tmp_path / "pool.vectors.parquet"
    assert own_vectors_name(tmp_path / "catalog.csv") == "vectors.parquet"


@pytest.mark.parametrize("content, says", [("[1, 2]", "holds a JSON list"), ("{", "Expecting"),
                                           ('{"a": ' * 5000 + "1" + "}" * 5000, "recursion")])
def test_a_broken_settings_file_names_itself_and_what_to_do(tmp_path, content, says):
    (tmp_path / SEARCH_FILE).write_text(content)
    with pytest.raises(DeltaAtlasError, match=f"search.json cannot be read.*{says}.*fix or delete it"):
        read_settings(tmp_path / "catalog.csv", SEARCH_FILE)


def test_settings_are_none_when_absent_and_a_dict_when_present(tmp_path):
    assert read_settings(tmp_path / "catalog.csv", SEARCH_FILE) is None and read_settings(None, SEARCH_FILE) is None
    (tmp_path / SEARCH_FILE).write_text('{"steps": 7}')
    assert read_settings(tmp_path / "catalog.csv", SEARCH_FILE) == {"steps": 7}
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(DeltaAtlasError, match="is a folder"):
        read_settings(tmp_path / "catalog.csv", "folder.json")


def test_title_is_the_first_line_of_a_catalogs_title_file(tmp_path):
    assert title(tmp_path / "catalog.csv") is None
    (tmp_path / "TITLE").write_text("  My pool  \nsecond line\n")
    assert title(tmp_path / "catalog.csv") == "My pool" and title(tmp_path / "other.csv") is None
    (tmp_path / "TITLE").write_text("   \n")
    assert title(tmp_path / "catalog.csv") is None


def test_the_missing_demo_zoo_says_how_to_build_it(tmp_path, monkeypatch):
    import core.pool.folder

    monkeypatch.setattr(core.pool.folder, "DEMO_CATALOG", (tmp_path / "catalog.csv").resolve())
    with pytest.raises(DeltaAtlasError, match="demo zoo is not built yet.*build-demo"):
        open_catalog(tmp_path / "catalog.csv")
    assert DEMO_CATALOG.name == "catalog.csv"

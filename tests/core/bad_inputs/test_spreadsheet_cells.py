"""CSV cells a spreadsheet would run as formulas are neutralised on the way out and restored on the way back."""
from __future__ import annotations

import pytest

from core.pool.catalog import read_catalog, write_catalog
from core.pool.userpool import UserPool
from core.pool.vectors import make_table, read_vectors, write_vectors
from tests.core.bad_inputs.world import assert_neutralised, raw_cells
from tests.core.pool.test_userpool import model_folder

FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
            "@SUM(1+9)*cmd|' /C calc'!A0", "=1+1", "-", "+"]
HARMLESS = ["-0.5", "+3", "1e-5", "plain text", "", "a=b", "'quoted"]


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

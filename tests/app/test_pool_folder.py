"""The app finds a pool's files where the commands do (core.pool.folder)."""
from __future__ import annotations

from core.pool.folder import vectors_file


def test_the_app_and_the_commands_read_the_same_vector_file(tmp_path):
    """A folder with both vectors.parquet and pool.vectors.parquet: the Map page and `find`/`report` agree."""
    from core.map.report import vectors_target as report_choice
    from pages.parts.ui import vectors_target as app_choice

    for name in ("vectors.parquet", "pool.vectors.parquet"):
        (tmp_path / name).write_bytes(b"x")
    catalog = tmp_path / "pool.csv"
    assert app_choice(catalog) == report_choice(catalog) == vectors_file(catalog) == tmp_path / "pool.vectors.parquet"

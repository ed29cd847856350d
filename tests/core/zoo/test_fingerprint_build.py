"""The fingerprints command reads the demo datasets only, and says so for a pool trained on others."""
from __future__ import annotations

from core.reuse.fingerprints import fingerprint_path
from tests.core.reuse.test_task import pool  # noqa: F401  (the tiny pool fixture)


def test_the_command_refuses_a_pool_whose_datasets_it_cannot_read(pool, tmp_path):  # noqa: F811
    from core.cli import main

    assert main(["fingerprints", "--catalog", str(pool), "--data-dir", str(tmp_path)]) == 2   # set0, set1: unknown
    assert not fingerprint_path(pool).exists()


def test_the_sample_size_must_be_a_positive_whole_number(pool, tmp_path):  # noqa: F811
    from core.cli import main

    assert main(["fingerprints", "--catalog", str(pool), "--data-dir", str(tmp_path), "--per-dataset", "0"]) == 2

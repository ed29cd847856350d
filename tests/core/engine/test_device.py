"""Device, dtype and thread choice."""
from __future__ import annotations

import pytest
import torch

from core.engine.device import JOB_THREADS_ENV, background_threads, job_threads, pick_device, pick_dtype
from core.errors import DeltaAtlasError


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (16, 15)])
def test_background_jobs_leave_a_core_to_the_pages(monkeypatch, cores, threads):
    monkeypatch.delenv(JOB_THREADS_ENV, raising=False)
    assert background_threads(cores) == threads


def test_background_threads_can_be_set_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv(JOB_THREADS_ENV, "3")
    assert background_threads(2) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(JOB_THREADS_ENV, bad)
        with pytest.raises(DeltaAtlasError, match=f"{JOB_THREADS_ENV}='{bad}'.*positive whole number"):
            background_threads(2)


@pytest.mark.parametrize("alone, cores, threads", [(True, 2, 2), (False, 2, 1), (False, 16, 15), (True, 1, 1)])
def test_a_job_alone_takes_every_core_and_leaves_one_otherwise(monkeypatch, alone, cores, threads):
    monkeypatch.delenv(JOB_THREADS_ENV, raising=False)
    assert job_threads(alone, cores) == threads


def test_job_threads_follow_the_setting_when_given(monkeypatch):
    monkeypatch.setenv(JOB_THREADS_ENV, "3")
    assert job_threads(True, 2) == job_threads(False, 2) == 3
    monkeypatch.setenv(JOB_THREADS_ENV, "none")
    with pytest.raises(DeltaAtlasError, match=f"{JOB_THREADS_ENV}='none'"):
        job_threads(True, 2)


def test_cpu_defaults_and_unknown_names():
    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(DeltaAtlasError, match="Unknown dtype 'half-ish'"):
        pick_dtype("half-ish", torch.device("cpu"))
    with pytest.raises(DeltaAtlasError, match="Unknown device 'gpu0'"):
        pick_device("gpu0")

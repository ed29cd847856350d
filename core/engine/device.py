"""Device and dtype choice: CUDA, then MPS, then CPU; bf16 on a GPU, fp32 on the CPU. Both can be overridden."""
from __future__ import annotations

import os

import torch

from core.errors import DeltaAtlasError

JOB_THREADS_ENV = "DELTA_ATLAS_JOB_THREADS"   # torch threads for the app's background jobs (default: job_threads)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(name: str | None = None) -> torch.device:
    """The device to run on: ``name`` if given ("cpu", "cuda", "cuda:1", "mps"), else the best one available."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeltaAtlasError(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeltaAtlasError(f"Device {name!r} was asked for but no CUDA GPU is available: use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeltaAtlasError(f"Device {name!r} was asked for but MPS is not available: use --device cpu.")
    return device


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype: ``name`` if given, else bf16 on a GPU and fp32 on the CPU."""
    if name in (None, "", "auto"):
        return torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise DeltaAtlasError(f"Unknown dtype {name!r}: use auto, float32, bfloat16 or float16.")
    return DTYPES[name]


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bf16 compute is fast on ``device``: a CUDA GPU that supports it, MPS, or a CPU with native bf16
    instructions (AVX512-BF16 or AMX, as oneDNN reports). Elsewhere bf16 is emulated: on a 2-core AVX2 EPYC a bf16
    matrix product took 90x as long as in float32 (bench/README.md), so mixed precision must fall back there."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def background_threads(cores: int | None = None) -> int:
    """Torch threads for heavy work that shares its process with a server: every core but one, so that pages keep
    a core while a search runs (bench/load_test.py: map p95 2.2 s instead of 3.0 s with 2 cores; each search about
    1.7x slower on 2 cores). ``DELTA_ATLAS_JOB_THREADS`` overrides it."""
    raw = os.environ.get(JOB_THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise DeltaAtlasError(f"{JOB_THREADS_ENV}={raw!r} is not a positive whole number: set it to the number "
                                  "of threads background jobs may use (e.g. 1), or unset it.")
        return int(raw)
    cores = cores or os.cpu_count() or 1
    return max(1, cores - 1)


def job_threads(alone: bool, cores: int | None = None) -> int:
    """Torch threads for one of the app's background jobs: every core while it is ``alone`` (the only job, and one
    person connected, waiting for it: a search of 20 examples took 76 s on 2 threads against 123 s on 1,
    bench/README.md), every core but one otherwise (:func:`background_threads`, which keeps the map pages quick for
    the others). ``DELTA_ATLAS_JOB_THREADS`` overrides both."""
    if os.environ.get(JOB_THREADS_ENV, "").strip() or not alone:
        return background_threads(cores)
    return cores or os.cpu_count() or 1


def use_job_threads(alone: bool) -> int:
    """Set torch's threads for a background job (:func:`job_threads`) where they differ; returns the number."""
    threads = job_threads(alone)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

"""The engine: Delta Activations of every model in a catalog, fast and cached.

Per base (a catalog may name several; they are embedded one after the other):
  1. resolve every model and look its vector up in the cache (a fully cached base loads no model at all);
  2. load the base once and compute its probe states once (cached too);
  3. adapters, ``adapter_batch`` at a time on that one base, one forward pass per probe of one row per adapter
     (rows of one length: no padding). Plain LoRA adapters are read from their safetensors and run as stacked
     weights in forward hooks that always remove themselves (``stacked_lora``: no PEFT at all). Other types are
     loaded by name into PEFT and run as mixed-adapter batches, or one at a time (set_adapter) where PEFT cannot
     mix them, then deleted. Either way no adapter ever leaks into another's numbers;
  4. free the base, then load each full finetune alone, run it, free it.
One broken model becomes a :class:`Failure` with a one-line reason; the others are still embedded.
"""
from __future__ import annotations

import gc
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from core import ENGINE_VERSION
from core.engine.activations import HALF, AdapterHost, check_finite, last_token_states
from core.engine.cache import VectorCache, content_key, default_cache_dir, entry_key
from core.engine.device import dtype_name, pick_device, pick_dtype
from core.engine.loading import (
    ADAPTER_CONFIG,
    TOKENIZER_FILES,
    check_full_fits,
    check_kind,
    detect_kind,
    load_model,
    load_tokenizer,
    read_json,
    resolve_source,
    weight_files,
)
from core.engine.probes import DEFAULT_PROBES, probes_digest
from core.engine.shared import SharedModels
from core.engine.stacked_lora import run_stacked, unstackable_reason
from core.errors import ComputationError, DeltaAtlasError, ModelSourceError
from core.pool.catalog import Catalog, Source, parse_source, read_catalog
from core.pool.vectors import make_table
from core.progress import ProgressFn, report

log = logging.getLogger(__name__)

ADAPTER_BATCH = 8  # adapters per forward pass (x the number of probes = rows in the batch)
SAME_AS_BASE = 1e-6   # a delta no larger than this (relative to the base's states) is no change at all

__all__ = ["Failure", "EmbedResult", "embed_catalog", "embed_adapters", "vector_table", "default_cache_dir"]


@dataclass
class Failure:
    name: str
    reason: str  # one line, for a person


@dataclass
class EmbedResult:
    table: pd.DataFrame          # name, vector, labels: catalog order, failed models left out
    failures: list[Failure]
    computed: list[str]          # names computed in this run
    cached: list[str]            # names read from the cache
    seconds: float
    metadata: dict = field(default_factory=dict)  # engine version, probes digest, layer, dtype, device


@dataclass
class _Settings:
    probes: tuple[str, ...]
    layer: int
    device: torch.device
    dtype: torch.dtype
    force: bool
    allow_pickle: bool
    adapter_batch: int
    cache: VectorCache
    progress: ProgressFn | None
    models: SharedModels | None = None   # lends the base already in memory, instead of loading it per run

    def key(self, **parts) -> str:
        if self.dtype in HALF:             # half weights run with a float32 residual since it was added
            parts["residual"] = "float32"
        return entry_key(engine=ENGINE_VERSION, probes=probes_digest(self.probes), layer=self.layer,
                         dtype=dtype_name(self.dtype), **parts)

    def metadata(self) -> dict:
        return {"engine_version": ENGINE_VERSION, "probes_digest": probes_digest(self.probes),
                "n_probes": len(self.probes), "layer": self.layer, "dtype": dtype_name(self.dtype),
                "device": str(self.device), "residual": "float32"}


@dataclass
class _Job:
    """One model to embed, filled in as it goes through the stages."""
    name: str
    source: Source
    declared: str                # catalog kind: lora, full or auto
    path: Path | None = None
    kind: str = ""
    key: str = ""


@dataclass
class _Outcome:
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


def _settings(probes, layer, device, dtype, force, cache_dir, allow_pickle, adapter_batch, progress,
              models=None) -> _Settings:
    probes = tuple(DEFAULT_PROBES if probes is None else probes)
    if not probes or not all(isinstance(p, str) and p.strip() for p in probes):
        raise ComputationError("The probe set is empty or holds an empty prompt: give at least one non-empty probe.")
    if adapter_batch < 1:
        raise DeltaAtlasError(f"adapter_batch is {adapter_batch}: it must be at least 1.")
    dev = pick_device(device)
    return _Settings(probes, int(layer), dev, pick_dtype(dtype, dev), force, allow_pickle, int(adapter_batch),
                     VectorCache(cache_dir if cache_dir is not None else default_cache_dir()), progress, models)


# ------------------------------------------------------------------------------------------------------ public API
def embed_catalog(catalog: Catalog | str | Path, *, probes: Sequence[str] | None = None, layer: int = -1,
                  device: str | None = None, dtype: str | None = None, force: bool = False,
                  cache_dir: str | Path | None = None, allow_pickle: bool = False, adapter_batch: int = ADAPTER_BATCH,
                  progress: ProgressFn | None = None, models: SharedModels | None = None) -> EmbedResult:
    """Embed every model of ``catalog`` (a Catalog or a CSV path, validated before any model loads). With
    ``models``, each base is borrowed from that registry (loaded once per process) instead of loaded for this run."""
    start = time.perf_counter()
    if not isinstance(catalog, Catalog):
        catalog = read_catalog(catalog)
    s = _settings(probes, layer, device, dtype, force, cache_dir, allow_pickle, adapter_batch, progress, models)
    out = _Outcome()
    for entries in catalog.by_base().values():
        jobs = [_Job(e.name, e.source, e.kind) for e in entries]
        _embed_base_group(entries[0].base, jobs, s, out)
    failures = [Failure(n, _reason(out.errors[n])) for n in catalog.names if n in out.errors]
    for failure in failures:
        log.debug("%s failed: %s", failure.name, failure.reason)
    return EmbedResult(vector_table(catalog, out.vectors), failures, out.computed, out.cached,
                       time.perf_counter() - start, {**s.metadata(), "bases": list(catalog.by_base())})


def vector_table(catalog: Catalog, vectors: dict[str, np.ndarray]) -> pd.DataFrame:
    """The vector table in catalog order. Bases of different widths give vectors of different lengths: they are
    kept as they are (one array per row), as such vectors can only be compared within their own base."""
    names = [n for n in catalog.names if n in vectors]
    rows = [vectors[n] for n in names]
    if len({len(v) for v in rows}) <= 1:
        return make_table(names, np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32), catalog.labels_frame())
    table = make_table(names, np.zeros((len(names), 0), dtype=np.float32), catalog.labels_frame())
    table["vector"] = rows
    return table


def embed_adapters(base: str | Path, adapters: dict[str, Path], *, probes: Sequence[str] | None = None,
                   layer: int = -1, device: str | None = None, dtype: str | None = None,
                   cache_dir: str | Path | None = None, force: bool = False,
                   progress: ProgressFn | None = None, models: SharedModels | None = None) -> dict[str, np.ndarray]:
    """Delta Activations of adapter folders that are not in a catalog (same cache); raises on the first failure."""
    s = _settings(probes, layer, device, dtype, force, cache_dir, False, ADAPTER_BATCH, progress, models)
    base_source = parse_source(str(base))
    jobs = [_Job(name, Source(text=str(path), local=Path(path).expanduser().resolve()), "lora")
            for name, path in adapters.items()]
    out = _Outcome()
    _embed_base_group(base_source, jobs, s, out)
    for name in adapters:
        if name in out.errors:
            error = out.errors[name]
            raise error if isinstance(error, DeltaAtlasError) else ComputationError(f"{name}: {_reason(error)}")
    return {name: out.vectors[name] for name in adapters}


# ------------------------------------------------------------------------------------------------------ one base
def _embed_base_group(base_source: Source, jobs: list[_Job], s: _Settings, out: _Outcome) -> None:
    """Embed ``jobs`` against one base: cache look-ups, then the base once, adapters in batches, full models."""
    try:
        base_dir = resolve_source(base_source, s.allow_pickle)
        if detect_kind(base_dir) != "full":
            raise ModelSourceError(f"Base {base_dir} is an adapter folder: the base must be a whole model.")
        base_key = content_key(_files(base_dir, "full", s.allow_pickle, base=True), s.cache.hasher)
    except Exception as exc:  # noqa: BLE001 - the base's failure is every model's failure
        for job in jobs:
            out.errors[job.name] = _BaseFailed(base_source, exc)
        return
    pending = [job for job in jobs if not _look_up(job, base_key, s, out)]
    s.cache.hasher.save()
    log.debug("Base %s: %d model(s) to compute, %d cached or failed.", base_source, len(pending), len(jobs) - len(pending))
    if not pending:
        return
    run = _BaseRun(base_dir, base_key, s)
    try:
        _embed_pending(run, base_source, pending, out)
    finally:
        run.free_model()                 # a shared base goes back to its registry even when a step failed


def _embed_pending(run: "_BaseRun", base_source: Source, pending: list[_Job], out: _Outcome) -> None:
    """Base states once, then the adapters on the base, then each full model alone."""
    s = run.s
    try:
        base_mean = run.base_states().mean(dim=0)                                     # [d]
    except Exception as exc:  # noqa: BLE001
        for job in pending:
            out.errors[job.name] = _BaseFailed(base_source, exc)
        return
    adapters = [job for job in pending if job.kind == "lora"]
    if adapters:
        _embed_adapter_jobs(run, adapters, base_mean, out)
    run.free_model()                     # full models are loaded alone: never the base and a finetune together
    fulls = [job for job in pending if job.kind == "full"]
    for done, job in enumerate(fulls):
        report(s.progress, done, len(fulls), "full", job.name)
        _guard(job, out, lambda job=job: _embed_full(run, job, base_mean, out))
    if fulls:
        report(s.progress, len(fulls), len(fulls), "full")


def _look_up(job: _Job, base_key: str, s: _Settings, out: _Outcome) -> bool:
    """Resolve ``job`` and fill in its vector from the cache; True when done (cached or failed)."""
    try:
        job.path = resolve_source(job.source, s.allow_pickle)
        job.kind = check_kind(job.path, job.declared)
        model_key = content_key(_files(job.path, job.kind, s.allow_pickle), s.cache.hasher)
    except Exception as exc:  # noqa: BLE001
        out.errors[job.name] = exc
        return True
    job.key = s.key(model=model_key, base=base_key, kind=job.kind)
    vector = None if s.force else s.cache.get(job.key)
    if vector is not None:
        out.vectors[job.name] = vector
        out.cached.append(job.name)
    return vector is not None


def _files(path: Path, kind: str, allow_pickle: bool, base: bool = False) -> list[Path]:
    """Files whose content defines a model's numbers: weights and config (and, for a base, its tokenizer)."""
    config = path / (ADAPTER_CONFIG if kind == "lora" else "config.json")
    extra = [path / n for n in TOKENIZER_FILES if (path / n).is_file()] if base else []
    return [*weight_files(path, allow_pickle), config, *extra]


class _BaseRun:
    """The base of one group: its model (loaded lazily, freed before full models) and its probe states."""

    def __init__(self, base_dir: Path, base_key: str, s: _Settings):
        self.dir, self.s = base_dir, s
        self.states_key = s.key(model=base_key, role="base-states")
        self.model = None
        self.tokenizer = None
        self._lent = ExitStack()   # holds the shared base's lend while this run uses it

    def load(self):
        if self.model is None:
            report(self.s.progress, 0, 1, "base", self.dir.name)
            if self.s.models is not None:
                model, tokenizer = self._lent.enter_context(
                    self.s.models.lend(self.dir, self.s.device, self.s.dtype, self.s.allow_pickle))
            else:
                model, tokenizer = load_model(self.dir, self.s.device, self.s.dtype, self.s.allow_pickle)
            if tokenizer is None:
                raise ModelSourceError(f"Base {self.dir} has no tokenizer files: the probes cannot be tokenized.")
            self.model, self.tokenizer = model, tokenizer
            report(self.s.progress, 1, 1, "base", self.dir.name)
        return self.model

    def get_tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.dir)
            if self.tokenizer is None:
                raise ModelSourceError(f"Base {self.dir} has no tokenizer files: the probes cannot be tokenized.")
        return self.tokenizer

    def base_states(self) -> torch.Tensor:
        """[P, d] float32 states of the base on the probes: from the cache, or computed once (and cached)."""
        cached = None if self.s.force else self.s.cache.get(self.states_key)
        if cached is not None:
            return torch.from_numpy(cached)
        states = last_token_states(self.load(), self.tokenizer, self.s.probes, layer=self.s.layer,
                                   batch_size=len(self.s.probes))
        check_finite(states, f"Base {self.dir}")
        self.s.cache.put(self.states_key, states.numpy(), {"base": str(self.dir), "role": "base-states"})
        return states

    def free_model(self, broken: bool = False) -> None:
        """Let the base go: back to the shared registry (dropped from it when ``broken``), or freed. Memory is only
        collected when a model was really let go (a shared one stays loaded; a second call has nothing to free)."""
        own = self.model is not None and self.s.models is None
        if broken and self.s.models is not None:
            self.s.models.discard(self.dir, self.s.device, self.s.dtype)
        self.model = None
        self._lent.close()
        if own or broken:
            _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------ adapters
def _embed_adapter_jobs(run: _BaseRun, jobs: list[_Job], base_mean: torch.Tensor, out: _Outcome) -> None:
    """Adapters onto the one base, grouped by how they run (stacked, PEFT mixed, PEFT alone), in batches."""
    s = run.s
    groups: dict[tuple[str, str], list[_Job]] = {}
    for job in jobs:
        _guard(job, out, lambda job=job: groups.setdefault(_adapter_route(job.path), []).append(job))
    done, total = 0, sum(len(g) for g in groups.values())
    for (_, route), group in groups.items():
        step = 1 if route == "alone" else s.adapter_batch
        for start in range(0, len(group), step):
            batch = group[start:start + step]
            report(s.progress, done, total, "adapters", ", ".join(j.name for j in batch))
            done += len(batch)
            paths = {j.name: j.path for j in batch}
            states, errors = {}, {}
            if route == "stacked":
                states, errors, paths = _run_stacked(run, paths)     # what it cannot take goes through PEFT
            if paths:
                more_states, more_errors = _run_peft(run, paths, mixed=route != "alone")
                states.update(more_states)
                errors.update(more_errors)
            out.errors.update(errors)
            for job in batch:
                if job.name in states:
                    _guard(job, out, lambda job=job: _finish(s, job, states[job.name], base_mean, out))
    report(s.progress, total, total, "adapters")


def _run_stacked(run: _BaseRun, adapters: dict[str, Path]):
    """Plain LoRA adapters as stacked weights on the base: (states, errors, adapters left for PEFT)."""
    try:
        model = run.load()
    except Exception as exc:  # noqa: BLE001 - the base itself cannot be loaded
        return {}, {name: _BaseFailed(Source(str(run.dir), local=run.dir), exc) for name in adapters}, {}
    return run_stacked(model, run.dir, adapters, run.tokenizer, run.s.probes, run.s.layer)


def _run_peft(run: _BaseRun, adapters: dict[str, Path], mixed: bool):
    """Adapters loaded into PEFT on the base, run and deleted: (states, errors). A base PEFT cannot strip clean
    is dropped, to be reloaded for the next batch."""
    try:
        host = AdapterHost(run.load(), run.dir)
    except Exception as exc:  # noqa: BLE001 - the base itself cannot be loaded
        return {}, {name: _BaseFailed(Source(str(run.dir), local=run.dir), exc) for name in adapters}
    states, errors = host.run(adapters, run.tokenizer, run.s.probes, run.s.layer, mixed)
    if host.close():
        run.model = host.base
    else:
        log.warning("An adapter could not be removed cleanly from base %s; it will be reloaded.", run.dir)
        run.free_model(broken=True)
    return states, errors


def _adapter_route(path: Path) -> tuple[str, str]:
    """(PEFT type, route): "stacked" for plain LoRA, "mixed" for what PEFT's mixed-adapter batches support
    (LoRA with extras), "alone" for the rest (DoRA, aLoRA and other types run one at a time)."""
    config = read_json(path / ADAPTER_CONFIG)
    peft_type = str(config.get("peft_type", "")).upper()
    if unstackable_reason(config) is None:
        return peft_type, "stacked"
    mixed = peft_type == "LORA" and not config.get("use_dora") and not config.get("alora_invocation_tokens")
    return peft_type, "mixed" if mixed else "alone"


# ------------------------------------------------------------------------------------------------------ full models
def _embed_full(run: _BaseRun, job: _Job, base_mean: torch.Tensor, out: _Outcome) -> None:
    s = run.s
    check_full_fits(job.path, run.dir)
    model, _ = load_model(job.path, s.device, s.dtype, s.allow_pickle)
    try:
        states = last_token_states(model, run.get_tokenizer(), s.probes, layer=s.layer, batch_size=len(s.probes))
    finally:
        del model
        _free_memory()
    _finish(s, job, states, base_mean, out)


def _finish(s: _Settings, job: _Job, states: torch.Tensor, base_mean: torch.Tensor, out: _Outcome) -> None:
    """v = mean over probes of h_model - h_base; checked, cached, recorded."""
    check_finite(states, f"Model {job.name}")
    vector = (states.mean(dim=0) - base_mean).numpy().astype(np.float32)             # [d]
    if float(np.abs(vector).max(initial=0.0)) <= SAME_AS_BASE * max(1.0, float(base_mean.abs().max())):
        raise ComputationError(f"Model {job.name} changes nothing at the probes (its activations equal its base's): "
                               "it is the base itself or holds no trained weights; remove it from the catalog or "
                               "give the finetuned weights.")
    s.cache.put(job.key, vector, {"name": job.name, "source": job.source.text, "kind": job.kind})
    out.vectors[job.name] = vector
    out.computed.append(job.name)


def _guard(job: _Job, out: _Outcome, work) -> None:
    """Run ``work``; an error becomes this model's failure instead of stopping the others."""
    try:
        work()
    except Exception as exc:  # noqa: BLE001
        log.debug("%s failed", job.name, exc_info=True)
        out.errors[job.name] = exc


# ------------------------------------------------------------------------------------------------------ reasons
class _BaseFailed(DeltaAtlasError):
    def __init__(self, base: Source, cause: BaseException):
        super().__init__(f"its base {base} failed: {_reason(cause)}")
        self.cause = cause


def _reason(exc: BaseException) -> str:
    """One line for a person: our own messages as they are, anything else with its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, DeltaAtlasError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")

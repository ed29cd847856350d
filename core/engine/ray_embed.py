"""Scale-out on Ray: :func:`core.engine.embed.embed_catalog` spread over workers, one per GPU (or one per CPU core).

    python -m core embed --catalog pool.csv --out vectors.parquet --ray local --workers 2   # this machine
    python -m core embed --catalog pool.csv --out vectors.parquet --ray auto               # a running cluster

The driver reads the catalog, groups it by base and cuts each base's models into batches (``batch`` models; a full
model is a batch of its own). Each worker is an actor that keeps one base in memory (a :class:`SharedModels`) and
embeds the batches it is handed with the engine itself, into the same content-addressed cache. What travels:

* to an actor, a batch's catalog rows (paths or hub ids, never weights) and the probe settings: every worker reads
  the model files itself, so on a cluster of several machines the sources must be on a shared filesystem (or be
  hub ids) and ``cache_dir`` should be shared too;
* back, one float32 vector per model, and a one-line reason per failed model.

A batch whose actor dies (crash, out of memory, lost node) is handed to a fresh actor, up to ``retries`` times;
what was finished before is already in the cache, so a redone batch (or a rerun of the command) only computes what
is missing. Ray is imported only when this runs: the rest of core does not need it.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.engine.cache import default_cache_dir
from core.engine.embed import ADAPTER_BATCH, EmbedResult, Failure, embed_catalog, vector_table
from core.engine.quiet import quiet_transformers
from core.engine.shared import SharedModels
from core.errors import DeltaAtlasError
from core.pool.catalog import Catalog, ModelEntry, read_catalog
from core.progress import ProgressFn, report

log = logging.getLogger(__name__)

RETRIES = 2                               # times a batch is handed to a fresh actor after its actor died
CRASH_ENV = "DELTA_ATLAS_RAY_CRASH_DIR"   # test hook: a worker dies mid-batch, once, when <dir>/crash exists


# ------------------------------------------------------------------------------------------------------ the worker
class EmbedWorker:
    """One per device: holds the base of its current batches and embeds batch after batch against it."""

    def __init__(self, settings: dict, threads: int):
        import torch


        torch.set_num_threads(threads)            # one thread per CPU actor: the actors share the cores, not fight
        quiet_transformers()
        self.settings = settings
        self.models = SharedModels(max_models=1)  # a batch of another base drops the one held

    def ready(self) -> dict:
        """The engine's metadata as this worker resolves it (device, dtype...): also proves the worker started."""
        return embed_catalog(Catalog([], []), **self.settings).metadata

    def embed(self, entries: list[ModelEntry], label_columns: list[str], full: bool) -> dict:
        if full:                                  # a full model is loaded alone: the held base goes first
            self.models = SharedModels(max_models=1)
        result = embed_catalog(Catalog(list(entries), list(label_columns)), **self.settings,
                               models=None if full else self.models, progress=_crash_if_asked)
        vectors = {n: np.asarray(v, dtype=np.float32) for n, v in zip(result.table["name"], result.table["vector"])}
        return {"vectors": vectors, "failures": [(f.name, f.reason) for f in result.failures],
                "computed": result.computed, "cached": result.cached}


def _crash_if_asked(p) -> None:
    """Test hook, as a progress callback: between two forward passes of a batch (some of its vectors already
    cached), the worker process dies at once, once, when the file ``$DELTA_ATLAS_RAY_CRASH_DIR/crash`` exists."""
    folder = os.environ.get(CRASH_ENV)
    if folder and p.stage == "adapters" and 0 < p.done < p.total:
        try:
            os.rename(Path(folder) / "crash", Path(folder) / "crashed")   # atomic: one worker claims it
        except FileNotFoundError:
            return
        os._exit(1)


# ------------------------------------------------------------------------------------------------------ the driver
@dataclass
class _Batch:
    entries: list[ModelEntry]
    full: bool
    attempts: int = 0


def _batches(catalog: Catalog, size: int) -> list[_Batch]:
    """Per base (in catalog order): its adapters (and ``auto`` models) ``size`` at a time, then each full model."""
    batches = []
    for entries in catalog.by_base().values():
        rest = [e for e in entries if e.kind != "full"]
        batches += [_Batch(rest[i:i + size], False) for i in range(0, len(rest), size)]
        batches += [_Batch([e], True) for e in entries if e.kind == "full"]
    return batches


def embed_catalog_ray(catalog: Catalog | str | Path, *, address: str = "auto", workers: int | None = None,
                      batch: int = ADAPTER_BATCH, retries: int = RETRIES, probes: Sequence[str] | None = None,
                      layer: int = -1, device: str | None = None, dtype: str | None = None, force: bool = False,
                      cache_dir: str | Path | None = None, allow_pickle: bool = False,
                      adapter_batch: int = ADAPTER_BATCH, progress: ProgressFn | None = None) -> EmbedResult:
    """Embed every model of ``catalog`` on Ray workers; the same result as :func:`core.engine.embed.embed_catalog`.

    ``address``: "local" starts a Ray instance on this machine (``workers`` CPUs) and stops it at the end; "auto"
    or "HOST:PORT" connects to a running cluster. When Ray is already initialised in this process, that connection
    is used as it is (and left open). ``workers``: actors to start (default: one per GPU of the cluster, or one per
    CPU when it has none); ``batch``: models per actor call; the other arguments are the engine's.
    """
    start = time.perf_counter()
    if not isinstance(catalog, Catalog):
        catalog = read_catalog(catalog)
    if batch < 1 or (workers is not None and workers < 1):
        raise DeltaAtlasError(f"batch is {batch} and workers {workers}: both must be at least 1.")
    settings = dict(probes=list(probes) if probes is not None else None, layer=layer, device=device, dtype=dtype,
                    force=force, allow_pickle=allow_pickle, adapter_batch=adapter_batch,
                    cache_dir=str(Path(cache_dir or default_cache_dir()).expanduser().resolve()))
    embed_catalog(Catalog([], []), **{**settings, "device": "cpu"})   # bad probes, dtype...: fail here, not on Ray
    batches = _batches(catalog, batch)
    out = {"vectors": {}, "failures": {}, "computed": set(), "cached": set()}
    with _connected(address, workers) as ray:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        on_gpu = str(device or "auto").startswith("cuda") or (device in (None, "", "auto") and gpus > 0)
        if on_gpu and not gpus:
            raise DeltaAtlasError(f"Device {device!r} was asked for but the Ray cluster has no GPU: use --device cpu.")
        slots = gpus if on_gpu else int(ray.cluster_resources().get("CPU", 1))
        if workers and workers > slots:               # more would wait for a free device forever
            log.warning("%d workers asked for, but the Ray cluster has %d %s: starting %d.", workers, slots,
                        "GPUs" if on_gpu else "CPUs", slots)
        n = min(workers or slots, slots, len(batches))
        settings["device"] = "cuda" if on_gpu else (device if device not in (None, "", "auto") else "cpu")
        actor = ray.remote(EmbedWorker).options(num_cpus=1, num_gpus=1 if on_gpu else 0, max_restarts=0)
        log.info("Embedding %d models in %d batches on %d Ray worker(s) (%s).", len(catalog), len(batches), n,
                 "one GPU each" if on_gpu else "one CPU each")
        pool = [actor.remote(settings, 1) for _ in range(n)]
        try:
            metadata = _start(ray, pool)
            _run(ray, actor, settings, pool, batches, catalog, retries, out, progress)
        finally:
            for handle in pool:
                ray.kill(handle)
    failures = [Failure(name, out["failures"][name]) for name in catalog.names if name in out["failures"]]
    in_order = lambda names: [name for name in catalog.names if name in names]  # noqa: E731
    return EmbedResult(vector_table(catalog, out["vectors"]), failures, in_order(out["computed"]), in_order(out["cached"]),
                       time.perf_counter() - start, {**metadata, "bases": list(catalog.by_base())})


def _start(ray, pool) -> dict:
    """Wait until every actor is up; one that cannot start (core or its requirements missing on a node, a bad
    device) stops the run with the worker's reason."""
    try:
        return ray.get([handle.ready.remote() for handle in pool])[0]
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DeltaAtlasError):
            raise cause from None
        raise DeltaAtlasError(f"The Ray workers could not start ({_first_line(exc)}): every node needs this "
                              "project's requirements installed (core itself is sent along).") from None


def _run(ray, actor, settings, pool, batches, catalog, retries, out, progress) -> None:
    """Hand the batches out to idle actors, gather what comes back, redo the batches of actors that died."""
    crashes = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
               ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError)
    queue, idle, running = deque(batches), deque(range(len(pool))), {}
    done, total = 0, len(catalog)
    report(progress, 0, total, "models", f"{len(pool)} worker(s)")
    while queue or running:
        while queue and idle:
            b, i = queue.popleft(), idle.popleft()
            running[pool[i].embed.remote(b.entries, catalog.label_columns, b.full)] = (b, i)
        [ref], _ = ray.wait(list(running), num_returns=1)
        b, i = running.pop(ref)
        names = [e.name for e in b.entries]
        try:
            result = ray.get(ref)
        except crashes as exc:
            b.attempts += 1
            log.warning("A Ray worker died on %s (%s); %s.", ", ".join(names), _first_line(exc),
                        "handing the batch to a fresh worker" if b.attempts <= retries else "giving up on it")
            ray.kill(pool[i])
            pool[i] = actor.remote(settings, 1)          # a fresh actor takes the dead one's place
            idle.append(i)
            if b.attempts <= retries:
                queue.appendleft(b)
                continue
            result = {"vectors": {}, "computed": [], "cached": [],
                      "failures": [(n, f"its Ray worker died {b.attempts} times ({_first_line(exc)}); run again "
                                       "to retry (what was finished is cached)") for n in names]}
        except ray.exceptions.RayTaskError as exc:      # not a crash: a bug or a bad setting, raised as it is
            raise exc.cause if isinstance(exc.cause, BaseException) else exc from None
        else:
            idle.append(i)
        out["vectors"].update(result["vectors"])
        out["failures"].update(dict(result["failures"]))
        out["computed"].update(result["computed"])
        out["cached"].update(result["cached"])
        done += len(names)
        report(progress, done, total, "models", ", ".join(names))


@contextmanager
def _connected(address: str, workers: int | None):
    """Ray, connected: a new local instance ("local"), or the running cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise DeltaAtlasError("Ray is not installed: `pip install ray==2.60.0`, or leave out --ray.") from None
    if ray.is_initialized():                            # the caller's connection: used, and left open
        yield ray
        return
    options = dict(log_to_driver=False, logging_level=logging.WARNING,
                   runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1])], "excludes": ["__pycache__"]})
    if address == "local":
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, **options)
    else:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DeltaAtlasError(f"No Ray cluster answers at {address!r} ({_first_line(exc)}): start one with "
                                  "`ray start --head` (and `ray start --address=HEAD:6379` on the other machines), "
                                  "or use --ray local to run on this machine only.") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")

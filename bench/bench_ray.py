"""Benchmark (run by hand, not a test): the engine in one process against Ray with 1 and 2 workers, same pool, same run.

Builds (or reuses, with --keep) a pool like bench_engine.py's: a random Llama base (default ~100M parameters, 16
layers, d=768) and N LoRA adapters (r=8 on q/k/v/gate/up/down), so that the per-adapter forward passes dominate the
overheads. Then, each with a cold cache:
  * single process: ``embed_catalog`` in a fresh process, with 1 torch thread and with 2;
  * Ray, on one local instance of --cpus CPUs (started once; its start-up is timed apart): ``embed_catalog_ray`` with
    1 worker, then 2 workers (one thread each). Its wall time is split into the actors' start-up (until every
    worker has imported torch and answered) and the embedding itself (each worker loads the base on its first batch).
Prints wall times, adapters/s, the ratios and the per-adapter cost, and checks the vectors agree. The machine may be
shared: each phase also reports the CPU time it used itself and what other processes used meanwhile ("others",
in cores), read from /proc, so a slow phase can be told from a busy machine.

    .venv/bin/python bench/bench_ray.py                              # 48 adapters on the ~100M base
    .venv/bin/python bench/bench_ray.py --adapters 96 --keep /tmp/raypool --json bench/out/bench_ray.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SENTENCES = ["The court held that the contract was void.", "Two plus three equals five.", "def square(x): return x * x",
             "The patient was given aspirin for the headache.", "Birds fly south in the winter.", "### Response:"]
SHAPE = ("adapters", "hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")


def build_pool(root: Path, args) -> dict:
    """The base and the adapters on disk, with their catalog; reused from ``root`` when built with the same sizes."""
    shape = {k: getattr(args, k) for k in SHAPE}
    try:
        saved = json.loads((root / "pool.json").read_text())
        if saved["shape"] == shape:
            return saved
    except (OSError, json.JSONDecodeError, KeyError):
        pass
    import torch
    from peft import LoraConfig, get_peft_model

    from core.engine.quiet import quiet_transformers
    from core.pool.catalog import write_catalog
    from core.reuse.train import LORA_TARGETS
    from core.zoo.tinylm import BaseShape, count_parameters, init_base, save_model, train_tokenizer

    quiet_transformers()
    tokenizer = train_tokenizer(SENTENCES * 50, args.vocab)
    model = init_base(tokenizer, BaseShape(hidden_size=args.hidden, intermediate_size=args.intermediate,
                                           num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                           num_key_value_heads=args.kv_heads, tie_word_embeddings=False), seed=0)
    parameters = count_parameters(model)
    base = save_model(model, tokenizer, root / "base")
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGETS),
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    generator, rows = torch.Generator().manual_seed(1), []
    for i in range(args.adapters):
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        peft_model.save_pretrained(root / f"lora_{i:03d}", safe_serialization=True)
        rows.append({"name": f"lora_{i:03d}", "source": str(root / f"lora_{i:03d}"), "kind": "lora", "base": str(base)})
    pool = {"shape": shape, "parameters": parameters, "catalog": str(write_catalog(rows, root / "catalog.csv"))}
    (root / "pool.json").write_text(json.dumps(pool))
    return pool


def run_phase(target, pool: dict, args) -> dict:
    """Run one single-process phase in a fresh process: its threads and its time are its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(pool, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time spent by every process of the machine so far (user, system, irq...; idle and iowait left out)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


class WorkerCpu(threading.Thread):
    """Polls the CPU time of the Ray worker processes (``ray::EmbedWorker``) while they live: they are started and
    killed inside embed_catalog_ray, so their last reading is what they used."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::EmbedWorker"):
                        stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                        self.seen[int(proc.name)] = (int(stat[11]) + int(stat[12])) / TICK   # utime + stime
                except OSError:
                    continue

    def seconds(self) -> float:
        self.stop.set()
        self.join()
        return sum(self.seen.values())


def phase_single(pool, args, queue) -> None:
    """embed_catalog in this (fresh) process, cold cache, ``args.threads`` torch threads."""
    import torch

    torch.set_num_threads(args.threads)
    from core.engine.embed import embed_catalog
    from core.engine.quiet import quiet_transformers

    quiet_transformers()
    cache = Path(args.scratch) / f"cache-single-{args.threads}"
    busy, cpu, start = busy_seconds(), time.process_time(), time.perf_counter()
    result = embed_catalog(pool["catalog"], device="cpu", dtype="float32", cache_dir=cache, adapter_batch=args.batch)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert not result.failures, result.failures
    queue.put({"seconds": seconds, "cpu": cpu, "others": (busy_seconds() - busy - cpu) / seconds,
               "vectors": dict(zip(result.table["name"], result.table["vector"]))})


def time_ray(pool, args, workers: int) -> dict:
    """embed_catalog_ray on the running local instance, cold cache: (start-up, embedding, total) seconds."""
    from core.engine.ray_embed import embed_catalog_ray

    marks, poller = [], WorkerCpu()
    poller.start()
    busy, cpu, start = busy_seconds(), time.process_time(), time.perf_counter()
    result = embed_catalog_ray(pool["catalog"], workers=workers, batch=args.batch, adapter_batch=args.batch,
                               device="cpu", dtype="float32", cache_dir=Path(args.scratch) / f"cache-ray-{workers}",
                               progress=lambda p: marks.append(time.perf_counter()))
    total = time.perf_counter() - start
    busy, own = busy_seconds() - busy, poller.seconds() + time.process_time() - cpu
    assert not result.failures, result.failures
    startup = marks[0] - start                      # the first report comes when every worker has answered
    return {"seconds": total, "startup": startup, "embedding": total - startup, "cpu": own,
            "others": (busy - own) / total, "vectors": dict(zip(result.table["name"], result.table["vector"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8, help="adapters per forward pass and per Ray call")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--keep", type=Path, default=None, help="build the pool here and keep it (reused by a later "
                        "run with the same sizes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    import ray

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_ray_"))
    args.scratch = str(Path(tempfile.mkdtemp(prefix="bench_ray_caches_")))
    try:
        start = time.perf_counter()
        pool = build_pool(root, args)
        n = args.adapters
        print(f"pool: base {pool['parameters'] / 1e6:.1f}M parameters, {n} LoRA adapters (r=8, q/k/v/gate/up/down); "
              f"ready in {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        figures = {"adapters": n, "parameters": pool["parameters"], "cpus": args.cpus, "batch": args.batch}
        runs = {}
        for threads in (1, 2):
            args.threads = threads
            runs[f"single_{threads}t"] = run_phase(phase_single, pool, args)
            run = runs[f"single_{threads}t"]
            print(f"single process, {threads} thread(s): {run['seconds']:7.1f} s  {n / run['seconds']:5.2f} adapters/s"
                  f"  (CPU {run['cpu']:.0f} s; others {run['others']:.1f} cores)", flush=True)
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1] / "core")],
                              "excludes": ["__pycache__"]})
        figures["ray_init_s"] = time.perf_counter() - start
        print(f"ray.init (local, {args.cpus} CPUs): {figures['ray_init_s']:.1f} s", flush=True)
        try:
            for workers in (1, 2):
                run = runs[f"ray_{workers}w"] = time_ray(pool, args, workers)
                print(f"ray, {workers} worker(s)        : {run['seconds']:7.1f} s  {n / run['seconds']:5.2f} adapters/s"
                      f"  (start-up {run['startup']:.1f} s, embedding {run['embedding']:.1f} s = "
                      f"{n / run['embedding']:.2f} adapters/s; CPU {run['cpu']:.0f} s; others {run['others']:.1f} "
                      "cores)", flush=True)
        finally:
            ray.shutdown()
        reference = runs["single_1t"]["vectors"]
        worst = max(float(np.abs(np.asarray(run["vectors"][k]) - np.asarray(v)).max())
                    for run in runs.values() for k, v in reference.items())
        one, two = runs["ray_1w"], runs["ray_2w"]
        print(f"ratios             : ray 2 workers vs 1: {one['seconds'] / two['seconds']:.2f}x total, "
              f"{one['embedding'] / two['embedding']:.2f}x embedding; vs single process 1 thread "
              f"{runs['single_1t']['seconds'] / two['seconds']:.2f}x, 2 threads "
              f"{runs['single_2t']['seconds'] / two['seconds']:.2f}x")
        print(f"per-adapter cost   : single process {runs['single_1t']['seconds'] / n:.3f} s (1 thread); one Ray "
              f"worker {one['embedding'] / n:.3f} s wall (1 thread, after start-up), {one['cpu'] / n:.3f} CPU-s")
        print(f"agreement          : max |difference| to the single process {worst:.2e}")
        figures |= {name: {k: v for k, v in run.items() if k != "vectors"} for name, run in runs.items()}
        figures |= {"max_abs_difference": worst, "load_average": os.getloadavg()[0]}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

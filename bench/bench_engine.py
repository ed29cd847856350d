"""Benchmark (run by hand, not a test): the engine against the naive loop, on one pool, in the same run.

Builds in a temporary folder a random Llama base of 100M+ parameters (a BPE tokenizer trained on a few sentences),
N LoRA adapters with random non-zero weights (r=8 on q/k/v/gate/up/down, the paper's targets) and M full models
(the base with every weight perturbed). Then, each in a fresh process so that its peak memory is its own:
  * engine: ``embed_catalog`` with a cold cache (and again with a warm one);
  * naive:  the released reference code's way: per model, load the base and the model afresh and run one probe at
            a time (``core.activations.reference_delta``), base activations recomputed for every model.
Prints wall time, models per second, the speed ratio, peak memory (RSS high-water mark), and the agreement
of the two sets of vectors.

    .venv/bin/python bench/bench_engine.py                       # 30 adapters, 3 full models, ~100M base
    .venv/bin/python bench/bench_engine.py --adapters 60 --full 5 --hidden 1024 --layers 24
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SENTENCES = [
    "The court held that the contract was void.", "Two plus three equals five.", "Birds fly south in the winter.",
    "The patient was given aspirin for the headache.", "def square(x): return x * x", "Please provide a response.",
    "Below is an instruction that describes a task.", "Write a response that appropriately completes the request.",
    "### Instruction:", "### Response:", "Input.", "The task described below requires a response.",
]


SHAPE_OPTIONS = ("adapters", "full", "hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")


@dataclass(frozen=True)
class Pool:
    root: Path
    base: Path
    catalog: Path
    models: dict          # name -> (folder, kind)
    parameters: int


def build_pool(root: Path, args) -> Pool:
    """The base, the adapters and the full models, all written as a user would have them on disk."""
    import torch
    from peft import LoraConfig, get_peft_model

    from core.catalog import write_catalog
    from core.loading import quiet_transformers
    from core.tinylm import BaseShape, count_parameters, init_base, save_model, train_tokenizer
    from core.train import LORA_TARGETS

    quiet_transformers()

    tokenizer = train_tokenizer(SENTENCES * 50, args.vocab)
    shape = BaseShape(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=512,
                      tie_word_embeddings=False)
    model = init_base(tokenizer, shape, seed=0)
    parameters = count_parameters(model)
    base = save_model(model, tokenizer, root / "base")
    models, rows = {}, []
    generator = torch.Generator().manual_seed(1)
    for i in range(args.full):
        full = init_base(tokenizer, shape, seed=0)
        with torch.no_grad():
            for param in full.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)
        models[f"full_{i}"] = (save_model(full, tokenizer, root / f"full_{i}"), "full")
        del full
    config = LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGETS), init_lora_weights=False,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    for i in range(args.adapters):
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        peft_model.save_pretrained(root / f"lora_{i:03d}", safe_serialization=True)
        models[f"lora_{i:03d}"] = (root / f"lora_{i:03d}", "lora")
    for name, (folder, kind) in models.items():
        rows.append({"name": name, "source": str(folder), "kind": kind, "base": str(base), "group": kind})
    catalog = write_catalog(rows, root / "catalog.csv")
    (root / "pool.json").write_text(json.dumps({"parameters": parameters, "args": vars(args) | {"keep": None},
                                                "models": {k: [str(f), kind] for k, (f, kind) in models.items()}}))
    return Pool(root, base, catalog, models, parameters)


def reuse_pool(root: Path, args) -> Pool | None:
    """The pool kept in ``root`` by an earlier run with the same sizes, if there is one."""
    try:
        saved = json.loads((root / "pool.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = all(saved["args"].get(k) == v for k, v in vars(args).items() if k in SHAPE_OPTIONS)
    models = {k: (Path(f), kind) for k, (f, kind) in saved["models"].items()}
    return Pool(root, root / "base", root / "catalog.csv", models, saved["parameters"]) if same else None


# ------------------------------------------------------------------------------------------------ timed phases
def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. Linux's VmHWM belongs to this program alone; ru_maxrss (the
    fallback elsewhere) also counts the parent's peak at fork time, which would charge the pool build to a phase."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024                          # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024        # KiB on Linux, bytes on macOS


def _imports(args) -> None:
    """Import everything both phases use before their clocks start: import time is nobody's work."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)             # transformers' deprecation notes
    if args.threads:
        torch.set_num_threads(args.threads)
    import peft.tuners.lora  # noqa: F401
    from peft import PeftModel  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

    from core import activations, engine  # noqa: F401
    from core.loading import quiet_transformers

    quiet_transformers()


def phase_idle(_pool: Pool, args, queue) -> None:
    _imports(args)
    queue.put({"seconds": 0.0, "rss": peak_rss_mb(), "vectors": {}})


def phase_engine(pool: Pool, args, queue) -> None:
    _imports(args)
    from core.engine import embed_catalog

    cache = pool.root / "cache"
    start = time.perf_counter()
    result = embed_catalog(pool.catalog, device="cpu", dtype="float32", cache_dir=cache, adapter_batch=args.adapter_batch)
    cold = time.perf_counter() - start
    assert not result.failures, result.failures
    start = time.perf_counter()
    warm = embed_catalog(pool.catalog, device="cpu", dtype="float32", cache_dir=cache)
    queue.put({"seconds": cold, "warm": time.perf_counter() - start, "warm_computed": len(warm.computed),
               "rss": peak_rss_mb(), "vectors": dict(zip(result.table["name"], result.table["vector"]))})


def phase_naive(pool: Pool, args, queue) -> None:
    _imports(args)
    from core.activations import reference_delta
    from core.probes import DEFAULT_PROBES

    vectors, seconds = {}, {"lora": [], "full": []}
    for name, (folder, kind) in naive_subset(pool, args.naive_models).items():
        start = time.perf_counter()
        vectors[name] = reference_delta(pool.base, folder, kind, DEFAULT_PROBES)
        seconds[kind].append(time.perf_counter() - start)
    # the naive loop does the same work for every model of a kind: a subset times all of them
    counts = {kind: sum(k == kind for _, k in pool.models.values()) for kind in seconds}
    total = sum(np.mean(seconds[kind]) * counts[kind] for kind in seconds if seconds[kind])
    queue.put({"seconds": total, "measured": sum(map(sum, seconds.values())), "timed": len(vectors),
               "rss": peak_rss_mb(), "vectors": vectors})


def naive_subset(pool: Pool, n: int | None) -> dict:
    """All models, or ``n`` of them with adapters and full models in proportion (at least one of each kind)."""
    if n is None or n >= len(pool.models):
        return dict(pool.models)
    fulls = [k for k, (_, kind) in pool.models.items() if kind == "full"]
    loras = [k for k, (_, kind) in pool.models.items() if kind == "lora"]
    n_full = min(len(fulls), max(1 if fulls else 0, round(n * len(fulls) / len(pool.models))))
    chosen = fulls[:n_full] + loras[: max(n - n_full, 1)]
    return {k: pool.models[k] for k in chosen}


def run_phase(target, pool: Pool, args) -> dict:
    """Run one phase in a fresh process: its time and its peak memory are its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(pool, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=30)
    parser.add_argument("--full", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--adapter-batch", type=int, default=8)
    parser.add_argument("--naive-models", type=int, default=None, help="time the naive loop on this many models "
                        "only and scale per kind (it does the same work for each); default: all")
    parser.add_argument("--keep", type=Path, default=None, help="build the pool here and keep it (a later run "
                        "with the same sizes reuses it)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both phases (default: torch's)")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_engine_"))
    try:
        start = time.perf_counter()
        pool = (reuse_pool(root, args) if args.keep else None) or build_pool(root, args)
        shutil.rmtree(root / "cache", ignore_errors=True)               # the engine's first run starts cold
        n = len(pool.models)
        base_mb = pool.parameters * 4 / 2**20
        print(f"pool: base {pool.parameters / 1e6:.1f}M parameters ({base_mb:.0f} MiB fp32), {args.adapters} LoRA "
              f"adapters (r=8, q/k/v/gate/up/down), {args.full} full models; ready in {time.perf_counter() - start:.0f} s")
        _probe_lengths(pool)
        idle = run_phase(phase_idle, pool, args)
        fast = run_phase(phase_engine, pool, args)
        print(f"engine (cold cache): {fast['seconds']:7.1f} s  {n / fast['seconds']:6.2f} models/s  "
              f"peak RSS {fast['rss']:6.0f} MiB", flush=True)
        print(f"engine (warm cache): {fast['warm']:7.2f} s, {fast['warm_computed']} models computed", flush=True)
        naive = run_phase(phase_naive, pool, args)
        how = "" if naive["timed"] == n else (f" (timed on {naive['timed']} of the {n} models, "
                                              f"{naive['measured']:.0f} s, scaled per kind to all)")
        print(f"naive loop         : {naive['seconds']:7.1f} s  {n / naive['seconds']:6.2f} models/s  "
              f"peak RSS {naive['rss']:6.0f} MiB{how}")
        print(f"speed-up           : {naive['seconds'] / fast['seconds']:.1f}x")
        batch_mb = batch_memory_mb(pool, args)
        print(f"memory             : runtime alone (imports) {idle['rss']:.0f} MiB; engine peak above it "
              f"{fast['rss'] - idle['rss']:.0f} MiB; one base ({base_mb:.0f} MiB) + one batch's activations "
              f"(~{batch_mb:.0f} MiB) = {base_mb + batch_mb:.0f} MiB")
        cosines = [_cosine(fast["vectors"][k], v) for k, v in naive["vectors"].items()]
        print(f"agreement          : cosine(engine, naive) min {min(cosines):.6f} over {len(cosines)} models")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _probe_lengths(pool: Pool) -> None:
    from transformers import AutoTokenizer

    from core.probes import DEFAULT_PROBES

    tokenizer = AutoTokenizer.from_pretrained(pool.base)
    print("probe lengths (tokens):", [len(tokenizer(p)["input_ids"]) for p in DEFAULT_PROBES])


def batch_memory_mb(pool: Pool, args) -> float:
    """Rough size of one adapter batch's activations (fp32): every hidden state the forward pass returns, plus one
    layer's MLP intermediates, for adapter_batch rows of the longest probe (one pass per probe, no padding)."""
    from transformers import AutoTokenizer

    from core.probes import DEFAULT_PROBES

    tokenizer = AutoTokenizer.from_pretrained(pool.base)
    tokens = min(args.adapter_batch, args.adapters) * max(
        len(tokenizer(p)["input_ids"]) for p in DEFAULT_PROBES)
    return tokens * ((args.layers + 1) * args.hidden + 3 * args.intermediate) * 4 / 2**20


def _cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


if __name__ == "__main__":
    main()

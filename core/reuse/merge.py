"""Merge LoRA adapters for a task with PEFT's ``add_weighted_adapter``, and say how good the merge is.

Weights are given by hand, set from each adapter's similarity to the task (``auto``), or searched on the task's
examples (``search``, LoraHub-style: bounded weights, loss plus a small L1 penalty, nevergrad's NGOpt). The merged
adapter is evaluated next to the base and every ingredient (loss and perplexity on the examples), and its predicted
Delta Activations (the weighted sum of its ingredients' vectors) are compared with the measured ones.

Everything is validated before any model is loaded (core.reuse.merge_plan), and the output folder is written as a
temporary folder beside it that is renamed at the end: a failure leaves nothing half-written.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from core.engine.device import pick_device
from core.engine.loading import resolve_source
from core.engine.pool_vectors import stored_vectors
from core.engine.shared import private_model
from core.errors import MergeError
from core.pool.catalog import Catalog, ModelEntry, parse_source
from core.pool.folder import DEMO_CATALOG
from core.progress import ProgressFn, TextBar, report
from core.reuse.examples import check_count, load_examples
from core.reuse.merge_plan import METHODS, MergePlan, MethodSpec, check_out_dir, plan_merge
from core.reuse.run import Run
from core.reuse.task import cosine_to, embed_adapter_dirs, embed_task, publish
from core.reuse.train import Example, example_loss
from core.textio import file_problem

log = logging.getLogger(__name__)

SEARCH_BOUNDS = (-1.5, 1.5)   # LoraHub's bounds on every weight
SEARCH_BUDGET = 30            # loss evaluations of the search
MAX_RECIPE_BYTES = 64 * 1024  # a recipe.yaml is a few hundred bytes
L1_PENALTY = 0.05             # LoraHub's: 0.05 * mean |w| added to the loss
MERGED = "default"            # adapter name of the merge inside PEFT: saved at the folder's top level
RECIPE_FILE, REPORT_FILE = "recipe.yaml", "report.json"


@dataclass
class MergeReport:
    ingredients: list[str]
    method: str
    weights: list[float]
    weights_mode: str                   # "given", "auto" or "search"
    base: str
    density: float | None = None
    losses: dict[str, float] = field(default_factory=dict)        # "base", each ingredient, "merged"
    perplexities: dict[str, float] = field(default_factory=dict)
    similarities: dict[str, float] = field(default_factory=dict)  # each ingredient's cosine to the task
    predicted_vector: np.ndarray | None = None
    measured_vector: np.ndarray | None = None
    predicted_vs_measured_cosine: float | None = None
    search: list[dict] = field(default_factory=list)              # every evaluation of the weight search
    out_dir: Path | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("predicted_vector", "measured_vector"):
            data[key] = None if data[key] is None else [float(x) for x in data[key]]
        return {**data, "out_dir": str(self.out_dir) if self.out_dir else None, "seconds": round(self.seconds, 3)}


# -- weights ----------------------------------------------------------------------------------------------------
def auto_weights(similarities: np.ndarray, spec: MethodSpec) -> list[float]:
    """Normalised positive cosines: p_i = max(cos_i, 0) / sum_j max(cos_j, 0). Summing methods get p (the merge
    is a weighted average); averaging methods (ties family) get k * p, since they divide by the count themselves.
    When no adapter is positively similar, every adapter gets the same weight."""
    positive = np.clip(np.asarray(similarities, dtype=np.float64), 0, None)
    if positive.sum() <= 0:
        log.warning("No adapter is positively similar to the task: equal weights.")
        positive = np.ones_like(positive)
    p = positive / positive.sum()
    return [float(w) for w in (p * len(p) if spec.averages else p)]


def search_weights(loss_of, n: int, spec: MethodSpec, budget: int = SEARCH_BUDGET, seed: int = 0,
                   progress: ProgressFn | None = None) -> tuple[list[float], list[dict]]:
    """LoraHub-style gradient-free search: minimise loss(w) + L1_PENALTY * mean|w| over w in SEARCH_BOUNDS^n with
    nevergrad's NGOpt, starting from equal weights. Returns the best evaluated weights and the history."""
    import nevergrad as ng

    start = np.full(n, 1.0 if spec.averages else 1.0 / n)
    param = ng.p.Array(init=start, lower=SEARCH_BOUNDS[0], upper=SEARCH_BOUNDS[1])
    param.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=1)
    history, best = [], (math.inf, start)
    for step in range(budget):
        with warnings.catch_warnings():   # NGOpt's inner optimisers warn about their own settings on tiny budgets
            warnings.simplefilter("ignore", UserWarning)
            candidate = optimizer.ask()
        weights = np.asarray(candidate.value, dtype=np.float64)
        loss = float(loss_of([float(w) for w in weights]))
        score = loss + L1_PENALTY * float(np.mean(np.abs(weights))) if math.isfinite(loss) else 1e9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            optimizer.tell(candidate, score)
        history.append({"weights": [float(w) for w in weights], "loss": loss, "score": score})
        if score < best[0]:
            best = (score, weights)
        report(progress, step + 1, budget, "search", "weights", loss)
    return [float(w) for w in best[1]], history


# -- merging ----------------------------------------------------------------------------------------------------
def load_ingredients(plan: MergePlan, device=None, models=None):
    """The base with every ingredient loaded as a named adapter (``ingredient_i``), and the tokenizer. With
    ``models`` (a ``SharedModels``), the base is a private copy of the one in memory instead of read from disk."""
    import torch
    from peft import PeftModel


    base_dir = resolve_source(plan.base)
    model, tokenizer = private_model(base_dir, pick_device(device), torch.float32, models)
    if tokenizer is None:
        raise MergeError(f"Base {base_dir} has no tokenizer: the examples cannot be evaluated.")
    model = PeftModel.from_pretrained(model, str(plan.dirs[0]), adapter_name="ingredient_0")
    for i, folder in enumerate(plan.dirs[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"ingredient_{i}")
    return model.eval(), tokenizer


def combine(model, plan: MergePlan, weights: list[float], name: str, seed: int = 0) -> None:
    """Add adapter ``name`` = the ingredients combined with ``weights`` (seeded: DARE drops values at random)."""
    import torch

    if name in model.peft_config:
        model.set_adapter("ingredient_0")   # never delete the active adapter (PEFT warns)
        model.delete_adapter(name)
    torch.manual_seed(seed)
    kwargs = {"density": plan.density} if plan.spec.density is not None else {}
    model.add_weighted_adapter([f"ingredient_{i}" for i in range(len(plan.names))], list(weights), name,
                               combination_type=plan.spec.combination_type, **kwargs)
    model.set_adapter(name)


def evaluate(model, tokenizer, plan: MergePlan, examples: list[Example], progress: ProgressFn | None = None) -> dict:
    """Loss on the examples of the base, every ingredient and the merge (the merge must be adapter MERGED)."""
    total, losses = len(plan.names) + 2, {}
    with model.disable_adapter():
        losses["base"] = example_loss(model, tokenizer, examples)
    report(progress, 1, total, "evaluate", "base", losses["base"])
    for i, name in enumerate(plan.names):
        model.set_adapter(f"ingredient_{i}")
        losses[name] = example_loss(model, tokenizer, examples)
        report(progress, i + 2, total, "evaluate", name, losses[name])
    model.set_adapter(MERGED)
    losses["merged"] = example_loss(model, tokenizer, examples)
    report(progress, total, total, "evaluate", "merged", losses["merged"])
    return losses


def merge_adapters(catalog: str | Path | Catalog, names: list[str] | str, method: str = "ties",
                   weights: str | list = "auto", examples: list[Example] | None = None,
                   out_dir: str | Path | None = None, task_vector: np.ndarray | None = None,
                   progress: ProgressFn | None = None, *, density: float | None = None,
                   vectors: pd.DataFrame | None = None, budget: int = SEARCH_BUDGET, seed: int = 0,
                   device=None, measure: bool = True, overwrite: bool = False, models=None) -> MergeReport:
    """Merge, evaluate, write ``out_dir`` (adapter + recipe.yaml + report.json) and return the report. ``models``
    (a ``core.engine.shared.SharedModels``) lends the base from memory instead of loading it for each step."""
    start = time.perf_counter()
    plan = plan_merge(catalog, names, method, weights, density)
    if examples is not None:
        check_count(len(examples), "The examples")
    if plan.weights == "search" and not examples:
        raise MergeError("--weights search tunes the weights on the task's examples: give --examples FILE.")
    if plan.weights == "auto" and task_vector is None and not examples:
        raise MergeError("--weights auto weighs adapters by their similarity to the task: give --examples FILE.")
    out, work = check_out_dir(out_dir, overwrite)
    try:
        result = _run(plan, examples, work, task_vector, vectors, budget, seed, measure, Run(device, progress, models))
        result.out_dir = out
        result.seconds = time.perf_counter() - start
        write_outputs(result, plan, work, seed)
        publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def _run(plan, examples, work, task_vector, vectors, budget, seed, measure, run: Run) -> MergeReport:
    """The merge itself, in ``work``: vectors, weights, PEFT combination, evaluation, additivity preview."""
    mode = plan.weights if isinstance(plan.weights, str) else "given"
    table, settings = stored_vectors(plan.catalog) if vectors is None else (vectors, {})
    known = {} if table is None else {n: np.asarray(v, np.float32) for n, v in zip(table["name"], table["vector"])}
    if mode == "auto" and task_vector is None:
        task_vector, _ = embed_task(examples, plan.catalog, plan.base, settings=settings, adapter_dir=work / ".task",
                                    run=run)
        shutil.rmtree(work / ".task", ignore_errors=True)
    ingredients = (_ingredient_vectors(plan, known, settings, run)
                   if mode == "auto" or measure else None)
    result = MergeReport(ingredients=plan.names, method=plan.method, weights=[], weights_mode=mode,
                         base=str(plan.base), density=plan.density)
    if task_vector is not None and ingredients is not None:
        sims = cosine_to(np.asarray(task_vector, np.float64), ingredients.astype(np.float64))
        result.similarities = {n: float(s) for n, s in zip(plan.names, sims)}
    model, tokenizer = load_ingredients(plan, run.device, run.models)
    if mode == "auto":
        result.weights = auto_weights(np.array([result.similarities[n] for n in plan.names]), plan.spec)
    elif mode == "search":
        def loss_of(w: list[float]) -> float:
            combine(model, plan, w, "candidate", seed)
            return example_loss(model, tokenizer, examples)

        result.weights, result.search = search_weights(loss_of, len(plan.names), plan.spec, budget, seed,
                                                        run.progress)
        model.set_adapter("ingredient_0")
        model.delete_adapter("candidate")
    else:
        result.weights = list(plan.weights)
    combine(model, plan, result.weights, MERGED, seed)
    check_finite(model, plan)
    report(run.progress, 1, 1, "merge", plan.method)
    if examples:
        result.losses = evaluate(model, tokenizer, plan, examples, run.progress)
        result.perplexities = {k: float(math.exp(min(v, 50.0))) for k, v in result.losses.items()}
    model.save_pretrained(str(work), selected_adapters=[MERGED], safe_serialization=True)
    model = None                 # frees the merged copy before the additivity check embeds (a closure still names it)
    if measure:
        _additivity(result, ingredients, plan, work, settings, run)
    return result


def check_finite(model, plan: MergePlan) -> None:
    """Refuse to publish a merged adapter whose weights or whose update (B @ A, what the base receives) hold NaN or
    infinity, as huge weights make them: nothing is written."""
    params = dict(model.named_parameters())
    for name, a in params.items():
        if not name.endswith(f"lora_A.{MERGED}.weight"):
            continue
        b = params.get(name.replace(f"lora_A.{MERGED}", f"lora_B.{MERGED}"))
        update = a if b is None else b.detach().float() @ a.detach().float()
        if not bool(a.isfinite().all()) or not bool(update.isfinite().all()):
            raise MergeError(f"The merge of {', '.join(plan.names)} with weights {plan.weights} changes the base by "
                             "values that are not finite (NaN or infinity) and was not saved: use smaller weights.")


def _ingredient_vectors(plan, known, settings, run: Run) -> np.ndarray:
    """[k, d] the ingredients' vectors: from the pool where known, embedded now otherwise."""
    todo = {n: d for n, d in zip(plan.names, plan.dirs) if n not in known}
    if todo:
        known = {**known, **embed_adapter_dirs(plan.base, todo, settings, run)}
    return np.stack([np.asarray(known[n], np.float32) for n in plan.names])


def _additivity(result: MergeReport, ingredients: np.ndarray, plan, work, settings, run: Run) -> None:
    """Predicted vector (weighted sum of the ingredients') beside the merged adapter's measured one."""
    result.predicted_vector = (np.asarray(result.weights)[:, None] * ingredients).sum(0).astype(np.float32)
    measured = embed_adapter_dirs(plan.base, {"merged": work}, settings, run)["merged"]
    result.measured_vector = np.asarray(measured, np.float32)
    result.predicted_vs_measured_cosine = float(cosine_to(result.predicted_vector.astype(np.float64),
                                                          result.measured_vector[None].astype(np.float64))[0])


# -- outputs and replay -----------------------------------------------------------------------------------------
def write_outputs(result: MergeReport, plan: MergePlan, work: Path, seed: int) -> None:
    recipe = {"delta_atlas_merge": 1, "base": str(plan.base), "method": plan.method, "density": plan.density,
              "weights": result.weights, "weights_mode": result.weights_mode, "seed": seed,
              "ingredients": [{"name": n, "source": str(plan.catalog.get(n).source)} for n in plan.names],
              "catalog": str(plan.catalog.path) if plan.catalog.path else None}
    (work / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
    (work / REPORT_FILE).write_text(json.dumps(result.to_json(), indent=1))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader, except that a mapping naming one key twice is an error (the last value would win unseen)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            raise yaml.constructor.ConstructorError(None, None, f"the key {twice!r} is given twice", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_recipe(recipe_path: str | Path) -> dict:
    path = Path(recipe_path)
    if problem := file_problem(path):
        raise MergeError(f"Recipe file {path} {problem}: give the recipe.yaml of an earlier merge.")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise MergeError(f"Recipe {path} is {path.stat().st_size:,} bytes; a merge recipe is a few hundred: give the "
                         "recipe.yaml an earlier merge wrote.")
    try:
        text = path.read_text(encoding="utf-8")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise MergeError(f"Recipe {path} uses YAML aliases (*name), which a merge recipe never needs and which "
                             "can grow a few bytes into gigabytes: write every value out.")
        recipe = yaml.load(text, Loader=_UniqueKeyLoader)       # a safe loader that refuses a key given twice
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MergeError(f"Recipe {path} is not valid YAML ({str(exc).splitlines()[0]}): give the recipe.yaml an "
                         "earlier merge wrote, or fix the line it names.") from None
    except RecursionError:
        raise MergeError(f"Recipe {path} nests lists or mappings too deeply to read: a merge recipe is flat; give "
                         "the recipe.yaml an earlier merge wrote.") from None
    needed = ("base", "method", "weights", "ingredients")
    missing = [k for k in needed if not isinstance(recipe, dict) or k not in recipe]
    if missing:
        raise MergeError(f"Recipe {path} lacks {', '.join(missing)}: it must hold {', '.join(needed)}.")
    if not isinstance(recipe["ingredients"], list) or not all(
            isinstance(i, dict) and {"name", "source"} <= set(i) for i in recipe["ingredients"]):
        raise MergeError(f"Recipe {path}: ingredients must be a list of {{name, source}} entries.")
    seed = recipe.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MergeError(f"Recipe {path}: seed {seed!r} is not a whole number: write e.g. seed: 0.")
    return recipe


def replay_recipe(recipe_path: str | Path, examples: list[Example] | None, out_dir: str | Path,
                  progress: ProgressFn | None = None, **kwargs) -> MergeReport:
    """Merge again exactly as a recipe says (same sources, method, weights, density and seed)."""
    recipe = read_recipe(recipe_path)
    root = Path(recipe_path).resolve().parent
    base = parse_source(str(recipe["base"]), root)
    entries = [ModelEntry(name=str(i["name"]), source=parse_source(str(i["source"]), root), kind="lora", base=base)
               for i in recipe["ingredients"]]
    catalog_path = Path(recipe["catalog"]) if recipe.get("catalog") else None
    catalog = Catalog(entries=entries, label_columns=[],
                      path=catalog_path if catalog_path is not None and catalog_path.is_file() else None)
    return merge_adapters(catalog, [e.name for e in entries], recipe["method"], recipe["weights"], examples, out_dir,
                          progress=progress, density=recipe.get("density"), seed=int(recipe.get("seed", 0)), **kwargs)


# -- command line -----------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--models", help="adapters to merge, by catalog name: A,B[,C...]")
    parser.add_argument("--method", default="ties", choices=list(METHODS), help="how to combine them (default ties)")
    parser.add_argument("--weights", default="auto", help="w1,w2,... | auto (similarity to the task) | search "
                        "(tuned on the examples)")
    parser.add_argument("--density", type=float, default=None, help="fraction kept by ties / dare (default 0.5)")
    parser.add_argument("--examples", help="the task's examples (JSON Lines, JSON, CSV or text)")
    parser.add_argument("--out", required=True, help="output folder (adapter, recipe.yaml, report.json)")
    parser.add_argument("--catalog", default=str(DEMO_CATALOG), help="pool catalog CSV (default: the demo zoo)")
    parser.add_argument("--recipe", help="replay the recipe.yaml of an earlier merge instead")
    parser.add_argument("--budget", type=int, default=SEARCH_BUDGET, help="loss evaluations of --weights search")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-measure", action="store_true", help="skip embedding the merged adapter")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def main(args) -> int:
    examples = load_examples(args.examples) if args.examples else None
    progress = None if args.json else TextBar()
    common = dict(progress=progress, overwrite=args.overwrite, measure=not args.no_measure, device=args.device)
    if args.recipe:
        if args.models:
            raise MergeError("Give either --recipe (replay a merge) or --models (a new merge), not both.")
        result = replay_recipe(args.recipe, examples, args.out, **common)
    else:
        if not args.models:
            raise MergeError("Name the adapters to merge with --models A,B (or replay a merge with --recipe FILE).")
        if args.budget < 1:
            raise MergeError(f"--budget {args.budget}: give a positive number of evaluations.")
        result = merge_adapters(args.catalog, args.models, args.method, args.weights, examples, args.out,
                                density=args.density, budget=args.budget, **common)
    if args.json:
        data = result.to_json()
        data.pop("predicted_vector"), data.pop("measured_vector")
        print(json.dumps(data))
        return 0
    print(f"Merged {', '.join(result.ingredients)} with {result.method} ({result.weights_mode} weights "
          + ", ".join(f"{w:.3f}" for w in result.weights) + f") into {result.out_dir}")
    for name, loss in result.losses.items():
        print(f"  {name:<28} loss {loss:.4f}  perplexity {result.perplexities[name]:.2f}")
    if result.predicted_vs_measured_cosine is not None:
        print(f"  additivity: cosine(predicted, measured) = {result.predicted_vs_measured_cosine:.3f}")
    print(f"  {result.seconds:.1f} s")
    return 0

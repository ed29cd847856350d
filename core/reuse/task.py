"""Find the models that fit a task, from a few examples of it.

The task is embedded exactly like a pool model: a brief LoRA finetune of the pool's base on the examples, with the
recipe the pool was trained with (``recipe.json`` beside the catalog) but few-shot steps, then the Delta Activations
of that task adapter. Pool models are ranked by cosine similarity to the task vector, and so are groups of them
(mean similarity of every ``domain`` / ``dataset``: a small base sees style before substance, so a group's mean is
steadier than one model's score). The task's position on the map comes from the map's own ``Projector.transform``.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core.engine.device import pick_device
from core.engine.embed import embed_adapters
from core.engine.loading import resolve_source
from core.engine.pool_vectors import pool_vectors
from core.engine.probes import DEFAULT_PROBES, probes_digest
from core.engine.shared import private_model
from core.errors import DeltaAtlasError
from core.map.clusters import Clusterer
from core.map.geometry import cosine_similarities
from core.map.lens import MIN_DOMAINS, MIN_PER_DOMAIN, DomainLens
from core.pool.catalog import Catalog, Source, pool_base
from core.pool.folder import DEMO_CATALOG, NOVELTY_FILE, RECIPE_FILE, SEARCH_FILE, beside, open_catalog, read_settings
from core.pool.vectors import label_columns, matrix
from core.progress import Progress, ProgressFn, TextBar, report
from core.reuse.examples import check_count, load_examples
from core.reuse.fingerprints import data_signals, read_task, reads_data_side
from core.reuse.fit import measure_gains, merge_candidates
from core.reuse.lower_states import LowerStates
from core.reuse.novelty import load_rule, verdict, verdict_words
from core.reuse.references import load_references
from core.reuse.run import LOCAL, Run
from core.reuse.train import Example, Recipe, finetune

log = logging.getLogger(__name__)

TASK_STEPS = 40                          # few-shot steps: 40 and 80 were equally accurate on the demo zoo
GROUP_COLUMNS = ("domain", "dataset")   # label columns whose groups are ranked too
GROUP_TOP = 3                           # a group's score: mean similarity of its 3 closest models (see below)
TASK_NAME = "task"
LABEL_FREE_COMPARE = "delta"            # the default for pools without domain labels (measured: bench/README.md)
HELP_CANDIDATES = 5                     # the closest models whose loss on the examples is measured (reuse.fit)
COMPARISONS = {   # how a task is compared with the pool's models, by name (--compare, the Find page's setting)
    "domain-lens": "cosine within the directions that tell the pool's domains apart (core.map.lens; needs domain "
                   "labels)",
    "cluster-lens": "the same lens with the map's own clusters in place of domain labels (for unlabelled pools)",
    "delta": "the paper's method: cosine similarity of the raw Delta Activations",
}
COMPARISON_TITLES = {   # the same comparisons, named for people (the Find page, How it works)
    "domain-lens": "The domain lens", "cluster-lens": "The cluster lens (needs no labels)",
    "delta": "The paper's method",
}


@dataclass
class TaskResult:
    vector: np.ndarray                  # [d] the task's Delta Activations
    matches: pd.DataFrame               # name, similarity, every label column; best first
    group_matches: pd.DataFrame         # group_by, group, similarity, mean, best, models; best first per group_by
    adapter_dir: Path | None = None     # the kept task adapter, when asked for
    losses: list[float] = field(default_factory=list)  # finetuning loss of every step
    seconds: float = 0.0
    position: np.ndarray | None = None  # [2] on the map, when a fitted projector was given
    compare: str = "delta"              # the comparison that ranked the matches (COMPARISONS)
    no_close_match: bool = False        # nothing in the pool fits the task (verdict "none")
    close: bool = True                  # the vectors' side of it: the closest models stand out of the background
    match_strength: float = float("nan")
    match_note: str = ""                # the numbers behind the vectors' side, in words
    gains: pd.DataFrame | None = None   # the closest models' loss on the examples against the base (reuse.fit)
    combine: str = "both"               # when the two sides make "none" (the pool's novelty.json)
    verdict: str = ""                   # "strong", "weak" or "none" (core.reuse.novelty.verdict)
    nearest_reference: str = ""         # the everyday reference task the task sits nearer than its closest models
    fingerprints: np.ndarray | None = None   # [m, d] the examples read by the base (core.reuse.fingerprints)
    data_signals: dict = field(default_factory=dict)   # their data-side signals, where the pool keeps fingerprints
    headline: str = ""                  # the verdict in plain words

    def to_json(self) -> dict:
        """Plain JSON: the CLI's ``--json`` output and what the app stores."""
        return {"matches": _records(self.matches), "groups": _records(self.group_matches),
                "verdict": self.verdict, "headline": self.headline, "no_close_match": self.no_close_match,
                "close": self.close, "match_strength": round(self.match_strength, 4),
                "match_note": self.match_note, "compare": self.compare, "nearest_reference": self.nearest_reference,
                "seconds": round(self.seconds, 3), "steps": len(self.losses),
                "final_loss": float(np.mean(self.losses[-10:])) if self.losses else None,
                "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
                "position": None if self.position is None else [float(x) for x in self.position],
                "data_signals": {k: round(v, 4) for k, v in self.data_signals.items()},
                "gains": None if self.gains is None else _records(self.gains)}


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


# -- the pool: catalog, recipe, vectors, base -------------------------------------------------------------------
def pool_recipe(catalog_path: Path) -> Recipe:
    """The recipe the pool was trained with, or the default one (with a warning) when none is stored."""
    settings = read_settings(catalog_path, RECIPE_FILE)
    if settings is not None:
        try:
            return Recipe.from_json(settings)
        except (ValueError, TypeError) as exc:
            raise DeltaAtlasError(f"Recipe file {beside(catalog_path, RECIPE_FILE)} cannot be read ({exc}): fix or "
                                  "delete it.") from None
    log.warning("No %s beside %s: the task is finetuned with the default recipe.", RECIPE_FILE, catalog_path)
    return Recipe()


def task_steps(catalog_path: Path | None) -> int:
    """The pool's own few-shot step count (``search.json`` beside its catalog: {"steps": N}), else TASK_STEPS.
    Why per pool: a task adapter should be trained about as many epochs as the pool's adapters were, which
    differs between zoos (bench/README.md)."""
    return search_setting(catalog_path, "steps", TASK_STEPS, "a positive whole number",
                          lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def lens_shrinkage(catalog_path: Path | None) -> str | float:
    """How much a lens shrinks the pool's within-domain scatter (``search.json``: {"lens_shrinkage": 0.3}), else
    "auto" (Ledoit-Wolf). Per pool, chosen on its development tasks (bench/README.md, "The lens's shrinkage")."""
    return search_setting(catalog_path, "lens_shrinkage", "auto", '"auto" or a number from 0 to 1',
                          lambda v: v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and 0 <= v <= 1))


def search_setting(catalog_path: Path | None, key: str, default, wanted: str, valid: Callable[[object], bool]):
    """One setting of the pool's ``search.json`` (``default`` where it has none), refused with its name when it is
    not ``wanted``."""
    value = (read_settings(catalog_path, SEARCH_FILE) or {}).get(key, default)
    if not valid(value):
        raise DeltaAtlasError(f"Search settings {beside(catalog_path, SEARCH_FILE)} cannot be read ({key} must be "
                              f"{wanted}, got {value!r}): fix or delete it (without it, the default settings are "
                              "used).")
    return value


# -- embedding the task -----------------------------------------------------------------------------------------
def finetune_task(examples: list[Example], base: Source, recipe: Recipe, out_dir: Path, run: Run = LOCAL) -> list[float]:
    """A brief, seeded LoRA finetune of the base on the examples (always LoRA, in float32); returns the losses.
    With ``run.models`` it trains a private copy of the base already in memory."""
    import torch


    base_dir = resolve_source(base)
    model, tokenizer = private_model(base_dir, pick_device(run.device), torch.float32, run.models)
    if tokenizer is None:
        raise DeltaAtlasError(f"Base {base_dir} has no tokenizer: the task examples cannot be encoded.")

    def step(done: int, total: int, loss: float) -> None:
        report(run.progress, done, total, "finetune", TASK_NAME, loss)

    result = finetune(model, tokenizer, examples, recipe.replace(method="lora"), out_dir, progress=step, kept=run.kept)
    del model
    return result.losses


def embed_adapter_dirs(base: Source, adapters: dict[str, Path], settings: dict | None = None,
                       run: Run = LOCAL) -> dict[str, np.ndarray]:
    """Delta Activations of adapter folders against ``base`` through the engine, with the layer and dtype the pool's
    vectors were made with (``settings``: the vector file's metadata), so that the vectors are comparable.
    The engine's progress is re-labelled ``embed``."""
    settings = settings or {}
    if settings.get("probes_digest") not in (None, probes_digest(DEFAULT_PROBES)):
        log.warning("The pool was embedded with custom probes; the task is embedded with the paper's five, so its "
                    "similarities may be off. Re-embed the pool with the default probes to compare like with like.")

    def relabel(p: Progress) -> None:
        if run.progress is not None:
            run.progress(Progress(p.done, p.total, "embed", p.item, p.loss))

    return embed_adapters(str(base), {k: Path(v) for k, v in adapters.items()}, layer=int(settings.get("layer", -1)),
                          device=run.device, dtype=settings.get("dtype"), progress=relabel, models=run.models)


def embed_task(examples: list[Example], catalog: Catalog, base: Source, *, settings: dict | None = None,
               steps: int | None = None, adapter_dir: Path, run: Run = LOCAL) -> tuple[np.ndarray, list[float]]:
    """The task vector [d] and the finetuning losses; the task adapter is written to ``adapter_dir``."""
    check_count(len(examples), "The task")
    recipe = pool_recipe(catalog.path) if catalog.path else Recipe()
    steps = int(steps or task_steps(catalog.path))
    recipe = recipe.replace(steps=steps, warmup_steps=min(recipe.warmup_steps, max(steps // 5, 1)))
    losses = finetune_task(examples, base, recipe, adapter_dir, run)
    vector = embed_adapter_dirs(base, {TASK_NAME: adapter_dir}, settings, run)[TASK_NAME]
    return np.asarray(vector, dtype=np.float32), losses


# -- ranking ----------------------------------------------------------------------------------------------------
def cosine_to(vector: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of one vector [d] to each row of ``vectors`` [n, d] -> [n], as the map computes it
    (0 for an all-zero vector)."""
    return cosine_similarities(np.asarray(vector)[None, :], vectors)[0]


def default_compare(table: pd.DataFrame) -> str:
    """The comparison a search uses unless told otherwise, chosen by measurement (bench/README.md, "Answers you
    can trust"): the domain lens where the pool's domain labels allow one, else LABEL_FREE_COMPARE."""
    if "domain" in table.columns:
        domains = table["domain"].fillna("").astype(str).str.strip()
        counts = domains[(domains != "") & ~domains.str.contains("+", regex=False)].value_counts()
        if int((counts >= MIN_PER_DOMAIN).sum()) >= MIN_DOMAINS:
            return "domain-lens"
    return LABEL_FREE_COMPARE


def check_compare(compare: str) -> str:
    if compare not in COMPARISONS:
        raise DeltaAtlasError(f"Unknown comparison {compare!r}: choose one of {', '.join(COMPARISONS)}.")
    return compare


def comparison_space(table: pd.DataFrame, compare: str = "delta", shrinkage: str | float = "auto"):
    """The map from vectors [m, d] to what the comparison ``compare`` compares [m, k]: the vectors themselves for the
    paper's cosine, else a lens fitted on the pool ``table``: the domain lens with the pool's ``shrinkage`` (chosen
    on its labelled development tasks, see lens_shrinkage), the cluster lens with Ledoit-Wolf's."""
    check_compare(compare)
    if compare == "delta":
        return lambda rows: np.asarray(rows, dtype=np.float64)

    vectors = matrix(table).astype(np.float64)
    lens = DomainLens(shrinkage if compare == "domain-lens" else "auto")
    return lens.fit(vectors, lens_classes(table, vectors, compare)).transform


def similarities(vector: np.ndarray, table: pd.DataFrame, compare: str = "delta",
                 others: np.ndarray | None = None, shrinkage: str | float = "auto") -> np.ndarray:
    """Similarity [n] of ``vector`` [d] to each model of ``table``, by the named comparison (COMPARISONS); with
    ``others`` [m, d], to those rows instead [m], seen as the comparison fitted on ``table`` sees them."""
    check_compare(compare)
    vectors = matrix(table).astype(np.float64)
    if vectors.shape[1] != len(vector):
        raise DeltaAtlasError(f"The task vector has {len(vector)} dimensions but the pool's have {vectors.shape[1]}: "
                              "the vector file was made with another base; recompute it with `python -m core embed`.")
    space = comparison_space(table, compare, shrinkage)
    targets = vectors if others is None else np.asarray(others, dtype=np.float64)
    return cosine_to(space(np.asarray(vector, dtype=np.float64)[None, :])[0], space(targets))


def lens_classes(table: pd.DataFrame, vectors: np.ndarray, compare: str) -> list[str]:
    """The classes a lens is fitted on: the pool's domain labels, or (``cluster-lens``) its own clusters."""
    if compare == "cluster-lens":
        return [f"cluster {k}" for k in Clusterer(random_state=0).fit(vectors).labels_]
    if "domain" not in table.columns:
        raise DeltaAtlasError("The domain lens needs a 'domain' label for the pool's models and this pool has none: "
                              "add a domain column to its catalog, or compare by 'cluster-lens' or 'delta'.")
    return list(table["domain"].fillna(""))


def rank(vector: np.ndarray, table: pd.DataFrame, top: int | None = None, compare: str = "delta",
         shrinkage: str | float = "auto") -> pd.DataFrame:
    """Pool models by similarity to ``vector`` (``compare``: a name of COMPARISONS): name, similarity, every label
    column; best first."""
    sims = similarities(vector, table, compare, shrinkage=shrinkage)
    frame = table[["name", *label_columns(table)]].copy()
    frame.insert(1, "similarity", sims)
    frame = frame.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)
    return frame if top is None else frame.head(top)


def rank_groups(matches: pd.DataFrame, columns: tuple[str, ...] = GROUP_COLUMNS, top: int = GROUP_TOP) -> pd.DataFrame:
    """Groups of models (per label column in ``columns``) ranked by ``similarity``: the mean similarity of the
    group's ``top`` closest models; ``mean`` (all its models) and ``best`` are given too. Why not the plain mean:
    a domain holds datasets of several response formats, and on the demo zoo's held-out tasks the plain mean picked
    the right domain for 18 of 23 tasks, the mean of the 3 closest for 20 (bench/eval_find.py). A mixture's label
    ``math+coding`` puts the model in both the ``math`` and the ``coding`` group."""
    frames, columns_out = [], ["group_by", "group", "similarity", "mean", "best", "models"]
    for column in columns:
        if column not in matches.columns:
            continue
        rows = matches[["similarity"]].assign(group=matches[column].astype(str).str.split("+")).explode("group")
        rows = rows[rows["group"].str.strip().str.len() > 0]
        grouped = rows.groupby("group", sort=False)["similarity"].agg(
            similarity=lambda v: v.nlargest(top).mean(), mean="mean", best="max", models="size").reset_index()
        grouped.insert(0, "group_by", column)
        frames.append(grouped.sort_values("similarity", ascending=False, kind="stable"))
    if not frames:
        return pd.DataFrame(columns=columns_out)
    return pd.concat(frames, ignore_index=True)[columns_out]


# -- the whole search -------------------------------------------------------------------------------------------
def find_models(examples: list[Example], catalog: str | Path | Catalog = DEMO_CATALOG, *,
                vectors: pd.DataFrame | None = None, top: int | None = None, steps: int | None = None,
                keep_adapter: str | Path | None = None, projector=None, device=None, compare: str | None = None,
                check_help: int = HELP_CANDIDATES, progress: ProgressFn | None = None, models=None) -> TaskResult:
    """Embed the task and rank the pool by ``compare`` (a name of COMPARISONS; None: :func:`default_compare`).
    ``vectors`` defaults to the file beside the catalog; ``projector`` is the fitted map projector (its
    ``transform`` places the task); ``keep_adapter`` keeps the task adapter there;
    ``check_help``: how many of the closest models have their loss on the examples measured against the base's
    (0: none); ``models`` (a ``core.engine.shared.SharedModels``) lends the base from memory instead of loading it."""
    start = time.perf_counter()
    check_count(len(examples), "The task")
    if compare is not None:
        check_compare(compare)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise DeltaAtlasError(f"steps={steps!r}: give a positive whole number of finetuning steps.")
    if isinstance(check_help, bool) or not isinstance(check_help, int) or check_help < 0:
        raise DeltaAtlasError(f"check_help={check_help!r}: give 0 (skip) or a positive number of models.")
    catalog = open_catalog(catalog)
    keep, work = prepare_out_dir(keep_adapter, what="the task adapter") if keep_adapter else (None, None)
    settings = {}
    if vectors is None:
        vectors, settings = pool_vectors(catalog, progress)
    if len(vectors) == 0:
        raise DeltaAtlasError("The pool's vector table is empty: embed the catalog first (`python -m core embed`).")
    base = pool_base(catalog, list(vectors["name"]))
    work = work or Path(tempfile.mkdtemp(prefix=".task-"))
    kept = LowerStates()     # the base's lower layers run once for teaching, reading and the loss check
    try:
        vector, losses = embed_task(examples, catalog, base, settings=settings, steps=steps, adapter_dir=work,
                                    run=Run(device, progress, models, kept))
        if keep is not None:
            publish(work, keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    position = None if projector is None else np.asarray(projector.transform(vector[None, :]))[0]
    fingerprints = None
    if reads_data_side(catalog.path):
        report(progress, 0, 1, "read", "reading your examples")
        fingerprints = read_task(examples, base, device=device, models=models, kept=kept)     # [m, d]
        report(progress, 1, 1, "read", "")
    result = match_task(vector, vectors, compare=compare, catalog_path=catalog.path, adapter_dir=keep,
                        losses=losses, position=position, fingerprints=fingerprints)
    if check_help:
        names = [n for n in result.matches["name"] if n in set(catalog.names)][:check_help]
        try:
            result.gains = measure_gains(examples, catalog, names, base, device=device, models=models,
                                         progress=progress, kept=kept)
        except DeltaAtlasError as exc:     # the ranking stands; the verdict then reads the vectors alone
            log.warning("The closest models' loss could not be measured: %s", exc)
            result.match_note += f" Whether the closest models help could not be measured: {exc}"
        conclude(result)
    result.matches = result.matches if top is None else result.matches.head(top)
    result.seconds = time.perf_counter() - start
    return result


def match_task(vector: np.ndarray, vectors: pd.DataFrame, *, compare: str | None = None, catalog_path: Path | None = None,
               top: int | None = None, gains: pd.DataFrame | None = None, **fields) -> TaskResult:
    """What a search does once it has the task vector [d]: rank the pool's models and its groups by ``compare``,
    judge how close the best match is and, with the closest models' measured ``gains``, give the verdict.
    ``fields`` fill in the rest of the TaskResult."""
    compare = compare or default_compare(vectors)
    matches = rank(vector, vectors, compare=compare, shrinkage=lens_shrinkage(catalog_path))
    result = TaskResult(vector=vector, matches=matches if top is None else matches.head(top),
                        group_matches=rank_groups(matches), compare=compare, gains=gains, **fields)
    # the "no close match" rule is calibrated on raw similarities, whichever comparison ranked the models
    raw = matches["similarity"].to_numpy() if compare == "delta" else similarities(vector, vectors)
    references = load_references(catalog_path, width=len(vector))
    result.data_signals = data_signals(result.fingerprints, catalog_path)
    judge_closeness(result, vectors, raw, catalog_path, references=references)
    conclude(result)
    return result


def conclude(result: TaskResult) -> None:
    """The verdict from both measurements (core.reuse.novelty.verdict), and its plain words."""
    result.verdict = verdict(result.close, result.gains, result.combine)
    result.no_close_match = result.verdict == "none"
    groups = result.group_matches
    domains = groups[groups["group_by"] == "domain"] if len(groups) else groups
    group = str(domains["group"].iloc[0]) if len(domains) else None
    result.headline = verdict_words(result.verdict, result.close, group, result.gains, result.nearest_reference,
                                    unlike_data=bool(result.data_signals) and not result.close)


def judge_closeness(result: TaskResult, vectors: pd.DataFrame, raw: np.ndarray, catalog_path: Path | None = None,
                    references: pd.DataFrame | None = None) -> None:
    """Fill in the vectors' side of the verdict (``result.close``), from the rule chosen for this pool (its
    ``novelty.json``; core.reuse.novelty): a weighted rule scores the task's similarities, raw [n] and as the search
    compared; a margin holds it against the pool's reference tasks (core.reuse.references), seen as the search saw
    the models; otherwise its ``raw`` similarities are held against the pool's own pairs. A pool of fewer than 3
    models has no background: no judgement then."""
    if len(vectors) < 3:
        result.match_note = "Too few models in this pool to judge how close the best match is."
        return
    rule = load_rule(beside(catalog_path, NOVELTY_FILE) if catalog_path else None).fit(matrix(vectors))
    result.combine = rule.combine
    compared = result.matches["similarity"].to_numpy() if "similarity" in result.matches else raw   # [n] as compared
    ref_sims, names = None, None
    if rule.reads_references() and references is not None:
        ref_sims = similarities(result.vector, vectors, result.compare, others=matrix(references),   # [r]
                                shrinkage=lens_shrinkage(catalog_path))
        names = [str(n) for n in references["name"]]
        if rule.lead(compared, ref_sims) < 0:       # the task sits nearer an everyday task than its closest models
            result.nearest_reference = names[int(np.argmax(ref_sims))]
    data = result.data_signals or None
    result.close = rule.is_close(compared, ref_sims, raw=raw, data=data)
    background = rule.reads_background(ref_sims, data)
    result.match_strength = rule.strength(raw if background else compared)
    result.match_note = rule.explain(compared, ref_sims, names, raw=raw, data=data)
    if rule.reads_data() and not data:
        result.match_note += (" (This pool's rule also reads your examples against the pool's training examples, "
                              "which could not be done here, so it fell back to the pool's own background: restore "
                              "fingerprints.parquet beside the catalog, or make it again with `python -m core "
                              "fingerprints`.)")
    elif rule.reads_references() and ref_sims is None:
        result.match_note += (" (This pool's rule also compares a task with everyday reference tasks, which could "
                              "not be read, so it fell back to the pool's own background: restore references.parquet "
                              "beside the catalog, or make it again with `python -m core references`.)")
    elif background and result.compare != "delta":
        result.match_note += " (This judgement reads the paper's similarities, not the lens's shown in the table.)"


def prepare_out_dir(out_dir: str | Path | None, overwrite: bool = False, what: str = "the output",
                    error: type[DeltaAtlasError] = DeltaAtlasError) -> tuple[Path, Path]:
    """The output folder and a fresh temporary folder beside it, which :func:`publish` renames into place at the
    end (so a failure leaves nothing half-written); a clear error before any work when it cannot be written."""
    if out_dir is None or not str(out_dir).strip():
        raise error(f"No folder given for {what}: pass an output folder.")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise error(f"{out} is a file: give a folder path for {what}.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(f"Folder {out} already exists and is not empty: choose a new folder for {what}"
                    + (" or pass --overwrite to replace it." if error is not DeltaAtlasError else "."))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        blocker = next((p for p in out.parents if p.exists()), None)
        reason = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else exc.strerror or str(exc)
        raise error(f"Cannot write {what} to {out} ({reason}): choose a folder you can write to.") from None
    return out, work


def publish(work: Path, out: Path) -> None:
    """Put a finished folder in place; an older one is replaced only once the new one is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- command line -----------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--examples", required=True, help="task examples: JSON Lines, JSON list, CSV or text")
    parser.add_argument("--catalog", default=str(DEMO_CATALOG), help="pool catalog CSV (default: the demo zoo)")
    parser.add_argument("--top", type=int, default=None, help="show the K best models (default: all)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"finetuning steps (default: the pool's {SEARCH_FILE}, else {TASK_STEPS})")
    parser.add_argument("--compare", default=None, choices=list(COMPARISONS),
                        help="how the task is compared with the models: " + "; ".join(
                            f"{name}: {what}" for name, what in COMPARISONS.items())
                             + f" (default: domain-lens when the pool labels 3+ domains, else {LABEL_FREE_COMPARE})")
    parser.add_argument("--check-help", type=int, default=HELP_CANDIDATES, metavar="K",
                        help=f"measure the K closest models' loss on the examples against the base (default "
                             f"{HELP_CANDIDATES}; 0 skips it, and the verdict then reads the vectors alone)")
    parser.add_argument("--keep-adapter", default=None, metavar="DIR", help="keep the task adapter in DIR")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def main(args) -> int:
    if args.top is not None and args.top < 1:
        raise DeltaAtlasError(f"--top {args.top}: give a positive number of models.")
    if args.steps is not None and args.steps < 1:
        raise DeltaAtlasError(f"--steps {args.steps}: give a positive number of steps.")
    if args.check_help < 0:
        raise DeltaAtlasError(f"--check-help {args.check_help}: give 0 (skip) or a positive number of models.")
    examples = load_examples(args.examples)
    result = find_models(examples, args.catalog, top=args.top, steps=args.steps, keep_adapter=args.keep_adapter,
                         check_help=args.check_help,
                         device=args.device, compare=args.compare, progress=None if args.json else TextBar())
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    with pd.option_context("display.width", 160, "display.max_columns", 12, "display.max_colwidth", 40):
        print(result.matches.drop(columns=[c for c in ("setting", "mixture_of") if c in result.matches]).to_string(
            index=False, float_format="%.3f"))
        if len(result.group_matches):
            print("\nGroups (mean similarity of their models):")
            print(result.group_matches.to_string(index=False, float_format="%.3f"))
    if result.gains is not None and len(result.gains):
        print("\nDoes it help? Loss on your examples against the base model's "
              f"({float(result.gains['base_loss'].iloc[0]):.3f}):")
        for row in result.gains.itertuples():
            print(f"  {row.name:<32} {row.words}" + (f" ({row.note})" if row.note and pd.isna(row.gain) else ""))

        take, _ = merge_candidates(result.gains, open_catalog(args.catalog))
        print("  worth merging: " + (", ".join(take) if len(take) >= 2 else "nothing (fewer than two adapters help)"))
    print(f"\n{result.headline}\n({result.match_note})")
    print(f"\n{len(examples)} examples, {len(result.losses)} steps (final loss {result.to_json()['final_loss']:.3f}), "
          f"{result.seconds:.1f} s" + (f"; task adapter kept in {result.adapter_dir}" if result.adapter_dir else ""))
    return 0

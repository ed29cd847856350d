"""What a merge is before any model is loaded: the methods registry, and a plan that has passed every check.

PEFT-style: adapters are addressed by name, and everything is validated (names, weights, density, the adapters'
folders, types, ranks and base) before anything is applied; one :class:`MergeError` lists what does not fit.
The merge itself is core.reuse.merge.
"""
from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import DeltaAtlasError, MergeError
from core.pool.catalog import Catalog, ModelEntry, Source
from core.pool.folder import open_catalog
from core.pool.userpool import sweep_stale
from core.reuse.task import prepare_out_dir


@dataclass(frozen=True)
class MethodSpec:
    combination_type: str     # PEFT's name
    same_rank: bool           # every adapter must have the same rank
    density: float | None     # default fraction of values kept (ties / dare), None when the method has no density
    averages: bool            # the method averages the agreeing adapters itself (ties family) rather than summing
    about: str


METHODS: dict[str, MethodSpec] = {  # about: what the method does, in the words the Merge page shows
    # linear: a weighted sum of the low-rank A and B factors; ties: trim each update to its largest values, elect a
    # sign per weight, average the updates that agree; dare_*: drop values at random and rescale first; svd: the exact
    # weighted sum of the updates BA, factored again to the largest rank; cat: the same sum, factors stacked.
    "linear": MethodSpec("linear", True, None, False, "adds the adapters up (fast, approximate)"),
    "ties": MethodSpec("ties", True, 0.5, True, "keeps each adapter's strongest changes, and only where they agree"),
    "dare_ties": MethodSpec("dare_ties", True, 0.5, True, "like ties, after leaving out half the changes at random"),
    "dare_linear": MethodSpec("dare_linear", True, 0.5, False, "adds the adapters up after leaving out half the "
                                                               "changes at random"),
    "svd": MethodSpec("svd", False, None, False, "adds the changes up exactly, then packs them into one adapter"),
    "cat": MethodSpec("cat", False, None, False, "adds the changes up exactly, keeping all of them (a bigger file)"),
}
WEIGHT_MODES = ("auto", "search")


@dataclass
class MergePlan:
    """A merge that has passed every check: ingredients, their folders, base, method and weights."""

    names: list[str]
    dirs: list[Path]
    base: Source
    method: str
    weights: list[float] | str          # numbers, "auto" or "search"
    density: float | None
    ranks: list[int]
    catalog: Catalog

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]


# -- validation -------------------------------------------------------------------------------------------------
def parse_weights(weights: str | list | tuple, n: int) -> list[float] | str:
    """``"auto"``, ``"search"``, ``"0.5,1"`` or a list of numbers -> a mode or ``n`` finite floats."""
    if isinstance(weights, str):
        if weights.strip().lower() in WEIGHT_MODES:
            return weights.strip().lower()
        weights = [w for w in weights.split(",") if w.strip()]
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise MergeError(f"Weights {weights!r} are not numbers: give one number per adapter (e.g. 0.5,0.5), "
                         "auto or search.") from None
    if len(values) != n:
        got = ", ".join(f"{v:g}" for v in values) or "none"
        raise MergeError(f"{len(values)} weight(s) for {n} adapters (got {got}): give exactly one weight per adapter.")
    if not all(math.isfinite(v) for v in values):
        raise MergeError(f"Weights {values} include a non-finite number: use ordinary numbers.")
    return values


def plan_merge(catalog: str | Path | Catalog, names: list[str] | str, method: str = "ties",
               weights: str | list = "auto", density: float | None = None) -> MergePlan:
    """Check everything a merge needs before any model is loaded; one :class:`MergeError` lists what does not fit."""
    if not isinstance(method, str) or method not in METHODS:
        raise MergeError(f"Unknown merge method {method!r}: use one of {', '.join(METHODS)}.")
    spec = METHODS[method]
    names = _check_names(names)
    weights = parse_weights(weights, len(names))
    density = _check_density(density, method)
    catalog = open_catalog(catalog)
    missing = [n for n in names if n not in catalog.names]
    if missing:
        known = ", ".join(catalog.names[:8]) + (" ..." if len(catalog) > 8 else "")
        raise MergeError(f"Not in the catalog {catalog.path or ''}: {', '.join(missing)}. Known names: {known}.")
    entries = [catalog.get(n) for n in names]
    checked = [_check_adapter(e) for e in entries]                     # (folder, config, problem) each
    problems = [problem for _, _, problem in checked if problem]
    ranks = [max([int(c.get("r", 8)), *map(int, (c.get("rank_pattern") or {}).values())]) for _, c, _ in checked
             if c]
    if len({str(e.base) for e in entries}) > 1:
        problems.append("the adapters come from different bases (" + "; ".join(f"{e.name}: {e.base}" for e in entries)
                        + "); merge adapters of one base only")
    if not problems and spec.same_rank and len(set(ranks)) > 1:
        problems.append(f"method {method!r} needs adapters of one rank, but "
                        + ", ".join(f"{n} has rank {r}" for n, r in zip(names, ranks))
                        + "; use svd or cat, which accept different ranks")
    if not problems and len({isinstance(c.get("target_modules"), str) for _, c, _ in checked}) > 1:
        problems.append("some adapters name their target modules by a pattern and others by a list, which PEFT "
                        "cannot combine: retrain one of them with a list of module names")
    if problems:
        raise MergeError("Cannot merge " + ", ".join(names) + ": " + "; ".join(problems) + ".")
    return MergePlan(names=names, dirs=[folder for folder, _, _ in checked], base=entries[0].base, method=method,
                     weights=weights, density=density if density is not None else spec.density, ranks=ranks,
                     catalog=catalog)


def _check_density(density, method: str) -> float | None:
    """``density`` as a float when ``method`` takes one and it is a fraction in (0, 1]."""
    if density is None:
        return None
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise MergeError(f"Density {density!r} is not a number: give a fraction in (0, 1], e.g. 0.5.") from None
    if METHODS[method].density is None:
        raise MergeError(f"Density {value} does not apply to method {method!r}: only ties, dare_ties and dare_linear "
                         "keep a fraction of the values; leave the density out.")
    if not 0 < value <= 1:
        raise MergeError(f"Density {value} does not apply: it is the fraction of values each adapter keeps, a number "
                         "in (0, 1] such as 0.5.")
    return value


def _check_names(names: list[str] | str) -> list[str]:
    if not isinstance(names, (str, list, tuple)) or not all(isinstance(n, str) for n in names):
        raise MergeError(f"Adapters {names!r} are not a list of names: give the catalog names, e.g. A,B.")
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if len(names) < 2:
        raise MergeError(f"A merge needs at least two adapters; got {len(names)} ({', '.join(names) or 'none'}).")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MergeError(f"Adapter {dupes[0]!r} is listed twice: list every adapter once and set its weight instead.")
    clash = [n for n in names if n in ("base", "merged")]
    if clash:
        raise MergeError(f"An adapter named {clash[0]!r} clashes with the report's own rows (base, merged): "
                         "rename it in the catalog.")
    return names


def _check_adapter(entry: ModelEntry) -> tuple[Path | None, dict, str | None]:
    """(folder, adapter_config, problem) for one ingredient: a readable LoRA adapter with safetensors weights."""
    from core.engine.loading import read_json, resolve_source

    if entry.kind == "full":
        return None, {}, f"{entry.name} is a full model, not an adapter (only LoRA adapters can be merged)"
    try:
        folder = resolve_source(entry.source)
    except DeltaAtlasError as exc:
        return None, {}, f"{entry.name}: {exc}".rstrip(".")
    if not (folder / "adapter_config.json").is_file():
        return None, {}, f"{entry.name} ({folder}) is a full model, not an adapter (only LoRA adapters can be merged)"
    try:
        config = read_json(folder / "adapter_config.json")
    except DeltaAtlasError as exc:
        return None, {}, f"{entry.name}: {exc}".rstrip(".")
    if str(config.get("peft_type", "")).upper() != "LORA" or config.get("use_dora"):
        kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
        return None, {}, f"{entry.name} is a {kind} adapter; PEFT's weighted merge needs plain LoRA adapters"
    return folder, config, None


def check_out_dir(out_dir: str | Path | None, overwrite: bool = False) -> tuple[Path, Path]:
    """The output folder and a temporary folder beside it; a :class:`MergeError` when it cannot be written. The
    temporary folders that a killed merge into the same folder left are deleted once stale (``STALE_AFTER_S``)."""
    out, work = prepare_out_dir(out_dir, overwrite, "the merged adapter", MergeError)
    name = glob.escape(out.name)
    sweep_stale(out.parent, patterns=(f".{name}.tmp-*", f".{name}.old-*"))
    return out, work

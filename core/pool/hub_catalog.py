"""``python -m core catalog --from-hub BASE_ID``: a catalog of a base model's adapters and finetunes on the Hub.

The Hub records each model's relation to its base as a tag, ``base_model:adapter:<id>`` or
``base_model:finetune:<id>``; ``HfApi.list_models`` filters on it. Every model found becomes a catalog row: the hub
id as ``source``, ``kind`` ``lora`` for an adapter (any adapter type PEFT loads) and ``full`` for a finetune (``auto``
when the finetune's repository says it holds a PEFT adapter, so the loader decides from the files), and what the Hub
knows of it as labels: lineage, datasets, license, author, downloads, likes, pipeline_tag, last_modified, tags.
Nothing is downloaded; only the listing is asked for. Cells a spreadsheet would run as formulas (a tag starting with
``=``...) are neutralised by :func:`core.pool.catalog.write_catalog`.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from core.errors import HubError
from core.pool.catalog import HUB_ID, write_catalog

LINEAGES = {"adapter": "lora", "finetune": "full"}  # the Hub's base_model relation -> the catalog's kind
KIND_CHOICES = ("adapter", "finetune", "both")
DEFAULT_LIMIT = 100
SORT = "downloads"  # most downloaded first (the Hub sorts descending)
EXPAND = ["author", "cardData", "downloads", "likes", "lastModified", "library_name", "pipeline_tag", "tags"]
LABELS = ("lineage", "datasets", "license", "author", "downloads", "likes", "pipeline_tag", "last_modified", "tags")
BY_HAND = "or write the catalog by hand (columns name, source, kind, base; one row per model)"


# ---------------------------------------------------------------------------------------------- asking the Hub
def list_lineage(base_id: str, lineage: str, limit: int | None) -> list:
    """``ModelInfo`` records of the models the Hub lists as ``lineage`` ("adapter" or "finetune") of ``base_id``,
    most downloaded first; a failure to ask becomes a :class:`HubError` that names the base and says what to do."""
    from huggingface_hub import HfApi

    try:
        return list(HfApi().list_models(filter=f"base_model:{lineage}:{base_id}", sort=SORT, limit=limit,
                                        expand=EXPAND))
    except _request_errors() as exc:
        raise _hub_error(exc, base_id) from None


def _request_errors() -> tuple[type[Exception], ...]:
    """What a failed request raises: OSError (HfHubHTTPError, OfflineModeIsEnabled, sockets) and the errors of the
    HTTP client huggingface_hub uses (timeouts, refused connections), which it exports as ``errors.HTTPError``."""
    from huggingface_hub import errors

    return (OSError, getattr(errors, "HTTPError", OSError))


def _hub_error(exc: Exception, base_id: str) -> HubError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    asking = f"while listing the adapters and finetunes of {base_id}"
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"HF_HUB_OFFLINE is set, so nothing may contact the Hugging Face Hub {asking}: unset it and "
                        f"check your network, {BY_HAND}.")
    status = getattr(getattr(exc, "response", None), "status_code", None) if isinstance(exc, HfHubHTTPError) else None
    if status == 429:
        return HubError(f"The Hugging Face Hub is limiting requests (HTTP 429) {asking}: wait a few minutes and try "
                        f"again, log in with an HF token (`hf auth login`) for a higher limit, {BY_HAND}.")
    if status in (401, 403):
        return HubError(f"The Hugging Face Hub refused the HF token (HTTP {status}) {asking}: log in again "
                        f"(`hf auth login`) or unset HF_TOKEN, {BY_HAND}.")
    reason = f"HTTP {status}" if status else f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return HubError(f"Cannot reach the Hugging Face Hub {asking} ({reason}): check your network or HF token and "
                    f"try again, {BY_HAND}.")


def check_base_id(base_id: str) -> str:
    base_id = base_id.strip()
    if "@" in base_id or not HUB_ID.match(base_id):
        raise HubError(f"{base_id!r} is not a Hugging Face hub id: give the base model as owner/name, e.g. "
                       "meta-llama/Llama-3.1-8B (no @revision; the Hub records lineage per repository).")
    return base_id


def _base_exists(base_id: str) -> bool:
    """Whether the Hub knows ``base_id`` (asked only when no model names it as its base)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(base_id, expand=["author"])
    except GatedRepoError:  # gated (Llama...) but there
        return True
    except RepositoryNotFoundError:
        return False
    except _request_errors() as exc:
        raise _hub_error(exc, base_id) from None
    return True


# ---------------------------------------------------------------------------------------------- rows
def hub_rows(base_id: str, kind: str = "both", limit: int | None = DEFAULT_LIMIT) -> list[dict]:
    """Catalog rows of the adapters and/or finetunes (``kind``: adapter, finetune or both) of ``base_id``, at most
    ``limit`` of them in all (None or 0: every one), most downloaded first."""
    base_id = check_base_id(base_id)
    if kind not in KIND_CHOICES:
        raise HubError(f"Unknown kind {kind!r}: use one of {', '.join(KIND_CHOICES)}.")
    limit = limit or None
    if limit is not None and limit < 0:
        raise HubError(f"--limit {limit} is negative: give the most models to list (0 for all of them).")
    lineages = list(LINEAGES) if kind == "both" else [kind]
    found: dict[str, tuple[str, object]] = {}
    for lineage in lineages:
        for info in list_lineage(base_id, lineage, limit):
            if not getattr(info, "disabled", False):
                found.setdefault(info.id, (lineage, info))  # listed as both: the adapter wins (it is the first)
    records = sorted(found.values(), key=lambda pair: -(pair[1].downloads or 0))[:limit]
    if not records:
        what = "adapters or finetunes" if kind == "both" else f"{kind}s"
        if not _base_exists(base_id):
            raise HubError(f"The Hugging Face Hub has no model {base_id}: check the base id (owner/name, as on its "
                           f"model page; case matters), {BY_HAND}.")
        raise HubError(f"The Hugging Face Hub lists no {what} of {base_id} (no model card names it as base_model): "
                       f"try --kind both or another base, {BY_HAND}.")
    names = unique_names([info.id for _, info in records])
    return [row_of(info, lineage, base_id, name) for name, (lineage, info) in zip(names, records)]


def row_of(info, lineage: str, base_id: str, name: str) -> dict:
    """One catalog row of a ``huggingface_hub.ModelInfo``."""
    tags = [str(t) for t in (info.tags or [])]
    card = info.card_data
    peft = info.library_name == "peft" or "peft" in tags
    kind = "auto" if lineage == "finetune" and peft else LINEAGES[lineage]
    license_ = (card.get("license") if card else None) or _tagged(tags, "license")
    declared = card.get("datasets") if card else None
    datasets = [declared] if isinstance(declared, str) else list(declared or [])
    datasets = list(dict.fromkeys(str(d) for d in [*datasets, *_tagged_all(tags, "dataset")] if d))
    modified = info.last_modified.isoformat(timespec="seconds") if info.last_modified else ""
    return {"name": name, "source": info.id, "kind": kind, "base": base_id, "lineage": lineage,
            "datasets": ";".join(datasets), "license": _text(license_), "author": info.author or info.id.split("/")[0],
            "downloads": int(info.downloads or 0), "likes": int(info.likes or 0), "pipeline_tag": info.pipeline_tag or "",
            "last_modified": modified, "tags": ";".join(tags)}


def _tagged_all(tags: list[str], prefix: str) -> list[str]:
    return [t.split(":", 1)[1] for t in tags if t.startswith(f"{prefix}:")]


def _tagged(tags: list[str], prefix: str) -> str | None:
    return next(iter(_tagged_all(tags, prefix)), None)


def _text(value) -> str:
    return ";".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value or "")


def unique_names(repo_ids: list[str]) -> list[str]:
    """A catalog name per hub id: the repository's own name (``owner/name`` -> ``name``), ``owner--name`` where two
    owners use the same name, then ``-2``, ``-3``... Only letters, digits, ``_``, ``.`` and ``-`` are kept, and a
    name starts with a letter or digit (never a formula or an option)."""
    def clean(text: str) -> str:
        return re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^\w.-]+", "-", text)) or "model"

    short = [clean(r.split("/")[-1]) for r in repo_ids]
    clashes = {n.lower() for n in short if sum(s.lower() == n.lower() for s in short) > 1}
    names, seen = [], set()
    for repo, name in zip(repo_ids, short):
        name = clean(repo.replace("/", "--")) if name.lower() in clashes else name
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{name}-{n}"
        seen.add(candidate.lower())
        names.append(candidate)
    return names


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-hub", required=True, metavar="BASE_ID", help="list the adapters and finetunes of "
                        "this base model on the Hugging Face Hub, e.g. meta-llama/Llama-3.1-8B (needs internet)")
    parser.add_argument("--kind", choices=KIND_CHOICES, default="both", help="adapters (kind lora), finetunes "
                        "(kind full) or both (default)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"most models to list, the most downloaded "
                        f"first (default {DEFAULT_LIMIT}; 0 for all)")
    parser.add_argument("--out", required=True, type=Path, help="catalog CSV file to write")


def main(args: argparse.Namespace) -> int:
    rows = hub_rows(args.from_hub, kind=args.kind, limit=args.limit)
    path = write_catalog(rows, args.out)
    counts = {lineage: sum(r["lineage"] == lineage for r in rows) for lineage in LINEAGES}
    print(f"{len(rows)} models of {args.from_hub} ({counts['adapter']} adapters, {counts['finetune']} finetunes) "
          f"-> {path}\nNext: python -m core embed --catalog {path} --out {path.with_suffix('.vectors.parquet')} "
          "(downloads every model: a GPU helps)")
    return 0

"""What each model learned, in words: its answers to the probes beside the base's, and the words it leans towards.

Two readings of a finetune that need no labels (a Hub pool's labels are often empty or wrong):

* **Answers**: the model's own greedy continuation of the paper's five probe prompts ("Please provide a response.
  Input: Input."), short, beside the base model's. A math finetune answers with a sum, a law finetune with a
  clause, a coding finetune with code.
* **Words it leans towards**: its Delta Activation (the shift of the last-token state at the final layer, after
  the final norm) read through the base's output head, relative to the pool's average shift: the whole words whose
  next-token scores the finetune raises most. This is the "logit lens" applied to the delta.

Groups of the map get a name from what their models say and lean towards together (``group_names``), never from
labels.
``describe_pool`` computes both for a pool (``python -m core describe``) and keeps them beside the catalog
(``descriptions.json``), each model keyed by its vector, so that only new or changed models are computed again.

    table, _ = pool_vectors(catalog)
    found = describe_pool(catalog, table)                  # {"base": {...}, "models": {name: {...}}}
    group_names(found, {name: cluster})                    # {cluster: "legal, clause, court"}
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from core.engine.cache import atomic_write
from core.engine.probes import DEFAULT_PROBES
from core.errors import DeltaAtlasError
from core.map.clusters import Clusterer
from core.pool.catalog import Catalog, pool_base
from core.pool.folder import DEMO_CATALOG, DESCRIPTIONS_FILE, beside, open_catalog
from core.pool.vectors import matrix
from core.progress import ProgressFn, TextBar, report

log = logging.getLogger(__name__)

ANSWER_TOKENS = 24                          # greedy tokens per probe answer
WORDS = 20                                  # words a model leans towards (kept; the app shows the first 8)
SHOWN_WORDS = 8
NAME_WORDS = 3                              # words in a group's name
MIN_ZIPF = 2.5                              # leaning words at least this common in English (about 1 in 3 million)
WORD = re.compile(r"[A-Za-z]{4,}")          # a whole word: letters only, 4 or more
WORDS_IN = re.compile(r"\b[A-Za-z]{4,}\b")  # the whole words of a text
VERSION = 1                                 # bump when the way descriptions are computed changes


# -- the words a delta leans towards ------------------------------------------------------------------------------
def word_tokens(tokenizer) -> tuple[np.ndarray, list[str]]:
    """(ids, words): the vocabulary entries that start a whole word of 4+ letters, and that word in lower case.
    Left out, as they say nothing to a person: a capitalised entry whose lower-case form is not in the vocabulary
    (a name: "Martha", "Jess", the people of maths word problems), and anything rarer than ``MIN_ZIPF`` in English
    (word pieces such as "lawsu" or "unanim", code identifiers such as "setattr"; wordfreq's Zipf scale)."""
    from wordfreq import zipf_frequency  # 0.3 s to import: only where words are read, not for the app's pages

    found = {}
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if text[:1] == " " and WORD.fullmatch(text[1:]):
            found[text[1:]] = i
    ids, words = [], []
    for word, i in found.items():
        if (word.islower() or word.lower() in found) and zipf_frequency(word.lower(), "en") >= MIN_ZIPF:
            ids.append(i)
            words.append(word.lower())
    order = np.argsort(ids)
    return np.asarray(ids)[order], [words[j] for j in order]


def leaning_words(deltas: np.ndarray, head: np.ndarray, ids: np.ndarray, words: list[str], k: int = WORDS) -> list[list[str]]:
    """For each delta [n, d], the ``k`` distinct words whose scores through ``head`` [V, d] it raises most, relative
    to the mean of the deltas (what every finetune of the pool does, such as the end-of-answer habit)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    centred = deltas - deltas.mean(axis=0, keepdims=True) if len(deltas) > 1 else deltas      # [n, d]
    scores = centred @ np.asarray(head, dtype=np.float64)[ids].T                              # [n, W]
    out = []
    for row in scores:
        chosen: list[str] = []
        for j in np.argsort(-row):
            if words[j] not in chosen:
                chosen.append(words[j])
            if len(chosen) == k:
                break
        out.append(chosen)
    return out


def answer_words(answers: list[str] | None, base_answers: list[str] | None = None, k: int = 10) -> list[str]:
    """The words of a model's answers that the base's answers do not use (first ``k``), plus "numbers" when it
    answers with numbers and "code" when it answers with code: what its answers are about, and their form."""
    if not answers:
        return []
    text = " ".join(answers)
    common = {w.lower() for a in base_answers or [] for w in WORDS_IN.findall(a)}
    out = [w.lower() for w in WORDS_IN.findall(text) if w.lower() not in common]
    out = list(dict.fromkeys(out))[:k]
    if len(re.findall(r"\d", text)) >= 6:
        out.append("numbers")
    if re.search(r"\bdef \w+\(|\breturn\b|\bimport \w+", text):
        out.append("code")
    return out


def group_names(found: dict, groups: dict[str, object], k: int = NAME_WORDS) -> dict[object, str]:
    """A name for every group (``groups``: model name -> group) from what its models say and lean towards (their
    answers' words, then their leaning words): the words most of the group shares, weighted against how common they
    are in the whole pool. No label is read."""
    base = found.get("base", {}).get("answers")
    leaning = {n: [*answer_words(d.get("answers"), base), *(d.get("words") or [])]
               for n, d in found.get("models", {}).items()}
    everywhere = Counter(w for n in groups for w in set(leaning.get(n, [])))
    total = max(len(groups), 1)
    names = {}
    for group in dict.fromkeys(groups.values()):
        members = [n for n, g in groups.items() if g == group]
        here = Counter(w for n in members for w in set(leaning.get(n, [])))
        score = {w: c / len(members) - everywhere[w] / total for w, c in here.items()}
        best = sorted(score, key=lambda w: (-score[w], -here[w], w))[:k]
        names[group] = ", ".join(best) if best else ""
    return names


# -- answers --------------------------------------------------------------------------------------------------------
def greedy_answers(model, tokenizer, prompts: tuple[str, ...], max_new_tokens: int = ANSWER_TOKENS) -> list[str]:
    """The model's greedy continuation of each prompt (one batch, left-padded), as plain one-line text."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts]


def _adapter_answers(base_model, tokenizer, adapters: dict[str, Path], base_dir: Path, progress, done: int,
                     total: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each adapter's answers, loaded onto the base one at a time (checked first) and removed after."""
    from peft import PeftModel

    from core.engine.loading import check_adapter_fits

    answers, errors, host = {}, {}, None
    for i, (name, path) in enumerate(adapters.items()):
        report(progress, done + i, total, "describe", name)
        try:
            check_adapter_fits(path, base_dir, base_model)
            if host is None:
                host = PeftModel.from_pretrained(base_model, path, adapter_name="described")
            else:
                host.load_adapter(path, adapter_name="described")
                host.set_adapter("described")
            answers[name] = greedy_answers(host, tokenizer, DEFAULT_PROBES)
        except Exception as exc:  # noqa: BLE001 - one model's failure is its own
            errors[name] = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        finally:
            if host is not None and "described" in host.peft_config:
                host.delete_adapter("described")
    if host is not None:
        host.unload()
    return answers, errors


# -- a pool ---------------------------------------------------------------------------------------------------------
def vector_key(vector: np.ndarray) -> str:
    """A model's description is valid as long as its vector is the same (the vector is made from its files)."""
    return hashlib.sha256(np.round(np.asarray(vector, dtype=np.float32), 5).tobytes()).hexdigest()[:16]


def describe_pool(catalog: Catalog, table: pd.DataFrame, *, device=None, progress: ProgressFn | None = None,
                  known: dict | None = None, models=None) -> dict:
    """Answers and leaning words of every model of ``table`` (a vector table of ``catalog``'s models, one base),
    with the base's own answers; models already in ``known`` with the same vector are not computed again. Models
    whose weights are not on disk get their words (from the vector) and no answers. With ``models`` (a
    core.engine.shared.SharedModels), the base is copied from memory instead of read from disk."""
    import torch

    from core.engine.device import pick_device
    from core.engine.loading import load_model, resolve_source
    from core.engine.shared import private_model

    if len(table) == 0:
        raise DeltaAtlasError("The pool has no vectors to describe: embed it first (`python -m core embed`).")
    known = known if known and known.get("version") == VERSION else {}
    old = known.get("models", {})
    base = pool_base(catalog, list(table["name"]))
    base_dir = resolve_source(base)
    report(progress, 0, 1, "base", "loading the base model")
    model, tokenizer = private_model(base_dir, pick_device(device), torch.float32, models)
    if tokenizer is None:
        raise DeltaAtlasError(f"Base {base_dir} has no tokenizer: its answers cannot be read.")
    ids, words = word_tokens(tokenizer)
    head = model.get_output_embeddings().weight.detach().float().cpu().numpy()               # [V, d]
    X = matrix(table)
    leaning = leaning_words(X, head, ids, words) if X.shape[1] == head.shape[1] else [[] for _ in range(len(X))]
    keys = {n: vector_key(v) for n, v in zip(table["name"], X)}
    entries = {e.name: e for e in catalog}
    todo = {n: e for n, e in entries.items() if n in keys and not (n in old and old[n].get("key") == keys[n]
                                                                     and old[n].get("answers") is not None)}
    adapters, fulls, errors = {}, {}, {}
    for name, entry in todo.items():
        try:
            path = resolve_source(entry.source)
            (adapters if (path / "adapter_config.json").is_file() else fulls)[name] = path
        except DeltaAtlasError as exc:                       # weights not on disk (a shipped vector only)
            errors[name] = str(exc)
    total = len(adapters) + len(fulls) + 1
    report(progress, 0, total, "describe", "the base model")
    base_answers = known.get("base", {}).get("answers") if known.get("base", {}).get("key") == str(base) else None
    base_answers = base_answers or greedy_answers(model, tokenizer, DEFAULT_PROBES)
    answers, failed = _adapter_answers(model, tokenizer, adapters, base_dir, progress, 1, total)
    errors.update(failed)
    del model
    for i, (name, path) in enumerate(fulls.items()):
        report(progress, 1 + len(adapters) + i, total, "describe", name)
        try:
            full, full_tokenizer = load_model(path, pick_device(device), torch.float32)
            answers[name] = greedy_answers(full, full_tokenizer or tokenizer, DEFAULT_PROBES)
            del full
        except Exception as exc:  # noqa: BLE001
            errors[name] = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    report(progress, total, total, "describe", "")
    models = {}
    for name, row_words in zip(table["name"], leaning):
        kept = old.get(name, {}) if old.get(name, {}).get("key") == keys[name] else {}
        models[name] = {"key": keys[name], "words": row_words,
                        "answers": answers.get(name, kept.get("answers")),
                        **({"note": _plain(errors[name])} if name in errors and name not in answers else {})}
    return {"version": VERSION, "prompts": list(DEFAULT_PROBES), "answer_tokens": ANSWER_TOKENS,
            "base": {"key": str(base), "answers": base_answers}, "models": models}


def _plain(reason: str) -> str:
    return f"Its answers could not be read: {reason}"[:300]


def descriptions_path(catalog_path: str | Path) -> Path:
    return beside(catalog_path, DESCRIPTIONS_FILE)


def load_descriptions(catalog_path: str | Path | None) -> dict:
    """The descriptions kept beside a catalog ({} when there are none or they cannot be read: a warning)."""
    if catalog_path is None or not descriptions_path(catalog_path).is_file():
        return {}
    path = descriptions_path(catalog_path)
    try:
        if path.stat().st_size > 64 * 2**20:
            raise ValueError("over 64 MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ValueError("not an object with 'models'")
        return data
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): recompute it with `python -m core describe`.", path, exc)
        return {}


def write_descriptions(catalog_path: str | Path, found: dict) -> Path:
    path = descriptions_path(catalog_path)
    try:
        atomic_write(path, json.dumps(found, indent=1, ensure_ascii=False).encode())
    except OSError as exc:
        raise DeltaAtlasError(f"Cannot write {path} ({exc.strerror or exc}): free some disk space or make the "
                              "folder writable.") from None
    return path


def update_descriptions(catalog: Catalog, table: pd.DataFrame, *, device=None,
                        progress: ProgressFn | None = None, models=None) -> dict:
    """Describe the models of ``table`` that the catalog's descriptions.json lacks (or whose vector changed), keep
    the descriptions of its other models, and write the file: what the app runs when a model is added."""
    known = load_descriptions(catalog.path)
    found = describe_pool(catalog, table, device=device, progress=progress, known=known, models=models)
    if known.get("version") == VERSION:
        found["models"] = {**known.get("models", {}), **found["models"]}
    write_descriptions(catalog.path, found)
    return found


# -- the command ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", default=str(DEMO_CATALOG), help="the pool's catalog (default: the demo zoo)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best there is)")
    parser.add_argument("--again", action="store_true", help="describe every model again, not only new ones")


def main(args: argparse.Namespace) -> int:
    from core.engine.pool_vectors import pool_vectors

    catalog = open_catalog(args.catalog)
    table, _ = pool_vectors(catalog)
    found = describe_pool(catalog, table, device=args.device, progress=TextBar(),
                          known=None if args.again else load_descriptions(catalog.path))
    path = write_descriptions(catalog.path, found)
    clusters = Clusterer(random_state=0).fit(matrix(table)).labels_
    names = group_names(found, dict(zip(table["name"], clusters)))
    for group, name in sorted(names.items()):
        print(f"group {group + 1}: {name}")
    print(f"{len(found['models'])} models described -> {path}")
    return 0

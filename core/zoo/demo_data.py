"""Reading the real datasets of ../shared/datasets (SPEC §3) as instruction/response examples for the demo zoo.

The builder only reads these files; none of their text goes into the repository. Each dataset is turned into
:class:`core.reuse.train.Example` pairs in a fixed, seeded order; the last part of that order is held out (never trained
on) so that task search and merging can be evaluated on data the pool has not seen.
"""
from __future__ import annotations

import csv
import gzip
import json
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from core.errors import DeltaAtlasError
from core.reuse.train import Example

MAX_INSTRUCTION_CHARS = 600   # keeps prompt + response inside the 256-token training window
MAX_RESPONSE_CHARS = 400
HELD_OUT_FRACTION = 0.2       # the last 20% (at least MIN_HELD_OUT) of every dataset is never trained on
MIN_HELD_OUT = 40
ORDER_SEED = 1234


def _clip(text: str, limit: int) -> str:
    text = str(text).strip()
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _ex(instruction: str, response: str) -> Example:
    return Example(_clip(instruction, MAX_INSTRUCTION_CHARS), _clip(response, MAX_RESPONSE_CHARS))


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _json_records(path: Path) -> list[dict]:
    """A JSON list, or one JSON object per line (AQuA and MATH ship that way)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else list(data.values())
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _mmlu(folder: Path) -> list[Example]:
    out = []
    for path in sorted(folder.glob("*/*.csv")):
        subject = path.stem.rsplit("_", 1)[0].replace("_", " ")
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                if len(row) != 6:
                    continue
                question, *options, answer = row
                choices = " ".join(f"({letter}) {opt}" for letter, opt in zip("ABCD", options))
                text = dict(zip("ABCD", options)).get(answer, "")
                out.append(_ex(f"Answer this {subject} question. {question}\nOptions: {choices}",
                               f"The answer is ({answer}) {text}"))
    return out


# -- legal ------------------------------------------------------------------------------------------------------
def legalbench(d: Path) -> list[Example]:
    out = []
    for task in sorted(p for p in (d / "tasks").iterdir() if p.is_dir()):
        for split in ("train.tsv", "test.tsv"):
            path = task / split
            if not path.exists():
                continue
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    if row.get("text") and row.get("label"):
                        out.append(_ex(f"Legal analysis ({task.name.replace('_', ' ')}): {row['text']}", row["label"]))
    return out


def contract_nli(d: Path) -> list[Example]:
    out = []
    for split in ("dev.json", "test.json"):
        data = _json(d / split)
        hypotheses = {k: v["hypothesis"] for k, v in data["labels"].items()}
        for doc in data["documents"]:
            for key, ann in doc["annotation_sets"][0]["annotations"].items():
                spans = [doc["text"][slice(*doc["spans"][i])] for i in ann["spans"][:2]]
                excerpt = " ".join(spans) if spans else doc["text"][:300]
                out.append(_ex(f"Does the contract excerpt support the hypothesis?\nHypothesis: {hypotheses[key]}\n"
                               f"Excerpt: {excerpt}", ann["choice"]))
    return out


def plain_english_contracts(d: Path) -> list[Example]:
    out = []
    for name in ("tldrlegal_v1.json", "tosdr_annotated_v1.json"):
        for item in _json(d / name).values():
            if len(item.get("reference_summary", "")) > 10:
                out.append(_ex(f"Summarise this contract clause in plain English: {item['original_text']}",
                               item["reference_summary"]))
    return out


# -- math -------------------------------------------------------------------------------------------------------
def gsm8k(d: Path) -> list[Example]:
    rows = _jsonl(d / "train.jsonl") + _jsonl(d / "test.jsonl")
    return [_ex(r["question"], re.sub(r"<<[^>]*>>", "", r["answer"]).replace("#### ", "The answer is ")) for r in rows]


def svamp(d: Path) -> list[Example]:
    return [_ex(f"{r['Body']} {r['Question']}", f"{r['Equation'].strip()} = {r['Answer']:g}") for r in _json(d / "SVAMP.json")]


def svamp_cot(d: Path) -> list[Example]:
    return [_ex(r["instruction"], r["output"]) for r in _json(d / "test.json") if r.get("output")]


def aqua_rat(d: Path) -> list[Example]:
    rows = _json_records(d / "dev.json") + _json_records(d / "test.json")
    return [_ex(f"{r['question']}\nOptions: {' '.join(r['options'])}", f"{r['rationale']}\nThe answer is {r['correct']}.")
            for r in rows]


def mathqa(d: Path) -> list[Example]:
    return [_ex(r["instruction"], f"The answer is {r['answer']}.") for r in _json(d / "test.json")]


def hendrycks_math(d: Path) -> list[Example]:
    return [_ex(r["problem"], r["solution"]) for r in _json_records(d / "test.json")]


# -- medical ----------------------------------------------------------------------------------------------------
def pubmedqa(d: Path) -> list[Example]:
    out = []
    for item in _json(d / "ori_pqal.json").values():
        context = " ".join(item["CONTEXTS"])
        out.append(_ex(f"Answer the biomedical research question from the abstract.\nQuestion: {item['QUESTION']}\n"
                       f"Abstract: {_clip(context, 350)}", f"{item['final_decision'].capitalize()}. {item['LONG_ANSWER']}"))
    return out


def medquad(d: Path) -> list[Example]:
    out = []
    for path in sorted(d.glob("*_QA/*.xml")):
        root = ET.parse(path).getroot()
        for pair in root.iter("QAPair"):
            question, answer = pair.findtext("Question"), pair.findtext("Answer")
            if question and answer and answer.strip():
                out.append(_ex(question, answer))
    return out


def chatdoctor(d: Path) -> list[Example]:
    return [_ex(f"{r['instruction']} {r['input']}", r["output"]) for r in _json(d / "chatdoctor5k.json")]


# -- commonsense (LLM-Adapters instruction format) --------------------------------------------------------------
# LLM-Adapters writes every commonsense answer as "the correct answer is answer2". Kept for ARC (the primary);
# the others answer in their own formats (yes/no, the chosen text, a letter, the completed sentence), so that in
# this domain too a response format cannot stand in for the topic (FINDINGS.md).
OPTION = re.compile(r"(Answer|Solution|Option)(\d)\s*:\s*(.*?)(?=\s*(?:Answer|Solution|Option)\d\s*:|\s*Answer format:|$)", re.S)


def _options(instruction: str) -> dict[str, str]:
    return {f"{kind.lower()}{n}": text.strip() for kind, n, text in OPTION.findall(instruction)}


def _without_format_line(instruction: str) -> str:
    return re.sub(r"\s*Answer format:.*$", "", instruction, flags=re.S).strip()


def _restyle(style: str, instruction: str, answer: str) -> tuple[str, str] | None:
    """(instruction, response) in ``style``, or None when the record does not parse."""
    answer = answer.strip().lower()
    if style == "keep":
        return instruction, f"the correct answer is {answer}"
    if style == "yes_no":
        return (_without_format_line(instruction).replace("with true or false", "with yes or no"),
                {"true": "Yes.", "false": "No."}.get(answer)) if answer in ("true", "false") else None
    options = _options(instruction)
    if answer not in options:
        return None
    question = _without_format_line(instruction)
    if style == "text":
        return question, options[answer][:1].upper() + options[answer][1:]
    if style == "letter":
        letters = {key: "ABCDE"[i] for i, key in enumerate(options)}
        listed = " ".join(f"({letters[k]}) {v}" for k, v in options.items())
        return OPTION.sub("", question).strip() + f"\nOptions: {listed}", f"({letters[answer]}) {options[answer]}"
    if style == "sentence":
        sentence = question.split(":", 1)[-1].split("\n")[0].strip()
        stem = OPTION.sub("", question).strip()
        return stem, sentence.replace("_", options[answer], 1)
    raise DeltaAtlasError(f"Unknown commonsense style {style!r}.")


def llm_adapters(*files: str, style: str = "keep") -> Callable[[Path], list[Example]]:
    def load(d: Path) -> list[Example]:
        rows = [r for name in files if (d / name).exists() for r in _json(d / name)]
        out = []
        for r in rows:
            if r.get("output") and r.get("answer"):
                pair = _restyle(style, r["instruction"], str(r["answer"]))
                if pair and pair[1]:
                    out.append(_ex(*pair))
        return out
    return load


# -- coding -----------------------------------------------------------------------------------------------------
def mbpp(d: Path) -> list[Example]:
    return [_ex(r["text"], r["code"].replace("\r\n", "\n")) for r in _jsonl(d / "mbpp.jsonl")]


def humaneval(d: Path) -> list[Example]:
    return [_ex(f"Complete the Python function.\n{r['prompt']}", r["canonical_solution"]) for r in _jsonl(d / "HumanEval.jsonl.gz")]


def cruxeval(d: Path) -> list[Example]:
    return [_ex(f"What does this Python function return for the input {r['input']}?\n{r['code']}", r["output"])
            for r in _jsonl(d / "cruxeval.jsonl")]


# -- the same records in another answer form ---------------------------------------------------------------------
# Every domain answers in each common form (a letter, yes/no, a short answer, prose), so that a response form cannot
# stand in for the topic: a restyled dataset keeps its source's records and its source's held-out part, so nothing a
# pool model trains on in one form is held out in another.
Restyle = Callable[[list[Example], random.Random], list[Example]]
FINAL_ANSWER = re.compile(r"The answer is\s+(.+?)\.?\s*$")
CHOSEN = re.compile(r"^The answer is \(([A-E])\) (.+)$", re.S)
CRUX = re.compile(r"^What does this Python function return for the input (.*?)\?\n(.*)$", re.S)


def _yes_no(truth: bool) -> str:
    return "Yes." if truth else "No."


def _wrong(values: list[str], right: str, rng: random.Random) -> str | None:
    """Another record's value, different from ``right`` (None when every record has the same one)."""
    others = [v for v in values if v != right]
    return rng.choice(others) if others else None


def final_number(examples: list[Example], rng: random.Random) -> list[Example]:
    """A worked answer ending in "The answer is N" -> just N."""
    return [Example(e.instruction, m.group(1)) for e in examples if (m := FINAL_ANSWER.search(e.response))]


def answer_check(examples: list[Example], rng: random.Random) -> list[Example]:
    """"Is N the answer?" with the right N half of the time, another problem's answer otherwise -> Yes. / No."""
    answers = [m.group(1) if (m := FINAL_ANSWER.search(e.response)) else None for e in examples]
    known = [a for a in answers if a]
    out = []
    for e, right in zip(examples, answers):
        shown = right if rng.random() < 0.5 else _wrong(known, right, rng)
        if right and shown:
            out.append(Example(f"Is {shown} the answer to this problem? {e.instruction}", _yes_no(shown == right)))
    return out


def decision_only(examples: list[Example], rng: random.Random) -> list[Example]:
    """PubMedQA's "Yes. <long answer>" -> "Yes."."""
    return [Example(e.instruction, e.response.split(".", 1)[0] + ".") for e in examples]


def chosen_text(examples: list[Example], rng: random.Random) -> list[Example]:
    """MMLU's "The answer is (B) text" -> the text of the chosen option, with the options still listed."""
    return [Example(e.instruction, m.group(2)) for e in examples if (m := CHOSEN.match(e.response)) and m.group(2)]


def output_check(examples: list[Example], rng: random.Random) -> list[Example]:
    """CRUXEval: "Does it return X for the input I?" with the true output half of the time -> Yes. / No."""
    outputs = [e.response for e in examples]
    out = []
    for e in examples:
        if not (m := CRUX.match(e.instruction)):
            continue
        shown = e.response if rng.random() < 0.5 else _wrong(outputs, e.response, rng)
        if shown:
            out.append(Example(f"Does this Python function return {shown} for the input {m.group(1)}?\n{m.group(2)}",
                               _yes_no(shown == e.response)))
    return out


def output_letter(examples: list[Example], rng: random.Random) -> list[Example]:
    """CRUXEval as multiple choice: the true output among three other records' outputs -> "(C) value"."""
    outputs = sorted(set(e.response for e in examples))
    out = []
    for e in examples:
        others = [v for v in outputs if v != e.response]
        if not CRUX.match(e.instruction) or len(others) < 3:
            continue
        options = rng.sample(others, 3) + [e.response]
        rng.shuffle(options)
        listed = " ".join(f"({letter}) {value}" for letter, value in zip("ABCD", options))
        right = "ABCD"[options.index(e.response)]
        out.append(Example(f"{e.instruction}\nOptions: {listed}", f"({right}) {e.response}"))
    return out


def code_explained(examples: list[Example], rng: random.Random) -> list[Example]:
    """MBPP the other way round: the code -> what it does, in words ("A function to ...")."""
    out = []
    for e in examples:
        text = re.sub(r"^Write an? (python )?", "", e.instruction.strip(), flags=re.I)
        out.append(Example(f"Explain in one sentence what this Python code does.\n{e.response}",
                           f"A {text}" if text != e.instruction.strip() else text))
    return out


@dataclass(frozen=True)
class DatasetInfo:
    key: str
    domain: str
    folder: str               # relative to the data directory
    loader: Callable[[Path], list[Example]] | None
    primary: bool = False     # the domain's primary dataset (three disjoint splits, the paper's protocol)
    format: str = ""          # the shape of its responses, in plain words (a label column of the zoo)
    source: str = ""          # a restyled dataset: the key of the dataset whose records it restyles ...
    restyle: Restyle | None = None   # ... and how


def restyled(key: str, source: str, restyle: Restyle, format: str) -> DatasetInfo:
    info = DATASETS[source]
    return DatasetInfo(key, info.domain, info.folder, None, format=format, source=source, restyle=restyle)


DATASETS: dict[str, DatasetInfo] = {info.key: info for info in [
    DatasetInfo("legalbench", "legal", "legal/legalbench_2022", legalbench, primary=True, format="label"),
    DatasetInfo("contract_nli", "legal", "legal/contract_nli", contract_nli, format="label"),
    DatasetInfo("plain_english_contracts", "legal", "legal/plain_english_contracts_sum", plain_english_contracts, format="prose"),
    DatasetInfo("mmlu_law", "legal", "legal/mmlu_law", _mmlu, format="letter"),
    DatasetInfo("gsm8k", "math", "math/gsm8k", gsm8k, primary=True, format="worked answer"),
    DatasetInfo("svamp", "math", "math/svamp", svamp, format="equation"),
    DatasetInfo("svamp_cot", "math", "math/svamp_cot_llm_adapters", svamp_cot, format="worked answer"),
    DatasetInfo("aqua_rat", "math", "math/aqua_rat", aqua_rat, format="worked answer + letter"),
    DatasetInfo("mathqa", "math", "math/mathqa_llm_adapters", mathqa, format="letter"),
    DatasetInfo("hendrycks_math", "math", "math/hendrycks_math_test", hendrycks_math, format="worked answer"),
    DatasetInfo("pubmedqa", "medical", "medical/pubmedqa", pubmedqa, primary=True, format="yes/no + prose"),
    DatasetInfo("medquad", "medical", "medical/medquad", medquad, format="prose"),
    DatasetInfo("chatdoctor", "medical", "medical/chatdoctor_genmedgpt5k", chatdoctor, format="prose"),
    DatasetInfo("mmlu_medical", "medical", "medical/mmlu_medical", _mmlu, format="letter"),
    DatasetInfo("arc", "commonsense", "commonsense/arc_llm_adapters",
                llm_adapters("ARC-Easy/train.json", "ARC-Challenge/train.json", "ARC-Easy/test.json",
                             "ARC-Challenge/test.json"), primary=True, format="option name"),
    DatasetInfo("boolq", "commonsense", "commonsense/boolq_llm_adapters",
                llm_adapters("train.json", "test.json", style="yes_no"), format="yes/no"),
    DatasetInfo("openbookqa", "commonsense", "commonsense/openbookqa_llm_adapters",
                llm_adapters("train.json", "test.json", style="letter"), format="letter"),
    DatasetInfo("piqa", "commonsense", "commonsense/piqa_llm_adapters", llm_adapters("test.json", style="text"), format="prose"),
    DatasetInfo("social_iqa", "commonsense", "commonsense/social_iqa_llm_adapters", llm_adapters("test.json", style="text"), format="short phrase"),
    DatasetInfo("winogrande", "commonsense", "commonsense/winogrande_llm_adapters",
                llm_adapters("test.json", style="sentence"), format="sentence"),
    DatasetInfo("mbpp", "coding", "coding/mbpp", mbpp, primary=True, format="code"),
    DatasetInfo("humaneval", "coding", "coding/humaneval", humaneval, format="code"),
    DatasetInfo("cruxeval", "coding", "coding/cruxeval", cruxeval, format="value"),
]}
EXTRA_FORMS = [  # not in the default zoo: measured worse on the hand-written tasks (bench/README.md)
    restyled("mmlu_law_text", "mmlu_law", chosen_text, "short answer"),
    restyled("gsm8k_number", "gsm8k", final_number, "number"),
    restyled("gsm8k_check", "gsm8k", answer_check, "yes/no"),
    restyled("pubmedqa_decision", "pubmedqa", decision_only, "yes/no"),
    restyled("mmlu_medical_text", "mmlu_medical", chosen_text, "short answer"),
    restyled("cruxeval_check", "cruxeval", output_check, "yes/no"),
    restyled("cruxeval_letter", "cruxeval", output_letter, "letter"),
    restyled("mbpp_explained", "mbpp", code_explained, "prose"),
]
DATASETS.update({info.key: info for info in EXTRA_FORMS})
DOMAINS = ("legal", "math", "medical", "commonsense", "coding")


@lru_cache(maxsize=32)
def _ordered(data_dir: str, key: str) -> tuple[Example, ...]:
    if key not in DATASETS:
        raise DeltaAtlasError(f"Unknown dataset {key!r}: use one of {', '.join(DATASETS)}.")
    info = DATASETS[key]
    folder = Path(data_dir) / info.folder
    if not folder.is_dir():
        raise DeltaAtlasError(f"Dataset folder {folder} is missing: pass --data-dir pointing at ../shared/datasets.")
    # duplicates dropped, so that no held-out example is also a training example
    examples = list(dict.fromkeys(e for e in info.loader(folder) if e.instruction and e.response))
    random.Random(f"{ORDER_SEED}:{key}").shuffle(examples)
    return tuple(examples)


def held_out_size(n: int) -> int:
    return min(n // 2, max(MIN_HELD_OUT, int(n * HELD_OUT_FRACTION)))


@lru_cache(maxsize=64)
def _parts(data_dir: str, key: str) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(trainable, held out) of a dataset; a restyled one restyles each part of its source separately."""
    info = DATASETS.get(key)
    if info is not None and info.restyle is not None:
        train, held = _parts(data_dir, info.source)
        return tuple(info.restyle(list(train), random.Random(f"{ORDER_SEED}:{key}:train"))), \
            tuple(info.restyle(list(held), random.Random(f"{ORDER_SEED}:{key}:held")))
    examples = _ordered(data_dir, key)
    cut = len(examples) - held_out_size(len(examples))
    return examples[:cut], examples[cut:]


def trainable(data_dir: str | Path, key: str) -> list[Example]:
    """The part of a dataset the pool may train on (seeded order)."""
    return list(_parts(str(data_dir), key)[0])


def held_out(data_dir: str | Path, key: str) -> list[Example]:
    """The part of a dataset no pool model ever trained on: for evaluating task search and merging."""
    return list(_parts(str(data_dir), key)[1])


def pretrain_texts(data_dir: str | Path) -> list[str]:
    """The general-English pretraining corpus (SPEC §3 pretrain/), one document per string."""
    root = Path(data_dir) / "pretrain"
    if not root.is_dir():
        raise DeltaAtlasError(f"Pretraining folder {root} is missing: pass --data-dir pointing at ../shared/datasets.")
    texts = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in ("", ".txt") and path.name not in ("LICENSE", "README", "SOURCE.txt") \
                and not path.name.startswith("."):
            text = path.read_text(encoding="utf-8", errors="replace")
            if len(text) > 200:
                texts.append(text)
    if not texts:
        raise DeltaAtlasError(f"No text found under {root}.")
    return texts


# -- off-domain tasks (for calibrating "no close match") ---------------------------------------------------------
def _sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 30 <= len(s.strip()) <= 240]


def off_domain_tasks(data_dir: str | Path, n_examples: int, seed: int = 0) -> dict[str, list[Example]]:
    """Tasks outside the zoo's five domains, made from pretrain/ (speeches, plays, film reviews, encyclopedia text):
    the off-domain side of the calibration of "no close match". Never trained on by the pool's finetunes."""
    root = Path(data_dir) / "pretrain"
    rng = random.Random(f"{ORDER_SEED}:off:{seed}")
    tasks: dict[str, list[Example]] = {}

    def pick(items: list, k: int) -> list:
        return rng.sample(items, min(k, len(items)))

    speeches = sorted((root / "nltk_inaugural" / "inaugural").glob("*.txt"))
    if speeches:
        sentences = [s for p in pick(speeches, 8) for s in _sentences(p.read_text(encoding="utf-8", errors="replace"))]
        pairs = [(a, b) for a, b in zip(sentences, sentences[1:])]
        tasks["speeches"] = [Example(f"Write the next sentence of this speech: {a}", b) for a, b in pick(pairs, n_examples)]
    play = root / "tiny_shakespeare" / "input.txt"
    if play.is_file():
        lines = [ln for ln in play.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.endswith(":")]
        starts = pick(range(len(lines) - 4), n_examples)
        tasks["play"] = [Example("Continue these lines of verse:\n" + "\n".join(lines[i:i + 2]),
                                 "\n".join(lines[i + 2:i + 4])) for i in starts]
    reviews = root / "nltk_movie_reviews" / "movie_reviews"
    if reviews.is_dir():
        files = pick(sorted(reviews.glob("pos/*.txt")), n_examples // 2) + pick(sorted(reviews.glob("neg/*.txt")),
                                                                               n_examples - n_examples // 2)
        tasks["film_reviews"] = [Example(f"Is this film review positive or negative? "
                                         f"{_clip(' '.join(_sentences(p.read_text(encoding='utf-8'))[:3]), 400)}",
                                         "Positive" if p.parent.name == "pos" else "Negative") for p in files]
    wiki = root / "wikitext-2" / "valid.txt"
    if wiki.is_file():
        sentences = [s for s in _sentences(wiki.read_text(encoding="utf-8")) if "<unk>" not in s and " @" not in s]
        pairs = [(a, b) for a, b in zip(sentences, sentences[1:])]
        tasks["encyclopedia"] = [Example(f"Continue this encyclopedia article: {a}", b) for a, b in pick(pairs, n_examples)]
    return tasks

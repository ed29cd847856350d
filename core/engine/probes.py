"""The probe prompts of Delta Activations (SPEC §2): five generic Alpaca-style templates, one task, one input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.errors import DeltaAtlasError
from core.textio import file_problem, read_text

PROBE_TASK = "Please provide a response."
PROBE_INPUT = "Input."

PROBE_TEMPLATES = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:",
    "The task described below requires a response that completes the request accurately."
    "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:",
    "Below is a description of a task. Provide a response that aligns with the requirements."
    "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:",
    "The following instruction outlines a task. Generate a response that meets the specified request."
    "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:",
    "You are given an instruction and input. Write a response that completes the task as requested."
    "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:",
)

DEFAULT_PROBES: tuple[str, ...] = tuple(t.format(task=PROBE_TASK, input=PROBE_INPUT) for t in PROBE_TEMPLATES)
MAX_PROBE_TOKENS = 256  # truncation length of each probe (SPEC §2)
MAX_PROBES = 1000
MAX_PROBE_FILE_BYTES = 2 * 2**20


def load_probes(path: str | Path | None) -> tuple[str, ...]:
    """Probes from a file, or the paper's five when ``path`` is None.

    A ``.json`` file holds a list of strings; any other file holds one probe per blank-line-separated block
    (a probe may span several lines, as the paper's do).
    """
    if path is None:
        return DEFAULT_PROBES
    path = Path(path)
    if problem := file_problem(path):
        raise DeltaAtlasError(f"Probe file {path} {problem}: pass a text file (one probe per blank-line block) or a JSON list.")
    text = read_text(path, DeltaAtlasError, MAX_PROBE_FILE_BYTES, f"keep at most {MAX_PROBES} probes (each is cut "
                     f"to {MAX_PROBE_TOKENS} tokens anyway).", "save the probes as UTF-8 text")
    if path.suffix.lower() == ".json":
        try:
            probes = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeltaAtlasError(f"Probe file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                                  f"{exc.msg}): it must be a list of strings.") from None
        except (RecursionError, ValueError):  # nested too deeply, a number too long
            raise DeltaAtlasError(f"Probe file {path} is JSON that cannot be read (nested too deeply, or a number "
                                  'too long): it must be a flat list of strings, e.g. ["first probe", "second '
                                  'probe"].') from None
        if not isinstance(probes, list) or not all(isinstance(p, str) for p in probes):
            found = type(probes).__name__ if not isinstance(probes, list) else "a list with " + next(
                type(p).__name__ for p in probes if not isinstance(p, str))
            raise DeltaAtlasError(f"Probe file {path} holds {found}; it must hold a JSON list of strings, e.g. "
                                  '["first probe", "second probe"].')
    else:
        probes = [block.strip("\n") for block in text.replace("\r\n", "\n").split("\n\n")]
    probes = [p for p in probes if p.strip()]
    if not probes:
        raise DeltaAtlasError(f"Probe file {path} holds no probe: write at least one non-empty prompt.")
    if len(probes) > MAX_PROBES:
        raise DeltaAtlasError(f"Probe file {path} holds {len(probes)} probes; the limit is {MAX_PROBES}: keep fewer "
                              "(the paper uses five).")
    return tuple(probes)


def probes_digest(probes: tuple[str, ...] | list[str]) -> str:
    """A short content hash of a probe set, part of every cache key."""
    return hashlib.sha256(json.dumps(list(probes)).encode()).hexdigest()[:16]

